"""How codes enter the denoiser. ``TimeEmbeddingAdapter``: each factor's code block goes through its
own small MLP and the sum is added to the UNet's time embedding (through diffusers'
``class_embed_type="identity"`` input), so with ``resnet_time_scale_shift="scale_shift"`` every
ResNet block's normalisation is modulated by the codes.

The adapter starts as an exact no-op: the last layer of every MLP and every null embedding are
zero, so the adapted model equals the base model at initialisation.
"""

from __future__ import annotations

import torch
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
            raise ValueError(f"adapter expects codes of shape (batch, {self.num_factors}, {self.code_dims}), got {tuple(cond.codes.shape)}")
        h = nn.functional.silu(torch.einsum("bkd,kdh->bkh", cond.codes, self.w1) + self.b1)
        e = torch.einsum("bkh,khe->bke", h, self.w2) + self.b2
        return torch.where(cond.present[..., None], e, self.null.expand_as(e))

    def forward(self, cond: Condition) -> torch.Tensor:
        return self.factor_embeddings(cond).sum(1)
