"""``analyze_run(RUN)``: the latent-space analysis of a run, added to ``RUN/metrics.json`` (key
``analysis``) and ``RUN/figures/``, and so to the report.

Disentanglement metrics of the model's codes (disentanglement_lib protocols, raw and with each block
reduced to its first principal component), traversals of every block, interpolation strips with
their smoothness, a perceptual-path-length estimate, linear and few-shot probes, projections.

Every statistic here is fitted on codes of training images only (the metrics' predictors, the
probes, the PCAs): no held-out combination reaches them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from factordiff.checkpoint import atomic_write_json, read_json
from factordiff.data.images import save_png
from factordiff.data.sources import prepare_data
from factordiff.data.splits import make_split
from factordiff.errors import FactordiffError
from factordiff.evaluate import latent
from factordiff.evaluate.disentanglement import score_all
from factordiff.evaluate.suite import FIGURES, _tile, get_oracle
from factordiff.models.runs import load_model


def block_names(model) -> list[str]:
    """What each code block stands for: its factor, or for unsupervised segments the factors aligned to it."""
    names = []
    for j in range(
        model.encoder(torch.zeros(1, model.shape.channels, model.shape.size, model.shape.size)).shape[1]
    ):
        carried = [f.name for f, b in zip(model.spec.factors, model.factor_blocks) if b == j]
        names.append(f"block {j}" + (f" ({', '.join(carried)})" if carried else ""))
    return names


def code_metrics(
    codes: np.ndarray, factors: np.ndarray, scale: float = 1.0, seed: int = 0, progress: bool = False
) -> dict:
    """disentanglement_lib metrics on flattened codes, raw and first-principal-component per block."""
    n, k, d = codes.shape
    flat = codes.reshape(n, k * d).astype(np.float64)
    raw = score_all(flat, factors, blocks=[d] * k, first_pc=False, scale=scale, seed=seed, progress=progress)
    out = {"raw": raw}
    if d > 1:
        out["first_pc"] = score_all(
            flat, factors, blocks=[d] * k, first_pc=True, scale=scale, seed=seed, progress=progress
        )
    return out


def probes(codes: np.ndarray, factors: np.ndarray, names: list[str], seed: int = 0) -> dict:
    flat = codes.reshape(len(codes), -1)
    linear = latent.linear_probe(flat, factors, seed)
    return {
        name: {
            "linear": linear[k],
            **{f"5way_{s}shot": latent.few_shot(flat, factors[:, k], s, seed=seed) for s in (1, 5, 10)},
        }
        for k, name in enumerate(names)
    }


PATH_STEPS = 20  # the latent paths invert with the ODE all the way (their x_T is interpolated): 20
# DDIM steps, the edits' count before edits took the DDPM inversion at 5 (``evaluate.edit_inversion``)


def analyze_run(
    run: Path, images: int = 5000, metric_scale: float = 1.0, steps: int | None = None, progress: bool = True
) -> dict:
    """Compute the analysis and merge it into ``RUN/metrics.json``; returns the analysis section."""
    run = Path(run)
    cfg, model = load_model(run)
    if not (run / "metrics.json").is_file():
        raise FactordiffError(f"{run}: no metrics.json; run factordiff evaluate {run} first")
    data, _, _ = prepare_data(cfg, run)
    split = make_split(data.spec, cfg.split)
    steps = steps or PATH_STEPS
    rng = np.random.default_rng(cfg.train.seed + 11)
    seen = np.flatnonzero(~split.heldout(data.factors))  # the training images
    rows = np.sort(rng.choice(seen, min(images, len(seen)), replace=False))
    codes = model.codes(data.images[rows]).numpy()
    factors = data.factors[rows]
    oracle, _ = get_oracle(run, cfg, data, progress)
    extractor = oracle.backbone

    source = data.images[rng.choice(seen)]
    frames = 8
    sample_codes = torch.from_numpy(codes[:512])
    trav = [
        latent.traversal(model, source, k, latent.block_axis(model, sample_codes, k, frames), steps)
        for k in range(codes.shape[1])
    ]
    save_png(_tile(np.concatenate(trav), len(trav), frames), run / FIGURES / "traversals.png")

    pairs = rng.choice(seen, (3, 2), replace=False)
    strips, smooth = [], []
    for a, b in pairs:
        path = latent.interpolation(model, data.images[a], data.images[b], frames, steps)
        strips.append(path)
        smooth.append(latent.path_smoothness(extractor, path))
    save_png(_tile(np.concatenate(strips), len(strips), frames), run / FIGURES / "interpolations.png")
    save_png(latent.block_projections(codes, factors), run / FIGURES / "projections.png", scale=1)

    analysis = {
        "disentanglement": code_metrics(codes, factors, metric_scale, cfg.train.seed, progress),
        "probes": probes(codes, factors, data.spec.names, cfg.train.seed),
        "interpolation_smoothness": {
            "paths": smooth,
            "mean_spread": float(np.mean([s["spread"] for s in smooth])),
        },
        "perceptual_path_length": latent.perceptual_path_length(
            model, extractor, data.images[seen], steps=min(steps, 20), seed=cfg.train.seed
        ),
        "images": len(rows),
        "figures": {
            "traversals": {"file": f"{FIGURES}/traversals.png", "rows": block_names(model), "frames": frames},
            "interpolations": {
                "file": f"{FIGURES}/interpolations.png",
                "pairs": [[int(a), int(b)] for a, b in pairs],
            },
            "projections": {
                "file": f"{FIGURES}/projections.png",
                "rows": "code blocks",
                "columns": data.spec.names,
            },
        },
    }
    metrics = read_json(run / "metrics.json")
    metrics["analysis"] = analysis
    atomic_write_json(run / "metrics.json", metrics)
    return analysis
