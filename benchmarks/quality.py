"""AdapMTL against the paper's comparison methods at equal sparsity, on the synthetic 3-task scenes.

Methods (all at overall sparsity 0.9, all with the same total number of training steps S):
  dense                     S steps, no sparsity (the baseline of Delta_T)
  adapmtl                   S steps, component thresholds, adaptive weighting
  adapmtl-one-threshold     the same with one global threshold (ablation)
  adapmtl-equal-weighting   the same with equal task weights (ablation)
  magnitude                 S/2 dense steps, global magnitude pruning, S/2 masked finetuning
  imp                       S/2 dense, then 3 x (prune, S/6 masked finetuning) to the same ratio
  lth                       S/2 dense, prune, rewind survivors to init, S/2 masked training
  snip / disparse           prune at initialisation from saliency, S masked training
The row dense-half-steps (the dense model after S/2 steps) shows that the task is not saturated.
Methods whose sparsity is not exact are pruned to the achieved value of AdapMTL. Each seed gets its
own dense baseline. The table is `adapmtl compare --format markdown` of seed 0's eval JSONs. Over
seeds the summary gives Delta_T against each seed's dense model and against the dense models' mean
(one dense run's luck moves every method of its seed alike), each method's gap to AdapMTL paired by
seed with a t-test (is the ranking resolved?), the mean rank, and the per-component sparsity.

    python benchmarks/quality.py [--seeds 5] [--steps 600] [--keep DIR] [--write]
    python benchmarks/quality.py --analyse DIR [--write]     (re-analyse kept eval JSONs)
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from steptime import report

from adapmtl_cli.report import jsonout

# A harder setting than the demo's (more classes, larger images, a wider network), so a dense
# model is clearly not saturated in the step budget.
DATA = ["data.resolution=64", "data.num_classes=8", "data.train_size=8192", "data.val_size=128", "data.test_size=512",
        "model.width=32", "train.batch_size=16", "sparsity.target=0.9", "weighting.begin=100", "weighting.window=50"]


def adapmtl(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "adapmtl_cli", *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def train(out: Path, steps: int, seed: int, *extra: str) -> Path:
    adapmtl("train", "--out", str(out), "--quiet", "--force", f"seed={seed}", f"train.steps={steps}", f"train.val_every={steps}", *DATA, *extra)
    return out / "model.safetensors"


def finetune(checkpoint: Path, out: Path, steps: int, *extra: str) -> Path:
    adapmtl("finetune", str(checkpoint), "--out", str(out), "--quiet", "--force", f"train.steps={steps}", f"train.val_every={steps}", *extra)
    return out / "model.safetensors"


def prune(checkpoint: Path, out: Path, ratio: float, *extra: str) -> Path:
    adapmtl("prune", str(checkpoint), "--ratio", f"{ratio}", "--out", str(out), "--force", *extra)
    return out


def evaluate(checkpoint: Path, out: Path) -> Path:
    result = subprocess.run([sys.executable, "-m", "adapmtl_cli", "eval", str(checkpoint), "--json"], check=True,
                            capture_output=True, text=True)
    out.write_text(result.stdout)
    return out


def run_seed(root: Path, seed: int, steps: int) -> dict[str, Path]:
    half = steps // 2
    models: dict[str, Path] = {}
    models["dense"] = train(root / "dense", steps, seed, "sparsity.enabled=false")
    models["adapmtl"] = train(root / "adapmtl", steps, seed)
    target = json.loads((root / "adapmtl" / "summary.json").read_text())["sparsity"]["overall"]
    models["adapmtl-one-threshold"] = train(root / "global", steps, seed, "sparsity.granularity=global")
    models["adapmtl-equal-weighting"] = train(root / "equal", steps, seed, "weighting.method=equal")
    half_dense = train(root / "half-dense", half, seed, "sparsity.enabled=false", "train.save_init=true")
    # Not a method: the dense model after half the budget shows whether dense is still improving
    # at S steps (a negative Delta_T here means the task is not saturated).
    models["dense-half-steps"] = half_dense
    models["magnitude"] = finetune(prune(half_dense, root / "magnitude.safetensors", target), root / "magnitude", half)
    current = half_dense
    stage_ratio = 1 - (1 - target) ** (1 / 3)
    for stage in range(3):
        current = finetune(prune(current, root / f"imp{stage}.safetensors", stage_ratio), root / f"imp{stage}", max(1, steps // 6))
    models["imp"] = current
    models["lth"] = _lth(root, half_dense, target, half)
    init = root / "half-dense" / "init.safetensors"  # the untrained weights, as a checkpoint
    for method in ("snip", "disparse"):
        pruned = prune(init, root / f"{method}.safetensors", target, "--method", method, "--batches", "8")
        models[method] = finetune(pruned, root / method, steps)
    return {name: evaluate(path, root / f"{name}.json") for name, path in models.items()}


def _lth(root: Path, half_dense: Path, target: float, steps: int) -> Path:
    pruned = prune(half_dense, root / "lth.safetensors", target)
    adapmtl("finetune", str(pruned), "--rewind", str(root / "half-dense" / "init.safetensors"), "--out", str(root / "lth"),
            "--quiet", "--force", f"train.steps={steps}", f"train.val_every={steps}")
    return root / "lth" / "model.safetensors"


def _mean_or_null(values: list) -> float | None:
    """The mean over seeds; null (undefined) when a seed's metric is undefined (null in its JSON)."""
    return None if any(v is None for v in values) else statistics.mean(values)


def pooled_baseline(seed_dirs: list[Path], out: Path) -> Path:
    """The dense models' metrics averaged over seeds: a baseline free of one dense run's luck."""
    documents = [json.loads((d / "dense.json").read_text()) for d in seed_dirs]
    pooled = dict(documents[0], file="dense, mean over seeds")
    pooled["metrics"] = {task: {key: _mean_or_null([doc["metrics"][task][key] for doc in documents]) for key in metrics}
                         for task, metrics in documents[0]["metrics"].items()}
    out.write_text(jsonout.dumps(pooled))
    return out


def analyse(root: Path) -> list[str]:
    """Table 2 of seed 0, then over seeds: Delta_T against each seed's own dense model and against
    the pooled dense model, the paired gap to AdapMTL with its standard error, and the mean rank."""
    from adapmtl_cli.workflows.compare import compare

    seed_dirs = sorted(d for d in root.glob("seed*") if (d / "dense.json").exists())
    pooled = pooled_baseline(seed_dirs, root / "dense-pooled.json")
    own: dict[str, list[float]] = {}
    against_pooled: dict[str, list[float]] = {}
    sparsity: dict[str, list[dict]] = {}
    per_task: dict[str, dict[str, list[float]]] = {}
    table: list[str] = []
    for index, seed_dir in enumerate(seed_dirs):
        files = [p for p in sorted(seed_dir.glob("*.json")) if p.stem != "dense"]
        comparison = compare(files, seed_dir / "dense.json")
        if index == 0:  # the table exactly as users get it
            table = subprocess.run([sys.executable, "-m", "adapmtl_cli", "compare", *map(str, files), "--baseline",
                                    str(seed_dir / "dense.json"), "--format", "markdown"],
                                   check=True, capture_output=True, text=True).stdout.strip().splitlines()
        for row in comparison["rows"][1:]:
            name = Path(row["file"]).stem
            own.setdefault(name, []).append(row["delta"]["delta_t"])
            for task, value in row["delta"]["per_task"].items():
                per_task.setdefault(task, {}).setdefault(name, []).append(value)
            sparsity.setdefault(name, []).append(row["sparsity"])
        for row in compare(files, pooled)["rows"][1:]:
            against_pooled.setdefault(Path(row["file"]).stem, []).append(row["delta"]["delta_t"])
    n = len(seed_dirs)
    methods = [m for m in own if m != "dense-half-steps"]
    ranks = {m: [] for m in methods}
    for seed in range(n):
        for rank, method in enumerate(sorted(methods, key=lambda m: -own[m][seed]), start=1):
            ranks[method].append(rank)
    components = list(sparsity[methods[0]][0]["components"])
    # Two-sided 95% Student t for n - 1 degrees of freedom: a paired gap is resolved beyond it.
    t_critical = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}.get(n - 1, 2.0)

    def spread(values: list[float]) -> float:
        return statistics.stdev(values) if len(values) > 1 else float("nan")

    lines = ["Seed 0 in the layout of the paper's Table 2 (every metric, Delta per task against that seed's dense model):", ""]
    lines += table + ["", f"Over {n} seeds: Delta_T (points, mean ± sd) against each seed's own dense model and against the dense "
                      "models' mean metrics; the gap to AdapMTL, paired by seed (mean ± standard error; resolved when it is larger "
                      f"than {t_critical} standard errors, a paired t-test at 95%); the mean rank among the sparse models (1 = best); sparsity (%).", "",
                      "| method | Delta_T vs own dense | Delta_T vs mean dense | gap to AdapMTL | resolved | mean rank | overall | "
                      + " | ".join(components) + " |", "|" + "---|" * (7 + len(components))]
    for name in sorted(own, key=lambda m: -statistics.mean(own[m])):
        gaps = [a - b for a, b in zip(own[name], own["adapmtl"])]
        gap_se = spread(gaps) / math.sqrt(n) if n > 1 else float("nan")
        resolved = "" if name == "adapmtl" else ("yes" if abs(statistics.mean(gaps)) > t_critical * gap_se else "no")
        gap = "" if name == "adapmtl" else f"{statistics.mean(gaps):+.1f} ± {gap_se:.1f}"
        rank = f"{statistics.mean(ranks[name]):.1f}" if name in ranks else "(not ranked)"
        per_component = " | ".join(f"{100 * statistics.mean(s['components'][c] for s in sparsity[name]):.1f}" for c in components)
        overall = 100 * statistics.mean(s["overall"] for s in sparsity[name])
        lines.append(f"| {name} | {statistics.mean(own[name]):+.1f} ± {spread(own[name]):.1f} | "
                     f"{statistics.mean(against_pooled[name]):+.1f} ± {spread(against_pooled[name]):.1f} | {gap} | {resolved} | "
                     f"{rank} | {overall:.2f} | {per_component} |")
    spreads = {task: statistics.mean(spread(v) for v in by_method.values()) for task, by_method in per_task.items()}
    lines += ["", "Where the seed-to-seed spread comes from: the sd over seeds of each task's Delta, averaged over methods: "
              + ", ".join(f"{task} {value:.1f}" for task, value in spreads.items()) + " points."]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--keep", type=Path, default=None, help="keep the eval JSONs in this folder (seedN/method.json)")
    parser.add_argument("--analyse", type=Path, default=None, help="only analyse a folder written by --keep")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    start = time.time()
    if args.analyse is not None:
        root, minutes = args.analyse, None
    else:
        root = args.keep or Path(tempfile.mkdtemp(prefix="adapmtl-quality-"))
        for seed in range(args.seeds):
            (root / f"seed{seed}").mkdir(parents=True, exist_ok=True)
            run_seed(root / f"seed{seed}", seed, args.steps)
        minutes = (time.time() - start) / 60
    seeds = len(list(root.glob("seed*")))
    lines = [f"### Quality at equal sparsity (synthetic 3-task scenes, {args.steps} steps per method, {seeds} seeds)", ""]
    lines += analyse(root)
    if minutes is not None:
        lines += ["", f"({minutes:.0f} min in all on this machine; eval JSONs in {root})"]
    report(lines, args.write)


if __name__ == "__main__":
    main()
