"""The denoiser's training objective: v-prediction (Salimans & Ho 2022) or epsilon-prediction
with diffusers' noise schedule, and per-factor condition dropout for classifier-free guidance."""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler
from torch import nn
from torch.nn import functional as F

from factordiff.config import DenoiserConfig
from factordiff.diffusion.condition import Condition
from factordiff.diffusion.denoiser import Denoiser


def noise_schedule(cfg: DenoiserConfig) -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule, prediction_type=cfg.prediction_type)


def drop_factors(present: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """Each factor independently absent with probability ``p``; with probability ``p`` all are absent."""
    keep = torch.rand(present.shape, generator=gen) >= p
    none = torch.rand(present.shape[0], 1, generator=gen) < p
    return present & keep.to(present.device) & ~none.to(present.device)


class DiffusionStep(nn.Module):
    """Training step: noise x_0 at a uniform random t and regress the target (v or epsilon)."""

    def __init__(self, denoiser: Denoiser, cfg: DenoiserConfig):
        super().__init__()
        self.denoiser, self.cfg = denoiser, cfg
        self.schedule = noise_schedule(cfg)

    def forward(self, batch: dict[str, torch.Tensor], gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        x0, codes = batch["x"], batch.get("codes")
        noise = torch.randn(x0.shape, generator=gen).to(x0.device)
        t = torch.randint(0, self.cfg.num_train_timesteps, (len(x0),), generator=gen).to(x0.device)
        x_t = self.schedule.add_noise(x0, noise, t)
        target = self.schedule.get_velocity(x0, noise, t) if self.cfg.prediction_type == "v_prediction" else noise
        cond = None
        if codes is not None:
            full = Condition.full(codes)
            cond = Condition(codes, drop_factors(full.present, self.cfg.cond_dropout, gen))
        loss = F.mse_loss(self.denoiser(x_t, t, cond), target)
        return loss, {}
