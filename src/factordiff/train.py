"""The one training loop: every model (distiller, autoencoder, denoiser, oracle) trains through it.

A ``Stage`` names what to train: a module whose ``forward(batch, generator)`` returns
``(loss, logs)``, the allow-list of parameters the optimizer may change, a deterministic batch
source and a step or time budget. ``run_stage`` adds the rest: accelerate (CPU or GPUs, unchanged
code), AdamW with warm-up, gradient clipping, EMA weights, a progress bar with loss, images/s and
ETA, atomic checkpoints, exact resume, and a clean stop on NaN, SIGINT or SIGTERM.

Exact resume: the data order is a pure function of (seed, stage, step) and every random draw
comes from one torch.Generator whose state is checkpointed with the optimizer and EMA, so on CPU a
run killed at any point and resumed ends with the same weights as an uninterrupted one.

Several processes (``accelerate launch``): every process reads the same global batch of a step and
keeps its own rows (``rank::world``), so the global batch size is the config's whatever the number
of processes; accelerate's DDP averages the gradients, which makes a step the one-process step on
the same global batch up to the order of floating-point sums. Each process draws its random numbers
(noise, time steps, dropout) from its own generator, seeded by its rank, and a checkpoint holds the
generator state of every process, so resuming on as many processes is exact. The decisions to stop
(time budget, a signal, a non-finite loss) are taken by all processes together.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from diffusers import UNet2DModel
from torch import nn
from tqdm.auto import tqdm

from factordiff.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    load_modules,
    module_tensors,
    save_checkpoint,
)
from factordiff.errors import FactordiffError

Batch = dict[str, torch.Tensor]


class Interrupted(FactordiffError):
    """Training stopped by SIGINT or SIGTERM after saving a checkpoint."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


def as_tensor(rows) -> torch.Tensor:
    """A tensor of rows read from a tensor, an array or a lazy array (``ShardedImages``)."""
    return rows if isinstance(rows, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(rows))


@dataclass
class ArrayBatches:
    """Deterministic minibatches from tensors or arrays (in memory, or images packed on disk, which
    are read row by row): the batch of a step depends only on (seed, step), so a resumed run sees
    exactly the batches the interrupted one would have, and ``local`` gives a process its rows of
    the global batch without reading the others'.

    Args:
        tensors: name -> tensor, array or lazy array with the same first dimension N.
        batch_size: rows per step.
        seed: seeds the per-epoch permutations.
    """

    tensors: dict[str, torch.Tensor]
    batch_size: int
    seed: int = 0

    def __post_init__(self) -> None:
        # in-memory arrays become tensors over the same memory, indexed as before; memory-mapped and
        # packed arrays stay as they are and are read row by row
        self.tensors = {
            k: torch.from_numpy(v) if type(v) is np.ndarray else v for k, v in self.tensors.items()
        }
        sizes = {len(t) for t in self.tensors.values()}
        if len(sizes) != 1 or 0 in sizes:
            raise ValueError(f"ArrayBatches: tensors must share a non-zero first dimension, got {sizes}")
        self.n = sizes.pop()
        self._perm_epoch, self._perm = -1, np.empty(0, np.int64)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm_epoch, self._perm = (
                epoch,
                np.random.default_rng([self.seed, epoch]).permutation(self.n),
            )
        return self._perm

    def indices(self, step: int) -> np.ndarray:
        start = step * self.batch_size
        out = []
        while len(out) < self.batch_size:
            epoch, offset = divmod(start + len(out), self.n)
            out.extend(self._permutation(epoch)[offset : offset + self.batch_size - len(out)].tolist())
        return np.asarray(out)

    def __call__(self, step: int) -> Batch:
        return self.local(step, 0, 1)

    def local(self, step: int, rank: int, world: int) -> Batch:
        """Rows ``rank::world`` of the global batch of ``step``."""
        idx = self.indices(step)[rank::world]
        return {
            k: v[torch.from_numpy(idx)] if isinstance(v, torch.Tensor) else as_tensor(v[idx])
            for k, v in self.tensors.items()
        }


@dataclass
class Stage:
    """One thing to train.

    Args:
        name: stage name, also the checkpoint prefix (``distill``, ``autoencoder``, ``denoiser``).
        step_module: ``forward(batch, generator) -> (loss, logs)``; its submodules are saved.
        trainable: the allow-list of parameters the optimizer updates; everything else stays fixed.
        batches: ``batches(step) -> Batch``.
        steps: number of optimisation steps.
        lr: peak AdamW learning rate (linear warm-up over ``warmup`` steps, then constant).
        seconds: wall-clock budget; the stage ends at ``steps`` or at this many seconds.
        ema_decay: EMA decay of the trainable parameters (0: no EMA; the final weights are the raw ones).
        weight_decay: AdamW weight decay.
        images_per_step: for the images/s readout.
    """

    name: str
    step_module: nn.Module
    trainable: list[nn.Parameter]
    batches: Callable[[int], Batch]
    steps: int
    lr: float
    seconds: float | None = None
    ema_decay: float = 0.0
    warmup: int = 100
    weight_decay: float = 0.0
    images_per_step: int = 0
    log: list[dict[str, float]] = field(default_factory=list)


@dataclass
class LoopOptions:
    """Args:
    seed: seeds the stage's torch.Generator.
    checkpoints: folder for checkpoints (None: no checkpoints, no resume).
    checkpoint_every: steps between checkpoints.
    keep_last: checkpoints kept.
    grad_clip: maximum gradient norm (0 disables clipping).
    resume: continue from the newest checkpoint of the stage if there is one.
    progress: show a progress bar.
    precision: ``fp32``, or ``bf16`` autocast around each step's forward pass and loss.
    compile: ``torch.compile`` the stage's UNets (their forward, static shapes) for the stage's
        steps; the modules, their weights and checkpoints are unchanged and eager afterwards.
    """

    seed: int = 0
    checkpoints: Path | None = None
    checkpoint_every: int = 500
    keep_last: int = 2
    grad_clip: float = 1.0
    resume: bool = False
    progress: bool = True
    precision: str = "fp32"
    compile: bool = False


def _accelerator():
    from accelerate import Accelerator

    return Accelerator(cpu=not torch.cuda.is_available())


def process() -> tuple[int, int, bool]:
    """(rank, number of processes, is main) of this process, one process outside a launcher."""
    from accelerate import PartialState

    s = PartialState(cpu=not torch.cuda.is_available())
    return s.process_index, s.num_processes, s.is_main_process


def barrier() -> None:
    """Wait for every process (nothing with one)."""
    from accelerate import PartialState

    PartialState(cpu=not torch.cuda.is_available()).wait_for_everyone()


def leave(code: int) -> int:
    """``code``, or under a launcher after a clean finish, the end of this process.

    A gloo process group alive at the interpreter's teardown (even after ``destroy_process_group``)
    sometimes aborts a process that has finished its work ('terminate called without an active
    exception', exit -6) on a loaded machine, which fails the whole launch. So after a clean finish
    every process waits for the others, flushes its output and ends through ``os._exit``, which
    skips that teardown; files are already closed (writes are atomic). A failing process returns
    its code as usual.
    """
    if code != 0 or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return code
    torch.distributed.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _anyone(flag: bool, world: int) -> bool:
    """Whether ``flag`` holds on any process: a decision every process takes together."""
    if world == 1:
        return flag
    t = torch.tensor([int(flag)])
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item())


def _local_batch(batches: Callable[[int], Batch], step: int, rank: int, world: int, stage: str) -> Batch:
    """This process's rows of the global batch of ``step`` (all of it with one process)."""
    if world == 1:
        return batches(step)
    local = getattr(batches, "local", None)
    batch = None if local else batches(step)
    size = batches.batch_size if local else len(next(iter(batch.values())))
    if size % world:
        raise FactordiffError(
            f"{stage}: batch_size {size} does not split evenly over {world} processes; choose "
            f"a multiple of {world}"
        )
    return local(step, rank, world) if local else {k: v[rank::world] for k, v in batch.items()}


def _adamw(stage: Stage, device: torch.device) -> torch.optim.AdamW:
    """AdamW with torch's fused kernel where the device has one (CPU and CUDA): one pass over the
    parameters per step instead of several; 4.5% more training images/s on the quickstart's
    denoiser here (benchmarks/levers.py), the same update up to float rounding."""
    if device.type in ("cpu", "cuda"):
        return torch.optim.AdamW(stage.trainable, lr=stage.lr, weight_decay=stage.weight_decay, fused=True)
    return torch.optim.AdamW(stage.trainable, lr=stage.lr, weight_decay=stage.weight_decay)


def _ema(stage: Stage):
    if stage.ema_decay <= 0:
        return None
    from diffusers.training_utils import EMAModel

    return EMAModel(stage.trainable, decay=stage.ema_decay, use_ema_warmup=True, power=3 / 4, foreach=True)


def _lr_lambda(warmup: int) -> Callable[[int], float]:
    return lambda step: min(1.0, (step + 1) / max(1, warmup))


class _SignalFlag:
    """Records SIGINT/SIGTERM while installed, so the loop can checkpoint and stop between steps."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_SignalFlag":
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame) -> None:
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def _generator_states(gen: torch.Generator, world: int) -> list[torch.Tensor]:
    """The generator state of every process, in rank order (a collective with several)."""
    if world == 1:
        return [gen.get_state()]
    from accelerate.utils import gather_object

    return gather_object([gen.get_state()])


def _checkpoint_state(
    stage: Stage, step: int, optimizer, scheduler, ema, generators: list[torch.Tensor]
) -> dict[str, Any]:
    state = {
        "stage": stage.name,
        "step": step,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "ema": ema.state_dict() if ema is not None else None,
        "log": stage.log,
    }
    if len(generators) > 1:
        state["generators"] = generators
    else:
        state["generator"] = generators[0]
    return state


def _restore(
    stage: Stage, folder: Path, optimizer, scheduler, ema, gen: torch.Generator, rank: int, world: int
) -> int:
    weights, state = load_checkpoint(folder)
    saved = len(state.get("generators", [None]))
    if saved != world:
        raise FactordiffError(
            f"{folder}: checkpoint written by {saved} process(es); resume it on {saved}, not {world}"
        )
    load_modules(dict(stage.step_module.named_children()), weights, str(folder))
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if ema is not None:
        ema.load_state_dict(state["ema"])
    gen.set_state(state["generators"][rank] if world > 1 else state["generator"])
    stage.log[:] = state["log"]
    return int(state["step"])


def run_stage(stage: Stage, opts: LoopOptions) -> Stage:
    """Train ``stage`` to its step or time budget; afterwards the trainable parameters hold the EMA
    weights (or the raw ones without EMA). Returns the stage with its log filled in."""
    unets = [m for m in stage.step_module.modules() if isinstance(m, UNet2DModel)] if opts.compile else []
    for m in unets:  # an instance attribute over the class's forward, removed after the stage
        m.forward = torch.compile(m.forward, dynamic=False)
    try:
        return _run_stage(stage, opts)
    finally:
        for m in unets:
            del m.forward


def _run_stage(stage: Stage, opts: LoopOptions) -> Stage:
    accelerator = _accelerator()
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    stage.step_module.to(device)
    optimizer = _adamw(stage, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(stage.warmup))
    module, optimizer = accelerator.prepare(stage.step_module, optimizer)
    ema = _ema(stage)
    gen = torch.Generator(device="cpu").manual_seed(
        opts.seed * 1009 + sum(map(ord, stage.name)) + 104729 * rank
    )
    ckpt_dir = Path(opts.checkpoints) if opts.checkpoints else None
    step = 0
    if opts.resume and ckpt_dir is not None and (last := latest_checkpoint(ckpt_dir, stage.name)) is not None:
        step = _restore(stage, last, optimizer, scheduler, ema, gen, rank, world)

    def save(at: int) -> Path | None:
        if ckpt_dir is None:
            return None
        generators = _generator_states(gen, world)  # every process takes part
        where = ckpt_dir / f"{stage.name}-{at:08d}"
        if accelerator.is_main_process:
            weights = module_tensors(dict(stage.step_module.named_children()))
            save_checkpoint(
                where,
                weights,
                _checkpoint_state(stage, at, optimizer, scheduler, ema, generators),
                opts.keep_last,
            )
        accelerator.wait_for_everyone()
        return where

    start_time, start_step = time.monotonic(), step
    bar = tqdm(
        total=stage.steps,
        initial=step,
        desc=stage.name,
        disable=not opts.progress or not accelerator.is_main_process,
        unit="step",
        dynamic_ncols=True,
        mininterval=1.0,
    )
    with _SignalFlag() as flag:
        while step < stage.steps:
            if _anyone(stage.seconds is not None and time.monotonic() - start_time >= stage.seconds, world):
                break
            batch = {
                k: v.to(device) for k, v in _local_batch(stage.batches, step, rank, world, stage.name).items()
            }
            module.train()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=opts.precision == "bf16"):
                loss, logs = module(batch, gen)
            loss = loss.float()
            if _anyone(not bool(torch.isfinite(loss)), world):
                last = latest_checkpoint(ckpt_dir, stage.name) if ckpt_dir else None
                kept = f"; last good checkpoint: {last}" if last else ""
                raise FactordiffError(
                    f"{stage.name}: loss became {loss.item()} at step {step}; stopped{kept}"
                )
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            if opts.grad_clip > 0:
                accelerator.clip_grad_norm_(stage.trainable, opts.grad_clip)
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.step(stage.trainable)
            step += 1
            stage.log.append({"step": step, "loss": float(loss.item()), **logs})
            _show(bar, stage, start_time, step - start_step)
            if step % opts.checkpoint_every == 0:
                save(step)
            if _anyone(flag.signum is not None, world):
                where = save(step)
                bar.close()
                name = (
                    signal.Signals(flag.signum).name
                    if flag.signum is not None
                    else "a signal to another process"
                )
                raise Interrupted(
                    f"{name} at {stage.name} step {step}; checkpoint saved to {where}; "
                    "continue with --resume",
                    flag.signum or signal.SIGTERM,
                )
    bar.close()
    if step % opts.checkpoint_every and step > start_step:
        save(step)
    if ema is not None:
        ema.copy_to(stage.trainable)
    return stage


def _show(bar: tqdm, stage: Stage, start: float, steps_done: int) -> None:
    bar.update(1)
    if bar.n % 10 == 0 or bar.n == stage.steps:
        rate = steps_done * max(stage.images_per_step, 1) / max(time.monotonic() - start, 1e-9)
        recent = stage.log[-10:]
        bar.set_postfix(
            loss=f"{sum(r['loss'] for r in recent) / len(recent):.4f}", img_s=f"{rate:.0f}", refresh=False
        )


@torch.no_grad()
def map_batches(
    fn: Callable[[torch.Tensor], torch.Tensor], x, batch_size: int = 256, desc: str | None = None
) -> torch.Tensor:
    """Apply ``fn`` to ``x`` (a tensor, an array or images packed on disk) in batches and
    concatenate; with ``desc``, show a progress bar."""
    if not len(x):
        return as_tensor(x[:0])
    out = []
    with tqdm(total=len(x), desc=desc, unit="img", disable=desc is None, leave=False) as bar:
        for i in range(0, len(x), batch_size):
            out.append(fn(as_tensor(x[i : i + batch_size])))
            bar.update(len(out[-1]))
    return torch.cat(out)


def training_curves(log_path: Path, points: int = 200) -> dict[str, list[list[float]]]:
    """Per stage, (step, mean loss) pairs averaged over windows so each stage has about ``points``."""
    by_stage: dict[str, list[tuple[int, float]]] = {}
    if log_path.is_file():
        for line in log_path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                by_stage.setdefault(row["stage"], []).append((row["step"], row["loss"]))
    curves = {}
    for stage, rows in by_stage.items():
        w = max(1, len(rows) // points)
        curves[stage] = [
            [rows[min(i + w, len(rows)) - 1][0], sum(r[1] for r in rows[i : i + w]) / len(rows[i : i + w])]
            for i in range(0, len(rows), w)
        ]
    return curves
