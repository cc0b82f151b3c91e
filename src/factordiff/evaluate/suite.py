"""``evaluate_run(RUN)``: every number and figure of a run's report, written to ``RUN/metrics.json``
and ``RUN/figures/``.

- the oracle (trained once per run on real images of every combination, saved in ``RUN/oracle``)
  and its accuracy on fresh real images;
- counterfactual effectiveness and preservation for seen and held-out targets;
- DDIM inversion + regeneration error;
- conditional samples from prototype codes, judged by the oracle, for seen and held-out combinations
  (``evaluate.guidance_form`` and ``evaluate.sample_guidance`` choose how the factors are composed);
- two-factor edits into held-out combinations and the soundness measures (``counterfactual.py``);
- the figures: a counterfactual grid, held-out edits, a sample grid.

Prototypes come from training images only; a value no training image had takes its code block from
a real image with that value (``TargetCodes``), and every section counts how often it did.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from factordiff.checkpoint import atomic_write_json
from factordiff.data.base import FactorDataset
from factordiff.data.images import save_png
from factordiff.data.sources import is_crop_source, prepare_data, traits
from factordiff.data.splits import Split, make_split
from factordiff.diffusion.guidance import Guidance
from factordiff.evaluate.cells import CellFactors, evaluate_cells
from factordiff.evaluate.counterfactual import (  # get_oracle, oracle_data: re-exported here
    Edits,
    Oracle,
    TargetCodes,
    evaluate_counterfactuals,
    get_oracle,
    run_edits,
    soundness,
)
from factordiff.evaluate.crops import evaluate_crop_run
from factordiff.evaluate.crops import summary_lines as crop_summary_lines
from factordiff.evaluate.latent import heldout_readout
from factordiff.evaluate.profile_suite import evaluate_profile_run
from factordiff.evaluate.profile_suite import summary_lines as profile_summary_lines
from factordiff.evaluate.sets import evaluate_set_run, set_summary_lines
from factordiff.models.images import FactorModel
from factordiff.models.runs import load_model, read_run_config, run_kind
from factordiff.train import training_curves

FIGURES = "figures"


@torch.no_grad()
def conditional_samples(
    model: FactorModel,
    oracle: Oracle,
    data: FactorDataset,
    split: Split,
    n: int,
    steps: int,
    seed: int,
    guidance: Guidance | None = None,
) -> dict:
    """Sample from noise under the prototype codes of random combinations (with ``guidance``, whose
    form composes the factors); oracle accuracy per factor (``by_factor``) and for all factors at
    once (``all_factors``), on seen and on held-out combinations.

    A value without a prototype takes a reference image's block (counted in ``codes_from_reference``);
    combinations with a value that no image has are left out (``combinations_skipped``)."""
    rng = np.random.default_rng(seed + 3)
    grid = data.spec.grid()
    held = split.heldout(grid)
    targets = TargetCodes(model, data, seed + 3)
    out = {}
    for kind, pool in (("seen", grid[~held]), ("heldout", grid[held])):
        if len(pool) == 0:
            continue
        possible = targets.possible(pool)
        skipped, pool = int((~possible).sum()), pool[possible]
        if len(pool) == 0:
            out[kind] = {
                "all_factors": None,
                "by_factor": {},
                "samples": 0,
                "codes_from_reference": 0,
                "combinations_skipped": skipped,
            }
            continue
        combos = pool[rng.choice(len(pool), n)]
        before = targets.from_reference
        codes = model.compose(combos, targets.block)
        x_T = torch.randn((n,) + _latent_shape(model), generator=torch.Generator().manual_seed(seed))
        pred = oracle.predict(model.generate(x_T, codes, steps, guidance))
        out[kind] = {
            "all_factors": float((pred == combos).all(1).mean()),
            "by_factor": {
                f.name: float((pred[:, k] == combos[:, k]).mean()) for k, f in enumerate(data.spec.factors)
            },
            "samples": n,
            "codes_from_reference": targets.from_reference - before,
            "combinations_skipped": skipped,
        }
    return out


def _latent_shape(model: FactorModel) -> tuple[int, int, int]:
    cfg = model.denoiser.unet.config
    return cfg.in_channels, cfg.sample_size, cfg.sample_size


def _tile(
    images: np.ndarray, rows: int, cols: int, pad: int = 2, marks: np.ndarray | None = None
) -> np.ndarray:
    """Images (rows*cols, H, W, C) -> one uint8 RGB mosaic; ``marks`` outlines cells in red."""
    h, w = images.shape[1:3]
    rgb = images if images.shape[3] == 3 else np.repeat(images[..., :1], 3, axis=3)
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    for i in range(min(len(rgb), rows * cols)):
        r, c = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        if marks is not None and marks[i]:
            canvas[y - pad : y + h + pad, x - pad : x + w + pad] = (220, 30, 30)
        canvas[y : y + h, x : x + w] = rgb[i]
    return canvas


def counterfactual_grid(
    model: FactorModel,
    data: FactorDataset,
    split: Split,
    rows: int,
    steps: int,
    guidance: float,
    seed: int,
    strength: float = 1.0,
) -> tuple[np.ndarray, list[dict], int]:
    """Rows: seen source images; columns: the source, its DDIM reconstruction, then one column per
    factor with that factor changed to another value (one with a prototype or a reference image).
    Returns the mosaic, what each row shows and how many target blocks came from reference images."""
    rng = np.random.default_rng(seed + 5)
    seen = np.flatnonzero(~split.heldout(data.factors))
    sources = rng.choice(seen, rows, replace=False)
    targets = TargetCodes(model, data, seed + 5)
    edits = Edits()
    for s in sources:
        for k in range(len(data.spec)):
            others = [v for v in np.flatnonzero(targets.available[k]) if v != data.factors[s, k]]
            edits.add(int(s), k, int(others[rng.integers(len(others))]))
    edited = run_edits(model, data, edits, steps, guidance, targets=targets, strength=strength)
    src = data.images[sources]
    codes = model.codes(src)
    recon = model.regenerate(src, codes, codes, steps, strength=strength)
    k = len(data.spec)
    cells = np.concatenate([src[:, None], recon[:, None], edited.reshape(rows, k, *src.shape[1:])], 1)
    captions = [
        {
            "source": data.spec.values_of(data.factors[s]),
            "targets": {
                data.spec.factors[j].name: data.spec.factors[j].values[edits.target[i * k + j]]
                for j in range(k)
            },
        }
        for i, s in enumerate(sources)
    ]
    return _tile(cells.reshape(-1, *src.shape[1:]), rows, k + 2), captions, targets.from_reference


def sample_grid(
    model: FactorModel,
    data: FactorDataset,
    split: Split,
    steps: int,
    seed: int,
    guidance: Guidance | None = None,
) -> tuple[np.ndarray, dict]:
    """Conditional samples over the two factors of the held-out block (or the first two factors),
    the others fixed; held-out cells are outlined in red. A value without a prototype takes a
    reference image's block; a cell with a value that no image has stays grey."""
    spec = data.spec
    names = list(split.held_values) if len(split.held_values) == 2 else spec.names[:2]
    a, b = spec.position(names[0]), spec.position(names[1])
    base = data.factors[0].copy()
    combos = []
    for i in range(spec.sizes[a]):
        for j in range(spec.sizes[b]):
            c = base.copy()
            c[a], c[b] = i, j
            combos.append(c)
    combos = np.array(combos)
    targets = TargetCodes(model, data, seed)
    possible = targets.possible(combos)
    images = np.full((len(combos), data.size, data.size, data.channels), 128, np.uint8)
    if possible.any():
        codes = model.compose(combos[possible], targets.block)
        x_T = torch.randn((1,) + _latent_shape(model), generator=torch.Generator().manual_seed(seed)).expand(
            len(codes), -1, -1, -1
        )
        images[possible] = model.generate(x_T.contiguous(), codes, steps, guidance)
    marks = split.heldout(combos)
    info = {
        "rows": spec.factors[a].name,
        "row_values": list(spec.factors[a].values),
        "columns": spec.factors[b].name,
        "column_values": list(spec.factors[b].values),
        "fixed": spec.values_of(base),
        "codes_from_reference": targets.from_reference,
        "cells_skipped": int((~possible).sum()),
    }
    return _tile(images, spec.sizes[a], spec.sizes[b], marks=marks), info


def evaluate_run(
    run: Path, data: FactorDataset | None = None, progress: bool = True, per_factor: int | None = None
) -> dict:
    """Compute an image run's metrics and figures; writes ``RUN/metrics.json`` and ``RUN/figures/*.png``."""
    run = Path(run)
    cfg, model = load_model(run)
    t0 = time.monotonic()
    if data is None:
        data, _, _ = prepare_data(cfg, run)
    split = make_split(data.spec, cfg.split)
    e = cfg.evaluate
    oracle, oracle_acc = get_oracle(run, cfg, data, progress)
    cf, _ = evaluate_counterfactuals(
        model,
        oracle,
        data,
        split,
        per_factor or e.counterfactual_sources or e.sources,
        e.steps,
        e.guidance,
        seed=cfg.train.seed,
        progress=progress,
        strength=e.edit_strength,
    )
    sample_guidance = Guidance(
        all=e.sample_guidance, form=e.guidance_form
    )  # joint at weight 1: the plain conditional model
    samples = conditional_samples(
        model,
        oracle,
        data,
        split,
        n=min(200, 2 * (per_factor or e.sources)),
        steps=e.sample_steps,
        seed=cfg.train.seed,
        guidance=sample_guidance,
    )
    sound = soundness(
        model,
        oracle,
        data,
        split,
        e.soundness_sources,
        e.steps,
        e.guidance,
        seed=cfg.train.seed,
        strength=e.edit_strength,
    )
    readout = heldout_readout(model, data, split, seed=cfg.train.seed)
    t = traits(cfg)
    roles = CellFactors.of(data.spec, {"compound": t.perturbation} if t.perturbation else None, t.control)
    cells = None
    if {"compound", "batch"} <= set(roles.pos):
        cells = evaluate_cells(
            model,
            oracle,
            data,
            split,
            t.channel_names(model.shape.channels),
            e,
            n=per_factor or e.sources,
            seed=cfg.train.seed,
            library=t.smiles or None,
            cells=roles,
        )
    grid, captions, grid_refs = counterfactual_grid(
        model,
        data,
        split,
        rows=6,
        steps=e.steps,
        guidance=e.guidance,
        seed=cfg.train.seed,
        strength=e.edit_strength,
    )
    save_png(grid, run / FIGURES / "counterfactuals.png")
    sgrid, sinfo = sample_grid(model, data, split, e.sample_steps, cfg.train.seed, sample_guidance)
    save_png(sgrid, run / FIGURES / "samples.png")
    metrics = {
        "counterfactual": {
            "seen": cf["seen"],
            "heldout": cf["heldout"],
            "heldout_pairs": cf["heldout_pairs"],
            "steps": e.steps,
            "edit_strength": e.edit_strength,
            "guidance": e.guidance,
        },
        "reconstruction_mse": cf["reconstruction"]["mse"],
        "reconstruction": cf["reconstruction"],
        "samples": samples,
        "samples_guidance": {"form": e.guidance_form, "weight": e.sample_guidance, "steps": e.sample_steps},
        "soundness": sound,
        "distiller_readout": readout,
        **(cells or {}),  # batch_swap, frechet, unseen_compound, map (evaluate/cells.py)
        "oracle_accuracy": oracle_acc,
        "split": split.to_json(),
        "missing_prototypes": [
            f"{f.name}={f.values[v]}"
            for k, f in enumerate(data.spec.factors)
            for v in range(f.size)
            if not model.has_prototype(k, v)
        ],
        "codes_from_value": [  # continuous values no training image had: coded from the value
            f"{f.name}={f.values[v]}"
            for k, f in enumerate(data.spec.factors)
            for v in range(f.size)
            if not model.seen_value(k, v) and model.has_prototype(k, v)
        ],
        "figures": {
            "counterfactuals": {
                "file": f"{FIGURES}/counterfactuals.png",
                "columns": ["source", "reconstruction"] + data.spec.names,
                "rows": captions,
                "targets_from_reference": grid_refs,
            },
            "samples": {"file": f"{FIGURES}/samples.png", **sinfo},
        },
        "training": training_curves(run / "train_log.jsonl"),
        "seconds": round(time.monotonic() - t0, 1),
    }
    atomic_write_json(run / "metrics.json", metrics)
    return metrics


def _num(v, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def image_summary_lines(metrics: dict) -> list[str]:
    """A few lines for the terminal: edits, samples, soundness and reconstruction."""
    lines = []
    cf = metrics.get("counterfactual", {})
    for kind in ("seen", "heldout"):
        if cf.get(kind):
            c = cf[kind]
            lines.append(
                f"{kind:8s} effectiveness {_num(c['effectiveness'])}  preservation "
                f"{_num(c['preservation'])}  all_right {_num(c.get('all_right'))}  ({c['edits']} edits)"
            )
    pairs = cf.get("heldout_pairs")
    if pairs and pairs.get("absent"):
        lines.append(f"heldout pairs: not measured ({pairs['absent']})")
    elif pairs:
        lines.append(
            f"heldout pairs ({' + '.join(pairs['factors'])}) effectiveness {_num(pairs['effectiveness'])}  "
            f"preservation {_num(pairs['preservation'])}  all_right {_num(pairs['all_right'])}  "
            f"({pairs['edits']} edits)"
        )
    samples = metrics.get("samples", {})
    if samples:
        g = metrics.get("samples_guidance", {})
        form = f" ({g['form']} guidance {g['weight']:g})" if g else ""
        lines.append(
            f"samples{form} all factors right: "
            + "  ".join(f"{k} {_num(v['all_factors'])}" for k, v in samples.items())
        )
    sound = metrics.get("soundness")
    if sound:
        comp = "  ".join(
            f"x{n} L1 {_num(v['l1'], 4)} agree {_num(v['oracle_agreement'])}"
            for n, v in sound["composition"].items()
        )
        rev = sound["reversibility"]
        lines.append(
            f"soundness null edit {comp}  |  A->B->A L1 {_num(rev['l1'], 4)} agree "
            f"{_num(rev['oracle_agreement'])}"
        )
    swap = metrics.get("batch_swap")
    if swap and swap.get("edits"):
        ms = swap.get("mean_shift", {})
        copy = swap.get("copy_source", {})
        lines.append(
            f"held-out batch swaps: target batch {_num(swap['target_batch_rate'])} (mean shift "
            f"{_num(ms.get('target_batch_rate'))})  perturbation kept {_num(swap['compound_kept_rate'])} "
            f"(mean shift {_num(ms.get('compound_kept_rate'))}, copy {_num(copy.get('compound_kept_rate'))})"
        )
    unseen = metrics.get("unseen_compound")
    if unseen and unseen.get("closer_than_control") is not None:
        lines.append(
            f"unseen perturbations closer to their real fields than the control: "
            f"{_num(unseen['closer_than_control'])} (nearest training perturbation's real fields "
            f"{_num(unseen.get('nearest_compound'))}, copy the control {_num(unseen.get('copy_control'))})"
        )
    if "reconstruction_mse" in metrics:
        lines.append(f"reconstruction_mse {metrics['reconstruction_mse']:.2e}")
    return lines


def evaluate(run: Path, progress: bool = True) -> dict:
    """The one evaluation driver: every figure of the run at ``run``, whatever its kind; writes and
    returns ``RUN/metrics.json`` (with ``kind``)."""
    if run_kind(run) == "profiles":
        return evaluate_profile_run(Path(run), progress=progress)
    if run_kind(run) == "sets":
        return evaluate_set_run(Path(run), progress=progress)
    if is_crop_source(read_run_config(run).data.source):
        return evaluate_crop_run(Path(run), progress=progress)
    return evaluate_run(Path(run), progress=progress)


def summary_lines(metrics: dict) -> list[str]:
    """The terminal summary of ``evaluate``'s metrics, for either kind of run."""
    if metrics.get("kind") == "crops":
        return crop_summary_lines(metrics)
    if metrics.get("kind") == "sets":
        return set_summary_lines(metrics)
    return (
        profile_summary_lines(metrics) if metrics.get("kind") == "profiles" else image_summary_lines(metrics)
    )
