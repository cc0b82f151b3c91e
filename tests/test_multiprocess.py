"""Training on 2 CPU processes under ``accelerate launch`` (gloo): a step equals the one-process
step on the same global batch, and checkpoints resume exactly on as many processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from factordiff.checkpoint import load_tensors

JOB = Path(__file__).parent / "mp_job.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(args: list[str], processes: int) -> subprocess.CompletedProcess:
    if processes == 1:
        cmd = [sys.executable, str(JOB), *args]
    else:
        accelerate = Path(sys.executable).parent / "accelerate"
        cmd = [
            str(accelerate),
            "launch",
            "--multi_gpu",
            "--num_processes",
            str(processes),
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            str(_port()),
            str(JOB),
            *args,
        ]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("mp")
    _launch(["match", str(root / "one")], 1)
    _launch(["match", str(root / "two")], 2)
    _launch(["resume", str(root / "two")], 2)
    return root


def test_two_processes_match_one_on_the_same_global_batch(runs):
    one, two = (
        load_tensors(runs / "one" / "weights.safetensors"),
        load_tensors(runs / "two" / "weights.safetensors"),
    )
    assert one.keys() == two.keys()
    for k in one:
        # tolerance: float32 sums in another order (gradients averaged over processes), 12 steps
        assert torch.allclose(one[k], two[k], rtol=1e-4, atol=1e-5), (k, (one[k] - two[k]).abs().max())
    start = _job().Regress(0.0).state_dict()  # the weights before training: both runs moved away from them
    assert all((two[k] - start[k]).abs().max() > 1e-3 for k in start)


def test_two_process_checkpoints_resume_exactly(runs):
    straight, resumed = (
        load_tensors(runs / "two" / "straight.safetensors"),
        load_tensors(runs / "two" / "resumed.safetensors"),
    )
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), k


def _job():
    sys.path.insert(0, str(JOB.parent))
    try:
        import mp_job
    finally:
        sys.path.pop(0)
    return mp_job


def test_resuming_on_another_number_of_processes_is_refused(runs, tmp_path):
    import shutil

    from factordiff.errors import FactordiffError

    shutil.copytree(runs / "two" / "resumed", tmp_path / "resumed")
    with pytest.raises(FactordiffError, match="written by 2 process"):
        _job().train(0.1, 12, tmp_path / "resumed", resume=True)


def test_fit_runs_under_accelerate_launch_on_two_processes(tmp_path):
    """The user's command: ``accelerate launch ... -m factordiff fit``; one process writes, the
    model loads, and the checkpoints hold both processes' random states."""
    from conftest import tiny_config

    from factordiff.checkpoint import latest_checkpoint, load_checkpoint
    from factordiff.models.images import FactorModel

    cfg = tiny_config(**{"denoiser.adapter": "tokens", "denoiser.train_base": False, "train.threads": 1})
    cfg.save(tmp_path / "tiny.json")
    accelerate = Path(sys.executable).parent / "accelerate"
    cmd = [
        str(accelerate),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_port()),
        "-m",
        "factordiff",
        "fit",
        "--config",
        str(tmp_path / "tiny.json"),
        "--out",
        str(tmp_path / "run"),
    ]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.count("trained ") == 1
    model = FactorModel.load(tmp_path / "run" / "model")
    assert model.prototypes
    for stage in ("distiller", "autoencoder", "base", "denoiser"):
        _, state = load_checkpoint(latest_checkpoint(tmp_path / "run" / "checkpoints", stage))
        assert len(state["generators"]) == 2 and not torch.equal(
            state["generators"][0], state["generators"][1]
        )
