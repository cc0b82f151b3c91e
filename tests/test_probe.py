"""Probe-direction edits (``counterfactual --method probe``, Algorithm 3 of the DiffSiam thesis): a
sparse linear probe fitted on training codes only, a move that raises its score by exactly the
amount asked, and bad requests in one line with exit code 2."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from factordiff import load_run
from factordiff.cli import main
from factordiff.data.images import save_png
from factordiff.errors import FactordiffError
from factordiff.probe import PROBES, fit_probe, probe_for, probe_from_codes


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    return shutil.copytree(tiny_run, tmp_path / "run")


def test_probe_fits_on_training_codes_and_moves_by_the_amount(run_copy):
    run = load_run(run_copy)
    _, split, train = run.data()
    probe = probe_for(run, "shape", "sphere", progress=False)
    assert probe.info["train_codes"] == min(4000, len(train)) and probe.info["nonzero"] >= 1
    codes = run.model.codes(train.images[:5])
    for direction in ("pattern", "weight"):  # either way the score rises by the amount asked
        moved = probe.move(codes, 2.0, direction)
        np.testing.assert_allclose(
            (probe.score(moved) - probe.score(codes)).numpy(), np.full(5, 2.0 * probe.sd), rtol=1e-3
        )
    unused = probe.weight.reshape(codes.shape[1:]) == 0
    assert torch.equal(moved[:, unused], codes[:, unused])  # weight: only the dimensions the probe reads
    assert (run_copy / PROBES / "shape=sphere.json").is_file()
    again = probe_for(run, "shape", "sphere", progress=False)  # read back, not fitted again
    assert torch.equal(again.weight, probe.weight) and again.sd == probe.sd
    assert torch.equal(again.pattern, probe.pattern)


def test_the_pattern_moves_the_codes_where_they_vary_with_the_factor():
    """A factor the codes carry twice: broadly and noisily in dimension 0 (three units a step, as a
    denoiser might read it) and precisely in dimension 1. The L1 probe reads dimension 1; moving
    along its weights to another value leaves dimension 0 where it was, moving along its pattern
    carries dimension 0 to the target value's codes, as a swap to that value would."""
    rng = np.random.default_rng(0)
    pos = rng.integers(0, 10, 2000).astype(float)
    broad, precise = 3 * pos + rng.normal(0, 1, 2000), pos + rng.normal(0, 0.01, 2000)
    codes = np.stack([broad, precise, rng.normal(size=2000)], 1).astype(np.float32)
    factor = type("F", (), {"name": "hue", "values": tuple(range(10))})()
    probe = probe_from_codes(codes, pos, factor, None)
    assert abs(probe.weight[1]) > 10 * abs(probe.weight[0])  # the precise copy is what it reads
    src = torch.from_numpy(codes[pos == 2][:50]).view(-1, 3, 1)
    target = float(probe.score(torch.from_numpy(codes[pos == 7])).mean())
    amounts = probe.amounts_to(src, target)
    by_weight, by_pattern = probe.move(src, amounts, "weight"), probe.move(src, amounts, "pattern")
    np.testing.assert_allclose(probe.score(by_pattern).numpy(), target, rtol=1e-3)
    np.testing.assert_allclose(probe.score(by_weight).numpy(), target, rtol=1e-3)
    assert float((by_weight - src)[:, 0].abs().max()) < 0.5  # the broad dimension stays near 6
    assert abs(float(by_pattern[:, 0].mean()) - 21) < 0.5  # and moves to 21 along the pattern
    assert float((by_pattern - src)[:, 2].abs().max()) < 0.2  # an unrelated one all but stays


def test_l1_probe_is_sparse_and_refuses_a_single_class():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 20))
    y = (x[:, 3] > 0).astype(int)
    w, _, info = fit_probe(x, y, categorical=True)
    assert info["roc_auc_3fold"] > 0.95 and np.argmax(np.abs(w)) == 3 and info["nonzero"] < 20
    with pytest.raises(FactordiffError, match="only one class"):
        fit_probe(x, np.zeros(400, int), categorical=True)


def test_cli_probe_edits_and_refusals(run_copy, tmp_path, capsys):
    run = load_run(run_copy)
    _, _, train = run.data()
    image = tmp_path / "src.png"
    save_png(train.images[0], image, scale=1)
    out = tmp_path / "edit.png"
    base = ["counterfactual", str(run_copy), "--image", str(image), "--method", "probe", "--steps", "3"]
    assert main([*base, "--factor", "scale", "--amount", "2", "--out", str(out)]) == 0  # ordinal
    assert out.is_file() and "along its pattern" in capsys.readouterr().out
    assert (
        main([*base, "--factor", "scale", "--amount", "2", "--direction", "weight", "--out", str(out)]) == 0
    )
    assert "along its weight" in capsys.readouterr().out
    assert (
        main([*base, "--factor", "shape", "--set", "shape=sphere", "--amount", "1.5", "--out", str(out)]) == 0
    )
    meta = json.loads((run_copy / PROBES / "shape=sphere.json").read_text())
    assert meta["value"] == "sphere" and meta["kind"].startswith("l1 logistic")
    capsys.readouterr()
    for argv, words in [
        ([*base, "--factor", "shape", "--amount", "1", "--out", str(out)], "name the value"),
        ([*base, "--factor", "shape", "--set", "shape=cube", "--out", str(out)], "--amount A"),
        ([*base, "--factor", "colour", "--amount", "1", "--out", str(out)], "colour"),
        (
            [
                "counterfactual",
                str(run_copy),
                "--image",
                str(image),
                "--set",
                "shape=cube",
                "--amount",
                "1",
                "--out",
                str(out),
            ],
            "--amount goes with --method probe",
        ),
        (
            ["counterfactual", str(run_copy), "--image", str(image), "--set", "shape=cube"]
            + ["--direction", "weight", "--out", str(out)],
            "--direction goes with --method probe",
        ),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err, err
