"""Latent diffusion over sets (after scLDM): a population of cells as one sample.

A set is the cells of a field or a well, each cell a feature vector; the cells are exchangeable.

- ``SetAutoencoder``: the encoder embeds every cell with one MLP and lets ``tokens`` learned queries
  attend over the cells (Set Transformer's pooling by multihead attention, Lee et al. 2019), so
  the K latent tokens do not depend on the order of the cells (or on padding, which is masked).
  The decoder draws one Gaussian query per output cell and lets it attend to the tokens: the cells
  are independent given the tokens, any number of them can be drawn, and permuting the queries
  permutes the cells. No cell of the output corresponds to a cell of the input, so the loss is a
  distance between distributions: the energy distance between the decoded and the input set
  (Szekely & Rizzo), which is zero only when the two laws agree.
- ``SetTokenDenoiser``: a small diffusion transformer over the K tokens (DiT blocks with adaptive
  layer norm, Peebles & Xie 2023), behind the ``denoiser(x, t, cond)`` interface of every
  denoiser here, so ``objective.DiffusionStep``, classifier-free guidance per factor
  (``guidance.py``) and the samplers (``sampling.py``) work on it unchanged.
"""

from __future__ import annotations

import torch
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import nn

from factordiff.diffusion.adapters import TimeEmbeddingAdapter
from factordiff.diffusion.condition import Condition
from factordiff.diffusion.mlp import conditioned_time


def _mlp(inp: int, width: int, out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(inp, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, out)
    )


def energy_distance(a: torch.Tensor, b: torch.Tensor, mask_a=None, mask_b=None) -> torch.Tensor:
    """Per set, the (V-statistic) energy distance 2 E|A-B| - E|A-A'| - E|B-B'| between the cells of
    ``a`` (S, N, F) and ``b`` (S, M, F), padding excluded by the bool masks (S, N) / (S, M)."""
    ma = torch.ones(a.shape[:2], device=a.device) if mask_a is None else mask_a.float()
    mb = torch.ones(b.shape[:2], device=b.device) if mask_b is None else mask_b.float()

    def mean_dist(x, y, wx, wy):
        d = torch.cdist(x, y)
        w = wx[:, :, None] * wy[:, None, :]
        return (d * w).sum((1, 2)) / w.sum((1, 2))

    return 2 * mean_dist(a, b, ma, mb) - mean_dist(a, a, ma, ma) - mean_dist(b, b, mb, mb)


class SetAutoencoder(nn.Module):
    """Cells (S, N, F) -> K tokens (S, K, D) -> any number of cells.

    Args:
        features: F, the features of a cell.
        tokens: K, latent tokens per set.
        dim: D, width of a latent token.
        width: hidden width.
        heads: attention heads.
        noise_dims: width of each output cell's Gaussian query.
    """

    def __init__(
        self,
        features: int,
        tokens: int = 8,
        dim: int = 16,
        width: int = 128,
        heads: int = 4,
        noise_dims: int = 16,
    ):
        super().__init__()
        self.features, self.tokens, self.dim, self.noise_dims = features, tokens, dim, noise_dims
        self.cell = _mlp(features, width, width)
        self.queries = nn.Parameter(torch.randn(tokens, width) * 0.02)
        self.pool = nn.MultiheadAttention(width, heads, batch_first=True)
        self.mix = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.0, batch_first=True)
        self.to_latent = nn.Linear(width, dim)
        self.from_latent = nn.Linear(dim, width)
        self.query = _mlp(noise_dims, width, width)
        self.read = nn.MultiheadAttention(width, heads, batch_first=True)
        self.out = _mlp(width, width, features)

    def encode(self, cells: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens (S, K, D) of sets ``cells`` (S, N, F); ``mask`` (S, N) True for real cells."""
        h = self.cell(cells)
        q = self.queries.expand(len(cells), -1, -1)
        pooled, _ = self.pool(q, h, h, key_padding_mask=None if mask is None else ~mask, need_weights=False)
        return self.to_latent(self.mix(pooled + q))

    def decode(self, tokens: torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` cells (S, n, F) of each set of ``tokens`` (S, K, D), one fresh Gaussian query each."""
        z = torch.randn(len(tokens), n, self.noise_dims, generator=generator).to(tokens)
        return self.decode_queries(tokens, z)

    def decode_queries(self, tokens: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The cells of the Gaussian queries ``z`` (S, n, noise_dims): permuting them permutes the cells."""
        memory = self.from_latent(tokens)
        q = self.query(z)
        read, _ = self.read(q, memory, memory, need_weights=False)
        return self.out(q + read)

    def loss(
        self, cells: torch.Tensor, mask: torch.Tensor | None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Mean over sets of the energy distance between each set and its decoding (as many cells)."""
        out = self.decode(self.encode(cells, mask), cells.shape[1], generator)
        return energy_distance(out, cells, None, mask).mean()


class _Block(nn.Module):
    """A DiT block: self-attention and an MLP, each after a layer norm scaled and shifted by the
    conditioning vector and gated (adaLN-Zero: the gates start at zero, so the block starts as the
    identity)."""

    def __init__(self, width: int, heads: int, emb_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.ada = nn.Linear(emb_dim, 6 * width)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        s1, b1, g1, s2, b2, g2 = self.ada(emb)[:, None].chunk(6, dim=2)
        x = self.norm1(h) * (1 + s1) + b1
        h = h + g1 * self.attn(x, x, x, need_weights=False)[0]
        return h + g2 * self.mlp(self.norm2(h) * (1 + s2) + b2)


class SetTokenDenoiser(nn.Module):
    """Predicts v (or epsilon) for noisy latent tokens ``x`` (S, K, D).

    Args:
        tokens: K.
        dim: D.
        width: transformer width.
        depth: DiT blocks.
        heads: attention heads.
        adapter: Condition -> (S, width) added to the time embedding; None: unconditional.
    """

    def __init__(
        self,
        tokens: int,
        dim: int,
        width: int = 128,
        depth: int = 4,
        heads: int = 4,
        adapter: TimeEmbeddingAdapter | None = None,
    ):
        super().__init__()
        self.emb_dim = width
        self.time_proj = Timesteps(width, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(width, width)
        self.inp = nn.Linear(dim, width)
        self.position = nn.Parameter(
            torch.randn(tokens, width) * 0.02
        )  # token slots are the encoder's queries
        self.blocks = nn.ModuleList(_Block(width, heads, width) for _ in range(depth))
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.out = nn.Linear(width, dim)
        self.adapter = adapter

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Condition | None = None) -> torch.Tensor:
        emb = conditioned_time(self, x, t, cond)
        h = self.inp(x) + self.position
        for block in self.blocks:
            h = block(h, emb)
        return self.out(self.norm(h))
