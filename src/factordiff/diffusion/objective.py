"""The denoiser's training objective: v-prediction (Salimans & Ho 2022) or epsilon-prediction
with diffusers' noise schedule, per-factor condition dropout for classifier-free guidance, and
optionally CoInD's conditional-independence loss (Gaudi, Sreekumar & Boddeti, ICLR 2025) for
composed guidance."""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler
from torch import nn
from torch.nn import functional as F

from factordiff.config import DenoiserConfig
from factordiff.diffusion.condition import Condition
from factordiff.diffusion.head import augment, head_loss


def noise_schedule(cfg: DenoiserConfig) -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule=cfg.beta_schedule,
        prediction_type=cfg.prediction_type,
    )


def drop_factors(present: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """Each factor independently absent with probability ``p``; with probability ``p`` all are absent."""
    keep = torch.rand(present.shape, generator=gen) >= p
    none = torch.rand(present.shape[0], 1, generator=gen) < p
    return present & keep.to(present.device) & ~none.to(present.device)


def keep_singles(present: torch.Tensor, full: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """With probability ``p`` a row keeps exactly one factor of ``full``, drawn uniformly ("factor k
    alone", what composed guidance asks the model for); other rows keep ``present``."""
    single = torch.rand(present.shape[0], generator=gen) < p
    k = torch.randint(0, present.shape[1], (present.shape[0],), generator=gen)
    alone = F.one_hot(k, present.shape[1]).bool().to(present.device) & full
    return torch.where(single.to(present.device)[:, None], alone, present)


def factor_pairs(rows: int, num_factors: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A uniformly random pair of distinct factors (i, j) per row."""
    if num_factors < 2:
        raise ValueError(f"denoiser.coind_weight > 0 needs at least two factors, got {num_factors}")
    i = torch.randint(0, num_factors, (rows,), generator=gen)
    j = (i + torch.randint(1, num_factors, (rows,), generator=gen)) % num_factors
    return i, j


def coind_conditions(codes: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> Condition:
    """c_i, c_j, c_ij and u (only i, only j, only i and j, none present) stacked along the batch."""
    num = codes.shape[1]
    only_i, only_j = F.one_hot(i, num).bool().to(codes.device), F.one_hot(j, num).bool().to(codes.device)
    present = torch.cat([only_i, only_j, only_i | only_j, torch.zeros_like(only_i)])
    return Condition(codes.repeat(4, 1, 1), present)


def coind_residual(preds: torch.Tensor) -> torch.Tensor:
    """eps(c_i) + eps(c_j) - eps(c_ij) - eps(u) from predictions stacked as ``coind_conditions``.

    Zero when the factors i and j are conditionally independent given x_t (CoInD: the score of
    p(x | c_i, c_j) is then the sum of the scores of p(x | c_i) and p(x | c_j) minus that of p(x)).
    At fixed x_t and t, v = eps / alpha_t - (sigma_t / alpha_t) x_t; the coefficients (1, 1, -1, -1)
    sum to 0, so the v residual is the epsilon residual divided by alpha_t: it vanishes in one space
    exactly when it does in the other."""
    e_i, e_j, e_ij, e_u = preds.chunk(4)
    return e_i + e_j - e_ij - e_u


class DiffusionStep(nn.Module):
    """Training step: noise x_0 at a uniform random t and regress the target (v or epsilon).

    Codes come with the batch (``codes``, from a frozen encoder), or are computed from the batch's
    value indices (``factors``) by ``embedder``, which then trains with the denoiser.

    Conditions are dropped per ``cfg.cond_dropout`` (and, with ``cfg.dropout_schedule =
    "with_singles"``, a row keeps one factor alone with probability ``cfg.single_prob``). With
    ``cfg.coind_weight > 0`` the loss adds ``coind_weight`` times the mean square (over rows and
    elements, as the regression's) of ``coind_residual`` for one random factor pair per row (the
    first ``cfg.coind_rows`` rows; None: all), on the same x_t and t and in the same forward pass
    as the regression. With the defaults the step draws exactly the random numbers it always did.
    A denoiser with a classification head (``denoiser.head``) adds ``cfg.head_weight`` times the head's
    cross-entropy on a batch of its own: ``cfg.head_batch`` images drawn each step from ``labelled``
    (``x``: the labelled share's images, ``labels``: their head factors' values), noised at their own t
    (uniform below ``cfg.head_max_t`` of the schedule) and read with every factor absent
    (``diffusion/head.py``), after ``cfg.head_augment``'s augmentations; with ``cfg.head_conditioned``
    false the head's factors are absent from every row of the regression. The head thus sees a full
    labelled batch every step however small the labelled share, as the semi-supervised Joint Diffusion
    draws one from its labelled loader; the diffusion loss still sees every image. Without a head the step
    draws exactly the random numbers it always did.
    """

    def __init__(
        self,
        denoiser: nn.Module,
        cfg: DenoiserConfig,
        embedder: nn.Module | None = None,
        labelled: dict[str, torch.Tensor] | None = None,
    ):
        super().__init__()
        self.denoiser, self.cfg, self.embedder = denoiser, cfg, embedder
        self.schedule = noise_schedule(cfg)
        self.labelled = labelled  # a plain attribute: the labelled images are data, not state

    def forward(
        self, batch: dict[str, torch.Tensor], gen: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        x0 = batch["x"]
        codes = self.embedder(batch["factors"]) if self.embedder is not None else batch.get("codes")
        noise = torch.randn(x0.shape, generator=gen).to(x0.device)
        t = torch.randint(0, self.cfg.num_train_timesteps, (len(x0),), generator=gen).to(x0.device)
        x_t = self.schedule.add_noise(x0, noise, t)
        target = (
            self.schedule.get_velocity(x0, noise, t) if self.cfg.prediction_type == "v_prediction" else noise
        )
        if codes is None:
            return F.mse_loss(self.denoiser(x_t, t, None), target), {}
        loss, info = self._regression(x_t, t, target, codes, gen, batch.get("control"))
        if getattr(self.denoiser, "head", None) is None or self.labelled is None:
            return loss, info
        ce = self.head_loss(gen, x0.device)
        return loss + self.cfg.head_weight * ce, {
            **info,
            "diffusion": float(loss.detach()),
            "head_ce": float(ce.detach()),
        }

    def head_loss(self, gen: torch.Generator, device) -> torch.Tensor:
        """The head's cross-entropy on ``cfg.head_batch`` labelled images at their own noise levels."""
        x, labels = self.labelled["x"], self.labelled["labels"]
        rows = torch.randint(0, len(x), (self.cfg.head_batch,), generator=gen)
        x0, y = x[rows].to(device), labels[rows].to(device)
        mix = None
        if self.cfg.head_augment:
            x0, mix = augment(x0, y, self.cfg.head_augment, gen)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        top = max(1, round(self.cfg.head_max_t * self.cfg.num_train_timesteps))
        t = torch.randint(0, top, (len(x0),), generator=gen).to(device)
        return head_loss(self.denoiser, self.schedule.add_noise(x0, noise, t), t, y, mix)

    def _regression(self, x_t, t, target, codes, gen, control=None) -> tuple[torch.Tensor, dict[str, float]]:
        """The conditioned regression (with condition dropout and the CoInD term where asked);
        ``control``: a controlled denoiser's conditioning images (never dropped)."""
        full = Condition.full(codes)
        present = drop_factors(full.present, self.cfg.cond_dropout, gen)
        head = getattr(self.denoiser, "head", None)
        if head is not None and not self.cfg.head_conditioned:
            present[:, head.factors] = False  # the head's factors never reach the UNet as codes
        if self.cfg.dropout_schedule == "with_singles":
            present = keep_singles(present, full.present, self.cfg.single_prob, gen)
        cond = Condition(codes, present, control)
        if self.cfg.coind_weight <= 0:
            return F.mse_loss(self.denoiser(x_t, t, cond), target), {}
        n = len(x_t) if self.cfg.coind_rows is None else min(len(x_t), self.cfg.coind_rows)
        i, j = factor_pairs(n, codes.shape[1], gen)
        extra = coind_conditions(codes[:n], i, j)
        reps = [1] * (x_t.ndim - 1)
        preds = self.denoiser(
            torch.cat([x_t, x_t[:n].repeat(4, *reps)]), torch.cat([t, t[:n].repeat(4)]), cond.cat(extra)
        )
        mse = F.mse_loss(preds[: len(x_t)], target)
        coind = coind_residual(preds[len(x_t) :]).pow(2).mean()
        return mse + self.cfg.coind_weight * coind, {
            "mse": float(mse.detach()),
            "coind": float(coind.detach()),
        }
