"""Training levers at equal wall-clock: the quickstart trained from scratch for ``--minutes`` under
each setting of ``train.precision`` / ``train.compile``, then evaluated as the quickstart is; into
``benchmarks/results/train_throughput.json``, key ``equal_wall_clock``.

    python benchmarks/train_quality.py [--minutes 15] [--settings fp32,bf16] [--seed 0]
        [--work runs/bench-train-quality]

A setting is ``fp32`` or ``bf16``, optionally ``+compile``. Each trains every stage of the
quickstart's config (``configs/quickstart.json``: the composition split, the tokens adapter) in the
same budget, so a faster loop shows up as more steps and, if they help, better held-out figures;
a setting whose run folder already holds ``metrics.json`` is only read again. Per setting: the steps
each stage made, the held-out and seen one-factor edits all right, the two-factor held-out edits,
samples from noise (seen, held-out), and the difference from the first setting. Rows are kept per
``train.seed`` (``--seed``; the seed of every stage's initialisation, data order and noise), so
that seeds add up to a spread.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from collections import Counter
from pathlib import Path

import torch

from factordiff.checkpoint import atomic_write_json, read_json
from factordiff.evaluate.suite import evaluate_run
from factordiff.fit import fit
from factordiff.quickstart import quickstart_config

OUT = Path(__file__).parent / "results" / "train_throughput.json"
FIGURES = (
    ("edits_heldout", ("counterfactual", "heldout", "all_right")),
    ("edits_seen", ("counterfactual", "seen", "all_right")),
    ("pairs_heldout", ("counterfactual", "heldout_pairs", "all_right")),
    ("samples_heldout", ("samples", "heldout", "all_factors")),
    ("samples_seen", ("samples", "seen", "all_factors")),
)


def figure(metrics: dict, path: tuple[str, ...]):
    for key in path:
        metrics = metrics.get(key) if isinstance(metrics, dict) else None
    return metrics


def run_setting(setting: str, minutes: float, work: Path, seed: int = 0) -> dict:
    precision, _, extra = setting.partition("+")
    if precision not in ("fp32", "bf16") or extra not in ("", "compile"):
        sys.exit(f"--settings {setting}: expected fp32 or bf16, optionally +compile")
    out = work / (setting if seed == 0 else f"{setting}-seed{seed}")
    if not (out / "metrics.json").is_file():
        overrides = {"train.precision": precision, "train.compile": extra == "compile", "train.seed": seed}
        fit(quickstart_config(32, minutes, overrides), out)
        evaluate_run(out)
    metrics = read_json(out / "metrics.json")
    stages = Counter(json.loads(line)["stage"] for line in (out / "train_log.jsonl").read_text().splitlines())
    return {"steps": dict(stages), **{name: figure(metrics, path) for name, path in FIGURES}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=15.0, help="wall-clock budget of each fit")
    ap.add_argument("--settings", default="fp32,bf16", help="comma-separated: fp32, bf16, bf16+compile...")
    ap.add_argument("--seed", type=int, default=0, help="train.seed of every fit")
    ap.add_argument("--work", default="runs/bench-train-quality")
    a = ap.parse_args()
    torch.set_num_threads(2)
    rows = {s: run_setting(s, a.minutes, Path(a.work), a.seed) for s in a.settings.split(",")}
    base = next(iter(rows.values()))
    for row in rows.values():
        row["minus_first"] = {
            name: round(row[name] - base[name], 4)
            for name, _ in FIGURES
            if row[name] is not None and base[name] is not None
        }
    saved = json.loads(OUT.read_text()) if OUT.is_file() else {}
    block = {
        "minutes": a.minutes,
        "seed": a.seed,
        "rows": rows,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d"),
        "command": "python " + shlex.join(sys.argv),
    }
    earlier = saved.get("equal_wall_clock", {})
    seeds = {b.get("seed", 0): b for b in [earlier, *earlier.get("other_seeds", [])] if b}
    seeds[a.seed] = block
    lowest, *others = [seeds[k] for k in sorted(seeds)]
    saved["equal_wall_clock"] = {**lowest, "other_seeds": others}
    atomic_write_json(OUT, saved)
    print(json.dumps(block, indent=1))


if __name__ == "__main__":
    main()
