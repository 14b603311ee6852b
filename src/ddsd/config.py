"""The schema of a training run (pydantic), YAML load/save, and ``key=value`` overrides.

Unknown keys are errors that name the key and the file; every field has a documented default so that
``RunConfig()`` is the main job: the ``ddsd`` method on the built-in procedural data.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = ["METHODS", "ConfigError", "RunConfig", "apply_overrides", "did_you_mean", "load_config", "save_config"]

METHODS = ("ce", "kd", "ls", "tfkd", "static", "ohem", "cwd", "ddsd", "tfkd_reg")


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key, the value and the file."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    name: str = Field("builtin", description="builtin | procedural_binary | shipped name | YAML path | root folder")
    root: str | None = Field(None, description="folder holding the shipped datasets (default: $DDSD_DATASETS, "
                             "else ../shared/datasets beside the repo)")
    size: tuple[int, int] | None = Field(None, description="training/eval resolution (H, W); None = dataset default")
    resize: Literal["auto", "fixed", "pad"] = Field(
        "auto", description="auto: size = data.size, else the dataset's, else chosen from the images (recorded); "
        "fixed: data.size (or the dataset's) required; pad: keep aspect and pad to the size")
    batch_size: int = Field(8, ge=1)
    num_workers: int | None = Field(None, ge=0, description="data-loader workers (None = auto, see "
                                    "ddsd.engine.resources)")
    augment: bool = True
    cache_dir: str | None = None
    eval_splits: list[str] = Field(default_factory=lambda: ["test"], description="evaluated with best.pt at the end")


class ModelConfig(_Strict):
    name: str = Field("simple", description="model spec: a registered name (simple, unet_small, segformer_b0, ...), "
                      "package.module:factory, or an installed ddsd.models plug-in")
    num_classes: int | None = Field(None, description="filled from the dataset when None")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the model's factory")
    in_channels: int = Field(3, ge=1, description="input channels (recorded; passed to the factory when not 3)")
    weights: str | None = Field(None, description="local pretrained weights: a file or a save_pretrained folder "
                                "(a new head for another class count); nothing is downloaded")
    aux_weight: float = Field(0.0, ge=0, description="weight of the CE of auxiliary heads (dict outputs); 0 ignores")


class MethodConfig(_Strict):
    """One method's settings; every method reads only the keys it needs (see ddsd.methods).

    The KD family (kd, static, ddsd, tfkd, tfkd_reg) shares ``confidence`` / ``temperature`` / ``kd_weight``, so
    one search space serves all of them; the ``tfkd_*`` keys (None = use the shared key) override for tfkd only.
    """

    name: Literal["ce", "kd", "ls", "tfkd", "tfkd_reg", "static", "ohem", "cwd", "ddsd"] = "ddsd"
    confidence: float = Field(
        0.99, gt=0, le=1, description="virtual-teacher confidence a (kd, static, ddsd, tfkd, tfkd_reg, cwd)")
    temperature: float = Field(4.0, gt=0, description="KD temperature T (kd, static, ddsd, tfkd, tfkd_reg)")
    kd_weight: float = Field(
        0.5, ge=0, description="KD weight lambda (x T^2); tfkd_reg: Yuan's multiplier (no T^2)")
    difficulty: Literal["one_sided_kl", "kl", "target_gap", "l1"] = "one_sided_kl"
    scope: Literal["per_image", "per_batch"] = "per_image"
    selection: Literal["hardest", "random", "easiest", "bernoulli"] = Field(
        "bernoulli", description="which pixels the rate drops (docs/method.md); threshold schedule: hardest")
    tie_break: Literal["random", "index"] = Field(
        "random", description="order among equal difficulties: seeded random (default) or flat index (legacy)")
    kd_norm: Literal["kept", "valid"] = Field(
        "kept", description="KD term averaged over the kept pixels, or summed over them / |valid|")
    ce_on_dropped: bool = True
    schedule: Literal["capability", "constant", "linear", "cosine", "exponential", "threshold"] = "capability"
    rate: float = Field(0.2, ge=0, lt=1, description="static rate; start rate of linear/cosine/exponential")
    end_rate: float = Field(0.0, ge=0, lt=1, description="end rate of linear/cosine/exponential")
    tau: float = Field(0.5, ge=0, description="threshold schedule")
    beta: float = Field(1.0, ge=0)
    r_min: float = Field(0.0, ge=0, lt=1)
    r_max: float = Field(0.3, ge=0, lt=1)
    momentum: float = Field(0.9, ge=0, lt=1)
    capability_metric: Literal["mean_class_acc", "pixel_acc"] = "mean_class_acc"
    capability_relative: bool = Field(
        True, description="rate from the share of its initial accuracy gap the student has closed (r_max -> r_min)")
    ls_epsilon: float = Field(0.1, ge=0, lt=1)
    tfkd_confidence: float | None = Field(None, gt=0, le=1, description="tfkd only; None = confidence")
    tfkd_temperature: float | None = Field(None, gt=0, description="tfkd only; None = temperature")
    tfkd_weight: float | None = Field(None, ge=0, description="tfkd only; None = kd_weight")
    tfkd_reg_alpha: float = Field(
        0.1, ge=0, le=1, description="tfkd_reg: (1 - alpha) CE + alpha * kd_weight * KL (Yuan et al.'s alpha)")
    ohem_thresh: float = Field(0.7, gt=0, le=1)
    ohem_min_kept: float = Field(0.1, gt=0, le=1)
    cwd_tau: float = Field(4.0, gt=0)
    cwd_weight: float = Field(3.0, ge=0)


class OptimConfig(_Strict):
    name: Literal["sgd", "adamw"] = "adamw"
    lr: float = Field(3e-3, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    lr_schedule: Literal["poly", "cosine", "constant"] = "poly"
    poly_power: float = 0.9
    warmup_epochs: float = Field(0.0, ge=0)
    grad_clip: float | None = Field(5.0, description="max global grad norm; None disables")


class TrainConfig(_Strict):
    epochs: int = Field(20, ge=1)
    seed: int = 0
    device: str = "cpu"
    amp: Literal["none", "bf16", "fp16"] = "none"
    compile: bool = False
    channels_last: bool = False
    threads: int | None = Field(None, ge=1, description="torch CPU threads (None = auto, see ddsd.engine.resources)")
    tensorboard: bool = False
    progress: bool = True
    snapshots: int = Field(
        0, ge=0, description="val images whose difficulty / dropped maps are saved (first, middle, last epoch)"
    )
    teacher_amp: Literal["none", "bf16", "fp16"] = Field(
        "none", description="precision of the network teacher's forward alone (the student follows train.amp)"
    )
    teacher_channels_last: bool = Field(False, description="run the network teacher in channels-last layout")
    teacher_cache: str | None = Field(
        None, description="folder of a disk cache of the network teacher's per-image logits (see CachedTeacher)"
    )

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not (v in ("cpu", "cuda") or v.startswith("cuda:")):
            raise ValueError(f"device must be cpu, cuda or cuda:N, got {v!r}")
        return v


class RunConfig(_Strict):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    teacher: str | None = Field(None, description="checkpoint of a network teacher trained by ddsd")
    teacher_weights: str | None = Field(None, description="weights of a teacher given as a model spec")
    out: str = "runs/ddsd"


#: the top-level key under which a run's ``config.yaml`` records how it ran (commit, versions, world size):
#: metadata, not settings, so :func:`load_config` ignores it and a run's config.yaml is a valid ``--config``
RUN_METADATA_KEY = "run"

#: what a field expects, for the messages where pydantic's own text would not say it
_EXPECTS = {"data.size": "[H, W] (two integers, e.g. [256, 256]) or null"}


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The config section (model class) holding the key at ``loc`` (``('method', 'r_maxx')`` -> MethodConfig)."""
    model: type[BaseModel] = RunConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None) if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


def did_you_mean(word: str, choices: Any) -> str:
    """`` (did you mean `r_max`?)`` for the closest of ``choices`` (difflib), else an empty string."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean `{close[0]}`?)" if close else ""


def _all_keys() -> list[str]:
    """Every ``section.key`` of a run config (for a key given in the wrong section)."""
    out = []
    for name, f in RunConfig.model_fields.items():
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += [f"{name}.{k}" for k in ann.model_fields]
    return out


def _format_errors(err: ValidationError, source: str, data: dict[str, Any]) -> str:
    lines = [f"invalid config ({source}):"]
    for e in err.errors():
        loc = tuple(e["loc"])
        key = ".".join(str(p) for p in loc)
        value = e.get("input")
        if e["type"] == "extra_forbidden":
            model = _model_at(loc)
            hint = did_you_mean(loc[-1], model.model_fields) if model else ""
            if not hint:  # a key of another section (``epochs`` at the top level -> ``train.epochs``)
                keys = _all_keys()
                close = difflib.get_close_matches(str(loc[-1]), [k.split(".")[1] for k in keys], n=1, cutoff=0.8)
                hint = next((f" (did you mean `{k}`?)" for k in keys if close and k.endswith("." + close[0])), "")
            lines.append(f"  unknown key '{key}'{hint}")
            continue
        field = next((f for f in _EXPECTS if key == f or key.startswith(f + ".")), None)
        if field is not None:
            lines.append(f"  {field} expects {_EXPECTS[field]}, got {_value_at(data, field)!r}")
        else:
            lines.append(f"  {key} = {value!r}: {e['msg']}")
    return "\n".join(dict.fromkeys(lines))  # one line per field even when pydantic reports several


def _value_at(data: dict[str, Any], dotted: str) -> Any:
    """The value given at ``dotted`` (``data.size``) in the raw config dict."""
    node: Any = data
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def validate(data: dict[str, Any], source: str = "<dict>") -> RunConfig:
    """Build a :class:`RunConfig` from a nested dict; errors name the key, value and ``source``."""
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, source, data)) from None


def load_config(path: str | Path) -> RunConfig:
    """Read a YAML run config."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping at the top level, got {type(data).__name__}")
    data.pop(RUN_METADATA_KEY, None)  # a run's config.yaml: how it ran, not a setting
    return validate(data, str(p))


def save_config(cfg: RunConfig, path: str | Path, extra: dict[str, Any] | None = None) -> None:
    """Write the resolved config (plus ``extra`` run metadata under ``run:``) as YAML."""
    data = cfg.model_dump(mode="json")
    if extra:
        data[RUN_METADATA_KEY] = extra
    from ddsd._io import atomic_write_bytes

    atomic_write_bytes(path, yaml.safe_dump(data, sort_keys=False).encode())


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply ``section.key=value`` overrides (value parsed as YAML), e.g. ``method.r_max=0.3``."""
    data = cfg.model_dump(mode="json")
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                sections = [k for k, v in node.items() if isinstance(v, dict)]
                raise ConfigError(f"override {item!r}: unknown section '{p}'{did_you_mean(p, sections)}")
            node = node[p]
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            problem = str(getattr(e, "problem", None) or e).splitlines()[0]
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({problem}); quote it, e.g. "
                              f"{key.strip()}='\"...\"'") from None
    return validate(data, "overrides " + " ".join(overrides))
