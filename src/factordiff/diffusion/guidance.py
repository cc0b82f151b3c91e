"""Classifier-free guidance per factor (Ho & Salimans 2022), in three forms of composing factors.

Notation: eps(.) is the denoiser's prediction (v or epsilon: every form is a linear combination
with coefficients summing to 1, so it means the same in either space) at fixed x_t and t; c is the
full condition, u every factor absent (the learned null embeddings), c_{-k} the condition with
factor k absent, c_k "factor k alone" (every other factor absent) and c_{<=j} the condition with
only the first j factors of an order present. w_k is the weight of factor k: ``factors[k]`` where
given, else ``all`` (in the joint form ``all`` is instead the weight of a term over every factor).

- ``joint`` (the default; today's): one condition for all factors, each weight a correction,

      pred = eps(c) + (w_all - 1) (eps(c) - eps(u)) + sum_k (w_k - 1) (eps(c) - eps(c_{-k}))

  All weights 1 is the plain conditional prediction, w_all > 1 ordinary classifier-free guidance,
  w_k > 1 strengthens factor k alone. Only the terms whose weight differs from 1 cost rows.
- ``composed`` (Liu et al. 2022, "Compositional visual generation"; CoInD, ICLR 2025): the
  product of per-factor conditionals, p(x | c) ~ p(x) prod_k p(x | c_k) / p(x),

      pred = eps(u) + sum_k w_k (eps(c_k) - eps(u))

  It needs the model to know each factor alone (``denoiser.dropout_schedule = "with_singles"``)
  and is exact when the factors are conditionally independent given x (``denoiser.coind_weight``).
  With one factor it equals the joint form with w_all = w_1; with an additive denoiser it equals
  the joint form with the same per-factor weights. All weights 1 is *not* eps(c) in general.
- ``nested``: factors added one at a time in ``order`` (factors not listed follow in index order),
  each term guiding the step from the previous condition to the next,

      pred = eps(u) + sum_j w_{o_j} (eps(c_{<=j}) - eps(c_{<=j-1})),   c_{<=0} = u, c_{<=K} = c

  All weights 1 telescopes to eps(c); w_{o_1} alone is guidance of the first factor against the
  unconditional model, w_{o_j} that of factor o_j given the factors before it.

A factor the condition itself marks absent stays absent in every term. Every form evaluates all its
conditions in ONE call of the denoiser: the conditions are stacked along the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from factordiff.diffusion.condition import Condition

GuidanceForm = Literal["joint", "composed", "nested"]
GUIDANCE_FORMS: tuple[str, ...] = ("joint", "composed", "nested")


@dataclass(frozen=True)
class Guidance:
    """Guidance weights and the form that combines them (see the module docstring).

    Args:
        all: joint: the weight of classifier-free guidance over every factor at once; composed and
            nested: the weight of every factor not in ``factors``.
        factors: factor (code block) index -> its weight.
        form: ``joint``, ``composed`` or ``nested``.
        order: nested only: the order in which factors are added (the rest follow in index order).
    """

    all: float = 1.0
    factors: dict[int, float] = field(default_factory=dict)
    form: GuidanceForm = "joint"
    order: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.form not in GUIDANCE_FORMS:
            raise ValueError(f"Guidance.form: expected one of {', '.join(GUIDANCE_FORMS)}, got {self.form!r}")

    def active(self) -> list[tuple[int | None, float]]:
        """Joint form: the (factor or None for all, weight) terms whose weight is not 1."""
        terms: list[tuple[int | None, float]] = [(None, self.all)] if self.all != 1.0 else []
        return terms + [(k, w) for k, w in sorted(self.factors.items()) if w != 1.0]

    def weight(self, k: int) -> float:
        """Composed and nested forms: the weight of factor ``k``."""
        return self.factors.get(k, self.all)

    def factor_order(self, num_factors: int) -> list[int]:
        """Nested form: every factor index once, ``order`` first."""
        if len(set(self.order)) != len(self.order) or any(not 0 <= k < num_factors for k in self.order):
            raise ValueError(
                f"Guidance.order: expected distinct factor indices in [0, {num_factors}), "
                f"got {list(self.order)}"
            )
        return list(self.order) + [k for k in range(num_factors) if k not in self.order]


def _only(cond: Condition, factors: list[int]) -> Condition:
    """``cond`` with only ``factors`` present (those it has present itself)."""
    keep = torch.zeros_like(cond.present)
    keep[:, factors] = True
    return Condition(cond.codes, cond.present & keep, cond.control)


def guidance_terms(cond: Condition, guidance: Guidance) -> tuple[list[Condition], list[float]]:
    """The conditions a guided prediction needs and the coefficient of each one's prediction:
    pred = sum_i coef_i eps(conds_i). The coefficients sum to 1."""
    if guidance.form == "joint":
        terms = guidance.active()
        conds = [cond] + [cond.absent() if k is None else cond.without(k) for k, _ in terms]
        return conds, [1.0 + sum(w - 1.0 for _, w in terms)] + [1.0 - w for _, w in terms]
    num = cond.codes.shape[1]
    if guidance.form == "composed":
        ks = list(range(num))
        conds = [cond.absent()] + [_only(cond, [k]) for k in ks]
        return conds, [1.0 - sum(guidance.weight(k) for k in ks)] + [guidance.weight(k) for k in ks]
    order = guidance.factor_order(num)
    conds = [cond.absent()] + [_only(cond, order[: j + 1]) for j in range(num)]
    w = [guidance.weight(k) for k in order] + [0.0]  # eps(c_{<=j}) has coefficient w_j - w_{j+1}
    return conds, [1.0 - w[0]] + [w[j] - w[j + 1] for j in range(num)]


def guided_prediction(
    denoiser, x: torch.Tensor, t: torch.Tensor, cond: Condition, guidance: Guidance | None = None
) -> torch.Tensor:
    """The denoiser's prediction under ``guidance``, its conditions batched into one forward pass."""
    if guidance is None or (guidance.form == "joint" and not guidance.active()):
        return denoiser(x, t, cond)
    conds, coefs = guidance_terms(cond, guidance)
    stacked = conds[0]
    for c in conds[1:]:
        stacked = stacked.cat(c)
    n = len(x)
    t = t.expand(n) if t.ndim == 0 else t
    preds = denoiser(x.repeat(len(conds), *[1] * (x.ndim - 1)), t.repeat(len(conds)), stacked).split(n)
    if guidance.form == "joint":  # the original expression, so today's results stay bit-identical
        out = preds[0]
        for (_, w), p in zip(guidance.active(), preds[1:]):
            out = out + (w - 1.0) * (preds[0] - p)
        return out
    return sum(c * p for c, p in zip(coefs, preds))
