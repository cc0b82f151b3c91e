"""Nothing held out reaches a learner: held-out images change no saved tensor of a run, and a value
that no training image had has no prototype, which edits and evaluations handle honestly."""

import numpy as np
import pytest
import torch
from conftest import tiny_config

from factordiff import FactordiffError
from factordiff.data.sources import prepare_data
from factordiff.edit import edit_image
from factordiff.evaluate.suite import evaluate_run
from factordiff.fit import fit
from factordiff.models.images import FactorModel
from factordiff.report import build_report

FAST = {"data.n": 192, "distill.steps": 3, "autoencoder.steps": 3, "denoiser.steps": 3, "train.threads": 1}


def test_heldout_images_change_no_saved_model_file(tmp_path):
    """The same split fitted on the full data and on the data with every held-out image deleted
    gives bit-identical model files, prototypes and mean code included."""
    cfg = tiny_config(**FAST)
    data, split, train = prepare_data(cfg)
    held = split.heldout(data.factors)
    assert held.any() and len(train) == (~held).sum()
    full = fit(cfg, tmp_path / "full", progress=False, data=(data, split, train))
    fit(cfg, tmp_path / "train_only", progress=False, data=(train, split, train))
    names = sorted(p.name for p in (tmp_path / "full" / "model").iterdir())
    assert {
        "distiller.safetensors",
        "autoencoder.safetensors",
        "denoiser.safetensors",
        "prototypes.safetensors",
        "config.json",
    } <= set(names)
    assert names == sorted(p.name for p in (tmp_path / "train_only" / "model").iterdir())
    for name in names:
        assert (tmp_path / "full" / "model" / name).read_bytes() == (
            tmp_path / "train_only" / "model" / name
        ).read_bytes(), name
    # the check has teeth: prototypes over every image (held-out ones included) would differ
    model = full.model
    mine = [p.clone() for p in model.prototypes]
    model.set_prototypes(model.codes(data.images), data.factors)
    assert any(not torch.equal(a, b) for a, b in zip(mine, model.prototypes))


@pytest.fixture(scope="module")
def unseen_run(tmp_path_factory):
    """A tiny run whose split holds out one value of ``shape`` entirely."""
    cfg = tiny_config(**{**FAST, "split.kind": "unseen_value", "split.factors": ["shape"], "data.n": 256})
    out = tmp_path_factory.mktemp("runs") / "unseen"
    result = fit(cfg, out, progress=False)
    (value,) = result.split.held_values["shape"]
    return out, value, result.dataset


def test_a_value_no_training_image_had_has_no_prototype(unseen_run):
    run, value, data = unseen_run
    model = FactorModel.load(run / "model")
    k = model.spec.position("shape")
    assert torch.isnan(model.prototypes[k][value]).all() and not model.has_prototype(k, value)
    assert all(model.has_prototype(k, v) for v in range(model.spec.sizes[k]) if v != value)
    with pytest.raises(FactordiffError, match="no training image had this value.*--from"):
        model.prototype(k, value)
    src = data.images[np.flatnonzero(data.factors[:, k] != value)[0]]
    ref = data.images[np.flatnonzero(data.factors[:, k] == value)[0]]
    with pytest.raises(FactordiffError, match="--from"):
        edit_image(model, src, sets={k: value}, steps=2)
    assert edit_image(model, src, reference=ref, factors=[k], steps=2).shape == src.shape


def test_evaluation_takes_unseen_values_from_reference_images_and_counts_them(unseen_run):
    run, value, data = unseen_run
    m = evaluate_run(run, progress=False, per_factor=2)
    name = data.spec.factors[data.spec.position("shape")].values[value]
    assert m["missing_prototypes"] == [f"shape={name}"]
    assert m["counterfactual"]["heldout"]["targets_from_reference"] > 0
    assert m["counterfactual"]["seen"]["targets_from_reference"] == 0
    assert m["counterfactual"]["heldout"]["skipped"] == m["counterfactual"]["seen"]["skipped"] == 0
    assert m["samples"]["heldout"]["codes_from_reference"] == m["samples"]["heldout"]["samples"] > 0
    assert m["samples"]["seen"]["codes_from_reference"] == 0
    assert "target code from a reference image" in build_report(run).read_text()


@pytest.fixture(scope="module")
def interpolation_run(tmp_path_factory):
    """A tiny run whose split holds out inner values of ``scale`` (a continuous factor)."""
    cfg = tiny_config(**{**FAST, "split.kind": "interpolation", "split.factors": ["scale"], "data.n": 256})
    out = tmp_path_factory.mktemp("runs") / "interpolation"
    result = fit(cfg, out, progress=False)
    return out, result.split.held_values["scale"], result.dataset


def test_a_continuous_value_no_training_image_had_is_coded_from_its_value(interpolation_run):
    """Between training values: linear in the value between the neighbours' prototypes; beyond them:
    the least-squares line of the training prototypes; edits take such a code with no reference."""
    run, held, data = interpolation_run
    model = FactorModel.load(run / "model")
    k = model.spec.position("scale")
    x = np.array(model.spec.factors[k].values)
    proto = model.prototypes[k].double()
    seen = np.flatnonzero(~torch.isnan(proto).any(1).numpy())
    assert len(held) and not set(held) & set(seen)
    for v in held:
        assert not model.seen_value(k, v) and model.has_prototype(k, v)
        lo, hi = seen[seen < v].max(), seen[seen > v].min()
        w = (x[v] - x[lo]) / (x[hi] - x[lo])  # scales 0.75-1.25: a linear axis
        torch.testing.assert_close(model.prototype(k, v).double(), (1 - w) * proto[lo] + w * proto[hi])
    top = int(seen.max())  # drop the largest training value: it is then beyond the others
    model.prototypes[k][top] = float("nan")
    rest = seen[seen != top]
    line = np.polyfit(x[rest], proto[rest].numpy(), 1)
    np.testing.assert_allclose(model.prototype(k, top).numpy(), line[0] * x[top] + line[1], atol=1e-5)
    src = data.images[np.flatnonzero(~np.isin(data.factors[:, k], held))[0]]
    assert edit_image(model, src, sets={k: int(held[0])}, steps=2).shape == src.shape
    # a categorical factor still has no code for a value no training image had (test above)
    assert model.spec.factors[model.spec.position("shape")].kind == "categorical"
