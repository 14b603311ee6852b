"""``simple`` student: a few conv-BN-ReLU stages, a 1x1 classifier and bilinear upsampling.

Layout for ``widths=(16, 32, 64, 64)`` (strides relative to the input)::

    x [B, 3, H, W]
    stage1: conv3x3/s2 3->16, conv3x3 16->16            -> [B, 16, H/2, W/2]
    stage2: conv3x3/s2 16->32                           -> [B, 32, H/4, W/4]
    stage3: conv3x3/s2 32->64                           -> [B, 64, H/8, W/8]
    stage4: conv3x3 64->64, dilation 2                  -> [B, 64, H/8, W/8]
    context: x * sigmoid(1x1(global_avg_pool(x)))       -> [B, 64, H/8, W/8]
    classifier: 1x1 64->K, bilinear up to H/2 x W/2, + 1x1 16->K skip from stage1
    bilinear up to H x W (align_corners=False)          -> [B, K, H, W]

Every conv is followed by BatchNorm and ReLU. Sizes are never assumed to be multiples of anything:
strided convs use padding 1 (output ``ceil(n / 2)``, so 1-pixel inputs work) and upsampling always
targets the exact shape of the tensor it is combined with. There is no Python control flow on tensor
values, so the network scripts, traces, compiles and exports to ONNX with dynamic batch/H/W.
About 68k parameters for K=2.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._init import init_weights
from .registry import register_model

__all__ = ["ConvBNReLU", "SimpleStudent", "simple"]


class ConvBNReLU(nn.Sequential):
    """``Conv2d(k, stride, dilation, 'same'-style padding, no bias) -> BatchNorm2d -> ReLU``.

    ``[B, in_ch, H, W] -> [B, out_ch, ceil(H / stride), ceil(W / stride)]`` for ``kernel_size=3``.
    """

    def __init__(
        self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1, dilation: int = 1
    ) -> None:
        padding = dilation * (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding, dilation=dilation, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )


class GlobalContext(nn.Module):
    """Channel gating from global context: ``x * sigmoid(W @ mean_hw(x) + b)``; ``[B, C, H, W]`` in/out.

    No BatchNorm on the pooled ``[B, C, 1, 1]`` vector, so batch-1 training works.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Conv2d(channels, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc(self.pool(x)))


class SimpleStudent(nn.Module):
    """Tiny fully convolutional segmentation student: ``[B, in_channels, H, W] -> [B, num_classes, H, W]``.

    Args:
        num_classes: number of output logit channels ``K``.
        in_channels: input image channels.
        widths: channels of the four stages; stages 1-3 downsample by 2 (total stride 8), stage 4 is
            dilated.
        dilation: dilation of the stage-4 conv (a cheap enlargement of the receptive field).
        context: add the global-context channel gate after stage 4.
        skip: add a 1x1 classifier on the stride-2 stage-1 features to the upsampled coarse logits
            (sharper boundaries for ~16*K extra parameters).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        widths: Sequence[int] = (16, 32, 64, 64),
        dilation: int = 2,
        context: bool = True,
        skip: bool = True,
    ) -> None:
        super().__init__()
        if len(widths) != 4:
            raise ValueError(f"widths must have 4 entries, got {tuple(widths)!r}")
        w1, w2, w3, w4 = (int(w) for w in widths)
        self.num_classes = int(num_classes)
        self.stage1 = nn.Sequential(ConvBNReLU(in_channels, w1, stride=2), ConvBNReLU(w1, w1))
        self.stage2 = ConvBNReLU(w1, w2, stride=2)
        self.stage3 = ConvBNReLU(w2, w3, stride=2)
        self.stage4 = ConvBNReLU(w3, w4, dilation=dilation)
        self.context: nn.Module = GlobalContext(w4) if context else nn.Identity()
        self.classifier = nn.Conv2d(w4, num_classes, 1)
        self.use_skip = bool(skip)
        self.skip_classifier: nn.Module = nn.Conv2d(w1, num_classes, 1) if skip else nn.Identity()
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[B, C_in, H, W]`` float -> logits ``[B, K, H, W]``."""
        f1 = self.stage1(x)  # [B, w1, H/2, W/2]
        f = self.stage4(self.stage3(self.stage2(f1)))  # [B, w4, H/8, W/8]
        logits = self.classifier(self.context(f))  # [B, K, H/8, W/8]
        if self.use_skip:
            logits = F.interpolate(logits, size=f1.shape[-2:], mode="bilinear", align_corners=False)
            logits = logits + self.skip_classifier(f1)  # [B, K, H/2, W/2]
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


@register_model("simple")
def simple(num_classes: int, **kwargs: object) -> SimpleStudent:
    """The ``simple`` student (about 68k parameters for K=2); kwargs go to :class:`SimpleStudent`."""
    return SimpleStudent(num_classes, **kwargs)  # type: ignore[arg-type]
