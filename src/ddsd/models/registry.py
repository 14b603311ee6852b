"""A small name -> factory registry for segmentation networks.

Every registered factory is called as ``factory(num_classes, **kwargs)`` and must return an
``nn.Module`` that maps ``[B, C_in, H, W]`` images to ``[B, num_classes, H, W]`` logits.

Example::

    @register_model("my_net")
    def my_net(num_classes: int, **kwargs) -> nn.Module:
        return MyNet(num_classes, **kwargs)

    net = create_model("my_net", num_classes=11)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from torch import nn

__all__ = ["create_model", "list_models", "register_model"]

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


def create_model(name: str, num_classes: int, **kwargs: object) -> nn.Module:
    """Build the registered model ``name`` for ``num_classes`` output channels.

    Returns a freshly initialised module mapping ``[B, 3, H, W]`` to ``[B, num_classes, H, W]``.
    Raises ``ValueError`` (listing the valid names) for an unknown name, and for ``num_classes < 1``.
    """
    key = _normalise(name) if isinstance(name, str) else ""
    factory = _REGISTRY.get(key)
    if factory is None:
        valid = ", ".join(list_models()) or "(none registered)"
        raise ValueError(f"unknown model {name!r}; valid models: {valid}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    return factory(num_classes, **kwargs)
