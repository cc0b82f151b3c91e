"""A tiny cellsim run end to end: fit on 5-channel fields with a compound x batch combination and
one compound held out, evaluate (batch swap, per-channel distances, unseen compound, mAP, each with
its null), report, and regenerate images into a held-out combination and into an unseen compound
given by SMILES; the output reads back through the load_data reader."""

import json

import numpy as np
import pytest
import tifffile
from conftest import tiny_overrides

from factordiff.cli import main
from factordiff.data.cells import load_data_fields
from factordiff.data.cellsim import CHANNELS, COMPOUNDS


@pytest.fixture(scope="module")
def cell_run(tmp_path_factory):
    from factordiff.config import load_config
    from factordiff.fit import fit

    over = tiny_overrides(
        **{
            "data.source": "cellsim",
            "data.size": 16,
            "data.n": 480,
            "split.kind": "none",
            "split.factors": [],
            "split.where": ["compound=nocodazole,batch=batch_2", "compound=caffeine"],
            "evaluate.sources": 4,
        }
    )
    out = tmp_path_factory.mktemp("cells") / "run"
    fit(load_config(None, over), out, progress=False)
    return out


@pytest.mark.slow
def test_cellsim_run_evaluates_with_nulls_and_reports(cell_run):
    from factordiff.evaluate.suite import evaluate_run
    from factordiff.report import build_report

    m = evaluate_run(cell_run, progress=False, per_factor=4)
    b = m["batch_swap"]
    assert b["combinations"] == ["nocodazole x batch_2"] and b["edits"] > 0
    for key in ("target_batch_rate", "biology_kept_rate", "compound_kept_rate"):
        assert 0 <= b[key] <= 1 and 0 <= b["copy_source"][key] <= 1 and 0 <= b["mean_shift"][key] <= 1
    assert "autoencoder_roundtrip" not in b  # cellsim runs diffuse in pixel space (config.SOURCE_DEFAULTS)
    assert b["edit"] == {
        "strength": 0.55,
        "guidance": 2.0,
        "residual": True,
    }  # cellsim's technical edit settings
    assert set(b["true_counterfactual"]) == {"target_batch_rate", "biology_kept_rate", "compound_kept_rate"}
    fb = b["feature_baselines"]  # the profile baselines over oracle features, read by the oracle's heads
    assert set(fb) == {"mean_shift", "nearest", "linear", "mean_shift_fallback"}
    assert all(set(fb[k]) == set(b["true_counterfactual"]) for k in ("mean_shift", "nearest", "linear"))
    assert all(0 <= v <= 1 for k in ("mean_shift", "nearest", "linear") for v in fb[k].values())
    assert fb["mean_shift_fallback"] == 0.0  # the target plates hold training fields of other compounds
    assert set(m["frechet"]) == {"all", *CHANNELS} and all(np.isfinite(v) for v in m["frechet"].values())
    u = m["unseen_compound"]
    assert (
        u["by_compound"][0]["compound"] == "caffeine"
        and 0 <= u["closer_than_control"] <= 1
        and u["dose"] == "10.0"
    )
    assert (
        u["by_compound"][0]["nearest_compound"] in ("theobromine", "theophylline")
        and 0 <= u["nearest_compound"] <= 1
    )
    assert u["structure_ceiling"]["caffeine"]["closer_than_control"]
    assert (
        u["edit"] == {"strength": 1.0, "guidance": 5.0, "residual": False} and 0 <= u["seen_compounds"] <= 1
    )
    assert set(m["map"]) == {"real", "generated", "copy_control"}
    from factordiff.data.sources import prepare_data
    from factordiff.data.splits import make_split
    from factordiff.evaluate.cells import seen_compound_edits
    from factordiff.evaluate.suite import get_oracle
    from factordiff.models.runs import load_model

    cfg, model = load_model(cell_run)
    data = prepare_data(cfg)[0]
    args = (
        model,
        get_oracle(cell_run, cfg, data, progress=False)[0],
        data,
        make_split(data.spec, cfg.split),
        cfg.evaluate,
        0,
    )
    loo = seen_compound_edits(
        *args, compounds=[data.spec.factors[0].index("theobromine")], per_compound=2, leave_one_out=COMPOUNDS
    )
    assert (
        0 <= loo <= 1
        and seen_compound_edits(
            *args, compounds=[data.spec.factors[0].index("theobromine")], per_compound=2, leave_one_out={}
        )
        is None
    )
    saved = json.loads((cell_run / "metrics.json").read_text())
    assert "batch_swap" in saved and (cell_run / "figures" / "samples.png").is_file()
    assert "Cell Painting: virtual experiments" in build_report(cell_run).read_text()


@pytest.mark.slow
def test_regenerate_images_into_a_held_out_combination_and_an_unseen_smiles(cell_run, tmp_path, capsys):
    out = tmp_path / "swap"
    assert (
        main(
            [
                "regenerate",
                str(cell_run),
                "--where",
                "compound=nocodazole,batch=batch_1",
                "--set",
                "batch=batch_2,plate=plate_3",
                "--out",
                str(out),
                "--steps",
                "3",
                "--limit",
                "3",
            ]
        )
        == 0
    )
    fields = load_data_fields(out / "regenerated.csv")  # the output is a load_data table
    assert len(fields) == 3 and fields.channels == CHANNELS
    assert (
        list(fields.metadata["Metadata_batch"]) == ["batch_2"] * 3
        and list(fields.metadata["Metadata_compound"]) == ["nocodazole"] * 3
    )
    field = fields.field(0, bit_depth=16)
    assert field.shape == (5, 16, 16) and field.dtype == np.uint16
    assert np.array_equal(field[0], tifffile.imread(out / "images" / "000000_DNA.tiff"))
    new = tmp_path / "new"
    assert (
        main(
            [
                "regenerate",
                str(cell_run),
                "--where",
                "compound=DMSO",
                "--set",
                f"compound={COMPOUNDS['caffeine']},dose=10.0",
                "--out",
                str(new),
                "--steps",
                "3",
                "--limit",
                "2",
                "--residual",
            ]
        )
        == 0
    )
    assert len(load_data_fields(new / "regenerated.csv")) == 2
    capsys.readouterr()
    assert (
        main(
            [
                "regenerate",
                str(cell_run),
                "--where",
                "compound=DMSO",
                "--set",
                "compound=C1CC",
                "--out",
                str(tmp_path / "bad"),
                "--steps",
                "3",
            ]
        )
        == 2
    )
    assert "not a valid molecule" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert (
        main(
            [
                "regenerate",
                str(cell_run),
                "--where",
                "compound=DMSO",
                "--set",
                "batch=batch_9",
                "--out",
                str(tmp_path / "bad"),
            ]
        )
        == 2
    )
    assert (
        main(["regenerate", str(cell_run), "--set", "batch=batch_2", "--out", str(out)]) == 2
    )  # an existing folder is never overwritten


def test_autoencoder_roundtrip(tiny_run):
    from factordiff.data.sources import prepare_data
    from factordiff.evaluate.cells import autoencoder_roundtrip
    from factordiff.models.runs import load_model

    cfg, model = load_model(tiny_run)
    images = prepare_data(cfg)[0].images[:6]
    trip = autoencoder_roundtrip(model, images)
    assert trip.shape == images.shape and trip.dtype == np.uint8 and not np.array_equal(trip, images)
    model.autoencoder = None
    assert autoencoder_roundtrip(model, images) is None


def test_batch_mean_shift_moves_channel_statistics():
    from factordiff.data.cellsim import cellsim
    from factordiff.evaluate.cells import batch_mean_shift

    data = cellsim(16, n=240, seed=0)
    kb = data.spec.position("batch")
    train = np.ones(len(data), bool)
    src = np.flatnonzero(data.factors[:, kb] == 0)[:40]
    out = batch_mean_shift(data, train, src, np.full(len(src), 3), kb)
    target = data.images[data.factors[:, kb] == 3].reshape(-1, 5).mean(0)
    before, after = data.images[src].reshape(-1, 5).mean(0), out.reshape(-1, 5).mean(0)
    assert np.abs(after - target).sum() < 0.5 * np.abs(before - target).sum()


def test_feature_baselines_read_oracle_features_of_training_images_only():
    import torch

    from factordiff.data.cellsim import cellsim
    from factordiff.evaluate.cells import feature_baselines
    from factordiff.evaluate.counterfactual import Oracle

    data = cellsim(16, n=240, seed=0)
    torch.manual_seed(0)
    oracle = Oracle(data.spec.sizes, data.channels, data.size).eval().requires_grad_(False)
    f, kb = data.factors, data.spec.position("batch")
    train = f[:, kb] != 3  # every field of the last batch held out
    src = np.flatnonzero(train)[:30]
    target = f[src].copy()
    ks = data.spec.position("source")  # source, batch, plate: into a plate of the held-out batch
    target[:, ks:] = f[np.flatnonzero(~train)[0], ks:]
    # copying the features, the heads read what the oracle reads from the images themselves
    reads, _ = feature_baselines(oracle, data, train, src, target, seed=0, names=("copy",))
    np.testing.assert_array_equal(reads["copy"], oracle.predict(data.images[src]))
    reads, info = feature_baselines(oracle, data, train, src, target, seed=0)
    assert set(reads) == {"mean_shift", "nearest", "linear"} and info["rows"] == 30
    assert all(r.shape == (30, len(data.spec)) for r in reads.values())
    assert info["fallback_rows"] == 30  # no training field has the held-out batch's plate
    data.images[~train] = 255 - data.images[~train]  # held-out fields are never read
    again, _ = feature_baselines(oracle, data, train, src, target, seed=0)
    assert all(np.array_equal(reads[k], again[k]) for k in reads)
    with pytest.raises(ValueError, match="training images only"):
        feature_baselines(oracle, data, train, np.flatnonzero(~train)[:2], target[:2], seed=0)


def test_true_counterfactuals_render_the_same_cells_in_another_plate():
    from factordiff.data.cellsim import cellsim, true_counterfactuals

    data = cellsim(16, n=30, seed=3)
    rows = np.arange(0, 30, 3)
    assert np.array_equal(true_counterfactuals(data, rows, data.factors[rows], seed=3), data.images[rows])
    assert (
        true_counterfactuals(data, rows, data.factors[rows], seed=4) is None
    )  # not the seed these fields were rendered with
    moved = data.factors[rows].copy()
    moved[:, 3:] = data.factors[
        np.argmax(data.factors[:, 4] != data.factors[rows[0], 4]), 3:
    ]  # another source, batch and plate
    other = true_counterfactuals(data, rows[:1], moved[:1], seed=3)[0].astype(float)
    same = data.images[rows[0]].astype(float)
    # the same cells: the fields correlate pixel by pixel on the DNA channel, though intensities differ
    assert (
        not np.array_equal(other, same)
        and np.corrcoef(other[..., 0].ravel(), same[..., 0].ravel())[0, 1] > 0.8
    )


def test_edit_settings_by_role():
    from factordiff.config import load_config
    from factordiff.data.cellsim import cellsim_spec
    from factordiff.edit import edit_settings

    spec = cellsim_spec()
    e = load_config(None, {"data.source": "cellsim"}).evaluate
    batch, compound = spec.position("batch"), spec.position("compound")
    assert edit_settings(e, spec, [batch, spec.position("plate")]) == (
        e.technical_strength,
        e.technical_guidance,
        True,
    )
    assert edit_settings(e, spec, [batch, compound]) == (
        e.edit_strength,
        e.guidance,
        False,
    )  # any biological factor: the general settings
    plain = load_config(None, {}).evaluate
    assert edit_settings(plain, spec, [batch]) == (
        plain.edit_strength,
        plain.guidance,
        plain.edit_residual,
    )  # unset: the general ones


@pytest.mark.slow
def test_cell_figures_find_factors_by_role_not_by_name(cell_run):
    """The same run's data with its perturbation called treatment, its batches run and its control
    vehicle gives the same batch-swap figures once CellFactors says which factor is which."""
    import dataclasses

    from factordiff.data.base import FactorDataset
    from factordiff.data.sources import prepare_data
    from factordiff.data.splits import make_split
    from factordiff.evaluate.cells import CellFactors, evaluate_cells
    from factordiff.evaluate.suite import get_oracle
    from factordiff.factors import FactorSpec
    from factordiff.models.runs import load_model

    cfg, model = load_model(cell_run)
    data = prepare_data(cfg)[0]
    split = make_split(data.spec, cfg.split)
    oracle, _ = get_oracle(cell_run, cfg, data, progress=False)
    rename = {"compound": "treatment", "batch": "run"}
    renamed = FactorSpec(
        tuple(
            dataclasses.replace(
                f,
                name=rename.get(f.name, f.name),
                values=tuple("vehicle" if v == "DMSO" else v for v in f.values)
                if f.name == "compound"
                else f.values,
            )
            for f in data.spec.factors
        )
    )
    other = FactorDataset(data.images, data.factors, renamed, data.source)
    args = (model, oracle)
    kw = dict(n=4, seed=cfg.train.seed, parts=("batch_swap", "map"))
    want = evaluate_cells(*args, data, split, CHANNELS, cfg.evaluate, **kw)
    assert evaluate_cells(*args, other, split, CHANNELS, cfg.evaluate, **kw) == {
        "absent": "the data has no compound and batch factors"
    }
    roles = CellFactors.of(renamed, {"compound": "treatment", "batch": "run"}, "vehicle")
    got = evaluate_cells(*args, other, split, CHANNELS, cfg.evaluate, **kw, cells=roles)
    assert got["batch_swap"]["combinations"] == ["nocodazole x batch_2"]
    assert got == want


def test_marginal_edit_conditions_on_the_changed_role_only(cell_run):
    """A marginal batch swap inverts and regenerates with every biological factor absent: under the
    source's own codes it returns the source, and otherwise it is the source plus the difference of
    the two regenerations with compound, dose and cell line absent, not the full-code difference."""
    import torch

    from factordiff.data.sources import prepare_data
    from factordiff.models.runs import load_model

    cfg, model = load_model(cell_run)
    images = prepare_data(cfg)[0].images[:3]
    spec, blocks = model.spec, model.factor_blocks
    codes = model.codes(images)
    new = codes.clone()
    for name, value in (("batch", 1), ("plate", 2)):
        k = spec.position(name)
        new[:, blocks[k]] = model.prototype(k, value)
    present = model.marginal_present(codes, new)
    assert [bool(present[0, blocks[k]]) for k in range(len(spec))] == [
        spec.factors[k].role == "technical" for k in range(len(spec))
    ]
    both = model.marginal_present(
        codes, new.index_fill(1, torch.tensor([blocks[spec.position("compound")]]), 0)
    )
    assert both.all()  # a biological factor changed too: every block conditions
    x_T = model.invert(images, codes, steps=3, present=present)
    assert np.array_equal(model.edit(images, codes, codes, steps=3, x_T=x_T, residual="marginal"), images)
    arm = lambda c: model.generate(x_T, c, steps=3, present=present).astype(int)  # noqa: E731
    out = model.edit(images, codes, new, steps=3, x_T=x_T, residual="marginal").astype(int)
    assert np.abs(out - np.clip(images.astype(int) + arm(new) - arm(codes), 0, 255)).max() <= 2
    full = model.edit(images, codes, new, steps=3, x_T=x_T, residual=True).astype(int)
    assert not np.array_equal(out, full)
