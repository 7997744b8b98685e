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
Methods whose sparsity is not exact are pruned to the achieved value of AdapMTL. Each seed gets its
own dense baseline. The table is `adapmtl compare` of the eval JSONs; the summary gives the mean and
spread of Delta_T over seeds and whether the ranking is resolved (gap larger than the spreads).

    python benchmarks/quality.py [--seeds 5] [--steps 600] [--write]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from steptime import report

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    start = time.time()
    from adapmtl_cli import workflows

    per_method: dict[str, list[float]] = {}
    sparsity: dict[str, list[float]] = {}
    components: dict[str, dict[str, list[float]]] = {}
    tables = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            root = Path(tmp) / f"seed{seed}"
            root.mkdir()
            results = run_seed(root, seed, args.steps)
            comparison = workflows.compare([results[m] for m in results if m != "dense"], results["dense"])
            header, rows = workflows.comparison_columns(comparison)
            if seed == 0:
                tables += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                tables += ["| " + " | ".join(row) + " |" for row in rows]
            for row in comparison["rows"][1:]:
                name = Path(row["file"]).stem
                per_method.setdefault(name, []).append(row["delta"]["delta_t"])
                sparsity.setdefault(name, []).append(row["sparsity"]["overall"])
                for component, value in row["sparsity"]["components"].items():
                    components.setdefault(name, {}).setdefault(component, []).append(value)
    lines = [f"### Quality at equal sparsity (synthetic 3-task scenes, {args.steps} steps per method, {args.seeds} seeds)", "",
             "Seed 0 in the layout of the paper's Table 2 (metrics of each model, Delta per task vs the dense model):", ""]
    lines += tables + ["", "Delta_T over seeds (mean ± sd) and per-component sparsity (mean %):", "",
                       "| method | Delta_T | overall % | " + " | ".join(next(iter(components.values()))) + " |",
                       "|---|---|---|" + "---|" * len(next(iter(components.values())))]
    for name, values in sorted(per_method.items(), key=lambda kv: -statistics.mean(kv[1])):
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        parts = " | ".join(f"{100 * statistics.mean(v):.1f}" for v in components[name].values())
        lines.append(f"| {name} | {statistics.mean(values):+.2f} ± {sd:.2f} | {100 * statistics.mean(sparsity[name]):.2f} | {parts} |")
    lines += ["", f"({(time.time() - start) / 60:.0f} min in all)"]
    report(lines, args.write)


if __name__ == "__main__":
    main()
