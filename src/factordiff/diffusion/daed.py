"""DAED (Deja, Kuzina, Trzcinski & Tomczak 2022): a denoising autoencoder for the low-noise end.

The paper finds that a diffusion model's backward chain does two jobs: above a split point it
generates (the image's content appears), below it it only removes noise. DAED gives the second
job to a denoising autoencoder, one network that maps x_t to x_0 in a single pass for every t up
to the split, and keeps the diffusion model for the chain from T down to the split: denoising in
one step, generation in many. Its one-step denoiser carries over to images of another data set
at low noise, where a diffusion model's chain, which has learned what its own images look like,
pulls them toward its training data.

``DenoisingAutoencoder`` is a diffusers ``UNet2DModel`` of the denoiser's architecture with no
adapter (it denoises whatever the factors) that predicts x_0 from (x_t, t). ``DaedStep`` trains it
by the mean square error of x_0 at t uniform on [0, split T]. ``sampling.sample`` with ``finish``
runs the chain to the split and lets it finish.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn
from torch.nn import functional as F

from factordiff.config import DaedConfig, DenoiserConfig
from factordiff.diffusion.denoiser import build_unet
from factordiff.diffusion.objective import noise_schedule


class DenoisingAutoencoder(nn.Module):
    """x_t -> x_0 in one pass, for t up to ``split_t``.

    Args:
        unet: a ``UNet2DModel`` built by ``build_unet`` (its identity class embedding gets zeros).
        split_t: the largest time step it denoises (``split`` of the schedule).
    """

    def __init__(self, unet, split_t: int):
        super().__init__()
        self.unet, self.split_t = unet, int(split_t)
        self.emb_dim = unet.config.block_out_channels[0] * 4

    def forward(self, x_t: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        t = torch.as_tensor(t, device=x_t.device)
        t = t.expand(len(x_t)) if t.ndim == 0 else t
        return self.unet(x_t, t, class_labels=x_t.new_zeros(len(x_t), self.emb_dim)).sample


def split_timestep(daed: DaedConfig, dn: DenoiserConfig) -> int:
    """The last time step the DAE covers: ``split`` of the schedule."""
    return max(1, round(daed.split * dn.num_train_timesteps)) - 1


def build_daed(daed: DaedConfig, dn: DenoiserConfig, channels: int, size: int) -> DenoisingAutoencoder:
    """The run's DAE: the denoiser's UNet (or one of ``daed.block_out_channels``), no adapter."""
    widths = daed.block_out_channels or dn.block_out_channels
    unet = build_unet(replace(dn, block_out_channels=list(widths)), channels, size)
    return DenoisingAutoencoder(unet, split_timestep(daed, dn))


class DaedStep(nn.Module):
    """Training step: x_0 noised at t uniform on [0, split_t] (the denoiser's noise schedule), the
    mean square error of the DAE's x_0."""

    def __init__(self, dae: DenoisingAutoencoder, dn: DenoiserConfig):
        super().__init__()
        self.dae, self.schedule = dae, noise_schedule(dn)

    def forward(self, batch: dict[str, torch.Tensor], gen: torch.Generator) -> tuple[torch.Tensor, dict]:
        x0 = batch["x"]
        noise = torch.randn(x0.shape, generator=gen).to(x0.device)
        t = torch.randint(0, self.dae.split_t + 1, (len(x0),), generator=gen).to(x0.device)
        return F.mse_loss(self.dae(self.schedule.add_noise(x0, noise, t), t), x0), {}
