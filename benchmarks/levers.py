"""Speed levers, each measured against the current default on the quickstart's denoiser (tokens
adapter, 5 M parameters, 8x8x4 latents); into ``benchmarks/results/levers.json``. A lever is kept
in the library only if it is faster here (or, for GPU-only levers, where a GPU says so).

    python benchmarks/levers.py [--repeats 5] [--threads 2] [--compile]

- training step: AdamW ``foreach`` (default) against ``fused=True``;
- sampling (20 DDIM steps, batch 64, guidance 2 on one factor: an edit's regeneration):
  ``torch.no_grad`` against ``torch.inference_mode``; channels-last memory format; bf16 autocast;
  the tokens adapter's attention through SDPA (diffusers' ``AttnProcessor2_0``, the default)
  against the plain ``AttnProcessor``; ``torch.compile`` of the UNet (``--compile``: minutes of
  compilation).

Timings alternate between variants, after a warm-up, and the figures are medians (images/s).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import platform
import shlex
import sys
import time
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from factordiff.checkpoint import atomic_write_json
from factordiff.config import load_config
from factordiff.data.shapes import shapes_spec
from factordiff.diffusion.condition import Condition
from factordiff.diffusion.guidance import Guidance
from factordiff.diffusion.objective import DiffusionStep
from factordiff.diffusion.sampling import sample
from factordiff.models.images import ModelShape, build_denoiser, denoiser_space

OUT = Path(__file__).parent / "results" / "levers.json"


def alternate(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each function, timed in turn ``repeats`` times after one warm-up call."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: float(np.median(v)) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compile", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    with resources.as_file(resources.files("factordiff") / "configs" / "quickstart.json") as p:
        cfg = load_config(p)
    spec = shapes_spec()
    channels, size = denoiser_space(cfg, ModelShape(3, cfg.data.size))
    torch.manual_seed(0)
    den = build_denoiser(cfg, spec, ModelShape(3, cfg.data.size))
    for p_ in den.parameters():  # a trained-looking adapter: its output projections are not zero
        p_.data.add_(0.01 * torch.randn_like(p_))
    b = cfg.denoiser.batch_size
    x = torch.randn(b, channels, size, size)
    codes = torch.randn(b, len(spec), cfg.distill.code_dims)
    result: dict = {}

    # --- training: AdamW foreach vs fused -------------------------------------------------------
    def train_fn(fused: bool):
        model = copy.deepcopy(den).train()
        step = DiffusionStep(model, cfg.denoiser)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused)
        gen = torch.Generator().manual_seed(0)

        def run():
            for _ in range(5):
                loss, _ = step({"x": x, "codes": codes}, gen)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

        return run

    t = alternate({"foreach": train_fn(False), "fused": train_fn(True)}, a.repeats)
    result["train_adamw"] = {k: 5 * b / v for k, v in t.items()}

    # --- sampling -------------------------------------------------------------------------------
    cond = Condition.full(codes)
    guidance = Guidance(factors={0: 2.0})
    den.eval()

    def sampler(model, ctx=torch.no_grad, layout=None, autocast=False):
        def run():
            xt = x if layout is None else x.contiguous(memory_format=layout)
            with ctx(), torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext():
                sample(model, xt, cond, cfg.denoiser, 20, guidance)

        return run

    plain = copy.deepcopy(den)
    from diffusers.models.attention_processor import AttnProcessor

    for layer in plain.adapter.layers:
        layer.set_processor(AttnProcessor())
    cl = copy.deepcopy(den).to(memory_format=torch.channels_last)
    variants = {
        "no_grad (default)": sampler(den),
        "inference_mode": sampler(den, torch.inference_mode),
        "channels_last": sampler(cl, layout=torch.channels_last),
        "bf16_autocast": sampler(den, autocast=True),
        "attention_plain (not SDPA)": sampler(plain),
    }
    if a.compile:
        comp = copy.deepcopy(den)
        comp.unet = torch.compile(comp.unet)
        variants["torch_compile"] = sampler(comp)
    t = alternate(variants, a.repeats)
    result["sample_20_steps_img_s"] = {k: b / v for k, v in t.items()}
    result.update(
        model_params=sum(p.numel() for p in den.parameters()),
        batch_size=b,
        machine=f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        device="cpu",
        date=time.strftime("%Y-%m-%d"),
        command="python " + shlex.join(sys.argv),
    )
    atomic_write_json(OUT, result)
    for k, v in result.items():
        print(k, {kk: round(vv, 1) for kk, vv in v.items()} if isinstance(v, dict) else v)


if __name__ == "__main__":
    main()
