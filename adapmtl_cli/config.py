"""Presets: pydantic models of a run's configuration, preset discovery and ``key=value`` overrides.

A preset is a TOML file whose tables mirror the models below. Unknown keys are errors, values keep
their types, and every number is range-checked, so a typo never silently changes a run.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import sys
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from adapmtl_cli.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

PRESET_DIR = Path(__file__).parent / "presets"
# The keys that name a user's factory: "package.module:function" or "path/to/file.py:function".
FACTORY_KEYS = ("model.factory", "data.factory")
_FACTORY_PATTERN = re.compile(r"^(?P<target>.+):(?P<function>[A-Za-z_]\w*(\.[A-Za-z_]\w*)*)$")
_MODULE_PATTERN = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_COMPONENT_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


def split_factory(spec: str) -> tuple[str, str, bool]:
    """``(target, function, is_file)`` of a factory spec: ``target`` is a module name or a file path
    (a target ending in ``.py`` or holding a path separator is a file). Raises ValueError for a spec
    of neither form."""
    match = _FACTORY_PATTERN.match(spec)
    if match is None:
        raise ValueError(f"{spec!r} is not 'package.module:function' or 'path/to/file.py:function'")
    target = match["target"]
    is_file = target.endswith(".py") or "/" in target or "\\" in target
    if not is_file and not _MODULE_PATTERN.match(target):
        raise ValueError(f"{spec!r}: {target!r} is neither a dotted module name nor a path to a .py file")
    return target, match["function"], is_file


def _check_factory(value: str) -> str:
    if value:
        split_factory(value)
    return value


def _check_factory_args(value: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments: identifier keys, values that survive the trip through the checkpoint's
    JSON unchanged (no dates, no NaN or infinity)."""
    for key, item in value.items():
        if not key.isidentifier():
            raise ValueError(f"key {key!r} is not a Python identifier (the keys are keyword arguments of the factory)")
        _check_json_value(item, key)
    return value


def _check_json_value(value: Any, where: str) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _check_json_value(item, f"{where}.{key}")
    elif isinstance(value, list):
        for item in value:
            _check_json_value(item, where)
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where} = {value}: a non-finite number cannot be recorded in a checkpoint")
    elif not isinstance(value, (str, int, float, bool)):
        raise ValueError(f"{where}: a {type(value).__name__} value cannot be recorded in a checkpoint; pass it as a string")


class Section(BaseModel):
    """Base of every config table: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# "package.module:function" or "file.py:function" (model.factory, data.factory) and its keyword
# arguments, checked by one rule wherever they appear.
FactorySpec = Annotated[str, AfterValidator(lambda value: _check_factory(value))]
FactoryArgs = Annotated[dict[str, Any], AfterValidator(lambda value: _check_factory_args(value))]


class ModelConfig(Section):
    backbone: Literal["demo", "resnet34", "mobilenetv2"] = "demo"
    head: Literal["demo", "aspp"] = "demo"
    # Width of the demo backbone's first stage; ignored by the paper backbones.
    width: int = Field(32, ge=4, le=1024)
    # Hidden channels of the ASPP branches (the paper: 1024). Smaller values make smoke tests cheap.
    head_hidden: int = Field(1024, ge=4, le=4096)
    dropout: float = Field(0.5, ge=0.0, lt=1.0)
    # A user's network instead of the built-in ones: "package.module:function" or
    # "path/to/file.py:function" (relative to the preset's folder). The function gets
    # {task: output channels} and model.factory_args as keyword arguments, and returns an
    # nn.Module whose forward returns {task: [B, C, h, w]}. backbone/head/width/... are then unused.
    factory: FactorySpec = ""
    factory_args: FactoryArgs = Field(default_factory=dict)
    # Component name -> dotted submodule path ("" = the whole model); each component gets its
    # own threshold, a submodule in none stays dense. Empty: "backbone" and "head.<task>" of a
    # model with a `backbone` and `heads.<task>` submodules (the built-in networks).
    components: dict[str, str] = Field(default_factory=dict)

    @field_validator("components")
    @classmethod
    def _components_named(cls, value: dict[str, str]) -> dict[str, str]:
        for name, path in value.items():
            if not _COMPONENT_NAME.match(name):
                raise ValueError(f"component name {name!r}: use letters, digits, '_', '.' and '-'")
            if path != path.strip() or ".." in path or path.startswith(".") or path.endswith("."):
                raise ValueError(f"component {name!r}: {path!r} is not a dotted submodule path such as 'decoders.seg'")
        paths = list(value.values())
        for path in paths:
            if paths.count(path) > 1:
                raise ValueError(f"two components name the same submodule {path!r}; give each submodule one component")
        return value


class DataConfig(Section):
    # A name of the data-source registry (data/sources.py), read when the config is validated.
    source: str = "synthetic"
    root: str = ""
    # Synthetic data only: items per split and square resolution.
    train_size: int = Field(2048, ge=1)
    val_size: int = Field(256, ge=1)
    test_size: int = Field(256, ge=1)
    resolution: int = Field(64, ge=16, le=1024)
    # Classes of the synthetic scenes, or of Cityscapes: 7 or 19, which picks label_7/ or label_19/.
    # The other sources have a fixed count (their entry in data/sources.py) and ignore it.
    num_classes: int = Field(6, ge=2, le=255)
    # Synthetic data only: "demo" (fast, near-saturated scenes) or "bench" (curved and slanted
    # surfaces, class-blind textures, shading and noise: the quality benchmark's scenes).
    scenes: Literal["demo", "bench"] = "demo"
    # Synthetic data only: the scenes' seed; unset = the run's seed. Fix it to train several seeds
    # on the same data (seed then changes only the initialisation and the batch order).
    seed: int | None = Field(None, ge=0)
    # Synthetic data only: a folder that keeps each generated split (safetensors), so that the runs
    # of a sweep generate their scenes once. Items read back are bit-identical to generated ones.
    cache_dir: str = ""
    # Training crop for the real datasets (NYUv2 321, Taskonomy 224, Cityscapes 128).
    crop: int = Field(321, ge=16, le=2048)
    # Standard mode selects the best model on this fraction of train, carved with the seed.
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    workers: int = Field(0, ge=0, le=64)
    # A user's datasets instead of data.source: "package.module:function" or
    # "path/to/file.py:function", called with the list of tasks and data.factory_args as keyword
    # arguments; returns {"train": ds, "val": ds, "test": ds} or (train, val, test). data.resolution
    # is then the size of the model's check forward and of the program export's example input.
    factory: FactorySpec = ""
    factory_args: FactoryArgs = Field(default_factory=dict)

    @field_validator("source", mode="before")
    @classmethod
    def _source_registered(cls, value: Any) -> Any:
        from adapmtl_cli.data.sources import source_names  # read now: a source registered after import counts

        names = source_names()
        if not isinstance(value, str) or value not in names:
            raise ValueError(f"Input should be {_or_list([repr(name) for name in names])}")  # a Literal's wording
        return value


class TrainConfig(Section):
    steps: int = Field(1000, ge=1)
    batch_size: int = Field(16, ge=1)
    val_every: int = Field(250, ge=1)
    val_batches: int = Field(0, ge=0, description="0 = the whole validation split")
    log_every: int = Field(10, ge=1)
    # Per-layer TensorBoard tags are many (about 150 on the paper models): log them less often.
    layer_log_every: int = Field(100, ge=1)
    checkpoint_every: int = Field(0, ge=0, description="0 = only at validation and at the end")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["none", "bf16", "fp16"] = "none"
    channels_last: bool = False
    # Where "best" is chosen: "val" (standard) or "test" (QUIRK: the reference selects on test).
    select_on: Literal["val", "test"] = "val"
    # Do not select a best model before this step (the reference: 16000).
    select_after: int = Field(0, ge=0)
    save_init: bool = Field(False, description="save the initial weights for lottery-ticket rewinding")


class OptimConfig(Section):
    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0.0, le=10.0)
    # Coupled L2 for adam (the paper), decoupled for adamw. Applied to every parameter, the
    # thresholds included: for s < 0 it is what raises the threshold.
    weight_decay: float = Field(1e-4, ge=0.0, le=1.0)
    betas: tuple[float, float] = (0.5, 0.999)
    eps: float = Field(1e-8, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    lr_step: int = Field(4000, ge=1, description="StepLR step size, in training steps")
    lr_gamma: float = Field(0.5, gt=0.0, le=1.0)
    # PyTorch's fused kernels (one pass per parameter) rather than its for-loop implementation,
    # which on the CPU makes temporaries for every operation: the same update, and dense CPU steps
    # up to 1.18x faster (benchmarks/RESULTS.md). False = the for-loop implementation.
    fused: bool = True

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in value):
            raise ValueError("each beta must be in [0, 1)")
        return value


class SparsityConfig(Section):
    enabled: bool = True
    target: float = Field(0.9, gt=0.0, lt=1.0, description="overall fraction of zero conv and linear weights")
    init: float = Field(-15.0, ge=-1e4, le=1e4, description="sInit: initial s, threshold sigmoid(s)")
    granularity: Literal["component", "layer", "global"] = "component"
    # "freeze": the reference's stop rule. "schedule": thresholds rescaled so that the overall
    # sparsity follows a cubic plan from schedule_start to schedule_end (fractions of the run)
    # and lands on the target; components still learn how to share it.
    control: Literal["freeze", "schedule"] = "schedule"
    schedule_start: float = Field(0.1, ge=0.0, lt=1.0)
    # Steps between two re-scalings by the schedule controller (and always at the last step).
    schedule_every: int = Field(10, ge=1)
    schedule_end: float = Field(0.7, gt=0.0, le=1.0)
    # How often (in steps) the stop rule re-counts sparsity. 1 = every step, as the reference.
    check_every: int = Field(1, ge=1)
    # Thresholds the stop rule freezes; empty = all (standard). QUIRK: the reference freezes only
    # ["head.segment_semantic", "head.normal", "head.depth_zbuffer"], by name, even on Taskonomy.
    freeze_only: list[str] = Field(default_factory=list)


    @model_validator(mode="after")
    def _schedule_ordered(self) -> SparsityConfig:
        if self.schedule_end <= self.schedule_start:
            raise ValueError("sparsity.schedule_end must be after sparsity.schedule_start")
        return self


class WeightingConfig(Section):
    method: Literal["adaptive", "equal"] = "adaptive"
    begin: int = Field(5000, ge=0)
    window: int = Field(500, ge=1)
    # QUIRK: the reference renormalises the weights to sum to 3 whatever the task count.
    quirk_normalise_to_three: bool = False
    priorities: dict[str, float] = Field(default_factory=dict)

    @field_validator("priorities")
    @classmethod
    def _priorities_positive(cls, value: dict[str, float]) -> dict[str, float]:
        for task, priority in value.items():
            if priority < 0:
                raise ValueError(f"priority of {task!r} must be >= 0")
        return value


class EvalConfig(Section):
    # QUIRK switches of REFERENCE.md 7; paper mode sets them all.
    miou_tp_only: bool = False
    batch_weighted_means: bool = False
    depth_unclamped: bool = False


class Config(Section):
    name: str = "custom"
    description: str = ""
    seed: int = Field(0, ge=0, lt=2**63)
    mode: Literal["standard", "paper"] = "standard"
    tasks: list[str] = Field(default_factory=lambda: ["segment_semantic", "normal", "depth_zbuffer"])
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    sparsity: SparsityConfig = Field(default_factory=SparsityConfig)
    weighting: WeightingConfig = Field(default_factory=WeightingConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @field_validator("tasks")
    @classmethod
    def _tasks_known_and_unique(cls, value: list[str]) -> list[str]:
        from adapmtl_cli.tasks import task_names  # read now: a kind registered after import counts

        if not value:
            raise ValueError("the task list is empty: name at least one task")
        known = task_names()
        for task in value:
            if task not in known:
                raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(known)}")
        if len(set(value)) != len(value):
            raise ValueError("a task is listed twice")
        return value

    @model_validator(mode="after")
    def _priorities_name_tasks(self) -> Config:
        unknown = set(self.weighting.priorities) - set(self.tasks)
        if unknown:
            raise ValueError(f"weighting.priorities names tasks not in `tasks`: {sorted(unknown)}")
        return self

    @model_validator(mode="after")
    def _source_has_the_tasks(self) -> Config:
        from adapmtl_cli.data.sources import data_source

        source = self.data.source
        entry = data_source(source)
        # With data.factory (and data.source left alone) the factory's datasets bring the tasks.
        available = None if self.data.factory and source == "synthetic" else entry.tasks
        lacking = [task for task in self.tasks if available is not None and task not in available]
        if lacking:
            raise ValueError(f"tasks lists {lacking[0]!r}, which data.source = {source!r} does not have; "
                             f"keep tasks within {list(available)}")
        if self.data.factory and source != "synthetic":
            raise ValueError(f"data.factory and data.source = {source!r} both say where the data comes from; "
                             "remove data.source (the factory's datasets are used)")
        if entry.class_choices and self.data.num_classes not in entry.class_choices:
            raise ValueError(f"data.num_classes = {self.data.num_classes} with data.source = {source!r}: set "
                             f"{_or_list([str(n) for n in entry.class_choices])} ({entry.class_choices_reason})")
        return self


# --------------------------------------------------------------------------------------------
# Presets on disk


def list_presets() -> dict[str, Path]:
    """Shipped presets by name (file stem), sorted."""
    return {path.stem: path for path in sorted(PRESET_DIR.glob("*.toml"))}


def resolve_preset_path(name_or_file: str) -> Path:
    """A preset name (``demo``) or a path to a TOML file."""
    path = Path(name_or_file)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise ConfigError(f"preset file {path} does not exist; `adapmtl presets list` shows the shipped ones")
        return path
    presets = list_presets()
    if name_or_file in presets:
        return presets[name_or_file]
    hint = _closest(name_or_file, presets)
    raise ConfigError(
        f"unknown preset {name_or_file!r}{hint}; `adapmtl presets list` shows them, or pass a .toml file"
    )


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}); fix the syntax") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror})") from None


def load_config(preset: str, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a preset (name or file), apply ``key=value`` overrides, validate."""
    path = resolve_preset_path(preset)
    raw = read_toml(path)
    anchor_factory_files(raw, path.parent)
    for override in overrides:
        key = apply_override(raw, override)
        if key in FACTORY_KEYS:
            anchor_factory_files(raw, Path.cwd(), only=key)
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        # Blame the override when the bad field was set by one, else the preset file.
        field = ".".join(str(part) for part in exc.errors()[0]["loc"])
        message = _describe_validation_error(exc)

        def blamed(override: str) -> bool:
            key = override.partition("=")[0].strip()
            # A check across fields (tasks vs data.source) has no field: blame an override it names.
            return field.startswith(key) if field else bool(key) and key in message

        culprit = next((o for o in reversed(overrides) if blamed(o)), None)
        source = f"override {culprit!r}" if culprit else str(path)
        raise ConfigError(f"{source}: {message}") from None


def anchor_factory_files(raw: dict[str, Any], base: Path, only: str | None = None) -> None:
    """Make a relative ``path/to/file.py:function`` factory absolute, from ``base`` (the preset's
    folder, or the current directory for an override), so the saved config.toml and checkpoints
    find the file again from anywhere. Module specs and malformed values are left to validation."""
    for key in FACTORY_KEYS:
        if only is not None and key != only:
            continue
        table, name = key.split(".")
        section = raw.get(table)
        spec = section.get(name) if isinstance(section, dict) else None
        if not isinstance(spec, str) or not spec:
            continue
        try:
            target, function, is_file = split_factory(spec)
        except ValueError:
            continue
        if is_file and not Path(target).is_absolute():
            section[name] = f"{(base / target).resolve()}:{function}"


def validate_config(raw: dict[str, Any], source: str = "config") -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_describe_validation_error(exc)}") from None


# --------------------------------------------------------------------------------------------
# Overrides: dotted keys, values parsed as TOML so that they keep their types


def apply_override(raw: dict[str, Any], override: str) -> str:
    """Set ``a.b.c=value`` in a raw config dict; the key must exist in the schema. Returns the key.

    Below a table-valued key (``weighting.priorities``, ``model.factory_args``,
    ``model.components``) the rest of the dotted key is one entry's name, dots included:
    ``model.components.head.seg=decoders.seg`` sets the entry ``"head.seg"``.
    """
    key, sep, text = override.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {override!r} is not key=value, e.g. train.steps=500")
    path = _check_key_exists(key.split("."))
    target = raw
    for part in path[:-1]:
        node = target.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key}: {part} is not a table")
        target = node
    target[path[-1]] = parse_value(text.strip())
    return key


def parse_value(text: str) -> Any:
    """A TOML value (``3``, ``1e-4``, ``true``, ``[1, 2]``, ``"x"``); anything else is a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _check_key_exists(path: list[str]) -> list[str]:
    """Check a dotted key against the schema; returns its parts, with everything below a
    table-valued field joined into that table's one entry name."""
    model: type[BaseModel] | None = Config
    for depth, part in enumerate(path):
        fields = model.model_fields if model is not None else {}
        if part not in fields:
            prefix = ".".join(path[:depth])
            valid = [f"{prefix}.{name}" if prefix else name for name in fields]
            dotted = ".".join(path)
            hint = _closest(dotted, all_keys()) or _closest(dotted, valid)
            raise ConfigError(f"unknown config key {dotted!r}{hint}; `adapmtl presets show demo` lists the keys")
        annotation = fields[part].annotation
        is_section = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        if depth < len(path) - 1 and not is_section:
            # Table-valued fields (priorities, factory_args, components) take one entry name.
            if typing.get_origin(annotation) is dict and all(path[depth + 1:]):
                return path[:depth + 1] + [".".join(path[depth + 1:])]
            raise ConfigError(f"unknown config key {'.'.join(path)!r}: {'.'.join(path[:depth + 1])} is a value")
        model = annotation if is_section else None
    return path


def all_keys() -> list[str]:
    """Every dotted key of the schema, e.g. ``train.steps``."""
    keys: list[str] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                walk(annotation, f"{prefix}{name}.")
            else:
                keys.append(f"{prefix}{name}")

    walk(Config, "")
    return keys


def _or_list(words: list[str]) -> str:
    """``a, b or c``."""
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def _closest(word: str, candidates) -> str:
    match = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _describe_validation_error(exc: ValidationError) -> str:
    """The first error as one line: the dotted field, what is wrong and, for unknown keys, a hint."""
    error = exc.errors()[0]
    field = ".".join(str(part) for part in error["loc"]) or "config"
    if error["type"] == "extra_forbidden":
        hint = _closest(field, all_keys())
        return f"unknown key {field!r}{hint}"
    message = error["msg"].removeprefix("Value error, ")
    extra = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    given = error.get("input")
    shown = f", got {given!r}" if given is not None and not isinstance(given, dict) else ""
    return f"{field}: {message}{shown}{extra}"


# --------------------------------------------------------------------------------------------
# Writing a resolved config back as TOML (the run directory's config.toml)


def config_to_toml(config: Config) -> str:
    """The fully resolved config as TOML; reading it back gives an equal Config."""
    # TOML has no null: an unset optional value (data.seed) is left out and reads back as unset.
    data = _without_none(config.model_dump(mode="json"))
    lines: list[str] = []
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    lines += [f"{key} = {_toml_value(value)}" for key, value in scalars.items()]
    for table, values in tables.items():
        lines.append(f"\n[{table}]")
        nested = {k: v for k, v in values.items() if isinstance(v, dict)}
        lines += [f"{key} = {_toml_value(value)}" for key, value in values.items() if key not in nested]
        for key, value in nested.items():
            lines.append(f"\n[{table}.{key}]")
            lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()]
    return "\n".join(lines) + "\n"


def _without_none(table: dict) -> dict:
    return {k: _without_none(v) if isinstance(v, dict) else v for k, v in table.items() if v is not None}


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # a table inside a table (model.factory_args): an inline table
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")


def config_to_json(config: Config) -> str:
    return json.dumps(config.model_dump(mode="json"), sort_keys=True)


def config_from_json(text: str, source: str) -> Config:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError:
        raise ConfigError(f"{source}: the embedded config is not valid JSON") from None
    return validate_config(raw, source=source)
