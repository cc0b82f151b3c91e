"""Profiles as the user's data, through the CLI: statistics from training rows only (feature
selection included), refusals at fit and at regenerate, and output written back as read (numbers
as their text, raw units of the target plates, a nested plate left empty, a sidecar OUT.json)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from factordiff.cli import main
from factordiff.config import load_config
from factordiff.data.profiles import fingerprint
from factordiff.encoders.metadata import axis_positions
from factordiff.factors import Factor, FactorSpec
from factordiff.models.profiles import prepare_profiles
from factordiff.regenerate import write_rows

SAMPLE = Path(__file__).parent / "data" / "bbbc021_small.csv.gz"
TINY = {
    "profiles": {"width": 32, "depth": 1, "code_dims": 4, "steps": 30, "batch_size": 32, "sample_steps": 4},
    "denoiser": {"adapter_hidden": 16},
    "train": {"checkpoint_every": 1000},
}
FACTORS = "Metadata_Compound,Metadata_Concentration,Metadata_Batch,Metadata_Plate"
HELD = "Metadata_Compound=DMSO,Metadata_Batch=Week8"


def _features(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if not c.startswith("Metadata_")]


def _fit(tmp_path: Path, table: Path, out: Path, *extra: str) -> int:
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    argv = ["fit", "--data", f"profiles:{table}", "--factors", FACTORS, "--holdout-where", HELD]
    return main([*argv, "--config", str(config), *extra, "--out", str(out)])


@pytest.fixture(scope="module")
def plate_run(tmp_path_factory) -> Path:
    """A run normalised per plate (robust z-scores to each plate's training rows)."""
    folder = tmp_path_factory.mktemp("io")
    assert _fit(folder, SAMPLE, folder / "run", "--normalize", "plate") == 0
    return folder / "run"


def _saved(run: Path) -> dict[str, object]:
    """Every file the fit saved that depends on data: weights, model config less the table's
    identity and row counts (its fingerprint and counts of rows read and dropped describe the
    file, not what was learned), split."""
    meta = json.loads((run / "model" / "config.json").read_text())
    table = meta.pop("table")
    meta["cleaning"] = {k: v for k, v in table["cleaning"].items() if "rows" not in k}
    return {
        "weights": (run / "model" / "profile_model.safetensors").read_bytes(),
        "config": meta,
        "split": {
            k: v for k, v in json.loads((run / "split.json").read_text()).items() if k != "heldout_rows"
        },
    }


def test_heldout_rows_change_no_saved_file(tmp_path):
    """Held-out rows reach no statistic: with holes, a constant column on training rows only and
    wild values all confined to held-out rows, the fit saves the same weights, feature list, plate
    statistics and split (a column missing only in held-out rows is kept; one constant on the
    training rows is dropped)."""
    frame = pd.read_csv(SAMPLE, dtype={"Metadata_Concentration": str})
    feats = _features(frame)
    held = ((frame.Metadata_Compound == "DMSO") & (frame.Metadata_Batch == "Week8")).to_numpy()
    frame.loc[~held, feats[1]] = 2.5  # constant on training rows
    table = tmp_path / "t.csv"
    frame.to_csv(table, index=False)
    assert _fit(tmp_path, table, tmp_path / "ra", "--normalize", "plate") == 0
    changed = frame.copy()
    changed.loc[np.flatnonzero(held)[:10], feats[0]] = np.nan  # 10 holes, only in held-out rows
    changed.loc[held, feats[2:]] = changed.loc[held, feats[2:]] * 50 + 7
    changed.loc[held, feats[1]] = np.linspace(0, 9, held.sum())
    changed.to_csv(table, index=False)
    assert _fit(tmp_path, table, tmp_path / "rb", "--normalize", "plate") == 0
    ra, rb = _saved(tmp_path / "ra"), _saved(tmp_path / "rb")
    assert ra["config"] == rb["config"] and ra["split"] == rb["split"]
    assert ra["weights"] == rb["weights"]
    features = ra["config"]["features"]
    assert feats[0] in features and feats[1] not in features
    cleaning = json.loads((tmp_path / "rb" / "model" / "config.json").read_text())["table"]["cleaning"]
    assert cleaning["columns_dropped_constant"] == [feats[1]]
    assert cleaning["heldout_rows_dropped_missing"] == 10 and cleaning["train_rows_dropped_missing"] == 0


def test_dose_axis_is_log_of_training_values():
    spec = FactorSpec((Factor("dose", (0.0, 0.1, 1.0, 3.0, 10.0), "ordinal"),))
    seen = [np.array([True, True, True, False, True])]
    pos = axis_positions(spec, seen)[0].numpy()
    # training values 0, 0.1, 1, 10 on a log axis: 0 one decade below 0.1, then equal steps
    np.testing.assert_allclose(pos[[0, 1, 2, 4]], [-1, -1 / 3, 1 / 3, 1], atol=1e-6)
    assert pos[2] < pos[3] < pos[4]  # the unseen 3 lands between 1 and 10 ...
    np.testing.assert_allclose(pos[3], 1 / 3 + 2 / 3 * np.log10(3), atol=1e-6)
    pos_all = axis_positions(spec, [np.ones(5, bool)])[0].numpy()
    np.testing.assert_allclose(pos_all[[0, 1, 2, 4]], pos[[0, 1, 2, 4]])  # ... and moves no other


def _refusal(capsys, code: int, out: Path, *words: str) -> None:
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert all(w in err for w in words), err
    assert not out.exists()


@pytest.mark.parametrize(
    "change, extra, words",
    [
        (None, ["--holdout-where", "Metadata_Compound=PP-2,Metadata_Batch=Week4"], ["never occur together"]),
        ("dup", [], ["duplicate column name"]),
        ("single", ["--factors", "Metadata_One,Metadata_Batch"], ["Metadata_One", "has one value"]),
        (None, ["--controls", "Metadata_Compound=water"], ["profiles.controls", "no row has"]),
        (None, ["--moa", "Metadata_Mechanism"], ["profiles.moa", "unknown column 'Metadata_Mechanism'"]),
        (
            None,
            ["--continuous", "Metadata_Compound"],
            ["data.continuous", "Metadata_Compound", "needs numbers"],
        ),
        (None, ["--continuous", "Metadata_Dose"], ["data.continuous", "no factor 'Metadata_Dose'"]),
    ],
)
def test_fit_refusals(tmp_path, capsys, change, extra, words):
    table = SAMPLE
    if change == "dup":
        lines = pd.read_csv(SAMPLE).to_csv(index=False).splitlines()
        cols = lines[0].split(",")
        cols[-1] = cols[-2]
        table = tmp_path / "dup.csv"
        table.write_text("\n".join([",".join(cols), *lines[1:]]) + "\n")
    elif change == "single":
        table = tmp_path / "single.csv"
        pd.read_csv(SAMPLE).assign(Metadata_One="x").to_csv(table, index=False)
    out = tmp_path / "run"
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    argv = ["fit", "--data", f"profiles:{table}", "--factors", FACTORS, "--holdout-where", HELD]
    argv = [*argv, *extra, "--config", str(config), "--out", str(out)]
    _refusal(capsys, main(argv), out, *words)


def test_regenerate_refuses_a_table_lacking_a_feature_and_notes_a_changed_table(plate_run, tmp_path, capsys):
    run = tmp_path / "run"
    import shutil

    shutil.copytree(plate_run, run)
    frame = pd.read_csv(SAMPLE)
    table = tmp_path / "new.csv"
    frame.drop(columns=[_features(frame)[0]]).to_csv(table, index=False)
    out = tmp_path / "out.csv"
    code = main(
        ["regenerate", str(run), "--set", "Metadata_Batch=Week4", "--table", str(table), "--out", str(out)]
    )
    _refusal(capsys, code, out, str(table), "no column")
    # the run's own table changed since the fit (a compound added, which shifts value indices, and
    # the features reordered): values and features are matched by name, and the change is said
    changed = tmp_path / "changed.csv"
    extra = frame[frame.Metadata_Compound == "AZ138"].head(3).assign(Metadata_Compound="AAA-new")
    both = pd.concat([frame, extra])
    feats = _features(both)
    both[[c for c in both.columns if c not in feats] + feats[::-1]].to_csv(changed, index=False)
    cfg = json.loads((run / "run_config.json").read_text())
    cfg["data"]["source"] = f"profiles:{changed}"
    (run / "run_config.json").write_text(json.dumps(cfg))
    argv = ["regenerate", str(run), "--where", "Metadata_Compound=DMSO,Metadata_Batch=Week4"]
    assert main([*argv, "--set", "Metadata_Batch=Week10", "--limit", "3", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "changed since the fit" in err and len([x for x in err.splitlines() if "note:" in x]) == 1
    got = pd.read_csv(out)
    assert list(got.columns[-len(feats) :]) == _features(frame)  # the run's order, by name
    assert (got.Metadata_Compound == "DMSO").all()
    argv = ["regenerate", str(run), "--where", "Metadata_Compound=AAA-new", "--set", "Metadata_Batch=Week4"]
    _refusal(capsys, main([*argv, "--out", str(tmp_path / "o2.csv")]), tmp_path / "o2.csv", "AAA-new")


def test_regenerated_rows_written_as_read(plate_run, tmp_path):
    """Week4 DMSO wells as if run in Week10: numbers keep their text, the plate (nested in the
    batch, not set) is left empty and generated absent, the features are in raw units of Week10's
    plates (not z-scores), and OUT.json says so."""
    out = tmp_path / "week10.csv.gz"
    argv = ["regenerate", str(plate_run), "--where", "Metadata_Compound=DMSO,Metadata_Batch=Week4"]
    assert main([*argv, "--set", "Metadata_Batch=Week10", "--out", str(out)]) == 0
    src = pd.read_csv(SAMPLE, dtype=str, keep_default_na=False)
    got = pd.read_csv(out, dtype=str, keep_default_na=False)
    rows = got.Metadata_source_row.astype(int).to_numpy()
    assert (got.Metadata_Batch == "Week10").all() and (got.Metadata_Plate == "").all()
    assert (got.Metadata_Concentration.to_numpy() == src.Metadata_Concentration.to_numpy()[rows]).all()
    assert (got.Metadata_Well.to_numpy() == src.Metadata_Well.to_numpy()[rows]).all()
    sidecar = json.loads((tmp_path / "week10.json").read_text())
    assert sidecar["units"].startswith("raw units: mean of the plates of Metadata_Batch=Week10")
    assert sidecar["nested_left_empty"] == {"Metadata_Plate": "Metadata_Batch"} and sidecar["rows"] == len(
        got
    )
    feats = _features(src)
    raw = src[src.Metadata_Batch == "Week10"][feats].astype(float).median().to_numpy()
    made = got[feats].astype(float).median().to_numpy()
    # raw CellProfiler features span orders of magnitude (areas ~1e3, intensities ~1e-2): the output
    # follows them, where z-scores would all sit near 0
    big = np.abs(raw) > 1
    assert np.corrcoef(np.log10(np.abs(raw[big]) + 1e-6), np.log10(np.abs(made[big]) + 1e-6))[0, 1] > 0.9


def test_set_dose_writes_the_tables_text(plate_run, tmp_path):
    out = tmp_path / "dose.csv"
    argv = ["regenerate", str(plate_run), "--where", "Metadata_Compound=AZ138", "--limit", "2"]
    assert main([*argv, "--set", "Metadata_Concentration=3", "--out", str(out)]) == 0
    got = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert (got.Metadata_Concentration == "3.0").all()  # the table writes 3.0; so does the output
    assert (got.Metadata_Plate != "").all()  # the plate is not nested in the dose: kept


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".parquet"])
def test_rows_written_in_chunks_read_back_whole(tmp_path, suffix):
    meta = pd.DataFrame({"Metadata_Well": [f"A{i:02d}" for i in range(10)], "Metadata_Dose": ["1"] * 10})
    values = np.arange(30, dtype=np.float32).reshape(10, 3)
    out = tmp_path / f"rows{suffix}"
    write_rows(meta, values, ["f1", "f2", "f3"], out, chunk=3)  # four chunks
    back = pd.read_parquet(out) if suffix == ".parquet" else pd.read_csv(out, dtype={"Metadata_Dose": str})
    assert list(back.columns) == ["Metadata_Well", "Metadata_Dose", "f1", "f2", "f3"]
    assert back.Metadata_Well.tolist() == meta.Metadata_Well.tolist()
    np.testing.assert_array_equal(back[["f1", "f2", "f3"]].to_numpy(np.float32), values)
    assert not list(tmp_path.glob("*.partial"))


def test_derived_metadata_follows_the_set_perturbation(plate_run, tmp_path):
    """MoA is not a factor but a function of the compound: setting the compound writes the new
    compound's MoA (from the table), never the source's."""
    out = tmp_path / "az138.csv"
    argv = ["regenerate", str(plate_run), "--where", "Metadata_Compound=DMSO,Metadata_Batch=Week10"]
    assert main([*argv, "--set", "Metadata_Compound=AZ138", "--limit", "3", "--out", str(out)]) == 0
    got = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert (got.Metadata_Compound == "AZ138").all() and (got.Metadata_MoA == "Eg5 inhibitors").all()
    assert (got.Metadata_Batch == "Week10").all() and (got.Metadata_Plate != "").all()


def test_regenerate_start_noise_is_seeded_and_differs_from_the_inversion(plate_run, tmp_path):
    """--start noise: each row from fresh noise, the same for the same --seed, new for another; the
    default start (the source's inversion) does not depend on the seed; OUT.json names the start."""
    argv = ["regenerate", str(plate_run), "--where", "Metadata_Compound=DMSO,Metadata_Batch=Week4"]
    argv += ["--set", "Metadata_Batch=Week10"]

    def feats(name: str, *extra: str) -> np.ndarray:
        out = tmp_path / name
        assert main([*argv, *extra, "--out", str(out)]) == 0
        got = pd.read_csv(out)
        return got[_features(got)].to_numpy()

    src0, src1 = feats("s0.csv", "--seed", "0"), feats("s1.csv", "--seed", "1")
    n0, n0b, n1 = (
        feats(f, "--start", "noise", "--seed", s)
        for f, s in (("n0.csv", "0"), ("n0b.csv", "0"), ("n1.csv", "1"))
    )
    np.testing.assert_array_equal(src0, src1)
    np.testing.assert_array_equal(n0, n0b)
    assert not np.allclose(n0, n1) and not np.allclose(n0, src0)
    assert json.loads((tmp_path / "n0.json").read_text())["start"] == "noise"
    assert json.loads((tmp_path / "s0.json").read_text())["start"] == "source"


def test_fingerprint_is_of_the_table_not_of_its_gzip_header(tmp_path):
    """The same table gzipped at two times (different header mtimes) has one fingerprint; a
    changed value changes it."""
    text = SAMPLE.read_bytes()
    raw = gzip.decompress(text)
    paths = []
    for i, body in enumerate((raw, raw, raw.replace(b"DMSO", b"DMSX", 1))):
        path = tmp_path / f"t{i}.csv.gz"
        with open(path, "wb") as fh, gzip.GzipFile(fileobj=fh, mode="wb", mtime=1000 + i) as gz:
            gz.write(body)
        paths.append(path)
    assert paths[0].read_bytes() != paths[1].read_bytes()
    assert fingerprint(paths[0]) == fingerprint(paths[1]) != fingerprint(paths[2])


def test_continuous_decides_which_factors_are_ordinal():
    """By default a numeric biological column is continuous; ``--continuous`` (``data.continuous``)
    names exactly the continuous factors, the rest categorical."""

    def kinds(extra: dict) -> dict:
        over = {"data.source": f"profiles:{SAMPLE}", "data.factors": FACTORS.split(","), **extra}
        return {f.name: f.kind for f in prepare_profiles(load_config(None, over)).table.spec.factors}

    assert kinds({})["Metadata_Concentration"] == "ordinal"
    assert set(kinds({"data.continuous": []}).values()) == {"categorical"}
    named = kinds({"data.continuous": ["Metadata_Concentration"]})
    assert named["Metadata_Concentration"] == "ordinal" and named["Metadata_Compound"] == "categorical"
