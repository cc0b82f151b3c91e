"""Joint Diffusion (Deja, Trzcinski & Tomczak 2023): one denoising UNet that also classifies.

``ClassifierHead`` reads the UNet's own features (the output of its mid block and of each up
block, averaged over space, concatenated) and returns logits for each head factor through one
hidden layer. It trains with the denoiser (``denoiser.head``): the loss adds ``head_weight`` times
the cross-entropy on the training images whose labels the head may see (``label_fraction`` of them,
drawn once with the run's seed; the codes and the denoiser see every training image as before), so
the UNet's features serve both jobs and unlabelled images still shape them.

The head reads the UNet run with every factor *absent* (the learned null embeddings or tokens):
given the factor codes the UNet would be told the answer. It reads noisy inputs at the diffusion
step's own t, so it gives p(y | x_t) at every noise level, which is what classifier guidance needs
(Dhariwal & Nichol 2021): ``classifier_gradient`` returns grad_x log p(y | x_t), and the sampler
adds it to the denoiser's prediction (``guided_classifier``). For v-prediction, with
x_t = alpha x_0 + sigma eps, the guided epsilon eps - w sigma grad is the guided v
v - w (sigma / alpha) grad.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from factordiff.diffusion.condition import Condition


class ClassifierHead(nn.Module):
    """Logits per head factor from the pooled mid- and up-block features of a ``UNet2DModel``.

    Args:
        channels: output channels of the mid block and of each up block, in call order.
        sizes: number of values of each head factor.
        factors: the head factors' positions in the run's spec (saved with the head).
        hidden: width of the hidden layer.
    """

    def __init__(self, channels: list[int], sizes: list[int], factors: list[int], hidden: int = 256):
        super().__init__()
        self.factors = list(factors)
        self.mlp = nn.Sequential(nn.Linear(sum(channels), hidden), nn.SiLU())
        self.outs = nn.ModuleList(nn.Linear(hidden, n) for n in sizes)
        self._features: list[torch.Tensor] | None = None

    def attach(self, unet) -> None:
        """Read the outputs of ``unet``'s mid block and up blocks (forward hooks)."""
        for block in [unet.mid_block, *unet.up_blocks]:
            block.register_forward_hook(_Reader(self))

    @contextmanager
    def reading(self):
        """Within this block, the UNet's forward passes leave their pooled features for ``logits``."""
        self._features = []
        try:
            yield
        finally:
            self._features = None

    def logits(self) -> list[torch.Tensor]:
        if not self._features:
            raise RuntimeError("ClassifierHead.logits: no UNet pass was read (use `with head.reading()`)")
        h = self.mlp(torch.cat(self._features, 1))
        return [out(h) for out in self.outs]


class _Reader:
    """Forward hook: the block's output averaged over space, kept while the head reads. An object
    rather than a closure, so that a deep copy of the denoiser hooks the copied head."""

    def __init__(self, head: ClassifierHead):
        self.head = head

    def __call__(self, module, args, output):
        if self.head._features is not None:
            self.head._features.append(output.float().mean((2, 3)))
        return output


def absent_condition(denoiser, x: torch.Tensor) -> Condition | None:
    """Every factor absent, for the rows of ``x`` (None for an unconditioned denoiser)."""
    adapter = denoiser.adapter
    if adapter is None:
        return None
    codes = x.new_zeros(len(x), adapter.num_factors, adapter.code_dims)
    return Condition(codes, torch.zeros(len(x), adapter.num_factors, dtype=torch.bool, device=x.device))


def classify(denoiser, x: torch.Tensor, t: torch.Tensor) -> list[torch.Tensor]:
    """The head's logits for noisy inputs ``x`` at time steps ``t``, every factor absent."""
    head = denoiser.head
    with head.reading():
        denoiser(x, t, absent_condition(denoiser, x))
        return head.logits()


def head_loss(
    denoiser,
    x_t: torch.Tensor,
    t: torch.Tensor,
    labels: torch.Tensor,
    mix: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Mean over head factors of the cross-entropy of ``labels`` (N, H) value indices; with ``mix``
    (``augment``'s partner labels and weights), each row's cross-entropies blended by its weight."""
    logits = classify(denoiser, x_t, t)
    total = 0.0
    for i, lg in enumerate(logits):
        ce = F.cross_entropy(lg, labels[:, i], reduction="none")
        if mix is not None:
            partner, lam = mix
            ce = lam * ce + (1 - lam) * F.cross_entropy(lg, partner[:, i], reduction="none")
        total = total + ce.mean()
    return total / len(logits)


def augment(
    x: torch.Tensor, labels: torch.Tensor, ops, gen: torch.Generator
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """A labelled batch augmented by ``ops`` (``denoiser.head_augment``): ``dihedral`` turns each
    image by 0-3 quarter turns after mirroring it or not; ``mixup`` blends each row, with
    probability 1/2, with another row of the batch by a weight uniform in [0, 1]. Returns the images
    and, with ``mixup``, (partner labels, weights) for ``head_loss``."""
    n, rows = len(x), (-1,) + (1,) * (x.ndim - 1)
    if "dihedral" in ops:
        turns = torch.randint(0, 4, (n,), generator=gen).to(x.device)
        mirror = torch.randint(0, 2, (n,), generator=gen).bool().to(x.device)
        x = torch.where(mirror.view(rows), x.flip(-1), x)
        x = sum(torch.where((turns == k).view(rows), x.rot90(k, (-2, -1)), 0) for k in range(4))
    if "mixup" not in ops:
        return x, None
    partner = torch.randperm(n, generator=gen)
    lam = torch.where(torch.rand(n, generator=gen) < 0.5, torch.rand(n, generator=gen), torch.ones(n))
    lam = lam.to(x.device)
    mixed = lam.view(rows) * x + (1 - lam.view(rows)) * x[partner]
    return mixed, (labels[partner.to(labels.device)], lam)


@dataclass(frozen=True)
class ClassifierGuidance:
    """Guide sampling toward ``targets`` (N,) values of head factor ``index`` with weight ``weight``."""

    index: int
    targets: torch.Tensor
    weight: float


def classifier_gradient(denoiser, x: torch.Tensor, t: torch.Tensor, g: ClassifierGuidance) -> torch.Tensor:
    """grad_x log p(y = target | x_t) of the head, per row."""
    with torch.enable_grad():
        x = x.detach().float().requires_grad_(True)
        logits = classify(denoiser, x, t.expand(len(x)) if t.ndim == 0 else t)[g.index]
        chosen = F.log_softmax(logits.float(), 1).gather(1, g.targets.view(-1, 1).to(x.device)).sum()
        return torch.autograd.grad(chosen, x)[0]


def guided_classifier(
    pred: torch.Tensor,
    grad: torch.Tensor,
    t: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    weight: float,
    prediction_type: str,
) -> torch.Tensor:
    """The prediction moved by classifier guidance (module docstring)."""
    a = alphas_cumprod.to(pred.device)[t.long()].float()
    alpha, sigma = a.sqrt(), (1 - a).sqrt()
    shape = (-1,) + (1,) * (pred.ndim - 1)
    alpha, sigma = (
        alpha.reshape(shape) if alpha.ndim else alpha,
        sigma.reshape(shape) if sigma.ndim else sigma,
    )
    if prediction_type == "v_prediction":
        return pred - weight * (sigma / alpha) * grad
    return pred - weight * sigma * grad
