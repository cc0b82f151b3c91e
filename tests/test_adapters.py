"""The three adapters (``denoiser.adapter = embed | tokens | shift``): each an exact no-op at
initialisation, each conditions the model after training, each trains on a frozen base that does
not move, and each saves and loads through the one run folder."""

import copy

import pytest
import torch
from conftest import tiny_config

from factordiff.checkpoint import load_tensors
from factordiff.diffusion.condition import Condition
from factordiff.diffusion.denoiser import Denoiser
from factordiff.diffusion.objective import DiffusionStep
from factordiff.models.images import FactorModel, ModelShape, build_denoiser

ADAPTERS = ["embed", "tokens", "shift"]


def _built(adapter: str, seed: int = 0):
    cfg = tiny_config(
        **{"denoiser.adapter": adapter, "denoiser.token_dim": 16, "denoiser.branch_channels": [8, 16]}
    )
    from factordiff.data.shapes import shapes_spec

    torch.manual_seed(seed)
    return cfg, build_denoiser(cfg, shapes_spec(), ModelShape(3, 16))


def _base(denoiser) -> Denoiser:
    """The UNet alone, unconditional: what every adapter starts from."""
    return denoiser.base if hasattr(denoiser, "base") else Denoiser(denoiser.unet)


def _batch(denoiser, cfg, n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cfg.autoencoder.latent_channels, 4, 4, generator=g)
    return (
        x,
        torch.randint(0, 1000, (n,), generator=g),
        Condition.full(torch.randn(n, 6, cfg.distill.code_dims, generator=g)),
    )


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_every_adapter_is_an_exact_no_op_at_initialisation(adapter):
    cfg, d = _built(adapter)
    x, t, cond = _batch(d, cfg)
    base = _base(d)(x, t)
    assert torch.equal(d(x, t, cond), base)
    assert torch.equal(d(x, t, cond.absent()), base)
    assert torch.equal(d(x, t, cond.without(2)), base)


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_every_adapter_conditions_the_model_after_training_and_survives_a_deep_copy(adapter):
    cfg, d = _built(adapter)
    step = DiffusionStep(d, cfg.denoiser)
    opt = torch.optim.Adam(d.parameters(), lr=3e-3)
    x, _, cond = _batch(d, cfg)
    g = torch.Generator().manual_seed(0)
    for _ in range(4):
        loss, _ = step({"x": x, "codes": cond.codes}, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, t, cond = _batch(d, cfg, seed=2)
    with torch.no_grad():
        y = d(x, t, cond)
        assert not torch.allclose(y, d(x, t, cond.absent()))
        twin = copy.deepcopy(d)  # the tokens adapter's hooks must follow the copy, not the original
        assert torch.equal(twin(x, t, cond), y)
        for p in twin.parameters():
            p.add_(1.0)
        assert torch.equal(d(x, t, cond), y)


@pytest.mark.slow
@pytest.mark.parametrize("adapter", ADAPTERS)
def test_fit_on_a_frozen_base_keeps_the_base_and_reloads(adapter, tmp_path):
    from factordiff.fit import fit

    cfg = tiny_config(
        **{
            "denoiser.adapter": adapter,
            "denoiser.train_base": False,
            "denoiser.token_dim": 16,
            "denoiser.branch_channels": [8, 16],
        }
    )
    result = fit(cfg, tmp_path / "run", progress=False)
    base = load_tensors(tmp_path / "run" / "model" / "base.safetensors")
    unet = result.model.denoiser.unet.state_dict()
    assert base and all(torch.equal(base[f"unet.{k}"], v) for k, v in unet.items())
    trained = load_tensors(tmp_path / "run" / "model" / "denoiser.safetensors")
    adapter_keys = [k for k in trained if not k.startswith(("unet.", "base."))]
    assert adapter_keys and any(trained[k].abs().sum() > 0 for k in adapter_keys)
    logs = (tmp_path / "run" / "train_log.jsonl").read_text()
    assert '"stage": "base"' in logs and '"stage": "denoiser"' in logs
    loaded = FactorModel.load(tmp_path / "run" / "model")
    x, t, cond = _batch(loaded.denoiser, cfg)
    with torch.no_grad():
        assert torch.equal(loaded.denoiser(x, t, cond), result.model.denoiser(x, t, cond))
