"""An unsupervised, diffusion-driven encoder: PDAE's gradient estimator on a frozen pretrained
unconditional denoiser, with DiffSiam's time-step-segmented code. No factor labels are used.

- PDAE (Zhang, Zhao & Lin, NeurIPS 2022): a pretrained unconditional denoiser stays frozen; an
  encoder E(x_0) -> z and a gradient-estimator branch G(x_t, t, z) are trained so that the base's
  prediction plus G fills the "posterior mean gap" that the code explains. The loss is the
  denoising loss on the combined prediction, weighted by snr^gamma / (1 + snr) with gamma = 0.1
  (PDAE's weighting, which favours the noisy, semantic end of the chain).
- DiffSiam's hierarchical code: z is cut into S segments switched on progressively with the time
  step: at step t the first ceil(S (t + 1) / T) segments are present and the others take their
  learned null embedding, so segment k has to carry what is lost between the noise levels where
  segments k - 1 and k switch on (fine details first, coarse attributes last).

The branch is a diffusers UNet2DModel whose output convolution starts at zero, so the combined model
equals the frozen base at initialisation; its code enters through the same TimeEmbeddingAdapter as
the supervised model's. The encoder maps images to codes (B, S, D) like the distiller, so every
metric, edit and report works on it.

Nothing in the loss fixes a basis inside a segment: any invertible map of a segment's D dimensions
that the branch undoes predicts as well, so a trained segment holds its factors mixed. ``CodeBasis``
(``unsupervised.unmix = "ica"``) is fitted once after training, on training images' codes and no
label: per segment, FastICA's unmixing to independent, unit-variance components. The encoder gives
the unmixed code and the branch mixes it back before it reads it, so the model predicts exactly as
before and only the code's coordinates change.
"""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import torch
from sklearn.decomposition import FastICA
from sklearn.exceptions import ConvergenceWarning
from torch import nn

from factordiff.diffusion.condition import Condition
from factordiff.diffusion.denoiser import Denoiser
from factordiff.diffusion.objective import noise_schedule
from factordiff.encoders.backbone import ConvEncoder


class CodeBasis(nn.Module):
    """Per segment, an affine change of the code's coordinates and its inverse: ``unmix(c)[k] =
    unmixing[k] (c[k] - center[k])`` and ``mix`` undoes it. Starts as the identity; ``fit`` sets it.

    A state dict saved before the basis existed (raw codes) loads as the identity.
    """

    def __init__(self, segments: int, code_dims: int):
        super().__init__()
        eye = torch.eye(code_dims).expand(segments, code_dims, code_dims)
        self.register_buffer("unmixing", eye.clone())
        self.register_buffer("mixing", eye.clone())
        self.register_buffer("center", torch.zeros(segments, code_dims))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        names = [prefix + n for n in self._buffers]
        if not any(n in state_dict for n in names):  # weights from before the basis: raw codes
            state_dict.update({n: b.clone() for n, b in zip(names, self._buffers.values())})
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def unmix(self, codes: torch.Tensor) -> torch.Tensor:
        return torch.einsum("ked,bkd->bke", self.unmixing, codes - self.center)

    def mix(self, codes: torch.Tensor) -> torch.Tensor:
        return torch.einsum("ked,bkd->bke", self.mixing, codes) + self.center

    @torch.no_grad()
    def fit(self, codes: np.ndarray, seed: int = 0) -> dict[str, float]:
        """FastICA per segment on raw codes (N, segments, D): independent components of unit
        variance. A segment whose spread is degenerate (a dimension with under 1e-6 of the largest
        variance) keeps the identity. Returns, per segment, FastICA's iterations (0: identity) and
        whether it converged (the basis of a segment that did not is still a whitening)."""
        log = {}
        for k in range(codes.shape[1]):
            x = codes[:, k].astype(np.float64)
            var = np.linalg.eigvalsh(np.cov(x, rowvar=False))
            if var.min() <= 1e-6 * var.max():
                log[f"ica_iterations_{k}"] = 0
                continue
            ica = FastICA(len(var), whiten="unit-variance", max_iter=2000, tol=1e-5, random_state=seed)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ConvergenceWarning)
                ica.fit(x)
            log[f"ica_converged_{k}"] = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
            self.unmixing[k] = torch.from_numpy(ica.components_).float()
            self.mixing[k] = torch.from_numpy(ica.mixing_).float()
            self.center[k] = torch.from_numpy(ica.mean_).float()
            log[f"ica_iterations_{k}"] = int(ica.n_iter_)
        return log


class SegmentEncoder(nn.Module):
    """Image (B, C, S, S) in [-1, 1] -> code (B, segments, code_dims); with ``unmix``, in the
    ``CodeBasis`` that ``basis`` holds."""

    def __init__(
        self, in_channels: int, size: int, segments: int, code_dims: int, width: int = 16, unmix: bool = False
    ):
        super().__init__()
        self.segments, self.code_dims = segments, code_dims
        self.backbone = ConvEncoder(in_channels, size, width, out_dim=256)
        self.to_codes = nn.Linear(256, segments * code_dims)
        self.basis = CodeBasis(segments, code_dims) if unmix else None

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """The code before the basis change."""
        return self.to_codes(self.backbone(x)).view(len(x), self.segments, self.code_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        codes = self.raw(x)
        return codes if self.basis is None else self.basis.unmix(codes)


def active_segments(t: torch.Tensor, segments: int, num_train_timesteps: int) -> torch.Tensor:
    """(B, segments) bool: segment k is present at step t iff k < ceil(segments * (t + 1) / T)."""
    t = t.reshape(-1).float()
    count = torch.ceil(segments * (t + 1) / num_train_timesteps).clamp(1, segments)
    return torch.arange(segments, device=t.device)[None] < count[:, None]


class GradientEstimatorDenoiser(nn.Module):
    """prediction(x, t, cond) = base(x, t) + branch(x, t, cond restricted to the active segments).

    Also the supervised ``shift`` adapter (``denoiser.adapter = "shift"``), with ``segmented``
    False: every code block the condition has present reaches the branch at every step.

    Args:
        base: the unconditional denoiser (a Denoiser without adapter, or a conditioned one wrapped
            in ``NullConditioned``); frozen at construction,
            trained only where a caller sets its parameters trainable (``denoiser.train_base``).
        branch: the code-conditioned gradient estimator (a Denoiser with adapter).
        num_train_timesteps: T, for the segment schedule.
        segmented: DiffSiam's schedule of code segments over the time steps.
        basis: the encoder's ``CodeBasis`` (a copy): codes are mixed back before the branch reads them.
    """

    def __init__(
        self,
        base: Denoiser,
        branch: Denoiser,
        num_train_timesteps: int,
        segmented: bool = True,
        basis: CodeBasis | None = None,
    ):
        super().__init__()
        self.base, self.branch, self.num_train_timesteps, self.segmented = (
            base,
            branch,
            num_train_timesteps,
            segmented,
        )
        self.basis = basis
        self.base.requires_grad_(False)

    @property
    def unet(self):
        return self.base.unet

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Condition | None = None) -> torch.Tensor:
        if cond is None:
            raise ValueError("this denoiser is conditioned: pass a Condition (codes and present mask)")
        if t.ndim == 0:
            t = t.expand(len(x))
        if self.basis is not None:
            cond = replace(cond, codes=self.basis.mix(cond.codes))
        if self.segmented:
            cond = Condition(
                cond.codes, cond.present & active_segments(t, cond.codes.shape[1], self.num_train_timesteps)
            )
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.base.unet.conv_out.weight.requires_grad):
            base = self.base(x, t)
        return base + self.branch(x, t, cond)


class NullConditioned(nn.Module):
    """A factor-conditioned denoiser run with every factor absent: through its learned null
    embeddings it is the unconditional model that classifier-free guidance uses, and so a base for
    the gradient estimator. Its state dict is the wrapped denoiser's under ``denoiser.``.

    Args:
        denoiser: the conditioned denoiser (any adapter).
        blocks: its number of factor blocks.
        code_dims: dimensions of each block.
    """

    def __init__(self, denoiser: nn.Module, blocks: int, code_dims: int):
        super().__init__()
        self.denoiser, self.blocks, self.code_dims = denoiser, blocks, code_dims

    @property
    def unet(self):
        return self.denoiser.unet

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Condition | None = None) -> torch.Tensor:
        codes = x.new_zeros(len(x), self.blocks, self.code_dims)
        return self.denoiser(
            x, t, Condition(codes, torch.zeros(codes.shape[:2], dtype=torch.bool, device=x.device))
        )


def zero_output(denoiser: Denoiser) -> Denoiser:
    """Zero the UNet's output convolution so the branch starts as an exact no-op."""
    nn.init.zeros_(denoiser.unet.conv_out.weight)
    nn.init.zeros_(denoiser.unet.conv_out.bias)
    return denoiser


class UnsupervisedStep(nn.Module):
    """Training step: encode x_0 (the image), noise its latent, and regress epsilon with PDAE's weighting.

    The frozen base and the branch predict in the base's parametrisation (v or epsilon); the error is
    measured on epsilon, eps_hat = sqrt(alpha_bar) v_hat + sqrt(1 - alpha_bar) x_t for v-prediction.
    """

    def __init__(
        self,
        encoder: SegmentEncoder,
        denoiser: GradientEstimatorDenoiser,
        prediction_type: str,
        schedule_cfg,
        snr_gamma: float = 0.1,
    ):
        super().__init__()
        self.encoder, self.denoiser = encoder, denoiser
        self.prediction_type, self.snr_gamma = prediction_type, snr_gamma
        self.schedule = noise_schedule(schedule_cfg)

    def forward(
        self, batch: dict[str, torch.Tensor], gen: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        x0 = batch["x"]
        codes = self.encoder(batch["images"].permute(0, 3, 1, 2).float().div(127.5).sub(1.0))
        noise = torch.randn(x0.shape, generator=gen).to(x0.device)
        t = torch.randint(0, self.schedule.config.num_train_timesteps, (len(x0),), generator=gen).to(
            x0.device
        )
        x_t = self.schedule.add_noise(x0, noise, t)
        pred = self.denoiser(x_t, t, Condition.full(codes))
        a2 = self.schedule.alphas_cumprod.to(x0.device)[t].view(-1, 1, 1, 1)
        eps = a2.sqrt() * pred + (1 - a2).sqrt() * x_t if self.prediction_type == "v_prediction" else pred
        snr = a2 / (1 - a2)
        weight = snr**self.snr_gamma / (1 + snr)
        loss = (weight * (eps - noise) ** 2).mean()
        return loss, {}


def align_blocks(codes, factors, seed: int = 0) -> list[int]:
    """For each factor, the code segment whose linear probe predicts it best (held-out accuracy).

    Only evaluation and editing use this alignment; it is fitted on training images after the
    encoder is trained, so no label ever reaches the encoder.
    """
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(codes))
    cut = int(0.7 * len(codes))
    tr, te = perm[:cut], perm[cut:]
    out = []
    for k in range(factors.shape[1]):
        scores = []
        for j in range(codes.shape[1]):
            x = codes[:, j]
            mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-8
            if len(np.unique(factors[tr, k])) < 2:
                scores.append(0.0)
                continue
            clf = LogisticRegression(max_iter=500).fit((x[tr] - mu) / sd, factors[tr, k])
            scores.append(clf.score((x[te] - mu) / sd, factors[te, k]))
        out.append(int(np.argmax(scores)))
    return out
