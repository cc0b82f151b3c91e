"""Packed data against in-memory data: random batches read per second, and training throughput of
the distiller and the autoencoder (the stages that read images every step) on each; into
``benchmarks/results/shards.json``.

    python benchmarks/shards.py [--n 100000] [--size 32] [--steps 60]

The pack is written once into ``--work`` (``factordiff data pack shapes``). Reads are random rows
(the training order), timed after one warm-up pass over the batches, so the shards are in the
page cache; the machine has no way to drop that cache here, so cold reads from disk are not measured.
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from factordiff.checkpoint import atomic_write_json
from factordiff.config import load_config
from factordiff.data.shards import open_shards, pack
from factordiff.data.sources import load_data
from factordiff.diffusion.autoencoder import AutoencoderStep, build_autoencoder
from factordiff.encoders.distill import DistillStep, FactorDistiller
from factordiff.train import ArrayBatches, LoopOptions, Stage, run_stage

OUT = Path(__file__).parent / "results" / "shards.json"


def read_rate(batches: ArrayBatches, steps: int) -> float:
    for s in range(steps):
        batches(s)
    t = time.perf_counter()
    for s in range(steps, 2 * steps):
        batches(s)
    return steps * batches.batch_size / (time.perf_counter() - t)


def train_rate(name: str, step_module, tensors: dict, batch: int, steps: int) -> float:
    stage = Stage(
        name,
        step_module,
        [p for p in step_module.parameters() if p.requires_grad],
        ArrayBatches(tensors, batch, 1),
        steps,
        1e-3,
    )
    run_stage(Stage(name, step_module, stage.trainable, stage.batches, 5, 1e-3), LoopOptions(progress=False))
    t = time.perf_counter()
    run_stage(stage, LoopOptions(progress=False))
    return steps * batch / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100000)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--work", default="runs/bench-shards")
    a = ap.parse_args()
    torch.set_num_threads(2)
    data = load_data("shapes", size=a.size, n=a.n, seed=0)
    folder = Path(a.work) / f"shapes{a.size}-{a.n}"
    if not (folder / "index.json").is_file():
        t = time.perf_counter()
        pack(data, folder)
        pack_s = time.perf_counter() - t
    else:
        pack_s = None
    disk = open_shards(folder)
    result: dict = {
        "images": a.n,
        "size": a.size,
        "pack_seconds": pack_s,
        "pack_bytes": sum(p.stat().st_size for p in folder.iterdir()),
    }
    for b in (64, 256):
        result[f"read_img_s_batch{b}"] = {
            "memory": read_rate(ArrayBatches({"images": torch.from_numpy(data.images)}, b), 200),
            "shards": read_rate(ArrayBatches({"images": disk.images}, b), 200),
        }
    cfg = load_config(None, {"data.size": a.size})
    torch.manual_seed(0)
    distiller = FactorDistiller(
        data.spec.sizes,
        [f.kind == "ordinal" for f in data.spec.factors],
        3,
        a.size,
        cfg.distill.code_dims,
        cfg.distill.width,
    )
    ae = build_autoencoder(cfg.autoencoder, 3, a.size)
    factors = torch.from_numpy(data.factors)
    for where, images in (("memory", torch.from_numpy(data.images)), ("shards", disk.images)):
        result.setdefault("train_distiller_img_s", {})[where] = train_rate(
            "distiller",
            DistillStep(distiller, cfg.distill),
            {"images": images, "factors": factors},
            cfg.distill.batch_size,
            a.steps,
        )
        result.setdefault("train_autoencoder_img_s", {})[where] = train_rate(
            "autoencoder",
            AutoencoderStep(ae, distiller.eval(), cfg.autoencoder),
            {"images": images},
            cfg.autoencoder.batch_size,
            a.steps,
        )
    result.update(
        machine=f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        date=time.strftime("%Y-%m-%d"),
        command="python " + shlex.join(sys.argv),
    )
    atomic_write_json(OUT, result)
    print(
        {k: (np.round(list(v.values()), 1).tolist() if isinstance(v, dict) else v) for k, v in result.items()}
    )


if __name__ == "__main__":
    main()
