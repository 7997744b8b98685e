"""The layout of issue 18, part 3: one workflow module per command of the CLI, no rendering under
workflows/, and a cli.py that parses, calls its command's workflow module, renders with report/.

The command list comes from the Typer app itself, so a new command fails here until it has its
module (or an entry in OWNER saying which module does its work)."""

import ast
import inspect
from pathlib import Path

import typer.main

from adapmtl_cli.cli import app

PACKAGE = Path(__file__).resolve().parents[2] / "adapmtl_cli"
WORKFLOWS = PACKAGE / "workflows"

# The module that does a command's work where it is not adapmtl_cli.workflows.<command>.
OWNER = {
    "eval": "adapmtl_cli.workflows.evaluate",  # a module named eval would shadow the builtin
    "inspect": "adapmtl_cli.io.inspect",  # reads one file: no workflow of its own
    "export": "adapmtl_cli.io.export",  # writes one file: no workflow of its own
}
# Modules of workflows/ that belong to no single command.
SHARED = {"__init__", "_common"}
# Imports that mean rendering: none of them under workflows/.
RENDERING_IMPORTS = ("rich", "csv", "matplotlib", "adapmtl_cli.report.console", "adapmtl_cli.report.tables",
                     "adapmtl_cli.report.plots")
RENDERING_NAMES = ("render", "format", "fmt")


def command_functions() -> dict[str, list]:
    """Top-level command name -> the cli.py functions behind it (a group: one per subcommand)."""
    group = typer.main.get_group(app)
    functions = {}
    for name, command in group.commands.items():
        # A group (presets) has subcommands; typer may vendor its own click, so no isinstance.
        commands = command.commands.values() if hasattr(command, "commands") else [command]
        functions[name] = [inspect.unwrap(c.callback) for c in commands]
    return functions


def owner(command: str) -> str:
    return OWNER.get(command, f"adapmtl_cli.workflows.{command}")


def imported_modules(tree: ast.AST, package_modules: set[str]) -> set[str]:
    """Every module an AST imports; ``from pkg import name`` counts as ``pkg.name`` when that is
    a module of ``package_modules``."""
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names
                           if f"{node.module}.{alias.name}" in package_modules)
    return modules


def workflow_modules() -> set[str]:
    return {f"adapmtl_cli.workflows.{p.stem}" for p in WORKFLOWS.glob("*.py")}


def test_the_cli_has_the_commands_this_test_knows():
    # A guard for the test itself: the Typer app yields the commands (and eval its own name).
    assert {"train", "prune", "finetune", "eval", "compare", "inspect", "export", "presets"} <= set(command_functions())


def test_workflows_has_one_module_per_command_and_nothing_else():
    commands = command_functions()
    for command in commands:
        module = owner(command)
        path = PACKAGE.parent / (module.replace(".", "/") + ".py")
        assert path.is_file(), f"`adapmtl {command}` has no module {module}"
    expected = {owner(c) for c in commands if owner(c).startswith("adapmtl_cli.workflows.")}
    shared = {f"adapmtl_cli.workflows.{name}" for name in SHARED}
    assert workflow_modules() - shared == expected
    assert not [p for p in WORKFLOWS.iterdir() if p.is_dir() and p.name != "__pycache__"]


def test_each_command_calls_its_own_workflow_module():
    tree = ast.parse((PACKAGE / "cli.py").read_text(encoding="utf-8"))
    definitions = {node.name: node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
    workflows = workflow_modules()
    for command, functions in command_functions().items():
        for function in functions:
            imports = imported_modules(definitions[function.__name__], workflows)
            used = {m for m in imports if m in workflows or m == owner(command)}
            assert used == {owner(command)}, (command, function.__name__, sorted(used))


def test_no_rendering_under_workflows():
    workflows = workflow_modules()
    for path in sorted(WORKFLOWS.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        rendering = [m for m in imported_modules(tree, workflows)
                     if any(m == r or m.startswith(r + ".") for r in RENDERING_IMPORTS)]
        assert not rendering, (path.name, rendering)
        functions = [node.name for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
        named = [f for f in functions if f.lstrip("_").startswith(RENDERING_NAMES)]
        assert not named, (path.name, named)


def test_cli_renders_only_through_report():
    tree = ast.parse((PACKAGE / "cli.py").read_text(encoding="utf-8"))
    imports = imported_modules(tree, set())
    assert not [m for m in imports if m == "rich" or m.startswith("rich.") or m == "csv"], sorted(imports)
    functions = [node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)]
    assert not [f for f in functions if f.lstrip("_").startswith(RENDERING_NAMES)]
