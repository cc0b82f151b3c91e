"""How strongly compound edits should be guided on a fitted cellsim run, judged on training
compounds only, with what the unseen-compound criterion cannot see: into
``benchmarks/results/cells.json`` as ``compound_guidance_realism``.

    # cells.json today (runs/e3: 1,8,20,50)
    python benchmarks/compound_guidance.py --out runs/e5 --guidances 1,3,5,8,12

Same-batch training controls are regenerated into each training compound at the top dose with
its prototype code (the run's compound-edit settings, guidance varied). Per guidance:
``closer_than_control`` (the ``unseen_compound`` criterion on training compounds), ``oracle_compound``
(share the oracle reads as the intended compound) and ``mean_distance``: the distance from the
generated images' mean feature to the real compound's, over the control's distance to it (1 = no
closer than the control; above 1 = overshot). Beside them, for the record and not used to choose,
the held-out unseen compounds with their codes from structure (``edit.compound_code``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from factordiff.checkpoint import atomic_write_json
from factordiff.data.cellsim import COMPOUNDS
from factordiff.data.sources import prepare_data
from factordiff.data.splits import make_split
from factordiff.edit import compound_code
from factordiff.evaluate.cells import CONTROL, _closer, _edit, _same_batch, compound_edits, oracle_features
from factordiff.evaluate.suite import get_oracle
from factordiff.models.runs import load_model

RESULTS = Path(__file__).parent / "results" / "cells.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/e3", help="a fitted cellsim run")
    ap.add_argument("--guidances", default="1,8,20,50")
    ap.add_argument("--per-compound", type=int, default=12)
    a = ap.parse_args()
    torch.set_num_threads(2)
    run = Path(a.out)
    cfg, model = load_model(run)
    data, _, _ = prepare_data(cfg)
    split = make_split(data.spec, cfg.split)
    oracle, _ = get_oracle(run, cfg, data, progress=False)
    spec, f = data.spec, data.factors
    kc, kb, kd = spec.position("compound"), spec.position("batch"), spec.position("dose")
    names = [str(v) for v in spec.factors[kc].values]
    ctrl, top, train = names.index(CONTROL), int(f[:, kd].max()), ~split.heldout(f)
    pool = np.flatnonzero(train & (f[:, kc] == ctrl))
    feats_ctrl = oracle_features(oracle, data.images[np.flatnonzero(f[:, kc] == ctrl)[:500]]).mean(0)
    unseen = [c for c in range(len(names)) if (f[:, kc] == c).any() and not (train & (f[:, kc] == c)).any()]
    rows = []
    for g in [float(x) for x in a.guidances.split(",")]:
        e = dataclasses.replace(cfg.evaluate, guidance=g)
        rng = np.random.default_rng(cfg.train.seed + 5)
        hits, named, dist = [], [], []
        for c, edited, true_mean, ctrl_mean in compound_edits(
            model, oracle, data, split, e, rng, per_compound=a.per_compound
        ):
            hits.append(_closer(oracle, edited, true_mean, ctrl_mean))
            named.append(oracle.predict(edited)[:, kc] == c)
            dist.append(
                np.linalg.norm(oracle_features(oracle, edited).mean(0) - true_mean)
                / np.linalg.norm(ctrl_mean - true_mean)
            )
        row = {
            "guidance": g,
            "closer_than_control": float(np.concatenate(hits).mean()),
            "oracle_compound": float(np.concatenate(named).mean()),
            "mean_distance": float(np.mean(dist)),
            "unseen_closer_than_control": {},
        }
        for c in unseen:
            real = np.flatnonzero((f[:, kc] == c) & (f[:, kd] == top))
            chosen = rng.choice(real, min(len(real), 40), replace=False)
            code = compound_code(model, kc, COMPOUNDS[names[c]], COMPOUNDS, CONTROL)
            edited = _edit(
                model,
                data.images[_same_batch(rng, pool, chosen, f[:, kb])],
                {kc: code, kd: model.prototype(kd, top)},
                e,
            )
            row["unseen_closer_than_control"][names[c]] = float(
                _closer(oracle, edited, oracle_features(oracle, data.images[real]).mean(0), feats_ctrl).mean()
            )
        rows.append(row)
        print(row, flush=True)
    saved = json.loads(RESULTS.read_text())
    saved["compound_guidance_realism"] = {
        "command": "python " + shlex.join(sys.argv),
        "date": time.strftime("%Y-%m-%d"),
        "rows": rows,
    }
    atomic_write_json(RESULTS, saved)
    print(f"wrote {RESULTS} (compound_guidance_realism)")


if __name__ == "__main__":
    main()
