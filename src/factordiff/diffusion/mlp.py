"""An MLP denoiser for vectors (profiles), behind the same ``denoiser(x, t, cond)`` interface as
the UNet: diffusers' sinusoidal ``Timesteps`` and ``TimestepEmbedding`` give the time embedding,
the code adapter adds to it, and every residual block is modulated by it (scale and shift of a
parameter-free LayerNorm, as the UNet's ``resnet_time_scale_shift="scale_shift"``).
"""

from __future__ import annotations

import torch
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import nn

from factordiff.diffusion.adapters import TimeEmbeddingAdapter
from factordiff.diffusion.condition import Condition, check_condition


def conditioned_time(
    module: nn.Module, x: torch.Tensor, t: torch.Tensor, cond: Condition | None
) -> torch.Tensor:
    """The time embedding of ``module`` (its ``time_proj`` and ``time_embed``) for ``x``'s rows, plus
    its ``adapter``'s vector of ``cond`` (checked against the adapter: None for an unconditioned one)."""
    check_condition(module.adapter is not None, cond, len(x))
    if t.ndim == 0:
        t = t.expand(len(x))
    emb = module.time_embed(module.time_proj(t).to(x.dtype))
    return emb if cond is None else emb + module.adapter(cond)


class ResidualBlock(nn.Module):
    def __init__(self, width: int, emb_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.film = nn.Linear(emb_dim, 2 * width)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.SiLU(), nn.Linear(2 * width, width))

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(emb).chunk(2, dim=1)
        return h + self.mlp(self.norm(h) * (1 + scale) + shift)


class MLPDenoiser(nn.Module):
    """Predicts v (or epsilon) for noisy vectors ``x`` (B, F).

    Args:
        features: F.
        width: hidden width.
        depth: residual blocks.
        adapter: Condition -> (B, width) added to the time embedding; None: unconditional.
    """

    def __init__(
        self, features: int, width: int = 512, depth: int = 3, adapter: TimeEmbeddingAdapter | None = None
    ):
        super().__init__()
        self.emb_dim = width
        self.time_proj = Timesteps(width, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(width, self.emb_dim)
        self.inp = nn.Linear(features, width)
        self.blocks = nn.ModuleList(ResidualBlock(width, self.emb_dim) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, features))
        self.adapter = adapter

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Condition | None = None) -> torch.Tensor:
        emb = conditioned_time(self, x, t, cond)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h)
