"""Profiles as data: a diffusion model over morphological profiles, conditioned on per-factor codes
of their metadata, and ``regenerate``: these rows as if run in another batch or treated otherwise.

The stages and interfaces are the images' (codes per factor, the zero-initialised
``TimeEmbeddingAdapter``, the one training loop, DDIM sampling and inversion, per-factor guidance);
what changes is the denoiser (``MLPDenoiser`` over the standardised profile) and the codes
(``MetadataEmbedder``: the metadata are known for every row, so codes are learned from them with
the denoiser).

Held-out rows (``--holdout-where``) reach no statistic: per-plate normalisation, the feature
means and spreads, the seen-value masks and the denoiser all come from training rows only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from factordiff.checkpoint import (
    atomic_save_tensors,
    atomic_write_json,
    load_modules,
    load_tensors,
    model_meta,
    module_tensors,
    read_json,
)
from factordiff.config import RunConfig, SplitConfig, from_dict
from factordiff.data.profiles import (
    PlateStats,
    ProfileTable,
    fingerprint,
    fit_plates,
    read_profiles,
    read_profiles_like,
    select_features,
)
from factordiff.data.sources import PROFILES
from factordiff.data.splits import Split, make_split, select
from factordiff.diffusion.adapters import TimeEmbeddingAdapter
from factordiff.diffusion.condition import Condition
from factordiff.diffusion.guidance import Guidance
from factordiff.diffusion.mlp import MLPDenoiser
from factordiff.diffusion.sampling import invert, noise_to, sample
from factordiff.encoders.metadata import MetadataEmbedder, one_hot, present
from factordiff.encoders.perturbation import PerturbationEmbedder, perturbation_features
from factordiff.errors import FactordiffError
from factordiff.factors import FactorSpec, continuous, parse_pairs, short_name


def plate_tensors(plates: PlateStats | None) -> dict[str, torch.Tensor]:
    """The per-plate statistics as a model's weights file keeps them (none without)."""
    return {} if plates is None else {k: torch.from_numpy(v) for k, v in plates.saved()[1].items()}


def table_model_meta(model, kind: str) -> dict:
    """The ``model/config.json`` entries a model of table rows (``ProfileModel``, ``SetModel``) keeps."""
    return {
        **model_meta(),
        "kind": kind,
        "run": model.config.to_json(),
        "factors": model.spec.to_json(),
        "features": model.feature_names,
        "seen": [s.tolist() for s in model.seen],
        "plates": None if model.plates is None else model.plates.saved()[0],
        "table": model.table,
    }


def read_table_model(folder: Path, weights: str) -> tuple:
    """What ``table_model_meta`` wrote, and the weights: (meta, config, spec, feature names, seen,
    tensors, plates); a missing or malformed entry is one line naming the file."""
    meta = read_json(folder / "config.json")
    try:
        config = from_dict(RunConfig, meta["run"], f"{folder / 'config.json'}:run")
        spec, names = FactorSpec.from_json(meta["factors"]), list(meta["features"])
        seen = [np.asarray(s, bool) for s in meta["seen"]]
        t = load_tensors(folder / weights)
        plates = PlateStats.restore(meta.get("plates"), t)
    except (KeyError, TypeError, ValueError) as e:
        raise FactordiffError(f"{folder / 'config.json'}: missing or malformed entry {e}") from None
    return meta, config, spec, names, seen, t, plates


def roles_of(cfg: RunConfig) -> dict[str, str]:
    return dict(parse_pairs(p, "profiles.roles")[0] for p in cfg.profiles.roles)


@dataclass
class ProfileData:
    """A profile table with its split and the features the model works on (normalised as configured).

    ``plates``: the per-plate statistics (None without normalisation); ``notes``: lines to tell the
    user (a table changed since the fit, rows dropped for missing values)."""

    table: ProfileTable
    split: Split
    train: np.ndarray  # bool mask of training rows
    features: np.ndarray  # (N, F) after per-plate normalisation
    normalization: dict
    plates: PlateStats | None = None
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # per stage of ``prepare_profiles``


def _normalization(plates: PlateStats | None) -> dict:
    if plates is None:
        return {"normalize": "none"}
    return {"normalize": plates.mode, "plate_column": plates.column, "plates": len(plates.plates)}


def check_conditions(table: ProfileTable, where: list[str], what: str = "--holdout-where") -> None:
    """Each condition must match some row: values that each exist but never together are refused."""
    for text in where:
        if not select(table.spec, table.factors, [text], table.metadata, what).any():
            raise FactordiffError(
                f"{what} {text!r}: no row of {table.source} matches (its values never occur together)"
            )


def prepare_profiles(cfg: RunConfig) -> ProfileData:
    """For a fit: read the table named by ``cfg.data.source`` (``profiles:FILE``), split it, decide
    its feature columns and fit its plate statistics on the training rows only, and normalise."""
    p = cfg.profiles
    start = time.monotonic()
    table = read_profiles(cfg.data.source[len(PROFILES) :], cfg.data.factors, roles_of(cfg))
    table.spec, table.factors = continuous(table.spec, table.factors, cfg.data.continuous)
    seconds = {"read": time.monotonic() - start}
    start = time.monotonic()
    split = make_split(table.spec, cfg.split)
    check_conditions(table, list(cfg.split.where))
    train = ~split.heldout(table.factors)
    if not train.any():
        raise FactordiffError(f"split {split.description}: holds out every row; nothing left to train on")
    names, cleaning = select_features(table, train, p.max_missing, tuple(p.feature_select))
    table.cleaning.update(cleaning)
    table, train = table.keep(names, train, in_place=True)
    if not train.any():
        raise FactordiffError(f"{table.source}: every training row misses a feature value")
    controls = control_rows(table, p.controls)
    if p.moa:
        metadata_column(table, p.moa, "profiles.moa")
    if p.normalize == "controls" and controls is None:
        raise FactordiffError(
            "--normalize controls needs profiles.controls, e.g. --controls Metadata_Compound=DMSO"
        )
    seconds["clean"] = time.monotonic() - start
    start = time.monotonic()
    plates = fit_plates(table, p.normalize, train, controls, p.plate_column)
    features = plates.apply(table) if plates else table.features
    seconds["normalize"] = time.monotonic() - start
    return ProfileData(table, split, train, features, _normalization(plates), plates, seconds=seconds)


def prepare_run_profiles(
    cfg: RunConfig, model: "ProfileModel", path: Path | str | None = None
) -> ProfileData:
    """For a trained run: its table (or the table ``path``: rows the fit never saw) read in the
    run's layout, factor values and features matched by name (``read_profiles_like``), and
    normalised with the plate statistics the fit saved; a plate the fit never saw is normalised to
    its own rows (control rows). A table that changed since the fit is said in ``notes``."""
    p = cfg.profiles
    source = Path(path) if path is not None else Path(cfg.data.source[len(PROFILES) :])
    table = read_profiles_like(source, model.spec, model.feature_names, strict=path is not None)
    notes = []
    if path is None and model.table.get("fingerprint") and fingerprint(source) != model.table["fingerprint"]:
        notes.append(
            f"{source}: changed since the fit; factor values and features are matched by name "
            f"({model.table.get('rows')} rows then, {table.cleaning['rows_read']} now)"
        )
    if table.cleaning["rows_dropped_missing"]:
        notes.append(f"{source}: {table.cleaning['rows_dropped_missing']} rows miss a feature value; skipped")
    split = make_split(model.spec, cfg.split) if path is None else make_split(model.spec, SplitConfig())
    train = ~split.heldout(table.factors) & (table.factors >= 0).all(1)
    plates = model.plates
    if plates is not None:
        known = plates.index(table.metadata[plates.column]) >= 0 if plates.column in table.metadata else None
        if known is None:
            raise FactordiffError(f"{source}: no column {plates.column!r} for per-plate normalisation")
        if not known.all():
            own = table.subset(~known)
            controls = control_rows(own, p.controls) if p.normalize == "controls" else None
            every = np.ones(len(own), bool)
            plates = plates.merged(fit_plates(own, p.normalize, every, controls, plates.column))
    features = plates.apply(table) if plates else table.features
    return ProfileData(table, split, train, features, _normalization(plates), plates, notes)


def control_rows(table: ProfileTable, controls: str | None) -> np.ndarray | None:
    """Bool mask of the control rows named by ``"COLUMN=VALUE"`` (any metadata column); a condition
    that no row has is refused."""
    if not controls:
        return None
    name, value = parse_pairs(controls, "profiles.controls")[0]
    column = metadata_column(table, name, "profiles.controls")
    mask = table.metadata[column] == value
    if not mask.any():
        raise FactordiffError(f"profiles.controls: no row has {column}={value}")
    return mask


def perturbation_factor(cfg: RunConfig, spec: FactorSpec) -> tuple[int, str]:
    """The perturbation factor (the column that ``profiles.controls`` names) and its control value."""
    name, value = parse_pairs(cfg.profiles.controls, "profiles.controls")[0]
    try:
        return spec.resolve(name), str(value)
    except FactordiffError as e:
        raise FactordiffError(f"profiles.controls: the perturbation embedding codes a factor: {e}") from None


def perturbation_table(cfg: RunConfig, table: ProfileTable) -> np.ndarray:
    """Features of the perturbation factor's values for ``profiles.perturbation_embedding``: Morgan
    fingerprints of each value's SMILES (from the ``profiles.smiles`` column, or the value itself),
    or rows of a user's embedding table. Controls get zeros (their code is learned on its own)."""
    p = cfg.profiles
    k, control = perturbation_factor(cfg, table.spec)
    values = [str(v) for v in table.spec.factors[k].values]
    smiles = None
    if p.perturbation_embedding == "morgan" and p.smiles:
        column = np.asarray(table.metadata[metadata_column(table, p.smiles, "profiles.smiles")]).astype(str)
        smiles = {}
        for v, name in enumerate(values):
            found = sorted(set(column[table.factors[:, k] == v]) - {"", "nan", "None"})
            if name != control and len(found) != 1:
                raise FactordiffError(
                    f"profiles.smiles: {table.spec.factors[k].name}={name} has {len(found) or 'no'} SMILES "
                    f"in column {p.smiles!r}; expected one"
                )
            if found:
                smiles[name] = found[0]
    return perturbation_features(p.perturbation_embedding, values, {control}, smiles, p.fingerprint_bits)


def metadata_column(table: ProfileTable, name: str, where: str) -> str:
    """A metadata column by name, also without its ``Metadata_`` prefix and in any case."""
    if name in table.metadata:
        return name
    short = {short_name(c): c for c in table.metadata}
    if short_name(name) in short:
        return short[short_name(name)]
    raise FactordiffError(
        f"{where}: unknown column {name!r}; metadata columns are {', '.join(list(table.metadata)[:15])}"
    )


class ProfileModel:
    """The trained bundle: feature standardisation, metadata codes, the MLP denoiser.

    Args:
        config: the run config.
        spec: the factors.
        feature_names: the features, in order.
        mean, std: per-feature statistics of the training rows (the denoiser sees (x - mean) / std).
        seen: per factor, which values the training rows have.
        embedder: value indices -> codes.
        denoiser: the conditioned MLP.
        additive: with ``profiles.residual = "ridge"``, the ridge model's weights (P, F) and
            intercept (F,) in standardised units; the denoiser then works on what it leaves.
        plates: the per-plate normalisation fitted on training rows (None without one).
        table: the fitted table's ``path``, ``fingerprint`` (``data.profiles.fingerprint``) and ``rows``.
    """

    def __init__(
        self,
        config: RunConfig,
        spec: FactorSpec,
        feature_names: list[str],
        mean: torch.Tensor,
        std: torch.Tensor,
        seen: list[np.ndarray],
        embedder: MetadataEmbedder,
        denoiser: MLPDenoiser,
        additive: tuple[torch.Tensor, torch.Tensor] | None = None,
        plates: PlateStats | None = None,
        table: dict | None = None,
    ):
        self.config, self.spec, self.feature_names = config, spec, list(feature_names)
        self.plates, self.table = plates, dict(table or {})
        self.mean, self.std, self.seen = mean, std, seen
        self.embedder, self.denoiser, self.additive = embedder, denoiser, additive
        for m in (embedder, denoiser):
            m.eval().requires_grad_(False)

    @classmethod
    def build(
        cls,
        config: RunConfig,
        spec: FactorSpec,
        feature_names: list[str],
        mean=None,
        std=None,
        seen=None,
        additive=None,
        perturbation: np.ndarray | None = None,
        plates: PlateStats | None = None,
        table: dict | None = None,
    ) -> "ProfileModel":
        """``perturbation``: the features of the perturbation factor's values
        (``profiles.perturbation_embedding`` other than onehot), from ``perturbation_table``."""
        p, f = config.profiles, len(feature_names)
        pert = None
        if perturbation is not None:
            k, control = perturbation_factor(config, spec)
            is_control = np.asarray([str(v) == control for v in spec.factors[k].values])
            pert = (k, PerturbationEmbedder(perturbation, is_control, p.code_dims))
        seen = seen if seen is not None else [np.ones(fa.size, bool) for fa in spec.factors]
        embedder = MetadataEmbedder(spec, p.code_dims, perturbation=pert, seen=seen)
        adapter = TimeEmbeddingAdapter(len(spec), p.code_dims, p.width, config.denoiser.adapter_hidden)
        denoiser = MLPDenoiser(f, p.width, p.depth, adapter)
        mean = torch.zeros(f) if mean is None else mean
        std = torch.ones(f) if std is None else std
        return cls(config, spec, feature_names, mean, std, seen, embedder, denoiser, additive, plates, table)

    def standardize(self, x: np.ndarray) -> torch.Tensor:
        return (torch.as_tensor(x, dtype=torch.float32) - self.mean) / self.std

    def unstandardize(self, z: torch.Tensor) -> np.ndarray:
        return (z * self.std + self.mean).numpy()

    def prior(self, factors: np.ndarray) -> torch.Tensor | float:
        """The additive model's prediction for value indices (N, K) (0 without one)."""
        if self.additive is None:
            return 0.0
        w, b = self.additive
        return torch.from_numpy(one_hot(self.spec, factors)) @ w + b

    def to_space(self, x: np.ndarray, factors: np.ndarray) -> torch.Tensor:
        """Profiles -> what the denoiser models: standardised, less the additive prediction."""
        return self.standardize(x) - self.prior(factors)

    def from_space(self, z: torch.Tensor, factors: np.ndarray) -> np.ndarray:
        return self.unstandardize(z + self.prior(factors))

    def condition(self, factors: np.ndarray, absent: np.ndarray | None = None) -> Condition:
        """Codes of value indices (N, K); ``absent`` (N, K) bool marks factors to leave out (their
        learned null code), as a value no training row had is left out."""
        codes = self.embedder(torch.as_tensor(factors, dtype=torch.long))
        mask = present(self.spec, self.seen, factors)
        return Condition(codes, torch.from_numpy(mask & ~absent if absent is not None else mask))

    def guidance(self, changed: list[int], weight: float | None = None) -> Guidance | None:
        """Guidance on the ``changed`` factors: ``weight`` on each, or (None) the run's weight for
        each factor's role (``profiles.guidance_biological`` / ``guidance_technical``)."""
        p = self.config.profiles
        w = {
            k: weight
            if weight is not None
            else p.guidance_technical
            if self.spec.factors[k].role == "technical"
            else p.guidance_biological
            for k in changed
        }
        return Guidance(factors=w) if any(v != 1.0 for v in w.values()) else None

    @torch.no_grad()
    def invert(
        self, x: np.ndarray, factors: np.ndarray, steps: int | None = None, strength: float = 1.0
    ) -> torch.Tensor:
        steps = steps or self.config.profiles.sample_steps
        return invert(
            self.denoiser,
            self.to_space(x, factors),
            self.condition(factors),
            self.config.denoiser,
            steps,
            strength,
        )

    @torch.no_grad()
    def noised(
        self, x: np.ndarray, factors: np.ndarray, steps: int, strength: float, generator: torch.Generator
    ) -> torch.Tensor:
        """Rows noised to the start of a ``steps``-step chain at ``strength`` (``noise_to``)."""
        return noise_to(self.to_space(x, factors), self.config.denoiser, steps, strength, generator)

    @torch.no_grad()
    def generate(
        self,
        x_T: torch.Tensor,
        factors: np.ndarray,
        changed: list[int] | None = None,
        steps: int | None = None,
        strength: float = 1.0,
        guidance: float | None = None,
        absent: np.ndarray | None = None,
    ) -> np.ndarray:
        steps = steps or self.config.profiles.sample_steps
        z = sample(
            self.denoiser,
            x_T,
            self.condition(factors, absent),
            self.config.denoiser,
            steps,
            self.guidance(changed or [], guidance),
            strength,
        )
        return self.from_space(z, factors)

    @torch.no_grad()
    def regenerate(
        self,
        x: np.ndarray,
        factors: np.ndarray,
        target: np.ndarray,
        steps: int | None = None,
        desc: str | None = None,
        strength: float = 1.0,
        guidance: float | None = None,
        residual: bool = False,
        x_T: torch.Tensor | None = None,
        absent: np.ndarray | None = None,
        start: str | None = None,
        seed: int = 0,
    ) -> np.ndarray:
        """Rows ``x`` with factor values ``factors`` (N, K), as they would look with ``target`` (N, K):
        DDIM inversion under the source codes to t = ``strength`` T (or from their ``x_T`` of that
        strength), regeneration under the target codes, guidance on the changed factors
        (``guidance``: one weight; None: the run's by role). ``residual``: the source plus the
        change that the model makes, G(x_T, target) - G(x_T, factors), as image edits do.
        ``absent`` (N, K): target factors generated absent (a plate nested in a changed batch).
        ``start``: ``source`` (the inversion) or ``noise`` (fresh noise seeded by ``seed``); None:
        the run's ``profiles.start``; ignored when ``x_T`` is given.
        ``desc`` shows a progress bar over chunks of 512 rows."""
        from tqdm.auto import tqdm

        start = start or self.config.profiles.start
        if x_T is None and start == "noise":
            steps = steps or self.config.profiles.sample_steps
            x_T = self.noised(x, factors, steps, strength, torch.Generator().manual_seed(seed))

        changed = sorted(set(np.flatnonzero((factors != target).any(0)).tolist()))
        out = []
        for i in tqdm(range(0, len(x), 512), desc=desc, disable=desc is None, unit="chunk"):
            part = slice(i, i + 512)
            start = self.invert(x[part], factors[part], steps, strength) if x_T is None else x_T[part]
            gone = None if absent is None else absent[part]
            new = self.generate(start, target[part], changed, steps, strength, guidance, gone)
            if residual:
                new = x[part] + new - self.generate(start, factors[part], changed, steps, strength, guidance)
            out.append(new)
        return np.concatenate(out) if out else np.zeros((0, len(self.feature_names)), np.float32)

    @torch.no_grad()
    def sample(self, factors: np.ndarray, seed: int = 0, steps: int | None = None) -> np.ndarray:
        """New rows from noise for the value indices ``factors`` (N, K)."""
        gen = torch.Generator().manual_seed(seed)
        x_T = torch.randn(len(factors), len(self.feature_names), generator=gen)
        return self.generate(x_T, factors, list(range(len(self.spec))), steps)

    # --- disk ------------------------------------------------------------------------------
    def save(self, folder: Path, extra: dict | None = None) -> None:
        folder = Path(folder)
        atomic_save_tensors(
            {
                **module_tensors({"embedder": self.embedder, "denoiser": self.denoiser}),
                "mean": self.mean,
                "std": self.std,
                **({"additive.w": self.additive[0], "additive.b": self.additive[1]} if self.additive else {}),
                **plate_tensors(self.plates),
            },
            folder / "profile_model.safetensors",
        )
        atomic_write_json(folder / "config.json", {**table_model_meta(self, "profiles"), **(extra or {})})

    @classmethod
    def load(cls, folder: Path) -> "ProfileModel":
        folder = Path(folder)
        meta, config, spec, names, seen, t, plates = read_table_model(folder, "profile_model.safetensors")
        additive = (t["additive.w"], t["additive.b"]) if "additive.w" in t else None
        if (additive is None) != (config.profiles.residual == "none"):
            raise FactordiffError(
                f"{folder / 'profile_model.safetensors'}: the additive model's weights do not match "
                f"profiles.residual = {config.profiles.residual!r}"
            )
        features = t.get("embedder.perturbation.features")
        if (features is None) != (config.profiles.perturbation_embedding == "onehot"):
            raise FactordiffError(
                f"{folder / 'profile_model.safetensors'}: the perturbation embedder's features do not match "
                f"profiles.perturbation_embedding = {config.profiles.perturbation_embedding!r}"
            )
        model = cls.build(
            config,
            spec,
            names,
            t["mean"],
            t["std"],
            seen,
            additive,
            None if features is None else features.numpy(),
            plates,
            meta.get("table"),
        )
        load_modules(
            {"embedder": model.embedder, "denoiser": model.denoiser},
            t,
            str(folder / "profile_model.safetensors"),
        )
        return model
