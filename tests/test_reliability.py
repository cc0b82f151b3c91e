"""Interrupted runs: SIGKILL and resume, a kill during a checkpoint save, SIGTERM, NaN losses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_overrides
from diffusers import UNet2DModel

from factordiff import FactordiffError
from factordiff.checkpoint import latest_checkpoint, load_checkpoint, load_tensors
from factordiff.train import ArrayBatches, LoopOptions, Stage, run_stage

pytestmark = pytest.mark.slow


def write_config(path: Path, **extra) -> Path:
    """A tiny config with fixed steps (no time budget) and one thread, so runs are bit-reproducible."""
    over = tiny_overrides(
        **{
            "train.threads": 1,
            "train.checkpoint_every": 3,
            "distill.steps": 9,
            "autoencoder.steps": 9,
            "denoiser.steps": 15,
            **extra,
        }
    )
    data: dict = {}
    for key, value in over.items():
        section, name = key.split(".")
        data.setdefault(section, {})[name] = value
    path.write_text(json.dumps(data))
    return path


def fit_cmd(config: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "factordiff", "fit", "--config", str(config), "--out", str(out), *extra]


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return {
        f"{p.stem}.{k}": v
        for p in sorted((run / "model").glob("*.safetensors"))
        for k, v in load_tensors(p).items()
    }


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, (
            f"fit ended before the kill point: {proc.stderr.read() if proc.stderr else ''}"
        )
        assert time.monotonic() < end, "timed out waiting for the kill point"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("ref")
    config = write_config(folder / "tiny.json")
    subprocess.run(fit_cmd(config, folder / "run"), check=True, env=env(), capture_output=True)
    return config, folder / "run"


@pytest.mark.parametrize("stage,step", [("autoencoder", 3), ("denoiser", 6)])
def test_sigkill_then_resume_equals_an_uninterrupted_run(reference_run, tmp_path, stage, step):
    config, ref = reference_run
    out = tmp_path / "run"
    proc = subprocess.Popen(
        fit_cmd(config, out), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    target = out / "checkpoints" / f"{stage}-{step:08d}"
    wait_for(lambda: (target / "state.json").exists(), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "model" / "denoiser.safetensors").exists()
    subprocess.run(fit_cmd(config, out, "--resume"), check=True, env=env(), capture_output=True)
    a, b = final_weights(ref), final_weights(out)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    assert (out / "train_log.jsonl").read_text() == (ref / "train_log.jsonl").read_text()


KILL_DURING_SAVE = """
import os, sys
import safetensors.torch as st
import factordiff.checkpoint as ck
real, calls = st.save_file, [0]
def dying_save(tensors, path, metadata=None):
    calls[0] += 1
    if calls[0] == int(os.environ["DIE_AT_SAVE"]):
        with open(path, "wb") as f:
            f.write(b"partial")  # half a file, then the process dies
        os._exit(9)
    return real(tensors, path, metadata=metadata)
ck.save_file = dying_save
from factordiff.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_kill_during_checkpoint_save_keeps_the_previous_checkpoint(tmp_path):
    config = write_config(tmp_path / "tiny.json")
    out = tmp_path / "run"
    # each checkpoint writes two safetensors files; the 5th call is the 3rd distiller checkpoint
    p = subprocess.run(
        [sys.executable, "-c", KILL_DURING_SAVE, "fit", "--config", str(config), "--out", str(out)],
        env={**env(), "DIE_AT_SAVE": "5"},
        capture_output=True,
        text=True,
    )
    assert p.returncode == 9
    last = latest_checkpoint(out / "checkpoints", "distiller")
    assert last is not None and last.name == "distiller-00000006"
    assert (
        out / "checkpoints" / "distiller-00000009.tmp"
    ).exists()  # the torn save, never taken for a checkpoint
    weights, state = load_checkpoint(last)
    assert state["step"] == 6 and weights
    subprocess.run(fit_cmd(config, out, "--resume"), check=True, env=env(), capture_output=True)
    assert (out / "model" / "denoiser.safetensors").is_file()


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    config = write_config(
        tmp_path / "tiny.json", **{"denoiser.steps": 100000, "train.checkpoint_every": 1000}
    )
    out = tmp_path / "run"
    proc = subprocess.Popen(
        fit_cmd(config, out), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    wait_for(lambda: (out / "model" / "autoencoder.safetensors").exists(), proc)
    time.sleep(3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "SIGTERM at denoiser step" in err and "--resume" in err and "Traceback" not in err
    last = latest_checkpoint(out / "checkpoints", "denoiser")
    assert last is not None and load_checkpoint(last)[1]["step"] > 0


class ExplodingStep(torch.nn.Module):
    """A loss that turns NaN at step 7."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 1)
        self.calls = 0

    def forward(self, batch, gen):
        self.calls += 1
        loss = self.lin(batch["x"]).pow(2).mean()
        return (loss * float("nan") if self.calls == 7 else loss), {}


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    step = ExplodingStep()
    stage = Stage(
        "toy", step, list(step.parameters()), ArrayBatches({"x": torch.randn(32, 2)}, 4), steps=20, lr=1e-2
    )
    with pytest.raises(
        FactordiffError,
        match=r"toy: loss became nan at step 6; stopped; last good checkpoint: .*toy-00000005",
    ):
        run_stage(stage, LoopOptions(checkpoints=tmp_path, checkpoint_every=5, progress=False))
    assert load_checkpoint(tmp_path / "toy-00000005")[1]["step"] == 5


def test_array_batches_depend_only_on_seed_and_step():
    data = {"x": torch.arange(10)}
    a, b = ArrayBatches(data, 4, seed=1), ArrayBatches(data, 4, seed=1)
    seq = [a(s)["x"].tolist() for s in range(6)]
    assert [b(s)["x"].tolist() for s in reversed(range(6))][::-1] == seq
    flat = sum(seq[:5], [])[:10]
    assert sorted(flat) == list(range(10))  # the first epoch is a permutation


class DtypeStep(torch.nn.Module):
    """A linear layer that records the dtype its forward pass computed in."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(8, 8)
        self.dtypes: list[torch.dtype] = []

    def forward(self, batch, gen):
        out = self.lin(batch["x"])
        self.dtypes.append(out.dtype)
        return (out - 1.0).pow(2).mean(), {}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_precision_autocasts_the_forward_pass_and_keeps_fp32_weights(precision):
    step = DtypeStep()
    stage = Stage(
        "toy", step, list(step.parameters()), ArrayBatches({"x": torch.randn(32, 8)}, 8), 60, 1e-2, warmup=1
    )
    run_stage(stage, LoopOptions(progress=False, precision=precision))
    want = torch.bfloat16 if precision == "bf16" else torch.float32
    assert set(step.dtypes) == {want} and step.lin.weight.dtype == torch.float32
    losses = [r["loss"] for r in stage.log]
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5])  # it trains


class UNetStep(torch.nn.Module):
    """A training step through a tiny diffusers UNet (what ``train.compile`` compiles)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.unet = UNet2DModel(
            sample_size=8,
            in_channels=2,
            out_channels=2,
            block_out_channels=(8, 8),
            layers_per_block=1,
            norm_num_groups=4,
            down_block_types=("DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D"),
        )

    def forward(self, batch, gen):
        x = batch["x"]
        return (self.unet(x, torch.full((len(x),), 10)).sample - x).square().mean(), {}


def test_compiled_training_gives_the_eager_weights_and_leaves_the_unet_eager():
    """``LoopOptions.compile``: the same losses as eager training (within float reordering) and
    weights as close as AdamW allows, and afterwards the UNet's forward is the class's own again."""
    weights, losses = {}, {}
    x = torch.randn(16, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    for compiled in (False, True):
        step = UNetStep()
        stage = Stage("toy", step, list(step.parameters()), ArrayBatches({"x": x}, 8), 4, 1e-3)
        run_stage(stage, LoopOptions(progress=False, compile=compiled))
        assert "forward" not in vars(step.unet)
        weights[compiled] = torch.cat([p.detach().flatten() for p in step.parameters()])
        losses[compiled] = torch.tensor([r["loss"] for r in stage.log])
    assert torch.allclose(losses[True][0], losses[False][0], rtol=1e-5)  # the same weights, the same loss
    assert torch.allclose(losses[True], losses[False], rtol=5e-3)
    # AdamW moves every weight by about lr per step whatever its gradient's size, so a float
    # reordering that flips a near-zero gradient moves that weight by up to the 4 steps' travel
    assert (weights[True] - weights[False]).abs().max() < 4 * 1e-3 + 1e-5
    assert (weights[True] - weights[False]).abs().mean() < 1e-4
