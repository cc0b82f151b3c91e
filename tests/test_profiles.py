"""Profile tables: reading and cleaning, holding out by value, the MLP denoiser and its adapter,
fit -> regenerate -> evaluate through the CLI, and every bad-input case (one line, exit code 2).

The real sample (tests/data/bbbc021_small.csv.gz, licence beside it) is 157 BBBC021 wells of three
weeks with 47 of the 516 CellProfiler features (see tests/data/README.md).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from factordiff.cli import main
from factordiff.config import load_config
from factordiff.data.profiles import fit_plates, read_profiles, select_features
from factordiff.data.splits import SplitConfig, make_split
from factordiff.diffusion.adapters import TimeEmbeddingAdapter
from factordiff.diffusion.condition import Condition
from factordiff.diffusion.mlp import MLPDenoiser
from factordiff.errors import FactordiffError

SAMPLE = Path(__file__).parent / "data" / "bbbc021_small.csv.gz"
FACTORS = "Metadata_Compound,Metadata_Concentration,Metadata_MoA,Metadata_Batch"
HOLDOUT = "Metadata_Compound=DMSO,Metadata_Batch=Week8"


def _frame() -> pd.DataFrame:
    return pd.read_csv(SAMPLE)


def test_read_real_sample_defaults():
    t = read_profiles(SAMPLE)
    # Metadata_Well differs in almost every row but not all; Plate, Batch, Compound, Concentration,
    # MoA are factors
    assert {"Metadata_Compound", "Metadata_Batch", "Metadata_Plate"} <= set(t.spec.names)
    assert t.features.shape == (157, 47) and t.features.dtype == np.float32
    assert t.spec["Metadata_Concentration"].kind == "ordinal"
    assert t.spec["Metadata_Batch"].role == "technical" and t.spec["Metadata_Compound"].role == "biological"
    assert t.cleaning["rows_read"] == 157 and not np.isnan(t.features).any()


def test_missing_values_dropped_and_counted(tmp_path):
    df = _frame()
    feats = [c for c in df.columns if not c.startswith("Metadata_")]
    df.loc[:40, feats[0]] = np.nan  # 26% missing: column dropped
    df.loc[3, feats[1]] = np.nan  # one hole: row dropped
    df.loc[7, feats[2]] = np.nan
    df[feats[3]] = 1.0  # constant: dropped
    path = tmp_path / "holes.csv"
    df.to_csv(path, index=False)
    t = read_profiles(path)
    every = np.ones(len(t), bool)
    names, cleaning = select_features(t, every, max_missing=0.05)
    assert cleaning["columns_dropped_missing"] == [feats[0]]
    assert cleaning["columns_dropped_constant"] == [feats[3]]
    kept, train = t.keep(names, every)
    assert kept.cleaning["rows_dropped_missing"] == 2 and train.sum() == 155
    want = kept.features.copy()
    again, _ = read_profiles(path).keep(names, every, in_place=True)  # compacted in its own buffer
    np.testing.assert_array_equal(again.features, want)
    assert len(kept) == 155 and kept.features.shape[1] == 45
    assert 3 not in kept.rows and 7 not in kept.rows


def test_feature_selection_sees_training_rows_only(tmp_path):
    """A column missing only in held-out rows is kept (their rows are dropped, not the column); a
    column constant on training rows but varying in held-out rows is dropped."""
    df = _frame()
    feats = [c for c in df.columns if not c.startswith("Metadata_")]
    held = ((df.Metadata_Compound == "DMSO") & (df.Metadata_Batch == "Week8")).to_numpy()
    df.loc[np.flatnonzero(held)[:10], feats[0]] = np.nan  # 10 holes, all in held-out rows (6%)
    df.loc[~held, feats[1]] = 2.5  # constant on training rows only
    path = tmp_path / "t.csv"
    df.to_csv(path, index=False)
    t = read_profiles(path, factors=FACTORS.split(","))
    names, cleaning = select_features(t, ~held, max_missing=0.05)
    assert feats[0] in names and cleaning["columns_dropped_missing"] == []
    assert cleaning["columns_dropped_constant"] == [feats[1]]
    kept, train = t.keep(names, ~held)
    assert kept.cleaning["heldout_rows_dropped_missing"] == 10 and train.sum() == (~held).sum()


def test_metadata_kept_as_read_and_id_numbers_categorical(tmp_path):
    df = _frame()
    df["Metadata_Site"] = np.arange(len(df)) % 4 + 1
    df["Metadata_Time"] = np.where(np.arange(len(df)) % 2, 72, 24)
    df.to_csv(tmp_path / "t.csv", index=False)
    t = read_profiles(tmp_path / "t.csv", factors=["Metadata_Site", "Metadata_Time", "Metadata_Compound"])
    assert t.spec["Metadata_Site"].kind == "categorical" and t.spec["Metadata_Time"].kind == "ordinal"
    assert set(t.metadata["Metadata_Time"]) == {"24", "72"}
    assert t.text(1, t.spec["Metadata_Time"].index(72)) == "72"


@pytest.mark.parametrize(
    "header, factors, message",
    [
        ("dup", None, "duplicate column name"),
        ("single", ["Metadata_One", "Metadata_Batch"], "factor column 'Metadata_One' has one value"),
    ],
)
def test_table_refusals(tmp_path, header, factors, message):
    df = _frame()
    if header == "dup":
        path = tmp_path / "t.csv"
        text = df.to_csv(index=False).splitlines()
        cols = text[0].split(",")
        cols[-1] = cols[-2]
        path.write_text("\n".join([",".join(cols), *text[1:]]) + "\n")
    else:
        df["Metadata_One"] = "x"
        path = tmp_path / "t.csv"
        df.to_csv(path, index=False)
    with pytest.raises(FactordiffError, match=message):
        read_profiles(path, factors=factors)


def test_parquet_and_gzip_read_the_same(tmp_path):
    df = _frame()
    df.to_parquet(tmp_path / "t.parquet")
    df.to_parquet(tmp_path / "groups.parquet", row_group_size=40)  # read one row group at a time
    a, b = read_profiles(SAMPLE), read_profiles(tmp_path / "t.parquet")
    c = read_profiles(tmp_path / "groups.parquet")
    np.testing.assert_allclose(a.features, b.features)
    np.testing.assert_array_equal(b.features, c.features)
    assert a.spec == b.spec == c.spec


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda df: df.assign(**{df.columns[-1]: np.inf}), "infinite values"),
        (lambda df: df.assign(**{df.columns[-1]: "text"}), "not numeric"),
    ],
)
def test_bad_feature_columns_named(tmp_path, change, message):
    path = tmp_path / "bad.csv"
    change(_frame()).to_csv(path, index=False)
    with pytest.raises(FactordiffError, match=message):
        read_profiles(path)


def test_unknown_factor_column():
    with pytest.raises(FactordiffError, match="no column 'Metadata_Nope'"):
        read_profiles(SAMPLE, factors=["Metadata_Nope"])


def test_holdout_where_by_value_and_alias():
    t = read_profiles(SAMPLE, factors=FACTORS.split(","))
    split = make_split(t.spec, SplitConfig(where=("compound=DMSO,batch=Week8",)))
    held = split.heldout(t.factors)
    df = _frame()
    want = ((df.Metadata_Compound == "DMSO") & (df.Metadata_Batch == "Week8")).to_numpy()
    assert (held == want).all() and held.sum() == 30
    assert split.held_where == [{"Metadata_Compound": "DMSO", "Metadata_Batch": "Week8"}]
    with pytest.raises(FactordiffError, match="unknown value 'Week99'"):
        make_split(t.spec, SplitConfig(where=("batch=Week99",)))


def test_plate_normalisation_uses_training_rows_only():
    t = read_profiles(SAMPLE, factors=FACTORS.split(","))
    held = (t.metadata["Metadata_Compound"] == "DMSO") & (t.metadata["Metadata_Batch"] == "Week8")
    a = fit_plates(t, "plate", ~held).apply(t)
    t2 = t.subset(np.ones(len(t), bool))
    t2.features = t.features.copy()
    t2.features[held] += 1000.0  # held-out rows changed: the training rows' z-scores must not move
    b = fit_plates(t2, "plate", ~held).apply(t2)
    np.testing.assert_array_equal(a[~held], b[~held])
    ctrl = t.metadata["Metadata_Compound"] == "DMSO"
    with pytest.raises(FactordiffError, match="plate Week8_.* has no training control rows"):
        fit_plates(t, "controls", ~held, ctrl)  # Week8's controls are all held out
    stats = fit_plates(t, "controls", np.ones(len(t), bool), ctrl)
    z = stats.apply(t)
    assert len(stats.plates) == len(np.unique(t.metadata["Metadata_Plate"]))
    week4 = (t.metadata["Metadata_Batch"] == "Week4") & ctrl
    plate = t.metadata["Metadata_Plate"][np.flatnonzero(week4)[0]]
    rows = (t.metadata["Metadata_Plate"] == plate) & ctrl
    assert np.abs(np.median(z[rows], 0)).max() < 1e-5  # each plate's controls centred at 0
    back = stats.raw(z, [[int(i)] for i in stats.index(t.metadata["Metadata_Plate"])])
    np.testing.assert_allclose(back, t.features, rtol=1e-4, atol=1e-3)


def test_mlp_adapter_is_a_noop_at_init():
    torch.manual_seed(0)
    adapter = TimeEmbeddingAdapter(3, 4, 32, 16)
    cond_model, base = MLPDenoiser(10, 32, 2, adapter), MLPDenoiser(10, 32, 2)
    state = {k: v for k, v in cond_model.state_dict().items() if not k.startswith("adapter.")}
    base.load_state_dict(state)
    x, t = torch.randn(5, 10), torch.tensor([0, 10, 100, 500, 999])
    cond = Condition(torch.randn(5, 3, 4), torch.rand(5, 3) > 0.5)
    assert torch.equal(cond_model(x, t, cond), base(x, t))
    with pytest.raises(ValueError, match="pass a Condition"):
        cond_model(x, t)


@pytest.fixture(scope="module")
def profile_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("profiles") / "run"
    code = main(
        [
            "fit",
            "--data",
            f"profiles:{SAMPLE}",
            "--factors",
            FACTORS,
            "--holdout-where",
            HOLDOUT,
            "--controls",
            "Metadata_Compound=DMSO",
            "--moa",
            "Metadata_MoA",
            "--out",
            str(out),
            "--config",
            str(_tiny_config(out.parent)),
        ]
    )
    assert code == 0
    return out


def _tiny_config(folder: Path) -> Path:
    path = folder / "tiny.json"
    path.write_text(
        json.dumps(
            {
                "profiles": {
                    "width": 32,
                    "depth": 1,
                    "code_dims": 4,
                    "steps": 40,
                    "batch_size": 32,
                    "sample_steps": 5,
                },
                "denoiser": {"adapter_hidden": 16},
                "train": {"checkpoint_every": 20},
            }
        )
    )
    return path


def test_fit_writes_split_and_keeps_heldout_out(profile_run):
    split = json.loads((profile_run / "split.json").read_text())
    assert split["held_where"] == [{"Metadata_Compound": "DMSO", "Metadata_Batch": "Week8"}]
    assert split["heldout_rows"] == 30 and split["train_rows"] == 127
    meta = json.loads((profile_run / "model" / "config.json").read_text())
    assert meta["kind"] == "profiles" and meta["train_rows"] == 127


def test_regenerate_cli(profile_run, tmp_path, capsys):
    out = tmp_path / "regen.csv"
    assert (
        main(
            [
                "regenerate",
                str(profile_run),
                "--where",
                "compound=DMSO,batch=Week4",
                "--set",
                "batch=Week8",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    df, src = pd.read_csv(out), _frame()
    n = int(((src.Metadata_Compound == "DMSO") & (src.Metadata_Batch == "Week4")).sum())
    assert len(df) == n and (df.Metadata_Batch == "Week8").all() and (df.Metadata_Compound == "DMSO").all()
    feats = [c for c in src.columns if not c.startswith("Metadata_")]
    assert list(df.columns[-len(feats) :]) == feats and np.isfinite(df[feats].to_numpy()).all()
    rows = df.Metadata_source_row.to_numpy()
    assert (src.Metadata_Batch.to_numpy()[rows] == "Week4").all()
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--where", "batch=Week99", "--set", "batch=Week8"], "unknown value 'Week99'"),
        (["--where", "nope=1", "--set", "batch=Week8"], "unknown column 'nope'"),
        (["--where", "compound=PP-2,batch=Week4", "--set", "batch=Week8"], "no row"),
        (["--set", "colour=red"], "unknown factor 'colour'"),
        (["--set", "batch"], "expected FACTOR=VALUE"),
    ],
)
def test_regenerate_bad_input(profile_run, tmp_path, capsys, args, message):
    out = tmp_path / "x.csv"
    assert main(["regenerate", str(profile_run), *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_evaluate_and_report(profile_run):
    assert main(["evaluate", str(profile_run)]) == 0
    m = json.loads((profile_run / "metrics.json").read_text())
    (task,) = m["tasks"]
    assert task["kind"] == "transfer" and task["set"] == ["Metadata_Batch"] and task["truth_rows"] == 30
    want = {"model", "copy", "mean_shift", "nearest", "linear", "combat", "sphering", "harmony"}
    assert set(task["methods"]) == want  # a batch transfer: the batch corrections too
    for r in task["methods"].values():
        assert (
            r["mean_error"] >= 0 and np.isfinite(r["energy"]) and 0 <= r["read_as_target.Metadata_Batch"] <= 1
        )
        assert 0 <= r["c2st_auc"] <= 1 and r["spread_ratio"] > 0
    assert set(task["floor"]) >= {"mean_error", "energy", "c2st_auc"}
    assert (
        task["methods"]["copy"]["c2st_auc"] > task["floor"]["c2st_auc"]
    )  # copy is told apart; halves less so
    assert 0 <= task["real_heldout_read_as_target"]["Metadata_Batch"] <= 1
    # DMSO into Week8: training rows of Week8 exist, so every row is moved to the joint target
    assert task["mean_shift_fallback"] == 0.0
    assert {"real", "model", "copy_control_null", "mean_shift"} <= set(m["retrieval"])
    # controls into training perturbation rows: each target combination is a training row's own
    assert m["retrieval"]["mean_shift"]["fallback"] == 0.0
    assert main(["report", str(profile_run)]) == 0
    html = (profile_run / "report.html").read_text()
    assert "Held-out conditions" in html and "mean_shift" in html


def test_fit_bad_tables_exit_2(tmp_path, capsys):
    df = _frame()
    bad = tmp_path / "inf.csv.gz"
    with gzip.open(bad, "wt") as f:
        df.assign(**{df.columns[-1]: np.inf}).to_csv(f, index=False)
    out = tmp_path / "run"
    assert main(["fit", "--data", f"profiles:{bad}", "--out", str(out)]) == 2
    assert "infinite values" in capsys.readouterr().err
    assert not out.exists()
    assert main(["fit", "--data", f"profiles:{tmp_path / 'none.csv'}", "--out", str(out)]) == 2
    assert "no such file" in capsys.readouterr().err
    assert (
        main(["fit", "--data", f"profiles:{SAMPLE}", "--holdout-where", "batch=Week99", "--out", str(out)])
        == 2
    )
    assert "Week99" in capsys.readouterr().err
    assert not out.exists()


def test_config_roles_parse():
    cfg = load_config(
        None, {"profiles.roles": ["Metadata_Plate=biological"], "data.source": f"profiles:{SAMPLE}"}
    )
    from factordiff.models.profiles import prepare_profiles

    assert prepare_profiles(cfg).table.spec["Metadata_Plate"].role == "biological"


def test_residual_ridge_model_round_trip(tmp_path):
    """profiles.residual = ridge: the additive model is fitted on training rows, saved and loaded,
    and to_space/from_space invert each other; the untrained adapter leaves regeneration at the
    additive shift plus the denoiser's own round trip."""
    from factordiff.evaluate.baselines import baseline_rows
    from factordiff.fit import fit_profiles
    from factordiff.models.profiles import ProfileModel

    cfg = load_config(
        None,
        {
            "data.source": f"profiles:{SAMPLE}",
            "data.factors": FACTORS.split(","),
            "split.where": [HOLDOUT],
            "profiles.residual": "ridge",
            "profiles.width": 32,
            "profiles.depth": 1,
            "profiles.code_dims": 4,
            "profiles.steps": 30,
            "profiles.batch_size": 32,
            "profiles.sample_steps": 5,
            "denoiser.adapter_hidden": 16,
        },
    )
    model, data = fit_profiles(cfg, tmp_path / "run", progress=False)
    loaded = ProfileModel.load(tmp_path / "run" / "model")
    assert loaded.additive is not None
    torch.testing.assert_close(loaded.additive[0], model.additive[0])
    f, x = data.table.factors, data.features
    np.testing.assert_allclose(
        loaded.from_space(loaded.to_space(x[:5], f[:5]), f[:5]), x[:5], rtol=1e-4, atol=1e-3
    )
    # the additive part of a regeneration is the ridge baseline's shift (same training rows, same alpha)
    src = np.flatnonzero(data.train)[:4]
    target = f[src].copy()
    target[:, 3] = data.table.spec.factors[3].index("Week10")
    shift = loaded.from_space(loaded.to_space(x[src], f[src]), target) - x[src]
    ridge = (
        baseline_rows("linear", data.table.spec, loaded.standardize(x).numpy(), f, data.train, src, target)
        - loaded.standardize(x[src]).numpy()
    )
    np.testing.assert_allclose(shift / loaded.std.numpy(), ridge, rtol=1e-3, atol=1e-3)


def test_feature_select_operations_through_pycytominer(tmp_path):
    """pycytominer's operations on training rows: a column correlated with another, one that is
    nearly constant, and non-morphological columns (positions, object numbers) go."""
    df = _frame()
    feats = [c for c in df.columns if not c.startswith("Metadata_")]
    df["Cells_Copy_Of_First"] = df[feats[0]] * 2 + 1
    df["Nuclei_Location_Center_X"] = np.arange(len(df), dtype=float)
    df["Cells_Number_Object_Number"] = np.arange(len(df), dtype=float) % 7
    df.to_csv(tmp_path / "t.csv", index=False)
    t = read_profiles(tmp_path / "t.csv", factors=FACTORS.split(","))
    every = np.ones(len(t), bool)
    names, cleaning = select_features(t, every, operations=("correlation_threshold", "blocklist"))
    dropped = cleaning["columns_dropped_correlation_threshold"]
    assert "Cells_Copy_Of_First" in dropped or feats[0] in dropped
    assert {"Nuclei_Location_Center_X", "Cells_Number_Object_Number"} <= set(
        cleaning["columns_dropped_blocklist"]
    )
    assert cleaning["operations"] == ["missing", "constant", "correlation_threshold", "blocklist"]
    with pytest.raises(FactordiffError, match="profiles.feature_select"):
        select_features(t, every, operations=("pca",))
