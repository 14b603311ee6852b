"""A tiny fully convolutional network that predicts at half resolution, with every output convention."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Output:
    """Hugging Face style: an object with ``.logits``."""

    logits: torch.Tensor


class TinyFCN(nn.Module):
    """``[B, 3, H, W]`` -> logits ``[B, K, ceil(H/2), ceil(W/2)]`` as a tensor, ``{"out", "aux"}`` or ``.logits``."""

    def __init__(self, num_classes: int, width: int = 8, output: str = "dict") -> None:
        super().__init__()
        self.output = output
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True),
        )
        self.head = nn.Conv2d(width, num_classes, 1)
        self.aux = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: torch.Tensor):
        f = self.body(x)
        out = self.head(f)
        if self.output == "dict":
            return {"out": out, "aux": self.aux(f)}
        if self.output == "hf":
            return Output(out)
        return out


def tiny_fcn(num_classes: int, **kwargs) -> nn.Module:
    """The factory: ``(num_classes, **model.kwargs) -> nn.Module``."""
    return TinyFCN(num_classes, **kwargs)
