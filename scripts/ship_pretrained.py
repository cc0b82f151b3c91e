"""Copy a finished run into the package as the quickstart's pretrained starting point.

    python scripts/ship_pretrained.py RUN [--size 32]

Writes ``src/factordiff/pretrained/shapes{size}/``: the run's config, split, full training log and
its model, with the network weights stored as float16 (half the size; they are cast back to
float32 on load, and the quickstart's numbers are measured on these float16 weights). The
README in that folder names the command that trained the run.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from factordiff.checkpoint import atomic_save_tensors, load_tensors

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "factordiff" / "pretrained"
HALF = ("distiller", "encoder", "autoencoder", "denoiser")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("--size", type=int, default=32)
    args = ap.parse_args()
    run, dest = args.run, PACKAGE / f"shapes{args.size}"
    if not (run / "model" / "config.json").is_file():
        raise SystemExit(f"{run}: no finished model in {run / 'model'}")
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "model").mkdir(parents=True)
    for name in ("run_config.json", "split.json", "train_log.jsonl"):
        shutil.copy2(run / name, dest / name)
    for f in sorted((run / "model").iterdir()):
        if f.suffix == ".safetensors" and f.stem in HALF:
            state = {k: (v.half() if v.is_floating_point() else v) for k, v in load_tensors(f).items()}
            atomic_save_tensors(state, dest / "model" / f.name)
        else:
            shutil.copy2(f, dest / "model" / f.name)
    steps = {}
    for line in (run / "train_log.jsonl").read_text().splitlines():
        row = json.loads(line)
        steps[row["stage"]] = row["step"]
    print(json.dumps({"shipped": str(dest), "steps": steps}))


if __name__ == "__main__":
    main()
