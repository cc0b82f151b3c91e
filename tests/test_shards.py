"""Packed datasets (``factordiff data pack``, ``--data shards:DIR``): the images read back exactly,
batches are those of the in-memory data, a fit on the pack equals a fit in memory (bit for bit but
for float rounding in the denoiser), and bad packs get one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_config

from factordiff.checkpoint import load_tensors
from factordiff.cli import main
from factordiff.data.shards import ShardedImages, open_shards, pack
from factordiff.data.sources import load_data
from factordiff.errors import FactordiffError
from factordiff.train import ArrayBatches


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    data = load_data("shapes", size=16, n=384, seed=0)
    out = tmp_path_factory.mktemp("pack") / "shapes16"
    pack(data, out, shard_size=100, progress=False)
    return data, out


def test_packed_images_read_back_exactly(packed):
    data, out = packed
    back = open_shards(out)
    assert isinstance(back.images, ShardedImages) and len(back.images._maps) == 0  # nothing read yet
    assert np.array_equal(back.factors, data.factors) and back.spec.to_json() == data.spec.to_json()
    rows = np.random.default_rng(0).permutation(len(data))[:150]  # across all 4 shards, out of order
    assert np.array_equal(back.images[rows], data.images[rows])
    mask = data.factors[:, 0] % 2 == 0
    sub = back.subset(mask)
    assert isinstance(sub.images, ShardedImages)
    assert np.array_equal(sub.images[np.arange(len(sub))], data.images[mask])
    assert np.array_equal(sub.subset(np.array([3, 1])).images[:], data.images[mask][[3, 1]])
    assert np.array_equal(np.asarray(back.images), data.images)


def test_batches_from_the_pack_are_the_in_memory_batches(packed):
    data, out = packed
    back = open_shards(out)
    mem = ArrayBatches({"images": torch.from_numpy(data.images)}, 32, seed=4)
    disk = ArrayBatches({"images": back.images}, 32, seed=4)
    for step in (0, 1, 11, 12, 40):
        assert torch.equal(mem(step)["images"], disk(step)["images"])
        assert torch.equal(mem.local(step, 1, 2)["images"], disk.local(step, 1, 2)["images"])


def test_a_fit_on_the_pack_equals_the_fit_in_memory(packed, tmp_path):
    from factordiff.fit import fit

    data, out = packed
    fit(tiny_config(), tmp_path / "mem", progress=False)
    fit(tiny_config(**{"data.source": f"shards:{out}", "data.n": None}), tmp_path / "disk", progress=False)
    for part in ("distiller", "autoencoder", "denoiser"):
        a, b = (
            load_tensors(tmp_path / "mem" / "model" / f"{part}.safetensors"),
            load_tensors(tmp_path / "disk" / "model" / f"{part}.safetensors"),
        )
        if part == "denoiser":
            # the same batches, noise and weights, but the first loss differs in the last bit (a CPU
            # kernel-level difference, not traced): equal to float rounding after 12 steps
            assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-5) for k in a), part
        else:
            assert all(torch.equal(a[k], b[k]) for k in a), part


def test_pack_command_and_bad_packs(tmp_path, capsys):
    assert (
        main(
            [
                "data",
                "pack",
                "shapes",
                "--size",
                "16",
                "--n",
                "64",
                "--shard-size",
                "30",
                "--out",
                str(tmp_path / "p"),
            ]
        )
        == 0
    )
    assert "packed 64 images (16x16x3) in 3 shard(s)" in capsys.readouterr().out
    assert len(open_shards(tmp_path / "p")) == 64
    # a non-empty --out is refused and left alone
    assert main(["data", "pack", "shapes", "--size", "16", "--n", "64", "--out", str(tmp_path / "p")]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    # no index (an interrupted pack), a truncated shard, a missing shard
    (tmp_path / "half").mkdir()
    assert main(["fit", "--data", f"shards:{tmp_path / 'half'}", "--out", str(tmp_path / "r1")]) == 2
    assert "no index.json" in capsys.readouterr().err and not (tmp_path / "r1").exists()
    shard = tmp_path / "p" / "images-000001.npy"
    shard.write_bytes(shard.read_bytes()[:500])
    with pytest.raises(
        FactordiffError, match="images-000001.npy: unreadable shard|images-000001.npy: expected uint8"
    ):
        open_shards(tmp_path / "p").images[np.arange(64)]
    shard.unlink()
    with pytest.raises(FactordiffError, match="missing shard file"):
        open_shards(tmp_path / "p")


def test_sigkill_then_resume_on_the_pack_equals_an_uninterrupted_run(packed, tmp_path):
    """Exact resume of the data order from disk: a fit on the pack killed in the denoiser stage
    and resumed ends with the weights and log of an uninterrupted fit on the pack."""
    import signal
    import subprocess

    from test_reliability import env, final_weights, fit_cmd, wait_for, write_config

    _, out = packed
    config = write_config(tmp_path / "tiny.json", **{"data.source": f"shards:{out}", "data.n": None})
    subprocess.run(fit_cmd(config, tmp_path / "ref"), check=True, env=env(), capture_output=True)
    proc = subprocess.Popen(
        fit_cmd(config, tmp_path / "run"),
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: (tmp_path / "run" / "checkpoints" / "denoiser-00000006" / "state.json").exists(), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    subprocess.run(fit_cmd(config, tmp_path / "run", "--resume"), check=True, env=env(), capture_output=True)
    a, b = final_weights(tmp_path / "ref"), final_weights(tmp_path / "run")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "run" / "train_log.jsonl").read_text() == (
        tmp_path / "ref" / "train_log.jsonl"
    ).read_text()
