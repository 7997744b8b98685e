"""One idea per module in the engine (issue 18): no engine module holds more than one of the
shrink function, the sparsifier, a controller and pruning; the trainer never asks which
controller it has."""

import ast
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[2] / "adapmtl_cli" / "engine"
CONTROLLER_HOOKS = {"wants_check", "observe", "after_backward", "after_step", "outcome_note"}


def ideas_of(tree: ast.Module) -> set[str]:
    ideas = set()
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            methods = {item.name for item in node.body if isinstance(item, ast.FunctionDef)}
            bases = {getattr(base, "id", getattr(base, "attr", "")) for base in node.bases}
            if node.name == "SoftShrinkGroup":
                ideas.add("shrink")
            elif node.name == "Sparsifier":
                ideas.add("sparsifier")
            elif CONTROLLER_HOOKS <= methods and "Protocol" not in bases:
                ideas.add(f"controller {node.name}")
        elif isinstance(node, ast.FunctionDef) and node.name in ("compute_masks", "magnitude_masks"):
            ideas.add("pruning")
    return ideas


def test_every_engine_module_holds_at_most_one_idea():
    held = {}
    for path in sorted(ENGINE.rglob("*.py")):
        ideas = ideas_of(ast.parse(path.read_text(encoding="utf-8")))
        assert len(ideas) <= 1, f"{path.relative_to(ENGINE)} holds {sorted(ideas)}"
        for idea in ideas:
            held[idea] = path.relative_to(ENGINE).as_posix()
    # The split is real: each idea is found, each in its own module.
    assert held["shrink"] == "shrink.py" and held["sparsifier"] == "sparsifier.py" and held["pruning"] == "pruning.py"
    assert {held[f"controller {name}"] for name in ("FreezeController", "ScheduleController", "MaskKeeper")} == {
        "controllers/freeze.py", "controllers/schedule.py", "controllers/masks.py"}


def test_the_trainer_has_no_branch_on_the_controller_kind():
    tree = ast.parse((ENGINE / "trainer.py").read_text(encoding="utf-8"))
    assert not any(isinstance(node, ast.Call) and getattr(node.func, "id", "") == "isinstance" for node in ast.walk(tree))
    names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    names |= {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    names |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names}
    assert not names & {"FreezeController", "ScheduleController", "planned", "frozen", "control"}, names
