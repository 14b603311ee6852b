"""Weight initialisation shared by the built-in networks."""

from __future__ import annotations

from torch import nn


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal (fan_out, ReLU) for convolutions, zero conv biases; BatchNorm weight 1, bias 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
