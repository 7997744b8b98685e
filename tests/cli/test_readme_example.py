"""The README's "Use it in your own loop" example runs as written, lands on its target, and
the checkpoint it saves is read by inspect, export and prune like a CLI run's."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

import adapmtl_cli
from adapmtl_cli.cli import main

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Use it in your own loop"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_public_api_is_what_all_lists():
    assert sorted(adapmtl_cli.__all__) == sorted(["Sparsifier", "ScheduleController", "FreezeController",
                                                  "AdaptiveWeighting", "EqualWeighting", "save_checkpoint", "load_checkpoint"])
    for name in adapmtl_cli.__all__:
        assert getattr(adapmtl_cli, name).__doc__, name


def test_the_readme_example_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        namespace: dict = {}
        exec(compile(readme_example(), "README.md", "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    model = namespace["model"]
    # Recount W_eff zeros of every conv independently of the sparsifier's counting.
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    zeros = sum(int((conv.weight == 0).sum()) for conv in convs)
    total = sum(conv.weight.numel() for conv in convs)
    assert zeros / total == pytest.approx(0.8, abs=2 / total)
    assert "overall  80.00%" in printed and "head.seg" in printed

    checkpoint = tmp_path / "own-loop.safetensors"
    assert main(["inspect", str(checkpoint), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tasks"] == ["seg", "depth"] and report["step"] == 300
    assert sum(report["sparsity"]["zeros"].values()) == zeros
    assert set(report["sparsity"]["components"]) == {"backbone", "head.seg", "head.depth"}

    dense = tmp_path / "dense.safetensors"
    assert main(["export", str(checkpoint), "--format", "dense", "--out", str(dense)]) == 0
    with safe_open(str(dense), framework="np") as handle:
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Conv2d):
                assert np.array_equal(handle.get_tensor(f"{name}.weight"), module.weight.detach().numpy()), name
    assert main(["export", str(checkpoint), "--format", "sparse", "--out", str(tmp_path / "sparse.safetensors")]) == 0

    pruned = tmp_path / "pruned.safetensors"
    assert main(["prune", str(checkpoint), "--ratio", "0.5", "--out", str(pruned)]) == 0
    capsys.readouterr()
    assert main(["inspect", str(pruned), "--json"]) == 0
    after = json.loads(capsys.readouterr().out)
    nonzeros = total - zeros
    # Half of the non-zeros removed (rounded half up), existing zeros kept.
    assert sum(after["sparsity"]["zeros"].values()) == zeros + (nonzeros + 1) // 2
    assert main(["prune", str(checkpoint), "--ratio", "0.5", "--method", "snip", "--out", str(tmp_path / "x.safetensors")]) == 2
    assert main(["export", str(checkpoint), "--format", "program", "--out", str(tmp_path / "x.pt2")]) == 3

    # load_checkpoint restores the same weights and thresholds into a fresh copy of the model.
    fresh = type(model)()
    adapmtl_cli.Sparsifier(fresh, components={"backbone": "encoder", "head.seg": "seg_head", "head.depth": "depth_head"})
    assert adapmtl_cli.load_checkpoint(checkpoint, fresh) == 300
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name
