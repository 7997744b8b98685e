"""Shared test settings and fixtures, for the three levels of tests:

- ``tests/unit/``: pure functions and static checks (shrink formulas, counts, metrics, scores,
  config, layout); no training;
- ``tests/engine/``: the engine's objects built directly (a Trainer from objects, the
  sparsifier, controllers, pruning), no CLI;
- ``tests/cli/``: commands end to end through ``adapmtl_cli.cli.main`` or a subprocess.

Helper modules (``dataset_fixtures``, ``factory_helpers``) live next to this file, which pytest
puts on ``sys.path``.

Hypothesis: CI runs the "ci" profile, derandomised, so every run draws the same examples, with
each property test's own fixed budget. ``pytest --hypothesis-profile=long`` (or
HYPOTHESIS_PROFILE=long) explores ten times more examples, for local runs.
"""

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("ci", derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# A demo run small enough for a test, big enough to have every file and a sparsity to count:
# 40 steps of batch 8 at 32 px, validation at 20 and 40, TensorBoard counts at 10, 20, 30, 40.
TINY_RUN = ["train.steps=40", "train.val_every=20", "train.batch_size=8", "data.resolution=32", "data.train_size=64",
            "data.val_size=16", "data.test_size=16", "model.width=8", "train.layer_log_every=20",
            "sparsity.target=0.3", "sparsity.init=-4", "optim.lr=5e-3", "weighting.begin=10", "weighting.window=5"]


def rule_threshold(s: float):
    """The documented counting rule, written independently of the package: t = sigmoid(s) in
    float64, rounded to float32 (0 far below the float32 range)."""
    import math

    import numpy as np

    return np.float32(1.0 / (1.0 + math.exp(-float(s)))) if s > -200 else np.float32(0.0)


def recount_zeros(checkpoint) -> tuple[int, int]:
    """Zeros and weights of a checkpoint's sparsified layers, from the file with numpy alone:
    |W| <= t for a thresholded layer, W == 0 for a plain one."""
    import json

    import numpy as np
    from safetensors import safe_open

    zeros = total = 0
    with safe_open(str(checkpoint), framework="np") as handle:
        for key, info in json.loads(handle.metadata()["layers"]).items():
            weight = handle.get_tensor(key)
            if info["threshold"] is None:
                zeros += int(np.count_nonzero(weight == 0))
            else:
                t = rule_threshold(float(handle.get_tensor("threshold." + info["threshold"])))
                zeros += int(np.count_nonzero(np.abs(weight) <= t))
            total += weight.size
    return zeros, total


def example_budget(ci_examples: int) -> int:
    """A property test's number of examples: its fixed CI budget, ten times that in "long"."""
    return ci_examples if settings.default.derandomize else 10 * ci_examples


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """One tiny demo run (``TINY_RUN``) trained once through the CLI, shared by the tests that
    only read what a run leaves: its folder."""
    from adapmtl_cli.cli import main

    out = tmp_path_factory.mktemp("trained-run")
    assert main(["train", "--preset", "demo", "--out", str(out), "--quiet", "--force", *TINY_RUN]) == 0
    return out


@pytest.fixture
def one_thread():
    """Two OpenMP threads on a tiny model spend their time waiting for each other (0.4 against
    up to 4 s a run when the machine is busy): tests of many tiny runs take one."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
