"""scLDM over populations of cells, measured on the real BBBC021 fields (``scldm`` of
``benchmarks/results/joint.json``), from the model's parts in ``diffusion/sets.py``.

    python benchmarks/scldm.py [--holdout cyclohexamide_50@Week4_27821] [--seed 0]

Each field (plate, well, site; 50 fields of 59 to 330 crops) is a set of cells, each cell the
``evaluate/morphology.py`` features of its crop (raw intensities), z-scored on the training cells.
The fields of one treatment x plate cell are held out: nothing fitted sees them (the z-scoring,
the set autoencoder, the token scale, the diffusion transformer). The model:

1. the set autoencoder on the training fields (each step 16 fields, 64 cells drawn from each);
2. each training field encoded ``--views`` times from fresh draws of 64 of its cells: the tokens;
3. the diffusion transformer over the tokens, conditioned on treatment and plate (classifier-free
   dropout 0.1 per factor), through ``objective.DiffusionStep``;
4. for the held-out cell, one token draw per held-out field under (treatment, plate) with guidance
   ``--guidance``, each decoded to that field's number of cells.

Judged by the energy distance (z-scored features) of the pooled generated cells to the pooled real
held-out cells, beside: *nearest*, the same treatment's cells on the other plates; *control*, the
same plate's DMSO cells; *per-field mean model*, the additive shift (the plate's DMSO mean plus the
treatment's mean shift from DMSO on the other plates) repeated once per cell, the population a
per-well profile model gives; *floor*, the held-out fields split in two halves (replicate floor).
Every population is subsampled to the held-out cell count.
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
import pandas as pd
import torch

from factordiff.checkpoint import atomic_write_json
from factordiff.config import DenoiserConfig
from factordiff.data.crops import read_crops
from factordiff.diffusion.adapters import TimeEmbeddingAdapter
from factordiff.diffusion.condition import Condition
from factordiff.diffusion.guidance import Guidance
from factordiff.diffusion.objective import DiffusionStep
from factordiff.diffusion.sampling import sample
from factordiff.diffusion.sets import SetAutoencoder, SetTokenDenoiser, energy_distance
from factordiff.encoders.metadata import MetadataEmbedder
from factordiff.evaluate.morphology import crop_features
from factordiff.factors import Factor, FactorSpec

RESULTS = Path(__file__).parent / "results" / "joint.json"
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real" / "bbbc021-singlecell"


def load_cells(stack: Path) -> tuple[np.ndarray, pd.DataFrame]:
    """Features (N, F) of every crop and its table with ``treatment`` and ``field`` columns."""
    table = pd.read_csv(stack.with_suffix(".csv"))
    dose = table["Metadata_Concentration"].astype(str)
    table["treatment"] = np.where(table["Metadata_Compound"] == "DMSO", "DMSO", "cyclohexamide_" + dose)
    table["field"] = (
        table["Metadata_Plate"] + "/" + table["Metadata_Well"] + "/" + table["Metadata_Site"].astype(str)
    )
    images = read_crops(stack, stack.with_suffix(".csv"), ["DAPI", "Tubulin", "Actin"]).images
    return crop_features(images), table


def ed(a: np.ndarray, b: np.ndarray) -> float:
    return float(energy_distance(torch.from_numpy(a)[None], torch.from_numpy(b)[None])[0])


def draw(x: np.ndarray, n: int, rng) -> np.ndarray:
    return x[rng.choice(len(x), n, replace=len(x) < n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--crops", default=str(SHARED / "crops.npz"))
    ap.add_argument("--holdout", default="cyclohexamide_50@Week4_27821", help="TREATMENT@PLATE held out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ae-steps", type=int, default=3000)
    ap.add_argument("--dit-steps", type=int, default=4000)
    ap.add_argument("--views", type=int, default=32, help="token draws per training field")
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dry-run", action="store_true", help="print the figures, write nothing")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    gen = torch.Generator().manual_seed(a.seed)
    t0 = time.monotonic()
    feats, table = load_cells(Path(a.crops))
    treatment, plate = a.holdout.split("@")
    held = ((table["treatment"] == treatment) & (table["Metadata_Plate"] == plate)).to_numpy()
    if not held.any():
        sys.exit(f"--holdout {a.holdout}: no crops of that treatment on that plate")
    ok = np.isfinite(feats).all(1)
    mean, sd = feats[~held & ok].mean(0), feats[~held & ok].std(0) + 1e-6
    z = ((np.nan_to_num(feats) - mean) / sd).astype(np.float32)
    spec = FactorSpec(
        (
            Factor("treatment", tuple(sorted(set(table["treatment"]))), "categorical"),
            Factor("plate", tuple(sorted(set(table["Metadata_Plate"]))), "categorical"),
        )
    )
    fields = sorted(set(table["field"][~held]))
    members = {f: np.flatnonzero((table["field"] == f).to_numpy()) for f in fields}
    labels = {
        f: [
            spec.factors[0].index(table["treatment"][r[0]]),
            spec.factors[1].index(table["Metadata_Plate"][r[0]]),
        ]
        for f, r in members.items()
    }
    m = 64
    ae = SetAutoencoder(z.shape[1], tokens=8, dim=16, width=128)
    opt = torch.optim.AdamW(ae.parameters(), lr=1e-3)
    for step in range(a.ae_steps):
        batch = [draw(z[members[f]], m, rng) for f in rng.choice(fields, 16)]
        loss = ae.loss(torch.from_numpy(np.stack(batch)), None, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 500 == 0:
            print(f"autoencoder {step}: energy {loss.item():.3f}", flush=True)
    ae.eval().requires_grad_(False)
    sets = np.stack([draw(z[members[f]], m, rng) for f in fields for _ in range(a.views)])
    with torch.no_grad():
        tokens = torch.cat([ae.encode(torch.from_numpy(sets[i : i + 256])) for i in range(0, len(sets), 256)])
    scale = float(tokens.std())
    x = tokens / scale
    factors = torch.tensor([labels[f] for f in fields for _ in range(a.views)])
    dn = DenoiserConfig(cond_dropout=0.1)
    embedder = MetadataEmbedder(spec, 8)
    denoiser = SetTokenDenoiser(8, 16, width=128, depth=4, adapter=TimeEmbeddingAdapter(2, 8, 128, 128))
    step_fn = DiffusionStep(denoiser, dn, embedder=embedder)
    params = list(denoiser.parameters()) + list(embedder.parameters())
    opt = torch.optim.AdamW(params, lr=4e-4)
    for step in range(a.dit_steps):
        rows = torch.randint(0, len(x), (64,), generator=gen)
        loss, _ = step_fn({"x": x[rows], "factors": factors[rows]}, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 500 == 0:
            print(f"transformer {step}: loss {loss.item():.3f}", flush=True)
    denoiser.eval()
    held_fields = sorted(set(table["field"][held]))
    sizes = [int((table["field"] == f).sum()) for f in held_fields]
    target = torch.tensor([[spec.factors[0].index(treatment), spec.factors[1].index(plate)]] * len(sizes))
    with torch.no_grad():
        codes = embedder(target)
        cond = Condition.full(codes)
        noise = torch.randn(len(sizes), 8, 16, generator=gen)
        guidance = Guidance(all=a.guidance)
        toks = sample(denoiser, noise, cond, dn, 50, guidance) * scale
        generated = np.concatenate(
            [ae.decode(toks[i : i + 1], n, gen)[0].numpy() for i, n in enumerate(sizes)]
        )
    truth = z[held]
    n = len(truth)
    same_t = ((table["treatment"] == treatment) & (table["Metadata_Plate"] != plate)).to_numpy()
    dmso_p = ((table["treatment"] == "DMSO") & (table["Metadata_Plate"] == plate)).to_numpy()
    dmso_o = ((table["treatment"] == "DMSO") & (table["Metadata_Plate"] != plate)).to_numpy()
    shift = z[dmso_p].mean(0) + z[same_t].mean(0) - z[dmso_o].mean(0)
    halves = np.array([i % 2 for i, f in enumerate(held_fields)])
    in_half = table["field"][held].map(dict(zip(held_fields, halves))).to_numpy()
    out = {
        "model": ed(generated, truth),
        "nearest": ed(draw(z[same_t], n, rng), truth),
        "control": ed(draw(z[dmso_p], n, rng), truth),
        "per_well_model": ed(np.repeat(shift[None], n, 0).astype(np.float32), truth),
        "floor": ed(truth[in_half == 0], truth[in_half == 1]) if len(held_fields) > 1 else None,
        "holdout": a.holdout,
        "heldout_fields": len(held_fields),
        "heldout_cells": n,
        "training_fields": len(fields),
        "features": int(z.shape[1]),
        "seconds": round(time.monotonic() - t0, 1),
        "command": "python " + shlex.join(sys.argv),
    }
    print(json.dumps(out, indent=1))
    if a.dry_run:
        return
    saved = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    saved["scldm"] = {**out, "machine": f"{platform.machine()}, torch {torch.__version__}"}
    atomic_write_json(RESULTS, saved)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
