"""Perturbation embedders: Morgan fingerprints, one-hot labels and users' embedding tables as codes,
controls as their own code; an unseen compound regenerated from its structure in a profile run.

The profile table is written here from cellsim's chemistry (each compound's effect is a fixed
function of its Morgan fingerprint, ``cellsim.biology``): per-well log parameters at 10 uM plus
plate offsets and noise. Camptothecin is held out entirely; its two analogues are in training.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from factordiff.cli import main
from factordiff.data.cellsim import COMPOUNDS, CONTROL, biology, compound_effect
from factordiff.encoders.perturbation import (
    CodeRegression,
    PerturbationEmbedder,
    perturbation_features,
    read_embedding_table,
    tanimoto,
)
from factordiff.errors import FactordiffError
from factordiff.evaluate.cells import structure_ceiling

UNSEEN = "camptothecin"


def test_tanimoto_and_features():
    a = np.array([[1, 1, 0, 0], [1, 0, 1, 0]])
    assert np.allclose(tanimoto(a, a), [[1, 1 / 3], [1 / 3, 1]])
    names = ["DMSO", "aspirin", "caffeine"]
    fp = perturbation_features("morgan", names, {"DMSO"}, COMPOUNDS, bits=2048)
    assert fp.shape == (3, 2048) and not fp[0].any() and fp[1].any() and set(np.unique(fp)) <= {0.0, 1.0}
    assert np.array_equal(
        perturbation_features("morgan", [COMPOUNDS["caffeine"]], set()),
        perturbation_features("morgan", ["caffeine"], set(), COMPOUNDS),
    )
    oh = perturbation_features("onehot", names, {"DMSO"})
    assert np.array_equal(oh, np.diag([0.0, 1.0, 1.0]))
    with pytest.raises(FactordiffError, match="not a valid molecule"):
        perturbation_features("morgan", ["aspirin"], set(), {"aspirin": "C1CC"})
    with pytest.raises(FactordiffError, match="unknown perturbation embedding 'fingerprint'"):
        perturbation_features("fingerprint", names, set())


def test_embedding_table(tmp_path):
    good = tmp_path / "emb.csv"
    good.write_text("name,e1,e2\naspirin,0.5,1\ncaffeine,-1,2\n")
    feats = perturbation_features(f"table:{good}", ["DMSO", "aspirin", "caffeine"], {"DMSO"})
    assert np.allclose(feats, [[0, 0], [0.5, 1], [-1, 2]])
    with pytest.raises(FactordiffError, match="no row for perturbation 'ibuprofen'"):
        perturbation_features(f"table:{good}", ["aspirin", "ibuprofen"], set())
    for text, message in (
        ("name,e1\naspirin,nan\n", "row 2, column 'e1': expected a number"),
        ("name,e1\na,1\na,2\n", "'a' appears twice"),
        ("name\naspirin\n", "expected a name column and at least one numeric column"),
    ):
        bad = tmp_path / "bad.csv"
        bad.write_text(text)
        with pytest.raises(FactordiffError, match=message) as e:
            read_embedding_table(bad)
        assert str(bad) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(FactordiffError, match="cannot read"):
        read_embedding_table(tmp_path / "none.csv")


def test_code_regression_predicts_analogues_and_onehot_refuses():
    known = [c for c in COMPOUNDS if c not in (CONTROL, UNSEEN)]
    feats = perturbation_features("morgan", known + [UNSEEN], set(), COMPOUNDS)
    truth = compound_effect([COMPOUNDS[c] for c in known + [UNSEEN]])
    control = np.full(truth.shape[1], 0.3)  # codes offset from the control's
    fit = CodeRegression("morgan", feats[:-1], truth[:-1] + control, control)
    assert fit.choice in CodeRegression.CANDIDATES and fit.loo_errors[fit.choice] == min(
        fit.loo_errors.values()
    )
    pred = fit.predict(feats[-1:])[0]
    assert np.linalg.norm(pred - control - truth[-1]) < 0.5 * np.linalg.norm(truth[-1])
    # ridge: a structure like none of the training ones gets the control's code
    ridge = CodeRegression("morgan", feats[:-1], truth[:-1] + control, control, candidates=(("ridge", 0.1),))
    assert np.allclose(ridge.predict(np.zeros((1, feats.shape[1])))[0], control)
    # kernel-weighted mean: a training value's own features give (nearly) its own code at a small temperature
    soft = CodeRegression("morgan", feats[:-1], truth[:-1], candidates=(("softmax", 0.01),))
    assert np.allclose(soft.predict(feats[:1])[0], truth[0], atol=1e-3)
    with pytest.raises(FactordiffError, match="onehot: a perturbation no training image had"):
        CodeRegression("onehot", np.eye(3), np.ones((3, 2))).predict(np.zeros((1, 3)))


def test_structure_ceiling_needs_analogues():
    known = [c for c in COMPOUNDS if c not in ("caffeine", UNSEEN)]
    ceiling = structure_ceiling(["caffeine", UNSEEN], known)
    assert all(v["closer_than_control"] and v["cosine"] > 0.75 for v in ceiling.values())
    alone = structure_ceiling([UNSEEN], [c for c in known if "camptothecin" not in c and c != "topotecan"])
    assert alone[UNSEEN]["cosine"] < 0.5 and alone[UNSEEN]["nearest_known_tanimoto"] < 0.2


def test_embedder_controls_have_their_own_code():
    feats = perturbation_features("morgan", ["DMSO", "aspirin", "caffeine"], {"DMSO"}, COMPOUNDS)
    emb = PerturbationEmbedder(feats, np.array([True, False, False]), code_dims=4)
    codes = emb(torch.tensor([0, 1, 2, 0]))
    assert (
        codes.shape == (4, 4) and torch.equal(codes[0], codes[3]) and torch.equal(codes[0], emb.controls[0])
    )
    codes.sum().backward()
    assert emb.controls.grad is not None and emb.net[0].weight.grad.abs().sum() > 0


def _profiles(path: Path) -> None:
    rng = np.random.default_rng(0)
    plates = [f"P{i}" for i in range(4)]
    offset = {p: rng.normal(0, 0.3, 9) for p in plates}
    rows = []
    for name, smiles in COMPOUNDS.items():
        base = np.log(biology(name, 0.0 if name == CONTROL else 10.0, "A549"))
        for p in plates:
            for _ in range(24 if name == CONTROL else 6):
                x = 4 * base + offset[p] + rng.normal(0, 0.15, 9)
                rows.append(
                    {
                        "Metadata_Compound": name,
                        "Metadata_SMILES": smiles,
                        "Metadata_Plate": p,
                        **{f"f{i}": v for i, v in enumerate(x)},
                    }
                )
    pd.DataFrame(rows).to_csv(path, index=False)


@pytest.fixture(scope="module")
def profile_table(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pert")
    _profiles(folder / "profiles.csv")
    (folder / "tiny.json").write_text(
        json.dumps(
            {
                "profiles": {
                    "width": 64,
                    "depth": 1,
                    "code_dims": 8,
                    "steps": 600,
                    "batch_size": 64,
                    "sample_steps": 10,
                },
                "denoiser": {"adapter_hidden": 32},
                "train": {"checkpoint_every": 1000},
            }
        )
    )
    return folder


def _fit_and_regenerate(folder: Path, kind: str) -> np.ndarray:
    run, out = folder / f"run-{kind}", folder / f"regen-{kind}.csv"
    assert (
        main(
            [
                "fit",
                "--data",
                f"profiles:{folder / 'profiles.csv'}",
                "--factors",
                "Metadata_Compound,Metadata_Plate",
                "--holdout-where",
                f"Metadata_Compound={UNSEEN}",
                "--controls",
                "Metadata_Compound=DMSO",
                "--perturbation-embedding",
                kind,
                "--smiles",
                "Metadata_SMILES",
                "--config",
                str(folder / "tiny.json"),
                "--out",
                str(run),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "regenerate",
                str(run),
                "--where",
                "Metadata_Compound=DMSO",
                "--set",
                f"Metadata_Compound={UNSEEN}",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    return pd.read_csv(out)[[f"f{i}" for i in range(9)]].to_numpy().mean(0)


def test_unseen_compound_from_its_structure(profile_table, capsys):
    """Controls regenerated as the held-out compound: with Morgan codes they land near its real
    profiles; with one-hot codes (its code absent) they stay near the controls."""
    table = pd.read_csv(profile_table / "profiles.csv")
    feats = [f"f{i}" for i in range(9)]
    true, control = (
        table[table.Metadata_Compound == UNSEEN][feats].to_numpy().mean(0),
        table[table.Metadata_Compound == CONTROL][feats].to_numpy().mean(0),
    )
    morgan, onehot = (
        _fit_and_regenerate(profile_table, "morgan"),
        _fit_and_regenerate(profile_table, "onehot"),
    )
    gap = np.linalg.norm(control - true)
    assert np.linalg.norm(morgan - true) < 0.6 * gap
    assert np.linalg.norm(morgan - true) < 0.6 * np.linalg.norm(onehot - true)
    assert "no training row" in capsys.readouterr().out  # onehot says the code was absent


def test_perturbation_embedding_bad_input(profile_table, tmp_path, capsys):
    base = [
        "fit",
        "--data",
        f"profiles:{profile_table / 'profiles.csv'}",
        "--factors",
        "Metadata_Compound,Metadata_Plate",
        "--config",
        str(profile_table / "tiny.json"),
    ]
    cases = [
        (["--perturbation-embedding", "morgan"], "needs profiles.controls"),
        (["--controls", "Metadata_Plate=P0", "--perturbation-embedding", "morgan"], "not a valid molecule"),
        (
            [
                "--controls",
                "Metadata_Compound=DMSO",
                "--perturbation-embedding",
                "morgan",
                "--smiles",
                "Metadata_Nope",
            ],
            "unknown column 'Metadata_Nope'",
        ),
        (
            [
                "--controls",
                "Metadata_Compound=DMSO",
                "--perturbation-embedding",
                f"table:{tmp_path / 'none.csv'}",
            ],
            "cannot read the embedding table",
        ),
    ]
    for args, message in cases:
        out = tmp_path / "run"
        assert main([*base, *args, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
        assert not out.exists()
