"""The ``adapmtl`` command line: parse, call a workflow, render, choose the exit code.

Heavy modules (torch, the engine) are imported inside the commands so ``adapmtl --help`` stays fast.
Human output goes to stderr; ``--json`` prints exactly one JSON document on stdout.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from adapmtl_cli import __version__
from adapmtl_cli.engine.prune_methods import METHODS as PRUNE_METHODS, SCOPES as PRUNE_SCOPES, spoken_list

app = typer.Typer(
    name="adapmtl",
    help="Compress multitask dense-prediction networks with AdapMTL (learnable per-component soft thresholds, adaptive task weighting).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
presets_app = typer.Typer(help="List, show, copy and validate presets.", no_args_is_help=True)
app.add_typer(presets_app, name="presets")

_state = {"debug": False}


def _version(value: bool) -> None:
    if value:
        print(f"adapmtl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks of errors."),
) -> None:
    _state["debug"] = debug


def _console():
    from adapmtl_cli.report.console import stderr_console

    return stderr_console


def _print_json(document) -> None:
    """Strict JSON (an undefined metric is null, never NaN) so jq and JavaScript parse it."""
    from adapmtl_cli.report.jsonout import dumps

    sys.stdout.write(dumps(document, indent=2) + "\n")


# -- train ----------------------------------------------------------------------------------


@app.command(context_settings={"allow_extra_args": False})
def train(
    overrides: Optional[List[str]] = typer.Argument(None, help="Config overrides as dotted key=value, e.g. train.steps=500 optim.lr=3e-4."),
    preset: str = typer.Option("demo", "--preset", "-p", help="A preset name (`adapmtl presets list`) or a TOML file."),
    data_root: Optional[str] = typer.Option(None, "--data-root", help="Dataset folder (sets data.root)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory [default: runs/<preset>/<timestamp>]."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this directory exactly where it stopped."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing run directory."),
    as_json: bool = typer.Option(False, "--json", help="Print summary.json on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or tables."),
    nproc: int = typer.Option(0, "--nproc", min=0, help="Launch N data-parallel processes with torchrun (gloo on CPU, NCCL on GPUs)."),
) -> None:
    """Train a sparse multitask model (AdapMTL) and write a run directory."""
    from adapmtl_cli.workflows import train as workflow

    console = _console()
    if nproc > 1:
        raise typer.Exit(_launch_torchrun(nproc, preset, overrides or [], data_root, out, resume, force, as_json, quiet))
    if resume is not None:
        if overrides:
            raise _usage("--resume continues a run with its saved config.toml; overrides are not allowed")
        summary = workflow.resume(resume, console=console, quiet=quiet)
        run_dir = resume
    else:
        config = workflow.prepare_config(preset, overrides or [], data_root)
        if out is None and _under_torchrun():
            raise _usage("under torchrun every process must agree on the run directory: pass --out DIR")
        run_dir = out or workflow.default_run_dir(config)
        summary = workflow.train(config, run_dir, console=console, force=force, quiet=quiet)
    if _under_torchrun() and os.environ.get("RANK", "0") != "0":
        return  # rank 0 reports for everyone
    if not quiet:
        from adapmtl_cli.report.console import print_summary

        print_summary(console, summary, run_dir)
    if as_json:
        _print_json(summary)


def _under_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _launch_torchrun(nproc, preset, overrides, data_root, out, resume, force, as_json, quiet) -> int:
    """Re-run this command under torchrun with ``nproc`` processes on this machine."""
    import subprocess

    from adapmtl_cli.workflows.train import default_run_dir, prepare_config

    args = ["train"]
    if resume is not None:
        args += ["--resume", str(resume)]
    else:
        config = prepare_config(preset, overrides, data_root)  # fail fast, before spawning
        args += ["--preset", preset, "--out", str(out or default_run_dir(config))]
        if data_root is not None:
            args += ["--data-root", data_root]
        args += ["--force"] * force
    args += ["--json"] * as_json + ["--quiet"] * quiet + list(overrides)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "adapmtl_cli", *args]
    return subprocess.call(command)


# -- prune / finetune -----------------------------------------------------------------------


@app.command()
def prune(
    checkpoint: Path = typer.Argument(..., help="The checkpoint to prune (its effective weights)."),
    ratio: float = typer.Option(..., "--ratio", help="Fraction of the currently non-zero conv and linear weights to remove, in (0, 1)."),
    out: Path = typer.Option(..., "--out", "-o", help="The pruned checkpoint (with masks) to write."),
    method: str = typer.Option("magnitude", "--method", help=f"{spoken_list(PRUNE_METHODS)}."),
    scope: str = typer.Option("global", "--scope", help=f"{spoken_list(PRUNE_SCOPES)}: where the ratio applies."),
    steps: int = typer.Option(1, "--steps", help="Prune and finetune in N stages (iterative pruning)."),
    data_root: Optional[str] = typer.Option(None, "--data-root", help="Data for SNIP/DiSparse scores; synthetic without one."),
    batches: int = typer.Option(4, "--batches", min=1, help="Batches for SNIP/DiSparse saliency."),
    force: bool = typer.Option(False, "--force", help="Overwrite --out."),
    as_json: bool = typer.Option(False, "--json", help="Print the pruned checkpoint's report as JSON on stdout."),
    overrides: Optional[List[str]] = typer.Argument(None, help="With --steps: key=value overrides of the finetuning runs."),
) -> None:
    """Prune a checkpoint once (or in --steps stages with finetuning in between)."""
    from adapmtl_cli.workflows import prune as workflow

    if steps > 1:
        report = workflow.prune_iteratively(checkpoint, ratio, steps, out, overrides=overrides or [], method=method,
                                            scope=scope, data_root=data_root, console=_console(), force=force, quiet=as_json)
    else:
        if overrides:
            raise _usage("key=value overrides configure the finetuning of --steps N > 1; none happens with one stage")
        report = workflow.prune(checkpoint, ratio, out, method=method, scope=scope, data_root=data_root, batches=batches, force=force)
    if as_json:
        _print_json(report)
        return
    from adapmtl_cli.report.console import print_file_report

    print_file_report(_console(), report)


@app.command()
def finetune(
    checkpoint: Path = typer.Argument(..., help="A pruned checkpoint (masks kept) or any checkpoint (re-sparsified)."),
    overrides: Optional[List[str]] = typer.Argument(None, help="key=value overrides, e.g. sparsity.target=0.9 train.steps=2000."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory [default: runs/<preset>-finetune/<timestamp>]."),
    preset: Optional[str] = typer.Option(None, "--preset", "-p", help="Training recipe to use instead of the checkpoint's (the network stays the checkpoint's)."),
    mode: str = typer.Option("auto", "--mode", help="masked (keep the pruning masks), resparsify (thresholds from sInit), or auto."),
    rewind: Optional[Path] = typer.Option(None, "--rewind", help="Lottery ticket: the run's init.safetensors; survivors restart from it."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing run directory."),
    as_json: bool = typer.Option(False, "--json", help="Print summary.json on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or tables."),
) -> None:
    """Finetune a checkpoint: keep a pruned model's masks, or push a model to a higher sparsity."""
    from adapmtl_cli.workflows import finetune as workflow

    run_dir = out or workflow.default_finetune_dir(checkpoint)
    summary = workflow.finetune(checkpoint, run_dir, overrides=overrides or [], preset=preset, mode=mode, rewind=rewind,
                                console=_console(), force=force, quiet=quiet)
    if not quiet:
        from adapmtl_cli.report.console import print_summary

        print_summary(_console(), summary, run_dir)
    if as_json:
        _print_json(summary)


# -- eval -----------------------------------------------------------------------------------


@app.command("eval")
def eval_command(
    checkpoint: Path = typer.Argument(..., help="A checkpoint (.safetensors) to evaluate."),
    data_root: Optional[str] = typer.Option(None, "--data-root", help="Dataset folder; without one the synthetic scenes are used."),
    split: str = typer.Option("test", "--split", help="test or val."),
    baseline: Optional[Path] = typer.Option(None, "--baseline", help="An eval JSON or a checkpoint (the dense model) to compute Delta against."),
    fail_under: Optional[float] = typer.Option(None, "--fail-under", help="Exit 1 when Delta_T is below this (needs --baseline)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Evaluate a checkpoint: every task's metrics, component sparsity, and Delta against a baseline."""
    from adapmtl_cli.errors import GateFailed
    from adapmtl_cli.workflows import evaluate as workflow

    if fail_under is not None and baseline is None:
        raise _usage("--fail-under needs --baseline (Delta_T is measured against it)")
    result = workflow.evaluate_checkpoint(checkpoint, data_root=data_root, split=split, baseline=baseline, device=device)
    if as_json:
        _print_json(result)
    else:
        from adapmtl_cli.report.console import print_eval

        print_eval(_console(), result)
    if fail_under is not None and not result["delta"]["delta_t"] >= fail_under:  # NaN (undefined) fails too
        from adapmtl_cli.report.jsonout import is_undefined

        delta_t = result["delta"]["delta_t"]
        if is_undefined(delta_t):
            raise GateFailed(f"{checkpoint}: Delta_T is undefined (no metric is defined in both it and the baseline; "
                             f"see delta.skipped in --json), so it cannot pass --fail-under {fail_under:+.2f}")
        raise GateFailed(f"{checkpoint}: Delta_T {delta_t:+.2f} is below --fail-under {fail_under:+.2f}")


# -- compare --------------------------------------------------------------------------------


@app.command()
def compare(
    files: List[Path] = typer.Argument(..., help="Run folders (their summary.json), eval JSONs (adapmtl eval --json) or checkpoints. A row is named after its run folder, else its file's stem."),
    baseline: Optional[Path] = typer.Option(None, "--baseline", help="The dense model: a run folder, an eval JSON or a checkpoint. Default: the dense inputs (no zero weight); several (seeds) are pooled into their mean."),
    data_root: Optional[str] = typer.Option(None, "--data-root", help="Dataset folder for checkpoints; synthetic without one."),
    output_format: str = typer.Option("table", "--format", help="table, markdown or csv."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Draw --metric against overall sparsity into this file (.png, .svg or .pdf): one line per method; inputs of a method at the same sparsity (to 0.1 points: seeds) are one point, their mean +-1 sd; the dense baseline is a dashed line with its seeds' +-1 sd band. Needs pip install 'adapmtl\\[plot]'."),
    metric: Optional[str] = typer.Option(None, "--metric", help="The curve's y: delta_t (default), delta_p, delta/<task> or <task>/<metric> (e.g. segment_semantic/miou). Adds 'curve' to --json."),
    method_of: Optional[str] = typer.Option(None, "--method-of", help="A regular expression whose first group, searched in a row's name, is its method. Default: the name without its '-'/'_'-separated parts that contain a digit (adapmtl-0.9-seed1 and adapmtl_s95 are both adapmtl)."),
    as_json: bool = typer.Option(False, "--json", help="Print the comparison as JSON on stdout."),
) -> None:
    """Compare models in the layout of the paper's Table 2 (metrics, Delta per task, sparsity, Delta_T),
    and plot a metric against sparsity: adapmtl compare runs/*/ --plot curve.png"""
    from adapmtl_cli.report import tables
    from adapmtl_cli.workflows import compare as workflow

    if output_format not in tables.COMPARISON_FORMATS:
        raise _usage(f"--format {output_format!r}: choose table, markdown or csv")
    if plot is not None:
        from adapmtl_cli.report.plots import check_plot_target

        check_plot_target(plot)  # before any checkpoint is evaluated
    curve_metric = metric or ("delta_t" if plot is not None else None)
    comparison = workflow.compare(files, baseline, curve_metric=curve_metric, method_of=method_of, data_root=data_root)
    if as_json:
        _print_json(comparison)
    elif output_format == "table":
        _console().print(tables.comparison_table(comparison))
        if "curve" in comparison:
            _console().print(tables.curve_table(comparison["curve"]))
    else:
        sys.stdout.write(tables.comparison_text(comparison, output_format))
    if plot is not None:
        from adapmtl_cli.report.plots import plot_curve

        _console().print(f"wrote {plot_curve(comparison['curve'], plot)}", markup=False, highlight=False)


# -- inspect --------------------------------------------------------------------------------


@app.command()
def inspect(
    file: Path = typer.Argument(..., help="An adapmtl checkpoint or export (.safetensors) or a reference AdapMTL .model file."),
    layers: bool = typer.Option(False, "--layers", help="Add the per-layer table."),
    as_json: bool = typer.Option(False, "--json", help="Print the numbers as JSON on stdout."),
) -> None:
    """Explain a checkpoint without a dataset: per-component sparsity, thresholds, sizes."""
    from adapmtl_cli.io.inspect import inspect_file

    report = inspect_file(file)
    if as_json:
        _print_json(report.as_dict(with_layers=layers))
        return
    from adapmtl_cli.report.console import print_inspect

    print_inspect(_console(), report, with_layers=layers)


# -- export ---------------------------------------------------------------------------------


@app.command()
def export(
    checkpoint: Path = typer.Argument(..., help="An adapmtl checkpoint (.safetensors)."),
    output_format: str = typer.Option(..., "--format", help="dense (safetensors, plain keys), sparse (bitmask + non-zeros) or program (torch.export)."),
    out: Path = typer.Option(..., "--out", "-o", help="The file to write."),
    force: bool = typer.Option(False, "--force", help="Overwrite --out."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="fp32, fp16 or bf16: dtype of the stored non-zeros (--format sparse only; default fp32)."),
    as_json: bool = typer.Option(False, "--json", help="Print the sizes as JSON on stdout."),
) -> None:
    """Export a checkpoint with its thresholds folded in: dense weights, a compact sparse file, or a torch.export program."""
    from adapmtl_cli.io.export import export_checkpoint

    result = export_checkpoint(checkpoint, output_format, out, force=force, dtype=dtype)
    from adapmtl_cli.report.console import print_export

    print_export(_console(), result, output_format)
    if as_json:
        _print_json(result.as_dict())


# -- presets --------------------------------------------------------------------------------


@presets_app.command("list")
def presets_list(as_json: bool = typer.Option(False, "--json", help="Print a JSON object name -> description.")) -> None:
    """List the shipped presets."""
    from adapmtl_cli.workflows import presets as workflow

    descriptions = workflow.preset_descriptions()
    if as_json:
        _print_json(descriptions)
        return
    from adapmtl_cli.report.console import presets_table

    _console().print(presets_table(descriptions))


@presets_app.command("show")
def presets_show(name: str = typer.Argument(..., help="Preset name or TOML file.")) -> None:
    """Print a preset's TOML on stdout."""
    from adapmtl_cli.workflows import presets as workflow

    sys.stdout.write(workflow.preset_text(name))


@presets_app.command("copy")
def presets_copy(
    name: str = typer.Argument(..., help="Preset to copy."),
    destination: Path = typer.Argument(..., help="Where to write the TOML file."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
) -> None:
    """Copy a preset to a file you can edit and pass back with --preset FILE."""
    from adapmtl_cli.workflows import presets as workflow

    path = workflow.copy_preset(name, destination, force)
    _console().print(f"wrote {path}")


@presets_app.command("validate")
def presets_validate(
    name: str = typer.Argument(..., help="Preset name or TOML file."),
    overrides: Optional[List[str]] = typer.Argument(None, help="key=value overrides to validate with it."),
) -> None:
    """Check a preset (and overrides) against the schema; exit 2 with the first error."""
    from adapmtl_cli.workflows import presets as workflow

    workflow.validate_preset(name, overrides or [])
    _console().print(f"{name}: valid")


# -- entry point ----------------------------------------------------------------------------


def _usage(message: str):
    from adapmtl_cli.errors import ConfigError

    return ConfigError(message)


def _click_exceptions() -> tuple[tuple, tuple, tuple]:
    """(Exit, ClickException, Abort) classes of click and of the click that typer vendors."""
    modules = []
    for name in ("click.exceptions", "typer._click.exceptions"):
        try:
            modules.append(__import__(name, fromlist=["ClickException"]))
        except ImportError:
            pass
    exits = tuple(m.Exit for m in modules if hasattr(m, "Exit")) + (typer.Exit,)
    errors = tuple(m.ClickException for m in modules if hasattr(m, "ClickException"))
    aborts = tuple(m.Abort for m in modules if hasattr(m, "Abort")) + ((typer.Abort,) if hasattr(typer, "Abort") else ())
    return exits, errors, aborts


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; every expected failure becomes one line on stderr and its exit code."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    exits, click_errors, aborts = _click_exceptions()
    try:
        result = app(args=args, prog_name="adapmtl", standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except exits as exc:
        code = getattr(exc, "exit_code", 0)
    except click_errors as exc:
        context = getattr(exc, "ctx", None)
        command = context.command_path if context is not None else "adapmtl"
        sys.stderr.write(f"adapmtl: error: {exc.format_message()} (see `{command} --help`)\n")
        code = 2
    except (KeyboardInterrupt, *aborts):
        sys.stderr.write("adapmtl: interrupted\n")
        code = 130
    except Exception as exc:  # noqa: BLE001 - the one place that turns errors into exit codes
        from adapmtl_cli.errors import AdapmtlError

        if debug:
            raise
        if isinstance(exc, AdapmtlError):
            sys.stderr.write(f"adapmtl: error: {exc.message}\n")
            code = exc.exit_code
        else:
            sys.stderr.write(f"adapmtl: internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)\n")
            code = 70
    if argv is None:
        sys.exit(code)
    return code
