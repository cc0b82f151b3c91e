"""A tiny trained run: model folders, exact save/load, edits, held-out data never reaching learners."""

import json
import shutil

import numpy as np
import pytest
import torch

from factordiff import FactordiffError
from factordiff.checkpoint import load_tensors
from factordiff.data.shapes import replica
from factordiff.models.images import FactorModel, to_uint8, to_unit
from factordiff.models.runs import load_model


def test_run_folder_layout(tiny_run):
    for name in (
        "run_config.json",
        "split.json",
        "train_log.jsonl",
        "model/config.json",
        "model/distiller.safetensors",
        "model/autoencoder.safetensors",
        "model/denoiser.safetensors",
        "model/prototypes.safetensors",
    ):
        assert (tiny_run / name).is_file(), name
    stages = {json.loads(line)["stage"] for line in (tiny_run / "train_log.jsonl").read_text().splitlines()}
    assert stages == {"distiller", "autoencoder", "denoiser"}


def test_save_load_reproduces_outputs_exactly(tiny_run, tmp_path):
    model = FactorModel.load(tiny_run / "model")
    images = replica(16, n=4, seed=9).images
    codes = model.codes(images)
    x_T = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    out = model.generate(x_T, codes, steps=3)
    model.save(tmp_path / "copy")
    again = FactorModel.load(tmp_path / "copy")
    assert torch.equal(again.codes(images), codes)
    assert np.array_equal(again.generate(x_T, codes, steps=3), out)


def test_counterfactual_changes_only_the_image_not_the_shape(tiny_run):
    model = FactorModel.load(tiny_run / "model")
    images = replica(16, n=2, seed=2).images
    out = model.counterfactual(images, factor=2, blocks=model.prototype(2, 5), steps=3)
    assert out.shape == images.shape and out.dtype == np.uint8


def test_residual_edit_keeps_the_source_and_adds_the_models_change(tiny_run):
    """A residual edit under the source's own codes returns the source exactly (plain regeneration
    does not); under new codes it is the source plus the difference of the two regenerations."""
    model = FactorModel.load(tiny_run / "model")
    images = replica(16, n=3, seed=4).images
    codes = model.codes(images)
    new = codes.clone()
    new[:, model.factor_blocks[2]] = model.prototype(2, 5)
    x_T = model.invert(images, codes, steps=3)
    assert np.array_equal(model.edit(images, codes, codes, steps=3, x_T=x_T, residual=True), images)
    assert not np.array_equal(model.edit(images, codes, codes, steps=3, x_T=x_T, residual=False), images)
    change = model.generate(x_T, new, steps=3).astype(int) - model.generate(x_T, codes, steps=3).astype(int)
    out = model.edit(images, codes, new, steps=3, x_T=x_T, residual=True)
    assert (
        np.abs(change).max() > 0
        and np.abs(out.astype(int) - np.clip(images.astype(int) + change, 0, 255)).max() <= 2
    )


def test_ddpm_edit_inversion_gives_the_source_back_and_the_run_folder_config_chooses_it(tiny_run, tmp_path):
    """``method="ddpm"``: x_t and one noise map per step (N, 1 + steps, *latent); regenerated under
    the source's codes it is the source as the autoencoder round trip gives it, and edits take it as
    x_T; ``evaluate.edit_inversion`` of the run folder's run_config.json is what edits use."""
    model = FactorModel.load(tiny_run / "model")
    images = replica(16, n=3, seed=4).images
    codes = model.codes(images)
    inv = model.invert(images, codes, steps=3, strength=0.5, method="ddpm")
    assert inv.shape[:2] == (3, 4) and inv.dim() == 5
    own = to_uint8(model.from_latent(model.to_latent(to_unit(images))))
    back = model.generate(inv, codes, steps=3, strength=0.5)
    assert np.abs(back.astype(int) - own.astype(int)).max() <= 1
    block = model.prototype(2, 5)
    edited = model.counterfactual(images, 2, block, steps=3, x_T=inv, codes=codes, strength=0.5)
    assert edited.shape == images.shape and edited.dtype == np.uint8  # (this tiny model barely reads codes)
    with pytest.raises(FactordiffError, match="inversion 'exact'"):
        model.invert(images, codes, steps=3, method="exact")
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    saved = json.loads((run / "run_config.json").read_text())
    saved["evaluate"]["edit_inversion"] = "ode"
    (run / "run_config.json").write_text(json.dumps(saved))
    cfg, loaded = load_model(run)
    assert loaded.config.evaluate.edit_inversion == cfg.evaluate.edit_inversion == "ode"
    assert model.config.evaluate.edit_inversion == "ddpm"  # the default, saved beside the weights
    assert loaded.invert(images, codes, steps=3, strength=0.5).shape == inv[:, 0].shape


def test_heldout_combinations_never_reach_training(tiny_run):
    """The prototypes cover every value, but the split's held-out block is missing from the data
    the learners trained on: the run records the count, and it equals the non-held-out rows."""
    from factordiff.config import RunConfig, from_dict
    from factordiff.data.sources import prepare_data

    cfg = from_dict(RunConfig, json.loads((tiny_run / "run_config.json").read_text()))
    data, split, train = prepare_data(cfg)
    assert not split.heldout(train.factors).any()
    assert split.heldout(data.factors).any()
    meta = json.loads((tiny_run / "model" / "config.json").read_text())
    assert meta["train_images"] == len(train) < len(data)


def test_pickle_files_are_refused(tmp_path):
    import pickle

    (tmp_path / "w.safetensors").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(FactordiffError, match="not a valid safetensors file"):
        load_tensors(tmp_path / "w.safetensors")


def test_model_folder_without_config(tmp_path):
    with pytest.raises(FactordiffError, match="no config.json"):
        FactorModel.load(tmp_path)


def test_ordinal_dims_one_makes_an_ordinal_block_one_axis_and_leaves_categorical_blocks_free():
    from factordiff.encoders.distill import FactorDistiller

    torch.manual_seed(0)
    x = torch.randn(5, 3, 16, 16)
    one = FactorDistiller([3, 4], [True, False], 3, 16, code_dims=4, width=8, ordinal_dims=1)
    codes = one(x)
    assert codes[:, 0, 1:].abs().amax() == 0 and codes[:, 0, 0].abs().amin() > 0
    assert codes[:, 1].abs().amin() > 0
    loss, stats = one.loss(x, torch.tensor([[0, 1], [1, 2], [2, 3], [0, 0], [1, 1]]))
    loss.backward()
    assert torch.isfinite(loss) and stats["order"] > 0
    free = FactorDistiller([3, 4], [True, False], 3, 16, code_dims=4, width=8)
    assert free(x).abs().amin() > 0
    assert "mask" not in one.state_dict() and set(one.state_dict()) == set(free.state_dict())


def test_a_removed_option_still_loads_at_its_one_value_and_is_refused_otherwise():
    """distill.pool was measured (worse held-out read-out) and removed: configs of earlier runs,
    the shipped one included, hold pool = flatten and still load; flatten+mean is refused."""
    from factordiff.config import DistillConfig, from_dict
    from factordiff.errors import FactordiffError

    assert from_dict(DistillConfig, {"pool": "flatten", "width": 8}).width == 8
    with pytest.raises(FactordiffError, match="distill.pool: this option was removed"):
        from_dict(DistillConfig, {"pool": "flatten+mean"}, "distill")


def test_shipped_pretrained_model_loads_and_reads_its_factors():
    """The weights that `factordiff quickstart` copies: its config (free ordinal blocks) and its
    weights still fit the code, and its distiller recovers the factors of replica images of the
    combinations it trained on (held-out object_hue x shape combinations are read less well)."""
    from factordiff.data.splits import make_split
    from factordiff.quickstart import pretrained_run

    model = FactorModel.load(pretrained_run(32) / "model")
    data = replica(32, n=256, seed=12)
    codes = model.codes(data.images)
    assert codes.shape == (256, 6, 4) and codes[:, :, 1:].abs().amax() > 0
    pred = np.stack([lg.argmax(1).numpy() for lg in model.encoder.logits(codes)], axis=1)
    seen = ~make_split(model.spec, model.config.split).heldout(data.factors)
    assert 100 < seen.sum() < 256
    assert (pred[seen] == data.factors[seen]).mean(0).min() >= 0.97
