"""One door for every run: the same --set/--where grammar, regenerate options, provenance columns
and info for image and profile runs, and a profile run whose factors have other names."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from factordiff import load_run
from factordiff.cli import main
from factordiff.data.shapes import replica
from factordiff.data.table import write_table
from factordiff.errors import FactordiffError
from factordiff.factors import parse_pairs, parse_settings

SAMPLE = Path(__file__).parent / "data" / "bbbc021_small.csv.gz"
PROVENANCE = ["Metadata_source_row", "Metadata_draw", "Metadata_edit"]
TINY_PROFILES = {
    "profiles": {"width": 32, "depth": 1, "code_dims": 4, "steps": 40, "batch_size": 32, "sample_steps": 5},
    "denoiser": {"adapter_hidden": 16},
    "train": {"checkpoint_every": 20},
}


def test_pairs_grammar_quotes_commas():
    assert parse_pairs('compound="a,b",dose=1', "--set") == [("compound", "a,b"), ("dose", "1")]
    assert parse_pairs(" F = V ", "--where") == [("F", "V")]
    for bad in ('compound="a,b', "F", "F=", "=V", "F=V,,G=W"):
        with pytest.raises(FactordiffError, match="--set"):
            parse_pairs(bad, "--set")


def test_settings_one_flag_or_many_and_metadata_prefix():
    spec = replica(16, n=1).spec
    assert parse_settings(spec, ["object_hue=0.3,shape=sphere"]) == parse_settings(
        spec, ["object_hue=0.3", "shape=sphere"]
    )
    assert parse_settings(spec, ["Metadata_shape=cube"]) == {spec.position("shape"): "cube"}
    with pytest.raises(FactordiffError, match="set twice"):
        parse_settings(spec, ["shape=cube", "shape=sphere"])
    with pytest.raises(FactordiffError, match="unknown factor 'colour'"):
        parse_settings(spec, ["colour=red"])


@pytest.fixture(scope="module")
def source_png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "src.png"
    Image.fromarray(replica(16, n=1, seed=4).images[0]).save(path)
    return path


def test_counterfactual_set_forms_give_the_same_image(tiny_run, source_png, tmp_path):
    common = ["counterfactual", str(tiny_run), "--image", str(source_png), "--steps", "3"]
    one, two = tmp_path / "one.png", tmp_path / "two.png"
    assert main([*common, "--set", "object_hue=0.3,shape=sphere", "--out", str(one)]) == 0
    assert main([*common, "--set", "object_hue=0.3", "--set", "shape=sphere", "--out", str(two)]) == 0
    a, b = np.asarray(Image.open(one)), np.asarray(Image.open(two))
    assert np.array_equal(a, b)
    src = np.asarray(Image.open(source_png))
    assert not np.array_equal(a, src)  # something changed


def test_regenerate_images_with_draws_and_provenance(tiny_run, tmp_path):
    out = tmp_path / "regen"
    argv = ["regenerate", str(tiny_run), "--where", "shape=cube", "--set", "object_hue=0.3"]
    argv += [
        "--limit",
        "3",
        "--draws",
        "2",
        "--seed",
        "1",
        "--steps",
        "3",
        "--guidance",
        "2",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    table = pd.read_csv(out / "regenerated.csv")
    assert len(table) == 6 and all(c in table for c in PROVENANCE)
    assert (table.Metadata_shape == "cube").all() and np.allclose(table.Metadata_object_hue, 0.3)
    assert table.Metadata_draw.tolist() == [0, 1] * 3
    assert (table.Metadata_source_row.to_numpy()[::2] == table.Metadata_source_row.to_numpy()[1::2]).all()
    images = [np.asarray(Image.open(out / "images" / f)) for f in table.FileName_Image]
    assert not np.array_equal(images[0], images[1])  # two draws of one source differ


def test_regenerate_images_start_noise_one_draw(tiny_run, tmp_path):
    """--start noise with one draw: seeded noise instead of the inversion (same seed, same image)."""
    argv = ["regenerate", str(tiny_run), "--where", "shape=cube", "--set", "object_hue=0.3"]
    argv += ["--limit", "2", "--steps", "3"]

    def first(name: str, *extra: str) -> np.ndarray:
        assert main([*argv, *extra, "--out", str(tmp_path / name)]) == 0
        table = pd.read_csv(tmp_path / name / "regenerated.csv")
        return np.asarray(Image.open(tmp_path / name / "images" / table.FileName_Image[0]))

    a, b = first("a", "--start", "noise"), first("b", "--start", "noise")
    assert np.array_equal(a, b) and not np.array_equal(a, first("c", "--start", "noise", "--seed", "5"))


@pytest.fixture(scope="module")
def profile_runs(tmp_path_factory) -> dict[str, Path]:
    """Two tiny profile runs of the same table: its own column names, and the perturbation and batch
    renamed Metadata_Treatment and Metadata_Run (no compound, no batch)."""
    folder = tmp_path_factory.mktemp("profiles")
    config = folder / "tiny.json"
    config.write_text(json.dumps(TINY_PROFILES))
    frame = pd.read_csv(SAMPLE)
    renamed = folder / "renamed.csv"
    frame.rename(
        columns={"Metadata_Compound": "Metadata_Treatment", "Metadata_Batch": "Metadata_Run"}
    ).to_csv(renamed, index=False)
    runs = {}
    for name, table, pert, batch in (
        ("standard", SAMPLE, "Metadata_Compound", "Metadata_Batch"),
        ("renamed", renamed, "Metadata_Treatment", "Metadata_Run"),
    ):
        out = folder / name
        argv = [
            "fit",
            "--data",
            f"profiles:{table}",
            "--factors",
            f"{pert},Metadata_Concentration,Metadata_MoA,{batch}",
        ]
        argv += ["--holdout-where", f"{pert}=DMSO,{batch}=Week8", "--controls", f"{pert}=DMSO"]
        argv += [
            "--moa",
            "Metadata_MoA",
            "--roles",
            f"{batch}=technical",
            "--config",
            str(config),
            "--out",
            str(out),
        ]
        assert main(argv) == 0
        runs[name] = out
    return runs


def test_regenerate_profiles_takes_the_same_grammar_and_options(profile_runs, tmp_path):
    run = profile_runs["standard"]
    a, b, c = tmp_path / "a.csv", tmp_path / "b.csv.gz", tmp_path / "c.parquet"
    assert (
        main(
            [
                "regenerate",
                str(run),
                "--where",
                "compound=DMSO,batch=Week4",
                "--set",
                "batch=Week8",
                "--out",
                str(a),
            ]
        )
        == 0
    )
    assert (
        main(
            ["regenerate", str(run), "--where", "Metadata_Compound=DMSO,Metadata_Batch=Week4"]
            + ["--set", "Metadata_Batch=Week8", "--out", str(b)]
        )
        == 0
    )
    first, second = pd.read_csv(a), pd.read_csv(b)
    pd.testing.assert_frame_equal(first, second)
    assert all(col in first for col in PROVENANCE) and (first.Metadata_edit == "Metadata_Batch=Week8").all()
    argv = ["regenerate", str(run), "--where", "compound=DMSO,batch=Week4", "--set", "batch=Week8"]
    argv += ["--strength", "0.5", "--guidance", "2", "--residual", "--draws", "2", "--out", str(c)]
    assert main(argv) == 0
    third = pd.read_parquet(c)
    assert len(third) == 2 * len(first) and third.Metadata_draw.tolist()[:4] == [0, 1, 0, 1]
    features = [col for col in first.columns if not col.startswith("Metadata_")]
    x = third[features].to_numpy()
    assert np.isfinite(x).all() and not np.allclose(x[0], x[1])  # two draws differ
    assert not np.allclose(x[0], first[features].to_numpy()[0])  # the options change the result


def _shape(tree, rename):
    """The key structure of a metrics tree, with the renamed columns' names put back."""
    if isinstance(tree, dict):
        return {rename(k): _shape(v, rename) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_shape(v, rename) for v in tree]
    return type(tree).__name__ if not isinstance(tree, str) else rename(tree)


def test_a_profile_run_with_other_factor_names_evaluates_with_every_figure(profile_runs):
    metrics = {}
    for name, run in profile_runs.items():
        assert main(["evaluate", str(run)]) == 0
        metrics[name] = json.loads((run / "metrics.json").read_text())

    def back(text: str) -> str:
        return text.replace("Metadata_Treatment", "Metadata_Compound").replace(
            "Metadata_Run", "Metadata_Batch"
        )

    drop = {"seconds", "run", "date"}
    standard = {k: v for k, v in metrics["standard"].items() if k not in drop}
    renamed = {k: v for k, v in metrics["renamed"].items() if k not in drop}
    assert _shape(renamed, back) == _shape(standard, lambda s: s)
    assert "retrieval" in renamed and renamed["tasks"][0]["kind"] == "transfer"


def test_info_names_kind_factors_roles_and_version(profile_runs, tiny_run, capsys):
    assert main(["info", str(profile_runs["renamed"])]) == 0
    out = capsys.readouterr().out
    assert "profiles run" in out and "Metadata_Run (categorical, technical)" in out
    assert "training rows: 127" in out and "Metadata_Treatment=DMSO" in out and "factordiff" in out
    run = load_run(tiny_run)
    assert run.kind == "images" and run.info()["factordiff_version"]
    assert main(["info", str(tiny_run)]) == 0
    assert "images run of shapes" in capsys.readouterr().out


def test_regenerate_table_of_new_profile_rows_equals_the_same_rows_in_the_run(profile_runs, tmp_path):
    """Rows the fit never saw (the held-out DMSO wells of Week8), passed as a new table, regenerate
    exactly as the same rows do when selected from the run's own table."""
    run = profile_runs["standard"]
    frame = pd.read_csv(SAMPLE)
    held = frame[(frame.Metadata_Compound == "DMSO") & (frame.Metadata_Batch == "Week8")]
    new = tmp_path / "week8.csv"
    held.to_csv(new, index=False)
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    argv = ["regenerate", str(run), "--set", "batch=Week4"]
    assert main([*argv, "--where", "compound=DMSO,batch=Week8", "--out", str(a)]) == 0
    assert main([*argv, "--table", str(new), "--out", str(b)]) == 0
    first, second = pd.read_csv(a), pd.read_csv(b)
    assert len(second) == len(held) and second.Metadata_source_row.tolist() == list(range(len(held)))
    features = [c for c in frame.columns if not c.startswith("Metadata_")]
    np.testing.assert_allclose(second[features].to_numpy(), first[features].to_numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda f: f.drop(columns=[f.columns[-1]]), "no column"),
        (lambda f: f.assign(Metadata_Batch="Week99"), "never saw and cannot code: Metadata_Batch=Week99"),
        (lambda f: f.assign(**{f.columns[-1]: np.nan}), "expected a number"),
    ],
)
def test_regenerate_table_bad_input(profile_runs, tmp_path, capsys, change, message):
    new, out = tmp_path / "new.csv", tmp_path / "out.csv"
    change(pd.read_csv(SAMPLE).head(5)).to_csv(new, index=False)
    argv = ["regenerate", str(profile_runs["standard"]), "--set", "batch=Week4", "--table", str(new)]
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and str(new) in err and len(err.splitlines()) == 1 and not out.exists()


def test_regenerate_table_of_new_images(tiny_run, tmp_path):
    """An image table (the table: layout) regenerates as the same images selected from the run."""
    run = load_run(tiny_run)
    data = run.data()[0]
    rows = np.flatnonzero((data.factors[:, run.spec.position("shape")] == 0))[:3]
    csv = write_table(data.subset(rows), tmp_path / "new")
    a, b = tmp_path / "a", tmp_path / "b"
    argv = ["regenerate", str(tiny_run), "--set", "object_hue=0.3", "--steps", "3"]
    assert main([*argv, "--where", "shape=cube", "--limit", "3", "--out", str(a)]) == 0
    assert main([*argv, "--table", str(csv), "--out", str(b)]) == 0
    ta, tb = pd.read_csv(a / "regenerated.csv"), pd.read_csv(b / "regenerated.csv")
    assert ta.Metadata_source_row.tolist() == rows.tolist() and tb.Metadata_source_row.tolist() == [0, 1, 2]
    for fa, fb in zip(ta.FileName_Image, tb.FileName_Image):
        assert np.array_equal(
            np.asarray(Image.open(a / "images" / fa)), np.asarray(Image.open(b / "images" / fb))
        )


def test_inversion_option_for_images_and_its_refusal_for_profiles(profile_runs, tiny_run, tmp_path, capsys):
    """``--inversion`` picks the images' inversion (the ODE's and the DDPM one's regenerations
    differ); a profile run refuses ``ddpm`` in one line, writing nothing."""
    out = {}
    for how in ("ode", "ddpm"):
        argv = ["regenerate", str(tiny_run), "--where", "shape=cube", "--set", "shape=cube", "--limit", "2"]
        assert main([*argv, "--steps", "3", "--inversion", how, "--out", str(tmp_path / how)]) == 0
        table = pd.read_csv(tmp_path / how / "regenerated.csv")
        out[how] = np.stack(
            [np.asarray(Image.open(tmp_path / how / "images" / f)) for f in table.FileName_Image]
        )
    assert not np.array_equal(out["ode"], out["ddpm"])
    capsys.readouterr()  # the image runs' progress bars
    bad = tmp_path / "bad.csv"
    argv = ["regenerate", str(profile_runs["standard"]), "--set", "batch=Week4", "--inversion", "ddpm"]
    assert main([*argv, "--out", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--inversion ddpm" in err and len(err.splitlines()) == 1 and not bad.exists()
