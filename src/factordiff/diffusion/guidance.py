"""Classifier-free guidance per factor (Ho & Salimans 2022, applied factor by factor).

With c the full condition, u every factor absent and c_{-k} the condition with factor k absent,

    pred = c + (w_all - 1) (c - u) + sum_k (w_k - 1) (c - c_{-k})

so w_all = 1 and every w_k = 1 is the plain conditional prediction, w_all > 1 is ordinary
classifier-free guidance, and w_k > 1 strengthens factor k alone. Only the terms whose weight
differs from 1 cost a forward pass; they are batched with the conditional one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from factordiff.diffusion.condition import Condition


@dataclass(frozen=True)
class Guidance:
    """Guidance weights: ``all`` over every factor, ``factors`` maps a factor index to its weight."""

    all: float = 1.0
    factors: dict[int, float] = field(default_factory=dict)

    def active(self) -> list[tuple[int | None, float]]:
        terms: list[tuple[int | None, float]] = [(None, self.all)] if self.all != 1.0 else []
        return terms + [(k, w) for k, w in sorted(self.factors.items()) if w != 1.0]


def guided_prediction(denoiser, x: torch.Tensor, t: torch.Tensor, cond: Condition, guidance: Guidance | None = None) -> torch.Tensor:
    """The denoiser's prediction under per-factor classifier-free guidance."""
    terms = guidance.active() if guidance is not None else []
    if not terms:
        return denoiser(x, t, cond)
    conds = [cond] + [cond.absent() if k is None else cond.without(k) for k, _ in terms]
    stacked = conds[0]
    for c in conds[1:]:
        stacked = stacked.cat(c)
    n = len(x)
    t = t.expand(n) if t.ndim == 0 else t
    preds = denoiser(x.repeat(len(conds), 1, 1, 1), t.repeat(len(conds)), stacked).split(n)
    out = preds[0]
    for (_, w), p in zip(terms, preds[1:]):
        out = out + (w - 1.0) * (preds[0] - p)
    return out
