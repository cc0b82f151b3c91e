"""The set model (scLDM's building blocks): order invariance, equivariance, the energy loss, and
the token denoiser behind the common interface."""

from __future__ import annotations

import torch
from conftest import tiny_config

from factordiff.diffusion.adapters import TimeEmbeddingAdapter
from factordiff.diffusion.condition import Condition
from factordiff.diffusion.objective import DiffusionStep
from factordiff.diffusion.sampling import sample
from factordiff.diffusion.sets import SetAutoencoder, SetTokenDenoiser, energy_distance


def _sets(s=3, n=20, f=5, seed=0):
    return torch.randn(s, n, f, generator=torch.Generator().manual_seed(seed))


def test_the_encoder_ignores_the_order_of_cells_and_padding():
    torch.manual_seed(0)
    ae = SetAutoencoder(5, tokens=4, dim=6, width=32).eval()
    cells = _sets()
    perm = torch.randperm(20)
    with torch.no_grad():
        a, b = ae.encode(cells), ae.encode(cells[:, perm])
        padded = torch.cat([cells, torch.full((3, 7, 5), 1e3)], 1)
        mask = torch.cat([torch.ones(3, 20, dtype=torch.bool), torch.zeros(3, 7, dtype=torch.bool)], 1)
        c = ae.encode(padded, mask)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-5)


def test_the_decoder_permutes_with_its_queries_and_draws_any_number_of_cells():
    torch.manual_seed(0)
    ae = SetAutoencoder(5, tokens=4, dim=6, width=32, noise_dims=3).eval()
    tokens = torch.randn(2, 4, 6)
    z = torch.randn(2, 9, 3)
    perm = torch.randperm(9)
    with torch.no_grad():
        torch.testing.assert_close(
            ae.decode_queries(tokens, z)[:, perm], ae.decode_queries(tokens, z[:, perm])
        )
        assert ae.decode(tokens, 50).shape == (2, 50, 5)


def test_energy_distance_is_zero_for_one_law_and_grows_with_a_shift():
    x = _sets(s=2, n=400, seed=1)
    y = _sets(s=2, n=400, seed=2)
    same, moved = energy_distance(x, y), energy_distance(x, y + 1.0)
    assert torch.equal(energy_distance(x, x), torch.zeros(2))
    assert (same < 0.05).all() and (moved > 10 * same).all()
    mask = torch.ones(2, 400, dtype=torch.bool)
    mask[:, 200:] = False  # padding does not count
    torch.testing.assert_close(energy_distance(x[:, :200], y), energy_distance(x, y, mask, None))


def test_the_autoencoder_learns_to_tell_populations_apart():
    """Two kinds of set (cells around -1 or +1, each set its own spread): after training, each
    decoded set lies nearer its own input than the other kind's."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([-1.0, 1.0]).repeat(8)[:, None, None]
    cells = centres + 0.3 * torch.randn(16, 32, 4, generator=gen)
    ae = SetAutoencoder(4, tokens=2, dim=4, width=32)
    opt = torch.optim.Adam(ae.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        loss = ae.loss(cells, None, gen)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.3 * first
    with torch.no_grad():
        out = ae.decode(ae.encode(cells), 64, gen)
    own = energy_distance(out, cells)
    other = energy_distance(out, cells.roll(1, 0))  # neighbours are the other kind
    assert (own < other).all()


def test_the_token_denoiser_trains_and_samples_through_the_common_interface():
    cfg = tiny_config()
    torch.manual_seed(0)
    adapter = TimeEmbeddingAdapter(2, 3, 32, 16)
    d = SetTokenDenoiser(tokens=4, dim=6, width=32, depth=2, adapter=adapter)
    step = DiffusionStep(d, cfg.denoiser)
    loss, _ = step(
        {"x": torch.randn(5, 4, 6), "codes": torch.randn(5, 2, 3)}, torch.Generator().manual_seed(0)
    )
    loss.backward()
    assert torch.isfinite(loss) and d.inp.weight.grad.abs().sum() > 0
    cond = Condition.full(torch.randn(3, 2, 3))
    with torch.no_grad():
        out = sample(d.eval(), torch.randn(3, 4, 6), cond, cfg.denoiser, 3)
    assert out.shape == (3, 4, 6) and torch.isfinite(out).all()
