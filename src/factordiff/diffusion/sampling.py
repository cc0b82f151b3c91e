"""Deterministic sampling and inversion with diffusers' schedulers: DDIM (Song et al. 2021, eq. 12)
or DPM-Solver++(2M) (Lu et al. 2022), chosen by ``DenoiserConfig.sampler``.

``sample`` runs x_T -> x_0 and ``invert`` runs x_0 -> x_T with the same solver (its inverse
scheduler); both use "trailing" timestep spacing so the chain reaches t = T - 1 exactly, and the
two are inverses up to the one-step approximation of inversion. ``ddim_sample`` and
``ddim_invert`` are the DDIM case whatever the config says.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler, DPMSolverMultistepInverseScheduler, DPMSolverMultistepScheduler

from factordiff.config import DenoiserConfig
from factordiff.diffusion.condition import Condition
from factordiff.diffusion.guidance import Guidance, guided_prediction

SAMPLERS = {"ddim": (DDIMScheduler, DDIMInverseScheduler), "dpmsolver++": (DPMSolverMultistepScheduler, DPMSolverMultistepInverseScheduler)}


def scheduler_config(cfg: DenoiserConfig) -> dict:
    common = dict(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule, prediction_type=cfg.prediction_type, timestep_spacing="trailing")
    if cfg.sampler == "ddim":
        return {**common, "clip_sample": False, "set_alpha_to_one": True}
    return {**common, "algorithm_type": "dpmsolver++", "solver_order": 2}


def scheduler(cfg: DenoiserConfig, inverse: bool = False):
    if cfg.sampler not in SAMPLERS:
        raise ValueError(f"denoiser.sampler: expected one of {sorted(SAMPLERS)}, got {cfg.sampler!r}")
    return SAMPLERS[cfg.sampler][inverse](**scheduler_config(cfg))


def sample(denoiser, x_T: torch.Tensor, cond: Condition | None, cfg: DenoiserConfig, steps: int = 50, guidance: Guidance | None = None) -> torch.Tensor:
    """From noise ``x_T`` to a sample in ``steps`` network evaluations (each guided one batches its
    conditions into one forward pass), with optional per-factor guidance."""
    sched = scheduler(cfg)
    sched.set_timesteps(steps, device=x_T.device)
    x = x_T
    for t in sched.timesteps:
        pred = guided_prediction(denoiser, x, t, cond, guidance) if cond is not None else denoiser(x, t)
        x = sched.step(pred, t, x).prev_sample
    return x


def invert(denoiser, x_0: torch.Tensor, cond: Condition | None, cfg: DenoiserConfig, steps: int = 50) -> torch.Tensor:
    """The x_T from which ``sample`` (same condition and solver, no guidance) returns ``x_0``."""
    sched = scheduler(cfg, inverse=True)
    sched.set_timesteps(steps, device=x_0.device)
    x = x_0
    for t in sched.timesteps:
        pred = denoiser(x, t, cond) if cond is not None else denoiser(x, t)
        x = sched.step(pred, t, x).prev_sample
    return x


def ddim_sample(denoiser, x_T: torch.Tensor, cond: Condition | None, cfg: DenoiserConfig, steps: int = 50, guidance: Guidance | None = None) -> torch.Tensor:
    return sample(denoiser, x_T, cond, replace(cfg, sampler="ddim"), steps, guidance)


def ddim_invert(denoiser, x_0: torch.Tensor, cond: Condition | None, cfg: DenoiserConfig, steps: int = 50) -> torch.Tensor:
    return invert(denoiser, x_0, cond, replace(cfg, sampler="ddim"), steps)
