"""Speed benchmark: renderer, training steps of every stage, DDIM sampling and inversion.

Writes benchmarks/results/speed.json (images per second, median of timed repeats, after warm-up).
Usage: python benchmarks/speed.py [--threads N]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from factordiff.config import load_config
from factordiff.data.shapes import geometry_maps, render, shapes_spec
from factordiff.diffusion.autoencoder import AutoencoderStep, build_autoencoder
from factordiff.diffusion.condition import Condition
from factordiff.diffusion.objective import DiffusionStep
from factordiff.diffusion.sampling import ddim_invert, ddim_sample
from factordiff.encoders.distill import DistillStep, FactorDistiller
from factordiff.evaluate.counterfactual import Oracle, OracleStep
from factordiff.models.images import ModelShape, build_denoiser

OUT = Path(__file__).parent / "results" / "speed.json"


def median_time(fn, repeats: int = 5, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def train_rate(step_module: torch.nn.Module, batch: dict, images: int) -> float:
    opt = torch.optim.AdamW([p for p in step_module.parameters() if p.requires_grad], lr=1e-4)
    gen = torch.Generator().manual_seed(0)

    def one():
        loss, _ = step_module(batch, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return images / median_time(one)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from importlib import resources

    with resources.as_file(resources.files("factordiff") / "configs" / "quickstart.json") as p:
        cfg = load_config(p)
    spec = shapes_spec()
    idx = spec.grid()[np.random.default_rng(0).choice(spec.grid_size, 10000, replace=False)]
    results: dict = {
        "machine": platform.processor() or platform.machine(),
        "threads": args.threads,
        "torch": torch.__version__,
    }
    for size in (32, 64):
        t = time.perf_counter()
        geometry_maps(size)
        first = time.perf_counter() - t
        results[f"render_{size}px"] = {
            "images_per_s": 10000 / median_time(lambda: render(idx, size), 3, 0),
            "geometry_cache_s": first,
        }
    size, b = cfg.data.size, 64
    imgs = torch.from_numpy(render(idx[:b], size))
    factors = torch.from_numpy(idx[:b])
    shape = ModelShape(3, size)
    torch.manual_seed(0)
    distiller = FactorDistiller(
        spec.sizes,
        [f.kind == "ordinal" for f in spec.factors],
        3,
        size,
        cfg.distill.code_dims,
        cfg.distill.width,
    )
    results["train_distiller"] = {
        "images_per_s": train_rate(
            DistillStep(distiller, cfg.distill), {"images": imgs, "factors": factors}, b
        )
    }
    ae = build_autoencoder(cfg.autoencoder, 3, size)
    results["train_autoencoder"] = {
        "images_per_s": train_rate(
            AutoencoderStep(ae, distiller.eval(), cfg.autoencoder), {"images": imgs[:32]}, 32
        )
    }
    den = build_denoiser(cfg, spec, shape)
    lat = ae.encode(imgs.permute(0, 3, 1, 2).float() / 127.5 - 1).detach()
    codes = torch.randn(b, len(spec), cfg.distill.code_dims)
    results["train_denoiser"] = {
        "images_per_s": train_rate(DiffusionStep(den, cfg.denoiser), {"x": lat, "codes": codes}, b),
        "parameters": sum(p.numel() for p in den.parameters()),
    }
    oracle = Oracle(spec.sizes, 3, size)
    results["train_oracle"] = {
        "images_per_s": train_rate(OracleStep(oracle), {"images": imgs, "factors": factors}, b)
    }
    den.eval()
    cond = Condition.full(codes)
    with torch.no_grad():
        steps = 50
        results["ddim_sample_50_steps"] = {
            "images_per_s": b
            / median_time(lambda: ddim_sample(den, torch.randn_like(lat), cond, cfg.denoiser, steps), 3, 1)
        }
        results["ddim_invert_50_steps"] = {
            "images_per_s": b / median_time(lambda: ddim_invert(den, lat, cond, cfg.denoiser, steps), 3, 1)
        }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
