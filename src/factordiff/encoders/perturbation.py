"""Perturbation embedders: a perturbation (a compound, a gene) as a vector that codes can be made of.

Three kinds of features per perturbation value (``perturbation_features``):

- ``morgan``: RDKit Morgan fingerprints (radius 2, 1024 or 2048 bits) of each value's SMILES, so a
  compound that no training image or row had still has features, and a code, from its structure;
- ``onehot``: the value's indicator, which says nothing about a value no training row had;
- ``table:PATH``: a user's embedding table (CSV: the perturbation's name in the first column, one
  numeric column per dimension), e.g. from a chemical or gene language model.

Controls (DMSO, negative controls) are not compounds with a structure to read: their code is
their own (a learned vector in ``PerturbationEmbedder``, their own prototype as the intercept of
``CodeRegression``), never a function of features.

Two ways the features become codes:

- ``PerturbationEmbedder``: a module trained with the denoiser (the profile model), features ->
  MLP -> code, controls their own learned vector; in image runs (``denoiser.structure``) a linear
  one inside ``StructureCodes``;
- ``CodeRegression``: a map fitted after training from the training values' features to their
  code blocks (the image model's prototypes, statistics of training images only): kernel ridge
  regression offset from the controls' code, or a kernel-weighted mean of the training codes,
  whichever predicts the training values best when each is left out. Fitted on 10-20 compounds,
  this is the size of model the data supports.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from factordiff.chem import morgan, tanimoto
from factordiff.config import check_embedding_kind
from factordiff.errors import FactordiffError


def read_embedding_table(path: Path | str) -> dict[str, np.ndarray]:
    """A user's embedding table: CSV, the perturbation's name in the first column, numbers after it.
    A missing file, a non-numeric or missing value, or a repeated name is one line naming it."""
    import pandas as pd

    path = Path(path)
    try:
        frame = pd.read_csv(path, dtype={0: str})
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise FactordiffError(f"{path}: cannot read the embedding table ({e.__class__.__name__})") from None
    if frame.shape[1] < 2 or not len(frame):
        raise FactordiffError(f"{path}: expected a name column and at least one numeric column, with rows")
    names = frame.iloc[:, 0].astype(str)
    if names.duplicated().any():
        raise FactordiffError(f"{path}: perturbation {names[names.duplicated()].iloc[0]!r} appears twice")
    values = frame.iloc[:, 1:].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise FactordiffError(
            f"{path}: row {r + 2}, column {frame.columns[c + 1]!r}: expected a number, got "
            f"{frame.iloc[r, c + 1]!r}"
        )
    return dict(zip(names, values.astype(np.float32)))


def perturbation_features(
    kind: str, values: list[str], controls: set[str], smiles: dict[str, str] | None = None, bits: int = 1024
) -> np.ndarray:
    """Features (V, F) float32 of the perturbation ``values``; control rows are zero (controls get
    their own code). ``smiles`` maps a value to its SMILES for ``morgan`` (a value that is itself a
    SMILES needs no entry)."""
    check_embedding_kind(kind, "perturbation embedding")
    treated = [v for v in values if v not in controls]
    if kind == "onehot":
        return (
            np.eye(len(values), dtype=np.float32)
            * np.array([v not in controls for v in values], np.float32)[:, None]
        )
    if kind == "morgan":
        smiles = smiles or {}
        fps = morgan([smiles.get(v, v) for v in treated], bits=bits)
        width = bits
        rows = dict(zip(treated, fps.astype(np.float32)))
    else:
        table = read_embedding_table(kind[6:])
        missing = [v for v in treated if v not in table]
        if missing:
            raise FactordiffError(
                f"{kind[6:]}: no row for perturbation {missing[0]!r} ({len(missing)} of "
                f"{len(treated)} missing)"
            )
        width = len(next(iter(table.values())))
        rows = {v: table[v] for v in treated}
    out = np.zeros((len(values), width), np.float32)
    for i, v in enumerate(values):
        if v in rows:
            out[i] = rows[v]
    return out


class PerturbationEmbedder(nn.Module):
    """Value indices (B,) -> codes (B, D): an MLP of each value's fixed features, a learned vector
    of its own for each control.

    Args:
        features: (V, F) features of every value of the factor (``perturbation_features``).
        is_control: (V,) bool.
        code_dims: D.
        hidden: the MLP's width; 0 makes the map linear, its weights starting at zero, so that a
            feature (a fingerprint bit) that no training value has adds nothing to a new value's
            code, and a new value's code is built from the bits it shares with the training ones.
    """

    def __init__(self, features: np.ndarray, is_control: np.ndarray, code_dims: int, hidden: int = 64):
        super().__init__()
        self.register_buffer("features", torch.as_tensor(features, dtype=torch.float32))
        control_slot = np.cumsum(is_control) - 1
        self.register_buffer(
            "control_slot", torch.as_tensor(np.where(is_control, control_slot, -1), dtype=torch.long)
        )
        if hidden:
            self.net = nn.Sequential(
                nn.Linear(features.shape[1], hidden), nn.SiLU(), nn.Linear(hidden, code_dims)
            )
        else:
            self.net = nn.Linear(features.shape[1], code_dims)
            nn.init.zeros_(self.net.weight)
            nn.init.normal_(self.net.bias, std=0.02)
        self.controls = nn.Parameter(0.02 * torch.randn(max(1, int(np.sum(is_control))), code_dims))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        slot = self.control_slot[idx]
        codes = self.embed(self.features[idx])
        return torch.where((slot >= 0)[:, None], self.controls[slot.clamp(min=0)], codes)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """Codes (m, D) of treated values with ``features`` (m, F), e.g. compounds no row had."""
        return self.net(features.to(self.features))


class StructureCodes(nn.Module):
    """An image model's perturbation block as a function of structure, trained with the denoiser.

    The distiller still reads the perturbation from an image (its classifier on the factor's
    block); the block that the denoiser sees is the classifier's posterior over the values that
    training images had times each value's ``PerturbationEmbedder`` code: for a clear image, its
    compound's code; for an ambiguous one (a low dose), a mix. The codes learn with the denoiser
    from the diffusion loss, so the code of a compound no training image had, ``embed`` of its
    fingerprint, is in the space the denoiser was trained on instead of regressed into a space
    trained to tell compounds apart.

    Args:
        factor: the perturbation factor's position.
        features, is_control, code_dims: as ``PerturbationEmbedder`` (linear, ``hidden=0``).
    """

    def __init__(self, factor: int, features: np.ndarray, is_control: np.ndarray, code_dims: int):
        super().__init__()
        self.factor = factor
        self.embedder = PerturbationEmbedder(features, is_control, code_dims, hidden=0)
        self.register_buffer("seen", torch.ones(len(features), dtype=torch.bool))

    def set_seen(self, seen: np.ndarray) -> None:
        """The values that training images had: the only ones the posterior may put weight on."""
        self.seen.copy_(torch.as_tensor(seen, dtype=torch.bool))

    def table(self) -> torch.Tensor:
        """Every value's code (V, D)."""
        return self.embedder(torch.arange(len(self.seen), device=self.seen.device))

    def posterior(self, logits: torch.Tensor) -> torch.Tensor:
        """The distiller's class logits (B, V) -> probabilities over the seen values."""
        return torch.softmax(logits.masked_fill(~self.seen, float("-inf")), dim=1)

    def forward(self, codes: torch.Tensor, posterior: torch.Tensor) -> torch.Tensor:
        """``codes`` (B, K, D) with the factor's block set to ``posterior`` (B, V) @ ``table()``."""
        out = codes.clone()
        out[:, self.factor] = posterior @ self.table()
        return out


class CodeRegression:
    """A map from perturbation features to code blocks, fitted on the values that training images
    had. Two families, the member with the lowest leave-one-out error over the training values
    chosen (so the choice uses training codes only):

    - kernel ridge regression offset from the controls' code (``("ridge", alpha)``): a structure
      like none of the training ones gets the control's code, a half-similar one half the way;
    - a kernel-weighted mean of the training codes (``("softmax", tau)``, weights
      ``exp(similarity / tau)``): the nearest training perturbations' codes, smoothed.

    Kernels: Tanimoto for fingerprints (``morgan``), cosine for ``table:...`` embeddings; ``onehot``
    refuses values it was not fitted on (their indicator says nothing).

    Args:
        kind: the features' kind.
        features: (n, F) of the training values; blocks: their codes (n, D).
        control: the controls' code (D,), or None (zero).
        candidates: the (family, parameter) pairs to choose from; ``choice`` holds the chosen one
            and ``loo_errors`` every candidate's mean squared leave-one-out error.
    """

    CANDIDATES = (
        ("ridge", 1e-3),
        ("ridge", 1e-2),
        ("ridge", 1e-1),
        ("ridge", 1.0),
        ("softmax", 0.05),
        ("softmax", 0.1),
        ("softmax", 0.2),
    )

    def __init__(
        self,
        kind: str,
        features: np.ndarray,
        blocks: np.ndarray,
        control: np.ndarray | None = None,
        candidates: tuple = CANDIDATES,
    ):
        self.kind = check_embedding_kind(kind, "perturbation embedding")
        if len(features) < 3:
            raise FactordiffError(
                "perturbation embedding: fewer than three training perturbations with features "
                "to learn codes from"
            )
        self.features = np.asarray(features, np.float64)
        self.blocks = np.asarray(blocks, np.float64)
        self.control = np.zeros(self.blocks.shape[1]) if control is None else np.asarray(control, np.float64)
        self.gram = self.kernel(self.features)
        self.loo_errors = {c: self._loo(*c) for c in candidates}
        self.choice = min(self.loo_errors, key=self.loo_errors.get)
        if self.choice[0] == "ridge":
            self.weights = np.linalg.solve(
                self.gram + self.choice[1] * np.eye(len(self.gram)), self.blocks - self.control
            )

    def _loo(self, family: str, p: float) -> float:
        y, n = self.blocks - self.control, len(self.blocks)
        if family == "ridge":  # closed form: residual / (1 - leverage)
            hat = self.gram @ np.linalg.inv(self.gram + p * np.eye(n))
            return float((((y - hat @ y) / (1.0 - np.diag(hat))[:, None]) ** 2).mean())
        logits = self.gram / p
        np.fill_diagonal(logits, -np.inf)
        w = np.exp(logits - logits.max(1, keepdims=True))
        return float(((w / w.sum(1, keepdims=True) @ self.blocks - self.blocks) ** 2).mean())

    def kernel(self, x: np.ndarray) -> np.ndarray:
        if self.kind == "morgan":
            return tanimoto(x, self.features)
        a = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        b = self.features / np.maximum(np.linalg.norm(self.features, axis=1, keepdims=True), 1e-12)
        return a @ b.T

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Codes (m, D) of perturbations with ``features`` (m, F)."""
        if self.kind == "onehot":
            raise FactordiffError(
                "perturbation embedding onehot: a perturbation no training image had has no code; use "
                "morgan (SMILES) or table:PATH"
            )
        k = self.kernel(np.asarray(features, np.float64))
        if self.choice[0] == "ridge":
            return k @ self.weights + self.control
        w = np.exp((k - k.max(1, keepdims=True)) / self.choice[1])
        return w / w.sum(1, keepdims=True) @ self.blocks
