"""A small name -> factory registry for segmentation networks, and model *specs*.

A model spec (``--model``, ``model.name``, ``--teacher``) is one of

* a registered name (``simple``, ``unet_small``, ``segformer_b0``, ...; case-insensitive, ``-`` = ``_``);
* ``package.module:factory`` (or ``package.module:Class.attr``): the user's own code, imported at run time;
  the module must be importable (installed, or its folder on ``PYTHONPATH``);
* the name of an installed plug-in: an entry point in the group ``ddsd.models`` whose object is a factory.

Every factory is called as ``factory(num_classes, **kwargs)`` and must return an
``nn.Module`` that maps ``[B, C_in, H, W]`` images to ``[B, num_classes, H, W]`` logits.

Example::

    @register_model("my_net")
    def my_net(num_classes: int, **kwargs) -> nn.Module:
        return MyNet(num_classes, **kwargs)

    net = create_model("my_net", num_classes=11)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib import metadata
from typing import TypeVar

from torch import nn

__all__ = ["ModelSpecError", "create_model", "entry_point_models", "get_factory", "list_models", "register_model"]

ENTRY_POINT_GROUP = "ddsd.models"


class ModelSpecError(ValueError):
    """A model spec names no model, or its factory cannot be imported (the message says what is missing)."""

Factory = Callable[..., nn.Module]
F = TypeVar("F", bound=Factory)

_REGISTRY: dict[str, Factory] = {}


def _normalise(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def register_model(name: str) -> Callable[[F], F]:
    """Decorator registering ``factory(num_classes, **kwargs) -> nn.Module`` under ``name``.

    Names are case-insensitive and ``-`` is treated as ``_``. Registering the same name twice with a
    different factory raises ``ValueError``.
    """
    key = _normalise(name)
    if not key:
        raise ValueError("model name must be a non-empty string")

    def decorator(factory: F) -> F:
        existing = _REGISTRY.get(key)
        if existing is not None and existing is not factory:
            raise ValueError(f"a model named {key!r} is already registered ({existing!r})")
        _REGISTRY[key] = factory
        return factory

    return decorator


def list_models() -> list[str]:
    """Sorted names of all registered models."""
    return sorted(_REGISTRY)


def entry_point_models() -> dict[str, metadata.EntryPoint]:
    """Installed plug-in models: ``{normalised name: entry point}`` of the group ``ddsd.models`` (not loaded)."""
    return {_normalise(ep.name): ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def _import_factory(spec: str) -> Factory:
    module_name, _, attr = spec.partition(":")
    module_name, attr = module_name.strip(), attr.strip()
    if not module_name or not attr:
        raise ModelSpecError(f"model spec {spec!r}: expected package.module:factory")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as exc:
        missing = getattr(exc, "name", None) or module_name
        if missing == module_name:
            what = f"module {module_name!r}"
        elif module_name.startswith(f"{missing}."):
            what = f"module {module_name!r} (no package {missing!r})"
        else:
            what = f"module {missing!r} (imported by {module_name!r})"
        raise ModelSpecError(
            f"model {spec!r}: cannot import {what}: {exc}. The module of a model spec must be importable: install "
            f"its package, or add the folder that holds it to PYTHONPATH") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelSpecError(f"model {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelSpecError(f"model {spec!r}: {attr!r} is not callable (a factory (num_classes, **kwargs) -> "
                             "nn.Module is expected)")
    return obj


def get_factory(spec: str) -> Factory:
    """The factory of a model spec: registered name, ``package.module:factory`` or ``ddsd.models`` plug-in.

    Raises :class:`ModelSpecError` (a ``ValueError``) listing the valid names for an unknown name, or saying which
    module could not be imported.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ModelSpecError(f"a model spec must be a non-empty string, got {spec!r}")
    if ":" in spec:
        return _import_factory(spec.strip())
    key = _normalise(spec)
    if key in _REGISTRY:
        return _REGISTRY[key]
    plugins = entry_point_models()
    if key in plugins:
        ep = plugins[key]
        try:
            return ep.load()
        except Exception as exc:
            raise ModelSpecError(f"model plug-in {spec!r} (entry point {ep.value!r} of group {ENTRY_POINT_GROUP!r}) "
                                 f"cannot be loaded: {type(exc).__name__}: {exc}") from None
    valid = ", ".join([*list_models(), *sorted(plugins)]) or "(none registered)"
    raise ModelSpecError(f"unknown model {spec!r}; valid models: {valid}; or give your own factory as "
                         "package.module:factory")


def create_model(name: str, num_classes: int, **kwargs: object) -> nn.Module:
    """Build the model of spec ``name`` (see the module docstring) for ``num_classes`` output channels.

    Returns a freshly initialised module mapping ``[B, 3, H, W]`` to logits ``[B, num_classes, h, w]`` (or an
    output :func:`ddsd.models.outputs.to_logits` understands). Raises ``ValueError`` for an unknown name (listing
    the valid names), a factory that cannot be imported, ``num_classes < 1``, and a factory that does not
    return an ``nn.Module``.
    """
    factory = get_factory(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    try:
        model = factory(num_classes, **kwargs)
    except TypeError as exc:  # most often a model.kwargs key the factory does not take
        raise ModelSpecError(f"model {name!r} with kwargs {kwargs!r}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ModelSpecError(f"model {name!r}: the factory returned {type(model).__name__}, not an nn.Module")
    return model
