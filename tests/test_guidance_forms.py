"""Guidance forms (joint, composed, nested), the one-factor-alone dropout schedule and CoInD's
conditional-independence loss, on toy denoisers whose composition properties are known."""

import pytest
import torch

from factordiff.config import DenoiserConfig, load_config
from factordiff.diffusion.adapters import TimeEmbeddingAdapter
from factordiff.diffusion.condition import Condition
from factordiff.diffusion.denoiser import Denoiser, build_unet
from factordiff.diffusion.guidance import Guidance, guided_prediction
from factordiff.diffusion.objective import (
    DiffusionStep,
    coind_conditions,
    coind_residual,
    drop_factors,
    factor_pairs,
)
from factordiff.errors import FactordiffError

CFG = DenoiserConfig(block_out_channels=[16, 32], layers_per_block=1, adapter_hidden=16)


class ToyDenoiser(torch.nn.Module):
    """f0(x, t) + sum_k g_k(z_k) over present factors (absent ones contribute 0): additive, so its
    factors are exactly conditionally independent. ``interaction`` adds a product of the first two
    factors' terms, present only when both are, which breaks that."""

    def __init__(
        self,
        num_factors: int = 3,
        code_dims: int = 2,
        channels: int = 4,
        interaction: float = 0.0,
        seed: int = 0,
    ):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.proj = torch.randn(num_factors, code_dims, channels, generator=g)
        self.interaction = interaction
        self.calls = 0

    def forward(self, x, t, cond):
        self.calls += 1
        t = t.expand(len(x)) if t.ndim == 0 else t
        f0 = 0.5 * x + torch.cos(t.float() / 100).view(-1, 1, 1, 1)
        g = torch.einsum("bkd,kdc->bkc", cond.codes, self.proj) * cond.present[..., None]  # (B, K, C)
        out = f0 + g.sum(1)[:, :, None, None]
        if self.interaction:
            both = g[:, 0] * g[:, 1]  # zero unless factors 0 and 1 are both present
            out = out + self.interaction * both[:, :, None, None] * torch.tanh(x)
        return out


def unet_denoiser(num_factors: int, seed: int = 0) -> Denoiser:
    """The real UNet + adapter, with random (not zero) adapter outputs so that factors matter."""
    torch.manual_seed(seed)
    d = Denoiser(build_unet(CFG, 4, 8), TimeEmbeddingAdapter(num_factors, 2, 64, 16))
    with torch.no_grad():
        d.adapter.w2.normal_()
        d.adapter.null.normal_()
    return d


def batch(n=3, k=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, 4, 8, 8, generator=g),
        torch.randint(0, 1000, (n,), generator=g),
        Condition.full(torch.randn(n, k, 2, generator=g)),
    )


def pred(d, x, t, cond, **kw):
    with torch.no_grad():
        return guided_prediction(d, x, t, cond, Guidance(**kw))


def test_one_factor_composed_and_nested_equal_joint_with_the_same_weight():
    d = unet_denoiser(1)
    x, t, cond = batch(k=1)
    for w in (1.0, 2.5):
        joint = pred(d, x, t, cond, all=w)
        assert torch.allclose(pred(d, x, t, cond, factors={0: w}, form="composed"), joint, atol=1e-4)
        assert torch.allclose(pred(d, x, t, cond, factors={0: w}, form="nested"), joint, atol=1e-4)


def test_additive_denoiser_composed_and_nested_equal_joint_with_the_same_per_factor_weights():
    d = ToyDenoiser()
    x, t, cond = batch()
    w = {0: 2.0, 1: 0.5, 2: 3.0}
    joint = pred(d, x, t, cond, factors=w)
    assert torch.allclose(pred(d, x, t, cond, factors=w, form="composed"), joint, atol=1e-5)
    assert torch.allclose(pred(d, x, t, cond, factors=w, form="nested", order=(2, 0)), joint, atol=1e-5)
    # ... and with a weight on every factor, composed equals joint with w_all (ordinary CFG)
    assert torch.allclose(
        pred(d, x, t, cond, all=4.0, form="composed"), pred(d, x, t, cond, all=4.0), atol=1e-5
    )
    # a factor the condition marks absent stays absent in every term
    part = Condition(cond.codes, torch.tensor([[True, False, True]] * len(x)))
    assert torch.allclose(
        pred(d, x, t, part, factors=w, form="composed"), pred(d, x, t, part, factors=w), atol=1e-5
    )


def test_composed_differs_from_joint_for_a_non_additive_denoiser():
    d = ToyDenoiser(interaction=1.0)
    x, t, cond = batch()
    assert not torch.allclose(
        pred(d, x, t, cond, factors={0: 2.0, 1: 2.0}, form="composed"),
        pred(d, x, t, cond, factors={0: 2.0, 1: 2.0}),
        atol=1e-3,
    )


def test_neutral_weights_give_the_plain_conditional_prediction_where_they_should():
    d = unet_denoiser(3)
    x, t, cond = batch()
    with torch.no_grad():
        plain = d(x, t, cond)
    assert torch.equal(pred(d, x, t, cond), plain)  # joint, all weights 1: no extra rows at all
    assert torch.allclose(pred(d, x, t, cond, form="nested"), plain, atol=1e-4)  # telescopes to eps(c)
    assert torch.allclose(pred(d, x, t, cond, form="nested", order=(1, 2, 0)), plain, atol=1e-4)
    assert torch.allclose(
        pred(d, x, t, cond, all=0.0, form="composed"), pred(d, x, t, cond, all=0.0), atol=1e-4
    )  # both eps(null)
    # composed at weight 1 is eps(null) + sum_k (eps(c_k) - eps(null)): eps(c) only for an additive model
    toy = ToyDenoiser()
    assert torch.allclose(pred(toy, x, t, cond, form="composed"), toy(x, t, cond), atol=1e-5)
    assert not torch.allclose(pred(d, x, t, cond, form="composed"), plain, atol=1e-3)


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(all=2.0),
        dict(factors={1: 3.0}),
        dict(all=2.0, form="composed"),
        dict(factors={0: 2.0}, form="nested", order=(2,)),
    ],
)
def test_one_forward_pass_per_guided_prediction(kw):
    d = ToyDenoiser()
    x, t, cond = batch()
    pred(d, x, t, cond, **kw)
    assert d.calls == 1


def test_bad_form_and_order_are_refused():
    with pytest.raises(ValueError, match="Guidance.form"):
        Guidance(form="sum")
    x, t, cond = batch()
    with pytest.raises(ValueError, match="Guidance.order"):
        pred(ToyDenoiser(), x, t, cond, form="nested", order=(0, 0))
    with pytest.raises(FactordiffError, match="evaluate.guidance_form"):
        load_config(None, {"evaluate.guidance_form": "sum"})
    with pytest.raises(FactordiffError, match="denoiser.single_prob"):
        load_config(None, {"denoiser.single_prob": 1.5})


def _coind(d, x, t, codes, seed=0):
    i, j = factor_pairs(len(x), codes.shape[1], torch.Generator().manual_seed(seed))
    with torch.no_grad():
        preds = d(x.repeat(4, 1, 1, 1), t.repeat(4), coind_conditions(codes, i, j))
    return coind_residual(preds).pow(2).mean()


def test_coind_loss_is_zero_for_an_additive_denoiser_and_positive_otherwise():
    x, t, cond = batch(n=8)
    assert _coind(ToyDenoiser(), x, t, cond.codes) < 1e-10
    assert _coind(ToyDenoiser(interaction=1.0), x, t, cond.codes) > 1e-3
    assert _coind(unet_denoiser(3), x, t, cond.codes) > 1e-6


def test_diffusion_step_adds_the_coind_loss_in_the_same_forward_pass():
    x, _, cond = batch(n=8)
    for toy, zero in ((ToyDenoiser(), True), (ToyDenoiser(interaction=1.0), False)):
        step = DiffusionStep(toy, DenoiserConfig(coind_weight=1.0, coind_rows=6))
        loss, logs = step({"x": x, "codes": cond.codes}, torch.Generator().manual_seed(0))
        assert toy.calls == 1
        assert (logs["coind"] < 1e-10) == zero
        assert loss.item() == pytest.approx(logs["mse"] + logs["coind"], rel=1e-5)
    with pytest.raises(ValueError, match="at least two factors"):
        DiffusionStep(ToyDenoiser(1), DenoiserConfig(coind_weight=1.0))(
            {"x": x, "codes": cond.codes[:, :1]}, torch.Generator()
        )


class Recorder(torch.nn.Module):
    def forward(self, x, t, cond):
        self.present = cond.present
        return torch.zeros_like(x)


def test_with_singles_keeps_one_factor_alone_at_the_requested_rate():
    n, k = 4000, 4
    rec = Recorder()
    step = DiffusionStep(
        rec, DenoiserConfig(cond_dropout=0.0, dropout_schedule="with_singles", single_prob=0.3)
    )
    step({"x": torch.zeros(n, 1, 1, 1), "codes": torch.zeros(n, k, 2)}, torch.Generator().manual_seed(0))
    count = rec.present.sum(1)
    assert abs((count == 1).float().mean().item() - 0.3) < 0.03
    assert bool(((count == 1) | (count == k)).all())  # no dropout otherwise
    alone = rec.present[count == 1].float().mean(0)  # the kept factor is uniform
    assert torch.allclose(alone, torch.full((k,), 1 / k), atol=0.04)


def test_defaults_draw_exactly_the_random_numbers_they_always_did():
    """Default options: the same conditions, loss and generator state as the original step
    (noise, t, then drop_factors' two draws, nothing else)."""
    x, _, cond = batch(n=5)
    rec = Recorder()
    g = torch.Generator().manual_seed(3)
    DiffusionStep(rec, DenoiserConfig())({"x": x, "codes": cond.codes}, g)
    ref = torch.Generator().manual_seed(3)
    torch.randn(x.shape, generator=ref)
    torch.randint(0, 1000, (len(x),), generator=ref)
    present = drop_factors(cond.present, 0.1, ref)
    assert torch.equal(rec.present, present)
    assert torch.equal(g.get_state(), ref.get_state())


class TableEmbedder(torch.nn.Module):
    """Value indices (B, K) -> codes (B, K, 2), one learned row per factor value."""

    def __init__(self, num_factors: int, values: int = 5):
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(num_factors, values, 2))

    def forward(self, factors):
        return self.table[torch.arange(factors.shape[1]), factors]


def test_vector_denoiser_with_an_embedder_trains_with_singles_and_coind():
    """The MLP denoiser of profile tables (vectors, codes from an embedder) under every option."""
    from factordiff.diffusion.mlp import MLPDenoiser

    torch.manual_seed(0)
    d = MLPDenoiser(6, width=16, depth=1, adapter=TimeEmbeddingAdapter(3, 2, 16, 8))
    emb = TableEmbedder(3)
    cfg = DenoiserConfig(dropout_schedule="with_singles", single_prob=0.5, coind_weight=1.0)
    step = DiffusionStep(d, cfg, embedder=emb)
    b = {"x": torch.randn(8, 6), "factors": torch.randint(0, 5, (8, 3))}
    loss, logs = step(b, torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and set(logs) == {"mse", "coind"} and emb.table.grad is not None
