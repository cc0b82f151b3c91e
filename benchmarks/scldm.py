"""scLDM over populations of cells on the real BBBC021 fields and on cellsim (``scldm`` of
``benchmarks/results/joint.json``; cellsim's figures under ``scldm.cellsim``), through the set run
kind: ``factordiff fit --model set`` and ``factordiff evaluate`` (``models/sets.py``,
``evaluate/sets.py``).

    python benchmarks/scldm.py [--holdout cyclohexamide@50@Week4_27821] [--seed 0]
    python benchmarks/scldm.py --data cellsim [--holdout nocodazole@plate_3] [--wells 3] [--fields 16]

Each crop of ``../shared/data/real/bbbc021-singlecell`` becomes a cell: its
``evaluate/morphology.py`` features (nucleus shape, per-channel intensity and texture), one row of
a single-cell table with its plate, well, site, compound and concentration; each field (plate,
well, site: 50 fields of 59 to 330 cells) is a set. The fields of one compound x dose x plate are
held out (``--holdout-where``): nothing fitted sees them.

On cellsim, where populations are unlimited, each simulated well is a set: ``--fields`` 64x64
fields of one compound (at 10 uM; DMSO) x plate in A549, ``--wells`` wells per condition, every
compound on every plate; each nucleus of a field's DNA channel (``data/fieldcrops.crop_windows``)
gives a 24x24 crop of the raw 16-bit channels (a cell's diameter; a crop that would leave the
field is dropped) and its features. The fields of one compound x plate are held out (``--holdout
COMPOUND@PLATE``).

The run's evaluation generates one population per held-out field (well) from noise under the
held-out condition's codes and judges the pooled cells by the energy distance (features z-scored
by training cells) against the real ones,
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

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from factordiff.checkpoint import atomic_write_json
from factordiff.cli import main as cli
from factordiff.data.cellsim import CHANNELS as CELLSIM_CHANNELS
from factordiff.data.cellsim import COMPOUNDS, DOSES, PLATES, render
from factordiff.data.crops import read_crops
from factordiff.data.fieldcrops import crop_windows
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


def cellsim_table(out: Path, wells: int, fields: int, seed: int, crop: int = 24) -> Path:
    """Simulated wells of cellsim (module docstring) as a single-cell table, as ``cell_table``."""
    if out.is_file():
        return out
    names = list(COMPOUNDS)
    rows = [(c, p, w) for c in range(len(COMPOUNDS)) for p in range(len(PLATES)) for w in range(wells)]
    factors = np.zeros((len(rows) * fields, 6), np.int64)  # compound, dose, cell line, source, batch, plate
    for i, (c, p, _) in enumerate(rows):
        factors[i * fields : (i + 1) * fields] = (c, 0 if c == 0 else len(DOSES) - 1, 0, p // 4, p // 2, p)
    images = render(factors, 64, seed)
    crops, meta = [], []
    for i, field in enumerate(tqdm(images, desc="cellsim crops", unit="field")):
        c, p, w = rows[i // fields]
        for y0, x0 in crop_windows(field[0].astype(np.float32), crop, None)[0]:
            crops.append(field[:, y0 : y0 + crop, x0 : x0 + crop].transpose(1, 2, 0))
            meta.append((names[c], PLATES[p], f"{PLATES[p]}/{names[c]}/well_{w}", i))
    table = pd.DataFrame(
        meta, columns=["Metadata_Compound", "Metadata_Plate", "Metadata_Well", "Metadata_FieldIndex"]
    )
    stack = np.stack(crops)
    chunks = tqdm(range(0, len(stack), 512), desc="features", unit="x512 crops")
    x = np.concatenate([crop_features(stack[i : i + 512]) for i in chunks])
    features = pd.DataFrame(x, columns=[f"Cells_{n}" for n in feature_names(CELLSIM_CHANNELS)])
    out.parent.mkdir(parents=True, exist_ok=True)
    pd.concat([table, features], axis=1).to_csv(out, index=False)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", choices=("bbbc021", "cellsim"), default="bbbc021")
    ap.add_argument("--crops", default=str(SHARED / "crops.npz"))
    ap.add_argument(
        "--holdout", help="COMPOUND@DOSE@PLATE held out (cellsim: COMPOUND@PLATE; defaults in the docstring)"
    )
    ap.add_argument("--wells", type=int, default=3, help="cellsim: wells per compound x plate")
    ap.add_argument("--fields", type=int, default=16, help="cellsim: fields per well")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="runs/bench-scldm")
    ap.add_argument("--ae-steps", type=int, default=3000)
    ap.add_argument("--dit-steps", type=int, default=4000)
    ap.add_argument("--views", type=int, default=32, help="token draws per training field")
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--dry-run", action="store_true", help="print the figures, write nothing")
    a = ap.parse_args()
    torch.set_num_threads(2)
    t0 = time.monotonic()
    work = Path(a.work) / a.data
    if a.data == "cellsim":
        table = cellsim_table(work / "cells.csv", a.wells, a.fields, a.seed)
        compound, plate = (a.holdout or "nocodazole@plate_3").split("@")
        held = f"Metadata_Compound={compound},Metadata_Plate={plate}"
        factors, column = "Metadata_Compound,Metadata_Plate", "Metadata_Well"
    else:
        stack = Path(a.crops)
        if not stack.is_file():
            sys.exit(
                f"{stack}: not found; this benchmark needs the real BBBC021 crops of ../shared (its README)"
            )
        table = cell_table(stack, work / "cells.csv")
        compound, dose, plate = (a.holdout or "cyclohexamide@50@Week4_27821").split("@")
        held = f"Metadata_Compound={compound},Metadata_Concentration={dose},Metadata_Plate={plate}"
        factors, column = "Metadata_Compound,Metadata_Concentration,Metadata_Plate", "Metadata_Field"
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
    argv = ["fit", "--data", f"profiles:{table}", "--model", "set", "--set-column", column]
    argv += ["--factors", factors, "--holdout-where", held]
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
    out["machine"] = f"{platform.machine()}, torch {torch.__version__}"
    block = saved.get("scldm", {})
    if a.data == "cellsim":
        out.update(wells_per_condition=a.wells, fields_per_well=a.fields, data="cellsim")
        saved["scldm"] = {**block, "cellsim": out}
    else:
        saved["scldm"] = {**out, **({"cellsim": block["cellsim"]} if "cellsim" in block else {})}
    atomic_write_json(RESULTS, saved)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
