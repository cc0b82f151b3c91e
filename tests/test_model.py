"""A tiny trained run: model folders, exact save/load, edits, held-out data never reaching learners."""

import json

import numpy as np
import pytest
import torch

from factordiff import FactordiffError
from factordiff.checkpoint import load_tensors
from factordiff.data.shapes import replica
from factordiff.model import FactorModel


def test_run_folder_layout(tiny_run):
    for name in ("run_config.json", "split.json", "train_log.jsonl", "model/config.json", "model/distiller.safetensors",
                 "model/autoencoder.safetensors", "model/denoiser.safetensors", "model/prototypes.safetensors"):
        assert (tiny_run / name).is_file(), name
    stages = {json.loads(l)["stage"] for l in (tiny_run / "train_log.jsonl").read_text().splitlines()}
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


def test_heldout_combinations_never_reach_training(tiny_run):
    """The prototypes cover every value, but the split's held-out block is missing from the data
    the learners trained on: the run records the count, and it equals the non-held-out rows."""
    from factordiff.config import RunConfig, from_dict
    from factordiff.fit import prepare_data

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
