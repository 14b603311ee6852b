"""Build a model from a spec, its settings and optional local weights: the one constructor behind ``ddsd train``
(the student), ``--teacher SPEC --teacher-weights PATH`` and the checkpoint loader.

What a checkpoint records to rebuild a model (``config["model"]``): ``name`` (the spec: a registered name,
``package.module:factory`` or a plug-in name), ``kwargs`` (the factory's keyword arguments, resolved: for a
Hugging Face folder they include the architecture read from its ``config.json``), ``num_classes`` and
``in_channels``. Weights are never re-read from ``weights`` when rebuilding: the checkpoint holds them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from .registry import create_model, get_factory
from .weights import WeightsError, load_weights

__all__ = ["build_model", "build_student"]


def _quiet(_: str) -> None:
    return None


def build_model(
    spec: str, num_classes: int, kwargs: Mapping[str, Any] | None = None, in_channels: int = 3,
    weights: str | Path | None = None, log: Callable[[str], None] = _quiet, allow_new_head: bool = True,
) -> tuple[nn.Module, dict[str, Any]]:
    """``(model, resolved kwargs)`` for ``spec`` with ``num_classes`` outputs.

    ``in_channels`` is passed to the factory only when it is not 3 (so ``(num_classes, **kwargs)`` factories
    need not take it). With ``weights`` (a file or ``save_pretrained`` folder) the architecture settings the
    factory reads from it (``factory.config_from_weights``, e.g. SegFormer's ``config.json``) fill the kwargs not
    given, then the weights are loaded by :func:`ddsd.models.weights.load_weights` (new head for another class
    count unless ``allow_new_head=False``; every adaptation is reported through ``log``).

    Raises ``ValueError`` (``ModelSpecError`` / ``WeightsError``) naming the spec, key or file.
    """
    factory = get_factory(spec)
    kw = dict(kwargs or {})
    from_weights = getattr(factory, "config_from_weights", None)
    if weights is not None and from_weights is not None:
        filled = {k: v for k, v in from_weights(weights).items() if k not in kw}
        if filled:
            log(f"architecture of {spec} from {Path(weights) / 'config.json'}: "
                + ", ".join(f"{k}={v}" for k, v in filled.items()))
            kw = {**filled, **kw}
    args = {**kw, "in_channels": int(in_channels)} if int(in_channels) != 3 else kw
    from_folder = getattr(factory, "from_folder", None)
    if weights is not None and from_folder is not None and Path(weights).is_dir():
        model, report = from_folder(weights, num_classes, **args)
        _report(report, weights, num_classes, log, allow_new_head)
        return model, kw
    model = create_model(spec, num_classes, **args)
    if weights is not None:
        load_weights(model, weights, num_classes, log=log, allow_new_head=allow_new_head)
    return model, kw


def _report(report: Mapping[str, list[str]], weights: str | Path, k: int, log: Callable[[str], None],
            allow_new_head: bool) -> None:
    """Log what a library loader (e.g. ``from_pretrained``) did not load as is; a new head may be refused."""
    if report["new"] and not allow_new_head:
        raise WeightsError(f"weights {weights} are for another class count ({', '.join(report['new'])}), the data "
                           f"has {k} classes")
    log(f"loaded weights from {weights}")
    if report["new"]:
        log(f"new head for {k} classes (freshly initialised): {', '.join(report['new'])}")
    for what, keys in (("missing (freshly initialised)", report["missing"]), ("not used", report["unused"])):
        if keys:
            log(f"{len(keys)} tensor(s) {what}: {', '.join(keys[:4])}" + (" ..." if len(keys) > 4 else ""))


def build_student(model_cfg: Any, num_classes: int, log: Callable[[str], None] = _quiet) -> nn.Module:
    """The student of a :class:`ddsd.config.ModelConfig` (``name``, ``kwargs``, ``in_channels``, ``weights``);
    ``model_cfg.kwargs`` is replaced by the resolved kwargs, so the saved config rebuilds the same network."""
    model, kw = build_model(model_cfg.name, num_classes, model_cfg.kwargs, model_cfg.in_channels,
                            model_cfg.weights, log=log)
    model_cfg.kwargs = kw
    return model
