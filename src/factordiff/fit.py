"""``fit(config, out)``: train a FactorModel in three stages through the one training loop.

1. the factor distiller on the training images and their labels;
2. the latent autoencoder (skipped in pixel space), with the frozen distiller's codes in its loss;
3. the denoiser and its adapter on (latent, codes) pairs of the training images.

Held-out combinations are removed before stage 1; no stage sees them. Each finished stage's weights
are written to ``RUN/model/`` and read back by the next stage, so a resumed run continues from
exactly the same state as an uninterrupted one. The time budget (``train.minutes``) is shared by
the stages in proportion to their ``budget``; time a stage does not use passes to the next.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from factordiff.checkpoint import atomic_save_tensors, atomic_write_json, atomic_write_text, load_tensors
from factordiff.config import RunConfig
from factordiff.data.base import FactorDataset, load_data
from factordiff.data.splits import Split, make_split
from factordiff.diffusion.autoencoder import AutoencoderStep, build_autoencoder
from factordiff.diffusion.objective import DiffusionStep
from factordiff.errors import FactordiffError
from factordiff.model import FactorModel, ModelShape, build_denoiser, build_distiller, to_unit
from factordiff.train import ArrayBatches, LoopOptions, Stage, map_batches, run_stage

STAGES = ("distiller", "autoencoder", "denoiser")


class DistillStep(torch.nn.Module):
    def __init__(self, distiller, cfg):
        super().__init__()
        self.distiller, self.cfg = distiller, cfg

    def forward(self, batch, gen):
        return self.distiller.loss(to_unit(batch["images"]), batch["factors"], self.cfg.adversary_weight, self.cfg.order_weight)


@dataclass
class FitResult:
    model: FactorModel
    run: Path
    split: Split
    train: FactorDataset
    dataset: FactorDataset


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


def prepare_data(cfg: RunConfig) -> tuple[FactorDataset, Split, FactorDataset]:
    """Load the data and remove the held-out combinations: (all data, split, training data)."""
    data = load_data(cfg.data.source, size=cfg.data.size, factors=cfg.data.factors, n=cfg.data.n, seed=cfg.train.seed)
    if data.size < 16 or data.size & (data.size - 1):
        raise FactordiffError(f"{data.source}: images are {data.size}x{data.size}; the models need a power of two of at least 16 (set --size)")
    split = make_split(data.spec, cfg.split)
    train = data.subset(~split.heldout(data.factors))
    if len(train) == 0:
        raise FactordiffError(f"split {split.description}: holds out every image; nothing left to train on")
    return data, split, train


def _options(cfg: RunConfig, run: Path, resume: bool, progress: bool) -> LoopOptions:
    t = cfg.train
    return LoopOptions(seed=t.seed, checkpoints=run / "checkpoints", checkpoint_every=t.checkpoint_every, keep_last=t.keep_last, grad_clip=t.grad_clip, resume=resume, progress=progress)


def _stage_done(run: Path, name: str) -> bool:
    return (run / "model" / f"{name}.safetensors").is_file()


def _save_part(run: Path, name: str, module: torch.nn.Module, log: list[dict]) -> None:
    """Write a finished stage: its log, then its weights (whose presence marks the stage done)."""
    atomic_write_text(run / "logs" / f"{name}.jsonl", "".join(json.dumps({"stage": name, **row}) + "\n" for row in log))
    atomic_save_tensors(module.state_dict(), run / "model" / f"{name}.safetensors")


def _join_logs(run: Path) -> None:
    parts = [run / "logs" / f"{name}.jsonl" for name in STAGES]
    atomic_write_text(run / "train_log.jsonl", "".join(p.read_text() for p in parts if p.is_file()))


def _load_part(run: Path, name: str, module: torch.nn.Module) -> torch.nn.Module:
    module.load_state_dict(load_tensors(run / "model" / f"{name}.safetensors"))
    return module.eval().requires_grad_(False)


def fit(cfg: RunConfig, out: Path, resume: bool = False, progress: bool = True, data: tuple | None = None) -> FitResult:
    """Train every stage of a FactorModel into run folder ``out``; returns the trained model."""
    run = Path(out)
    if run.exists() and any(run.iterdir()) and not resume:
        raise FactordiffError(f"{run}: run folder exists and is not empty; pass --resume to continue it or choose another --out")
    if resume and not (run / "run_config.json").is_file():
        if run.exists() and any(run.iterdir()):
            raise FactordiffError(f"{run}: not a factordiff run folder (no run_config.json); nothing to resume")
        resume = False  # killed before anything was written: start afresh
    if resume:
        saved = json.loads((run / "run_config.json").read_text())
        if saved != cfg.to_json():
            raise FactordiffError(f"{run}: --resume with a config different from the run's run_config.json; pass the same options")
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    dataset, split, train = data or prepare_data(cfg)
    run.mkdir(parents=True, exist_ok=True)
    if not resume:
        cfg.save(run / "run_config.json")
        atomic_write_json(run / "split.json", split.to_json())
    shape = ModelShape(train.channels, train.size)
    budget = _Budget(cfg.train.minutes, {"distiller": cfg.distill.budget, "autoencoder": cfg.autoencoder.budget if cfg.autoencoder.enabled else 0.0, "denoiser": cfg.denoiser.budget})
    opts = _options(cfg, run, resume, progress)
    images, factors = torch.from_numpy(train.images), torch.from_numpy(train.factors)
    torch.manual_seed(cfg.train.seed)

    distiller = build_distiller(cfg, train.spec, shape)
    if not _stage_done(run, "distiller"):
        d = cfg.distill
        stage = Stage("distiller", DistillStep(distiller, d), list(distiller.parameters()), ArrayBatches({"images": images, "factors": factors}, d.batch_size, cfg.train.seed),
                      d.steps, d.lr, budget.seconds("distiller"), ema_decay=0.999, images_per_step=d.batch_size)
        _save_part(run, "distiller", run_stage(stage, opts).step_module.distiller, stage.log)
    else:
        budget.seconds("distiller")
    distiller = _load_part(run, "distiller", distiller)

    autoencoder = None
    if cfg.autoencoder.enabled:
        a = cfg.autoencoder
        torch.manual_seed(cfg.train.seed + 1)
        autoencoder = build_autoencoder(a, shape.channels, shape.size)
        if not _stage_done(run, "autoencoder"):
            step = AutoencoderStep(autoencoder, distiller, a)
            stage = Stage("autoencoder", step, list(autoencoder.parameters()), ArrayBatches({"images": images}, a.batch_size, cfg.train.seed + 1),
                          a.steps, a.lr, budget.seconds("autoencoder"), ema_decay=0.999, images_per_step=a.batch_size)
            _save_part(run, "autoencoder", run_stage(stage, opts).step_module.autoencoder, stage.log)
        else:
            budget.seconds("autoencoder")
        autoencoder = _load_part(run, "autoencoder", autoencoder)
        with torch.no_grad():
            means = map_batches(lambda b: autoencoder.encode(to_unit(b)), images[:4096])
        shape.latent_scale = float(1.0 / means.std())

    torch.manual_seed(cfg.train.seed + 2)
    denoiser = build_denoiser(cfg, train.spec, shape)
    model = FactorModel(cfg, train.spec, shape, distiller, autoencoder, denoiser)
    codes = model.codes(train.images)
    if not _stage_done(run, "denoiser"):
        x = model.to_latent(to_unit(images))
        dn = cfg.denoiser
        denoiser.train().requires_grad_(True)
        if not dn.train_base:
            denoiser.unet.requires_grad_(False)
        trainable = [p for p in denoiser.parameters() if p.requires_grad]
        stage = Stage("denoiser", DiffusionStep(denoiser, dn), trainable, ArrayBatches({"x": x, "codes": codes}, dn.batch_size, cfg.train.seed + 2),
                      dn.steps, dn.lr, budget.seconds("denoiser"), ema_decay=dn.ema_decay, warmup=500, images_per_step=dn.batch_size)
        _save_part(run, "denoiser", run_stage(stage, opts).step_module.denoiser, stage.log)
    denoiser = _load_part(run, "denoiser", denoiser)
    model = FactorModel(cfg, train.spec, shape, distiller, autoencoder, denoiser)
    model.set_prototypes(model.codes(dataset.images), dataset.factors)
    model.save(run / "model", extra={"split": split.to_json(), "train_images": len(train)})
    _join_logs(run)
    return FitResult(model, run, split, train, dataset)
