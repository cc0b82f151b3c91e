"""A small convolutional image encoder shared by the distiller, the oracle and feature extractors."""

from __future__ import annotations

import math

import torch
from torch import nn


def conv_block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1), nn.GroupNorm(min(8, c_out), c_out), nn.SiLU())


class ConvEncoder(nn.Module):
    """Image (B, C, S, S) in [-1, 1] -> feature vector (B, out_dim).

    Stride-2 convolutions halve the size down to 4x4 (channels double from ``width``, capped at
    ``8 * width``); the 4x4 map is flattened, so position and size information survive.
    """

    def __init__(self, in_channels: int, size: int, width: int = 32, out_dim: int = 256):
        super().__init__()
        levels = int(math.log2(size // 4))
        if 4 * 2**levels != size:
            raise ValueError(f"image size must be 4 * 2**k, got {size}")
        chans = [min(width * 2**i, 8 * width) for i in range(levels + 1)]
        layers = [conv_block(in_channels, chans[0], 1)]
        for a, b in zip(chans[:-1], chans[1:]):
            layers += [conv_block(a, b, 2), conv_block(b, b, 1)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(chans[-1] * 16, out_dim), nn.SiLU())
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
