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

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from factordiff.checkpoint import (
    atomic_save_tensors,
    atomic_write_json,
    atomic_write_text,
    load_tensors,
    read_json,
)
from factordiff.config import RunConfig, from_dict
from factordiff.data.profiles import ProfileTable, normalize_plates, read_profiles
from factordiff.data.splits import Split, make_split
from factordiff.diffusion.adapters import TimeEmbeddingAdapter
from factordiff.diffusion.condition import Condition
from factordiff.diffusion.guidance import Guidance
from factordiff.diffusion.mlp import MLPDenoiser
from factordiff.diffusion.objective import DiffusionStep
from factordiff.diffusion.sampling import invert, sample
from factordiff.encoders.metadata import MetadataEmbedder, fit_additive, one_hot, present, seen_values
from factordiff.encoders.perturbation import PerturbationEmbedder
from factordiff.errors import FactordiffError
from factordiff.factors import FactorSpec, parse_pairs, short_name
from factordiff.train import ArrayBatches, LoopOptions, Stage, run_stage

PREFIX = "profiles:"
SOURCE_ROW = "Metadata_source_row"
EDIT = "Metadata_regenerated"


def is_profile_source(source: str) -> bool:
    return source.startswith(PREFIX)


def roles_of(cfg: RunConfig) -> dict[str, str]:
    return dict(parse_pairs(p, "profiles.roles")[0] for p in cfg.profiles.roles)


@dataclass
class ProfileData:
    """A profile table with its split and the features the model works on (normalised as configured)."""

    table: ProfileTable
    split: Split
    train: np.ndarray  # bool mask of training rows
    features: np.ndarray  # (N, F) after per-plate normalisation
    normalization: dict


def prepare_profiles(cfg: RunConfig) -> ProfileData:
    """Read, clean, split and normalise the table named by ``cfg.data.source`` (``profiles:FILE``)."""
    p = cfg.profiles
    table = read_profiles(cfg.data.source[len(PREFIX) :], cfg.data.factors, roles_of(cfg), p.max_missing)
    split = make_split(table.spec, cfg.split)
    train = ~split.heldout(table.factors)
    if not train.any():
        raise FactordiffError(f"split {split.description}: holds out every row; nothing left to train on")
    controls = control_rows(table, p.controls) if p.normalize == "controls" else None
    if p.normalize == "controls" and controls is None:
        raise FactordiffError(
            "--normalize controls needs profiles.controls, e.g. --controls Metadata_Compound=DMSO"
        )
    features, info = normalize_plates(table, p.normalize, train, controls, p.plate_column)
    return ProfileData(table, split, train, features, info)


def control_rows(table: ProfileTable, controls: str | None) -> np.ndarray | None:
    """Bool mask of the control rows named by ``"COLUMN=VALUE"`` (any metadata column)."""
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
    from factordiff.encoders.perturbation import perturbation_features

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
                    f"profiles.smiles: {table.spec.factors[k].name}={name} has {len(found) or 'no'} SMILES in column {p.smiles!r}; expected one"
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
    ):
        self.config, self.spec, self.feature_names = config, spec, list(feature_names)
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
    ) -> "ProfileModel":
        """``perturbation``: the features of the perturbation factor's values (``profiles.perturbation_embedding``
        other than onehot), from ``perturbation_table``."""
        p, f = config.profiles, len(feature_names)
        pert = None
        if perturbation is not None:
            k, control = perturbation_factor(config, spec)
            is_control = np.asarray([str(v) == control for v in spec.factors[k].values])
            pert = (k, PerturbationEmbedder(perturbation, is_control, p.code_dims))
        embedder = MetadataEmbedder(spec, p.code_dims, perturbation=pert)
        adapter = TimeEmbeddingAdapter(len(spec), p.code_dims, p.width, config.denoiser.adapter_hidden)
        denoiser = MLPDenoiser(f, p.width, p.depth, adapter)
        mean = torch.zeros(f) if mean is None else mean
        std = torch.ones(f) if std is None else std
        seen = seen if seen is not None else [np.ones(fa.size, bool) for fa in spec.factors]
        return cls(config, spec, feature_names, mean, std, seen, embedder, denoiser, additive)

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

    def condition(self, factors: np.ndarray) -> Condition:
        codes = self.embedder(torch.as_tensor(factors, dtype=torch.long))
        return Condition(codes, torch.from_numpy(present(self.spec, self.seen, factors)))

    def guidance(self, changed: list[int]) -> Guidance | None:
        p = self.config.profiles
        w = {
            k: p.guidance_technical if self.spec.factors[k].role == "technical" else p.guidance_biological
            for k in changed
        }
        return Guidance(factors=w) if any(v != 1.0 for v in w.values()) else None

    @torch.no_grad()
    def invert(self, x: np.ndarray, factors: np.ndarray, steps: int | None = None) -> torch.Tensor:
        steps = steps or self.config.profiles.sample_steps
        return invert(
            self.denoiser, self.to_space(x, factors), self.condition(factors), self.config.denoiser, steps
        )

    @torch.no_grad()
    def generate(
        self,
        x_T: torch.Tensor,
        factors: np.ndarray,
        changed: list[int] | None = None,
        steps: int | None = None,
    ) -> np.ndarray:
        steps = steps or self.config.profiles.sample_steps
        z = sample(
            self.denoiser,
            x_T,
            self.condition(factors),
            self.config.denoiser,
            steps,
            self.guidance(changed or []),
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
    ) -> np.ndarray:
        """Rows ``x`` with factor values ``factors`` (N, K), as they would look with ``target`` (N, K):
        DDIM inversion under the source codes, regeneration under the target codes, guidance on the
        changed factors. ``desc`` shows a progress bar over chunks of 512 rows."""
        from tqdm.auto import tqdm

        changed = sorted(set(np.flatnonzero((factors != target).any(0)).tolist()))
        out = []
        for i in tqdm(range(0, len(x), 512), desc=desc, disable=desc is None, unit="chunk"):
            x_T = self.invert(x[i : i + 512], factors[i : i + 512], steps)
            out.append(self.generate(x_T, target[i : i + 512], changed, steps))
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
                **{f"embedder.{k}": v for k, v in self.embedder.state_dict().items()},
                **{f"denoiser.{k}": v for k, v in self.denoiser.state_dict().items()},
                "mean": self.mean,
                "std": self.std,
                **({"additive.w": self.additive[0], "additive.b": self.additive[1]} if self.additive else {}),
            },
            folder / "profile_model.safetensors",
        )
        meta = {
            "kind": "profiles",
            "run": self.config.to_json(),
            "factors": self.spec.to_json(),
            "features": self.feature_names,
            "seen": [s.tolist() for s in self.seen],
            **(extra or {}),
        }
        atomic_write_json(folder / "config.json", meta)

    @classmethod
    def load(cls, folder: Path) -> "ProfileModel":
        folder = Path(folder)
        meta = read_json(folder / "config.json")
        try:
            config = from_dict(RunConfig, meta["run"], f"{folder / 'config.json'}:run")
            spec, names = FactorSpec.from_json(meta["factors"]), list(meta["features"])
            seen = [np.asarray(s, bool) for s in meta["seen"]]
        except (KeyError, TypeError) as e:
            raise FactordiffError(f"{folder / 'config.json'}: missing or malformed entry {e}") from None
        t = load_tensors(folder / "profile_model.safetensors")
        additive = (t["additive.w"], t["additive.b"]) if "additive.w" in t else None
        if (additive is None) != (config.profiles.residual == "none"):
            raise FactordiffError(
                f"{folder / 'profile_model.safetensors'}: the additive model's weights do not match profiles.residual = {config.profiles.residual!r}"
            )
        features = t.get("embedder.perturbation.features")
        if (features is None) != (config.profiles.perturbation_embedding == "onehot"):
            raise FactordiffError(
                f"{folder / 'profile_model.safetensors'}: the perturbation embedder's features do not match profiles.perturbation_embedding = {config.profiles.perturbation_embedding!r}"
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
        )
        for name, m in (("embedder", model.embedder), ("denoiser", model.denoiser)):
            state = {k[len(name) + 1 :]: v for k, v in t.items() if k.startswith(name + ".")}
            try:
                m.load_state_dict(state, strict=True)
            except RuntimeError as e:
                raise FactordiffError(
                    f"{folder / 'profile_model.safetensors'}: weights do not fit the config ({str(e).splitlines()[0][:120]})"
                ) from None
        return model


def is_profile_run(run: Path) -> bool:
    path = Path(run) / "model" / "config.json"
    return path.is_file() and read_json(path).get("kind") == "profiles"


def fit_profiles(
    cfg: RunConfig, out: Path, resume: bool = False, progress: bool = True, data: ProfileData | None = None
) -> tuple[ProfileModel, ProfileData]:
    """Train the profile model into run folder ``out`` (one stage: codes + denoiser, jointly)."""
    from factordiff.fit import _check_run_folder, _options

    run = Path(out)
    resume = _check_run_folder(cfg, run, resume)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    data = data or prepare_profiles(cfg)
    perturbation = (
        perturbation_table(cfg, data.table) if cfg.profiles.perturbation_embedding != "onehot" else None
    )  # bad input stops before the folder
    run.mkdir(parents=True, exist_ok=True)
    if not resume:
        cfg.save(run / "run_config.json")
        atomic_write_json(
            run / "split.json",
            {
                **data.split.to_json(),
                "heldout_rows": int((~data.train).sum()),
                "train_rows": int(data.train.sum()),
            },
        )
    x = data.features[data.train]
    mean, std = torch.from_numpy(x.mean(0)), torch.from_numpy(x.std(0))
    std = torch.where(std > 0, std, torch.ones_like(std))
    torch.manual_seed(cfg.train.seed)
    spec = data.table.spec
    p = cfg.profiles
    ftrain = data.table.factors[data.train]
    additive = (
        fit_additive(spec, ftrain, ((torch.from_numpy(x) - mean) / std).numpy())
        if p.residual == "ridge"
        else None
    )
    seen = seen_values(spec, ftrain)
    if perturbation is not None:
        seen[perturbation_factor(cfg, spec)[0]][:] = True  # every value has features, so a code
    model = ProfileModel.build(cfg, spec, data.table.feature_names, mean, std, seen, additive, perturbation)
    model.embedder.train().requires_grad_(True)
    model.denoiser.train().requires_grad_(True)
    step = DiffusionStep(
        model.denoiser, replace(cfg.denoiser, cond_dropout=p.cond_dropout), embedder=model.embedder
    )
    batches = ArrayBatches(
        {"x": model.to_space(x, ftrain), "factors": torch.from_numpy(ftrain)},
        min(p.batch_size, len(x)),
        cfg.train.seed + 2,
    )
    seconds = None if cfg.train.minutes is None else 60 * cfg.train.minutes
    trainable = list(model.embedder.parameters()) + list(model.denoiser.parameters())
    stage = Stage(
        "profiles",
        step,
        trainable,
        batches,
        p.steps,
        p.lr,
        seconds,
        ema_decay=cfg.denoiser.ema_decay,
        warmup=200,
        images_per_step=batches.batch_size,
    )
    opts: LoopOptions = _options(cfg, run, resume, progress)
    run_stage(stage, opts)
    model.embedder.eval().requires_grad_(False)
    model.denoiser.eval().requires_grad_(False)
    atomic_write_text(
        run / "train_log.jsonl", "".join(json.dumps({"stage": "profiles", **row}) + "\n" for row in stage.log)
    )
    model.save(
        run / "model",
        extra={
            "split": data.split.to_json(),
            "train_rows": int(data.train.sum()),
            "cleaning": data.table.cleaning,
            "normalization": data.normalization,
        },
    )
    return model, data


def load_profile_run(run: Path) -> tuple[RunConfig, ProfileModel]:
    from factordiff.evaluate.suite import read_run_config

    return read_run_config(run), ProfileModel.load(Path(run) / "model")


def select_rows(table: ProfileTable, where: list[str]) -> np.ndarray:
    """Bool mask of the rows matching every pair of any one ``--where`` condition (any metadata
    column; values compared as text, numbers also by value)."""
    if not where:
        return np.ones(len(table), bool)
    hit = np.zeros(len(table), bool)
    for text in where:
        m = np.ones(len(table), bool)
        for name, value in parse_pairs(text, "--where"):
            column = metadata_column(table, name, "--where")
            col = table.metadata[column]
            if column in table.spec.names:
                k = table.spec.position(column)
                try:
                    m &= table.factors[:, k] == table.spec.factors[k].index(value)
                except FactordiffError as e:
                    raise FactordiffError(f"--where {text!r}: {e}") from None
            else:
                if not (col == value).any():
                    raise FactordiffError(f"--where {text!r}: no row has {column}={value}")
                m &= col == value
        hit |= m
    return hit


def parse_set(spec: FactorSpec, text: list[str]) -> dict[int, int]:
    """``--set "F=V,G=W"`` (repeatable) -> {factor position: value index}; unknown factors or
    values raise naming them."""
    out: dict[int, int] = {}
    for t in text:
        for name, value in parse_pairs(t, "--set"):
            try:
                k = spec.resolve(name)
                out[k] = spec.factors[k].index(value)
            except FactordiffError as e:
                raise FactordiffError(f"--set {name}={value}: {e}") from None
    if not out:
        raise FactordiffError("--set: expected at least one FACTOR=VALUE")
    return out


def regenerate_table(
    run: Path, where: list[str], sets: list[str], out: Path, steps: int | None = None
) -> dict:
    """``factordiff regenerate``: the rows of the run's table matching ``where``, regenerated with
    the factors named in ``sets`` changed, written to ``out`` (CSV): the input's metadata columns
    (the changed factors with their new values), its feature columns, the source row
    (``Metadata_source_row``, 0-based in the input file) and the edit (``Metadata_regenerated``)."""
    out = Path(out)
    if not out.name.lower().endswith((".csv", ".csv.gz")):
        raise FactordiffError(f"--out {out}: expected a .csv or .csv.gz path")
    cfg, model = load_profile_run(run)
    data = prepare_profiles(cfg)
    table = data.table
    target_values = parse_set(model.spec, sets)
    rows = np.flatnonzero(select_rows(table, where))
    if not len(rows):
        raise FactordiffError(f"--where {' / '.join(where)}: no row of {table.source} matches")
    factors = table.factors[rows]
    target = factors.copy()
    for k, v in target_values.items():
        target[:, k] = v
    unseen = [
        f"{model.spec.factors[k].name}={model.spec.factors[k].values[v]}"
        for k, v in target_values.items()
        if model.spec.factors[k].kind != "ordinal" and not model.seen[k][v]
    ]
    x = model.regenerate(data.features[rows], factors, target, steps, desc="regenerating")
    write_regenerated(
        out,
        table,
        rows,
        target,
        x,
        ", ".join(
            f"{model.spec.factors[k].name}={model.spec.factors[k].values[v]}"
            for k, v in target_values.items()
        ),
    )
    return {"rows": int(len(rows)), "out": str(out), "unseen_values": unseen}


def write_regenerated(
    out: Path, table: ProfileTable, rows: np.ndarray, target: np.ndarray, x: np.ndarray, edit: str
) -> None:
    import pandas as pd

    meta = {c: v[rows].copy() for c, v in table.metadata.items()}
    for k, f in enumerate(table.spec.factors):
        meta[f.name] = np.array(
            [str(f.values[i]) if f.kind != "ordinal" else repr(float(f.values[i])) for i in target[:, k]]
        )
    frame = pd.concat(
        [
            pd.DataFrame(meta),
            pd.DataFrame({SOURCE_ROW: table.rows[rows], EDIT: edit}),
            pd.DataFrame(x, columns=table.feature_names),
        ],
        axis=1,
    )
    tmp = out.with_name(out.name + ".tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(tmp, index=False, compression="gzip" if out.name.lower().endswith(".gz") else None)
    tmp.replace(out)
