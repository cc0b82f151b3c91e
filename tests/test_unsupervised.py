"""The unsupervised encoder: segment schedule, no-op branch at initialisation, frozen base, a tiny run."""

import json

import torch
from conftest import tiny_config

from factordiff.config import DenoiserConfig
from factordiff.diffusion.adapters import TimeEmbeddingAdapter
from factordiff.diffusion.condition import Condition
from factordiff.diffusion.denoiser import Denoiser, build_unet
from factordiff.encoders.unsupervised import (
    GradientEstimatorDenoiser,
    SegmentEncoder,
    UnsupervisedStep,
    active_segments,
    zero_output,
)

CFG = DenoiserConfig(block_out_channels=[16, 32], layers_per_block=1)


def tiny_branched(seed=0) -> GradientEstimatorDenoiser:
    torch.manual_seed(seed)
    base = Denoiser(build_unet(CFG, 4, 8))
    branch = zero_output(Denoiser(build_unet(CFG, 4, 8), TimeEmbeddingAdapter(3, 2, 64, 16)))
    return GradientEstimatorDenoiser(base, branch, 1000)


def test_segments_switch_on_with_the_time_step():
    t = torch.tensor([0, 332, 333, 665, 666, 999])
    assert active_segments(t, 3, 1000).sum(1).tolist() == [1, 1, 2, 2, 3, 3]


def test_branch_is_a_no_op_at_initialisation_and_the_base_is_frozen():
    d = tiny_branched()
    x, t = torch.randn(4, 4, 8, 8), torch.tensor([10, 400, 700, 999])
    cond = Condition.full(torch.randn(4, 3, 2))
    assert torch.equal(d(x, t, cond), d.base(x, t))
    assert not any(p.requires_grad for p in d.base.parameters())
    before = {k: v.clone() for k, v in d.base.state_dict().items()}
    encoder = SegmentEncoder(3, 16, 3, 2, width=8)
    step = UnsupervisedStep(encoder, d, "v_prediction", CFG)
    opt = torch.optim.AdamW(list(encoder.parameters()) + list(d.branch.parameters()), lr=1e-2)
    batch = {"images": torch.randint(0, 255, (4, 16, 16, 3), dtype=torch.uint8), "x": torch.randn(4, 4, 8, 8)}
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        loss, _ = step(batch, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.equal(before[k], v) for k, v in d.base.state_dict().items())
    assert not torch.equal(d(x, t, cond), d.base(x, t))


def test_unsupervised_fit_uses_no_labels_and_fits_the_model_interfaces(tmp_path, monkeypatch):
    from factordiff import fit as fit_module

    seen = []
    real = fit_module.ArrayBatches
    monkeypatch.setattr(
        fit_module,
        "ArrayBatches",
        lambda tensors, *a, **k: seen.append(set(tensors)) or real(tensors, *a, **k),
    )
    cfg = tiny_config(
        **{
            "unsupervised.enabled": True,
            "unsupervised.steps": 6,
            "unsupervised.branch_channels": [16, 32],
            "unsupervised.segments": 3,
            "unsupervised.code_dims": 2,
            "unsupervised.width": 8,
            "unsupervised.batch_size": 16,
            "denoiser.steps": 6,
            "autoencoder.steps": 6,
        }
    )
    result = fit_module.fit(cfg, tmp_path / "run", progress=False)
    assert all("factors" not in s for s in seen) and len(seen) == 3  # autoencoder, base, encoder
    model = result.model
    images = result.train.images[:4]
    assert model.codes(images).shape == (4, 3, 2)
    assert len(model.factor_blocks) == 6 and set(model.factor_blocks) <= {0, 1, 2}
    out = model.counterfactual(images, factor=2, blocks=model.prototype(2, 5), steps=3)
    assert out.shape == images.shape
    meta = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert meta["factor_blocks"] == model.factor_blocks


UNSUP_TINY = {
    "unsupervised.enabled": True,
    "unsupervised.steps": 4,
    "unsupervised.branch_channels": [16, 32],
    "unsupervised.segments": 3,
    "unsupervised.code_dims": 2,
    "unsupervised.width": 8,
    "unsupervised.batch_size": 16,
}


def test_the_encoder_trains_on_a_supervised_runs_frozen_denoiser_through_its_null_tokens(tiny_run, tmp_path):
    import shutil

    import pytest
    from safetensors.torch import load_file, save_file

    from factordiff.errors import FactordiffError
    from factordiff.fit import fit
    from factordiff.models.images import FactorModel

    source = FactorModel.load(tiny_run / "model")
    cfg = tiny_config(**UNSUP_TINY, **{"unsupervised.base": str(tiny_run), "denoiser.steps": 1})
    result = fit(cfg, tmp_path / "run", progress=False)
    stages = {json.loads(line)["stage"] for line in (tmp_path / "run" / "train_log.jsonl").open()}
    assert stages == {"encoder"}  # no autoencoder, no base: they are the source run's
    saved = json.loads((tmp_path / "run" / "run_config.json").read_text())
    assert saved["unsupervised"]["base_blocks"] == len(source.spec) == 6
    assert saved["denoiser"]["steps"] == source.config.denoiser.steps  # the base's section, not --set's
    model = result.model
    x, t = torch.randn(3, 4, 8, 8), torch.tensor([5, 500, 990])
    absent = Condition(torch.randn(3, 6, 2), torch.zeros(3, 6, dtype=torch.bool))
    with torch.no_grad():
        assert torch.equal(model.denoiser.base(x, t), source.denoiser(x, t, absent))
    images = result.train.images[:4]
    assert torch.equal(model.latents(images), source.latents(images))  # the source's autoencoder
    assert model.codes(images).shape == (4, 3, 2)

    # a folder saved without the weights it shares with its base reads them from the base
    lean = tmp_path / "lean"
    shutil.copytree(tmp_path / "run" / "model", lean)
    (lean / "autoencoder.safetensors").unlink()
    state = load_file(lean / "denoiser.safetensors")
    save_file({k: v for k, v in state.items() if not k.startswith("base.")}, lean / "denoiser.safetensors")
    again = FactorModel.load(lean)
    with torch.no_grad():
        cond = Condition.full(model.codes(images))
        xt = torch.randn(4, 4, 8, 8)
        tt = torch.full((4,), 700)
        assert torch.equal(again.denoiser(xt, tt, cond), model.denoiser(xt, tt, cond))
    assert torch.equal(again.latents(images), model.latents(images))

    for over, message in (
        ({"unsupervised.base": str(tmp_path / "none")}, "unsupervised.base: .*no such folder"),
        ({"unsupervised.base": str(tmp_path / "run")}, "is an unsupervised run"),
        ({"unsupervised.base": str(tiny_run), "data.size": 32}, "was trained on 3-channel 16x16 images"),
        ({"unsupervised.base_blocks": 3}, "unsupervised.base_blocks: 3 without unsupervised.base"),
    ):
        with pytest.raises(FactordiffError, match=message):
            fit(tiny_config(**UNSUP_TINY, **over), tmp_path / "refused", progress=False)
        assert not (tmp_path / "refused").exists()


def test_the_tokens_branch_reads_one_token_per_segment_and_starts_as_a_no_op():
    from factordiff.diffusion.adapters import TokenAdapter
    from factordiff.models.images import ModelShape, build_denoiser

    cfg = tiny_config(**UNSUP_TINY, **{"unsupervised.adapter": "tokens"})
    torch.manual_seed(0)
    d = build_denoiser(cfg, None, ModelShape(3, 16))
    assert (
        isinstance(d.branch.adapter, TokenAdapter) and d.branch.adapter.w1.shape[0] == 3
    )  # a token a segment
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([100, 900])
    cond = Condition.full(torch.randn(2, 3, 2))
    assert torch.equal(d(x, t, cond), d.base(x, t))
    opt = torch.optim.SGD(d.branch.parameters(), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        (d(x, t, cond) - 1).pow(2).mean().backward()
        opt.step()
    other = Condition.full(torch.randn(2, 3, 2))
    assert not torch.allclose(d(x, t, cond), d(x, t, other))  # the tokens now steer the branch


def test_the_shipped_unsupervised_encoder_sits_on_the_shipped_quickstart_denoiser():
    """`pretrained/shapes32-unsupervised` ships without its base's weights, reads them from
    `pretrained/shapes32`, and its label-free codes of fresh replica images carry the hues of wall
    and object and the shape (a linear read-out)."""
    from importlib import resources

    import numpy as np
    from safetensors import safe_open
    from sklearn.linear_model import LogisticRegression

    from factordiff.checkpoint import load_tensors
    from factordiff.data.shapes import replica
    from factordiff.models.images import FactorModel

    folder = resources.files("factordiff") / "pretrained"
    lean = folder / "shapes32-unsupervised" / "model"
    assert not (lean / "autoencoder.safetensors").is_file()
    with safe_open(str(lean / "denoiser.safetensors"), "pt") as f:
        assert not any(k.startswith("base.") for k in f.keys())
    model = FactorModel.load(lean)
    assert model.config.unsupervised.unmix == "ica"  # its basis, float32 in both parts
    kept = load_tensors(lean / "unmix.safetensors")
    for part in (model.encoder.basis, model.denoiser.basis):
        assert all(torch.equal(v, kept[k]) for k, v in part.state_dict().items())
    base = FactorModel.load(folder / "shapes32" / "model")
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([50, 800])
    absent = Condition(torch.zeros(2, 6, 4), torch.zeros(2, 6, dtype=torch.bool))
    with torch.no_grad():
        assert torch.equal(model.denoiser.base(x, t), base.denoiser(x, t, absent))
    data = replica(32, n=1024, seed=12)
    codes = model.codes(data.images).numpy().reshape(1024, -1)
    codes = (codes - codes[:768].mean(0)) / codes[:768].std(0)
    for name in ("wall_hue", "object_hue", "shape"):
        k = model.spec.position(name)
        probe = LogisticRegression(max_iter=2000).fit(codes[:768], data.factors[:768, k])
        assert probe.score(codes[768:], data.factors[768:, k]) >= 0.9, name
    assert np.array_equal(model.latents(data.images[:4]), base.latents(data.images[:4]))


def test_the_code_basis_recovers_mixed_independent_sources_and_keeps_a_degenerate_segment():
    import numpy as np

    from factordiff.encoders.unsupervised import CodeBasis

    rng = np.random.default_rng(0)
    sources = rng.uniform(-1, 1, (4000, 2, 3))
    mixing = rng.normal(size=(2, 3, 3))
    codes = np.einsum("ked,bkd->bke", mixing, sources) + np.array([[1.0, -2.0, 0.5], [0.0, 3.0, 1.0]])
    codes[:, 1, 2] = 0.25  # segment 1 has a constant dimension: it keeps the identity
    basis = CodeBasis(2, 3)
    log = basis.fit(codes.astype(np.float32), seed=0)
    assert log["ica_iterations_0"] > 0 and log["ica_iterations_1"] == 0
    c = torch.from_numpy(codes).float()
    u = basis.unmix(c)
    corr = np.abs(np.corrcoef(u[:, 0].T.numpy(), sources[:, 0].T)[:3, 3:])
    assert (corr.max(1) > 0.98).all() and sorted(corr.argmax(1)) == [0, 1, 2]  # each source found once
    assert np.allclose(u[:, 0].numpy().std(0), 1.0, atol=0.01)
    assert torch.equal(u[:, 1], c[:, 1]) and torch.allclose(basis.mix(u), c, atol=1e-4)


def test_an_unmixed_encoder_changes_the_codes_coordinates_and_not_the_models_predictions(tiny_run, tmp_path):
    import numpy as np

    from factordiff.config import RunConfig, from_dict, saved_before
    from factordiff.fit import fit

    cfg = tiny_config(**UNSUP_TINY, **{"unsupervised.base": str(tiny_run), "denoiser.steps": 1})
    assert cfg.unsupervised.unmix == "ica"
    result = fit(cfg, tmp_path / "run", progress=False)
    model, images = result.model, result.train.images
    assert (tmp_path / "run" / "model" / "unmix.safetensors").is_file()
    basis = model.encoder.basis
    assert not torch.equal(basis.unmixing, torch.eye(2).expand(3, 2, 2))
    assert all(torch.equal(a, b) for a, b in zip(basis.buffers(), model.denoiser.basis.buffers()))
    codes = model.codes(images)
    for k in range(3):  # fitted on these training images: whitened inside each segment
        assert np.allclose(np.cov(codes[:, k].numpy(), rowvar=False), np.eye(2), atol=0.05)
    raw = model.encoder.raw(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1)
    assert torch.allclose(basis.mix(codes), raw, atol=1e-4)
    x, t = torch.randn(len(images), 4, 8, 8), torch.randint(0, 1000, (len(images),))
    with torch.no_grad():
        unmixed = model.denoiser(x, t, Condition.full(codes))
        model.denoiser.basis = None  # the same model on the raw codes
        assert torch.allclose(unmixed, model.denoiser(x, t, Condition.full(raw)), atol=1e-4)

    again = fit(cfg, tmp_path / "run", resume=True, progress=False).model  # a finished run resumed
    assert all(torch.equal(a, b) for a, b in zip(again.encoder.basis.buffers(), basis.buffers()))

    # weights saved before the basis existed load as the identity; their configs read unmix none
    old = {k: v for k, v in model.encoder.state_dict().items() if not k.startswith("basis.")}
    fresh = SegmentEncoder(3, 16, 3, 2, width=8, unmix=True)
    fresh.load_state_dict(old)
    assert torch.equal(fresh.basis.mixing, torch.eye(2).expand(3, 2, 2))
    saved = json.loads((tmp_path / "run" / "run_config.json").read_text())
    del saved["unsupervised"]["unmix"]
    assert from_dict(RunConfig, saved_before(saved)).unsupervised.unmix == "none"
