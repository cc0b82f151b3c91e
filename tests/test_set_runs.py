"""Set runs (``fit --model set``): a single-cell table as populations, one per well, through the
same CLI, ``--holdout-where`` and ``regenerate`` grammar as profile runs; bad input in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from factordiff import load_run
from factordiff.cli import main
from factordiff.fit import _moments
from factordiff.models.sets import SetModel

HELD = "Metadata_Treatment=drug,Metadata_Plate=P3"
SETS = {
    "sets.cells": 16,
    "sets.tokens": 4,
    "sets.dim": 8,
    "sets.width": 32,
    "sets.depth": 1,
    "sets.code_dims": 4,
    "sets.views": 4,
    "sets.autoencoder_steps": 30,
    "sets.sets_per_step": 8,
    "sets.steps": 40,
    "sets.batch_size": 16,
    "sets.sample_steps": 5,
}


def cell_table(path: Path, seed: int = 0) -> Path:
    """Two treatments on three plates, two wells each, 20-30 cells a well; the drug moves the
    first feature and widens the second, each plate shifts the third."""
    rng = np.random.default_rng(seed)
    rows = []
    for t, treatment in enumerate(("DMSO", "drug")):
        for p, plate in enumerate(("P1", "P2", "P3")):
            for w in range(2):
                n = int(rng.integers(20, 31))
                x = rng.normal(size=(n, 5))
                x[:, 0] += 2.0 * t
                x[:, 1] *= 1 + t
                x[:, 2] += 0.5 * p
                for i in range(n):
                    rows.append(
                        {
                            "Metadata_Treatment": treatment,
                            "Metadata_Plate": plate,
                            "Metadata_Well": f"{plate}-{treatment}-{w}",
                            "Metadata_Cell": i,
                            **{f"Cells_F{j}": float(x[i, j]) for j in range(5)},
                        }
                    )
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def fit_argv(table: Path, out: Path, *extra: str) -> list[str]:
    config = table.parent / "sets.json"
    config.write_text(json.dumps({"sets": {k.split(".")[1]: v for k, v in SETS.items()}}))
    argv = ["fit", "--data", f"profiles:{table}", "--model", "set", "--set-column", "Metadata_Well"]
    argv += ["--factors", "Metadata_Treatment,Metadata_Plate", "--holdout-where", HELD, "--out", str(out)]
    return argv + ["--config", str(config), *extra]


@pytest.fixture(scope="module")
def set_run(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("sets")
    table = cell_table(folder / "cells.csv")
    out = folder / "run"
    assert main(fit_argv(table, out)) == 0
    return table, out


def test_fit_model_set_trains_on_training_wells_only(set_run):
    """The two held-out wells (drug on P3) reach no statistic: the saved feature moments are the
    training cells', and ten wells trained."""
    table, run = set_run
    r = load_run(run)
    assert r.kind == "sets" and isinstance(r.model, SetModel) and r.model.train_sets == 10
    frame = pd.read_csv(table)
    train = ~((frame.Metadata_Treatment == "drug") & (frame.Metadata_Plate == "P3")).to_numpy()
    x = frame.filter(like="Cells_").to_numpy(np.float32)
    mean, std = _moments(x, np.flatnonzero(train))
    torch.testing.assert_close(r.model.mean, mean)
    torch.testing.assert_close(r.model.std, std)
    meta = json.loads((run / "model" / "config.json").read_text())
    assert meta["kind"] == "sets" and meta["train_rows"] == int(train.sum())
    stages = {json.loads(line)["stage"] for line in (run / "train_log.jsonl").read_text().splitlines()}
    assert stages == {"set_autoencoder", "set_denoiser"}


def test_a_set_model_ignores_the_order_of_its_cells(set_run):
    """The tokens of a well do not depend on the order its cells are listed in."""
    _, run = set_run
    model = load_run(run).model
    cells = model.standardize(np.random.default_rng(1).normal(size=(1, 24, 5)))
    shuffled = cells[:, torch.randperm(24, generator=torch.Generator().manual_seed(0))]
    with torch.no_grad():
        torch.testing.assert_close(model.autoencoder.encode(cells), model.autoencoder.encode(shuffled))


def test_regenerate_writes_a_population_per_well(set_run, tmp_path, capsys):
    """DMSO wells of P3 regenerated as drug-treated: one new cell per source cell, each row naming
    its source well, the treatment set, cell-level columns left empty; the table reads back."""
    table, run = set_run
    out = tmp_path / "regen.csv"
    argv = ["regenerate", str(run), "--where", "Metadata_Treatment=DMSO,Metadata_Plate=P3"]
    assert main(argv + ["--set", "Metadata_Treatment=drug", "--out", str(out)]) == 0
    assert "regenerated cells of 2 sets" in capsys.readouterr().out
    got = pd.read_csv(out)
    frame = pd.read_csv(table)
    source = frame[(frame.Metadata_Treatment == "DMSO") & (frame.Metadata_Plate == "P3")]
    assert len(got) == len(source)
    assert (got.Metadata_Treatment == "drug").all() and (got.Metadata_Plate == "P3").all()
    assert sorted(got.Metadata_source_set.unique()) == sorted(source.Metadata_Well.unique())
    sizes = source.groupby("Metadata_Well").size().to_dict()
    assert got.groupby("Metadata_source_set").size().to_dict() == sizes
    assert got.Metadata_Cell.isna().all()  # a new cell is none of the source's
    assert np.isfinite(got.filter(like="Cells_").to_numpy()).all()
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["sets"] == 2 and sidecar["rows"] == len(source)
    many = tmp_path / "draws.csv"
    argv += ["--set", "Metadata_Treatment=drug", "--draws", "2", "--limit", "1"]
    assert main(argv + ["--out", str(many)]) == 0
    twice = pd.read_csv(many)
    assert sorted(twice.Metadata_draw.unique()) == [0, 1] and twice.Metadata_Well.nunique() == 2


def test_set_runs_refuse_bad_input_in_one_line(set_run, tmp_path, capsys):
    table, _ = set_run
    cases = [
        (fit_argv(table, tmp_path / "a", "--set-column", "Metadata_Site"), "no column 'Metadata_Site'"),
        (
            fit_argv(table, tmp_path / "b", "--set-column", "Metadata_Plate"),
            "more than one Metadata_Treatment",
        ),
        (
            ["fit", "--data", "shapes", "--model", "set", "--out", str(tmp_path / "c")],
            "--model set: expected a single-cell table",
        ),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
        assert not (tmp_path / argv[argv.index("--out") + 1]).exists()


def test_evaluate_judges_the_held_out_wells_beside_the_baselines(set_run, capsys):
    """``factordiff evaluate`` on a set run: the held-out condition's generated populations and the
    baselines, each an energy distance to the real held-out cells, beside the floor."""
    _, run = set_run
    assert main(["evaluate", str(run)]) == 0
    assert "per-set mean model" in capsys.readouterr().out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["kind"] == "sets" and metrics["train_sets"] == 10
    (task,) = metrics["tasks"]
    assert task["condition"] == HELD and task["heldout_sets"] == 2
    assert set(task["energy"]) == {"model", "nearest", "per_set_mean_model"}
    assert np.isfinite(list(task["energy"].values())).all() and np.isfinite(task["floor"])
    assert task["nearest_conditions"][0].startswith("Metadata_Treatment=drug, Metadata_Plate=P")
    assert "P3" not in " ".join(task["nearest_conditions"])
