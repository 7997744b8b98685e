"""The engine's Trainer built from plain objects (no Config, no CLI, no run folder): it trains a
model to its target, calls its callbacks once per step, and its module imports no Config."""

import ast
from pathlib import Path

import pytest
import torch
from torch import nn

from adapmtl_cli import AdaptiveWeighting, FreezeController, ScheduleController, Sparsifier
from adapmtl_cli.engine.trainer import Trainer, TrainingDiverged

ENGINE = Path(__file__).resolve().parents[2] / "adapmtl_cli" / "engine"


class L1Task:
    """A task as the trainer sees one: a name's loss function."""

    def loss(self, prediction, target):
        return (prediction - target).abs().mean()


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU())
        self.a = nn.Conv2d(16, 1, 1)
        self.b = nn.Sequential(nn.Flatten(), nn.Linear(16 * 8 * 8, 4))

    def forward(self, image):
        features = self.encoder(image)
        return {"a": self.a(features), "b": self.b(features)}


def batches(seed=0):
    generator = torch.Generator().manual_seed(seed)
    while True:
        image = torch.rand(4, 3, 8, 8, generator=generator)
        yield image, {"a": image.mean(1, keepdim=True), "b": image.mean((1, 2)).repeat(1, 2)[:, :4]}


class Recorder:
    def __init__(self):
        self.calls = []

    def on_step_end(self, trainer, done, record):
        self.calls.append((done, record["overall"], set(record["losses"])))


def build(controller_kind: str, steps: int = 60, lr: float = 1e-3):
    torch.manual_seed(0)
    model = TwoHeads()
    sparsifier = Sparsifier(model, {"backbone": "encoder", "head.a": "a", "head.b": "b"}, init=-8.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    controller = (ScheduleController(sparsifier, 0.7, total_steps=steps) if controller_kind == "schedule"
                  else FreezeController(sparsifier, 0.7, counts_itself=False))  # the trainer observes
    recorder = Recorder()
    trainer = Trainer(model, {"a": L1Task(), "b": L1Task()}, optimizer, torch.optim.lr_scheduler.StepLR(optimizer, 1000),
                      AdaptiveWeighting(2, begin=5, window=5), controller, steps=steps, device=torch.device("cpu"),
                      callbacks=[recorder])
    return model, trainer, recorder


def test_a_trainer_from_objects_lands_on_the_target_and_calls_back_every_step():
    model, trainer, recorder = build("schedule")
    trainer.fit(batches())
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    zeros = sum(int((m.weight == 0).sum()) for m in layers)
    total = sum(m.weight.numel() for m in layers)
    assert zeros / total == pytest.approx(0.7, abs=2 / total)
    assert [done for done, _, _ in recorder.calls] == list(range(1, 61))
    assert all(tasks == {"a", "b"} for _, _, tasks in recorder.calls)


def test_the_freeze_controller_gets_its_count_from_the_trainer_every_step():
    _, trainer, recorder = build("freeze", steps=5)
    trainer.fit(batches())
    assert all(overall is not None for _, overall, _ in recorder.calls)


def test_a_non_finite_loss_stops_before_the_update():
    model, trainer, _ = build("schedule", steps=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def poisoned():
        for image, targets in batches():
            yield image, {**targets, "b": torch.full_like(targets["b"], float("nan"))}

    with pytest.raises(TrainingDiverged) as raised:
        trainer.fit(poisoned())
    assert raised.value.weights_good and "'b'" in str(raised.value)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_trainer_module_imports_no_config():
    imports = imported_modules(ENGINE / "trainer.py")
    assert not any(name in ("adapmtl_cli.config", "adapmtl_cli.builders") for name in imports), imports


def test_a_sequential_model_still_runs_with_its_sparsifier_attached():
    """The sparsifier becomes a child of the model; nn.Sequential calls every child in turn."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1))
    image = torch.rand(1, 3, 6, 6)
    Sparsifier(model, {"backbone": model}, init=-1000.0)  # t = 0: W_eff = W
    assert "sparsifier" in dict(model.named_children())
    expected = nn.functional.conv2d(torch.relu(nn.functional.conv2d(image, model[0].parametrizations.weight.original,
                                                                      model[0].bias)), model[2].parametrizations.weight.original, model[2].bias)
    assert torch.allclose(model(image), expected)
