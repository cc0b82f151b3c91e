"""Codes straight from metadata: where every row's factor values are known (profile tables), the
code block of a factor is a learned function of its value, trained with the denoiser.

- a categorical factor's block is a learned embedding of its value (scLDM's class embeddings);
- an ordinal factor's block is a small MLP of the value's position on the factor's axis (a log
  axis for doses, fitted on training values: ``axis_positions``), so a dose that no training row
  had still has a code (interpolated between its neighbours).

- a perturbation factor can instead take a ``PerturbationEmbedder`` (an MLP of each value's
  Morgan fingerprint or table embedding, controls their own code), so a value no training row had
  still has a code from its features.

Values that no training row had are never looked up in a categorical factor's table: ``seen``
marks the values the training rows cover, and ``present`` (below) makes such a factor absent (its
learned null) instead of reading an untrained embedding row; a perturbation factor with features
counts every value as seen.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from factordiff.factors import FactorSpec


def axis_positions(spec: FactorSpec, seen: list[np.ndarray] | None = None) -> list[torch.Tensor]:
    """Per ordinal factor, each value's position on its axis, an empty tensor for categorical ones.

    The axis is fitted on the values that training rows have (``seen``; None: every value): a log
    axis when those are all >= 0 and the positive ones span a decade or more (doses, times in a
    dilution series; a zero dose sits one decade below the smallest positive one), else a linear
    one (hues 0-0.9, scales, angles), scaled so that the training values span
    [-1, 1]. A value no training row had lands on the same axis, between or beyond its neighbours,
    and moves no training value's position."""
    out = []
    for k, f in enumerate(spec.factors):
        if f.kind != "ordinal":
            out.append(torch.zeros(0))
            continue
        values = np.asarray(f.values, np.float64)
        fit = values[seen[k]] if seen is not None and seen[k].any() else values
        positive = fit[fit > 0]
        if (fit >= 0).all() and len(positive) >= 2 and positive.max() >= 10 * positive.min():
            floor = np.log10(fit[fit > 0].min()) - 1.0
            axis = np.where(values > 0, np.log10(np.where(values > 0, values, 1.0)), floor)
            fit_axis = np.where(fit > 0, np.log10(np.where(fit > 0, fit, 1.0)), floor)
        else:
            axis, fit_axis = values, fit
        lo, hi = fit_axis.min(), fit_axis.max()
        pos = 2.0 * (axis - lo) / (hi - lo) - 1.0 if hi > lo else axis - lo
        out.append(torch.as_tensor(pos, dtype=torch.float32))
    return out


class MetadataEmbedder(nn.Module):
    """Value indices (B, K) -> codes (B, K, D).

    Args:
        spec: the factors (sizes and kinds).
        code_dims: D.
        hidden: width of the ordinal factors' position MLPs.
        perturbation: a factor's index and the ``PerturbationEmbedder`` that codes it instead of a table.
        seen: per factor, the values training rows have (the ordinal axes are fitted on them).
    """

    def __init__(
        self,
        spec: FactorSpec,
        code_dims: int,
        hidden: int = 64,
        perturbation: tuple[int, nn.Module] | None = None,
        seen: list[np.ndarray] | None = None,
    ):
        super().__init__()
        self.code_dims = code_dims
        self.ordinal = [f.kind == "ordinal" for f in spec.factors]
        self.tables = nn.ModuleList(
            nn.Embedding(f.size, code_dims) if not o else nn.Identity()
            for f, o in zip(spec.factors, self.ordinal)
        )
        self.perturbation_factor = None
        if perturbation is not None:
            self.perturbation_factor, self.perturbation = perturbation
            self.tables[self.perturbation_factor] = nn.Identity()
        self.curves = nn.ModuleList(
            nn.Sequential(nn.Linear(1, hidden), nn.SiLU(), nn.Linear(hidden, code_dims))
            if o
            else nn.Identity()
            for o in self.ordinal
        )
        for k, pos in enumerate(axis_positions(spec, seen)):
            self.register_buffer(f"pos{k}", pos, persistent=False)

    def forward(self, factors: torch.Tensor) -> torch.Tensor:
        blocks = []
        for k, o in enumerate(self.ordinal):
            idx = factors[:, k]
            if k == self.perturbation_factor:
                blocks.append(self.perturbation(idx))
            elif o:
                blocks.append(self.curves[k](getattr(self, f"pos{k}")[idx][:, None]))
            else:
                blocks.append(self.tables[k](idx))
        return torch.stack(blocks, 1)


def seen_values(spec: FactorSpec, factors: np.ndarray) -> list[np.ndarray]:
    """Per factor, a bool array over its values: True where some (training) row has the value."""
    return [np.isin(np.arange(f.size), factors[:, k]) for k, f in enumerate(spec.factors)]


def present(spec: FactorSpec, seen: list[np.ndarray], factors: np.ndarray) -> np.ndarray:
    """(N, K) bool: a factor is present unless it is categorical and its value was never seen."""
    out = np.ones(factors.shape, bool)
    for k, f in enumerate(spec.factors):
        if f.kind != "ordinal":
            out[:, k] = seen[k][factors[:, k]]
    return out


def one_hot(spec: FactorSpec, factors: np.ndarray) -> np.ndarray:
    """(N, sum of factor sizes) one-hot encoding of value indices (N, K), factor after factor."""
    return np.concatenate(
        [np.eye(f.size, dtype=np.float32)[factors[:, k]] for k, f in enumerate(spec.factors)], axis=1
    )


def fit_additive(
    spec: FactorSpec, factors: np.ndarray, z: np.ndarray, alpha: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ridge regression of ``z`` (N, F) on one-hot factors: weights (P, F) and intercept (F,). A value
    no row has gets a zero weight."""
    from sklearn.linear_model import Ridge

    model = Ridge(alpha=alpha).fit(one_hot(spec, factors), z)
    return torch.from_numpy(model.coef_.T.astype(np.float32).copy()), torch.from_numpy(
        np.asarray(model.intercept_, np.float32)
    )
