"""Populations of cells as data (``fit --model set``, after scLDM): each set is the cells of one
field or well of a single-cell table, and ``regenerate`` returns a new population per set, as if
the set had been treated otherwise or run in another batch.

The table is read as a profile table (``profiles:TABLE``: metadata columns, factors and roles,
``--holdout-where``, cleaning and per-plate normalisation), one row per cell; ``sets.column`` names
each row's set. A set autoencoder (``diffusion/sets.py``) turns a set's cells into K latent
tokens, whatever their number and order, and draws any number of cells back from tokens; a
diffusion transformer over the tokens learns them conditioned on per-factor codes of the set's
metadata (``MetadataEmbedder``, classifier-free dropout per factor), through the same
``DiffusionStep``, guidance and samplers as the image and profile models.

Held-out rows reach nothing that learns: the feature moments, the autoencoder, the token scale and
the transformer come from training sets only (a set with held-out cells loses those cells).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from factordiff.checkpoint import (
    atomic_save_tensors,
    atomic_write_json,
    load_modules,
    module_tensors,
)
from factordiff.config import RunConfig
from factordiff.data.profiles import PlateStats, ProfileTable
from factordiff.diffusion.adapters import TimeEmbeddingAdapter
from factordiff.diffusion.condition import Condition
from factordiff.diffusion.guidance import Guidance
from factordiff.diffusion.sampling import invert, sample
from factordiff.diffusion.sets import SetAutoencoder, SetTokenDenoiser
from factordiff.encoders.metadata import MetadataEmbedder, present
from factordiff.errors import FactordiffError
from factordiff.factors import FactorSpec
from factordiff.models.profiles import plate_tensors, read_table_model, table_model_meta

WEIGHTS = "set_model.safetensors"


def set_members(
    table: ProfileTable, column: str | None, rows: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Set name -> its row indices (of ``rows``, default every row), in order of first appearance.
    Refuses a missing column and a factor that changes within a set, naming both."""
    if not column:
        raise FactordiffError(
            "--model set: name the column that says each cell's set, e.g. --set-column Metadata_Well"
        )
    if column not in table.metadata:
        raise FactordiffError(
            f"{table.source}: no column {column!r} (--set-column); expected one of "
            f"{', '.join(table.metadata)}"
        )
    rows = np.arange(len(table.factors)) if rows is None else np.asarray(rows)
    names = np.asarray(table.metadata[column], str)[rows]
    groups: dict[str, list[int]] = {}
    for r, name in zip(rows.tolist(), names.tolist()):
        groups.setdefault(name, []).append(r)
    members = {k: np.asarray(v) for k, v in groups.items()}
    for name, idx in members.items():
        f = table.factors[idx]
        varies = np.flatnonzero((f != f[0]).any(0))
        if len(varies):
            factor = table.spec.factors[int(varies[0])].name
            raise FactordiffError(
                f"{table.source}: set {name!r} ({column}) holds cells of more than one {factor}; every "
                f"factor must be constant within a set"
            )
    return members


class SetModel:
    """The trained bundle: feature moments, the set autoencoder, metadata codes and the diffusion
    transformer over the tokens.

    Args:
        config: the run config (``sets`` section).
        spec: the factors; feature_names: the cell features, in order.
        mean, std: per-feature moments of the training cells (the autoencoder sees (x - mean) / std).
        seen: per factor, which values the training sets have.
        autoencoder, embedder, denoiser: the networks; scale: the training tokens' spread.
        plates: the per-plate normalisation fitted on training rows (None without one).
        table: the fitted table's ``path``, ``fingerprint`` and ``rows``.
    """

    def __init__(
        self,
        config: RunConfig,
        spec: FactorSpec,
        feature_names: list[str],
        mean: torch.Tensor,
        std: torch.Tensor,
        seen: list[np.ndarray],
        autoencoder: SetAutoencoder,
        embedder: MetadataEmbedder,
        denoiser: SetTokenDenoiser,
        scale: float = 1.0,
        plates: PlateStats | None = None,
        table: dict | None = None,
    ):
        self.config, self.spec, self.feature_names = config, spec, list(feature_names)
        self.mean, self.std, self.seen, self.scale = mean, std, seen, float(scale)
        self.autoencoder, self.embedder, self.denoiser = autoencoder, embedder, denoiser
        self.plates, self.table = plates, dict(table or {})
        self.train_sets = 0  # the fit's number of training sets (model/config.json)
        for m in self.modules().values():
            m.eval().requires_grad_(False)

    @classmethod
    def build(cls, config: RunConfig, spec: FactorSpec, feature_names: list[str], **kw) -> "SetModel":
        s, f = config.sets, len(feature_names)
        seen = kw.pop("seen", None) or [np.ones(fa.size, bool) for fa in spec.factors]
        ae = SetAutoencoder(f, s.tokens, s.dim, s.width, s.heads)
        embedder = MetadataEmbedder(spec, s.code_dims, seen=seen)
        adapter = TimeEmbeddingAdapter(len(spec), s.code_dims, s.width, s.width)
        denoiser = SetTokenDenoiser(s.tokens, s.dim, s.width, s.depth, s.heads, adapter)
        mean = kw.pop("mean", None)
        std = kw.pop("std", None)
        return cls(
            config,
            spec,
            feature_names,
            torch.zeros(f) if mean is None else mean,
            torch.ones(f) if std is None else std,
            seen,
            ae,
            embedder,
            denoiser,
            **kw,
        )

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"autoencoder": self.autoencoder, "embedder": self.embedder, "denoiser": self.denoiser}

    def standardize(self, x: np.ndarray) -> torch.Tensor:
        return (torch.as_tensor(x, dtype=torch.float32) - self.mean) / self.std

    def unstandardize(self, z: torch.Tensor) -> np.ndarray:
        return (z * self.std + self.mean).numpy()

    def condition(self, factors: np.ndarray, absent: np.ndarray | None = None) -> Condition:
        """Codes of each set's value indices (S, K); ``absent`` (S, K) leaves factors out."""
        codes = self.embedder(torch.as_tensor(factors, dtype=torch.long))
        mask = present(self.spec, self.seen, factors)
        return Condition(codes, torch.from_numpy(mask & ~absent if absent is not None else mask))

    @torch.no_grad()
    def tokens(self, cells: list[np.ndarray], generator: torch.Generator) -> torch.Tensor:
        """The (scaled) tokens (S, K, D) of each set of cells (features after normalisation): a
        draw of ``sets.cells`` cells of each, as in training."""
        n = self.config.sets.cells
        drawn = [c[torch.randint(0, len(c), (n,), generator=generator).numpy()] for c in cells]
        return self.autoencoder.encode(self.standardize(np.stack(drawn))) / self.scale

    @torch.no_grad()
    def populations(
        self,
        target: np.ndarray,
        sizes: list[int],
        seed: int = 0,
        steps: int | None = None,
        guidance: float | None = None,
        changed: list[int] | None = None,
        source: tuple[list[np.ndarray], np.ndarray] | None = None,
        strength: float = 1.0,
        absent: np.ndarray | None = None,
    ) -> list[np.ndarray]:
        """One population per set: ``sizes[i]`` cells (features after normalisation) under the value
        indices ``target[i]`` (S, K). ``changed``: the factors guided with ``guidance`` (None: the
        run's ``sets.guidance``; the factors that differ from the source's, or every factor).
        ``source`` (cells of each set, their value indices): start from the sets' own tokens,
        DDIM-inverted under their own codes to ``strength`` of the schedule (``strength`` 1 with no
        source: fresh noise)."""
        s, dn = self.config.sets, self.config.denoiser
        steps = steps or s.sample_steps
        gen = torch.Generator().manual_seed(seed)
        if source is not None:
            cells, factors = source
            x_T = invert(self.denoiser, self.tokens(cells, gen), self.condition(factors), dn, steps, strength)
            changed = changed if changed is not None else np.flatnonzero((factors != target).any(0)).tolist()
        else:
            x_T = torch.randn(len(target), s.tokens, s.dim, generator=gen)
            strength, changed = 1.0, changed if changed is not None else list(range(len(self.spec)))
        weight = s.guidance if guidance is None else guidance
        g = Guidance(factors={k: weight for k in changed}) if changed and weight != 1.0 else None
        toks = sample(self.denoiser, x_T, self.condition(target, absent), dn, steps, g, strength) * self.scale
        return [
            self.unstandardize(self.autoencoder.decode(toks[i : i + 1], int(n), gen)[0])
            for i, n in enumerate(sizes)
        ]

    # --- disk ------------------------------------------------------------------------------
    def save(self, folder: Path, extra: dict | None = None) -> None:
        folder = Path(folder)
        atomic_save_tensors(
            {
                **module_tensors(self.modules()),
                "mean": self.mean,
                "std": self.std,
                **plate_tensors(self.plates),
            },
            folder / WEIGHTS,
        )
        meta = {**table_model_meta(self, "sets"), "token_scale": self.scale, **(extra or {})}
        atomic_write_json(folder / "config.json", meta)

    @classmethod
    def load(cls, folder: Path) -> "SetModel":
        folder = Path(folder)
        meta, config, spec, names, seen, t, plates = read_table_model(folder, WEIGHTS)
        try:
            scale = float(meta["token_scale"])
        except (KeyError, TypeError, ValueError) as e:
            raise FactordiffError(f"{folder / 'config.json'}: missing or malformed entry {e}") from None
        model = cls.build(
            config,
            spec,
            names,
            mean=t["mean"],
            std=t["std"],
            seen=seen,
            scale=scale,
            plates=plates,
            table=meta.get("table"),
        )
        load_modules(model.modules(), t, str(folder / WEIGHTS))
        model.train_sets = int(meta.get("train_sets", 0))
        return model
