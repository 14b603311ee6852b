"""The one rule turning whatever a network returns into ``[B, K, H, W]`` logits.

A segmentation network may return

* a plain tensor ``[B, K, h, w]`` (the built-in models);
* a mapping with the main logits under ``"out"`` (torchvision style); other entries (``"aux"``, ...) are
  auxiliary heads: ignored, or added to the training loss with weight ``model.aux_weight``;
* an object with a ``.logits`` attribute (Hugging Face ``SemanticSegmenterOutput``);
* a tuple/list whose first element is one of the above (``return_dict=False`` style).

Logits at a lower resolution than the labels (SegFormer predicts at 1/4 of the input) are upsampled
bilinearly (``align_corners=False``) to the label size before the loss and the metrics, for students and
teachers alike: :func:`to_logits` with ``size=(H, W)``. Every consumer (trainer, teacher, evaluation,
prediction, export) calls this function, so a model obeys one rule everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LogitsModule", "aux_logits", "aux_loss", "resize_logits", "to_logits"]


def resize_logits(logits: torch.Tensor, size: Sequence[int] | None) -> torch.Tensor:
    """``[B, K, h, w]`` -> ``[B, K, *size]`` by bilinear interpolation (``align_corners=False``); unchanged when
    ``size`` is None or already equal."""
    if size is None or tuple(logits.shape[-2:]) == tuple(size):
        return logits
    # no int() on the sizes: under torch.jit.trace / ONNX export they stay symbolic (dynamic H, W)
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


def _main(out: object) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping):
        if "out" in out:
            return _main(out["out"])
        if "logits" in out:
            return _main(out["logits"])
        raise TypeError(f"the model returned a dict with keys {sorted(map(str, out))}: the logits must be under "
                        "'out' (or 'logits')")
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, (tuple, list)) and out:
        return _main(out[0])
    raise TypeError(f"the model returned {type(out).__name__}; expected a [B, K, H, W] tensor, a dict with 'out', "
                    "or an object with .logits")


def to_logits(out: object, size: Sequence[int] | None = None) -> torch.Tensor:
    """The main logits ``[B, K, h, w]`` of a model output (see the module docstring), resized to
    ``[B, K, *size]`` when ``size`` is given.

    Raises ``TypeError`` naming what the model returned when no logits can be found, and ``ValueError`` when
    they are not 4-D.
    """
    logits = _main(out)
    if logits.dim() != 4:
        raise ValueError(f"the model's logits have shape {tuple(logits.shape)}; expected [B, K, H, W]")
    return resize_logits(logits, size)


def aux_logits(out: object, size: Sequence[int] | None = None) -> list[torch.Tensor]:
    """The auxiliary heads of a dict output (every 4-D tensor value except ``"out"``/``"logits"``), resized
    to ``size``; ``[]`` for any other output."""
    if not isinstance(out, Mapping):
        return []
    return [resize_logits(v, size) for k, v in out.items()
            if k not in ("out", "logits") and isinstance(v, torch.Tensor) and v.dim() == 4]


def aux_loss(out: object, target: torch.Tensor, weight: float, ignore_index: int | None = 255) -> torch.Tensor | None:
    """``weight * sum_a CE(aux_a upsampled to target's size, target)`` over the auxiliary heads of a dict output
    (``target [B, H, W]`` class ids, ``ignore_index`` pixels skipped); ``None`` when ``weight == 0`` or there are
    no auxiliary heads (``model.aux_weight``)."""
    if not weight:
        return None
    heads = aux_logits(out, target.shape[-2:])
    if not heads:
        return None
    ignore = -100 if ignore_index is None else int(ignore_index)
    return weight * sum(F.cross_entropy(a.float(), target.long(), ignore_index=ignore) for a in heads)


class LogitsModule(nn.Module):
    """Wrap any segmentation network so that ``forward(x [B, C, H, W]) -> logits [B, K, H, W]`` (main head,
    upsampled to the input size): the plain contract of export and deployment."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.num_classes: int | None = getattr(net, "num_classes", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return to_logits(self.net(x), x.shape[-2:])
