"""Crop stacks (``--data crops:STACK.npz``) through the CLI, on 24 real BBBC021 crops
(tests/data/bbbc021_crops.*, licence beside them): fit, regenerate into a stack in the source's
intensity scale, the per-plate scale fitted on training crops only, and every bad input in one
line with exit code 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_config_file as _config

from factordiff import load_run
from factordiff.cli import main
from factordiff.data.crops import detail, fit_intensity, read_crops, resize
from factordiff.evaluate.crops import EDIT_OPTIONS, evaluate_crop_run, floor, judge
from factordiff.evaluate.morphology import crop_features, feature_names
from factordiff.regenerate import regenerate

DATA = Path(__file__).parent / "data"
STACK = DATA / "bbbc021_crops.npz"
FACTORS = "Metadata_Compound,Metadata_Plate"
HELD = "Metadata_Compound=cyclohexamide,Metadata_Plate=Week4_27821"
PLATE_SWAP = "Metadata_Compound=DMSO,Metadata_Plate=Week4_27801"


@pytest.fixture(scope="module")
def crop_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("crops")
    out = folder / "run"
    argv = ["fit", "--data", f"crops:{STACK}", "--channels", "DAPI,Tubulin,Actin", "--factors", FACTORS]
    argv += ["--holdout-where", HELD, "--holdout-where", PLATE_SWAP, "--controls", "Metadata_Compound=DMSO"]
    argv += ["--size", "16", "--config", str(_config(folder)), "--out", str(out)]
    assert main(argv) == 0
    return out


def test_intensity_scale_from_training_crops_only():
    stack = read_crops(STACK, channels=["DAPI", "Tubulin", "Actin"], factors=FACTORS.split(","))
    assert stack.images.dtype == np.uint16 and stack.channels == ("DAPI", "Tubulin", "Actin")
    held = (stack.metadata["Metadata_Compound"] == "cyclohexamide") & (
        stack.metadata["Metadata_Plate"] == "Week4_27821"
    )
    a = fit_intensity(stack, ~held)
    stack.images = stack.images.copy()
    stack.images[held] = 65535  # held-out crops changed: no scale moves
    b = fit_intensity(stack, ~held)
    np.testing.assert_array_equal(a.low, b.low)
    np.testing.assert_array_equal(a.high, b.high)
    assert a.plates == ["Week4_27801", "Week4_27821"] and (a.high > a.low).all()
    u8 = a.to_uint8(stack.images[~held], stack.metadata["Metadata_Plate"][~held])
    back = a.raw(u8, stack.metadata["Metadata_Plate"][~held])
    assert back.dtype == np.uint16 and back.shape == stack.images[~held].shape
    inside = (stack.images[~held] > a.low.max()) & (stack.images[~held] < a.high.min())
    err = np.abs(back.astype(float) - stack.images[~held].astype(float))[inside]
    assert err.max() <= (a.high - a.low).max() / 255  # one 8-bit step, no more


def test_intensity_scale_through_each_plates_controls():
    """With controls, a plate's scale is the pooled training range carried through its controls:
    one plate imaged twice as bright reads the same in uint8, whatever its treated crops hold; a
    plate without training controls takes the mean scale."""
    stack = read_crops(STACK, channels=["DAPI", "Tubulin", "Actin"], factors=FACTORS.split(","))
    plate, compound = stack.metadata["Metadata_Plate"], stack.metadata["Metadata_Compound"]
    control = compound == "DMSO"
    bright = plate == "Week4_27801"
    stack.images = stack.images.astype(np.float32)
    stack.images[bright] = stack.images[~bright]  # the same cells on both plates...
    stack.images[bright] *= 2.0  # ...imaged twice as bright on one
    train = np.ones(len(plate), bool)
    it = fit_intensity(stack, train, controls=control)
    u8 = it.to_uint8(stack.images, plate).astype(int)
    assert np.abs(u8[bright] - u8[~bright]).max() <= 1
    lifted = stack.images.copy()
    lifted[bright & ~control] *= 3.0  # a plate's treated crops never set its scale
    stack.images, before = lifted, it
    after = fit_intensity(stack, train, controls=control)
    np.testing.assert_allclose(after.high[1] / after.high[0], before.high[1] / before.high[0], rtol=1e-5)
    treated_only = fit_intensity(stack, ~(bright & control), controls=control)
    assert treated_only.plates == ["Week4_27821"]  # Week4_27801 has no training control: the mean
    np.testing.assert_array_equal(treated_only.rows(np.asarray(["Week4_27801"]), 1), [1])


def test_resize_detail_restores_the_crop_size():
    """``detail`` is what the model size loses: the resized crop plus it is the crop again."""
    stack = read_crops(STACK, channels=["DAPI", "Tubulin", "Actin"], factors=FACTORS.split(","))
    plate = stack.metadata["Metadata_Plate"]
    it = fit_intensity(stack, np.ones(len(plate), bool))
    u8 = it.to_uint8(stack.images, plate)
    lost = detail(u8, 16)
    assert lost.dtype == np.int16 and np.abs(lost).mean() > 2  # real crops have detail to lose
    back = it.raw(resize(u8, 16), plate, lost)
    np.testing.assert_array_equal(back, it.raw(u8, plate))


def test_residual_edit_keeps_the_sources_detail(crop_run):
    """A residual edit of a crop run is the source at its own size plus the model's change resized
    up: the detail that the model size loses is the source's, not a blur."""
    r = load_run(crop_run)
    where = "Metadata_Compound=DMSO,Metadata_Plate=Week4_27821"
    kw = dict(steps=2, strength=0.5, guidance=1.0)
    res = regenerate(r, [where], ["Metadata_Compound=cyclohexamide"], residual=True, **kw)
    plain = regenerate(r, [where], ["Metadata_Compound=cyclohexamide"], residual=False, **kw)
    assert "detail" in res.info and "detail" not in plain.info
    stack = read_crops(STACK, channels=["DAPI", "Tubulin", "Actin"], factors=FACTORS.split(","))
    it = res.info["intensity"]
    rows = res.metadata["Metadata_source_row"].astype(int).to_numpy()
    plates = res.metadata["Metadata_Plate"].to_numpy(str)
    source = detail(it.to_uint8(stack.images[rows], plates), 16).astype(float)
    for result, near in ((res, True), (plain, False)):
        made = detail(it.to_uint8(result.raw(), plates), 16).astype(float)
        assert result.raw().shape == (len(rows), 68, 68, 3)
        off = np.abs(made - source).mean() / np.abs(source).mean()
        assert (off < 0.3) if near else (off > 0.7), off


def test_fit_and_regenerate_a_stack(crop_run, tmp_path):
    out = tmp_path / "treated.npz"
    argv = ["regenerate", str(crop_run), "--where", "Metadata_Compound=DMSO,Metadata_Plate=Week4_27821"]
    assert main([*argv, "--set", "Metadata_Compound=cyclohexamide", "--steps", "3", "--out", str(out)]) == 0
    with np.load(out) as z:
        images = z["images"]
    table = pd.read_csv(out.with_suffix(".csv"), dtype=str, keep_default_na=False)
    src = pd.read_csv(STACK.with_suffix(".csv"), dtype=str, keep_default_na=False)
    assert images.shape == (6, 68, 68, 3) and images.dtype == np.uint16
    assert (table.Metadata_Compound == "cyclohexamide").all() and (
        table.Metadata_Plate == "Week4_27821"
    ).all()
    rows = table.Metadata_source_row.astype(int).to_numpy()
    assert (src.Metadata_Compound.to_numpy()[rows] == "DMSO").all()
    assert (table.Metadata_Well.to_numpy() == src.Metadata_Well.to_numpy()[rows]).all()  # as read
    # the source's intensity scale: the regenerated crops span the real crops' range, not 0-255
    assert images.max() > 1000
    assert list(load_run(crop_run).spec.names) == ["Metadata_Compound", "Metadata_Plate"]
    refused = tmp_path / "x.npz"
    assert (
        main(["regenerate", str(crop_run), "--set", "Metadata_Plate=Week4_99999", "--out", str(refused)]) == 2
    )
    assert not refused.exists()


def _write(tmp_path: Path, images: np.ndarray, table: pd.DataFrame) -> Path:
    path = tmp_path / "stack.npz"
    np.savez(path, images=images)
    table.to_csv(path.with_suffix(".csv"), index=False)
    return path


@pytest.mark.parametrize(
    "change, extra, words",
    [
        ("channels", ["--channels", "DNA,ER,RNA,AGP,Mito"], ["--channels names 5 channel(s)", "has 3"]),
        ("rows", [], ["23 rows", "24 crops"]),
        ("key", [], ["no array 'images'"]),
        ("nan", [], ["NaN"]),
        ("corrupt", [], ["cannot read the stack"]),
        ("where", ["--holdout-where", "Metadata_Compound=DMSO,Metadata_Plate=Week4_99999"], ["Week4_99999"]),
    ],
)
def test_bad_stacks_one_line(tmp_path, capsys, change, extra, words):
    with np.load(STACK) as z:
        images = z["images"]
    table = pd.read_csv(STACK.with_suffix(".csv"), dtype=str, keep_default_na=False)
    path = STACK
    if change == "rows":
        path = _write(tmp_path, images, table.iloc[:-1])
    elif change == "key":
        path = tmp_path / "stack.npz"
        np.savez(path, crops=images)
        table.to_csv(path.with_suffix(".csv"), index=False)
    elif change == "nan":
        bad = images.astype(np.float32)
        bad[0, 0, 0, 0] = np.nan
        path = _write(tmp_path, bad, table)
    elif change == "corrupt":
        path = tmp_path / "stack.npz"
        path.write_bytes(b"not a zip file")
        shutil.copy(STACK.with_suffix(".csv"), path.with_suffix(".csv"))
    out = tmp_path / "run"
    argv = ["fit", "--data", f"crops:{path}", "--factors", FACTORS, *extra, "--size", "16", "--out", str(out)]
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert all(w in err for w in words), err
    assert not out.exists()


def test_morphology_features_of_real_crops():
    with np.load(STACK) as z:
        images = z["images"]
    x = crop_features(images)
    assert x.shape == (24, len(feature_names(("DAPI", "Tubulin", "Actin")))) and np.isfinite(x).all()
    area = x[:, 0]
    assert (area > 20).all()  # a nucleus found in every real crop
    table = pd.read_csv(STACK.with_suffix(".csv"), dtype=str)
    treated = (table.Metadata_Compound == "cyclohexamide").to_numpy()
    # cyclohexamide-treated cells have brighter actin (BBBC021's own description): the actin mean
    # of the treated crops sits more than one standard deviation above the DMSO crops'
    actin = feature_names(("DAPI", "Tubulin", "Actin")).index("Actin_mean")
    assert (x[treated, actin].mean() - x[~treated, actin].mean()) / x[:, actin].std() > 1.0


def test_evaluate_judges_crops_as_profiles(crop_run, capsys):
    """``factordiff evaluate`` on a crop run: a treatment task (the plate's DMSO crops regenerated
    with the compound set) and a plate swap (DMSO of the other plate with the plate set), each
    method judged against the real held-out crops beside the replicate floor by field."""
    assert main(["evaluate", str(crop_run)]) == 0
    assert "distance/AUC model" in capsys.readouterr().out
    metrics = json.loads((crop_run / "metrics.json").read_text())
    assert metrics["kind"] == "crops"
    treat, swap = metrics["tasks"]
    assert treat["kind"] == "treatment" and treat["set"] == "Metadata_Compound=cyclohexamide"
    assert treat["source_conditions"] == ["Metadata_Compound=DMSO, Metadata_Plate=Week4_27821"]
    assert treat["nearest_conditions"] == ["Metadata_Compound=cyclohexamide, Metadata_Plate=Week4_27801"]
    assert swap["kind"] == "transfer" and swap["set"] == "Metadata_Plate=Week4_27801"
    assert swap["source_conditions"] == ["Metadata_Compound=DMSO, Metadata_Plate=Week4_27821"]
    for task in (treat, swap):
        assert set(task["methods"]) == {"model", "copy", "mean_shift", "nearest"}
        for m in task["methods"].values():
            assert np.isfinite([m["distance"], m["energy"], m["c2st_auc"], m["frechet_oracle"]]).all()
        assert task["floor"]["split"].startswith("by field")
        assert task["truth_crops"] == 6


def test_floor_averages_every_split_of_the_fields():
    """Four fields have three ways into two halves; the floor is their mean, not one draw, so it
    does not hang on which sites a seed happens to pair (sites 1-2 differ from 3-4 here)."""
    rng = np.random.default_rng(0)
    fields = np.repeat(np.array(["w/1", "w/2", "w/3", "w/4"]), 30)
    x = rng.normal(size=(120, 5)) + np.where(np.isin(fields, ["w/1", "w/2"]), 1.0, 0.0)[:, None]
    rows = np.arange(120)
    got = floor(rows, fields, lambda r: x[r], lambda v: v, seed=0)
    assert got["splits"] == 3 and got["split"] == "by field (4 fields, mean of 3 splits)"
    each = []
    for other in ("w/2", "w/3", "w/4"):
        first = np.isin(fields, ["w/1", other])
        each.append(judge(x[first], x[~first], lambda v: v, 0)["distance"])
    assert got["distance"] == pytest.approx(np.mean(each))
    assert got["distance_range"] == pytest.approx([min(each), max(each)])
    assert max(each) > 3 * min(each)  # the pairing of sites matters: one split would be a lottery
    few = floor(rows[:40], None, lambda r: x[r], lambda v: v, seed=0, splits=4)
    assert few["splits"] == 4 and few["split"].startswith("at random")


def test_edit_chosen_on_seen_stand_ins_only(crop_run, tmp_path):
    """``choose=True``: with the treatment alone held out, its edit is chosen on the same treatment
    on the other plate (regenerated from that plate's DMSO crops, judged against its training
    crops), the option with the lowest distance; in ``crop_run``, whose plate swap holds out the
    other plate's DMSO, neither task has a stand-in made of training crops, and both say so."""
    out = tmp_path / "run"
    argv = ["fit", "--data", f"crops:{STACK}", "--channels", "DAPI,Tubulin,Actin", "--factors", FACTORS]
    argv += ["--holdout-where", HELD, "--controls", "Metadata_Compound=DMSO"]
    assert main([*argv, "--size", "16", "--config", str(_config(tmp_path)), "--out", str(out)]) == 0
    (treat,) = evaluate_crop_run(out, sources=4, steps=2, progress=False, choose=True)["tasks"]
    sel = treat["edit_selection"]
    assert sel["analogues"] == ["Metadata_Compound=cyclohexamide,Metadata_Plate=Week4_27801"]
    assert len(sel["distances"]) == len(EDIT_OPTIONS) and tuple(sel["chosen"]) in EDIT_OPTIONS
    chosen = "{:g}:{:g}:{}".format(
        sel["chosen"][0], sel["chosen"][1], "residual" if sel["chosen"][2] else "plain"
    )
    assert sel["distances"][chosen] == min(sel["distances"].values())
    for task in evaluate_crop_run(crop_run, sources=4, steps=2, progress=False, choose=True)["tasks"]:
        assert task["edit_selection"]["chosen"] is None and task["edit_selection"]["analogues"] == []
