"""The one denoiser interface: ``denoiser(x, t, cond) -> prediction``.

``Denoiser`` wraps a diffusers ``UNet2DModel`` (pixel or latent space) and an optional adapter
that turns a ``Condition`` into the vector the UNet adds to its time embedding. Guidance and
samplers call nothing else.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DModel
from torch import nn

from factordiff.config import DenoiserConfig
from factordiff.diffusion.adapters import TimeEmbeddingAdapter, TokenAdapter
from factordiff.diffusion.condition import Condition, check_condition


def build_unet(cfg: DenoiserConfig, channels: int, size: int) -> UNet2DModel:
    """A UNet2DModel with scale-shift time conditioning and an identity class-embedding input."""
    levels = len(cfg.block_out_channels)
    down = ["DownBlock2D"] * levels
    up = ["UpBlock2D"] * levels
    if cfg.attention:
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    return UNet2DModel(
        sample_size=size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        resnet_time_scale_shift="scale_shift",
        class_embed_type="identity",
        norm_num_groups=min(32, min(cfg.block_out_channels)),
    )


class Denoiser(nn.Module):
    """UNet plus adapter. ``forward(x, t, cond)`` predicts v (or epsilon) for noisy input ``x``.

    Args:
        unet: the base network; with ``class_embed_type="identity"`` it adds ``class_labels`` to its
            time embedding, and the base model is the UNet called with zeros there.
        adapter: turns a Condition into that vector (``TimeEmbeddingAdapter``), or into tokens for
            the cross-attention layers it adds to the UNet (``TokenAdapter``); None for an
            unconditional denoiser.
    """

    def __init__(self, unet: UNet2DModel, adapter: TimeEmbeddingAdapter | None = None):
        super().__init__()
        self.unet, self.adapter = unet, adapter
        self.head = None  # a ClassifierHead (diffusion/head.py) when the run asks for one
        self.emb_dim = unet.config.block_out_channels[0] * 4
        if isinstance(adapter, TokenAdapter):
            adapter.attach(unet)

    def add_head(self, head: nn.Module) -> None:
        """Attach a ``ClassifierHead`` reading this UNet's features (after any token layers)."""
        self.head = head
        head.attach(self.unet)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Condition | None = None) -> torch.Tensor:
        check_condition(self.adapter is not None, cond, len(x))
        if t.ndim == 0:
            t = t.expand(len(x))
        emb = self.condition_embedding(x, cond)
        if isinstance(self.adapter, TokenAdapter):
            with self.adapter.tokens(cond):
                return self.unet(x, t, class_labels=emb).sample
        return self.unet(x, t, class_labels=emb).sample

    def condition_embedding(self, x: torch.Tensor, cond: Condition | None) -> torch.Tensor:
        """The vector added to the time embedding: the embed adapter's, zeros otherwise (tokens
        enter through cross-attention instead)."""
        if cond is None or isinstance(self.adapter, TokenAdapter):
            return x.new_zeros(len(x), self.emb_dim)
        return self.adapter(cond)

    def base_parameters(self) -> list[nn.Parameter]:
        return list(self.unet.parameters())

    def adapter_parameters(self) -> list[nn.Parameter]:
        return [] if self.adapter is None else list(self.adapter.parameters())
