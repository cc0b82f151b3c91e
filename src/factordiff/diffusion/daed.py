"""DAED (Deja, Kuzina, Trzcinski & Tomczak 2022): a denoising autoencoder for the low-noise end.

The paper finds that a diffusion model's backward chain does two jobs: above a split point it
generates (the image's content appears), below it it only removes noise. DAED gives the second
job to a denoising autoencoder, one network that maps x_t to x_0 in a single pass for every t up
to the split, and keeps the diffusion model for the chain from T down to the split: denoising in
one step, generation in many. Its one-step denoiser carries over to images of another data set
at low noise, where a diffusion model's chain, which has learned what its own images look like,
pulls them toward its training data.

``DenoisingAutoencoder`` is a diffusers ``UNet2DModel`` of the denoiser's architecture with no
adapter (it denoises whatever the factors) that predicts x_0 from (x_t, t) in one of two forms
(``daed.parameterization``). ``v`` (the default): the network's output is the velocity of the
diffusion model's own objective, x_0 = sqrt(alpha_bar) x_t - sqrt(1 - alpha_bar) F(x_t, t), so
at low noise the pass is the identity plus a correction scaled by the noise. ``edm``: Karras et
al.'s (EDM, 2022) preconditioning, with x~ = x_t / sqrt(alpha_bar_t) = x_0 + sigma * eps,
x_0 = c_skip x~ + c_out F(c_in x~, t), also the identity plus a learned correction at low noise
but with the input scaled by c_in (about 2 there). Both carry over to another data set where a
network asked for x_0 itself does not (MAE 0.21 on real crops from a DAE trained on the Shapes
replica, where the noised input's is 0.06); ``v`` carries over further: trained on the replica
and applied to real BBBC021 crops at 0.1 of the schedule, MAE 0.031 against 0.045 for ``edm``
(0.031 for the diffusion model's 10-step chain; 0.032 against 0.029 on a second seed), and 0.032
against 0.039 the other way (0.040),
while denoising its own data set better too (0.017 / 0.020 against 0.020 / 0.021;
``python benchmarks/joint.py --daed``). ``DaedStep`` trains either by the mean square error of x_0
at t uniform on [0, split T], weighted by 1 / c_out^2 as EDM weights it (for ``edm``, the error
of F). ``sampling.sample`` with ``finish`` runs the chain to the split and lets it finish.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from factordiff.config import DaedConfig, DenoiserConfig
from factordiff.diffusion.denoiser import build_unet
from factordiff.diffusion.objective import noise_schedule


class DenoisingAutoencoder(nn.Module):
    """x_t -> x_0 in one pass, for t up to ``split_t``.

    Args:
        unet: a ``UNet2DModel`` built by ``build_unet`` (its identity class embedding gets zeros).
        split_t: the largest time step it denoises (``split`` of the schedule).
        alphas_cumprod: the denoiser's noise schedule.
        parameterization: ``v`` or ``edm`` (module docstring).
    """

    SIGMA_DATA = 0.5  # EDM's data scale for images on [-1, 1]

    def __init__(self, unet, split_t: int, alphas_cumprod: torch.Tensor, parameterization: str = "v"):
        super().__init__()
        if parameterization not in ("v", "edm"):
            raise ValueError(f"parameterization: expected v or edm, got {parameterization!r}")
        self.unet, self.split_t, self.parameterization = unet, int(split_t), parameterization
        self.emb_dim = unet.config.block_out_channels[0] * 4
        self.register_buffer("alphas_cumprod", alphas_cumprod.float().clone(), persistent=False)

    def scalings(self, t: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(1 / sqrt(alpha_bar), c_skip, c_out, c_in) at ``t``, each (B, 1, 1, 1)."""
        a = self.alphas_cumprod.to(t.device)[t.long()].view(-1, 1, 1, 1)
        var, sd2 = (1 - a) / a, self.SIGMA_DATA**2
        norm = (var + sd2).rsqrt()
        return a.rsqrt(), sd2 * norm**2, var.sqrt() * self.SIGMA_DATA * norm, norm

    def forward(self, x_t: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        t = torch.as_tensor(t, device=x_t.device)
        t = t.expand(len(x_t)) if t.ndim == 0 else t
        zeros = x_t.new_zeros(len(x_t), self.emb_dim)
        if self.parameterization == "v":
            a = self.alphas_cumprod.to(t.device)[t.long()].view(-1, 1, 1, 1)
            return a.sqrt() * x_t - (1 - a).sqrt() * self.unet(x_t, t, class_labels=zeros).sample
        scale, c_skip, c_out, c_in = self.scalings(t)
        x = x_t * scale
        return c_skip * x + c_out * self.unet(c_in * x, t, class_labels=zeros).sample


def split_timestep(daed: DaedConfig, dn: DenoiserConfig) -> int:
    """The last time step the DAE covers: ``split`` of the schedule."""
    return max(1, round(daed.split * dn.num_train_timesteps)) - 1


def build_daed(daed: DaedConfig, dn: DenoiserConfig, channels: int, size: int) -> DenoisingAutoencoder:
    """The run's DAE: the denoiser's UNet (or one of ``daed.block_out_channels``), no adapter."""
    widths = daed.block_out_channels or dn.block_out_channels
    unet = build_unet(replace(dn, block_out_channels=list(widths)), channels, size)
    return DenoisingAutoencoder(
        unet, split_timestep(daed, dn), noise_schedule(dn).alphas_cumprod, daed.parameterization
    )


class DaedStep(nn.Module):
    """Training step: x_0 noised at t uniform on [0, split_t] (the denoiser's noise schedule), the
    mean square error of the DAE's x_0 over c_out^2 (EDM's weighting: every t counts alike)."""

    def __init__(self, dae: DenoisingAutoencoder, dn: DenoiserConfig):
        super().__init__()
        self.dae, self.schedule = dae, noise_schedule(dn)

    def forward(self, batch: dict[str, torch.Tensor], gen: torch.Generator) -> tuple[torch.Tensor, dict]:
        x0 = batch["x"]
        noise = torch.randn(x0.shape, generator=gen).to(x0.device)
        t = torch.randint(0, self.dae.split_t + 1, (len(x0),), generator=gen).to(x0.device)
        c_out = self.dae.scalings(t)[2]
        err = (self.dae(self.schedule.add_noise(x0, noise, t), t) - x0) / c_out
        return err.square().mean(), {}
