"""The run door: ``load_run(path)`` opens a run folder of ``factordiff fit``, whatever its kind.

A run folder holds ``run_config.json`` (the resolved config), ``split.json`` and ``model/`` (the
weights and ``model/config.json``, whose ``kind`` says which model wrote it: ``images`` for a
``FactorModel``, ``profiles`` for a ``ProfileModel``, ``sets`` for a ``SetModel``). This module is
the one place that reads those files and checks a folder before a fit writes to it; every command
and the evaluation take the ``Run`` it returns without asking which kind it is beyond ``run.kind``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from factordiff.checkpoint import read_json
from factordiff.config import RunConfig, from_dict, saved_before
from factordiff.data.base import FactorDataset
from factordiff.data.sources import is_profile_source, prepare_data
from factordiff.errors import FactordiffError
from factordiff.factors import FactorSpec
from factordiff.models.images import FactorModel
from factordiff.models.profiles import ProfileData, ProfileModel, prepare_run_profiles
from factordiff.models.sets import SetModel

RUN_CONFIG = "run_config.json"
MODEL_CONFIG = "model/config.json"
KINDS = ("images", "profiles", "sets")
MODELS = {"images": FactorModel, "profiles": ProfileModel, "sets": SetModel}


def read_run_config(run: Path) -> RunConfig:
    """The run's config, after checking that ``run`` is a run folder with a trained model."""
    run = Path(run)
    if not (run / RUN_CONFIG).is_file():
        raise FactordiffError(
            f"{run}: not a run folder (no {RUN_CONFIG}); expected the --out folder of factordiff fit"
        )
    if not (run / MODEL_CONFIG).is_file():
        raise FactordiffError(
            f"{run}: no trained model in {run / 'model'}; "
            f"finish the run with factordiff fit --resume --out {run}"
        )
    return from_dict(RunConfig, saved_before(read_json(run / RUN_CONFIG)), str(run / RUN_CONFIG))


def run_kind(run: Path) -> str:
    """``images``, ``profiles`` or ``sets``: the kind of model in the run folder (``model/config.json``)."""
    read_run_config(run)  # a folder that is no run, or has no trained model, is said so first
    kind = read_json(Path(run) / MODEL_CONFIG).get("kind", "images")
    if kind not in KINDS:
        raise FactordiffError(
            f"{Path(run) / MODEL_CONFIG}: kind {kind!r}; expected one of {', '.join(KINDS)}"
        )
    return kind


def fit_kind(cfg: RunConfig) -> str:
    """The kind of run that ``fit`` makes of ``cfg``: ``profiles`` for a ``profiles:TABLE`` source,
    ``sets`` for one with ``sets.enabled`` (``--model set``), else ``images``."""
    if cfg.sets.enabled:
        if not is_profile_source(cfg.data.source):
            raise FactordiffError(
                f"--model set: expected a single-cell table, --data profiles:TABLE; got {cfg.data.source!r}"
            )
        return "sets"
    return "profiles" if is_profile_source(cfg.data.source) else "images"


def check_run_folder(cfg: RunConfig, run: Path, resume: bool, keep: tuple[str, ...] = ()) -> bool:
    """Refuse to overwrite a run (files named in ``keep`` do not count); on --resume, insist on the
    same config. Returns whether to resume."""
    if run.exists() and any(p.name not in keep for p in run.iterdir()) and not resume:
        raise FactordiffError(
            f"{run}: run folder exists and is not empty; pass --resume to continue it or choose another --out"
        )
    if resume and not (run / RUN_CONFIG).is_file():
        if run.exists() and any(run.iterdir()):
            raise FactordiffError(f"{run}: not a factordiff run folder (no {RUN_CONFIG}); nothing to resume")
        return False  # killed before anything was written: start afresh
    if resume:
        saved = from_dict(RunConfig, saved_before(read_json(run / RUN_CONFIG)), str(run / RUN_CONFIG))
        if saved.to_json() != cfg.to_json():
            raise FactordiffError(
                f"{run}: --resume with a config different from the run's {RUN_CONFIG}; pass the same options"
            )
    return resume


@dataclass
class Run:
    """A trained run: its folder, resolved config and model (``FactorModel``, ``ProfileModel`` or
    ``SetModel``).

    ``kind`` is ``images`` or ``profiles``; ``spec`` the factors with their values and roles.
    ``data()`` reads the run's data again (the fit's source, split and normalisation)."""

    path: Path
    config: RunConfig
    model: FactorModel | ProfileModel | SetModel

    @property
    def kind(self) -> str:
        return next(k for k, cls in MODELS.items() if isinstance(self.model, cls))

    @property
    def spec(self) -> FactorSpec:
        return self.model.spec

    def data(self) -> tuple[FactorDataset, object, FactorDataset] | ProfileData:
        """The run's data as its fit prepared it: images as ``(all, split, training)``, profiles as
        ``ProfileData`` (table, split, training mask, normalised features)."""
        if self.kind in ("profiles", "sets"):
            return prepare_run_profiles(self.config, self.model)
        return prepare_data(self.config, self.path)

    def info(self) -> dict:
        """What ``factordiff info`` prints: kind, factors (values, kind, role), training rows, the
        held-out conditions and the factordiff version that wrote the model."""
        meta = read_json(self.path / MODEL_CONFIG)
        split = read_json(self.path / "split.json") if (self.path / "split.json").is_file() else {}
        return {
            "run": str(self.path),
            "kind": self.kind,
            "source": self.config.data.source,
            "factors": [
                {"name": f.name, "kind": f.kind, "role": f.role, "values": [str(v) for v in f.values]}
                for f in self.spec.factors
            ],
            "train_rows": meta.get("train_rows", split.get("train_rows")),
            "heldout": split.get("description") or split.get("kind"),
            "holdout_where": list(self.config.split.where),
            "factordiff_version": meta.get("factordiff_version"),
        }


def load_model(run: Path) -> tuple[RunConfig, FactorModel | ProfileModel | SetModel]:
    """The run's config and its model, of whichever kind the folder holds. An image model edits
    with the evaluation settings of the run folder's config (the file a user may change), not with
    those saved beside its weights."""
    cfg = read_run_config(run)
    model = MODELS[run_kind(run)].load(Path(run) / "model")
    if isinstance(model, FactorModel):
        model.config = replace(model.config, evaluate=cfg.evaluate)
    return cfg, model


def with_inversion(run: Run, inversion: str | None) -> Run:
    """``run`` with its edits inverting by ``--inversion`` (None: its ``evaluate.edit_inversion``);
    profile and set runs have one inversion, the ODE's."""
    if inversion is not None:
        if run.kind != "images" and inversion != "ode":
            raise FactordiffError(f"--inversion {inversion}: a {run.kind} run inverts with the ODE only")
        run.config.evaluate.edit_inversion = inversion  # the model edits by its run folder's settings
    return run


def load_run(path: Path | str) -> Run:
    """Open the run folder ``path`` (the ``--out`` of ``factordiff fit``)."""
    cfg, model = load_model(Path(path))
    return Run(Path(path), cfg, model)
