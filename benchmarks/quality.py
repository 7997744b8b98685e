"""The quality benchmark: AdapMTL against the paper's comparison methods on the bench scenes.

Three questions, all on `data.scenes = "bench"` (curved and slanted surfaces, class-blind textures,
shading and noise; every run trains on the same scenes, so a seed changes the initialisation and the
batch order only), and every method with the same number of training steps S:

1. Noise. The dense model trained with every seed: each metric's sd over seeds, and the sd of
   Delta_T between two dense runs (what a difference between two methods has to beat).
2. The table at overall sparsity 0.9, over the same seeds:
     adapmtl                   schedule control, component thresholds, adaptive weighting
     adapmtl-freeze            the reference's stop rule; sInit and weight decay tuned on seed 0 (a grid,
                               then bisection of sInit) so that it lands closest to 0.9 within S
                               (the tuning runs are counted);
                               a run that stops below 0.9 is magnitude-pruned to 0.9 at the end
     adapmtl-one-threshold     one global threshold (ablation)
     adapmtl-equal-weighting   equal task weights (ablation)
     magnitude                 S/2 dense steps, global magnitude pruning, S/2 masked finetuning
     imp                       S/2 dense, then 3 x (prune, S/6 masked finetuning)
     lth                       S/2 dense, prune, rewind the survivors to init, S/2 masked training
     snip / disparse           pruned at initialisation from saliency, S masked training
   Delta_T is taken against the dense models' mean (`adapmtl compare` pools the dense runs), gaps to
   AdapMTL are paired by seed, with 95% t intervals.
3. The curve: Delta_T against sparsity 0.5 ... 0.98 for adapmtl, magnitude and imp, drawn by the
   user-facing `adapmtl compare runs/... --plot`.

Every run is an `adapmtl` command; its run folder lands in KEEP/runs/<method>-s<target>-seed<k>/
(intermediate checkpoints in KEEP/work/). A run whose output exists is not run again, so a killed
benchmark continues where it stopped: rerun with the same --keep.

    python benchmarks/quality.py --keep DIR [--write]         the full benchmark (about an hour on 2 cores)
    python benchmarks/quality.py --quick --keep DIR           the smoke test (1 seed, 2 sparsities, 40 steps)
    python benchmarks/quality.py --analyse DIR [--write]      analyse DIR again without running anything
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from itertools import permutations
from pathlib import Path

# The bench setting: every run, whatever its method.
SETTING = ("data.scenes=bench", "data.seed=0", "data.resolution=48", "data.num_classes=6", "model.width=24",
           "data.train_size=4096", "data.val_size=128", "data.test_size=512", "train.batch_size=16", "optim.lr_gamma=0.1")
TABLE_TARGET = 0.9
CURVE_METHODS = ("adapmtl", "magnitude", "imp")


@dataclass(frozen=True)
class Budget:
    steps: int
    seeds: int                                   # dense noise and the table at 0.9
    curve_seeds: int                             # the curve's seeds (the first ones)
    sparsities: tuple[float, ...]                # the curve's targets
    freeze_grid: tuple[tuple[float, float], ...]  # (sInit, weight decay) tried for the freeze rule
    data: tuple[str, ...] = ()                   # overrides of SETTING
    freeze_bisections: int = 0                   # then halve the sInit bracket around the target this often

    def overrides(self, steps: int) -> list[str]:
        """SETTING for a run of ``steps``."""
        return [*SETTING, *self.data, *self.scaled(steps)]

    @staticmethod
    def scaled(steps: int) -> list[str]:
        """What depends on the run's length: the lr drops at 2/3, adaptive weighting starts at 1/4."""
        return [f"train.steps={steps}", f"train.val_every={steps}", f"optim.lr_step={max(1, 2 * steps // 3)}",
                f"weighting.begin={steps // 4}", f"weighting.window={max(1, steps // 12)}"]


FULL = Budget(steps=600, seeds=5, curve_seeds=3, sparsities=(0.5, 0.7, 0.8, 0.9, 0.95, 0.98),
              freeze_grid=tuple((s, wd) for s in (-6.0, -4.0, -3.0) for wd in (1e-4, 1e-3)), freeze_bisections=4)
QUICK = Budget(steps=40, seeds=1, curve_seeds=1, sparsities=(0.9,), freeze_grid=((-4.0, 1e-3),),
               data=("data.train_size=128", "data.val_size=16", "data.test_size=32"))


@dataclass
class Job:
    name: str
    args: list[str]            # the adapmtl command line
    done: Path                 # exists once the job has finished (written atomically by adapmtl)
    after: tuple[str, ...] = ()


def target_name(target: float) -> str:
    return f"s{target:g}"


class Plan:
    """The benchmark's jobs, built from a budget and a folder."""

    def __init__(self, root: Path, budget: Budget):
        self.root, self.budget = root, budget
        self.jobs: dict[str, Job] = {}

    def run_dir(self, method: str, seed: int, target: float | None = None) -> Path:
        return self.root / "runs" / (f"{method}-seed{seed}" if target is None else f"{method}-{target_name(target)}-seed{seed}")

    def add(self, name: str, args: list[str], done: Path, after: tuple[str, ...] = ()) -> str:
        self.jobs[name] = Job(name, [str(a) for a in args], done, tuple(a for a in after if a))
        return name

    def train(self, out: Path, steps: int, seed: int, *extra: str) -> str:
        cache = f"data.cache_dir={self.root / 'scenes'}"
        return self.add(out.name, ["train", "--out", out, "--quiet", "--force", f"seed={seed}", cache,
                                   *self.budget.overrides(steps), *extra], out / "summary.json")

    def finetune(self, checkpoint: Path, out: Path, steps: int, after: str, *extra: str) -> str:
        # The checkpoint's config is the setting; only the step-dependent values change.
        return self.add(out.name, ["finetune", checkpoint, "--out", out, "--quiet", "--force", *Budget.scaled(steps), *extra],
                        out / "summary.json", (after,))

    def prune(self, checkpoint: Path, out: Path, ratio: float, after: str, *extra: str) -> str:
        return self.add(out.stem, ["prune", checkpoint, "--ratio", f"{ratio}", "--out", out, "--force", *extra], out, (after,))


def plan_everything(root: Path, budget: Budget) -> Plan:
    """Every job but the tuned freeze runs of the seeds after 0 (they need the tuning's outcome)."""
    plan, steps, half = Plan(root, budget), budget.steps, budget.steps // 2
    work = root / "work"
    for seed in range(budget.seeds):
        plan.train(plan.run_dir("dense", seed), steps, seed, "sparsity.enabled=false")
        half_dense = plan.train(work / f"half-dense-seed{seed}", half, seed, "sparsity.enabled=false", "train.save_init=true")
        half_model, init = work / half_dense / "model.safetensors", work / half_dense / "init.safetensors"
        targets = set(budget.sparsities) if seed < budget.curve_seeds else set()
        for target in sorted(targets | {TABLE_TARGET}):
            sparse = f"sparsity.target={target}"
            plan.train(plan.run_dir("adapmtl", seed, target), steps, seed, sparse)
            pruned = work / f"pruned-magnitude-{target_name(target)}-seed{seed}.safetensors"
            plan.finetune(pruned, plan.run_dir("magnitude", seed, target), half, plan.prune(half_model, pruned, target, half_dense))
            current, stage_ratio, after = half_model, 1 - (1 - target) ** (1 / 3), half_dense
            for stage in range(3):
                pruned = work / f"pruned-imp-{target_name(target)}-seed{seed}-stage{stage}.safetensors"
                out = plan.run_dir("imp", seed, target) if stage == 2 else work / f"imp-{target_name(target)}-seed{seed}-stage{stage}"
                after = plan.finetune(pruned, out, max(1, steps // 6), plan.prune(current, pruned, stage_ratio, after))
                current = out / "model.safetensors"
        target, sparse = TABLE_TARGET, f"sparsity.target={TABLE_TARGET}"
        plan.train(plan.run_dir("adapmtl-one-threshold", seed, target), steps, seed, sparse, "sparsity.granularity=global")
        plan.train(plan.run_dir("adapmtl-equal-weighting", seed, target), steps, seed, sparse, "weighting.method=equal")
        pruned = work / f"pruned-lth-seed{seed}.safetensors"
        plan.finetune(pruned, plan.run_dir("lth", seed, target), half, plan.prune(half_model, pruned, target, half_dense), "--rewind", init)
        for method in ("snip", "disparse"):
            pruned = work / f"pruned-{method}-seed{seed}.safetensors"
            plan.finetune(pruned, plan.run_dir(method, seed, target), steps,
                          plan.prune(init, pruned, target, half_dense, "--method", method, "--batches", "8"))
    for init_s, decay in budget.freeze_grid:
        freeze_run(plan, work / f"freeze-tune-i{init_s:g}-wd{decay:g}-seed0", 0, init_s, decay)
    return plan


def freeze_run(plan: Plan, out: Path, seed: int, init_s: float, decay: float) -> str:
    return plan.train(out, plan.budget.steps, seed, f"sparsity.target={TABLE_TARGET}", "sparsity.control=freeze",
                      f"sparsity.init={init_s}", f"optim.weight_decay={decay}")


def plan_freeze(root: Path, budget: Budget, choice: tuple[float, float], tuned: Path) -> Plan:
    """The tuned freeze runs, finished the way a user would: a run below 0.9 is pruned to 0.9."""
    plan = Plan(root, budget)
    init_s, decay = choice
    for seed in range(budget.seeds):
        trained = tuned if seed == 0 else root / "work" / f"freeze-i{init_s:g}-wd{decay:g}-seed{seed}"
        after = "" if seed == 0 else freeze_run(plan, trained, seed, *choice)
        final = plan.run_dir("adapmtl-freeze", seed, TABLE_TARGET)
        if (final / "summary.json").exists() and json.loads((final / "summary.json").read_text()).get("trained") != str(trained):
            shutil.rmtree(final)  # finished from another tuning outcome
        plan.add(final.name, ["--finish-freeze", trained, final], final / "summary.json", (after,))
    return plan


def tuning_runs(root: Path) -> list[tuple[float, float, float, Path]]:
    """Every finished tuning run of the freeze rule: (sInit, weight decay, final sparsity, folder)."""
    runs = []
    for folder in (root / "work").glob("freeze-tune-i*-wd*-seed0"):
        match = re.fullmatch(r"freeze-tune-i(.+)-wd(.+)-seed0", folder.name)
        if match and (folder / "summary.json").exists():
            overall = json.loads((folder / "summary.json").read_text())["sparsity"]["overall"]
            runs.append((float(match[1]), float(match[2]), overall, folder))
    return sorted(runs, key=lambda run: (run[1], run[0]))


def tune_freeze(root: Path, budget: Budget, workers: int) -> None:
    """After the grid, halve the sInit bracket around the target (at the weight decay whose bracket
    has the end closest to it) until a run lands within 0.5 points or the bisections are spent: the
    final sparsity grows with sInit, steeply (at 600 steps, -4 ends near 75% and -3 near 99.9%)."""
    for _ in range(budget.freeze_bisections):
        runs = tuning_runs(root)
        if any(abs(overall - TABLE_TARGET) <= 0.005 for _, _, overall, _ in runs):
            return
        brackets = []
        for decay in sorted({run[1] for run in runs}):
            below = [r for r in runs if r[1] == decay and r[2] < TABLE_TARGET]
            above = [r for r in runs if r[1] == decay and r[2] >= TABLE_TARGET]
            if below and above:
                low, high = max(below, key=lambda r: r[0]), min(above, key=lambda r: r[0])
                brackets.append((min(abs(low[2] - TABLE_TARGET), abs(high[2] - TABLE_TARGET)), decay, low[0], high[0]))
        if not brackets:
            return
        _, decay, low, high = min(brackets)
        plan = Plan(root, budget)
        freeze_run(plan, root / "work" / f"freeze-tune-i{round((low + high) / 2, 4):g}-wd{decay:g}-seed0", 0, round((low + high) / 2, 4), decay)
        run_jobs(plan, workers, root / "logs")


def run_jobs(plan: Plan, workers: int, logs: Path) -> None:
    """Run every job whose output is missing, ``workers`` at a time, each after the jobs it needs.

    Each worker is one Python process that imports torch once and runs its jobs through
    ``adapmtl_cli.cli.main`` (the command line, in-process): a fresh `adapmtl` process per job spends
    about 8 s importing torch (4 s of it torch._dynamo, pulled in by the optimizer), longer than a
    short job itself."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    logs.mkdir(parents=True, exist_ok=True)
    pending = {name: job for name, job in plan.jobs.items() if not job.done.exists()}
    seconds_file = logs / "seconds.json"  # each job's wall time: the tuning cost, where the time goes
    seconds = json.loads(seconds_file.read_text()) if seconds_file.exists() else {}
    threads = max(1, (os.cpu_count() or 2) // workers)
    running: dict = {}
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker,
                             initargs=(threads,)) as pool:
        while pending or running:
            for name, job in list(pending.items()):
                if len(running) < workers and not any(dep in pending or dep in running.values() for dep in job.after):
                    running[pool.submit(_run_job, job.args, str(logs / f"{name}.log"))] = name
                    del pending[name]
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in finished:
                name = running.pop(future)
                code, wall = future.result()
                seconds[name] = round(wall, 1)
                seconds_file.write_text(json.dumps(seconds, indent=1))
                if code != 0:
                    wait(list(running))
                    tail = (logs / f"{name}.log").read_text().strip().splitlines()[-1:] or ["(no output)"]
                    raise SystemExit(f"quality.py: {name} failed (exit {code}): {tail[0]}; log in {logs / name}.log")


def _start_worker(threads: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


def _run_job(args: list[str], log: str) -> tuple[int, float]:
    """One job in a worker: an adapmtl command line, or the freeze runs' finishing step."""
    import contextlib

    start = time.time()
    with open(log, "w") as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        if args[0] == "--finish-freeze":
            finish_freeze(Path(args[1]), Path(args[2]))
            code = 0
        else:
            code = adapmtl(*args)
    return code, time.time() - start


def adapmtl(*args: str, stdout=None) -> int:
    """The adapmtl command line, in this process."""
    import contextlib

    from adapmtl_cli.cli import main

    with contextlib.redirect_stdout(stdout) if stdout is not None else contextlib.nullcontext():
        return main([str(a) for a in args])


def finish_freeze(trained: Path, final: Path) -> None:
    """Copy a freeze run's summary; below the target, prune it to the target (no finetuning)."""
    import io

    from adapmtl_cli.report import jsonout

    summary = dict(json.loads((trained / "summary.json").read_text()), trained=str(trained))
    staging = final.with_name(final.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    if summary["sparsity"]["overall"] < TABLE_TARGET:
        remaining = 1 - (1 - TABLE_TARGET) / (1 - summary["sparsity"]["overall"])
        pruned = trained / "pruned-to-target.safetensors"
        if adapmtl("prune", trained / "model.safetensors", "--ratio", f"{remaining}", "--out", pruned, "--force") != 0:
            raise SystemExit(f"quality.py: pruning {trained} to the target failed")
        printed = io.StringIO()
        if adapmtl("eval", pruned, "--json", stdout=printed) != 0:
            raise SystemExit(f"quality.py: evaluating {pruned} failed")
        evaluated = json.loads(printed.getvalue())
        summary = dict(summary, metrics=evaluated["metrics"], sparsity=evaluated["sparsity"],
                       notes=summary["notes"] + [f"stopped at {summary['sparsity']['overall']:.2%}; magnitude-pruned to {TABLE_TARGET:.0%} after training"])
    staging.mkdir(parents=True)
    (staging / "summary.json").write_text(jsonout.dumps(summary, indent=2) + "\n")  # strict JSON, as adapmtl writes
    shutil.rmtree(final, ignore_errors=True)
    os.replace(staging, final)


def choose_freeze(root: Path, budget: Budget) -> tuple[tuple[float, float], Path, list[str]]:
    """The tuning run whose final sparsity is closest to the target, and the tuning table."""
    runs = tuning_runs(root)
    init_s, decay, _, folder = min(runs, key=lambda run: abs(run[2] - TABLE_TARGET))
    rows = [f"| {s:g} | {wd:g} | {100 * overall:.2f} |" for s, wd, overall, _ in runs]
    return (init_s, decay), folder, rows


# -- analysis -----------------------------------------------------------------------------

T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26, 10: 2.23}


def compare_json(folders: list[Path], *extra: str) -> dict:
    result = subprocess.run([sys.executable, "-m", "adapmtl_cli", "compare", *map(str, folders), "--json", *extra],
                            check=True, capture_output=True, text=True)
    return json.loads(result.stdout)


def interval(values: list[float]) -> str:
    """mean [95% t interval] of a paired difference."""
    mean = statistics.mean(values)
    if len(values) < 2:
        return f"{mean:+.1f}"
    half = T95.get(len(values) - 1, 2.0) * statistics.stdev(values) / math.sqrt(len(values))
    return f"{mean:+.1f} [{mean - half:+.1f}, {mean + half:+.1f}]"


def sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else float("nan")


def mean_sd(values: list[float], digits: int = 1) -> str:
    """``+mean ± sd``; the mean alone for one value."""
    mean = f"{statistics.mean(values):+.{digits}f}"
    return mean if len(values) < 2 else f"{mean} ± {statistics.stdev(values):.{digits}f}"


def noise_lines(dense: list[Path]) -> list[str]:
    summaries = [json.loads((d / "summary.json").read_text())["metrics"] for d in dense]
    lines = [f"Dense model, {len(dense)} seeds (same scenes, different initialisation and batch order):", "",
             "| metric | mean | sd over seeds |", "|---|---|---|"]
    for task, metrics in summaries[0].items():
        for key in metrics:
            values = [s[task][key] for s in summaries]
            lines.append(f"| {task}/{key} | {statistics.mean(values):.4g} | {'' if len(values) < 2 else f'{sd(values):.3g}'} |")
    from adapmtl_cli.workflows.compare import compare  # in-process: one call per ordered pair

    pairwise = []
    for a, b in permutations(dense, 2):
        by_name = {row["model"]: row for row in compare([a], b)["rows"]}
        pairwise.append(by_name[a.name]["delta"]["delta_t"])
    if len(dense) < 2:
        return lines + ["", "(One seed: no noise to measure.)"]
    by_name = {row["model"]: row for row in compare_json(dense)["rows"]}
    pooled = [by_name[d.name]["delta"]["delta_t"] for d in dense]
    rms = math.sqrt(statistics.mean(v * v for v in pairwise))
    lines += ["", f"Delta_T of one dense run against another (all {len(pairwise)} ordered pairs): rms {rms:.2f} points "
              f"(largest {max(map(abs, pairwise)):.2f}). Delta_T of each dense run against the dense mean: sd {sd(pooled):.2f} points."]
    return lines


def table_lines(root: Path, budget: Budget) -> list[str]:
    runs = root / "runs"
    seeds = range(budget.seeds)
    tag = target_name(TABLE_TARGET)
    methods = sorted({p.name.rsplit(f"-{tag}-seed", 1)[0] for p in runs.glob(f"*-{tag}-seed*")})
    dense = [runs / f"dense-seed{k}" for k in seeds]
    folders = dense + [runs / f"{m}-{tag}-seed{k}" for m in methods for k in seeds]
    rows = {r["model"]: r for r in compare_json(folders)["rows"]}
    delta = {m: [rows[f"{m}-{tag}-seed{k}"]["delta"]["delta_t"] for k in seeds] for m in methods}
    ranks = {m: [] for m in methods}
    for k in seeds:
        for rank, m in enumerate(sorted(methods, key=lambda m: -delta[m][k]), start=1):
            ranks[m].append(rank)
    components = list(rows[f"adapmtl-{tag}-seed0"]["sparsity"]["components"])
    lines = [f"At overall sparsity {TABLE_TARGET}, {len(seeds)} seeds, {budget.steps} steps for every method. Delta_T in points "
             "against the dense models' mean (mean ± sd over seeds); the gap to AdapMTL paired by seed, mean [95% t interval] "
             "(resolved when the interval excludes 0); the mean rank (1 = best); sparsity in %, mean over seeds.", "",
             "| method | Delta_T | gap to AdapMTL [95% CI] | resolved | mean rank | overall | " + " | ".join(components) + " |",
             "|" + "---|" * (6 + len(components))]
    for m in sorted(methods, key=lambda m: -statistics.mean(delta[m])):
        gaps = [a - b for a, b in zip(delta[m], delta["adapmtl"])]
        text = interval(gaps)
        resolved = "" if m == "adapmtl" or len(gaps) < 2 else ("yes" if "[" in text and _excludes_zero(text) else "no")
        sparsity = [rows[f"{m}-{tag}-seed{k}"]["sparsity"] for k in seeds]
        per_component = " | ".join(f"{100 * statistics.mean(s['components'][c] for s in sparsity):.1f}" for c in components)
        lines.append(f"| {m} | {mean_sd(delta[m])} | {'' if m == 'adapmtl' else text} | {resolved} | "
                     f"{statistics.mean(ranks[m]):.1f} | {100 * statistics.mean(s['overall'] for s in sparsity):.2f} | {per_component} |")
    half = [root / "work" / f"half-dense-seed{k}" for k in seeds]
    by_name = {r["model"]: r for r in compare_json(dense + half)["rows"]}
    half_delta = [by_name[h.name]["delta"]["delta_t"] for h in half]
    lines += ["", f"Not a method: the dense model after S/2 steps scores {mean_sd(half_delta)} "
              "(a clearly negative value means the task is not saturated at S steps)."]
    return lines


def _excludes_zero(text: str) -> bool:
    low, high = (float(v) for v in text.split("[")[1].rstrip("]").split(","))
    return low > 0 or high < 0


def curve_lines(root: Path, budget: Budget, picture: Path) -> list[str]:
    runs = root / "runs"
    folders = [runs / f"dense-seed{k}" for k in range(budget.seeds)]
    folders += sorted(p for m in CURVE_METHODS for p in runs.glob(f"{m}-s*-seed*") if int(p.name.rsplit("seed", 1)[1]) < budget.curve_seeds)
    curve = compare_json(folders, "--plot", str(picture))["curve"]
    lines = [f"Delta_T (points, mean ± sd over {budget.curve_seeds} seeds) against overall sparsity; the picture is "
             f"`adapmtl compare runs/dense-* runs/{{{','.join(CURVE_METHODS)}}}-* --plot {picture.name}`.", "",
             "| method | " + " | ".join(f"{100 * t:g}%" for t in budget.sparsities) + " |", "|" + "---|" * (1 + len(budget.sparsities))]
    for method in CURVE_METHODS:
        points = {round(p["x"], 3): p for p in curve["methods"].get(method, [])}
        cells = [points.get(round(t, 3)) for t in budget.sparsities]
        lines.append(f"| {method} | " + " | ".join("" if p is None else f"{p['y']:+.1f} ± {p['sd']:.1f}" if p.get("sd") is not None
                                                    else f"{p['y']:+.1f}" for p in cells) + " |")
    if budget.curve_seeds < 2:
        return lines
    # The same runs paired by seed: each method's gap to AdapMTL at each sparsity, with its interval.
    rows = {row["model"]: row["delta"]["delta_t"] for row in compare_json(folders)["rows"]}
    lines += ["", f"Gap to AdapMTL at each sparsity, paired by seed (points, mean [95% t interval] over {budget.curve_seeds} seeds; "
              "* = resolved, the interval excludes 0):", "",
              "| method | " + " | ".join(f"{100 * t:g}%" for t in budget.sparsities) + " |", "|" + "---|" * (1 + len(budget.sparsities))]
    for method in CURVE_METHODS[1:]:
        cells = []
        for target in budget.sparsities:
            gaps = [rows[f"{method}-{target_name(target)}-seed{k}"] - rows[f"adapmtl-{target_name(target)}-seed{k}"]
                    for k in range(budget.curve_seeds)]
            text = interval(gaps)
            cells.append(text + (" *" if _excludes_zero(text) else ""))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def analyse(root: Path, budget: Budget, picture: Path, minutes: float | None) -> list[str]:
    choice, _, tuning = choose_freeze(root, budget)
    commit = (root / "commit.txt").read_text().strip() if (root / "commit.txt").exists() else "unknown"
    lines = [f"### Quality on the bench scenes ({budget.steps} steps per method, {budget.seeds} seeds, 48 px, demo net at width 24; "
             f"commit {commit})", ""]
    lines += noise_lines([root / "runs" / f"dense-seed{k}" for k in range(budget.seeds)])
    tuning_seconds = sum(v for k, v in json.loads((root / "logs" / "seconds.json").read_text()).items() if k.startswith("freeze-tune-"))
    lines += ["", f"Tuning the freeze rule (seed 0: a grid, then bisection of sInit; {len(tuning)} runs of {budget.steps} steps, "
              f"{tuning_seconds / 60:.0f} min of run time, {len(tuning)}x a training run; the setting closest to "
              f"{TABLE_TARGET:.0%} is used, sInit {choice[0]:g} and weight decay {choice[1]:g}):", "",
              "| sInit | weight decay | final sparsity % |", "|---|---|---|", *tuning, ""]
    lines += table_lines(root, budget) + [""] + curve_lines(root, budget, picture)
    if minutes is not None:
        lines += ["", f"({minutes:.0f} min on this machine; run folders in {root})"]
    return lines


def kept_budget(root: Path, budget: Budget, given: bool) -> Budget:
    """The budget a kept folder was made with (budget.json): a resumed or re-analysed run keeps it;
    asking for another one there is an error."""
    import dataclasses

    path = root / "budget.json"
    if not path.exists():
        root.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(dataclasses.asdict(budget)) + "\n")
        return budget
    stored = json.loads(path.read_text())
    kept = Budget(**{k: tuple(tuple(v) if isinstance(v, list) else v for v in value) if isinstance(value, list) else value
                     for k, value in stored.items()})
    if given and kept != budget:
        raise SystemExit(f"quality.py: {root} was made with another budget ({path}); use another --keep folder")
    return kept


def _commit() -> str:
    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent)
    return result.stdout.strip() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, default=None, help="the benchmark's folder: reused to continue a stopped run")
    parser.add_argument("--quick", action="store_true", help="the smoke test: 1 seed, sparsity 0.9 only, 40 steps, small splits")
    parser.add_argument("--steps", type=int, default=None, help=f"steps per method (default {FULL.steps}; S/2 and S/6 follow)")
    parser.add_argument("--seeds", type=int, default=None, help=f"dense and table seeds (default {FULL.seeds}; the curve keeps {FULL.curve_seeds})")
    parser.add_argument("--workers", type=int, default=2, help="runs at a time (each gets cores / workers threads)")
    parser.add_argument("--analyse", type=Path, default=None, help="only analyse a folder of an earlier run")
    parser.add_argument("--plot", type=Path, default=None, help="where the curve goes (default: <keep>/curve.png)")
    parser.add_argument("--write", action="store_true", help="append the results to benchmarks/RESULTS.md")
    args = parser.parse_args()
    budget = QUICK if args.quick else FULL
    if args.steps or args.seeds:
        budget = replace(budget, steps=args.steps or budget.steps, seeds=args.seeds or budget.seeds,
                         curve_seeds=min(budget.curve_seeds, args.seeds or budget.seeds))
    start, minutes = time.time(), None
    root = args.analyse or args.keep or Path(tempfile.mkdtemp(prefix="adapmtl-quality-"))
    budget = kept_budget(root, budget, given=args.quick or bool(args.steps or args.seeds))
    if args.analyse is None:
        root.mkdir(parents=True, exist_ok=True)
        if not (root / "commit.txt").exists():  # the code the runs were made with (a resumed run keeps it)
            (root / "commit.txt").write_text(_commit() + "\n")
        run_jobs(plan_everything(root, budget), args.workers, root / "logs")
        tune_freeze(root, budget, args.workers)
        choice, tuned, _ = choose_freeze(root, budget)
        run_jobs(plan_freeze(root, budget, choice, tuned), args.workers, root / "logs")
        minutes = (time.time() - start) / 60
    lines = analyse(root, budget, args.plot or root / "curve.png", minutes)
    if args.write:
        from steptime import report

        report(lines, True)
    else:
        print("\n".join(lines))


if __name__ == "__main__":
    main()
