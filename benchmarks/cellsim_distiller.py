"""How well cellsim's distiller reads each factor on fresh fields, by training steps and number of
rendered fields; into ``benchmarks/results/cellsim_distiller.json``.

    python benchmarks/cellsim_distiller.py [--variants 1500x12000,4000x12000,1500x60000,4000x60000]

Each variant (``STEPS x FIELDS``) fits only the distiller (``fit(..., encoder_only=True)``) on the
cellsim benchmark's data and split (``benchmarks/cells.py``: 32x32, its held-out combinations and
compounds), without a time budget. Its class heads are then scored on 4,000 freshly rendered fields
(another seed) of the training combinations: accuracy per factor, and for the compound at the top
dose, where compounds are visible. Training-split images would flatter a distiller that memorised
them. Beside it, the oracle's accuracy on fresh fields (README): compound 0.83, dose 0.84, plate 0.86.
"""

from __future__ import annotations

import argparse
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from factordiff.checkpoint import atomic_write_json
from factordiff.config import load_config
from factordiff.data.cellsim import cellsim
from factordiff.fit import fit

sys.path.insert(0, str(Path(__file__).parent))
from cells import HOLDOUT  # noqa: E402  (the benchmark's held-out conditions)

RESULTS = Path(__file__).parent / "results" / "cellsim_distiller.json"


def run(steps: int, n: int, work: Path, fresh) -> dict:
    cfg = load_config(
        None,
        {
            "data.source": "cellsim",
            "data.size": 32,
            "data.n": n,
            "split.kind": "none",
            "split.where": HOLDOUT,
            "distill.steps": steps,
            "train.minutes": None,
            "train.threads": 2,
        },
    )
    out = work / f"{steps}x{n}"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.monotonic()
    result = fit(cfg, out, progress=True, encoder_only=True)
    minutes = (time.monotonic() - t0) / 60
    d = fresh.subset(np.flatnonzero(~result.split.heldout(fresh.factors)))
    with torch.no_grad():
        logits = result.model.encoder.logits(result.model.codes(d.images))
    pred = np.stack([lg.argmax(1).numpy() for lg in logits], 1)
    kc, kd = d.spec.position("compound"), d.spec.position("dose")
    top = d.factors[:, kd] == d.factors[:, kd].max()
    return {
        "steps": steps,
        "fields": n,
        "minutes": round(minutes, 2),
        "fresh_fields": int(len(d)),
        "accuracy": {
            f.name: round(float((pred[:, k] == d.factors[:, k]).mean()), 3)
            for k, f in enumerate(d.spec.factors)
        },
        "compound_top_dose": round(float((pred[top, kc] == d.factors[top, kc]).mean()), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--variants",
        default="1500x12000,4000x12000,1500x60000,4000x60000",
        help="STEPSxFIELDS, comma-separated",
    )
    ap.add_argument("--work", default="runs/bench-cellsim-distiller")
    a = ap.parse_args()
    torch.set_num_threads(2)
    fresh = cellsim(32, n=4000, seed=2000)
    rows = []
    for v in a.variants.split(","):
        steps, n = (int(x) for x in v.split("x"))
        rows.append(run(steps, n, Path(a.work), fresh))
        print(rows[-1], flush=True)
    atomic_write_json(
        RESULTS,
        {
            "command": "python " + shlex.join(sys.argv),
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
            "torch": torch.__version__,
            "variants": rows,
        },
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
