"""``adapmtl export``: a checkpoint's effective weights in a form to deploy or store.

Three formats, all with the thresholds folded in (the weights are W_eff = W - clamp(W, -t, t)
with t = sigmoid(s), exactly what the model computes with):

``dense`` (safetensors, ``format = adapmtl.dense``)
    The model's state dict under plain keys (``backbone.features.0.weight``,
    ``heads.normal.conv1.bias``, BN buffers, ...), no ``threshold.*`` and no parametrization keys:
    ``safetensors.torch.load_file`` then ``load_state_dict`` into an ordinary ``nn.Module`` with
    plain ``Conv2d`` and ``Linear`` layers, no adapmtl code needed. Pruned weights are stored as zeros.

``sparse`` (safetensors, ``format = adapmtl.sparse``)
    Every sparsified weight ``K`` (the keys of the ``layers`` metadata: Conv2d and Linear weights
    alike, whatever their number of dimensions) becomes two tensors:

    - ``bitmask.K``: uint8 ``[ceil(numel / 8)]``, the flattened (C-order) non-zero pattern packed
      by ``numpy.packbits(..., bitorder="big")``: element ``i`` is bit ``7 - i % 8`` (the most
      significant bit first) of byte ``i // 8``; the padding bits of the last byte are 0;
    - ``values.K``: the non-zero values in flattened order, ``[popcount(bitmask)]``, in
      ``values_dtype`` (``float32`` by default, or ``float16`` / ``bfloat16`` with ``--dtype``).

    The metadata ``sparse`` is JSON ``{K: {"shape": [...], "dtype": "float32"}}`` (the dense
    shape and dtype to restore); every other tensor (BN, biases, buffers) is stored as is, in its
    own dtype. With float32 values the decoded tensors are bitwise those of the dense export
    (a ``-0.0`` weight comes back as ``+0.0``, which compares equal); with float16 / bfloat16
    values they are the float32 weights rounded to that dtype, except that a non-zero too small
    for it becomes the dtype's smallest subnormal of the same sign: the zeros of every export are
    exactly the model's (``adapmtl_cli.counting``).

``program`` (``torch.export`` archive, a zip written by ``torch.export.save``)
    The whole multitask model in eval mode, built without the sparsifier and loaded with the
    dense export's state: ``torch.export.load(f).module()(image)`` returns ``{task: output}``.
    One input, a float32 image batch ``[B, 3, R, R]`` at the checkpoint's resolution
    (``data.resolution`` for synthetic data, ``data.crop`` otherwise), with a dynamic batch
    dimension ``B`` (1..4096) when tracing allows it, otherwise fixed at the example's 2; the
    archive's extra file ``adapmtl.json`` says which, with the config and tasks.

Safetensors exports carry ``content_sha256``, the SHA-256 of the file's data section (everything
after the header), so a bit flip in the weights is caught by :func:`read_export` and ``inspect``.
Every file is written atomically: an error never leaves a partial file.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

import adapmtl_cli
from adapmtl_cli.errors import CheckpointError, ConfigError
from adapmtl_cli.io.checkpoint import safetensors_with_checksum as _safetensors_with_checksum

FORMATS = ("dense", "sparse", "program")
DENSE_FORMAT = "adapmtl.dense"
SPARSE_FORMAT = "adapmtl.sparse"
PROGRAM_FORMAT = "adapmtl.program"
EXPORT_FORMAT_VERSION = "1"
BITMASK_PREFIX = "bitmask."
VALUES_PREFIX = "values."
BITORDER = "big"
PROGRAM_INFO_FILE = "adapmtl.json"
MAX_BATCH = 4096

VALUE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float64: "float64"}
_DTYPES_BY_NAME = {name: dtype for dtype, name in _DTYPE_NAMES.items()}


@dataclass
class ExportResult:
    """What :func:`export_checkpoint` wrote."""

    checkpoint: Path
    out: Path
    format: str
    checkpoint_size: int
    export_size: int
    values_dtype: str | None = None
    weights: int = 0
    nonzeros: int = 0
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "checkpoint": str(self.checkpoint), "out": str(self.out), "format": self.format,
            "checkpoint_size": self.checkpoint_size, "export_size": self.export_size,
            "values_dtype": self.values_dtype, "weights": self.weights, "nonzeros": self.nonzeros,
            "sparsity": 1.0 - self.nonzeros / self.weights if self.weights else 0.0,
        }


# -- the effective model ---------------------------------------------------------------------


def effective_model(path: Path | str):
    """Load a checkpoint and return ``(state, layers, config, checkpoint)``: ``state`` the effective
    state under plain keys (W_eff in every sparsified Conv2d and Linear weight), ``layers`` the
    sparsified weight keys mapped to their component, in the model's order. The model is rebuilt
    from the checkpoint's config (``load_model_from_checkpoint``), so only models the builders
    know can be exported through here."""
    from adapmtl_cli.engine.sparsifier import effective_state_dict
    from adapmtl_cli.io.checkpoint import load_model_from_checkpoint

    folded = fold_without_model(path)
    if folded is not None:
        return folded
    model, config, checkpoint = load_model_from_checkpoint(path)
    with torch.no_grad():
        state = {key: value.detach().cpu().contiguous() for key, value in effective_state_dict(model).items()}
    layers = {layer.key: layer.component for layer in model.sparsifier.layers}
    return state, layers, config, checkpoint


def fold_without_model(path: Path | str):
    """A checkpoint saved from Python without a config (adapmtl_cli.save_checkpoint): no model
    can be rebuilt, so the thresholds are folded into the stored tensors directly, by the rule
    of adapmtl_cli.counting (W_eff = W - clamp(W, -t, t), what the model computes). None for any
    other file."""
    from adapmtl_cli.counting import threshold_value
    from adapmtl_cli.io.checkpoint import FORMAT, read_checkpoint
    from adapmtl_cli.io.formats import is_torch_save_file

    if is_torch_save_file(Path(path)):
        return None
    checkpoint = read_checkpoint(path)
    if checkpoint.metadata.get("format") != FORMAT or checkpoint.config_json:
        return None
    state = checkpoint.model_state()
    thresholds = {name: threshold_value(float(value)) for name, value in checkpoint.thresholds().items()}
    layers = {}
    for key, info in checkpoint.layers.items():
        layers[key] = info["component"]
        if info.get("threshold") is not None:
            weight, t = state[key], thresholds[info["threshold"]]
            state[key] = weight - torch.clamp(weight, -t, t)
    for key, mask in checkpoint.masks().items():
        state[key] = state[key] * mask.to(state[key].dtype)
    return state, layers, None, checkpoint


def _export_metadata(kind: str, layers: dict[str, str], state: dict[str, Tensor], config, checkpoint) -> dict[str, str]:
    from adapmtl_cli.config import config_to_json

    components: dict[str, list[int]] = {}
    for key, component in layers.items():
        weight = state[key]
        entry = components.setdefault(component, [0, 0])
        entry[0] += weight.numel()
        entry[1] += int((weight == 0).sum())
    total = sum(n for n, _ in components.values())
    zeros = sum(z for _, z in components.values())
    sparsity = {"overall": zeros / total if total else 0.0,
                "components": {name: z / n if n else 0.0 for name, (n, z) in components.items()}}
    return {
        "format": kind,
        "format_version": EXPORT_FORMAT_VERSION,
        "adapmtl_version": adapmtl_cli.__version__,
        "source": Path(checkpoint.path).name,
        "config": config_to_json(config) if config is not None else "",
        "step": str(checkpoint.step),
        "tasks": json.dumps(checkpoint.tasks),
        # Thresholds are folded into the weights: every layer counts its exact zeros.
        "layers": json.dumps({key: {"component": component, "threshold": None} for key, component in layers.items()}),
        "sparsity": json.dumps(sparsity),
        "thresholds_folded": checkpoint.metadata.get("thresholds", "{}"),
        "metrics": checkpoint.metadata.get("metrics", "{}"),
    }


# -- dense -----------------------------------------------------------------------------------


def dense_export_bytes(state: dict[str, Tensor], metadata: dict[str, str]) -> bytes:
    return _safetensors_with_checksum(state, metadata)


# -- sparse ----------------------------------------------------------------------------------


def encode_sparse(weight: Tensor, values_dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """``(bitmask, values)`` of one tensor: packed non-zero pattern and the non-zeros in order."""
    flat = cast_keeping_zeros(weight.detach().reshape(-1), values_dtype)
    keep = flat != 0
    packed = np.packbits(keep.numpy(), bitorder=BITORDER)
    return torch.from_numpy(packed), flat[keep]


def cast_keeping_zeros(weight: Tensor, dtype: torch.dtype) -> Tensor:
    """``weight`` in ``dtype`` with exactly the same zeros: a non-zero too small for ``dtype``
    (a survivor just above its threshold: |W| - t can be 1e-9) becomes the smallest subnormal of
    its sign instead of 0, so the export's zeros are the model's, in every dtype."""
    cast = weight.to(dtype)
    if dtype == weight.dtype:
        return cast
    lost = (cast == 0) & (weight != 0)
    if bool(lost.any()):
        info = torch.finfo(dtype)
        smallest = torch.tensor(info.tiny * info.eps, dtype=dtype)  # the smallest subnormal
        cast = torch.where(lost, torch.where(weight > 0, smallest, -smallest), cast)
    return cast


def decode_sparse(bitmask: Tensor, values: Tensor, shape: list[int] | tuple[int, ...], dtype: torch.dtype, name: str = "") -> Tensor:
    """The dense tensor back from :func:`encode_sparse`'s output; inconsistent inputs raise
    :class:`CheckpointError`."""
    numel = math.prod(shape)
    if bitmask.dtype != torch.uint8 or bitmask.dim() != 1 or bitmask.numel() != (numel + 7) // 8:
        raise CheckpointError(f"{name}: bitmask has {bitmask.numel()} bytes of {bitmask.dtype}, expected {(numel + 7) // 8} uint8 for shape {list(shape)}")
    bits = np.unpackbits(bitmask.numpy(), bitorder=BITORDER)
    if bits[numel:].any():
        raise CheckpointError(f"{name}: bitmask has set padding bits; the file is damaged")
    keep = torch.from_numpy(bits[:numel].astype(bool))
    count = int(keep.sum())
    if values.dim() != 1 or values.numel() != count:
        raise CheckpointError(f"{name}: bitmask marks {count} non-zeros but {values.numel()} values are stored; the file is damaged")
    dense = torch.zeros(numel, dtype=dtype)
    dense[keep] = values.to(dtype)
    return dense.reshape(shape)


def sparse_export_tensors(state: dict[str, Tensor], layers: dict[str, str], values_dtype: torch.dtype) -> tuple[dict[str, Tensor], dict]:
    tensors: dict[str, Tensor] = {}
    encoding = {}
    for key, value in state.items():
        if key in layers:
            bitmask, values = encode_sparse(value, values_dtype)
            tensors[BITMASK_PREFIX + key] = bitmask
            tensors[VALUES_PREFIX + key] = values
            encoding[key] = {"shape": list(value.shape), "dtype": _DTYPE_NAMES[value.dtype]}
        else:
            tensors[key] = value
    return tensors, encoding


def sparse_export_bytes(state: dict[str, Tensor], layers: dict[str, str], metadata: dict[str, str], values_dtype: torch.dtype) -> bytes:
    tensors, encoding = sparse_export_tensors(state, layers, values_dtype)
    metadata = dict(metadata, sparse=json.dumps(encoding), values_dtype=_DTYPE_NAMES[values_dtype], bitorder=BITORDER)
    return _safetensors_with_checksum(tensors, metadata)


# -- program ---------------------------------------------------------------------------------


def example_resolution(config) -> int:
    from adapmtl_cli.builders import input_resolution

    return input_resolution(config)


def dense_model(config, state: dict[str, Tensor]):
    """An eval-mode model built without the sparsifier (ordinary Conv2d and Linear) holding ``state``."""
    from adapmtl_cli.builders import build_model_and_tasks
    from adapmtl_cli.io.checkpoint import load_plain_weights

    dense_config = config.model_copy(deep=True)
    dense_config.sparsity.enabled = False
    model, _ = build_model_and_tasks(dense_config)
    load_plain_weights(model, state, "effective weights")
    return model.eval()


def program_bytes(config, state: dict[str, Tensor], checkpoint) -> tuple[bytes, dict]:
    model = dense_model(config, state)
    resolution = example_resolution(config)
    example = torch.zeros(2, 3, resolution, resolution)
    info = {"format": PROGRAM_FORMAT, "format_version": EXPORT_FORMAT_VERSION, "adapmtl_version": adapmtl_cli.__version__,
            "source": Path(checkpoint.path).name, "tasks": checkpoint.tasks, "step": checkpoint.step,
            "input": {"shape": [None, 3, resolution, resolution], "dtype": "float32", "dynamic_batch": True, "max_batch": MAX_BATCH},
            "config": json.loads(checkpoint.config_json or "{}")}
    with torch.no_grad():
        try:
            batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
            program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
        except Exception:  # noqa: BLE001 - a model whose trace specialises the batch: fall back to a fixed shape
            program = torch.export.export(model, (example,))
            info["input"] = {"shape": list(example.shape), "dtype": "float32", "dynamic_batch": False}
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files={PROGRAM_INFO_FILE: json.dumps(info)})
    return buffer.getvalue(), info


# -- the command -----------------------------------------------------------------------------


def check_export_arguments(checkpoint: Path, output_format: str, out: Path, force: bool, dtype: str | None) -> torch.dtype:
    """Every usage check before any work: returns the values dtype."""
    if output_format not in FORMATS:
        raise ConfigError(f"--format {output_format!r}: choose dense, sparse or program")
    if dtype is not None and dtype not in VALUE_DTYPES:
        raise ConfigError(f"--dtype {dtype!r}: choose fp32, fp16 or bf16")
    if dtype is not None and output_format != "sparse":
        raise ConfigError(f"--dtype applies to --format sparse only (the {output_format} export keeps the weights' float32)")
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give a file name, e.g. {out / (Path(checkpoint).stem + '.' + output_format + _suffix(output_format))}")
    if out.exists() and not force:
        raise ConfigError(f"--out {out} exists; pass --force to overwrite it")
    if out.exists() and Path(checkpoint).exists() and out.resolve() == Path(checkpoint).resolve():
        raise ConfigError(f"--out {out} is the checkpoint itself; choose another file")
    if not out.parent.is_dir():
        raise CheckpointError(f"{out}: cannot write here (folder {out.parent} does not exist); create it or choose a writable --out")
    return VALUE_DTYPES[dtype or "fp32"]


def _suffix(output_format: str) -> str:
    return ".pt2" if output_format == "program" else ".safetensors"


def export_checkpoint(checkpoint: Path | str, output_format: str, out: Path | str, *, force: bool = False,
                      dtype: str | None = None) -> ExportResult:
    """Write ``checkpoint``'s effective model to ``out`` in ``output_format`` (see the module doc)."""
    from adapmtl_cli.io.checkpoint import atomic_write_bytes

    checkpoint, out = Path(checkpoint), Path(out)
    values_dtype = check_export_arguments(checkpoint, output_format, out, force, dtype)
    state, layers, config, loaded = effective_model(checkpoint)
    notes = []
    if output_format == "program":
        if config is None:
            raise CheckpointError(f"{checkpoint}: saved from Python without a config, so no model can be rebuilt for a program "
                                  "export; pass config= (with model.factory) to adapmtl_cli.save_checkpoint, or export dense/sparse")
        data, info = program_bytes(config, state, loaded)
        shape = info["input"]["shape"]
        batch = "B (dynamic, 1..%d)" % MAX_BATCH if info["input"]["dynamic_batch"] else str(shape[0])
        notes.append(f"program input: float32 image [{batch}, 3, {shape[2]}, {shape[3]}]; output: dict of {', '.join(loaded.tasks)}")
    else:
        metadata = _export_metadata(SPARSE_FORMAT if output_format == "sparse" else DENSE_FORMAT, layers, state, config, loaded)
        if output_format == "sparse":
            data = sparse_export_bytes(state, layers, metadata, values_dtype)
        else:
            data = dense_export_bytes(state, metadata)
    atomic_write_bytes(out, data)
    weights = sum(state[key].numel() for key in layers)
    nonzeros = sum(int((cast_keeping_zeros(state[key], values_dtype) != 0).sum()) for key in layers)
    return ExportResult(
        checkpoint=checkpoint, out=out, format=output_format, checkpoint_size=checkpoint.stat().st_size,
        export_size=out.stat().st_size, values_dtype=_DTYPE_NAMES[values_dtype] if output_format == "sparse" else None,
        weights=weights, nonzeros=nonzeros, notes=notes,
    )


# -- reading exports back --------------------------------------------------------------------


def read_export(path: Path | str) -> tuple[dict[str, Tensor], dict[str, str]]:
    """A dense or sparse export read back: ``(state, metadata)``, the state as dense tensors under
    plain keys (what ``load_state_dict`` of a plain model takes). Checks the checksum; any fault is
    a one-line :class:`CheckpointError`."""
    path = Path(path)
    tensors, metadata = _read_safetensors(path)
    kind = metadata.get("format", "")
    if kind == DENSE_FORMAT:
        return tensors, metadata
    if kind != SPARSE_FORMAT:
        raise CheckpointError(f"{path}: not an adapmtl dense or sparse export (format {kind!r}); export it with adapmtl export")
    try:
        encoding = json.loads(metadata["sparse"])
        state = {}
        for key, value in tensors.items():
            if key.startswith(VALUES_PREFIX):
                continue
            if key.startswith(BITMASK_PREFIX):
                name = key[len(BITMASK_PREFIX):]
                spec = encoding[name]
                state[name] = decode_sparse(value, tensors[VALUES_PREFIX + name], spec["shape"], _DTYPES_BY_NAME[spec["dtype"]], f"{path}: {name}")
            else:
                state[key] = value
        missing = sorted(set(encoding) - set(state))
        if missing:
            raise KeyError(missing[0])
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: sparse metadata and tensors disagree ({type(exc).__name__}: {exc}); the file is damaged") from None
    return state, metadata


def read_sparse_export(path: Path | str) -> dict[str, Tensor]:
    """The dense state (plain keys, W_eff) of a sparse export; see :func:`read_export`."""
    state, metadata = read_export(path)
    if metadata.get("format") != SPARSE_FORMAT:
        raise CheckpointError(f"{path}: a {metadata.get('format')} file, not a sparse export")
    return state


def _read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such export file")
    from adapmtl_cli.io.checkpoint import read_safetensors_verified

    return read_safetensors_verified(path)


# -- checksums -------------------------------------------------------------------------------



