"""DDIM sampling and DDIM inversion (Song et al. 2021, eq. 12) with diffusers' schedulers.

``ddim_sample`` runs x_T -> x_0 and ``ddim_invert`` runs x_0 -> x_T with the deterministic DDIM
update; both use "trailing" timestep spacing so the chain reaches t = T - 1 exactly, and the two
are exact inverses up to the one-step approximation of inversion.
"""

from __future__ import annotations

import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler

from factordiff.config import DenoiserConfig
from factordiff.diffusion.condition import Condition
from factordiff.diffusion.guidance import Guidance, guided_prediction


def scheduler_config(cfg: DenoiserConfig) -> dict:
    return dict(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule=cfg.beta_schedule,
        prediction_type=cfg.prediction_type,
        clip_sample=False,
        set_alpha_to_one=True,
        timestep_spacing="trailing",
    )


def ddim_sample(denoiser, x_T: torch.Tensor, cond: Condition | None, cfg: DenoiserConfig, steps: int = 50, guidance: Guidance | None = None) -> torch.Tensor:
    """Deterministic DDIM from noise ``x_T`` to a sample, with optional per-factor guidance."""
    sched = DDIMScheduler(**scheduler_config(cfg))
    sched.set_timesteps(steps, device=x_T.device)
    x = x_T
    for t in sched.timesteps:
        pred = guided_prediction(denoiser, x, t, cond, guidance) if cond is not None else denoiser(x, t)
        x = sched.step(pred, t, x).prev_sample
    return x


def ddim_invert(denoiser, x_0: torch.Tensor, cond: Condition | None, cfg: DenoiserConfig, steps: int = 50) -> torch.Tensor:
    """DDIM inversion: the x_T from which ``ddim_sample`` (same condition, no guidance) returns ``x_0``."""
    sched = DDIMInverseScheduler(**scheduler_config(cfg))
    sched.set_timesteps(steps, device=x_0.device)
    x = x_0
    for t in sched.timesteps:
        pred = denoiser(x, t, cond) if cond is not None else denoiser(x, t)
        x = sched.step(pred, t, x).prev_sample
    return x
