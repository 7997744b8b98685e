"""The optimizer the trainer builds: Adam with coupled L2 on every parameter (REFERENCE.md 1),
fused or not, against Adam written out by hand."""

import math

import pytest
import torch

from adapmtl_cli.builders import build_optimizer
from adapmtl_cli.config import load_config


def hand_adam(values, grads_per_step, lr, betas, eps, weight_decay):
    """Adam with coupled L2 in plain Python floats: g <- g + wd * p, then the bias-corrected
    moments (Kingma and Ba). ``grads_per_step[k][i]`` is None when parameter i has no gradient at
    step k: it is skipped, its moments and step count untouched."""
    b1, b2 = betas
    p = list(values)
    m, v, steps = [0.0] * len(p), [0.0] * len(p), [0] * len(p)
    for grads in grads_per_step:
        for i, g in enumerate(grads):
            if g is None:
                continue
            g = g + weight_decay * p[i]
            steps[i] += 1
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            m_hat = m[i] / (1 - b1 ** steps[i])
            v_hat = v[i] / (1 - b2 ** steps[i])
            p[i] -= lr * m_hat / (math.sqrt(v_hat) + eps)
    return p


class Scalars(torch.nn.Module):
    def __init__(self, values):
        super().__init__()
        self.values = torch.nn.ParameterList([torch.nn.Parameter(torch.tensor(v)) for v in values])


@pytest.mark.parametrize("fused", [True, False])
def test_adam_is_coupled_l2_adam_and_skips_parameters_without_gradient(fused):
    config = load_config("demo", [f"optim.fused={str(fused).lower()}", "optim.lr=0.01", "optim.weight_decay=0.1"])
    start = [-6.0, 0.5, -0.25]  # a threshold s and two weights
    model = Scalars(start)
    optimizer = build_optimizer(config, model)
    assert optimizer.defaults["fused"] is (True if fused else None)
    # Step 2 leaves the first parameter without a gradient (a frozen threshold).
    schedule = [[0.3, -1.0, 2.0], [None, 0.5, -0.5], [-0.2, 0.1, 0.0], [0.4, -2.0, 1.0]]
    for grads in schedule:
        optimizer.zero_grad(set_to_none=True)
        for param, grad in zip(model.values, grads):
            if grad is not None:
                param.grad = torch.tensor(grad)
        optimizer.step()
    expected = hand_adam(start, schedule, 0.01, config.optim.betas, config.optim.eps, 0.1)
    got = [p.item() for p in model.values]
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-7)
    # Coupled L2 raises a negative s even where its gradient is zero (REFERENCE.md 1).
    assert got[0] > start[0]
