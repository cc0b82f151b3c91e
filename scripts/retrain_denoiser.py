"""Train a new denoiser on the shipped quickstart model's distiller and autoencoder.

    python scripts/retrain_denoiser.py RUN [--size 32] [--set denoiser.adapter=tokens ...]

Makes the run folder RUN from the shipped model: its run config with the ``--set`` changes
(``section.field=JSON value``), its split, its distiller and autoencoder weights (stages done) and
their training logs; then ``fit(..., resume=True)`` trains only the denoiser stage(s). The
distiller and autoencoder were trained on the same split's training images, so nothing held out
reaches the new denoiser. Ship the result with ``python scripts/ship_pretrained.py RUN``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from factordiff.checkpoint import read_json
from factordiff.config import RunConfig, from_dict
from factordiff.fit import fit, start_from

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "factordiff" / "pretrained"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=JSON")
    a = ap.parse_args()
    shipped = PACKAGE / f"shapes{a.size}"
    raw = read_json(shipped / "run_config.json")
    for item in a.set:
        key, _, value = item.partition("=")
        section, name = key.split(".")
        raw[section][name] = json.loads(value)
    cfg = from_dict(RunConfig, raw, "run config")
    if a.run.exists():
        raise SystemExit(f"{a.run}: exists; choose a new folder")
    start_from(shipped, a.run, cfg, ("distiller", "autoencoder"))
    fit(cfg, a.run, resume=True, progress=True)


if __name__ == "__main__":
    main()
