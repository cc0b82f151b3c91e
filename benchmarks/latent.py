"""Latent-space numbers on the Shapes replica: disentanglement_lib metrics of the supervised
distiller and of the unsupervised encoder, written to benchmarks/results/latent.json.

    python benchmarks/latent.py [--part distiller|unsupervised|both] [--size 64]
                                [--unsupervised-minutes 60] [--out runs/latent]

Each part replaces its own entry in the results file and keeps the other's.

Codes of 15,000 replica images (10,000 train / 5,000 test points as disentanglement_lib uses),
nothing held out (as disentanglement papers train on the whole grid). The replica is factordiff's
procedural re-rendering of 3D Shapes, not DeepMind's dataset: compare with published numbers as
indications only.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from factordiff.config import load_config
from factordiff.data.shapes import replica
from factordiff.evaluate.analysis import code_metrics
from factordiff.fit import fit

OUT = Path(__file__).parent / "results" / "latent.json"
PUBLISHED = {  # Shapes3D, as reported by the papers
    "EncDiff": {"factorvae": 0.999, "dci_disentanglement": 0.969},
    "FDAE": {"factorvae": 0.987, "dci_disentanglement": 0.917, "mig": 0.473},
    "DisDiff": {"factorvae": 0.902, "dci_disentanglement": 0.723},
}


def scores(model, size: int, n: int, seed: int) -> dict:
    data = replica(size, n=n, seed=seed)
    codes = model.codes(data.images).numpy()
    return code_metrics(codes, data.factors, scale=1.0, seed=0, progress=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--images", type=int, default=60000, help="training images rendered")
    ap.add_argument("--unsupervised-minutes", type=float, default=60.0)
    ap.add_argument("--part", choices=("distiller", "unsupervised", "both"), default="both")
    ap.add_argument("--out", default="runs/latent")
    args = ap.parse_args()
    torch.set_num_threads(2)
    out = Path(args.out)
    command = "python " + shlex.join(sys.argv)
    results: dict = json.loads(OUT.read_text()) if OUT.is_file() else {}
    results |= {
        "size": args.size,
        "points": 15000,
        "published_shapes3d": PUBLISHED,
        "note": "factordiff's procedural replica of 3D Shapes, not the original dataset",
    }
    common = {"data.size": args.size, "data.n": args.images, "split.kind": "none", "train.threads": 2}
    if args.part in ("distiller", "both"):
        t = time.time()
        over = {**common, "distill.ordinal_dims": 1}  # one axis per ordinal factor (see the README)
        sup = fit(load_config(None, over), out / "distiller", progress=True, encoder_only=True)
        results["distiller"] = {
            "train_seconds": round(time.time() - t),
            "command": command,
            "config": over,
            **scores(sup.model, args.size, 15000, seed=101),
        }
    if args.part in ("unsupervised", "both"):
        over = {
            **common,
            "unsupervised.enabled": True,
            "train.minutes": args.unsupervised_minutes,
            "autoencoder.block_out_channels": [32, 64, 128, 128] if args.size == 64 else [32, 64, 128],
        }
        t = time.time()
        uns = fit(load_config(None, over), out / "unsupervised", progress=True)
        results["unsupervised"] = {
            "train_seconds": round(time.time() - t),
            "command": command,
            "config": over,
            "factor_blocks": uns.model.factor_blocks,
            **scores(uns.model, args.size, 15000, seed=101),
        }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2, default=float) + "\n")
    for name in ("distiller", "unsupervised"):
        if name in results:
            for variant in ("raw", "first_pc"):
                r = results[name].get(variant)
                if r:
                    print(name, variant, {k: round(v, 3) for k, v in r.items() if isinstance(v, float)})


if __name__ == "__main__":
    main()
