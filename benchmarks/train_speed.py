"""Training speed side by side with diffusers: factordiff's training loop against a plain reference
loop written with diffusers' public API, on the same UNet, batch, optimizer and precision, in the
same process, alternating; into ``benchmarks/results/train_throughput.json``.

    python benchmarks/train_speed.py [--steps 30] [--repeats 5] [--threads 2] [--profile]

The model is the quickstart's denoiser UNet (``UNet2DModel`` over the autoencoder's latents,
scale-shift time conditioning), trained unconditionally: the one model both loops can train
unchanged (factordiff's ``base`` stage). The reference follows diffusers'
``examples/unconditional_image_generation/train_unconditional.py``: an ``Accelerator``, a shuffled
``DataLoader``, ``DDPMScheduler.add_noise``, the v-prediction target, ``accelerator.backward``,
gradient clipping at 1.0, AdamW, a warm-up schedule from ``diffusers.optimization.get_scheduler``
and ``diffusers.training_utils.EMAModel`` (decay 0.999, warm-up, power 3/4), all at their defaults.
factordiff's side is ``train.run_stage`` on a ``Stage`` of the same step count: everything a
``fit`` step does (deterministic batches, the generator-drawn noise, loss check, clipping, EMA,
the per-step log and progress readout; no checkpoints). Each trial times ``--steps`` steps
including the set-up of optimizer, schedule and EMA, which both loops do per trial; trials
alternate, after one warm-up trial each, and the figures are the medians.

``--profile`` adds the top operators (self CPU time) of a few steps of each loop, which is where
to look when one is slower.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import shlex
import sys
import time
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from factordiff import load_run
from factordiff.checkpoint import atomic_write_json
from factordiff.config import load_config
from factordiff.diffusion.denoiser import Denoiser, build_unet
from factordiff.diffusion.objective import DiffusionStep
from factordiff.models.images import ModelShape, denoiser_space
from factordiff.quickstart import pretrained_run
from factordiff.regenerate import regenerate
from factordiff.train import ArrayBatches, LoopOptions, Stage, run_stage

OUT = Path(__file__).parent / "results" / "train_throughput.json"


def factordiff_trial(
    den: Denoiser, x: torch.Tensor, cfg, steps: int, seed: int, precision: str = "fp32", compile: bool = False
) -> float:
    stage = Stage(
        "bench",
        DiffusionStep(den, cfg.denoiser),
        den.base_parameters(),
        ArrayBatches({"x": x}, cfg.denoiser.batch_size, seed),
        steps,
        cfg.denoiser.lr,
        ema_decay=cfg.denoiser.ema_decay,
        warmup=100,
        images_per_step=cfg.denoiser.batch_size,
    )
    t = time.perf_counter()
    run_stage(
        stage, LoopOptions(seed=seed, checkpoints=None, progress=False, precision=precision, compile=compile)
    )
    return time.perf_counter() - t


def reference_trial(unet, x: torch.Tensor, cfg, steps: int, seed: int, mixed_precision: str = "no") -> float:
    """diffusers' train_unconditional.py pattern, unconditional, v-prediction, at the example's
    ``--mixed_precision`` (``no``, its default, or ``bf16``)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    dn = cfg.denoiser
    t0 = time.perf_counter()
    # accelerate keeps one state per process, which factordiff's loop has set up at fp32: start the
    # reference's afresh at its own precision, and leave it fresh for the next trial
    AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=mixed_precision)
    scheduler = DDPMScheduler(
        num_train_timesteps=dn.num_train_timesteps,
        beta_schedule=dn.beta_schedule,
        prediction_type=dn.prediction_type,
    )
    optimizer = torch.optim.AdamW(unet.parameters(), lr=dn.lr, weight_decay=0.0)
    lr_scheduler = get_scheduler("constant_with_warmup", optimizer=optimizer, num_warmup_steps=100)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x),
        batch_size=dn.batch_size,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(seed),
    )
    model, optimizer, loader, lr_scheduler = accelerator.prepare(unet, optimizer, loader, lr_scheduler)
    ema = EMAModel(model.parameters(), decay=dn.ema_decay, use_ema_warmup=True, power=3 / 4)
    emb = torch.zeros(dn.batch_size, unet.config.block_out_channels[0] * 4)
    done = 0
    while done < steps:
        for (clean,) in loader:
            noise = torch.randn_like(clean)
            timesteps = torch.randint(0, dn.num_train_timesteps, (len(clean),), device=clean.device)
            noisy = scheduler.add_noise(clean, noise, timesteps)
            with accelerator.accumulate(model):
                pred = model(noisy, timesteps, class_labels=emb).sample
                loss = F.mse_loss(pred.float(), scheduler.get_velocity(clean, noise, timesteps).float())
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            if accelerator.sync_gradients:
                ema.step(model.parameters())
            loss.detach().item()  # the example logs the loss every step
            done += 1
            if done == steps:
                break
    ema.copy_to(model.parameters())
    elapsed = time.perf_counter() - t0
    AcceleratorState._reset_state(reset_partial_state=True)
    return elapsed


def top_ops(fn, rows: int = 8) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    avg = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:rows]
    return [
        {"op": e.key, "self_cpu_ms": round(e.self_cpu_time_total / 1e3, 1), "calls": e.count} for e in avg
    ]


def peak_gflops(dtype: torch.dtype, n: int = 2048, seconds: float = 3.0) -> float:
    """The machine's measured matmul rate: an n x n x n product (2 n^3 FLOPs) repeated for about
    ``seconds`` after a warm-up, in GFLOP/s."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        done += 1
    return 2 * n**3 * done / (time.perf_counter() - t0) / 1e9


def training_flops_per_image(unet, x: torch.Tensor, batch: int) -> float:
    """FLOPs of one training step's forward and backward pass through the UNet per image, counted
    by ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matrix products; the
    optimizer's and the loss's elementwise work is not counted, as model-FLOPs utilisation counts)."""
    from torch.utils.flop_counter import FlopCounterMode

    net = copy.deepcopy(unet)
    emb = torch.zeros(batch, net.config.block_out_channels[0] * 4)
    t = torch.randint(0, 1000, (batch,))
    with FlopCounterMode(display=False) as counter:
        net(x[:batch], t, class_labels=emb).sample.square().mean().backward()
    return counter.get_total_flops() / batch


def edit_flops_per_image() -> dict:
    """FLOPs of one quickstart edit (``regenerate`` on the shipped shapes32 model: the run's inversion
    and regeneration at its steps, strength and guidance, the autoencoder included), counted the
    same way, and the number of UNet passes it makes."""
    from torch.utils.flop_counter import FlopCounterMode

    run = load_run(pretrained_run(32, "shapes"))
    passes = {"n": 0}
    hook = run.model.denoiser.unet.register_forward_hook(lambda *_: passes.__setitem__("n", passes["n"] + 1))
    with FlopCounterMode(display=False) as counter:
        regenerate(run, ["shape=cube"], ["object_hue=0.3"], limit=1)
    hook.remove()
    e = run.config.evaluate
    return {
        "flops": counter.get_total_flops(),
        "unet_passes": passes["n"],
        "settings": f"{e.edit_inversion} inversion, steps {e.steps}, strength {e.edit_strength}, "
        f"guidance {e.guidance}",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30, help="training steps per timed trial")
    ap.add_argument("--repeats", type=int, default=5, help="timed trials of each loop (alternating)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--profile", action="store_true", help="also record the top operators of each loop")
    ap.add_argument(
        "--flops",
        action="store_true",
        help="also count model FLOPs per training image and per edit, measure the matmul peak (fp32, "
        "bf16) and give each loop's model-FLOPs utilisation",
    )
    ap.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16"],
        help="factordiff's train.precision (bf16: autocast around the forward pass and loss)",
    )
    ap.add_argument(
        "--compile",
        action="store_true",
        help="factordiff's train.compile (torch.compile of the UNet; the example does not compile); the "
        "compilation falls in the warm-up trial and is timed apart",
    )
    ap.add_argument(
        "--reference-precision",
        default="no",
        choices=["no", "bf16"],
        help="the reference's --mixed_precision (the example's default: no)",
    )
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    with resources.as_file(resources.files("factordiff") / "configs" / "quickstart.json") as p:
        cfg = load_config(p)
    channels, size = denoiser_space(cfg, ModelShape(3, cfg.data.size))
    torch.manual_seed(0)
    unet = build_unet(cfg.denoiser, channels, size)
    x = torch.randn(4096, channels, size, size)  # the step's cost does not depend on the latents' content
    ours, ref = Denoiser(copy.deepcopy(unet)), copy.deepcopy(unet)
    b = cfg.denoiser.batch_size
    ours_trial = lambda steps, seed: factordiff_trial(ours, x, cfg, steps, seed, a.precision, a.compile)  # noqa: E731
    ref_trial = lambda steps, seed: reference_trial(ref, x, cfg, steps, seed, a.reference_precision)  # noqa: E731
    warm_up = ours_trial(5, 0)
    ref_trial(5, 0)
    times: dict[str, list[float]] = {"factordiff": [], "reference": []}
    for r in range(a.repeats):
        times["factordiff"].append(ours_trial(a.steps, r + 1))
        times["reference"].append(ref_trial(a.steps, r + 1))
        print(
            f"trial {r + 1}: factordiff {a.steps * b / times['factordiff'][-1]:.0f} img/s, reference "
            f"{a.steps * b / times['reference'][-1]:.0f} img/s",
            flush=True,
        )
    rate = {k: a.steps * b / float(np.median(v)) for k, v in times.items()}
    result = {
        "factordiff_img_s": round(rate["factordiff"], 1),
        "reference_img_s": round(rate["reference"], 1),
        "ratio_vs_diffusers": round(rate["factordiff"] / rate["reference"], 3),
        "trial_img_s": {k: [round(a.steps * b / t, 1) for t in v] for k, v in times.items()},
        "model": f"UNet2DModel {list(cfg.denoiser.block_out_channels)} on {channels}x{size}x{size} latents, "
        "unconditional, v-prediction",
        "model_params": sum(p.numel() for p in unet.parameters()),
        "batch_size": b,
        "steps_per_trial": a.steps,
        "optimizer": f"AdamW lr {cfg.denoiser.lr}, EMA {cfg.denoiser.ema_decay}, grad clip 1.0",
        "precision": {"factordiff": a.precision, "reference": a.reference_precision},
        "compile": a.compile,
        "factordiff_warm_up_seconds": round(warm_up, 1),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "date": time.strftime("%Y-%m-%d"),
        "command": "python " + shlex.join(sys.argv),
    }
    if a.profile:
        result["profile"] = {
            "factordiff": top_ops(lambda: ours_trial(5, 9)),
            "reference": top_ops(lambda: ref_trial(5, 9)),
        }
    previous = json.loads(OUT.read_text()) if OUT.is_file() else {}
    if a.flops:
        per_image = training_flops_per_image(unet, x, b) / 1e9
        peak = {"fp32": peak_gflops(torch.float32), "bf16": peak_gflops(torch.bfloat16)}
        edit = edit_flops_per_image()
        edit["gflop"] = round(edit.pop("flops") / 1e9, 2)
        flops = {
            "train_per_image_gflop": round(per_image, 3),
            "edit": edit,
            "peak_gflops": {k: round(v, 1) for k, v in peak.items()},
            "command": result["command"],
        }
    elif "flops" in previous:  # the FLOP counts and peaks of an earlier --flops run on this machine
        flops = {k: v for k, v in previous["flops"].items() if not k.startswith("mfu")}
        flops.setdefault("command", previous.get("command"))
    else:
        flops = None
    if flops:
        # model-FLOPs utilisation of each loop against the peak of the precision it computes in
        own = {"factordiff": "bf16" if a.precision == "bf16" else "fp32"}
        own["reference"] = "bf16" if a.reference_precision == "bf16" else "fp32"
        flops["mfu"] = {
            k: round(rate[k] * flops["train_per_image_gflop"] / flops["peak_gflops"][own[k]], 3) for k in rate
        }
        flops["mfu_peak"] = own
        result["flops"] = flops
    # the latest measurement of each other precision pair stays beside this one
    others = [previous, *previous.get("other_settings", [])] if previous else []
    kept: dict = {}
    for o in others:
        key = json.dumps([o.get("precision"), o.get("compile", False)], sort_keys=True)
        mine = o.get("precision") == result["precision"] and o.get("compile", False) == a.compile
        if "factordiff_img_s" in o and not mine and key not in kept:
            kept[key] = {k: v for k, v in o.items() if k not in ("other_settings", "profile", "flops")}
    result["other_settings"] = list(kept.values())
    if "equal_wall_clock" in previous:  # benchmarks/train_quality.py's rows stay
        result["equal_wall_clock"] = previous["equal_wall_clock"]
    atomic_write_json(OUT, result)
    print(json.dumps({k: v for k, v in result.items() if k != "profile"}, indent=2))


if __name__ == "__main__":
    main()
