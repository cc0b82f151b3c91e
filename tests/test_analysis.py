"""Latent analysis helpers and ``factordiff analyze`` / ``factordiff disentanglement`` on a tiny run."""

import json

import numpy as np
import pytest
import torch

from factordiff.cli import main
from factordiff.evaluate.latent import few_shot, linear_probe, path_smoothness, slerp


def test_slerp_keeps_the_norm_of_orthogonal_unit_vectors():
    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    mid = slerp(a, b, 0.5)
    assert torch.allclose(mid.norm(), torch.tensor(1.0)) and torch.allclose(
        mid, torch.tensor([[0.5**0.5, 0.5**0.5]])
    )


def test_probes_on_constructed_codes():
    rng = np.random.default_rng(0)
    factors = rng.integers(0, 5, (600, 2))
    codes = np.concatenate([factors[:, :1] + 0.05 * rng.normal(size=(600, 1)), rng.normal(size=(600, 3))], 1)
    acc = linear_probe(codes, factors)
    assert acc[0] > 0.95 and acc[1] < 0.4
    assert few_shot(codes[:, :1], factors[:, 0], shots=1) > 0.95
    assert few_shot(codes[:, 1:], factors[:, 0], shots=5) < 0.4  # noise: near 1/5


def test_constant_speed_path_has_zero_spread():
    class Identity(torch.nn.Module):
        def forward(self, x):
            return x.flatten(1)

    frames = np.stack([np.full((4, 4, 3), 10 * i, np.uint8) for i in range(6)])
    s = path_smoothness(Identity(), frames)
    assert s["spread"] < 1e-6 and s["mean_step"] > 0


@pytest.mark.slow
def test_analyze_adds_metrics_and_figures_to_the_report(tiny_run, capsys):
    assert main(["evaluate", str(tiny_run)]) == 0
    assert main(["analyze", str(tiny_run), "--images", "300", "--metric-scale", "0.03"]) == 0, (
        capsys.readouterr().err
    )
    a = json.loads((tiny_run / "metrics.json").read_text())["analysis"]
    assert {"raw", "first_pc"} <= set(a["disentanglement"])
    assert set(a["probes"]) == {"floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation"}
    for fig in ("traversals", "interpolations", "projections"):
        assert (tiny_run / a["figures"][fig]["file"]).is_file()
    page = (tiny_run / "report.html").read_text()
    assert "Latent space" in page and "Traversals" in page and "Perceptual path length" in page


def test_disentanglement_command_on_foreign_arrays(tmp_path, capsys):
    rng = np.random.default_rng(0)
    factors = rng.integers(0, 4, (400, 3))
    np.save(tmp_path / "codes.npy", factors + 0.01 * rng.normal(size=factors.shape))
    np.save(tmp_path / "factors.npy", factors)
    assert (
        main(
            [
                "disentanglement",
                str(tmp_path / "codes.npy"),
                str(tmp_path / "factors.npy"),
                "--scale",
                "0.04",
                "--json",
                str(tmp_path / "s.json"),
            ]
        )
        == 0
    )
    scores = json.loads((tmp_path / "s.json").read_text())
    assert scores["dci_disentanglement"] > 0.9 and "mig" in capsys.readouterr().out


@pytest.mark.parametrize(
    "bad,message",
    [
        ("nan", "NaN"),
        ("length", "rows"),
        ("float_factors", "integer"),
    ],
)
def test_disentanglement_command_rejects_bad_arrays(tmp_path, capsys, bad, message):
    rng = np.random.default_rng(0)
    codes, factors = rng.normal(size=(50, 3)), rng.integers(0, 3, (50, 3))
    if bad == "nan":
        codes[3, 1] = np.nan
    elif bad == "length":
        factors = factors[:40]
    else:
        factors = factors + 0.5
    np.save(tmp_path / "c.npy", codes)
    np.save(tmp_path / "f.npy", factors)
    code = main(["disentanglement", str(tmp_path / "c.npy"), str(tmp_path / "f.npy")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and message.lower() in err.lower(), err
