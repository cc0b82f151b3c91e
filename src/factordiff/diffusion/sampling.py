"""Deterministic sampling and inversion with diffusers' schedulers: DDIM (Song et al. 2021, eq. 12)
or DPM-Solver++(2M) (Lu et al. 2022), chosen by ``DenoiserConfig.sampler``.

``sample`` runs x_T -> x_0 and ``invert`` runs x_0 -> x_T with the same solver (its inverse
scheduler); both use "trailing" timestep spacing so the chain reaches t = T - 1 exactly, and the
two are inverses up to the one-step approximation of inversion. With ``strength`` s < 1 both run
only the low-noise part of the schedule, between t = 0 and t = s T (SDEdit's strength, as
diffusers' image-to-image pipelines name it): ``steps`` solver steps over that part, at the step
size of a whole chain of steps / s steps. An edit that inverts and regenerates part-way keeps
more of its source for the same passes (``EvaluateConfig.edit_strength``, ``benchmarks/nfe.py``).
``ddim_sample`` and ``ddim_invert`` are the DDIM case whatever the config says.

``ddpm_invert`` is the other way to invert, for edits: the edit-friendly DDPM inversion
(Huberman-Spiegelglas, Kulikov and Michaeli, CVPR 2024). It draws each x_t of the chain from
q(x_t | x_0) independently and keeps, per step, the noise map z_t that takes the DDPM posterior
step (DDIM with eta 1) from x_t exactly to the next x_t; ``sample`` with those maps retraces the
chain, so the source comes back exactly (no one-step approximation, whatever the step count), and
under a new condition the maps keep the source's structure. It costs one network pass per step,
as DDIM's inversion does, but stays faithful at 5 steps where DDIM's drifts (``benchmarks/nfe.py``).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import replace

import numpy as np
import torch
from diffusers import (
    DDIMInverseScheduler,
    DDIMScheduler,
    DPMSolverMultistepInverseScheduler,
    DPMSolverMultistepScheduler,
)

from factordiff.config import DenoiserConfig
from factordiff.diffusion.condition import Condition
from factordiff.diffusion.guidance import Guidance, guided_prediction
from factordiff.diffusion.head import ClassifierGuidance, classifier_gradient, guided_classifier

SAMPLERS = {
    "ddim": (DDIMScheduler, DDIMInverseScheduler),
    "dpmsolver++": (DPMSolverMultistepScheduler, DPMSolverMultistepInverseScheduler),
}


def scheduler_config(cfg: DenoiserConfig) -> dict:
    common = dict(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule=cfg.beta_schedule,
        prediction_type=cfg.prediction_type,
        timestep_spacing="trailing",
    )
    if cfg.sampler == "ddim":
        return {**common, "clip_sample": False, "set_alpha_to_one": True}
    return {**common, "algorithm_type": "dpmsolver++", "solver_order": 2}


def scheduler(cfg: DenoiserConfig, inverse: bool = False):
    if cfg.sampler not in SAMPLERS:
        raise ValueError(f"denoiser.sampler: expected one of {sorted(SAMPLERS)}, got {cfg.sampler!r}")
    return SAMPLERS[cfg.sampler][inverse](**scheduler_config(cfg))


def timesteps(cfg: DenoiserConfig, steps: int, strength: float = 1.0, inverse: bool = False, device=None):
    """The scheduler and the ``steps`` timesteps it runs: the whole chain (``strength`` 1), or the
    part between t = 0 and t = strength T of a chain of round(steps / strength) steps."""
    if not 0 < strength <= 1:
        raise ValueError(f"strength: expected a number in (0, 1], got {strength!r}")
    sched = scheduler(cfg, inverse)
    total = max(steps, round(steps / strength))
    sched.set_timesteps(total, device=device)
    if inverse:
        return sched, sched.timesteps[:steps]
    if total > steps and hasattr(
        sched, "set_begin_index"
    ):  # multistep solvers count their steps; DDIM does not
        sched.set_begin_index(total - steps)
    return sched, sched.timesteps[total - steps :]


def _precision(cfg: DenoiserConfig, x: torch.Tensor):
    """bf16 autocast around the denoiser's passes when ``cfg.inference_precision`` asks for it."""
    return (
        torch.autocast(x.device.type, dtype=torch.bfloat16)
        if cfg.inference_precision == "bf16"
        else nullcontext()
    )


def sample(
    denoiser,
    x_T: torch.Tensor,
    cond: Condition | None,
    cfg: DenoiserConfig,
    steps: int = 50,
    guidance: Guidance | None = None,
    strength: float = 1.0,
    classifier: ClassifierGuidance | None = None,
    finish=None,
    noise_maps: torch.Tensor | None = None,
) -> torch.Tensor:
    """From noise ``x_T`` (or, with ``strength`` < 1, from the partly noised x_t that ``invert``
    returns at that strength) to a sample in ``steps`` network evaluations (each guided one batches
    its conditions into one forward pass), with optional per-factor guidance, and with
    ``classifier`` the gradient of the denoiser's classification head (one more pass with its
    backward per step: ``diffusion/head.py``). ``finish``: a DAED run's denoising autoencoder
    (``diffusion/daed.py``): the steps then end at its split (``daed_chain``) and it maps the x_t
    there to x_0 in one more pass; a chain that starts at or below the split goes to it at once.
    ``noise_maps`` (N, steps, ...): a ``ddpm_invert``'s maps (with its x_t as ``x_T``); each step is
    then the DDPM posterior step with its map as the noise, down to t = 0 (no ``finish``)."""
    if noise_maps is not None:
        if finish is not None:
            raise ValueError("noise maps retrace a chain to t = 0; a DAED finish does not apply")
        cfg = replace(cfg, sampler="ddim")
    if finish is not None:
        sched, ts, landing = daed_chain(cfg, steps, strength, finish.split_t, x_T.device)
        if not len(ts):
            return finish(x_T, landing)
    else:
        sched, ts = timesteps(cfg, steps, strength, device=x_T.device)
    x = x_T
    for i, t in enumerate(ts):
        with _precision(cfg, x):
            pred = guided_prediction(denoiser, x, t, cond, guidance) if cond is not None else denoiser(x, t)
        if classifier is not None and classifier.weight:
            grad = classifier_gradient(denoiser, x, t, classifier)
            pred = guided_classifier(
                pred.float(), grad, t, sched.alphas_cumprod, classifier.weight, cfg.prediction_type
            )
        if noise_maps is None:
            x = sched.step(pred.float(), t, x).prev_sample
        else:
            mean, std = posterior_step(sched, pred.float(), t, x)
            x = mean + std * noise_maps[:, i]
    return x if finish is None else finish(x, landing)


def daed_chain(cfg: DenoiserConfig, steps: int, strength: float, split_t: int, device=None):
    """(scheduler, the ``steps`` time steps it runs, the time step it lands on) for a DAED chain:
    from the first time step of ``timesteps(cfg, steps, strength)`` (where ``invert`` and
    ``noise_to`` put x_t) to ``split_t``, evenly spaced. diffusers' DDIMScheduler takes no custom
    time steps, so both solvers run as DPM-Solver++ on them, of order 1 for ``ddim`` (the same
    update as DDIM's; Lu et al. 2022) and 2 for ``dpmsolver++``. A start at or below ``split_t``
    gives no steps and lands on the start."""
    top = int(timesteps(cfg, steps, strength)[1][0])
    if top <= split_t:
        return None, [], top
    n = min(steps, top - split_t)
    grid = [int(v) for v in np.linspace(top, split_t, n + 1).round()]
    dpm = replace(cfg, sampler="dpmsolver++")
    sched = DPMSolverMultistepScheduler(
        **{**scheduler_config(dpm), "solver_order": 1 if cfg.sampler == "ddim" else 2}
    )
    sched.set_timesteps(timesteps=grid, device=device)
    return sched, sched.timesteps[:n], split_t


def invert(
    denoiser,
    x_0: torch.Tensor,
    cond: Condition | None,
    cfg: DenoiserConfig,
    steps: int = 50,
    strength: float = 1.0,
) -> torch.Tensor:
    """The x_T (x_t at t = strength T) from which ``sample`` (same condition, solver, steps and
    strength, no guidance) returns ``x_0``."""
    sched, ts = timesteps(cfg, steps, strength, inverse=True, device=x_0.device)
    x = x_0
    for t in ts:
        with _precision(cfg, x):
            pred = denoiser(x, t, cond) if cond is not None else denoiser(x, t)
        x = sched.step(pred.float(), t, x).prev_sample
    return x


def posterior_step(sched, pred: torch.Tensor, t, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, standard deviation) of the DDPM posterior step from x_t (DDIMScheduler ``sched`` with
    eta 1, Song et al. 2021 eq. 16). The last step of a chain, to t = 0, has no noise: its
    standard deviation is given as 1, so that its "noise map" is the step's residual itself."""
    mean = sched.step(pred, t, x, eta=1.0, variance_noise=torch.zeros_like(x)).prev_sample
    std = sched.step(pred, t, x, eta=1.0, variance_noise=torch.ones_like(x)).prev_sample - mean
    return mean, torch.where(std.abs() > 1e-6, std, torch.ones_like(std))


@torch.no_grad()
def ddpm_invert(
    denoiser,
    x_0: torch.Tensor,
    cond: Condition | None,
    cfg: DenoiserConfig,
    steps: int = 5,
    strength: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Edit-friendly DDPM inversion of ``x_0`` over the ``steps`` time steps that ``sample`` runs at
    ``strength``: (N, 1 + steps, ...), the start x_t then one noise map per step, from which
    ``sample(..., x_T=out[:, 0], noise_maps=out[:, 1:])`` under ``cond`` (no guidance) returns
    ``x_0`` up to float rounding. ``generator`` seeds the x_t draws."""
    sched, ts = timesteps(replace(cfg, sampler="ddim"), steps, strength, device=x_0.device)
    draws = [
        sched.add_noise(x_0, torch.randn(x_0.shape, generator=generator).to(x_0), t.repeat(len(x_0)))
        for t in ts
    ]
    chain, out = draws + [x_0], [draws[0]]
    for i, t in enumerate(ts):
        with _precision(cfg, chain[i]):
            pred = denoiser(chain[i], t, cond) if cond is not None else denoiser(chain[i], t)
        mean, std = posterior_step(sched, pred.float(), t, chain[i])
        out.append((chain[i + 1] - mean) / std)
    return torch.stack(out, 1)


def ddim_sample(
    denoiser,
    x_T: torch.Tensor,
    cond: Condition | None,
    cfg: DenoiserConfig,
    steps: int = 50,
    guidance: Guidance | None = None,
) -> torch.Tensor:
    return sample(denoiser, x_T, cond, replace(cfg, sampler="ddim"), steps, guidance)


def ddim_invert(
    denoiser, x_0: torch.Tensor, cond: Condition | None, cfg: DenoiserConfig, steps: int = 50
) -> torch.Tensor:
    return invert(denoiser, x_0, cond, replace(cfg, sampler="ddim"), steps)


def noise_to(
    x_0: torch.Tensor, cfg: DenoiserConfig, steps: int, strength: float, generator: torch.Generator
) -> torch.Tensor:
    """x_t drawn from q(x_t | x_0) at the first timestep that ``sample`` runs for ``steps`` and
    ``strength`` (SDEdit, Meng et al. 2022, eq. 1 of its section 3): a stochastic start, so that
    each draw of fresh noise regenerates the same source differently (``invert`` is deterministic)."""
    sched, ts = timesteps(cfg, steps, strength, device=x_0.device)
    noise = torch.randn(x_0.shape, generator=generator).to(x_0)
    return sched.add_noise(x_0, noise, ts[:1].repeat(len(x_0)))
