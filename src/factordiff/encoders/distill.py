"""The supervised factor distiller: image -> one code block per known factor.

Each block is trained to carry its factor and nothing else:

- *carry*: a linear classifier on block k predicts factor k (cross-entropy);
- *order*: for an ordinal factor, the block's first axis regresses the value's position on the
  grid, scaled to [-1, 1], so unseen inner values land between their neighbours and the order
  of values is kept (extrapolated values continue the line). With ``ordinal_dims=1`` an
  ordinal factor's block *is* that position: its other axes are held at zero, so one code
  dimension carries the factor, as single-dimension metrics (MIG, DCI completeness) read it; a
  categorical factor's values always get a free ``code_dims``-dimensional embedding;
- *nothing else*: an adversary per block tries to predict every other factor from the block, and
  the encoder is trained through a gradient-reversal layer (Ganin & Lempitsky 2015) to defeat it.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from factordiff.encoders.backbone import ConvEncoder


class _ReverseGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight):
        ctx.weight = weight
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.weight * grad, None


def reverse_grad(x: torch.Tensor, weight: float) -> torch.Tensor:
    """Identity forward, gradient multiplied by ``-weight`` backward."""
    return _ReverseGrad.apply(x, weight)


class FactorDistiller(nn.Module):
    """Image (B, C, S, S) in [-1, 1] -> codes (B, K, D).

    Args:
        sizes: number of values of each factor.
        ordinal: whether each factor is ordinal (its block's first axis is ordered).
        in_channels, size: image channels and height/width.
        code_dims: D, dimensions of each block.
        width: channels of the backbone's first convolution.
        ordinal_dims: dimensions an ordinal factor's block uses (the rest of it is zero);
            ``None`` uses all ``code_dims``.
    """

    def __init__(
        self,
        sizes: list[int],
        ordinal: list[bool],
        in_channels: int,
        size: int,
        code_dims: int = 4,
        width: int = 32,
        ordinal_dims: int | None = None,
    ):
        super().__init__()
        self.sizes, self.ordinal, self.code_dims = list(sizes), list(ordinal), code_dims
        k = len(sizes)
        mask = torch.ones(k, code_dims)
        mask[torch.tensor(self.ordinal, dtype=torch.bool), ordinal_dims or code_dims :] = 0.0
        self.register_buffer("mask", mask, persistent=False)
        self.backbone = ConvEncoder(in_channels, size, width, out_dim=256)
        self.to_codes = nn.Linear(256, k * code_dims)
        self.classifiers = nn.ModuleList(nn.Linear(code_dims, n) for n in sizes)
        others = [sum(sizes) - n for n in sizes]
        self.adversaries = nn.ModuleList(
            nn.Sequential(nn.Linear(code_dims, 64), nn.SiLU(), nn.Linear(64, m)) for m in others
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_codes(self.backbone(x)).view(len(x), len(self.sizes), self.code_dims) * self.mask

    def logits(self, codes: torch.Tensor) -> list[torch.Tensor]:
        """Each block's class logits for its own factor."""
        return [clf(codes[:, k]) for k, clf in enumerate(self.classifiers)]

    def loss(
        self, x: torch.Tensor, y: torch.Tensor, adversary_weight: float = 0.1, order_weight: float = 1.0
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss on images ``x`` with value indices ``y`` (B, K); -1 marks a label the run
        may not read (``fit.known_factors``), left out of every term that would use it."""
        codes = self(x)
        carry = sum(_known_ce(lg, y[:, k]) for k, lg in enumerate(self.logits(codes))) / len(self.sizes)
        order = codes.new_zeros(())
        for k, n in enumerate(self.sizes):
            known = y[:, k] >= 0
            if self.ordinal[k] and n > 1 and known.any():
                order = order + F.mse_loss(codes[known, k, 0], 2.0 * y[known, k].float() / (n - 1) - 1.0)
        adv = codes.new_zeros(())
        for k, head in enumerate(self.adversaries):
            out = head(reverse_grad(codes[:, k], adversary_weight)).split(
                [n for j, n in enumerate(self.sizes) if j != k], dim=1
            )
            others = [j for j in range(len(self.sizes)) if j != k]
            adv = adv + sum(_known_ce(o, y[:, j]) for o, j in zip(out, others)) / max(1, len(others))
        adv = adv / len(self.sizes)
        small = 1e-3 * codes.pow(2).mean()
        total = carry + order_weight * order + adv + small
        return total, {"carry": carry.item(), "order": order.item(), "adversary": adv.item()}

    @torch.no_grad()
    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-factor accuracy of the block classifiers, (K,)."""
        pred = torch.stack([lg.argmax(1) for lg in self.logits(self(x))], 1)
        return (pred == y).float().mean(0)


def _known_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the rows whose value is known (``y`` >= 0; -1 marks a hidden label, as a
    semi-supervised run's unlabelled images have); zero when no row of the batch is known."""
    known = y >= 0
    return F.cross_entropy(logits[known], y[known]) if known.any() else logits.sum() * 0.0


class DistillStep(nn.Module):
    """Training step of the distiller for the training loop: images (uint8) and value indices."""

    def __init__(self, distiller: FactorDistiller, cfg):
        super().__init__()
        self.distiller, self.cfg = distiller, cfg

    def forward(
        self, batch: dict[str, torch.Tensor], gen: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        x = batch["images"].permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        return self.distiller.loss(x, batch["factors"], self.cfg.adversary_weight, self.cfg.order_weight)
