"""A small training job that ``tests/test_multiprocess.py`` runs alone and under
``accelerate launch`` on 2 CPU processes: the loop of ``factordiff.train`` on a regression.

    python tests/mp_job.py match|resume OUT
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from factordiff.checkpoint import atomic_save_tensors
from factordiff.train import ArrayBatches, LoopOptions, Stage, leave, process, run_stage


class Regress(nn.Module):
    """mse of a small MLP; ``jitter`` > 0 adds input noise drawn from the loop's generator."""

    def __init__(self, jitter: float):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
        self.jitter = jitter

    def forward(self, batch, gen):
        x = batch["x"] + self.jitter * torch.randn(batch["x"].shape, generator=gen)
        return F.mse_loss(self.net(x), batch["y"]), {}


def train(jitter: float, steps: int, out: Path, resume: bool = False) -> Regress:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(256, 8, generator=g)
    y = torch.sin(x.sum(1, keepdim=True))
    step = Regress(jitter)
    stage = Stage(
        "regress",
        step,
        list(step.parameters()),
        ArrayBatches({"x": x, "y": y}, 16, seed=3),
        steps,
        1e-2,
        ema_decay=0.9,
        warmup=3,
    )
    run_stage(
        stage,
        LoopOptions(
            seed=5, checkpoints=out / "checkpoints", checkpoint_every=4, resume=resume, progress=False
        ),
    )
    return step


def main() -> None:
    torch.set_num_threads(1)
    mode, out = sys.argv[1], Path(sys.argv[2])
    if mode == "match":  # no random draws: a step is the one-process step on the same global batch
        results = {"weights": train(0.0, 12, out / "match")}
    else:  # random draws per process: 8 steps straight, and 4 steps then a resume to 8
        straight = train(0.1, 8, out / "straight")
        train(0.1, 4, out / "resumed")
        results = {"straight": straight, "resumed": train(0.1, 8, out / "resumed", resume=True)}
    if process()[2]:
        for name, m in results.items():
            atomic_save_tensors(m.state_dict(), out / f"{name}.safetensors")
    sys.exit(leave(0))  # as the CLI ends: a live gloo group can abort the interpreter's teardown


if __name__ == "__main__":
    main()
