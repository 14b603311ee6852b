"""A plain U-Net used both as a student (``unet_small``) and as the teacher (``unet_teacher``).

``depth`` is the number of resolution levels; level ``i`` has ``base * 2**i`` channels and there are
``depth - 1`` max-pool downsamplings. For ``base=16, depth=4``::

    enc0: double conv 3->16                 [B, 16,  H,    W   ]
    enc1: maxpool, double conv 16->32       [B, 32,  H/2,  W/2 ]
    enc2: maxpool, double conv 32->64       [B, 64,  H/4,  W/4 ]
    enc3: maxpool, double conv 64->128      [B, 128, H/8,  W/8 ]   (bottleneck)
    dec2: bilinear up to enc2's size, 1x1 128->64, concat enc2, double conv 128->64
    dec1, dec0 likewise; head 1x1 16->K    [B, K,   H,    W   ]

Arbitrary H, W are handled without padding: pooling uses ``ceil_mode=True`` (so a 1-pixel map stays
1 pixel) and every upsampling targets the exact spatial size of its skip connection
(``F.interpolate(size=skip.shape[-2:])``), so no Python control flow depends on tensor values and the
network scripts, compiles and exports to ONNX with dynamic batch/H/W.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._init import init_weights
from .registry import register_model
from .simple import ConvBNReLU

__all__ = ["UNet", "unet_small", "unet_teacher"]


class DoubleConv(nn.Sequential):
    """Two ``conv3x3-BN-ReLU``: ``[B, in_ch, H, W] -> [B, out_ch, H, W]``."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(ConvBNReLU(in_ch, out_ch), ConvBNReLU(out_ch, out_ch))


class Up(nn.Module):
    """Decoder step: bilinear upsample to the skip's size, 1x1 reduce, concat skip, double conv.

    ``x [B, in_ch, h, w]``, ``skip [B, out_ch, H, W]`` -> ``[B, out_ch, H, W]``.
    """

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(in_ch, out_ch, 1, bias=False)
        self.conv = DoubleConv(2 * out_ch, out_ch)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv(torch.cat([self.reduce(x), skip], dim=1))


class UNet(nn.Module):
    """U-Net segmentation network: ``[B, in_channels, H, W] -> [B, num_classes, H, W]`` logits.

    Args:
        num_classes: output logit channels ``K``.
        in_channels: input image channels.
        base: channels at full resolution; level ``i`` has ``base * 2**i``.
        depth: number of resolution levels (``depth - 1`` downsamplings), at least 2.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, base: int = 16, depth: int = 4) -> None:
        super().__init__()
        if depth < 2:
            raise ValueError(f"depth must be >= 2, got {depth}")
        if base < 1:
            raise ValueError(f"base must be >= 1, got {base}")
        self.num_classes = int(num_classes)
        chs = [base * 2**i for i in range(depth)]
        self.inc = DoubleConv(in_channels, chs[0])
        self.pool = nn.MaxPool2d(2, ceil_mode=True)
        self.down = nn.ModuleList([DoubleConv(chs[i - 1], chs[i]) for i in range(1, depth)])
        self.up = nn.ModuleList([Up(chs[i + 1], chs[i]) for i in reversed(range(depth - 1))])
        self.head = nn.Conv2d(chs[0], num_classes, 1)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[B, C_in, H, W]`` -> logits ``[B, K, H, W]`` (any H, W >= 1)."""
        f = self.inc(x)
        skips: list[torch.Tensor] = []
        for down in self.down:
            skips.append(f)
            f = down(self.pool(f))
        for i, up in enumerate(self.up):
            f = up(f, skips[len(skips) - 1 - i])
        return self.head(f)


@register_model("unet_small")
def unet_small(num_classes: int, **kwargs: object) -> UNet:
    """U-Net student, ``base=16, depth=4`` (about 0.45M parameters); kwargs override."""
    params: dict = {"base": 16, "depth": 4, **kwargs}
    return UNet(num_classes, **params)


@register_model("unet_teacher")
def unet_teacher(num_classes: int, **kwargs: object) -> UNet:
    """Wider U-Net teacher, ``base=48, depth=4`` (about 4.0M parameters); kwargs override."""
    params: dict = {"base": 48, "depth": 4, **kwargs}
    return UNet(num_classes, **params)
