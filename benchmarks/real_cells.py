"""Real cells: held-out (treatment, plate) cells of the real BBBC021 single-cell crops regenerated
by an image run and judged as profiles, into ``benchmarks/results/real_cells.json``.

    python benchmarks/real_cells.py [--data ../shared/data/real/bbbc021-singlecell] [--minutes 30]

One run (``factordiff fit --data crops:crops.npz``, 64x64, ``--minutes``) holds out two cells:

- cyclohexamide 15 uM on plate Week4_27821, regenerated from that plate's DMSO crops with the
  compound and dose set (a treatment the plate never showed);
- DMSO on plate Week4_27801 (a plate swap: the plate stays seen through its treated crops),
  regenerated from the other plates' DMSO crops with the plate set.

Every crop, real or regenerated, becomes a profile (``factordiff.evaluate.morphology``: nucleus
shape, per-channel intensity and texture, in raw units), z-scored by the training crops' features.
Each method is judged against the real held-out crops: the z-scored mean-feature distance (mean
over features of |mean difference|), the energy distance and a classifier two-sample test (ROC
AUC, 0.5 = indistinguishable). Methods: the model; *copy* the source crops; *mean shift* (per
channel, pixels + the training crops' channel-mean difference between the target's and the
source's values of the set factors, on crops matching the source's other factors where there are
some: ``factordiff.evaluate.baselines.mean_shift`` on channel means); *nearest* condition (real
training crops of the condition with most factors equal to the target, ties to the set factors:
the same treatment on other plates, or DMSO on other plates for the plate swap); and the
*replicate floor*: the real held-out crops split in two halves by field. Sources: at most
``--sources`` training crops, drawn with ``--seed``. The run folder (``--run``) is reused when it
holds a finished fit (its fit time: from its run_config.json to its model's config.json).
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

from factordiff import load_run
from factordiff.checkpoint import atomic_write_json
from factordiff.cli import main as cli
from factordiff.data.sources import prepare_crops
from factordiff.data.splits import select
from factordiff.evaluate.baselines import baseline_rows, mean_shift
from factordiff.evaluate.distances import classifier_two_sample, energy_distance
from factordiff.evaluate.morphology import crop_features, feature_names
from factordiff.evaluate.profiling import standardizer
from factordiff.regenerate import regenerate

RESULTS = Path(__file__).parent / "results" / "real_cells.json"
FACTORS = "Metadata_Compound,Metadata_Concentration,Metadata_Plate"
PLATES = ("Week4_27481", "Week4_27521", "Week4_27542", "Week4_27801", "Week4_27821", "Week4_27861")
CELLS = [
    {
        "name": "cyclohexamide 15 uM on Week4_27821",
        "heldout": "Metadata_Compound=cyclohexamide,Metadata_Concentration=15,Metadata_Plate=Week4_27821",
        "sources": ["Metadata_Compound=DMSO,Metadata_Plate=Week4_27821"],
        "set": "Metadata_Compound=cyclohexamide,Metadata_Concentration=15",
    },
    {
        "name": "DMSO on Week4_27801 (plate swap)",
        "heldout": "Metadata_Compound=DMSO,Metadata_Plate=Week4_27801",
        "sources": [f"Metadata_Compound=DMSO,Metadata_Plate={p}" for p in PLATES if p != "Week4_27801"],
        "set": "Metadata_Plate=Week4_27801",
    },
]


def judge(rows: np.ndarray, truth: np.ndarray, scale, seed: int) -> dict:
    g, t = scale(rows), scale(truth)
    return {
        "distance": float(np.abs(g.mean(0) - t.mean(0)).mean()),
        "energy": energy_distance(g, t),
        "c2st_auc": classifier_two_sample(g, t, seed),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real" / "bbbc021-singlecell"
    ap.add_argument("--data", default=str(default))
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--sources", type=int, default=200, help="source crops regenerated per cell")
    ap.add_argument("--steps", type=int, default=None, help="solver steps (default: the run's)")
    ap.add_argument("--run", default="runs/real-cells")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    stack = Path(a.data) / "crops.npz"
    if not stack.is_file():
        sys.exit(
            f"{stack}: not found; this benchmark needs the real BBBC021 crops of ../shared (see its README)"
        )
    torch.set_num_threads(2)
    fit_argv = ["fit", "--data", f"crops:{stack}", "--channels", "DAPI,Tubulin,Actin", "--factors", FACTORS]
    for cell in CELLS:
        fit_argv += ["--holdout-where", cell["heldout"]]
    fit_argv += ["--size", str(a.size), "--minutes", f"{a.minutes:g}", "--seed", str(a.seed), "--out", a.run]
    run_path = Path(a.run)
    if not (run_path / "model" / "config.json").is_file():
        t0 = time.monotonic()
        if cli(fit_argv) != 0:
            sys.exit("fit failed")
        print(f"fit: {time.monotonic() - t0:.0f} s", flush=True)
    run = load_run(run_path)
    # wall clock of the fit: from its run_config.json to its model's config.json
    fit_seconds = (run_path / "model" / "config.json").stat().st_mtime - (
        run_path / "run_config.json"
    ).stat().st_mtime
    crops = prepare_crops(run.config)
    st, spec, f = crops.stack, crops.stack.spec, crops.stack.factors
    rng = np.random.default_rng(a.seed)
    train_rows = np.flatnonzero(crops.train)
    sample = np.sort(rng.choice(train_rows, min(1500, len(train_rows)), replace=False))
    print("features of training crops ...", flush=True)
    scale = standardizer(crop_features(st.images[sample]))
    means = st.images.reshape(len(st.images), -1, st.images.shape[3]).mean(1)  # per-crop channel means
    # a crop's field of view: its plate, well and site
    fields = np.char.add(
        np.char.add(st.metadata["Metadata_Plate"], "/" + st.metadata["Metadata_Well"]),
        "/" + st.metadata["Metadata_Site"],
    )
    out = []
    for cell in CELLS:
        truth = np.flatnonzero(select(spec, f, [cell["heldout"]], st.metadata))
        src_all = np.flatnonzero(select(spec, f, cell["sources"], st.metadata) & crops.train)
        src = np.sort(rng.choice(src_all, min(a.sources, len(src_all)), replace=False))
        t0 = time.monotonic()
        result = regenerate(run, cell["sources"], [cell["set"]], steps=a.steps, seed=a.seed, rows=src)
        assert (result.metadata["Metadata_source_row"].to_numpy() == src).all()
        plates = result.metadata[crops.intensity.column].to_numpy(str)
        generated = crops.intensity.raw(result.samples, plates)
        regen_seconds = time.monotonic() - t0
        target = f[src].copy()
        for k, value in ((spec.resolve(n), v) for n, v in (p.split("=") for p in cell["set"].split(","))):
            target[:, k] = spec.factors[k].index(value)
        shifted, _ = mean_shift(means, f, crops.train, src, target)
        shift = (shifted - means[src])[:, None, None, :]
        info = np.iinfo(st.images.dtype)
        pixel_shift = np.clip(st.images[src].astype(np.float32) + shift, info.min, info.max).astype(
            st.images.dtype
        )
        truth_sample = truth if len(truth) <= 400 else np.sort(rng.choice(truth, 400, replace=False))
        real = crop_features(st.images[truth_sample])
        nearest_idx = baseline_rows(
            "nearest",
            spec,
            np.arange(len(f))[:, None].astype(np.float32),
            f,
            crops.train,
            src,
            target,
            a.seed,
        )[:, 0].astype(int)
        methods = {
            "model": crop_features(generated),
            "copy": crop_features(st.images[src]),
            "mean_shift": crop_features(pixel_shift),
            "nearest": crop_features(st.images[nearest_idx]),
        }
        res = {
            "cell": cell["name"],
            "heldout": cell["heldout"],
            "set": cell["set"],
            "sources": int(len(src)),
            "truth_crops": int(len(truth)),
            "regenerate_seconds": round(regen_seconds, 1),
            "methods": {name: judge(x, real, scale, a.seed) for name, x in methods.items()},
        }
        # the replicate floor: the held-out crops in two halves by field
        names = np.unique(fields[truth])
        half = set(names[rng.permutation(len(names))[: len(names) // 2]].tolist())
        first = np.asarray([fields[i] in half for i in truth])
        halves = [crop_features(st.images[truth[first]]), crop_features(st.images[truth[~first]])]
        res["floor"] = judge(*halves, scale, a.seed)
        res["floor_fields"] = int(len(names))
        floor = res["floor"]["distance"]
        copy = res["methods"]["copy"]["distance"]
        res["model_gap_share"] = (res["methods"]["model"]["distance"] - floor) / (copy - floor)
        print(json.dumps(res, indent=1), flush=True)
        out.append(res)
    atomic_write_json(
        RESULTS,
        {
            "machine": f"{platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}",
            "date": time.strftime("%Y-%m-%d"),
            "command": "python " + shlex.join(sys.argv),
            "fit_command": "factordiff " + shlex.join(fit_argv[:2] + ["crops:crops.npz"] + fit_argv[3:]),
            "fit_seconds": round(fit_seconds, 1),
            "features": len(feature_names(st.channels)),
            "cells": out,
        },
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
