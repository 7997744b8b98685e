"""File sizes of `adapmtl export`: dense vs sparse, against the information floor.

For each paper preset (NYUv2: segment_semantic 40, normal 3, depth_zbuffer 1) the model is built
with ``build_model``, each component's threshold is set to the quantile of its |W| that makes the
component (hence the model) 50%, 90% and 98% sparse, a checkpoint is saved with
``save_checkpoint``, and both exports are written through ``export_checkpoint`` (the code path of
``adapmtl export``). The floor is what a bitmask + values encoding cannot go under:

    floor = non-zeros x bytes per value + conv weights / 8 (the mask) + dense bytes of all other tensors

Weights are the models' random initialisation: file sizes depend only on shapes and on how many
weights are zero, not on their values (no compression is applied).

If this tree cannot build a preset's network yet (``adapmtl_cli.models.backbones`` missing), the
script says so and, with ``--stand-in``, measures the same encoder on a tensor set with the conv
and BN shapes of docs ``REFERENCE.md`` section 3 (labelled "stand-in" in the table).

    python benchmarks/export_size.py [--presets nyuv2-resnet34 nyuv2-mnv2] [--stand-in] [--write]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

from adapmtl_cli.config import config_to_json, load_config
from adapmtl_cli.io.checkpoint import save_checkpoint
from adapmtl_cli.io.export import dense_export_bytes, export_checkpoint, sparse_export_bytes

OUT_CHANNELS = {"segment_semantic": 40, "normal": 3, "depth_zbuffer": 1}
SPARSITIES = (0.5, 0.9, 0.98)
MIB = 1024 * 1024


def component_thresholds(weights: dict[str, list[torch.Tensor]], fraction: float) -> dict[str, float]:
    """Per component, the |W| quantile below which ``fraction`` of its weights lie."""
    thresholds = {}
    for component, tensors in weights.items():
        magnitudes = torch.cat([t.detach().abs().flatten() for t in tensors])
        rank = max(1, math.ceil(fraction * magnitudes.numel()))
        thresholds[component] = float(magnitudes.kthvalue(rank).values)
        del magnitudes
    return thresholds


def floor_bytes(state: dict[str, torch.Tensor], layers: set[str], value_bytes: int) -> tuple[float, int, int]:
    weights = sum(state[k].numel() for k in layers)
    nonzeros = sum(int((state[k] != 0).sum()) for k in layers)
    others = sum(v.numel() * v.element_size() for k, v in state.items() if k not in layers)
    return nonzeros * value_bytes + weights / 8 + others, weights, nonzeros


# -- the real models -------------------------------------------------------------------------------


def measure_preset(preset: str, folder: Path) -> list[dict]:
    from adapmtl_cli.engine.sparsifier import effective_state_dict
    from adapmtl_cli.builders import build_model

    from adapmtl_cli.builders import build_tasks

    config = load_config(preset)
    # NYUv2 presets: {"segment_semantic": 40, "normal": 3, "depth_zbuffer": 1} (OUT_CHANNELS); taken
    # from the task registry so that the checkpoint fits its config for any preset.
    out_channels = {name: task.out_channels for name, task in build_tasks(config).items()}
    torch.manual_seed(0)
    model = build_model(config, out_channels)
    sparsifier = model.sparsifier
    raw = {name: [] for name in sparsifier.threshold_names}
    for index, layer in enumerate(sparsifier.layers):
        raw[layer.threshold].append(sparsifier.raw_weight(index))
    rows = []
    for fraction in SPARSITIES:
        thresholds = component_thresholds(raw, fraction)
        with torch.no_grad():
            for index, name in enumerate(sparsifier.threshold_names):
                t = min(max(thresholds[name], 1e-30), 1 - 1e-7)
                sparsifier.thresholds[index].fill_(math.log(t / (1 - t)))
        checkpoint = folder / "model.safetensors"
        save_checkpoint(checkpoint, model, config_to_json(config), 0, sparsifier.stats().as_report())
        sizes = {}
        for fmt, dtype, name in (("dense", None, "dense"), ("sparse", None, "sparse"), ("sparse", "fp16", "sparse16")):
            out = folder / f"{name}.safetensors"
            sizes[name] = export_checkpoint(checkpoint, fmt, out, force=True, dtype=dtype).export_size
            out.unlink()
        with torch.no_grad():
            state = effective_state_dict(model)
        layers = {layer.key for layer in sparsifier.layers}
        floor, weights, nonzeros = floor_bytes(state, layers, 4)
        floor16, _, _ = floor_bytes(state, layers, 2)
        rows.append(dict(model=preset, target=fraction, sparsity=1 - nonzeros / weights, weights=weights,
                         checkpoint=checkpoint.stat().st_size, floor=floor, floor16=floor16, **sizes))
        checkpoint.unlink()
        del state
    return rows


# -- a stand-in with the reference's shapes ------------------------------------------------------


def reference_shapes(backbone: str) -> tuple[dict[str, tuple], dict[str, tuple], int]:
    """Conv weight shapes (key -> shape, with component) and other tensors (key -> shape) of the
    REFERENCE.md network, plus the head input channels."""
    convs: dict[str, tuple] = {}
    others: dict[str, tuple] = {}

    def bn(prefix, c):
        for suffix in ("weight", "bias", "running_mean", "running_var"):
            others[f"{prefix}.{suffix}"] = ((c,), torch.float32)
        others[f"{prefix}.num_batches_tracked"] = ((), torch.int64)

    if backbone == "resnet34":
        convs["backbone.conv1.weight"] = ((64, 3, 7, 7), "backbone")
        bn("backbone.bn1", 64)
        cin = 64
        for stage, (blocks, planes) in enumerate(zip([3, 4, 6, 3], [64, 128, 256, 512])):
            for block in range(blocks):
                prefix = f"backbone.blocks.{stage}.{block}"
                convs[f"{prefix}.conv1.weight"] = ((planes, cin if block == 0 else planes, 3, 3), "backbone")
                bn(f"{prefix}.bn1", planes)
                convs[f"{prefix}.conv2.weight"] = ((planes, planes, 3, 3), "backbone")
                bn(f"{prefix}.bn2", planes)
            if stage > 0:
                convs[f"backbone.ds.{stage}.0.weight"] = ((planes, cin, 1, 1), "backbone")
                bn(f"backbone.ds.{stage}.1", planes)
            cin = planes
        features = 512
    else:
        convs["backbone.features.0.0.weight"] = ((32, 3, 3, 3), "backbone")
        bn("backbone.features.0.1", 32)
        cin, k = 32, 1
        for t, c, n, _ in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)):
            for _ in range(n):
                hidden, i = cin * t, 0
                if t != 1:
                    convs[f"backbone.features.{k}.conv.{i}.weight"] = ((hidden, cin, 1, 1), "backbone")
                    bn(f"backbone.features.{k}.conv.{i + 1}", hidden)
                    i += 3
                convs[f"backbone.features.{k}.conv.{i}.weight"] = ((hidden, 1, 3, 3), "backbone")
                bn(f"backbone.features.{k}.conv.{i + 1}", hidden)
                convs[f"backbone.features.{k}.conv.{i + 3}.weight"] = ((c, hidden, 1, 1), "backbone")
                bn(f"backbone.features.{k}.conv.{i + 4}", c)
                cin, k = c, k + 1
        convs[f"backbone.features.{k}.0.weight"] = ((1280, 320, 1, 1), "backbone")
        bn(f"backbone.features.{k}.1", 1280)
        features = 1280
    for task, c in OUT_CHANNELS.items():
        for branch in range(1, 5):
            prefix = f"heads.{task}.fc{branch}"
            for conv, shape in (("conv1", (1024, features, 3, 3)), ("conv2", (1024, 1024, 1, 1)), ("conv3", (c, 1024, 1, 1))):
                convs[f"{prefix}.{conv}.weight"] = (shape, f"head.{task}")
                others[f"{prefix}.{conv}.bias"] = ((shape[0],), torch.float32)
    return convs, others, features


def measure_stand_in(backbone: str) -> list[dict]:
    convs, others, _ = reference_shapes(backbone)
    generator = torch.Generator().manual_seed(0)
    raw = {key: torch.randn(shape, generator=generator) * 0.01 for key, (shape, _) in convs.items()}
    rest = {key: torch.zeros(shape, dtype=dtype) for key, (shape, dtype) in others.items()}
    by_component: dict[str, list[torch.Tensor]] = {}
    for key, (_, component) in convs.items():
        by_component.setdefault(component, []).append(raw[key])
    layers = {key: component for key, (_, component) in convs.items()}
    rows = []
    for fraction in SPARSITIES:
        thresholds = component_thresholds(by_component, fraction)
        state = dict(rest)
        for key, weight in raw.items():
            t = torch.tensor(thresholds[layers[key]])
            state[key] = weight - torch.clamp(weight, -t, t)
        metadata = {"format": "adapmtl.sparse", "stand_in": backbone}
        dense = len(dense_export_bytes(state, dict(metadata, format="adapmtl.dense")))
        sparse = len(sparse_export_bytes(state, layers, metadata, torch.float32))
        sparse16 = len(sparse_export_bytes(state, layers, metadata, torch.float16))
        floor, weights, nonzeros = floor_bytes(state, set(layers), 4)
        floor16, _, _ = floor_bytes(state, set(layers), 2)
        rows.append(dict(model=f"{backbone} stand-in", target=fraction, sparsity=1 - nonzeros / weights, weights=weights,
                         checkpoint=None, floor=floor, floor16=floor16, dense=dense, sparse=sparse, sparse16=sparse16))
        del state
    return rows


# -- the table -----------------------------------------------------------------------------------


def table(rows: list[dict]) -> str:
    header = ["model", "sparsity", "conv weights", "dense MiB", "sparse MiB", "sparse / dense", "floor MiB",
              "sparse / floor", "sparse fp16 MiB", "fp16 / its floor"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append("| " + " | ".join([
            r["model"], f"{100 * r['sparsity']:.1f}%", f"{r['weights'] / 1e6:.1f}M", f"{r['dense'] / MIB:.2f}",
            f"{r['sparse'] / MIB:.2f}", f"{r['sparse'] / r['dense']:.3f}", f"{r['floor'] / MIB:.2f}",
            f"{r['sparse'] / r['floor']:.4f}", f"{r['sparse16'] / MIB:.2f}", f"{r['sparse16'] / r['floor16']:.4f}",
        ]) + " |")
    return "\n".join(lines)


def append_results(text: str) -> None:
    """Like benchmarks/steptime.py's helper, without importing the trainer."""
    with open(Path(__file__).parent / "RESULTS.md", "a", encoding="utf-8") as handle:
        handle.write("\n" + text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["nyuv2-resnet34", "nyuv2-mnv2"])
    parser.add_argument("--stand-in", action="store_true", help="measure REFERENCE.md-shaped tensors for presets this tree cannot build")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows, missing = [], []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        for preset in args.presets:
            try:
                rows += measure_preset(preset, Path(folder))
            except ImportError as exc:
                print(f"{preset}: this tree cannot build its network yet ({exc})", file=sys.stderr)
                missing.append(preset)
                if args.stand_in:
                    backbone = load_config(preset).model.backbone
                    rows += measure_stand_in(backbone)
    elapsed = time.perf_counter() - start
    text = table(rows)
    notes = ["Sizes of the written files; floor = non-zeros x 4 B (2 B for fp16) + conv weights / 8 + dense bytes of "
             "every other tensor. Random-init weights, each component's threshold at its |W| quantile."]
    if missing:
        notes.append(f"Not buildable in this tree when measured: {', '.join(missing)}"
                     + ("; 'stand-in' rows encode tensors with the REFERENCE.md conv/BN/bias shapes through the same "
                        "encoder (dense_export_bytes / sparse_export_bytes) instead." if args.stand_in else "."))
    section = "\n".join([f"## Export sizes: dense vs sparse (`benchmarks/export_size.py`, {time.strftime('%Y-%m-%d')})", "",
                         text, "", *notes, f"Run time {elapsed:.0f} s.", ""])
    print(section)
    if args.write:
        append_results(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
