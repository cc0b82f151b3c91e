"""A small convolutional image encoder shared by the distiller, the oracle and feature extractors."""

from __future__ import annotations

import torch
from torch import nn


def conv_block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1), nn.GroupNorm(min(8, c_out), c_out), nn.SiLU())


class ConvEncoder(nn.Module):
    """Image (B, C, S, S) in [-1, 1] -> feature vector (B, out_dim).

    Stride-2 convolutions halve the size while it is even and above 7 (down to 4x4 for a power of
    two, 6x6 for 48; channels double from ``width``, capped at ``8 * width``); the last map is
    flattened, so position and size information survive.
    """

    def __init__(self, in_channels: int, size: int, width: int = 32, out_dim: int = 256):
        super().__init__()
        levels, side = 0, size
        while side > 7 and side % 2 == 0:
            levels, side = levels + 1, side // 2
        if side < 3:
            raise ValueError(f"image size must be at least 12, got {size}")
        chans = [min(width * 2**i, 8 * width) for i in range(levels + 1)]
        layers = [conv_block(in_channels, chans[0], 1)]
        for a, b in zip(chans[:-1], chans[1:]):
            layers += [conv_block(a, b, 2), conv_block(b, b, 1)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(chans[-1] * side * side, out_dim), nn.SiLU())
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
