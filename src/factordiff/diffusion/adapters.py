"""How codes enter the denoiser (``denoiser.adapter``):

- ``embed``, ``TimeEmbeddingAdapter``: each factor's code block goes through its own small MLP and
  the sum is added to the UNet's time embedding (through diffusers' ``class_embed_type="identity"``
  input), so with ``resnet_time_scale_shift="scale_shift"`` every ResNet block's normalisation is
  modulated by the codes. The last layer of every MLP and every null embedding start at zero.
- ``tokens``, ``TokenAdapter``: one token per factor, read by cross-attention layers added to the
  UNet; their output projections start at zero.
- ``shift``: a second, smaller UNet that reads the codes through a ``TimeEmbeddingAdapter`` and
  adds its prediction to the base's (``encoders/unsupervised.GradientEstimatorDenoiser``, PDAE's
  gradient estimator); its output convolution starts at zero.

Each starts as an exact no-op: the adapted model equals the base model at initialisation.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from diffusers.models.attention_processor import Attention
from torch import nn

from factordiff.diffusion.condition import Condition


class TimeEmbeddingAdapter(nn.Module):
    """Codes (B, K, D) -> (B, E) vector added to the time embedding.

    Args:
        num_factors: K, the number of code blocks.
        code_dims: D, dimensions of each block.
        emb_dim: E, the UNet's time-embedding width (4 x its first block's channels).
        hidden: width of each factor's MLP.
    """

    def __init__(self, num_factors: int, code_dims: int, emb_dim: int, hidden: int = 256):
        super().__init__()
        self.num_factors, self.code_dims, self.emb_dim = num_factors, code_dims, emb_dim
        # K independent MLPs evaluated together: weights stacked along the factor axis.
        self.w1 = nn.Parameter(torch.randn(num_factors, code_dims, hidden) / code_dims**0.5)
        self.b1 = nn.Parameter(torch.zeros(num_factors, hidden))
        self.w2 = nn.Parameter(torch.zeros(num_factors, hidden, emb_dim))
        self.b2 = nn.Parameter(torch.zeros(num_factors, emb_dim))
        self.null = nn.Parameter(torch.zeros(num_factors, emb_dim))  # learned "factor absent"

    def factor_embeddings(self, cond: Condition) -> torch.Tensor:
        """Per-factor embeddings (B, K, E), the null embedding where a factor is absent."""
        if cond.codes.shape[1:] != (self.num_factors, self.code_dims):
            raise ValueError(
                f"adapter expects codes of shape (batch, {self.num_factors}, {self.code_dims}), got "
                f"{tuple(cond.codes.shape)}"
            )
        h = nn.functional.silu(torch.einsum("bkd,kdh->bkh", cond.codes, self.w1) + self.b1)
        e = torch.einsum("bkh,khe->bke", h, self.w2) + self.b2
        return torch.where(cond.present[..., None], e, self.null.expand_as(e))

    def forward(self, cond: Condition) -> torch.Tensor:
        return self.factor_embeddings(cond).sum(1)


class TokenAdapter(TimeEmbeddingAdapter):
    """Codes (B, K, D) -> one token per factor (B, K, E), read by cross-attention layers added to the
    UNet (``attach``): after its mid block and after each up block at ``resolutions``.

    Each factor's token is its MLP's output, or its learned null token where the factor is absent.
    Each added layer is diffusers' ``Attention`` with group norm, a residual connection and its
    output projection zeroed, so it returns its input unchanged at initialisation: the adapted
    model is the base model exactly. The tokens themselves start random (not zero), so that the
    first steps' gradients reach every part. ``forward`` adds nothing to the time embedding.

    Args:
        num_factors, code_dims, hidden: as ``TimeEmbeddingAdapter``.
        token_dim: E, the width of each token.
        channels: output channels of the UNet's mid block and of each up block, in call order.
        heads: attention heads of each added layer.
    """

    def __init__(
        self,
        num_factors: int,
        code_dims: int,
        token_dim: int,
        channels: list[int],
        hidden: int = 256,
        heads: int = 4,
    ):
        super().__init__(num_factors, code_dims, token_dim, hidden)
        nn.init.normal_(self.w2, std=hidden**-0.5)
        nn.init.normal_(self.null, std=1.0)
        self.layers = nn.ModuleList(
            Attention(
                query_dim=c,
                cross_attention_dim=token_dim,
                heads=heads,
                dim_head=max(c // heads, 8),
                norm_num_groups=min(32, c),
                residual_connection=True,
            )
            for c in channels
        )
        for layer in self.layers:
            nn.init.zeros_(layer.to_out[0].weight)
            nn.init.zeros_(layer.to_out[0].bias)
        self._tokens: torch.Tensor | None = None

    def attach(self, unet) -> None:
        """Register the cross-attention layers on ``unet``'s mid block and up blocks (forward hooks)."""
        blocks = [unet.mid_block, *unet.up_blocks]
        if len(blocks) != len(self.layers):
            raise ValueError(f"TokenAdapter has {len(self.layers)} layers for {len(blocks)} UNet blocks")
        for i, block in enumerate(blocks):
            block.register_forward_hook(_CrossAttentionHook(self, i))

    @contextmanager
    def tokens(self, cond: Condition):
        """Within this block, the UNet's added layers attend to ``cond``'s tokens."""
        self._tokens = self.factor_embeddings(cond)
        try:
            yield
        finally:
            self._tokens = None


class _CrossAttentionHook:
    """Forward hook: the block's output through the adapter's ``index``-th layer, attending to the
    current tokens (none set: the output unchanged). An object rather than a closure, so that a
    deep copy of the denoiser hooks the copied adapter."""

    def __init__(self, adapter: TokenAdapter, index: int):
        self.adapter, self.index = adapter, index

    def __call__(self, module, args, output):
        tokens = self.adapter._tokens
        return (
            output
            if tokens is None
            else self.adapter.layers[self.index](output, encoder_hidden_states=tokens).contiguous()
        )


def token_channels(unet) -> list[int]:
    """Output channels of a UNet2DModel's mid block and up blocks, in call order."""
    out = list(reversed(unet.config.block_out_channels))
    return [out[0], *out]
