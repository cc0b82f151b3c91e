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
from factordiff.probe import PROBES, fit_probe, probe_for


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    return shutil.copytree(tiny_run, tmp_path / "run")


def test_probe_fits_on_training_codes_and_moves_by_the_amount(run_copy):
    run = load_run(run_copy)
    _, split, train = run.data()
    probe = probe_for(run, "shape", "sphere", progress=False)
    assert probe.info["train_codes"] == min(4000, len(train)) and probe.info["nonzero"] >= 1
    codes = run.model.codes(train.images[:5])
    moved = probe.move(codes, 2.0)
    np.testing.assert_allclose(
        (probe.score(moved) - probe.score(codes)).numpy(), np.full(5, 2.0 * probe.sd), rtol=1e-4
    )
    unused = probe.weight.reshape(codes.shape[1:]) == 0
    assert torch.equal(moved[:, unused], codes[:, unused])  # only the dimensions the probe reads move
    assert (run_copy / PROBES / "shape=sphere.json").is_file()
    again = probe_for(run, "shape", "sphere", progress=False)  # read back, not fitted again
    assert torch.equal(again.weight, probe.weight) and again.sd == probe.sd


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
    assert out.is_file()
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
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err, err
