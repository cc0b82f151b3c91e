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
