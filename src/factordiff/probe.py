"""Probe-direction edits (the DiffSiam thesis' Algorithm 3): move an image's code along the
direction of a sparse linear probe for one factor, and regenerate.

The probe reads the factor from the whole code (every block, flattened), fitted on codes of
training images only (held-out combinations never reach it): an L1 logistic regression, one value
against the rest, for a categorical factor (toward the value ``--set F=V`` names); an L1 linear
regression on the value's position for an ordinal one. ``amount`` A raises the probe's score
c . w + b by exactly A standard deviations s of the score over the training codes, along one of two
directions:

- ``pattern`` (the default): c + A * s * p, with p = Cov(c, score) / Var(score) over the training
  codes, the probe's *activation pattern* (Haufe et al., NeuroImage 2014): the direction in which
  the codes change as the factor does. w . p = 1, so the score rises by A s.
- ``weight``: c + A * s * w / |w|^2, the shortest move that raises the score (Algorithm 3 read
  literally); only the dimensions the probe uses (w != 0) move. A probe's weights are a *filter*:
  an L1 probe picks the dimensions that read the factor most precisely, which need not be those
  the denoiser reads it from.

Neither straight move carries a code from one value's cluster to another's where the codes cluster
by value, as the supervised distiller's do: on the shipped Shapes model probe edits change shape
(one value against the rest) but seldom the ordinal factors, where the swap to the value's
prototype is the edit (``benchmarks/probe_edits.py``).

It works the same for supervised codes (the distiller's blocks) and unsupervised ones (the segments
of the diffusion-driven encoder).

Probes are kept in ``RUN/probes/`` (safetensors, and the JSON beside them saying what they were
fitted on), so a second edit with the same probe fits nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from factordiff.checkpoint import atomic_save_tensors, atomic_write_json, load_tensors
from factordiff.diffusion.guidance import Guidance
from factordiff.errors import FactordiffError

PROBES = "probes"
MAX_CODES = 4000  # training codes a probe is fitted on (drawn at random)
CS = (0.01, 0.1, 1.0, 10.0)  # the L1 logistic probe's inverse penalties, chosen by cross-validation


@dataclass
class Probe:
    """A linear probe on flattened codes: ``weight`` (blocks * D,), its score's ``sd`` over the
    training codes, what it reads (``factor``, ``value`` or None for an ordinal position) and its
    activation ``pattern`` (blocks * D,; module docstring)."""

    weight: torch.Tensor
    bias: float
    sd: float
    factor: str
    value: str | None
    info: dict
    pattern: torch.Tensor

    def score(self, codes: torch.Tensor) -> torch.Tensor:
        return codes.flatten(1).float() @ self.weight + self.bias

    def move(
        self, codes: torch.Tensor, amount: float | torch.Tensor, direction: str = "pattern"
    ) -> torch.Tensor:
        """``codes`` (N, blocks, D) moved along ``direction`` (``pattern`` or ``weight``) so the
        probe's score rises by ``amount`` standard deviations (one number, or one per row)."""
        w = self.weight
        unit = self.pattern if direction == "pattern" else w / float(w @ w)
        amount = torch.as_tensor(amount, dtype=torch.float32).reshape(-1, 1)
        return (codes.flatten(1) + amount * self.sd * unit).reshape(codes.shape)

    def amounts_to(self, codes: torch.Tensor, score: float) -> torch.Tensor:
        """Per row of ``codes``, the amount that moves its score to ``score``."""
        return (score - self.score(codes)) / self.sd

    def blocks(self, shape: tuple[int, int]) -> list[int]:
        """The code blocks the probe uses (some weight in them is non-zero)."""
        return [int(b) for b in np.flatnonzero(self.weight.reshape(shape).abs().sum(1).numpy() > 0)]


def _name(factor: str, value: str | None) -> str:
    text = factor if value is None else f"{factor}={value}"
    return "".join(c if c.isalnum() or c in "=._-" else "_" for c in text)


def fit_probe(
    codes: np.ndarray, target: np.ndarray, categorical: bool, seed: int = 0
) -> tuple[np.ndarray, float, dict]:
    """(weight, bias, info) of an L1 probe of ``target`` (0/1 for a categorical value, a position for
    an ordinal one) on flattened ``codes`` (N, F), its penalty chosen by 3-fold cross-validation
    (logistic: C in 0.01, 0.1, 1, 10 by ROC AUC; linear: ``LassoCV``'s path by R^2)."""
    from sklearn.linear_model import LassoCV, LogisticRegression
    from sklearn.model_selection import cross_val_score

    if categorical:
        if len(np.unique(target)) < 2:
            raise FactordiffError("probe: the training codes hold only one class of this value")

        def make(c):
            return LogisticRegression(l1_ratio=1.0, C=c, solver="liblinear", random_state=seed)

        scores = {
            c: float(cross_val_score(make(c), codes, target, cv=3, scoring="roc_auc").mean()) for c in CS
        }
        best = max(scores, key=scores.get)
        clf = make(best).fit(codes, target)
        w, b = clf.coef_[0], float(clf.intercept_[0])
        info = {"roc_auc_3fold": scores[best], "C": best}
    else:
        reg = LassoCV(cv=3, random_state=seed, max_iter=5000).fit(codes, target)
        w, b = reg.coef_, float(reg.intercept_)
        info = {
            "r2_3fold": float(cross_val_score(reg, codes, target, cv=3, scoring="r2").mean()),
            "alpha": float(reg.alpha_),
        }
    if not np.any(w):
        raise FactordiffError(
            "probe: the L1 probe kept no code dimension (the codes do not read this factor)"
        )
    return w.astype(np.float32), b, {**info, "nonzero": int(np.count_nonzero(w)), "dims": int(w.size)}


def probe_for(run, factor: str, value: str | None = None, seed: int = 0, progress: bool = True) -> Probe:
    """The run's probe for ``factor`` (toward ``value`` for a categorical factor), from
    ``RUN/probes`` or fitted now on codes of at most ``MAX_CODES`` training images."""
    model, spec = run.model, run.spec
    k = spec.resolve(factor)
    f = spec.factors[k]
    categorical = f.kind != "ordinal"
    if categorical and value is None:
        raise FactordiffError(
            f"--method probe --factor {f.name}: a categorical factor; name the value to move toward "
            f"with --set {f.name}=VALUE"
        )
    v = f.index(value) if categorical else None
    name = _name(f.name, f.values[v] if categorical else None)
    folder = Path(run.path) / PROBES
    saved = load_tensors(folder / f"{name}.safetensors") if (folder / f"{name}.safetensors").is_file() else {}
    if "pattern" in saved:  # (a probe saved before patterns existed is fitted again)
        meta = json.loads((folder / f"{name}.json").read_text())
        return Probe(saved["weight"], meta["bias"], meta["sd"], f.name, meta["value"], meta, saved["pattern"])
    data, split, train = run.data()
    if progress:
        n = min(MAX_CODES, len(train))
        print(f"fitting the probe for {name} on the codes of {n} training images", flush=True)
    codes, values = training_codes(model, train, seed)
    probe = probe_from_codes(codes.flatten(1).numpy(), values[:, k], f, v, seed)
    atomic_save_tensors({"weight": probe.weight, "pattern": probe.pattern}, folder / f"{name}.safetensors")
    atomic_write_json(folder / f"{name}.json", probe.info)
    return probe


def training_codes(model, train, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """The codes (N, blocks, D) of at most ``MAX_CODES`` training images drawn with ``seed``, and
    their value indices (N, factors): what a probe is fitted on."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(train), min(MAX_CODES, len(train)), replace=False))
    return model.codes(train.images[rows]), train.factors[rows]


def probe_from_codes(codes: np.ndarray, values: np.ndarray, f, v: int | None, seed: int = 0) -> Probe:
    """The L1 probe of factor ``f`` on flattened training ``codes`` (N, F) whose values of ``f`` are
    ``values`` (N,): toward value index ``v`` (one against the rest), or with ``v`` None the
    position of an ordinal factor."""
    categorical = v is not None
    y = (values == v).astype(int) if categorical else values.astype(float)
    w, b, info = fit_probe(codes, y, categorical, seed)
    score = codes @ w + b
    centred = score - score.mean()
    pattern = (codes - codes.mean(0)).T @ centred / float(centred @ centred)
    meta = {
        "factor": f.name,
        "value": f.values[v] if categorical else None,
        "kind": "l1 logistic, one value against the rest" if categorical else "l1 linear on the position",
        "bias": b,
        "sd": float(score.std()),
        "train_codes": int(len(codes)),
        **info,
    }
    return Probe(
        torch.from_numpy(w),
        b,
        meta["sd"],
        f.name,
        meta["value"],
        meta,
        torch.from_numpy(pattern.astype(np.float32)),
    )


@torch.no_grad()
def probe_edit(
    model,
    images: np.ndarray,
    probe: Probe,
    amount: float | torch.Tensor,
    steps: int,
    guidance: float,
    strength: float,
    residual: bool | None = None,
    direction: str = "pattern",
) -> np.ndarray:
    """``images`` (N, H, W, C) uint8 regenerated with their codes moved along ``probe`` by ``amount``
    standard deviations (one number, or one per image) in ``direction`` (guidance on the blocks the
    probe uses)."""
    codes = model.codes(images)
    new = probe.move(codes, amount, direction)
    used = probe.blocks(tuple(codes.shape[1:]))
    return model.edit(
        images, codes, new, steps, Guidance(factors={b: guidance for b in used}), strength, residual=residual
    )
