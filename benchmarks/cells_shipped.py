"""The shipped cell model, judged as a user meets it: ``factordiff quickstart --data cellsim`` on
the model in ``src/factordiff/pretrained/cellsim32`` (its README says how it was trained), timed,
into ``benchmarks/results/cells_shipped.json``.

    python benchmarks/cells_shipped.py [--out runs/quickstart-cellsim]

Held out of every learning stage (``configs/cellsim32.json``): three compound x batch combinations
(nocodazole in batch_2, colchicine in batch_3, rotenone in batch_4) and four compounds entirely
(caffeine, camptothecin, topotecan, ibuprofen). Figures, each beside its baselines:

- held-out batch swaps (fields of a compound in another batch, regenerated into the held-out
  batch): read as the target batch, compound kept; beside copy-the-source, the per-channel batch
  mean shift and cellsim's true counterfactual (the same cells rendered in the target batch);
- unseen compounds, generated from same-batch control fields by their SMILES alone: share of
  fields closer (oracle features) to the compound's real fields than to the control's; beside
  copying the control and the nearest training compound's real fields, with the structure
  ceiling (how far structure alone predicts the effect from the training compounds' true effects).
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
from factordiff.quickstart import pretrained_run, quickstart

RESULTS = Path(__file__).parent / "results" / "cells_shipped.json"


def training_steps(log: Path) -> dict[str, int]:
    """The steps each stage of the shipped run took, from its training log."""
    steps: dict[str, int] = {}
    for line in log.read_text().splitlines():
        row = json.loads(line)
        steps[row["stage"]] = row["step"]
    return steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/quickstart-cellsim")
    a = ap.parse_args()
    torch.set_num_threads(2)
    shipped = pretrained_run(32, "cellsim")
    if shipped is None:
        sys.exit("no shipped cellsim model in the package (scripts/ship_pretrained.py --data cellsim)")
    t0 = time.monotonic()
    m = quickstart(Path(a.out), data="cellsim")
    minutes = (time.monotonic() - t0) / 60
    keep = ("batch_swap", "unseen_compound", "map", "oracle_accuracy", "split")
    before = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    atomic_write_json(
        RESULTS,
        {
            "machine": f"{platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}",
            "date": time.strftime("%Y-%m-%d"),
            "command": "python " + shlex.join(sys.argv),
            "quickstart_minutes": round(minutes, 1),
            "training_minutes": json.loads((shipped / "run_config.json").read_text())["train"]["minutes"],
            "training_steps": training_steps(shipped / "train_log.jsonl"),
            **{k: m[k] for k in keep if k in m},
            # the batch-swap settings compared on seen swaps (benchmarks/cells.py --edits), kept, and
            # the headline figures of the model this one replaced
            **{k: before[k] for k in ("edit_settings", "previous_model") if k in before},
        },
    )
    print(f"quickstart --data cellsim: {minutes:.1f} minutes; wrote {RESULTS}")


if __name__ == "__main__":
    main()
