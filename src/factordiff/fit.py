"""``fit(config, out)``: train a FactorModel in three stages through the one training loop.

Supervised (the default):
1. ``distiller``: the factor distiller on the training images and their labels;
2. ``autoencoder``: the latent autoencoder (skipped in pixel space), with the frozen distiller in its loss;
3. ``denoiser``: the UNet and its adapter on (latent, codes) pairs of the training images;
4. ``daed`` (``daed.enabled``, ``fit --model daed``): the denoising autoencoder that finishes every
   chain below ``daed.split`` (``diffusion/daed.py``), on the same latents.

Unsupervised (``unsupervised.enabled``; no label reaches any stage):
1. ``autoencoder`` without the distiller term; 2. ``base``: an unconditional denoiser;
3. ``encoder``: the segment encoder and the gradient-estimator branch on the frozen base.
With ``unsupervised.base`` (a trained supervised run, e.g. the shipped ``shapes32``) stages 1 and 2
are that run's autoencoder and its denoiser run through its null tokens, and only stage 3 trains.

Held-out combinations are removed before stage 1; no stage sees them, nor do the statistics fitted
on codes afterwards (block alignment, value prototypes, mean code). Each finished stage's weights
are written to ``RUN/model/`` and read back by the next stage, so a resumed run continues from
exactly the same state as an uninterrupted one. The time budget (``train.minutes``) is shared by
the stages in proportion to their ``budget``; time a stage does not use passes to the next.
"""

from __future__ import annotations

import json
import shutil
import time
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
from factordiff.config import RunConfig
from factordiff.data.base import FactorDataset
from factordiff.data.fieldcrops import FIELDS
from factordiff.data.profiles import fingerprint
from factordiff.data.sources import PROFILES, prepare_data
from factordiff.data.splits import Split
from factordiff.diffusion.autoencoder import AutoencoderStep, build_autoencoder
from factordiff.diffusion.control import Controlled
from factordiff.diffusion.daed import DaedStep
from factordiff.diffusion.denoiser import Denoiser
from factordiff.diffusion.objective import DiffusionStep
from factordiff.encoders.distill import DistillStep
from factordiff.encoders.metadata import fit_additive, seen_values
from factordiff.encoders.unsupervised import CodeBasis, UnsupervisedStep, align_blocks
from factordiff.errors import FactordiffError
from factordiff.models.images import (
    CONFIG,
    FactorModel,
    ModelShape,
    base_folder,
    build_control,
    build_dae,
    build_denoiser,
    build_encoder,
    build_structure,
    to_unit,
)
from factordiff.models.profiles import (
    ProfileData,
    ProfileModel,
    perturbation_factor,
    perturbation_table,
    prepare_profiles,
)
from factordiff.models.runs import MODEL_CONFIG, check_run_folder, fit_kind
from factordiff.models.sets import SetModel, set_members
from factordiff.train import ArrayBatches, LoopOptions, Stage, barrier, map_batches, process, run_stage

STAGES = ("distiller", "autoencoder", "base", "denoiser", "control", "daed", "encoder")


@dataclass
class FitResult:
    """A finished fit: the model, its run folder, the split, and the training and whole data
    (images: FactorDatasets; profiles: the ``ProfileData`` both times)."""

    model: FactorModel | ProfileModel
    run: Path
    split: Split
    train: FactorDataset | ProfileData
    dataset: FactorDataset | ProfileData

    def summary(self) -> list[str]:
        """What ``factordiff fit`` prints."""
        where = self.run / "model"
        if not isinstance(self.model, (ProfileModel, SetModel)):
            return [f"trained {len(self.train)} images ({self.split.description}); model: {where}"]
        data = self.dataset
        c = data.table.cleaning
        return [
            f"{data.table.source}: {c['rows']} of {c['rows_read']} rows, {c['features']} features; "
            f"dropped {len(c['columns_dropped_missing'])} column(s) with more than {c['max_missing']:.0%} "
            f"missing, then {c['rows_dropped_missing']} row(s) with missing values, "
            f"{len(c['columns_dropped_constant'])} constant column(s)"
            + "".join(f", {len(c['columns_dropped_' + op])} by {op}" for op in c["operations"][2:])
            + "; "
            f"normalisation: {data.normalization['normalize']}",
            f"trained {int(data.train.sum())} rows"
            + (f" in {self.model.train_sets} sets" if isinstance(self.model, SetModel) else "")
            + f" ({data.split.description}); model: {where}",
        ]


class _Budget:
    """Splits ``minutes`` between the stages that still have to run, in proportion to their shares."""

    def __init__(self, minutes: float | None, shares: dict[str, float]):
        self.end = None if minutes is None else time.monotonic() + 60 * minutes
        self.shares = dict(shares)

    def seconds(self, stage: str) -> float | None:
        if self.end is None:
            return None
        left = max(0.0, self.end - time.monotonic())
        share = self.shares.pop(stage)
        return left * share / max(1e-9, share + sum(self.shares.values()))


def _options(cfg: RunConfig, run: Path, resume: bool, progress: bool) -> LoopOptions:
    t = cfg.train
    return LoopOptions(
        seed=t.seed,
        checkpoints=run / "checkpoints",
        checkpoint_every=t.checkpoint_every,
        keep_last=t.keep_last,
        grad_clip=t.grad_clip,
        resume=resume,
        progress=progress,
        precision=t.precision,
        compile=t.compile,
    )


def start_from(source: Path, out: Path, cfg: RunConfig, parts: tuple[str, ...]) -> None:
    """A new run folder ``out`` holding ``parts`` of the finished run ``source`` as done stages (their
    weights and, where ``source`` has them, their training logs), its split and ``cfg``, so that
    ``fit(cfg, out, resume=True)`` trains only the other stages. The parts learned from ``source``'s
    training rows, so ``cfg`` must keep its split for nothing held out to reach the new stages."""
    (out / "model").mkdir(parents=True)
    (out / "logs").mkdir()
    log = source / "train_log.jsonl"
    lines = log.read_text().splitlines() if log.is_file() else []
    for part in parts:
        shutil.copy(source / "model" / f"{part}.safetensors", out / "model")
        rows = [line + "\n" for line in lines if json.loads(line)["stage"] == part]
        if rows:
            (out / "logs" / f"{part}.jsonl").write_text("".join(rows))
    shutil.copy(source / "split.json", out / "split.json")
    cfg.save(out / "run_config.json")


def _stage_done(run: Path, name: str) -> bool:
    return (run / "model" / f"{name}.safetensors").is_file()


def _save_part(run: Path, name: str, module: torch.nn.Module, log: list[dict]) -> None:
    """Write a finished stage: its log, then its weights (whose presence marks the stage done)."""
    atomic_write_text(
        run / "logs" / f"{name}.jsonl", "".join(json.dumps({"stage": name, **row}) + "\n" for row in log)
    )
    atomic_save_tensors(module.state_dict(), run / "model" / f"{name}.safetensors")


def _join_logs(run: Path) -> None:
    parts = [run / "logs" / f"{name}.jsonl" for name in STAGES]
    atomic_write_text(run / "train_log.jsonl", "".join(p.read_text() for p in parts if p.is_file()))


def _load_part(run: Path, name: str, module: torch.nn.Module) -> torch.nn.Module:
    module.load_state_dict(load_tensors(run / "model" / f"{name}.safetensors"))
    return module.eval().requires_grad_(False)


@dataclass
class _Fit:
    """What every stage needs: the run folder, config, loop options, budget and training tensors."""

    cfg: RunConfig
    run: Path
    opts: LoopOptions
    budget: _Budget
    train: FactorDataset
    shape: ModelShape

    @property
    def images(self):
        """The training images: the in-memory array, or packed images read per batch."""
        return self.train.images

    def stage(
        self,
        name: str,
        step_module: torch.nn.Module,
        part: torch.nn.Module,
        trainable: list,
        tensors: dict,
        section,
        seed_offset: int,
        ema_decay: float = 0.999,
        warmup: int = 100,
    ) -> torch.nn.Module:
        """Train one stage unless it is done, then load its saved part read-only."""
        if not _stage_done(self.run, name):
            batches = ArrayBatches(tensors, section.batch_size, self.cfg.train.seed + seed_offset)
            stage = Stage(
                name,
                step_module,
                trainable,
                batches,
                section.steps,
                section.lr,
                self.budget.seconds(name),
                ema_decay=ema_decay,
                warmup=warmup,
                images_per_step=section.batch_size,
            )
            run_stage(stage, self.opts)
            if process()[2]:
                _save_part(self.run, name, part, stage.log)
            barrier()
        else:
            self.budget.seconds(name)
        return _load_part(self.run, name, part)


def _train_distiller(f: _Fit) -> torch.nn.Module:
    torch.manual_seed(f.cfg.train.seed)
    distiller = build_encoder(f.cfg, f.train.spec, f.shape)
    tensors = {"images": f.images, "factors": torch.from_numpy(known_factors(f.cfg, f.train))}
    return f.stage(
        "distiller",
        DistillStep(distiller, f.cfg.distill),
        distiller,
        list(distiller.parameters()),
        tensors,
        f.cfg.distill,
        0,
    )


def _train_autoencoder(f: _Fit, distiller: torch.nn.Module | None) -> torch.nn.Module | None:
    if not f.cfg.autoencoder.enabled:
        return None
    a = f.cfg.autoencoder
    torch.manual_seed(f.cfg.train.seed + 1)
    autoencoder = build_autoencoder(a, f.shape.channels, f.shape.size)
    autoencoder = f.stage(
        "autoencoder",
        AutoencoderStep(autoencoder, distiller, a),
        autoencoder,
        list(autoencoder.parameters()),
        {"images": f.images},
        a,
        1,
    )
    with torch.no_grad():
        means = map_batches(lambda b: autoencoder.encode(to_unit(b)), f.images[:4096])
    f.shape.latent_scale = float(1.0 / means.std())
    return autoencoder


def _train_denoiser(f: _Fit, model: FactorModel, x: torch.Tensor) -> torch.nn.Module:
    """The conditioned denoiser; with ``denoiser.train_base`` False, a ``base`` stage first trains its
    UNet alone (unconditional), which then stays frozen while the adapter trains."""
    dn, denoiser = f.cfg.denoiser, model.denoiser
    if not dn.train_base:
        base = (
            Denoiser(denoiser.unet).train().requires_grad_(True)
        )  # shares the UNet: the stage loads the trained base into it
        f.stage(
            "base",
            DiffusionStep(base, dn),
            base,
            list(base.parameters()),
            {} if _stage_done(f.run, "base") else {"x": x},
            dn,
            4,
            dn.ema_decay,
            warmup=500,
        )
    structure = model.structure
    head = getattr(denoiser, "head", None)
    labelled = None
    if head is not None and not _stage_done(f.run, "denoiser"):
        rows = labelled_rows(len(f.train), dn.label_fraction, f.cfg.train.seed)
        labels = np.ascontiguousarray(f.train.factors[rows][:, head.factors]).astype(np.int64)
        if isinstance(x, np.ndarray):  # packed images' memory-mapped latents
            chosen = torch.from_numpy(np.asarray(x[rows]))
        else:
            chosen = x[torch.from_numpy(rows)]
        labelled = {"x": chosen, "labels": torch.from_numpy(labels)}
    step: torch.nn.Module = DiffusionStep(denoiser, dn, labelled=labelled)
    if _stage_done(f.run, "denoiser"):
        tensors = {}
    elif structure is None:
        tensors = {"x": x, "codes": model.codes(f.train.images)}
    else:  # the distiller's codes and its posterior over the training values;
        # the structure codes train with the denoiser
        structure.set_seen(np.isin(np.arange(len(structure.seen)), f.train.factors[:, structure.factor]))
        with torch.no_grad():
            raw = map_batches(lambda b: model.encoder(to_unit(b)), f.train.images)
            tensors = {
                "x": x,
                "codes": raw,
                "posterior": structure.posterior(model.encoder.logits(raw)[structure.factor]),
            }
        step = _StructureStep(step)
    denoiser.train().requires_grad_(True)
    if not dn.train_base:
        denoiser.unet.requires_grad_(False)
    trainable = [p for p in denoiser.parameters() if p.requires_grad]
    return f.stage("denoiser", step, denoiser, trainable, tensors, dn, 2, dn.ema_decay, warmup=500)


def _train_control(f: _Fit, model: FactorModel, x) -> Controlled | None:
    """The denoiser with ``denoiser.control``'s ControlNet branch, trained on the frozen denoiser
    (``control`` stage): the denoiser's own loss and condition dropout, the conditioning images
    never dropped."""
    dn = f.cfg.denoiser
    torch.manual_seed(f.cfg.train.seed + 6)
    branch = build_control(f.cfg, f.shape, model.denoiser)
    if branch is None:
        return None
    controlled = Controlled(model.denoiser, branch)
    tensors = {}
    if not _stage_done(f.run, "control"):
        tensors = {"x": x, "codes": model.codes(f.train.images), "control": to_unit(f.train.control)}
    model.denoiser.eval().requires_grad_(False)
    branch.train().requires_grad_(True)
    section = replace(dn, steps=dn.control_steps)
    f.stage(
        "control",
        DiffusionStep(controlled, dn),
        branch,
        list(branch.parameters()),
        tensors,
        section,
        6,
        dn.ema_decay,
        warmup=500,
    )
    return controlled


def _train_daed(f: _Fit, x) -> torch.nn.Module | None:
    """DAED's denoising autoencoder (``daed.enabled``), or None."""
    if not f.cfg.daed.enabled:
        return None
    d = f.cfg.daed
    torch.manual_seed(f.cfg.train.seed + 5)
    dae = build_dae(f.cfg, f.shape)
    tensors = {} if _stage_done(f.run, "daed") else {"x": x}
    return f.stage(
        "daed", DaedStep(dae, f.cfg.denoiser), dae, list(dae.parameters()), tensors, d, 5, d.ema_decay
    )


def labelled_rows(n: int, fraction: float, seed: int) -> np.ndarray:
    """Which of ``n`` training images have their head factors' labels (``fraction`` of them, drawn
    once with ``seed``): the same draw for the head, the distiller and the prototypes."""
    rng = np.random.default_rng(seed + 17)
    labelled = np.zeros(n, bool)
    labelled[rng.choice(n, max(1, round(fraction * n)), replace=False)] = True
    return labelled


def known_factors(cfg: RunConfig, train: FactorDataset) -> np.ndarray:
    """The training value indices that anything learning may read: with ``denoiser.label_fraction``
    below 1, the head factors' labels of the unlabelled images are hidden (-1), so that the
    distiller's blocks and the prototypes of those factors learn from the labelled share only, as
    the head does (a semi-supervised run uses its share of labels everywhere)."""
    dn = cfg.denoiser
    if not dn.head or dn.label_fraction >= 1:
        return train.factors
    out = train.factors.copy()
    hidden = ~labelled_rows(len(out), dn.label_fraction, cfg.train.seed)
    for name in dn.head:
        out[hidden, train.spec.resolve(name)] = -1
    return out


class _StructureStep(torch.nn.Module):
    """A ``DiffusionStep`` whose batch's perturbation block is made by the denoiser's
    ``StructureCodes`` from the batch's distiller posterior, so that the structure codes learn
    from the diffusion loss."""

    def __init__(self, step: DiffusionStep):
        super().__init__()
        self.step = step

    def forward(
        self, batch: dict[str, torch.Tensor], gen: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        return self.step(
            {**batch, "codes": self.step.denoiser.structure(batch["codes"], batch["posterior"])}, gen
        )


def _latents(f: _Fit, model: FactorModel):
    """The training images in the denoiser's space: a tensor in memory, or, for packed images
    (``shards:DIR``), a memory-mapped ``RUN/cache/latents.npy`` written batch by batch, so that
    the denoiser's stage streams from disk too (rewritten on --resume: it is a pure function of
    the saved encoders)."""
    desc = "encoding to latents" if f.opts.progress else None
    images = f.train.images
    if isinstance(images, np.ndarray):
        return model.latents(images, desc)
    path = f.run / "cache" / "latents.npy"
    if process()[2]:
        path.parent.mkdir(parents=True, exist_ok=True)
        out = None
        for i in range(0, len(images), 4096):
            z = model.latents(images[i : i + 4096], desc).numpy()
            if out is None:
                out = np.lib.format.open_memmap(
                    path, mode="w+", dtype=np.float32, shape=(len(images), *z.shape[1:])
                )
            out[i : i + 4096] = z
        out.flush()
        del out
    barrier()
    return np.load(path, mmap_mode="r")


def _train_unsupervised(
    f: _Fit, model: FactorModel, x: torch.Tensor
) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Base denoiser without codes, then encoder + gradient-estimator branch on the frozen base."""
    dn, u = f.cfg.denoiser, f.cfg.unsupervised
    if not u.base_blocks:  # else the base is a trained run's denoiser (``unsupervised.base``)
        base = model.denoiser.base.train().requires_grad_(True)
        base = f.stage(
            "base",
            DiffusionStep(base, dn),
            base,
            list(base.parameters()),
            {"x": x},
            dn,
            2,
            dn.ema_decay,
            warmup=500,
        )
        model.denoiser.base = base.requires_grad_(False)
    encoder, branch = (
        model.encoder.train().requires_grad_(True),
        model.denoiser.branch.train().requires_grad_(True),
    )
    step = UnsupervisedStep(encoder, model.denoiser, dn.prediction_type, dn, u.snr_gamma)
    if not _stage_done(
        f.run, "encoder"
    ):  # the branch is saved as part of the denoiser, before the encoder marks the stage done
        trainable = list(encoder.parameters()) + list(branch.parameters())
        batches = ArrayBatches({"images": f.images, "x": x}, u.batch_size, f.cfg.train.seed + 3)
        stage = Stage(
            "encoder",
            step,
            trainable,
            batches,
            u.steps,
            u.lr,
            f.budget.seconds("encoder"),
            ema_decay=dn.ema_decay,
            warmup=500,
            images_per_step=u.batch_size,
        )
        run_stage(stage, f.opts)
        if process()[2]:
            atomic_save_tensors(model.denoiser.state_dict(), f.run / "model" / "denoiser.safetensors")
            _save_part(f.run, "encoder", encoder, stage.log)
        barrier()
    else:
        f.budget.seconds("encoder")
    _load_part(f.run, "denoiser", model.denoiser)
    encoder = _load_part(f.run, "encoder", encoder)
    if encoder.basis is not None:
        _unmix(f, encoder, model.denoiser)
    return encoder, model.denoiser


UNMIX_IMAGES = 10000  # training images whose codes the basis is fitted on


def _unmix(f: _Fit, encoder: torch.nn.Module, denoiser: torch.nn.Module) -> None:
    """Stage ``unmix`` (``unsupervised.unmix``): the code's basis fitted on the raw codes of the first
    ``UNMIX_IMAGES`` training images (no label), saved as ``model/unmix.safetensors`` and set in the
    encoder and, to mix the codes back, in the branch. The raw code is read past any basis the
    loaded encoder already holds, so a resumed run fits the same basis."""
    u = f.cfg.unsupervised
    if not _stage_done(f.run, "unmix"):
        n = min(len(f.images), UNMIX_IMAGES)
        raw = map_batches(lambda b: encoder.raw(to_unit(b)), f.images[:n]).numpy()
        basis = CodeBasis(u.segments, u.code_dims)
        row = {"step": 0, "images": n, **basis.fit(raw, f.cfg.train.seed)}
        if f.opts.progress:
            print(f"unmix: {u.unmix} basis of the codes of {n} training images", flush=True)
        if process()[2]:
            _save_part(f.run, "unmix", basis, [row])
        barrier()
    basis = _load_part(f.run, "unmix", CodeBasis(u.segments, u.code_dims))
    encoder.basis.load_state_dict(basis.state_dict())
    denoiser.basis.load_state_dict(basis.state_dict())


def unsupervised_base(cfg: RunConfig) -> tuple[RunConfig, FactorModel | None]:
    """``unsupervised.base`` loaded, and ``cfg`` with the base's autoencoder and denoiser sections and
    its number of factor blocks (``unsupervised.base_blocks``); ``(cfg, None)`` without a base."""
    u = cfg.unsupervised
    if not u.enabled or u.base is None:
        if u.base_blocks:
            raise FactordiffError(
                f"unsupervised.base_blocks: {u.base_blocks} without unsupervised.base; expected 0 "
                "(the fit sets it from the base)"
            )
        return cfg, None
    model_folder = base_folder(u.base)
    meta = model_folder / CONFIG
    if not meta.is_file():
        raise FactordiffError(f"unsupervised.base: {u.base}: no trained model (expected {MODEL_CONFIG})")
    kind = read_json(meta).get("kind", "images")
    if kind != "images":
        raise FactordiffError(f"unsupervised.base: {u.base} holds a {kind} model; expected an image model")
    base = FactorModel.load(model_folder)
    bc = base.config
    if bc.unsupervised.enabled:
        raise FactordiffError(
            f"unsupervised.base: {u.base} is an unsupervised run; expected a supervised one (its denoiser "
            "has null tokens)"
        )
    extras = [
        n
        for n, on in (
            ("head", bc.denoiser.head),
            ("control", bc.denoiser.control),
            ("structure", bc.denoiser.structure),
        )
        if on
    ]
    if extras:
        raise FactordiffError(
            f"unsupervised.base: {u.base}'s denoiser has denoiser.{extras[0]}; "
            "expected a plain conditioned one"
        )
    return (
        replace(
            cfg,
            autoencoder=bc.autoencoder,
            denoiser=bc.denoiser,
            distill=replace(cfg.distill, code_dims=bc.distill.code_dims),
            unsupervised=replace(u, base_blocks=len(base.spec)),
        ),
        base,
    )


def fit(
    cfg: RunConfig,
    out: Path,
    resume: bool = False,
    progress: bool = True,
    data: tuple | None = None,
    encoder_only: bool = False,
    keep: tuple[str, ...] = (),
) -> FitResult:
    """Train every stage of a FactorModel into run folder ``out``; returns the trained model.

    ``data``: (all data, split, training data) as ``prepare_data`` returns them; only the training
    data reaches the model. ``encoder_only`` stops a supervised run after the distiller (the
    result's model then has no autoencoder and an untrained denoiser): what the latent-space
    benchmarks need. ``keep``: names of files that may already be in ``out`` (quickstart's marker).
    """
    run = Path(out)
    if cfg.daed.enabled and (fit_kind(cfg) != "images" or cfg.unsupervised.enabled):
        raise FactordiffError("daed.enabled (--model daed): DAED is for supervised image runs")
    if fit_kind(cfg) in ("profiles", "sets"):
        model, profiles = (fit_sets if fit_kind(cfg) == "sets" else fit_profiles)(cfg, run, resume, progress)
        return FitResult(model, run, profiles.split, profiles, profiles)
    cfg, base = unsupervised_base(cfg)
    resume = check_run_folder(cfg, run, resume, keep)
    main = process()[2]
    barrier()  # every process has checked the folder before the main one writes to it
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    fields = data is None and cfg.data.source.startswith(FIELDS)
    if fields and not main:
        barrier()  # the main process cuts the fields into the run's crops first; the others read them
    dataset, split, train = data or prepare_data(cfg, run, progress and main)
    if fields and main:
        barrier()
    build_structure(cfg, train.spec)  # a bad denoiser.structure is refused before any stage trains
    if base is not None and (base.shape.channels, base.shape.size) != (train.channels, train.size):
        raise FactordiffError(
            f"unsupervised.base: {cfg.unsupervised.base} was trained on {base.shape.channels}-channel "
            f"{base.shape.size}x{base.shape.size} images; expected this run's {train.channels}-channel "
            f"{train.size}x{train.size}"
        )
    if main:
        run.mkdir(parents=True, exist_ok=True)
        if not resume:
            cfg.save(run / "run_config.json")
            atomic_write_json(run / "split.json", split.to_json())
    barrier()
    unsup = cfg.unsupervised.enabled
    shares = {"autoencoder": cfg.autoencoder.budget if cfg.autoencoder.enabled and base is None else 0.0}
    frozen = not unsup and not cfg.denoiser.train_base
    if unsup:
        shares.update(base=cfg.denoiser.budget, encoder=cfg.unsupervised.budget)
    else:
        shares.update(
            distiller=cfg.distill.budget,
            base=cfg.denoiser.budget / 2 if frozen else 0.0,
            denoiser=cfg.denoiser.budget / (2 if frozen else 1),
            daed=cfg.daed.budget if cfg.daed.enabled else 0.0,
            control=cfg.denoiser.control_budget if cfg.denoiser.control else 0.0,
        )
    order = (
        (["encoder"] if base is not None else ["autoencoder", "base", "encoder"])
        if unsup
        else ["distiller", "autoencoder", *(["base"] if frozen else []), "denoiser"]
        + (["control"] if cfg.denoiser.control else [])
        + (["daed"] if cfg.daed.enabled else [])
    )
    f = _Fit(
        cfg,
        run,
        _options(cfg, run, resume, progress),
        _Budget(cfg.train.minutes, {k: shares[k] for k in order}),
        train,
        ModelShape(train.channels, train.size),
    )

    distiller = None if unsup else _train_distiller(f)
    if encoder_only and distiller is not None:
        return FitResult(
            FactorModel(cfg, train.spec, f.shape, distiller, None, build_denoiser(cfg, train.spec, f.shape)),
            run,
            split,
            train,
            dataset,
        )
    if base is not None:
        autoencoder, f.shape.latent_scale = base.autoencoder, base.shape.latent_scale
    else:
        autoencoder = _train_autoencoder(f, distiller)
    torch.manual_seed(cfg.train.seed + 2)
    encoder = distiller if distiller is not None else build_encoder(cfg, train.spec, f.shape)
    model = FactorModel(
        cfg, train.spec, f.shape, encoder, autoencoder, build_denoiser(cfg, train.spec, f.shape)
    )
    if base is not None:
        model.denoiser.base.denoiser.load_state_dict(base.denoiser.state_dict())
    x = _latents(f, model) if not _stage_done(run, order[-1]) else None
    if unsup:
        model.encoder, model.denoiser = _train_unsupervised(f, model, x)
        model.factor_blocks = align_blocks(
            model.codes(train.images[:5000]).numpy(), train.factors[:5000], cfg.train.seed
        )
    else:
        model.denoiser = _train_denoiser(f, model, x)
        model.denoiser = _train_control(f, model, x) or model.denoiser
        model.dae = _train_daed(f, x)
    model = FactorModel(
        cfg,
        train.spec,
        f.shape,
        model.encoder,
        autoencoder,
        model.denoiser,
        factor_blocks=model.factor_blocks,
        dae=model.dae,
    )
    # training images only (nothing held out), and of head factors their labelled share only
    model.set_prototypes(model.codes(train.images), known_factors(cfg, train))
    if main:
        model.save(run / "model", extra={"split": split.to_json(), "train_images": len(train)})
        _join_logs(run)
    barrier()
    return FitResult(model, run, split, train, dataset)


CHUNK = 16384  # profile rows per chunk where a whole-table pass would copy the table


def _moments(x: np.ndarray, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and standard deviation of ``x[rows]``, in float64 chunks (no copy of the
    rows); a spread of 0 becomes 1."""
    total = np.zeros(x.shape[1])
    square = np.zeros(x.shape[1])
    for i in range(0, len(rows), CHUNK):
        part = x[rows[i : i + CHUNK]].astype(np.float64)
        total += part.sum(0)
        square += (part * part).sum(0)
    mean = total / len(rows)
    std = np.sqrt(np.maximum(square / len(rows) - mean * mean, 0.0))
    std = np.where(std > 0, std, 1.0)
    return torch.from_numpy(mean.astype(np.float32)), torch.from_numpy(std.astype(np.float32))


def _space(x, rows, mean, std, prior=None, factors=None) -> torch.Tensor:
    """``x[rows]`` standardised, less ``prior(factors[rows])`` when given (the model's space:
    ``ProfileModel.to_space``), filled chunk by chunk into one float32 tensor."""
    out = torch.empty(len(rows), x.shape[1])
    for i in range(0, len(rows), CHUNK):
        part = rows[i : i + CHUNK]
        out[i : i + CHUNK] = (torch.from_numpy(x[part]) - mean) / std
        if prior is not None:
            out[i : i + CHUNK] -= prior(factors[part])
    return out


def fit_profiles(
    cfg: RunConfig, out: Path, resume: bool = False, progress: bool = True, data: ProfileData | None = None
) -> tuple[ProfileModel, ProfileData]:
    """Train the profile model into run folder ``out`` (one stage: codes + denoiser, jointly)."""
    run = Path(out)
    resume = check_run_folder(cfg, run, resume)
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
    rows = np.flatnonzero(data.train)
    mean, std = _moments(data.features, rows)
    torch.manual_seed(cfg.train.seed)
    spec = data.table.spec
    p = cfg.profiles
    ftrain = data.table.factors[rows]
    additive = (
        fit_additive(spec, ftrain, _space(data.features, rows, mean, std).numpy())
        if p.residual == "ridge"
        else None
    )
    seen = seen_values(spec, ftrain)
    if perturbation is not None:
        seen[perturbation_factor(cfg, spec)[0]][:] = True  # every value has features, so a code
    source = cfg.data.source[len(PROFILES) :]
    c = data.table.cleaning
    table = {"path": source, "fingerprint": fingerprint(source), "rows": c["rows_read"], "cleaning": c}
    model = ProfileModel.build(
        cfg, spec, data.table.feature_names, mean, std, seen, additive, perturbation, data.plates, table
    )
    model.embedder.train().requires_grad_(True)
    model.denoiser.train().requires_grad_(True)
    step = DiffusionStep(
        model.denoiser, replace(cfg.denoiser, cond_dropout=p.cond_dropout), embedder=model.embedder
    )
    batches = ArrayBatches(
        {
            "x": _space(data.features, rows, mean, std, model.prior, data.table.factors),
            "factors": torch.from_numpy(ftrain),
        },
        min(p.batch_size, len(rows)),
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
            "normalization": data.normalization,
        },
    )
    return model, data


class _SetDraws:
    """Deterministic batches of sets for the set autoencoder: step -> ``sets_per_step`` training
    sets, ``cells`` cells drawn from each (with replacement from a smaller set), by (seed, step)."""

    def __init__(self, z: torch.Tensor, members: list[np.ndarray], sets: int, cells: int, seed: int):
        self.z, self.members, self.sets, self.cells, self.seed = z, members, sets, cells, seed
        self.batch_size = sets

    def __call__(self, step: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, step])
        chosen = rng.choice(len(self.members), self.sets, replace=len(self.members) < self.sets)
        draws = [rng.choice(self.members[i], self.cells, replace=True) for i in chosen]
        return {"cells": self.z[torch.from_numpy(np.stack(draws))]}


class _SetAutoencoderStep(torch.nn.Module):
    def __init__(self, ae: torch.nn.Module):
        super().__init__()
        self.ae = ae

    def forward(self, batch: dict[str, torch.Tensor], gen: torch.Generator) -> tuple[torch.Tensor, dict]:
        return self.ae.loss(batch["cells"], None, gen), {}


def fit_sets(
    cfg: RunConfig, out: Path, resume: bool = False, progress: bool = True
) -> tuple[SetModel, ProfileData]:
    """Train a set run (``models/sets.py``) into ``out``: the set autoencoder on training sets, then
    the diffusion transformer with the codes on ``sets.views`` token draws of each training set."""
    run, s = Path(out), cfg.sets
    resume = check_run_folder(cfg, run, resume)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    data = prepare_profiles(cfg)
    table = data.table
    members = set_members(table, s.column, np.flatnonzero(data.train))  # bad input stops before the folder
    run.mkdir(parents=True, exist_ok=True)
    if not resume:
        cfg.save(run / "run_config.json")
        atomic_write_json(
            run / "split.json",
            {**data.split.to_json(), "heldout_rows": int((~data.train).sum()), "train_sets": len(members)},
        )
    rows = np.flatnonzero(data.train)
    mean, std = _moments(data.features, rows)
    z = ((torch.from_numpy(np.asarray(data.features, np.float32)) - mean) / std).float()
    groups = list(members.values())
    factors = np.stack([table.factors[g[0]] for g in groups])
    torch.manual_seed(cfg.train.seed)
    c = table.cleaning
    source = cfg.data.source[len(PROFILES) :]
    info = {"path": source, "fingerprint": fingerprint(source), "rows": c["rows_read"], "cleaning": c}
    model = SetModel.build(
        cfg,
        table.spec,
        table.feature_names,
        mean=mean,
        std=std,
        seen=seen_values(table.spec, factors),
        plates=data.plates,
        table=info,
    )
    opts = _options(cfg, run, resume, progress)
    seconds = None if cfg.train.minutes is None else 60 * cfg.train.minutes
    ae = model.autoencoder.train().requires_grad_(True)
    first = Stage(
        "set_autoencoder",
        _SetAutoencoderStep(ae),
        list(ae.parameters()),
        _SetDraws(z, groups, s.sets_per_step, s.cells, cfg.train.seed + 1),
        s.autoencoder_steps,
        1e-3,
        None if seconds is None else seconds * s.autoencoder_budget / (s.autoencoder_budget + s.budget),
        warmup=100,
        images_per_step=s.sets_per_step * s.cells,
    )
    start = time.monotonic()
    run_stage(first, opts)
    ae.eval().requires_grad_(False)
    rng = np.random.default_rng(cfg.train.seed + 3)  # each training set's token draws
    sets = z[torch.from_numpy(np.stack([rng.choice(g, s.cells) for g in groups for _ in range(s.views)]))]
    with torch.no_grad():
        tokens = torch.cat([ae.encode(sets[i : i + 256]) for i in range(0, len(sets), 256)])
    model.scale = float(tokens.std())
    model.embedder.train().requires_grad_(True)
    model.denoiser.train().requires_grad_(True)
    step = DiffusionStep(
        model.denoiser, replace(cfg.denoiser, cond_dropout=s.cond_dropout), embedder=model.embedder
    )
    batches = ArrayBatches(
        {"x": tokens / model.scale, "factors": torch.from_numpy(np.repeat(factors, s.views, 0))},
        min(s.batch_size, len(tokens)),
        cfg.train.seed + 2,
    )
    left = None if seconds is None else max(seconds - (time.monotonic() - start), 1.0)
    trainable = list(model.embedder.parameters()) + list(model.denoiser.parameters())
    second = Stage(
        "set_denoiser",
        step,
        trainable,
        batches,
        s.steps,
        s.lr,
        left,
        ema_decay=cfg.denoiser.ema_decay,
        warmup=200,
        images_per_step=batches.batch_size,
    )
    run_stage(second, opts)
    for m in model.modules().values():
        m.eval().requires_grad_(False)
    atomic_write_text(
        run / "train_log.jsonl",
        "".join(json.dumps({"stage": st.name, **row}) + "\n" for st in (first, second) for row in st.log),
    )
    model.train_sets = len(groups)
    model.save(
        run / "model",
        extra={
            "split": data.split.to_json(),
            "train_rows": int(data.train.sum()),
            "train_sets": len(groups),
            "normalization": data.normalization,
        },
    )
    return model, data
