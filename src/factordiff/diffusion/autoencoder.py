"""The latent autoencoder: a diffusers ``AutoencoderKL`` with small widths, trained from scratch.

Its loss keeps what the factors need: pixel MSE and L1, a tiny KL term, and the distance between
the frozen distiller's codes of the image and of its reconstruction (a perceptual loss whose
"perception" is the factors themselves).
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL
from torch import nn
from torch.nn import functional as F

from factordiff.config import AutoencoderConfig


def build_autoencoder(cfg: AutoencoderConfig, channels: int, size: int) -> AutoencoderKL:
    levels = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=channels,
        out_channels=channels,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels,
        norm_num_groups=min(32, min(cfg.block_out_channels)),
        sample_size=size,
        mid_block_add_attention=False,
    )


def latent_size(cfg: AutoencoderConfig, size: int) -> int:
    return size // 2 ** (len(cfg.block_out_channels) - 1)


class AutoencoderStep(nn.Module):
    """Training step of the autoencoder: reconstruction + KL + distiller-code loss."""

    def __init__(self, vae: AutoencoderKL, distiller: nn.Module | None, cfg: AutoencoderConfig):
        super().__init__()
        self.vae, self.cfg = vae, cfg
        self._distiller = [distiller]  # a list hides it from state_dict and .parameters(): frozen, not saved here

    def forward(self, batch: dict[str, torch.Tensor], gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        x = batch["images"].permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        post = self.vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen).to(x.device)
        x_hat = self.vae.decode(z).sample
        mse, l1 = F.mse_loss(x_hat, x), F.l1_loss(x_hat, x)
        kl = post.kl().mean() / x[0].numel()
        loss = mse + l1 + self.cfg.kl_weight * kl
        logs = {"mse": mse.item()}
        distiller = self._distiller[0]
        if distiller is not None and self.cfg.feature_weight > 0:
            feat = F.mse_loss(distiller(x_hat), distiller(x).detach())
            loss = loss + self.cfg.feature_weight * feat
            logs["codes"] = feat.item()
        return loss, logs
