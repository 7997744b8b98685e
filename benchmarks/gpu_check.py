"""GPU correctness and speed checks in one run, for a machine with a CUDA GPU.

Correctness, against float64 references on the CPU with fresh random inputs (TF32 off):
  * the soft shrink's CUDA path: W_eff, dL/dW and dL/ds;
  * a whole soft-threshold model (demo net, 3 tasks): loss and the gradient of every parameter,
    thresholds included;
  * bf16 / fp16 autocast and channels_last against the fp32 NCHW forward;
  * `adapmtl train` on CUDA (fp32, bf16, bf16 + channels_last) lands on the target sparsity, and
    `adapmtl eval` of its checkpoint gives the same metrics on the CPU and on the GPU.
Speed: the trainer's real step (forward, losses, backward, bookkeeping, optimizer), dense and
soft-threshold side by side, synchronised, median of --repeats; peak GPU memory; and with
--compile, the model wrapped in torch.compile.

    python benchmarks/gpu_check.py [--only correctness|speed] [--compile] [--repeats 20]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from steptime import build_trainer, fixed_batch

OUT = Path(os.environ.get("OUT", "."))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def check_soft_shrink(lines: list[str]) -> None:
    from adapmtl_cli.engine.shrink import soft_shrink

    generator = torch.Generator().manual_seed(1)
    worst = {"W_eff": 0.0, "dL/dW": 0.0, "dL/ds": 0.0}
    for numel in (7, 4096, 3_000_000):
        weight = torch.randn(numel, generator=generator, dtype=torch.float64) * 0.02
        # The parameter is s (float32); the reference uses the exact sigmoid of that same s.
        s32 = torch.logit(torch.tensor(0.015, dtype=torch.float64)).float()
        threshold = torch.sigmoid(s32.double())
        upstream = torch.randn(numel, generator=generator, dtype=torch.float64)
        # float64 reference written out from REFERENCE.md 1, not through soft_shrink
        survivors = weight.abs() > threshold
        reference_out = torch.where(survivors, weight - threshold * weight.sign(), torch.zeros_like(weight))
        reference_dw = torch.where(survivors, upstream, torch.zeros_like(weight))
        reference_ds = -(upstream * weight.sign() * survivors).sum() * threshold * (1 - threshold)
        w = weight.float().cuda().requires_grad_()
        s = s32.cuda().requires_grad_()
        out = soft_shrink(w, s)
        out.backward(upstream.float().cuda())
        worst["W_eff"] = max(worst["W_eff"], rel(out, reference_out))
        worst["dL/dW"] = max(worst["dL/dW"], rel(w.grad, reference_dw))
        worst["dL/ds"] = max(worst["dL/ds"], rel(s.grad, reference_ds))
    for name, value in worst.items():
        lines.append(f"| soft shrink on CUDA, {name} (fp32 vs float64, up to 3M weights) | {value:.1e} | 1e-5 | {'ok' if value < 1e-5 else 'FAIL'} |")


def check_model_gradients(lines: list[str], tmp: Path) -> None:
    overrides = ["model.dropout=0.0", "sparsity.init=-4.5", "train.batch_size=8", "data.train_size=16",
                 "data.val_size=8", "data.test_size=8"]
    cuda = build_trainer("demo", overrides + ["train.device='cuda'"], tmp / "cuda")
    cpu = build_trainer("demo", overrides + ["train.device='cpu'"], tmp / "cpu")
    cpu.model.load_state_dict({k: v.cpu() for k, v in cuda.model.state_dict().items()})
    cpu.model.double()
    image, targets = fixed_batch(cuda)

    def loss_of(trainer, dtype):
        outputs = trainer.model(image.to(trainer.device, dtype))
        return sum(task.loss(outputs[name].float(), targets[name].to(trainer.device)) for name, task in trainer.tasks.items())

    reference = loss_of(cpu, torch.float64)
    reference.backward()
    loss = loss_of(cuda, torch.float32)
    loss.backward()
    sparsity = float(cuda.sparsifier.overall_sparsity())
    reference_grads = dict(cpu.model.named_parameters())
    worst_weight, worst_threshold = 0.0, 0.0
    for name, param in cuda.model.named_parameters():
        error = rel(param.grad, reference_grads[name].grad)
        if name.startswith("sparsifier."):
            worst_threshold = max(worst_threshold, error)
        else:
            worst_weight = max(worst_weight, error)
    lines.append(f"| demo model on CUDA, loss (fp32 vs float64, {sparsity:.0%} sparse) | {rel(loss, reference):.1e} | 1e-5 | {'ok' if rel(loss, reference) < 1e-5 else 'FAIL'} |")
    lines.append(f"| demo model on CUDA, worst weight gradient | {worst_weight:.1e} | 1e-3 | {'ok' if worst_weight < 1e-3 else 'FAIL'} |")
    lines.append(f"| demo model on CUDA, worst threshold gradient | {worst_threshold:.1e} | 1e-3 | {'ok' if worst_threshold < 1e-3 else 'FAIL'} |")

    # Mixed precision and memory format against the fp32 NCHW forward of the same weights.
    cuda.model.eval()
    with torch.no_grad():
        x = image.cuda()
        base = cuda.model(x)
        for label, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
            with torch.autocast("cuda", dtype=dtype):
                out = cuda.model(x)
            error = max(rel(out[k].float(), base[k]) for k in base)
            lines.append(f"| demo model forward, {label} autocast vs fp32 (worst task) | {error:.1e} | 2e-2 | {'ok' if error < 2e-2 else 'FAIL'} |")
        cuda.model.to(memory_format=torch.channels_last)
        out = cuda.model(x.contiguous(memory_format=torch.channels_last))
        error = max(rel(out[k], base[k]) for k in base)
        lines.append(f"| demo model forward, channels_last vs NCHW (worst task) | {error:.1e} | 1e-5 | {'ok' if error < 1e-5 else 'FAIL'} |")


def adapmtl(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "adapmtl_cli", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"adapmtl {' '.join(args)} exited {result.returncode}: {result.stderr[-2000:]}")
    return result.stdout


def check_training(lines: list[str], tmp: Path, quick: bool = False) -> None:
    runs = {"fp32": [], "bf16": ["train.amp='bf16'"], "bf16, channels_last": ["train.amp='bf16'", "train.channels_last=true"]}
    if quick:
        runs = {"fp32": []}
    for label, extra in runs.items():
        out = tmp / label.replace(", ", "-")
        start = time.perf_counter()
        summary = json.loads(adapmtl("train", "--preset", "demo", "--out", str(out), "--quiet", "--json", "train.device='cuda'", *extra))
        seconds = time.perf_counter() - start
        overall = summary["sparsity"]["overall"]
        metrics = summary["metrics"]
        finite = all(v == v for task in metrics.values() for v in task.values())
        ok = abs(overall - 0.8) < 1e-3 and finite
        seg = metrics["segment_semantic"].get("pixel_acc", float("nan"))
        lines.append(f"| `adapmtl train --preset demo` on CUDA, {label}: sparsity {overall:.4f}, pixel acc {seg:.3f}, {seconds:.0f} s | {abs(overall - 0.8):.1e} | 1e-3 | {'ok' if ok else 'FAIL'} |")
        if label == "fp32":
            on_gpu = json.loads(adapmtl("eval", str(out / "model.safetensors"), "--device", "cuda", "--json"))["metrics"]
            on_cpu = json.loads(adapmtl("eval", str(out / "model.safetensors"), "--device", "cpu", "--json"))["metrics"]
            worst = max(abs(on_gpu[t][k] - on_cpu[t][k]) / max(abs(on_cpu[t][k]), 1e-12) for t in on_cpu for k in on_cpu[t])
            lines.append(f"| `adapmtl eval` of that checkpoint, CUDA vs CPU (worst metric, relative) | {worst:.1e} | 1e-3 | {'ok' if worst < 1e-3 else 'FAIL'} |")


def time_steps(trainers: dict, batch, repeats: int, warmup: int = 3) -> dict[str, tuple[float, float]]:
    """Median seconds per synchronised training step and peak GPU memory (GiB), one variant at a time."""
    image, targets = batch
    results = {}
    for name, trainer in trainers.items():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        times = []
        for step in range(warmup + repeats):
            start = time.perf_counter()
            trainer.train_step(step, image, targets)
            torch.cuda.synchronize()
            if step >= warmup:
                times.append(time.perf_counter() - start)
        times.sort()
        results[name] = (times[len(times) // 2], torch.cuda.max_memory_allocated() / 2**30)
    return results


SPEED_MODELS = {
    "demo (64 px, batch 16)": ("demo", ["data.resolution=64", "train.batch_size=16"]),
    "mobilenetv2 + ASPP-256 (224 px, batch 8)": ("demo", ["model.backbone='mobilenetv2'", "model.head='aspp'", "model.head_hidden=256",
                                                          "data.resolution=224", "train.batch_size=8"]),
    "nyuv2-resnet34 (321 px, batch 16)": ("nyuv2-resnet34", ["data.source='synthetic'", "data.resolution=321", "data.num_classes=40", "train.batch_size=16"]),
    "nyuv2-mnv2 (321 px, batch 16)": ("nyuv2-mnv2", ["data.source='synthetic'", "data.resolution=321", "data.num_classes=40", "train.batch_size=16"]),
}
SPEED_VARIANTS = {  # name: (overrides, wrap the model in torch.compile)
    "dense, fp32": (["sparsity.enabled=false", "train.channels_last=false"], False),
    "soft-threshold, fp32": (["train.channels_last=false"], False),
    "dense, bf16, channels_last": (["sparsity.enabled=false", "train.amp='bf16'", "train.channels_last=true"], False),
    "soft-threshold, bf16, channels_last": (["train.amp='bf16'", "train.channels_last=true"], False),
}
COMPILED_VARIANTS = {
    "dense, bf16, channels_last, torch.compile": (["sparsity.enabled=false", "train.amp='bf16'", "train.channels_last=true"], True),
    "soft-threshold, bf16, channels_last, torch.compile": (["train.amp='bf16'", "train.channels_last=true"], True),
}


def check_speed(lines: list[str], tmp: Path, repeats: int, compile_model: bool, models: list[str]) -> None:
    common = ["train.device='cuda'", "data.train_size=64", "data.val_size=8", "data.test_size=8", "data.workers=0"]
    for model in models:
        preset, overrides = SPEED_MODELS[model]
        variants = {**SPEED_VARIANTS, **(COMPILED_VARIANTS if compile_model else {})}
        results = {}
        for index, (name, (extra, compiled)) in enumerate(variants.items()):  # one at a time: peak memory per variant
            trainer = build_trainer(preset, common + overrides + extra, tmp / "speed" / f"{index}")
            if compiled:
                trainer.ddp_model = torch.compile(trainer.model)
            start = time.perf_counter()
            trainer.train_step(0, *fixed_batch(trainer))  # compiles, when compiled
            first = time.perf_counter() - start
            results.update(time_steps({name: trainer}, fixed_batch(trainer), repeats))
            results[name] += (first,)
            del trainer
            torch.cuda.empty_cache()
        for name, (seconds, memory, first) in results.items():
            base = results[name.replace("soft-threshold", "dense")][0]
            lines.append(f"| {model} | {name} | {1000 * seconds:.1f} | {seconds / base:.3f}x | {memory:.2f} | {first:.1f} |")
            print(lines[-1], flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["correctness", "speed"], default=None)
    parser.add_argument("--compile", action="store_true", help="also time the soft-threshold model under torch.compile")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--models", nargs="*", default=[], help="only models whose name contains one of these")
    parser.add_argument("--quick", action="store_true", help="train the demo on CUDA in fp32 only")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_check.py needs a CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device = torch.cuda.get_device_name()
    text = [f"## GPU checks ({device}, torch {torch.__version__}, CUDA {torch.version.cuda})", ""]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.only in (None, "correctness"):
            lines = ["| check | error | tolerance | result |", "|---|---|---|---|"]
            check_soft_shrink(lines)
            check_model_gradients(lines, tmp)
            check_training(lines, tmp, args.quick)
            text += ["### Correctness", ""] + lines + [""]
            print("\n".join(lines), flush=True)
        if args.only in (None, "speed"):
            # Speed is measured as users run: TF32 allowed for fp32 convolutions (PyTorch's default).
            torch.backends.cudnn.allow_tf32 = True
            lines = [f"Median of {args.repeats} synchronised steps; ratio against the dense step of the same precision and layout.", "",
                     "| model | variant | ms / step | vs dense | peak GPU memory (GiB) | first step (s) |", "|---|---|---|---|---|---|"]
            models = [m for m in SPEED_MODELS if not args.models or any(k in m for k in args.models)]
            check_speed(lines, tmp, args.repeats, args.compile, models)
            text += ["### Training step", ""] + lines + [""]
    report = "\n".join(text) + "\n"
    print(report)
    (OUT / "gpu_check.md").write_text(report)


if __name__ == "__main__":
    main()
