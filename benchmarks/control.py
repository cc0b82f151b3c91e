"""Image-to-image control on cellsim: brightfield -> the five stains (``brightfield_to_stains`` of
``benchmarks/results/control.json``).

    python benchmarks/control.py [--out runs/control-bf] [--minutes 30] [--fields 300] [--samples 8]

The model: the shipped cellsim32 model (``pretrained/cellsim32``: distiller and denoiser, trained on
its split's training fields) with a ControlNet branch (``denoiser.control = ["BF"]``) trained on
the same training fields rendered with their brightfield (``data.channels``; the stains are the
same bytes), the denoiser frozen: ``factordiff fit`` resumed on a run folder made from the shipped
one, so only the ``control`` stage trains (``--minutes``). The codes come from metadata: each
field's factor values' prototypes (Cross-Zamirski et al.'s class conditioning); ``model_no_metadata``
is the same model with every factor absent.

The baseline: a plain U-Net regression (the usual label-free prediction), a diffusers UNet2DModel
of the denoiser's shape from the brightfield to the stains by mean squared error, trained for the
same wall-clock minutes on the same fields.

Judged on ``--fields`` fresh fields (another seed: new cells, seen and held-out combinations):
Pearson per channel between the mean of ``--samples`` samples and the true stain (per field, then
averaged), the regression's one prediction likewise; Frechet distance over the shipped oracle's
features of single samples (one per field) against the true fields.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import UNet2DModel
from torch import nn
from torch.nn import functional as F

from factordiff.checkpoint import atomic_save_tensors, atomic_write_json, load_tensors, read_json
from factordiff.config import RunConfig, from_dict
from factordiff.data.base import FactorDataset
from factordiff.data.cellsim import (
    CHANNELS,
    COMPOUNDS,
    CONTROL,
    DOSES,
    cellsim,
    cellsim_spec,
    render,
    sample_factors,
    to_uint8,
)
from factordiff.data.splits import make_split
from factordiff.edit import compound_code
from factordiff.evaluate.cells import oracle_features
from factordiff.evaluate.counterfactual import Oracle
from factordiff.evaluate.distances import frechet
from factordiff.fit import fit, start_from
from factordiff.models.images import FactorModel, to_unit
from factordiff.train import ArrayBatches, LoopOptions, Stage, run_stage
from factordiff.translate import known_codes, translate

SHIPPED = Path(__file__).resolve().parents[1] / "src" / "factordiff" / "pretrained" / "cellsim32"
RESULTS = Path(__file__).parent / "results" / "control.json"
BF = [*CHANNELS, "BF"]
COMPOUND_NAMES = list(COMPOUNDS)


def make_run(
    out: Path, minutes: float, steps: int, control: list[str], channels: list[str] | None
) -> RunConfig:
    """A run folder holding the shipped model's distiller and denoiser (stages done) and a config
    that adds the ``control`` channels; ``fit(..., resume=True)`` then trains the control stage."""
    raw = read_json(SHIPPED / "run_config.json")
    raw["data"]["channels"] = channels
    raw["denoiser"].update(control=control, control_steps=steps)
    raw["train"]["minutes"] = minutes
    cfg = from_dict(RunConfig, raw, "run config")
    if not (out / "run_config.json").is_file():
        start_from(SHIPPED, out, cfg, ("distiller", "denoiser"))
    return cfg


class RegressionStep(nn.Module):
    """Control image (B, C, H, W) -> images (B, 5, H, W) in [-1, 1] by mean squared error; with
    ``labels`` (a class per row, e.g. compound x dose) the UNet's class embedding reads them."""

    def __init__(self, unet: UNet2DModel):
        super().__init__()
        self.unet = unet

    def predict(self, control: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.unet(control, torch.zeros(len(control), dtype=torch.long), class_labels=labels).sample

    def forward(self, batch, gen):
        return F.mse_loss(self.predict(batch["control"], batch.get("labels")), batch["images"]), {}


def regression(
    cfg: RunConfig, train, out: Path, seconds: float, labels: np.ndarray | None = None, classes: int = 0
) -> RegressionStep:
    """The U-Net regression of ``train.images`` on ``train.control`` (and class ``labels``), a
    UNet2DModel of the denoiser's shape trained for ``seconds`` (kept in ``out/regression.safetensors``)."""
    dn = cfg.denoiser
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=train.size,
        in_channels=train.control.shape[3],
        out_channels=train.channels,
        block_out_channels=tuple(dn.block_out_channels),
        layers_per_block=dn.layers_per_block,
        down_block_types=("DownBlock2D",) * len(dn.block_out_channels),
        up_block_types=("UpBlock2D",) * len(dn.block_out_channels),
        norm_num_groups=min(32, min(dn.block_out_channels)),
        num_class_embeds=classes or None,
    )
    step = RegressionStep(unet)
    path = out / "regression.safetensors"
    if path.is_file():
        step.load_state_dict(load_tensors(path))
        return step.eval().requires_grad_(False)
    tensors = {"control": to_unit(train.control), "images": to_unit(train.images)}
    if labels is not None:
        tensors["labels"] = torch.from_numpy(labels)
    batches = ArrayBatches(tensors, dn.batch_size, 7)
    stage = Stage(
        "regression", step, list(step.parameters()), batches, 10**6, dn.lr, seconds, dn.ema_decay, 500
    )
    run_stage(stage, LoopOptions(seed=7, progress=True))
    atomic_save_tensors(step.state_dict(), path)
    atomic_write_json(out / "regression_log.json", {"steps": len(stage.log), "seconds": seconds})
    return step.eval().requires_grad_(False)


def predict(reg: RegressionStep, control: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
    """The regression's uint8 images (N, H, W, C)."""
    x = to_unit(control)
    lab = None if labels is None else torch.from_numpy(labels)
    with torch.no_grad():
        out = torch.cat(
            [
                reg.predict(x[i : i + 256], None if lab is None else lab[i : i + 256])
                for i in range(0, len(x), 256)
            ]
        )
    return ((out.clamp(-1, 1).permute(0, 2, 3, 1) + 1) * 127.5).round().numpy().astype(np.uint8)


def pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation per field and channel of (N, H, W, C) arrays: (N, C)."""
    a = a.reshape(len(a), -1, a.shape[-1]).astype(np.float64)
    b = b.reshape(len(b), -1, b.shape[-1]).astype(np.float64)
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1) + 1e-12)


def per_channel(r: np.ndarray) -> dict[str, float]:
    return {name: round(float(np.nanmean(r[:, c])), 4) for c, name in enumerate(CHANNELS)}


def shipped_oracle(model: FactorModel) -> Oracle:
    oracle = Oracle(model.spec.sizes, 5, model.shape.size)
    oracle.load_state_dict(load_tensors(SHIPPED / "oracle" / "oracle.safetensors"))
    return oracle.eval().requires_grad_(False)


def known_values(model: FactorModel, factors: np.ndarray) -> dict[int, np.ndarray]:
    """Each row's metadata as ``translate`` takes it; a value no training field had (an unseen
    compound) absent (-1)."""
    return {
        k: np.array([v if model.has_prototype(k, int(v)) else -1 for v in factors[:, k]])
        for k in range(len(model.spec))
    }


def judged(
    samples: np.ndarray | None, single: np.ndarray, truth: np.ndarray, heldout, oracle, real_f
) -> dict:
    """Pearson per channel of the sample mean (or the one prediction) against ``truth``, over all,
    seen and held-out fields, and the Frechet distance of single samples to the true fields."""
    r = pearson(single if samples is None else samples.astype(np.float64).mean(1), truth)
    return {
        "pearson": per_channel(r),
        "pearson_seen": per_channel(r[~heldout]),
        "pearson_heldout": per_channel(r[heldout]) if heldout.any() else None,
        "frechet": round(frechet(oracle_features(oracle, single), real_f), 3),
    }


def _common(a, cfg) -> dict:
    return {
        "command": "python benchmarks/control.py " + shlex.join(sys.argv[1:]),
        "samples": a.samples,
        "sample_steps": a.sample_steps,
        "minutes": a.minutes,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d"),
    }


def brightfield_to_stains(a) -> dict:
    cfg = make_run(a.out, a.minutes, a.steps, ["BF"], BF)
    t0 = time.time()
    result = fit(cfg, a.out, resume=True)
    control_seconds = time.time() - t0
    model = FactorModel.load(a.out / "model")
    reg = regression(cfg, result.train, a.out, 60 * a.minutes)

    test = cellsim(cfg.data.size, a.fields, seed=1, channels=BF)
    stains, bf = test.images[..., :5], test.images[..., 5:]
    heldout = make_split(model.spec, cfg.split).heldout(test.factors)
    t0 = time.time()
    samples = translate(model, bf, known_values(model, test.factors), a.samples, a.sample_steps, seed=0)
    sample_seconds = time.time() - t0
    blind = translate(model, bf, {}, samples=a.samples, steps=a.sample_steps, seed=0)
    pred = predict(reg, bf)
    oracle = shipped_oracle(model)
    real_f = oracle_features(oracle, stains)
    rows = {
        "model": judged(samples, samples[:, 0], stains, heldout, oracle, real_f),
        "model_no_metadata": judged(blind, blind[:, 0], stains, heldout, oracle, real_f),
        "regression": judged(None, pred, stains, heldout, oracle, real_f),
    }
    return {
        **_common(a, cfg),
        "model": rows["model"]["pearson"],
        "regression": rows["regression"]["pearson"],
        "frechet": {k: v["frechet"] for k, v in rows.items()},
        "rows": rows,
        "fields": a.fields,
        "heldout_fields": int(heldout.sum()),
        "control_stage": {"seconds": round(control_seconds, 1)},
        "sample_seconds": round(sample_seconds, 1),
    }


def ceiling(a) -> dict:
    """What any predictor can reach on brightfield -> stains, from cellsim's own renders: the same
    cells (``render(..., hidden=)``: same outlines, nuclei, nucleoli and brightfield) with other
    textures, mitochondria and noise, which the brightfield does not show. ``perfect_sampler.<n>``:
    Pearson of the mean of n such draws (samples from the true distribution of the stains given
    the cells) against another draw, the truth; ``conditional_mean``: the mean of
    ``--ceiling-draws`` draws, what a perfect regression (least squares) predicts. A calibrated
    generative model's n-sample mean can at best reach the first, the regression the second."""
    size = read_json(SHIPPED / "run_config.json")["data"]["size"]
    factors = sample_factors(a.fields, seed=1)

    def draw(h: int) -> np.ndarray:
        return to_uint8(render(factors, size, seed=1, hidden=h)).transpose(0, 2, 3, 1).astype(np.float64)

    truth = draw(0)
    counts = (1, 2, 4, 8, 16)
    total, sampler = np.zeros(truth.shape), {}
    for h in range(1, counts[-1] + 1):
        total += draw(h)
        if h in counts:
            sampler[str(h)] = per_channel(pearson(total / h, truth))
    mean = np.zeros(truth.shape)
    for h in range(a.ceiling_draws):
        mean += draw(1000 + h)
    return {
        "command": "python benchmarks/control.py " + shlex.join(sys.argv[1:]),
        "fields": a.fields,
        "size": size,
        "perfect_sampler": sampler,
        "conditional_mean": per_channel(pearson(mean / a.ceiling_draws, truth)),
        "conditional_mean_draws": a.ceiling_draws,
        "date": time.strftime("%Y-%m-%d"),
    }


def untreated(factors: np.ndarray) -> np.ndarray:
    """The same rows with the compound set to the control (DMSO) at dose 0."""
    out = factors.copy()
    out[:, 0], out[:, 1] = COMPOUND_NAMES.index(CONTROL), 0
    return out


def paired(size: int, n: int, seed: int) -> FactorDataset:
    """cellsim fields whose ``control`` is the same cells rendered untreated: ``render`` with the
    same seeds in its paired mode (``hidden``: each cell's draws in step whatever the compound, so
    the same centres, orientations, nucleoli and textures; the compound changes sizes, stains and
    mitochondria), the compound and dose set to DMSO."""
    factors = sample_factors(n, seed)

    def fields(f: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(to_uint8(render(f, size, seed, hidden=seed)).transpose(0, 2, 3, 1))

    return FactorDataset(fields(factors), factors, cellsim_spec(), "cellsim", fields(untreated(factors)))


def control_to_treated(a) -> dict:
    """Control -> treated: the branch reads the untreated render of the same cells (5 channels)."""
    names = [f"{c}@{CONTROL}" for c in CHANNELS]
    cfg = make_run(a.out, a.minutes, a.steps, names, None)
    data = paired(cfg.data.size, cfg.data.n, cfg.train.seed)
    split = make_split(data.spec, cfg.split)
    train = data.subset(~split.heldout(data.factors))
    t0 = time.time()
    fit(cfg, a.out, resume=True, data=(data, split, train))
    control_seconds = time.time() - t0
    model = FactorModel.load(a.out / "model")
    classes = len(COMPOUND_NAMES) * len(DOSES)
    reg = regression(
        cfg, train, a.out, 60 * a.minutes, train.factors[:, 0] * len(DOSES) + train.factors[:, 1], classes
    )

    test = paired(cfg.data.size, a.fields * 2, seed=1)
    keep = np.flatnonzero(
        (test.factors[:, 0] != COMPOUND_NAMES.index(CONTROL))
        & np.array([model.has_prototype(0, int(c)) for c in test.factors[:, 0]])
    )[: a.fields]
    test = test.subset(keep)
    heldout = split.heldout(test.factors)
    t0 = time.time()
    samples = translate(
        model, test.control, known_values(model, test.factors), a.samples, a.sample_steps, seed=0
    )
    sample_seconds = time.time() - t0
    pred = predict(reg, test.control, test.factors[:, 0] * len(DOSES) + test.factors[:, 1])
    # mean shift: the untreated image plus the training fields' mean treated-minus-untreated image
    # of the same compound x dose x cell line
    shift = np.zeros(test.images.shape, np.float64)
    groups = train.factors[:, :3]
    for i, g in enumerate(test.factors[:, :3]):
        m = (groups == g).all(1)
        shift[i] = (train.images[m].astype(np.float64) - train.control[m]).mean(0)
    shifted = np.clip(np.rint(test.control + shift), 0, 255).astype(np.uint8)
    oracle = shipped_oracle(model)
    real_f = oracle_features(oracle, test.images)
    rows = {
        "model": judged(samples, samples[:, 0], test.images, heldout, oracle, real_f),
        "regression": judged(None, pred, test.images, heldout, oracle, real_f),
        "mean_shift": judged(None, shifted, test.images, heldout, oracle, real_f),
        "copy_control": judged(None, test.control, test.images, heldout, oracle, real_f),
    }
    return {
        **_common(a, cfg),
        **{k: v["pearson"] for k, v in rows.items()},
        "frechet": {k: v["frechet"] for k, v in rows.items()},
        "rows": rows,
        "fields": int(len(test)),
        "heldout_fields": int(heldout.sum()),
        "control_stage": {"seconds": round(control_seconds, 1)},
        "sample_seconds": round(sample_seconds, 1),
        "regression_conditioning": "compound x dose class embedding",
    }


def structure_only_vs_metadata(a) -> dict:
    """Mol2Image's setting beside factordiff's on the shipped model (no training): samples from
    noise of cellsim's unseen compounds (top dose), conditioned on the compound's structure code
    alone (every other factor absent) or on it with each real field's metadata."""
    model = FactorModel.load(SHIPPED / "model")
    spec = model.spec
    kc, kd = spec.resolve("compound"), spec.resolve("dose")
    top = len(DOSES) - 1
    unseen = [c for c in range(len(COMPOUND_NAMES)) if not model.has_prototype(kc, c)]
    data = cellsim(model.shape.size, a.reference_fields, seed=2)
    f = data.factors
    oracle = shipped_oracle(model)
    control_mean = oracle_features(oracle, data.images[f[:, kc] == COMPOUND_NAMES.index(CONTROL)][:500]).mean(
        0
    )
    rows: dict[str, dict] = {"structure_only": {}, "factordiff": {}, "metadata_without_compound": {}}
    hits = {k: [] for k in rows}
    gen, real = {k: [] for k in rows}, []
    for c in unseen:
        chosen = np.flatnonzero((f[:, kc] == c) & (f[:, kd] == top))[: a.fields // len(unseen)]
        meta = known_values(model, f[chosen])
        block = compound_code(model, kc, COMPOUNDS[COMPOUND_NAMES[c]], COMPOUNDS, CONTROL)
        true_mean = oracle_features(oracle, data.images[chosen]).mean(0)
        real.append(data.images[chosen])
        for name in rows:
            values = {k: v for k, v in meta.items() if k != kc} if name != "structure_only" else {}
            block_c = None if name == "metadata_without_compound" else block
            x = sample_codes(model, len(chosen), values, kc, block_c, a.sample_steps, seed=c)
            feats = oracle_features(oracle, x)  # closer to the compound's real fields than to DMSO's
            hit = np.linalg.norm(feats - true_mean, axis=1) < np.linalg.norm(feats - control_mean, axis=1)
            rows[name][COMPOUND_NAMES[c]] = round(float(hit.mean()), 3)
            hits[name].append(hit)
            gen[name].append(x)
    real_f = oracle_features(oracle, np.concatenate(real))
    out = {
        name: {
            "unseen_closer_than_control": round(float(np.concatenate(hits[name]).mean()), 3),
            "frechet": round(frechet(oracle_features(oracle, np.concatenate(gen[name])), real_f), 3),
            "by_compound": rows[name],
        }
        for name in rows
    }
    return {
        "command": "python benchmarks/control.py " + shlex.join(sys.argv[1:]),
        **out,
        "compounds": [COMPOUND_NAMES[c] for c in unseen],
        "dose": DOSES[top],
        "fields": int(len(np.concatenate(real))),
        "sample_steps": a.sample_steps,
        "model": "pretrained/cellsim32 (not retrained: the structure-only row is the same network with every "
        "factor but the compound absent, which condition dropout trained it for)",
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d"),
    }


def sample_codes(model, n, values, kc, compound_block, steps, seed) -> np.ndarray:
    """``n`` samples from noise: ``values`` (prototypes) and the compound's ``compound_block``
    present, every other factor absent."""
    codes, present = known_codes(model, n, values)
    if compound_block is not None:
        b = model.factor_blocks[kc]
        codes[:, b], present[:, b] = compound_block, True
    gen = torch.Generator().manual_seed(seed)
    x_T = torch.randn(n, model.shape.channels, model.shape.size, model.shape.size, generator=gen)
    return model.generate(x_T, codes, steps, None, present)


PARTS = {
    "brightfield": ("brightfield_to_stains", brightfield_to_stains),
    "treated": ("control_to_treated", control_to_treated),
    "structure": ("structure_only_vs_metadata", structure_only_vs_metadata),
    "ceiling": ("brightfield_ceiling", ceiling),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=sorted(PARTS), default="brightfield")
    ap.add_argument("--out", type=Path, default=Path("runs/control-bf"))
    ap.add_argument("--minutes", type=float, default=30.0, help="the control stage's and the regression's")
    ap.add_argument(
        "--steps", type=int, default=100000, help="control stage steps (the minutes end it first)"
    )
    ap.add_argument("--fields", type=int, default=300)
    ap.add_argument(
        "--reference-fields", type=int, default=40000, help="structure: fields rendered to pick from"
    )
    ap.add_argument(
        "--ceiling-draws", type=int, default=256, help="ceiling: draws averaged for the conditional mean"
    )
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--sample-steps", type=int, default=20)
    a = ap.parse_args()
    torch.set_num_threads(2)
    key, part = PARTS[a.part]
    block = part(a)
    out = read_json(RESULTS) if RESULTS.is_file() else {}
    out[key] = block
    atomic_write_json(RESULTS, out)
    print(json.dumps({k: v for k, v in block.items() if k != "rows"}, indent=1))


if __name__ == "__main__":
    main()
