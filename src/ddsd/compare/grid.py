"""The grid of a comparison: which runs, their ``ddsd train`` command lines (executed by :mod:`.runner`).

A run is (dataset, method label, seed); its directory is ``<out>/runs/<dataset>/<label>/seed<k>``. A run
directory holding ``summary.json`` is finished and skipped; one holding ``checkpoints/last.pt`` but no
summary was interrupted and is launched with ``--resume``; anything else is started from scratch.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ddsd.config import METHODS, ConfigError, RunConfig, apply_overrides
from ddsd.methods import TEACHER_METHODS as _TEACHER_METHODS

__all__ = [
    "TEACHER_METHODS",
    "RunSpec",
    "Variant",
    "build_plan",
    "dataset_label",
    "expand_models",
    "parse_methods",
    "parse_seeds",
    "run_state",
]

#: methods whose criterion reads a network teacher's logits (the others would only pay for its forward pass)
TEACHER_METHODS = frozenset(_TEACHER_METHODS)
_LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_KEY_RE = re.compile(r"^\s*[A-Za-z_][A-Za-z0-9_.]*\s*=")


@dataclass(frozen=True)
class Variant:
    """A method column: ``label`` (directory and table name), the ``ddsd train --method`` and its overrides."""

    label: str
    method: str
    overrides: tuple[str, ...] = ()

    @property
    def is_ddsd(self) -> bool:
        """Dynamic dropout self-distillation (``ddsd`` itself or a ``label=ddsd,...`` variant)."""
        return self.method == "ddsd"


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"``, ``"0-4"`` or a mix (``"0-2,7"``) -> sorted unique non-negative seeds."""
    seeds: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        m = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if hi < lo:
                raise ValueError(f"bad seed range {part!r} in --seeds {text!r}: the end is below the start")
            seeds += range(lo, hi + 1)
        elif part.isdigit():
            seeds.append(int(part))
        else:
            raise ValueError(f"bad seed {part!r} in --seeds {text!r}: expected non-negative integers or ranges "
                             "like 0-4, separated by commas")
    if not seeds:
        raise ValueError(f"--seeds {text!r} names no seed")
    return sorted(set(seeds))


def _split_variant(text: str) -> list[str]:
    """Split ``label=method,k=v,k=[1, 2]`` on the commas that start a new ``key=`` item."""
    items: list[str] = []
    for piece in text.split(","):
        if items and not _KEY_RE.match(piece):
            items[-1] += "," + piece
        else:
            items.append(piece)
    return [i.strip() for i in items if i.strip()]


def _check_label(label: str, source: str) -> None:
    if not _LABEL_RE.match(label):
        raise ValueError(f"bad method label {label!r} in {source}: use letters, digits, '_', '.', '+', '-'")


def _check_overrides(overrides: Sequence[str], source: str) -> None:
    for o in overrides:
        if o.split("=", 1)[0].strip() in ("method.name", "out", "train.seed", "data.name"):
            raise ValueError(f"{source}: {o!r} is set by compare itself (method, dataset, seed, run directory)")
    try:
        apply_overrides(RunConfig(), list(overrides))
    except ConfigError as e:
        raise ValueError(f"{source}: {e}") from None


def parse_methods(methods: str | None, variants: Sequence[str] = ()) -> list[Variant]:
    """``--methods ce,kd,ddsd`` plus repeated ``--variant "label=method,key=value,..."`` -> method columns.

    Unknown methods, malformed or duplicate labels and invalid overrides raise ``ValueError`` naming them.
    """
    out: list[Variant] = []
    for name in (methods or "").split(","):
        name = name.strip()
        if not name:
            continue
        if "=" in name:
            raise ValueError(f"--methods item {name!r}: variants with overrides go in --variant \"{name},...\"")
        if name not in METHODS:
            raise ValueError(f"unknown method {name!r} in --methods; valid methods: {', '.join(METHODS)}")
        out.append(Variant(name, name))
    for text in variants:
        items = _split_variant(text)
        if not items or "=" not in items[0]:
            raise ValueError(f"bad --variant {text!r}: expected label=method[,section.key=value,...]")
        label, method = (s.strip() for s in items[0].split("=", 1))
        _check_label(label, f"--variant {text!r}")
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r} in --variant {text!r}; valid methods: {', '.join(METHODS)}")
        _check_overrides(items[1:], f"--variant {text!r}")
        out.append(Variant(label, method, tuple(items[1:])))
    seen: set[str] = set()
    for v in out:
        if v.label in seen:
            raise ValueError(f"method label {v.label!r} appears twice in --methods/--variant")
        seen.add(v.label)
    if not out:
        raise ValueError(f"no method given; choose from {', '.join(METHODS)} (--methods) or add --variant")
    return out


def expand_models(variants: Sequence[Variant], models: Sequence[str]) -> list[Variant]:
    """``--models a,b``: every method column once per student model, labelled ``<label>+<model>`` (the model's
    name, or a ``package.module:factory`` spec's factory name) with ``model.name=<spec>`` added first (a variant's
    own overrides still win). One model keeps the labels unchanged."""
    models = [m.strip() for m in models if m.strip()]
    if len(set(models)) != len(models):
        raise ValueError(f"--models names a model twice: {', '.join(models)}")
    if not models:
        return list(variants)
    out = []
    for m in models:
        tag = re.sub(r"[^A-Za-z0-9_.+-]", "_", m.rpartition(":")[2] or m)
        for v in variants:
            label = v.label if len(models) == 1 else f"{v.label}+{tag}"
            out.append(Variant(label, v.method, (f"model.name={m}", *v.overrides)))
    return out


def dataset_label(name: str) -> str:
    """The directory / table name of a dataset: the name itself, or the stem of a YAML file or folder path."""
    p = Path(name)
    label = p.stem if (p.suffix in (".yaml", ".yml") or len(p.parts) > 1) else name
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", label) or "data"


@dataclass(frozen=True)
class RunSpec:
    """One run of the grid: what to train and where."""

    dataset: str
    dataset_label: str
    variant: Variant
    seed: int
    rundir: Path
    config: Path | None = None
    teacher: str | None = None
    teacher_cache: str | None = None
    epochs: int | None = None
    size: str | None = None
    model: str | None = None
    overrides: tuple[str, ...] = field(default=())

    @property
    def name(self) -> str:
        return f"{self.dataset_label}/{self.variant.label}/seed{self.seed}"

    @property
    def log(self) -> Path:
        return self.rundir / "train.log"

    def argv(self, prog: Sequence[str] = ("ddsd",), threads: int | None = None, resume: bool = False) -> list[str]:
        """The ``ddsd train`` command line of this run (``prog`` replaces ``ddsd``, e.g. ``python -m ddsd``)."""
        a = [*prog, "train"]
        if self.config is not None:
            a += ["--config", str(self.config)]
        a += ["--method", self.variant.method, "--data", self.dataset, "--seed", str(self.seed),
              "--out", str(self.rundir)]
        if self.epochs is not None:
            a += ["--epochs", str(self.epochs)]
        if self.size is not None:
            a += ["--size", self.size]
        if self.model is not None:
            a += ["--model", self.model]
        if self.teacher is not None:
            a += ["--teacher", self.teacher]
            if self.teacher_cache is not None:
                a += ["--teacher-cache", self.teacher_cache]
        a.append("--no-progress")
        if threads is not None:
            a += ["--threads", str(threads)]
        if resume:
            a.append("--resume")
        for o in self.overrides:
            a += ["--set", o]
        return a


def _teacher_for(teachers: Sequence[str], dataset: str, label: str) -> str | None:
    """``--teacher DATASET=PATH`` for one dataset, else ``--teacher PATH`` (``{dataset}`` replaced by its name)."""
    generic = None
    for t in teachers:
        key, sep, path = t.partition("=")
        if sep and key in (dataset, label):
            return path
        if not (sep and _names_dataset(key)):
            generic = t
    return generic.replace("{dataset}", label) if generic else None


def _names_dataset(key: str) -> bool:
    return bool(key) and "/" not in key and "{" not in key and not key.endswith(".pt")


def build_plan(
    variants: Sequence[Variant],
    datasets: Sequence[str],
    seeds: Sequence[int],
    out: str | Path,
    *,
    teachers: Sequence[str] = (),
    teacher_cache: str | Path | None = None,
    config_dir: str | Path | None = None,
    sets: Sequence[str] = (),
    epochs: int | None = None,
    size: str | None = None,
    model: str | None = None,
    snapshots: int = 4,
) -> list[RunSpec]:
    """Every run of the grid, seed-major (all methods and datasets for the first seed come first).

    ``snapshots`` val images (``train.snapshots``) are saved per epoch by the first seed's run of each ddsd
    method (for the difficulty / dropped-pixel pictures); 0 disables. ``teacher_cache`` (a folder) is given to
    the runs that read a network teacher (:class:`ddsd.models.CachedTeacher`: the methods of one seed see the
    same augmented images, so the teacher runs once per image and seed). Global ``sets`` come after it, then
    the variant's own overrides, so the most specific setting wins.
    """
    if not datasets:
        raise ValueError("no dataset given (--datasets)")
    _check_overrides(sets, "--set")
    labels = [dataset_label(d) for d in datasets]
    for lab in set(labels):
        if labels.count(lab) > 1:
            raise ValueError(f"two --datasets map to the same directory name {lab!r}; rename one")
    for t in teachers:
        key, sep, _ = t.partition("=")
        if sep and _names_dataset(key) and key not in datasets and key not in labels:
            raise ValueError(f"--teacher {t!r} names dataset {key!r}, which is not in --datasets")
    cdir = Path(config_dir) if config_dir is not None else None
    if cdir is not None and not cdir.is_dir():
        raise ValueError(f"--config-dir {str(cdir)!r} is not a directory")
    root = Path(out) / "runs"
    plan: list[RunSpec] = []
    for seed in seeds:
        for data, lab in zip(datasets, labels, strict=True):
            cfg = cdir / f"{lab}.yaml" if cdir is not None else None
            for v in variants:
                extra = [f"train.snapshots={snapshots}"] if snapshots and v.is_ddsd and seed == seeds[0] else []
                plan.append(RunSpec(
                    dataset=data, dataset_label=lab, variant=v, seed=seed, rundir=root / lab / v.label / f"seed{seed}",
                    config=cfg if cfg is not None and cfg.is_file() else None,
                    teacher=(t := _teacher_for(teachers, data, lab) if v.method in TEACHER_METHODS else None),
                    teacher_cache=str(teacher_cache) if teacher_cache is not None and t is not None else None,
                    epochs=epochs, size=size, model=model, overrides=(*extra, *sets, *v.overrides),
                ))
    return plan


def run_state(rundir: Path) -> str:
    """``done`` (summary.json), ``resume`` (checkpoints/last.pt, no summary) or ``new``."""
    if (rundir / "summary.json").is_file():
        return "done"
    if (rundir / "checkpoints" / "last.pt").is_file():
        return "resume"
    return "new"


def write_grid_meta(out: Path, meta: dict) -> None:
    """Merge ``meta`` into ``<out>/compare.json`` (the grid's command, method order, seeds, timings)."""
    from ddsd.engine.rundir import write_json

    path = out / "compare.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, {**old, **meta})
