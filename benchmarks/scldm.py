"""scLDM over populations of cells on the real BBBC021 fields (``scldm`` of
``benchmarks/results/joint.json``), through the set run kind: ``factordiff fit --model set`` and
``factordiff evaluate`` (``models/sets.py``, ``evaluate/sets.py``).

    python benchmarks/scldm.py [--holdout cyclohexamide@50@Week4_27821] [--seed 0]

Each crop of ``../shared/data/real/bbbc021-singlecell`` becomes a cell: its
``evaluate/morphology.py`` features (nucleus shape, per-channel intensity and texture), one row of
a single-cell table with its plate, well, site, compound and concentration; each field (plate,
well, site: 50 fields of 59 to 330 cells) is a set. The fields of one compound x dose x plate are
held out (``--holdout-where``): nothing fitted sees them. The run's evaluation generates one
population per held-out field from noise under the held-out condition's codes and judges the
pooled cells by the energy distance (features z-scored by training cells) against the real ones,
beside the nearest condition's cells (the same treatment on the other plates), the additive
per-field mean model repeated once per cell (what a per-well profile model gives) and the floor
(the held-out fields in two halves, averaged over the halvings). The table is written once into
``--work`` and reused.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from factordiff.checkpoint import atomic_write_json
from factordiff.cli import main as cli
from factordiff.data.crops import read_crops
from factordiff.evaluate.morphology import crop_features, feature_names

RESULTS = Path(__file__).parent / "results" / "joint.json"
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real" / "bbbc021-singlecell"
CHANNELS = ["DAPI", "Tubulin", "Actin"]


def cell_table(stack: Path, out: Path) -> Path:
    """The crops as a single-cell table: metadata, ``Metadata_Field`` and one column per feature."""
    if out.is_file():
        return out
    meta = pd.read_csv(stack.with_suffix(".csv"))
    crops = read_crops(stack, stack.with_suffix(".csv"), CHANNELS)
    x = crop_features(crops.images)  # DAPI first: the nucleus
    table = meta[["Metadata_Plate", "Metadata_Well", "Metadata_Site", "Metadata_Compound"]].copy()
    table["Metadata_Concentration"] = meta["Metadata_Concentration"].astype(float)
    table["Metadata_Field"] = (
        meta["Metadata_Plate"] + "/" + meta["Metadata_Well"] + "/" + meta["Metadata_Site"].astype(str)
    )
    features = pd.DataFrame(x, columns=[f"Cells_{n}" for n in feature_names(CHANNELS)])
    out.parent.mkdir(parents=True, exist_ok=True)
    pd.concat([table, features], axis=1).to_csv(out, index=False)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--crops", default=str(SHARED / "crops.npz"))
    ap.add_argument("--holdout", default="cyclohexamide@50@Week4_27821", help="COMPOUND@DOSE@PLATE held out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="runs/bench-scldm")
    ap.add_argument("--ae-steps", type=int, default=3000)
    ap.add_argument("--dit-steps", type=int, default=4000)
    ap.add_argument("--views", type=int, default=32, help="token draws per training field")
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--dry-run", action="store_true", help="print the figures, write nothing")
    a = ap.parse_args()
    stack = Path(a.crops)
    if not stack.is_file():
        sys.exit(f"{stack}: not found; this benchmark needs the real BBBC021 crops of ../shared (its README)")
    torch.set_num_threads(2)
    t0 = time.monotonic()
    work = Path(a.work)
    table = cell_table(stack, work / "cells.csv")
    compound, dose, plate = a.holdout.split("@")
    held = f"Metadata_Compound={compound},Metadata_Concentration={dose},Metadata_Plate={plate}"
    config = work / f"sets-{a.seed}.json"
    config.write_text(
        json.dumps(
            {
                "sets": {
                    "autoencoder_steps": a.ae_steps,
                    "steps": a.dit_steps,
                    "views": a.views,
                    "guidance": a.guidance,
                },
                "train": {"seed": a.seed, "threads": 2},
            }
        )
    )
    run = work / f"run-{a.seed}"
    argv = ["fit", "--data", f"profiles:{table}", "--model", "set", "--set-column", "Metadata_Field"]
    argv += ["--factors", "Metadata_Compound,Metadata_Concentration,Metadata_Plate", "--holdout-where", held]
    argv += ["--config", str(config), "--out", str(run)]
    if not (run / "model" / "config.json").is_file():
        if cli(argv + (["--resume"] if run.exists() else [])) != 0:
            sys.exit("the fit failed")
    fit_seconds = time.monotonic() - t0
    if cli(["evaluate", str(run)]) != 0:
        sys.exit("the evaluation failed")
    (task,) = json.loads((run / "metrics.json").read_text())["tasks"]
    e = task["energy"]
    out = {
        "model": e["model"],
        "nearest": e["nearest"],
        "per_well_model": e["per_set_mean_model"],
        "floor": task["floor"],
        "holdout": held,
        "heldout_fields": task["heldout_sets"],
        "heldout_cells": task["heldout_cells"],
        "nearest_conditions": task["nearest_conditions"],
        "training_fields": json.loads((run / "model" / "config.json").read_text())["train_sets"],
        "seconds": round(time.monotonic() - t0, 1),
        "fit_seconds": round(fit_seconds, 1),
        "command": "python " + shlex.join(sys.argv),
        "fit_command": "factordiff "
        + shlex.join([*argv[:2], "profiles:cells.csv", *argv[3:-4], "--config", config.name]),
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
