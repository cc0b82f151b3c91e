"""Cell Painting images on cellsim: fit, evaluate and regenerate in a stated budget, every figure
beside its null; into ``benchmarks/results/cells.json``.

    python benchmarks/cells.py [--size 32] [--minutes 15] [--n 12000]

Held out of every learning stage: three compound x batch combinations (nocodazole in batch_2,
colchicine in batch_3, rotenone in batch_4) and two compounds entirely (caffeine, camptothecin).
The run is ``factordiff fit --data cellsim`` with those ``--holdout-where`` conditions; then
``factordiff evaluate`` (batch swap, per-channel Frechet, unseen compound by SMILES, mAP) and one
``factordiff regenerate`` into a held-out combination, each timed.
"""

from __future__ import annotations

import argparse
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path

import torch

from factordiff.checkpoint import atomic_write_json
from factordiff.config import load_config
from factordiff.edit import regenerate_images
from factordiff.evaluate.suite import evaluate_run
from factordiff.fit import fit
from factordiff.report import build_report

RESULTS = Path(__file__).parent / "results" / "cells.json"
HOLDOUT = ["compound=nocodazole,batch=batch_2", "compound=colchicine,batch=batch_3", "compound=rotenone,batch=batch_4", "compound=caffeine", "compound=camptothecin"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--minutes", type=float, default=15.0, help="fit budget (all stages)")
    ap.add_argument("--n", type=int, default=12000, help="fields rendered")
    ap.add_argument("--out", default="runs/bench-cells")
    a = ap.parse_args()
    torch.set_num_threads(2)
    out = Path(a.out)
    shutil.rmtree(out, ignore_errors=True)
    cfg = load_config(None, {"data.source": "cellsim", "data.size": a.size, "data.n": a.n, "split.kind": "none", "split.where": HOLDOUT,
                             "train.minutes": a.minutes, "train.threads": 2})
    command = shlex.join(["factordiff", "fit", "--data", "cellsim", "--size", str(a.size), "--minutes", f"{a.minutes:g}", *sum((["--holdout-where", w] for w in HOLDOUT), []),
                          "--out", str(out)])
    t0 = time.monotonic()
    fit(cfg, out, progress=True)
    fit_min = (time.monotonic() - t0) / 60
    t0 = time.monotonic()
    m = evaluate_run(out, progress=True)
    build_report(out)
    eval_min = (time.monotonic() - t0) / 60
    t0 = time.monotonic()
    regen = regenerate_images(out, ["compound=nocodazole,batch=batch_1"], ["batch=batch_2,plate=plate_3"], out / "regenerated-batch2", limit=64)
    regen_min = (time.monotonic() - t0) / 60
    keep = {k: m[k] for k in ("batch_swap", "unseen_compound", "map", "frechet") if k in m}
    result = {"machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}", "date": time.strftime("%Y-%m-%d"),
              "command": "python " + shlex.join(sys.argv), "fit_command": command, "size": a.size, "fields": a.n,
              "minutes": {"fit": round(fit_min, 1), "evaluate": round(eval_min, 1), "regenerate_64_fields": round(regen_min, 2)},
              "heldout": HOLDOUT, **keep,
              "counterfactual_heldout": {k: m["counterfactual"]["heldout"][k] for k in ("effectiveness", "preservation", "all_right")},
              "samples": {k: v["all_factors"] for k, v in m["samples"].items()}, "oracle_accuracy": m["oracle_accuracy"],
              "reconstruction_mse": m["reconstruction_mse"], "regenerate": regen}
    atomic_write_json(RESULTS, result)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
