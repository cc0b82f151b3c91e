"""Real cells: held-out (treatment, plate) cells of the real BBBC021 single-cell crops regenerated
by an image run and judged as profiles, into ``benchmarks/results/real_cells.json``.

    python benchmarks/real_cells.py [--data ../shared/data/real/bbbc021-singlecell] [--minutes 30]
    python benchmarks/real_cells.py --seed 1 --run runs/real-cells-s1 --repeat   # another seed
    python benchmarks/real_cells.py --inversion ddpm --steps 5   # the same fit, edits inverted so

One run (``factordiff fit --data crops:crops.npz``, 64x64, ``--minutes``) holds out two cells:

- cyclohexamide 15 uM on plate Week4_27821 (a *treatment* task: that plate's DMSO crops
  regenerated with the compound and dose set, a treatment the plate never showed);
- DMSO on plate Week4_27801 (a *transfer*, a plate swap: the other plates' DMSO crops regenerated
  with the plate set; the plate stays seen through its treated crops).

The evaluation is the library's, ``factordiff evaluate`` on a crop run
(``factordiff.evaluate.crops``): every crop becomes a profile of morphology features, z-scored by
training crops; the model beside *copy*, *mean shift* (per channel), the *nearest* condition (the
same treatment on other plates, nearest dose) and the *replicate floor* (the real held-out crops in
two halves by field); distance, energy, two-sample AUC, spread, and Frechet/KID over the
evaluation oracle's features. Each cell's edit (strength, guidance, residual) is chosen on its seen
stand-ins, never on the held-out crops (``evaluate_crop_run(choose=True)``: the same treatment on
the other plates from their DMSO crops; DMSO of other plates from the rest). The run folder
(``--run``) is reused when it holds a finished fit (its fit time: from its run_config.json to its
model's config.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from factordiff.checkpoint import atomic_write_json
from factordiff.cli import main as cli
from factordiff.config import load_config
from factordiff.evaluate.crops import evaluate_crop_run, summary_lines

RESULTS = Path(__file__).parent / "results" / "real_cells.json"
FACTORS = "Metadata_Compound,Metadata_Concentration,Metadata_Plate"
CONTROLS = "Metadata_Compound=DMSO"
HELDOUT = [
    "Metadata_Compound=cyclohexamide,Metadata_Concentration=15,Metadata_Plate=Week4_27821",
    "Metadata_Compound=DMSO,Metadata_Plate=Week4_27801",
]


def repeat_summary(task: dict) -> dict:
    """A held-out cell's figures for another seed: each method's distance and AUC, the floor's, the
    gap share and the chosen edit."""
    if task["kind"] == "skipped":
        return {"condition": task["condition"], "kind": "skipped"}
    sel = task.get("edit_selection") or {}
    return {
        "condition": task["condition"],
        "kind": task["kind"],
        "methods": {k: {m: v[m] for m in ("distance", "c2st_auc")} for k, v in task["methods"].items()},
        "floor": {m: task["floor"][m] for m in ("distance", "c2st_auc", "splits") if m in task["floor"]},
        "gap_share": task["gap_share"],
        "chosen": sel.get("chosen"),
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
    ap.add_argument(
        "--repeat",
        action="store_true",
        help="add this seed's figures to the results' repeats instead of replacing the file",
    )
    ap.add_argument(
        "--inversion",
        choices=["ode", "ddpm"],
        default=None,
        help="invert every edit so (default: the run's); the figures are added to the results' "
        "inversions instead of replacing the file",
    )
    a = ap.parse_args()
    stack = Path(a.data) / "crops.npz"
    if not stack.is_file():
        sys.exit(
            f"{stack}: not found; this benchmark needs the real BBBC021 crops of ../shared (see its README)"
        )
    torch.set_num_threads(2)
    fit_argv = ["fit", "--data", f"crops:{stack}", "--channels", "DAPI,Tubulin,Actin", "--factors", FACTORS]
    for text in HELDOUT:
        fit_argv += ["--holdout-where", text]
    fit_argv += ["--controls", CONTROLS, "--size", str(a.size), "--minutes", f"{a.minutes:g}"]
    fit_argv += ["--seed", str(a.seed), "--out", a.run]
    run = Path(a.run)
    if not (run / "model" / "config.json").is_file():
        if cli(fit_argv) != 0:
            sys.exit("fit failed")
    fit_seconds = (run / "model" / "config.json").stat().st_mtime - (run / "run_config.json").stat().st_mtime
    if json.loads((run / "run_config.json").read_text())["profiles"].get("controls") != CONTROLS:
        sys.exit(f"{run}: fitted without --controls {CONTROLS}; fit it again (remove the folder)")
    t0 = time.monotonic()
    metrics = evaluate_crop_run(run, sources=a.sources, steps=a.steps, choose=True, inversion=a.inversion)
    print("\n".join(summary_lines(metrics)))
    command = "python " + shlex.join(sys.argv)
    e = load_config(run / "run_config.json").evaluate
    if a.inversion:
        key = f"{a.inversion}, {a.steps or e.steps} steps, seed {a.seed}"
        results = json.loads(RESULTS.read_text())
        results.setdefault("inversions", {})[key] = {
            "command": command,
            "date": time.strftime("%Y-%m-%d"),
            "evaluate_seconds": round(time.monotonic() - t0, 1),
            "tasks": [
                {**repeat_summary(t), "tried": (t.get("edit_selection") or {}).get("distances")}
                for t in metrics["tasks"]
            ],
        }
        atomic_write_json(RESULTS, results)
        print(f"added the {key} evaluation to {RESULTS}")
        return
    if a.repeat:
        results = json.loads(RESULTS.read_text())
        results.setdefault("repeats", {})[str(a.seed)] = {
            "command": command,
            "date": time.strftime("%Y-%m-%d"),
            "fit_seconds": round(fit_seconds, 1),
            "tasks": [repeat_summary(t) for t in metrics["tasks"]],
        }
        atomic_write_json(RESULTS, results)
        print(f"added seed {a.seed} to {RESULTS}")
        return
    before = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    atomic_write_json(
        RESULTS,
        {
            "machine": f"{platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}",
            "date": time.strftime("%Y-%m-%d"),
            "command": command,
            "fit_command": "factordiff " + shlex.join(fit_argv[:2] + ["crops:crops.npz"] + fit_argv[3:]),
            "fit_seconds": round(fit_seconds, 1),
            "evaluate_seconds": round(time.monotonic() - t0, 1),
            "edits": f"{e.edit_inversion}, {a.steps or e.steps} steps",
            "features": metrics["features"],
            "oracle_accuracy": metrics["oracle_accuracy"],
            "tasks": metrics["tasks"],
            # other seeds' (--repeat) and inversions' (--inversion) figures stay; each floor names its split
            **{k: before[k] for k in ("repeats", "inversions") if k in before},
        },
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
