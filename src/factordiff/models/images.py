"""FactorModel: the trained bundle (encoder, optional autoencoder, denoiser, value prototypes) and
the operations users call on it: codes, inversion, generation and counterfactual edits.

A model folder holds ``config.json`` (the run config, the factors and derived numbers) and one
safetensors file per part, as diffusers' ``save_pretrained`` folders do.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from factordiff.checkpoint import atomic_save_tensors, atomic_write_json, load_tensors, model_meta, read_json
from factordiff.config import RunConfig, from_dict, saved_before
from factordiff.data.sources import traits
from factordiff.diffusion.adapters import TimeEmbeddingAdapter, TokenAdapter, token_channels
from factordiff.diffusion.autoencoder import build_autoencoder, latent_size
from factordiff.diffusion.condition import Condition
from factordiff.diffusion.control import ControlBranch, Controlled
from factordiff.diffusion.daed import DenoisingAutoencoder, build_daed
from factordiff.diffusion.denoiser import Denoiser, build_unet
from factordiff.diffusion.guidance import Guidance
from factordiff.diffusion.head import ClassifierGuidance, ClassifierHead
from factordiff.diffusion.sampling import ddpm_invert, invert, noise_to, sample
from factordiff.encoders.distill import FactorDistiller
from factordiff.encoders.metadata import axis_positions
from factordiff.encoders.perturbation import StructureCodes, perturbation_features
from factordiff.encoders.unsupervised import (
    CodeBasis,
    GradientEstimatorDenoiser,
    NullConditioned,
    SegmentEncoder,
    zero_output,
)
from factordiff.errors import FactordiffError
from factordiff.factors import FactorSpec
from factordiff.train import map_batches

CONFIG = "config.json"
PROTOTYPES = "prototypes.safetensors"
MEAN_CODE = "__mean_code__"  # key of the mean code in prototypes.safetensors


def to_unit(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float32 (N, C, H, W) in [-1, 1]."""
    x = torch.as_tensor(images)
    return x.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (N, C, H, W) in [-1, 1] -> uint8 (N, H, W, C)."""
    return x.detach().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


@dataclass
class ModelShape:
    """What the parts were built for: image channels and size, and the latent scale."""

    channels: int
    size: int
    latent_scale: float = 1.0


def code_part(cfg: RunConfig) -> str:
    """Name of the part that maps images to codes: the supervised distiller or the unsupervised encoder."""
    return "encoder" if cfg.unsupervised.enabled else "distiller"


def build_encoder(cfg: RunConfig, spec: FactorSpec, shape: ModelShape) -> torch.nn.Module:
    if cfg.unsupervised.enabled:
        u = cfg.unsupervised
        return SegmentEncoder(
            shape.channels, shape.size, u.segments, u.code_dims, u.width, unmix=u.unmix != "none"
        )
    return FactorDistiller(
        spec.sizes,
        [f.kind == "ordinal" for f in spec.factors],
        shape.channels,
        shape.size,
        cfg.distill.code_dims,
        cfg.distill.width,
        cfg.distill.ordinal_dims,
    )


def denoiser_space(cfg: RunConfig, shape: ModelShape) -> tuple[int, int]:
    """Channels and size of what the denoiser sees: the latent, or the image in pixel space."""
    if cfg.autoencoder.enabled:
        return cfg.autoencoder.latent_channels, latent_size(cfg.autoencoder, shape.size)
    return shape.channels, shape.size


def build_base(cfg: RunConfig, shape: ModelShape) -> Denoiser:
    """The unconditional denoiser that the unsupervised encoder's branch sits on."""
    return Denoiser(build_unet(cfg.denoiser, *denoiser_space(cfg, shape)))


def _shift(
    cfg: RunConfig,
    shape: ModelShape,
    blocks: int,
    code_dims: int,
    branch_channels: list[int],
    segmented: bool,
    base: torch.nn.Module | None = None,
    tokens: bool = False,
    basis: CodeBasis | None = None,
) -> GradientEstimatorDenoiser:
    """A base UNet (``base``, or a new unconditional one) plus a code-conditioned branch UNet whose
    prediction is added to the base's; the branch reads the code through its time embedding, or with
    ``tokens`` one token per block read by cross-attention."""
    channels, size = denoiser_space(cfg, shape)
    unet = build_unet(replace(cfg.denoiser, block_out_channels=list(branch_channels)), channels, size)
    branch = zero_output(Denoiser(unet, _adapter(cfg, unet, blocks, code_dims, tokens)))
    return GradientEstimatorDenoiser(
        build_base(cfg, shape) if base is None else base,
        branch,
        cfg.denoiser.num_train_timesteps,
        segmented,
        basis,
    )


def build_structure(cfg: RunConfig, spec: FactorSpec) -> StructureCodes | None:
    """``denoiser.structure``'s module: the factor's values' Morgan fingerprints (the built-in
    assay's compounds by name, other values read as SMILES), its control its own code."""
    name = cfg.denoiser.structure
    if name is None:
        return None
    if cfg.unsupervised.enabled:
        raise FactordiffError(
            "denoiser.structure: needs the supervised distiller (its posterior over the factor's values); "
            "unsupervised.enabled is true"
        )
    if name not in spec.names:
        raise FactordiffError(
            f"denoiser.structure: unknown factor {name!r}; expected one of {', '.join(spec.names)}"
        )
    k = spec.position(name)
    values = [str(v) for v in spec.factors[k].values]
    control = cfg.denoiser.structure_control
    if control not in values:
        raise FactordiffError(
            f"denoiser.structure_control: {name} has no value {control!r}; expected one of "
            f"{', '.join(values[:8])}"
        )
    features = perturbation_features("morgan", values, {control}, dict(traits(cfg).smiles))
    return StructureCodes(k, features, np.array([v == control for v in values]), cfg.distill.code_dims)


def build_dae(cfg: RunConfig, shape: ModelShape) -> DenoisingAutoencoder | None:
    """The run's DAED denoising autoencoder in the denoiser's space, or None (``daed.enabled``)."""
    if not cfg.daed.enabled:
        return None
    if cfg.unsupervised.enabled:
        raise FactordiffError("daed.enabled: DAED is for supervised runs, not with unsupervised.enabled")
    return build_daed(cfg.daed, cfg.denoiser, *denoiser_space(cfg, shape))


def _adapter(cfg: RunConfig, unet, blocks: int, code_dims: int, tokens: bool) -> torch.nn.Module:
    """How ``unet`` reads ``blocks`` code blocks: one token per block read by cross-attention
    (``tokens``), or per-block MLPs summed into its time embedding (4 x its first block's width)."""
    dn = cfg.denoiser
    if tokens:
        return TokenAdapter(blocks, code_dims, dn.token_dim, token_channels(unet), dn.adapter_hidden)
    return TimeEmbeddingAdapter(blocks, code_dims, unet.config.block_out_channels[0] * 4, dn.adapter_hidden)


def _conditioned(cfg: RunConfig, shape: ModelShape, blocks: int) -> torch.nn.Module:
    """A UNet conditioned on ``blocks`` code blocks through ``denoiser.adapter``."""
    dn, dims = cfg.denoiser, cfg.distill.code_dims
    if dn.adapter == "shift":
        return _shift(cfg, shape, blocks, dims, dn.branch_channels, segmented=False)
    unet = build_unet(dn, *denoiser_space(cfg, shape))
    return Denoiser(unet, _adapter(cfg, unet, blocks, dims, dn.adapter == "tokens"))


def build_denoiser(cfg: RunConfig, spec: FactorSpec, shape: ModelShape) -> torch.nn.Module:
    """The conditioned denoiser: the unsupervised encoder's segmented branch, or the supervised
    codes through ``denoiser.adapter`` (with ``denoiser.structure``, its ``structure`` submodule
    makes the perturbation's block; it trains and is saved with the denoiser)."""
    dn = cfg.denoiser
    if cfg.unsupervised.enabled:
        if dn.head:
            raise FactordiffError(
                "denoiser.head: a classification head is for supervised runs (unsupervised.enabled)"
            )
        u = cfg.unsupervised
        base = None
        if u.base_blocks:  # a supervised model's denoiser, run through its null tokens
            base = NullConditioned(
                _conditioned(cfg, shape, u.base_blocks), u.base_blocks, cfg.distill.code_dims
            )
        return _shift(
            cfg,
            shape,
            u.segments,
            u.code_dims,
            u.branch_channels,
            segmented=True,
            base=base,
            tokens=u.adapter == "tokens",
            basis=CodeBasis(u.segments, u.code_dims) if u.unmix != "none" else None,
        )
    denoiser = _conditioned(cfg, shape, len(spec))
    structure = build_structure(cfg, spec)
    if structure is not None:
        denoiser.structure = structure
    if dn.head:
        if not isinstance(denoiser, Denoiser):
            raise FactordiffError(
                "denoiser.head: a classification head needs the embed or tokens adapter (not shift)"
            )
        ks = [spec.resolve(name) for name in dn.head]
        denoiser.add_head(
            ClassifierHead(
                token_channels(denoiser.unet), [spec.factors[k].size for k in ks], ks, dn.adapter_hidden
            )
        )
    return denoiser


def build_control(cfg: RunConfig, shape: ModelShape, denoiser: torch.nn.Module) -> ControlBranch | None:
    """``denoiser.control``'s ControlNet branch, a copy of ``denoiser``'s UNet encoder; None without."""
    if not cfg.denoiser.control:
        return None
    if not isinstance(denoiser, Denoiser):
        raise FactordiffError("denoiser.control: a controlled run needs the embed or tokens adapter")
    _, space = denoiser_space(cfg, shape)
    return ControlBranch(denoiser.unet, len(cfg.denoiser.control), shape.size // space)


def base_folder(name: str) -> Path:
    """The model folder that ``unsupervised.base`` names: a run folder, a model folder, or the name of
    a model shipped in the package (``shapes32``)."""
    folder = Path(name)
    shipped = Path(str(resources.files("factordiff") / "pretrained"))
    if not folder.exists() and "/" not in name:
        folder = shipped / name
    if not folder.is_dir():
        raise FactordiffError(
            f"unsupervised.base: {name}: no such folder; expected a supervised image run folder or a "
            f"shipped model ({', '.join(sorted(p.name for p in shipped.iterdir() if p.is_dir()))})"
        )
    return folder / "model" if (folder / "model" / CONFIG).is_file() else folder


def base_weights(config: RunConfig, name: str) -> dict[str, torch.Tensor]:
    """The weights of part ``name`` (``autoencoder`` or ``denoiser``) that an unsupervised model on
    a frozen base shares with it, read from the base (``unsupervised.base``): its autoencoder, and its
    denoiser under ``base.denoiser.``. For model folders saved without them (a shipped one:
    ``scripts/ship_pretrained.py`` leaves out what its base, shipped too, holds)."""
    base = base_folder(config.unsupervised.base or "")
    if not (base / f"{name}.safetensors").is_file():
        raise FactordiffError(
            f"unsupervised.base: {base} has no {name}.safetensors; expected the base the model was trained on"
        )
    state = load_tensors(base / f"{name}.safetensors")
    return state if name == "autoencoder" else {f"base.denoiser.{k}": v for k, v in state.items()}


class FactorModel:
    """Counterfactual generator over a FactorSpec.

    Args:
        config: the run config the parts were built from.
        spec: the factors.
        shape: image channels/size and latent scale.
        encoder: image -> codes (B, blocks, D): the supervised distiller (one block per factor) or
            the unsupervised segment encoder.
        autoencoder: the latent autoencoder, or None for pixel-space diffusion.
        denoiser: the conditioned UNet.
        prototypes: per factor, the mean code block of each value over the training images,
            (n_values, D), NaN rows for values no training image had (held out by the split).
        factor_blocks: the code block that carries each factor (the identity for the distiller;
            for the unsupervised encoder, the block that best predicts the factor).
        dae: a DAED run's denoising autoencoder (``diffusion/daed.py``), or None.
        control: a controlled run's ControlNet branch (``diffusion/control.py``), or None; the
            model's ``denoiser`` is then the base wrapped with it (or ``denoiser`` is already a
            ``Controlled``), and every pass needs the conditioning images (``control=`` of
            ``generate`` and ``invert``).
    """

    def __init__(
        self,
        config: RunConfig,
        spec: FactorSpec,
        shape: ModelShape,
        encoder,
        autoencoder,
        denoiser,
        prototypes: list[torch.Tensor] | None = None,
        factor_blocks: list[int] | None = None,
        dae: DenoisingAutoencoder | None = None,
        control: ControlBranch | None = None,
    ):
        self.config, self.spec, self.shape = config, spec, shape
        self.dae = dae
        if control is not None:
            denoiser = Controlled(denoiser, control)
        self.encoder, self.autoencoder, self.denoiser = encoder, autoencoder, denoiser
        self.prototypes = prototypes or []
        self.mean_code: torch.Tensor | None = None
        self.factor_blocks = list(factor_blocks) if factor_blocks is not None else list(range(len(spec)))
        for m in self.modules().values():
            m.eval().requires_grad_(False)

    def modules(self) -> dict[str, torch.nn.Module]:
        parts = {code_part(self.config): self.encoder, "denoiser": self.denoiser}
        if isinstance(self.denoiser, Controlled):
            parts.update(denoiser=self.denoiser.base, control=self.denoiser.branch)
        if self.autoencoder is not None:
            parts["autoencoder"] = self.autoencoder
        if self.dae is not None:
            parts["daed"] = self.dae
        return parts

    # --- codes -----------------------------------------------------------------------------
    @property
    def structure(self) -> StructureCodes | None:
        """The perturbation's structure codes (``denoiser.structure``), or None."""
        return getattr(self.denoiser, "structure", None)

    @torch.no_grad()
    def codes(self, images: np.ndarray) -> torch.Tensor:
        """Codes (N, K, D) of uint8 images (N, H, W, C); with ``denoiser.structure``, the
        perturbation's block is ``StructureCodes`` of the distiller's posterior."""
        self._check_images(images)
        return map_batches(lambda b: self.with_structure(self.encoder(to_unit(b))), images)

    def with_structure(self, codes: torch.Tensor) -> torch.Tensor:
        """The distiller's ``codes`` with the perturbation's block made by ``structure`` (if any)."""
        s = self.structure
        return codes if s is None else s(codes, s.posterior(self.encoder.logits(codes)[s.factor]))

    def _check_images(self, images: np.ndarray) -> None:
        want = (self.shape.size, self.shape.size, self.shape.channels)
        if images.ndim != 4 or images.shape[1:] != want:
            raise FactordiffError(
                f"images: expected (N, {want[0]}, {want[1]}, {want[2]}) for this model, got "
                f"{tuple(images.shape)}"
            )

    @torch.no_grad()
    def set_prototypes(self, codes: torch.Tensor, factors: np.ndarray) -> None:
        """Mean code block of every value of every factor, and the mean code, from codes and their
        value indices. ``fit`` passes the training images only: nothing held out reaches them."""
        self.prototypes = []
        self.mean_code = codes.mean(0)
        for k, f in enumerate(self.spec.factors):
            proto = torch.full((f.size, codes.shape[2]), float("nan"))
            table = (
                self.structure.table() if self.structure is not None and k == self.structure.factor else None
            )
            for v in range(f.size):
                m = torch.from_numpy(factors[:, k] == v)
                if (
                    m.any()
                ):  # a structure-coded value's code is its own, not the posterior's mean over its images
                    proto[v] = codes[m, self.factor_blocks[k]].mean(0) if table is None else table[v]
            self.prototypes.append(proto)

    def compose(
        self, values: np.ndarray, block: Callable[[int, int], torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Codes (N, blocks, D) for combinations of value indices (N, K): the mean code with each
        factor's block set to ``block(factor, value)``, by default the value's prototype."""
        block = block or self.prototype
        shape = (len(values), max(self.factor_blocks) + 1, self.prototypes[0].shape[1])
        codes = self.mean_code.expand(shape).clone() if self.mean_code is not None else torch.zeros(shape)
        for k in range(len(self.spec)):
            codes[:, self.factor_blocks[k]] = torch.stack([block(k, int(v)) for v in values[:, k]])
        return codes

    def seen_value(self, factor: int, value: int) -> bool:
        """Whether some training image had this value (so that it has a mean code of its own)."""
        return bool(self.prototypes) and not torch.isnan(self.prototypes[factor][value]).any()

    def has_prototype(self, factor: int, value: int) -> bool:
        """Whether the model has a code for this value: some training image had it, or the factor is
        continuous (ordinal) and the code comes from the value itself (``value_code``)."""
        return self.seen_value(factor, value) or self.value_code(factor, value) is not None

    def prototype(self, factor: int, value: int) -> torch.Tensor:
        """The value's code block: the mean code of its training images, or for a value of a
        continuous factor that no training image had, ``value_code``."""
        if self.seen_value(factor, value):
            return self.prototypes[factor][value]
        code = self.value_code(factor, value)
        if code is None:
            f = self.spec.factors[factor]
            raise FactordiffError(
                f"{f.name}={f.values[value]}: no training image had this value, so it has no prototype code; "
                "pass a reference image with --from"
            )
        return code

    def value_code(self, factor: int, value: int) -> torch.Tensor | None:
        """The code block of a continuous (ordinal) factor's value that no training image had, from
        the value alone; None for a categorical factor, a seen value, or fewer than two seen values.

        On the factor's axis (``axis_positions``: log for doses, linear otherwise, fitted on the
        training values), between two training values the code is linear between their prototypes;
        beyond them it continues the least-squares line of every training value's prototype over
        the axis (as the distiller's ordinal axis continues its line). Only the training images'
        prototypes are read, so nothing held out shapes it."""
        f = self.spec.factors[factor]
        if f.kind != "ordinal" or not self.prototypes or self.seen_value(factor, value):
            return None
        proto = self.prototypes[factor]
        seen = ~torch.isnan(proto).any(1).numpy()
        if seen.sum() < 2:
            return None
        pos = axis_positions(FactorSpec((f,)), [seen])[0].double()
        x, known = float(pos[value]), torch.from_numpy(np.flatnonzero(seen))
        px, py = pos[known], proto[known].double()
        below, above = known[px < x], known[px > x]
        if len(below) and len(above):
            lo, hi = below[pos[below].argmax()], above[pos[above].argmin()]
            w = (x - pos[lo]) / (pos[hi] - pos[lo])
            return ((1 - w) * proto[lo].double() + w * proto[hi].double()).float()
        xc = px - px.mean()
        slope = (xc[:, None] * (py - py.mean(0))).sum(0) / (xc * xc).sum()
        return (py.mean(0) + slope * (x - px.mean())).float()

    # --- latent space ----------------------------------------------------------------------
    @torch.no_grad()
    def to_latent(self, x: torch.Tensor, desc: str | None = None) -> torch.Tensor:
        """Images in [-1, 1] -> the denoiser's space (scaled latent means, or the images);
        ``desc`` shows a progress bar."""
        if self.autoencoder is None:
            return x
        return map_batches(lambda b: self.autoencoder.encode(b) * self.shape.latent_scale, x, desc=desc)

    @torch.no_grad()
    def latents(self, images, desc: str | None = None) -> torch.Tensor:
        """uint8 images (an array, or images packed on disk) -> the denoiser's space, in batches."""
        return map_batches(lambda b: self.to_latent(to_unit(b)), images, desc=desc)

    @torch.no_grad()
    def from_latent(self, z: torch.Tensor) -> torch.Tensor:
        if self.autoencoder is None:
            return z
        return map_batches(lambda b: self.autoencoder.decode(b / self.shape.latent_scale), z)

    # --- diffusion -------------------------------------------------------------------------
    @torch.no_grad()
    def invert(
        self,
        images: np.ndarray,
        codes: torch.Tensor | None = None,
        steps: int = 50,
        strength: float = 1.0,
        present: torch.Tensor | None = None,
        control: np.ndarray | None = None,
        method: str | None = None,
    ) -> torch.Tensor:
        """Invert uint8 images to x_T (x_t at t = ``strength`` T) under their own codes (or
        ``codes``; the blocks where ``present`` is False absent); ``control``: a controlled run's
        conditioning images (N, H, W, C) uint8. ``method`` (None: the run's
        ``evaluate.edit_inversion``): ``ode``, the probability-flow ODE with ``denoiser.sampler``,
        (N, *latent); ``ddpm``, the edit-friendly DDPM inversion (``ddpm_invert``, seeded by
        ``train.seed``): x_t with one noise map per step stacked on dimension 1, (N, 1 + steps,
        *latent), which ``generate`` and everything that passes x_T on take as they take x_T."""
        method = self.config.evaluate.edit_inversion if method is None else method
        codes = self.codes(images) if codes is None else codes
        cond = self.condition(codes, present, control)
        z0 = self.to_latent(to_unit(images))
        if method == "ddpm":
            seed = torch.Generator().manual_seed(self.config.train.seed)
            return ddpm_invert(self.denoiser, z0, cond, self.config.denoiser, steps, strength, seed)
        if method != "ode":
            raise FactordiffError(f"inversion {method!r}: expected ode or ddpm")
        return invert(self.denoiser, z0, cond, self.config.denoiser, steps, strength)

    @torch.no_grad()
    def noised(
        self, images: np.ndarray, steps: int, strength: float, generator: torch.Generator
    ) -> torch.Tensor:
        """uint8 images noised to the start of a ``steps``-step chain at ``strength`` (``noise_to``)."""
        return noise_to(self.to_latent(to_unit(images)), self.config.denoiser, steps, strength, generator)

    @torch.no_grad()
    def generate(
        self,
        x_T: torch.Tensor,
        codes: torch.Tensor,
        steps: int = 50,
        guidance: Guidance | None = None,
        present: torch.Tensor | None = None,
        strength: float = 1.0,
        classifier: ClassifierGuidance | None = None,
        finish: bool = True,
        control: np.ndarray | None = None,
    ) -> np.ndarray:
        """Sample from x_T (an inversion's x_t at the same ``strength``, or a DDPM inversion's x_t
        and noise maps, whose chain it then retraces) under ``codes`` with ``denoiser.sampler``
        (and the head's ``classifier`` guidance); returns uint8 images. A DAED run's chain ends at
        its split and its denoising autoencoder finishes it (``finish`` False, or noise maps: the
        denoiser's own chain to t = 0). ``control``: a controlled run's conditioning images
        (N, H, W, C) uint8."""
        cond = self.condition(codes, present, control)
        maps = x_T.dim() == 5  # an edit-friendly inversion's x_t and noise maps (``invert``)
        dae = self.dae if finish and not maps else None
        out = [
            sample(
                self.denoiser,
                x_T[i : i + 256, 0] if maps else x_T[i : i + 256],
                cond.index(slice(i, i + 256)),
                self.config.denoiser,
                steps,
                guidance,
                strength,
                None if classifier is None else replace(classifier, targets=classifier.targets[i : i + 256]),
                dae,
                x_T[i : i + 256, 1:] if maps else None,
            )
            for i in range(0, len(x_T), 256)
        ]
        return to_uint8(self.from_latent(torch.cat(out)))

    def condition(
        self, codes: torch.Tensor, present: torch.Tensor | None = None, control: np.ndarray | None = None
    ) -> Condition:
        """The Condition of ``codes`` (every block present unless ``present`` says otherwise) with a
        controlled run's conditioning images; refuses them missing or unwanted in one line."""
        wanted = self.config.denoiser.control
        if bool(wanted) != (control is not None):
            raise FactordiffError(
                f"this run is controlled by {', '.join(wanted)}: pass its control images"
                if wanted
                else "control images: this run has no control branch (denoiser.control)"
            )
        if control is not None:
            want = (len(codes), self.shape.size, self.shape.size, len(wanted))
            if control.shape != want:
                raise FactordiffError(
                    f"control images: expected {want} ({', '.join(wanted)}), got {tuple(control.shape)}"
                )
            control = to_unit(control)
        return Condition.full(codes, control) if present is None else Condition(codes, present, control)

    @torch.no_grad()
    def denoise(
        self, images: np.ndarray, noise: float = 0.1, method: str = "daed", steps: int = 10, seed: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """uint8 ``images`` noised to ``noise`` of the schedule (seeded; the first time step of a
        ``steps``-step chain at that strength, ``noise_to``) and denoised with every factor absent:
        ``daed``, the run's denoising autoencoder in one pass; ``diffusion``, the denoiser's chain of
        ``steps`` steps. Returns (noised images, denoised images), uint8."""
        if method not in ("daed", "diffusion"):
            raise FactordiffError(f"--method {method}: expected daed or diffusion")
        if method == "daed" and self.dae is None:
            raise FactordiffError(
                "--method daed: this run has no denoising autoencoder; fit it with --model daed"
            )
        x_t = self.noised(images, steps, noise, torch.Generator().manual_seed(seed))
        codes = torch.zeros(len(images), *self.codes(images[:1]).shape[1:])  # every factor absent
        absent = torch.zeros(codes.shape[:2], dtype=torch.bool)
        out = self.generate(x_t, codes, steps, None, absent, strength=noise, finish=method == "daed")
        return to_uint8(self.from_latent(x_t)), out

    @torch.no_grad()
    def regenerate(
        self,
        images: np.ndarray,
        codes: torch.Tensor,
        new: torch.Tensor,
        steps: int = 50,
        guidance: Guidance | None = None,
        strength: float = 1.0,
        x_T: torch.Tensor | None = None,
    ) -> np.ndarray:
        """Invert uint8 ``images`` under ``codes`` to t = ``strength`` T (or start from their ``x_T``
        of that strength) and generate under ``new``: an edit, or with ``new`` = ``codes`` a
        reconstruction. Returns uint8 images."""
        x_T = self.invert(images, codes, steps, strength) if x_T is None else x_T
        return self.generate(x_T, new, steps, guidance, strength=strength)

    @torch.no_grad()
    def edit(
        self,
        images: np.ndarray,
        codes: torch.Tensor,
        new: torch.Tensor,
        steps: int = 50,
        guidance: Guidance | None = None,
        strength: float = 1.0,
        x_T: torch.Tensor | None = None,
        residual: bool | str | None = None,
    ) -> np.ndarray:
        """uint8 ``images`` with their ``codes`` changed to ``new``: ``regenerate``, or with
        ``residual`` (None: the run's ``evaluate.edit_residual``) the source plus the change that
        the model makes, G(x_T, new) - G(x_T, codes), both decoded from the same x_T with the same
        guidance in one batch. What the model cannot reconstruct of the source (its fine detail,
        what a latent autoencoder loses) is then kept as it was; the edit costs one more chain.
        ``residual="marginal"``: the same with only the factors of the changed factors' roles
        present in the inversion and both arms (``marginal_present``)."""
        residual = self.config.evaluate.edit_residual if residual is None else residual
        if not residual:
            return self.regenerate(images, codes, new, steps, guidance, strength, x_T)
        present = self.marginal_present(codes, new) if residual == "marginal" else None
        x_T = self.invert(images, codes, steps, strength, present) if x_T is None else x_T
        both = self.generate(
            torch.cat([x_T, x_T]),
            torch.cat([new, codes]),
            steps,
            guidance,
            None if present is None else torch.cat([present, present]),
            strength=strength,
        ).astype(np.float32)
        n = len(images)
        return np.clip(np.rint(images.astype(np.float32) + both[:n] - both[n:]), 0, 255).astype(np.uint8)

    def marginal_present(self, codes: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """(N, blocks) bool: the code blocks a marginal edit from ``codes`` to ``new`` conditions on,
        those of factors whose role (biological, technical) is a role of a changed factor, and any
        block no factor names. A batch swap is then the model's batch effect over every compound
        (what it learnt across all of them), not its image of this compound in that batch, a
        combination training may never have shown; a compound change is likewise marginal over
        batches."""
        changed = [k for k, b in enumerate(self.factor_blocks) if not torch.equal(codes[:, b], new[:, b])]
        roles = {self.spec.factors[k].role for k in changed}
        present = torch.ones(codes.shape[:2], dtype=torch.bool, device=codes.device)
        for k, b in enumerate(self.factor_blocks):
            present[:, b] = self.spec.factors[k].role in roles
        return present

    @torch.no_grad()
    def counterfactual(
        self,
        images: np.ndarray,
        factor: int,
        blocks: torch.Tensor,
        steps: int = 50,
        guidance: float = 1.0,
        x_T: torch.Tensor | None = None,
        codes: torch.Tensor | None = None,
        strength: float = 1.0,
        residual: bool | str | None = None,
    ) -> np.ndarray:
        """Each image with the code block of ``factor`` replaced by ``blocks`` ((D,) or (N, D)).

        The source is inverted under its own codes (to t = ``strength`` T; a given ``x_T`` must be
        of that strength), the block is swapped, and the same x_T is decoded under the new codes
        with guidance weight ``guidance`` on the changed block.
        """
        codes = self.codes(images) if codes is None else codes
        block = self.factor_blocks[factor]
        new = codes.clone()
        new[:, block] = blocks
        return self.edit(
            images, codes, new, steps, Guidance(factors={block: guidance}), strength, x_T, residual
        )

    # --- disk ------------------------------------------------------------------------------
    def save(self, folder: Path, extra: dict[str, Any] | None = None) -> None:
        folder = Path(folder)
        for name, m in self.modules().items():
            atomic_save_tensors(m.state_dict(), folder / f"{name}.safetensors")
        if self.prototypes:
            atomic_save_tensors(self.prototype_tensors(), folder / PROTOTYPES)
        meta = {
            **model_meta(),
            "kind": "images",
            "run": self.config.to_json(),
            "factors": self.spec.to_json(),
            "shape": vars(self.shape),
            "factor_blocks": self.factor_blocks,
            **(extra or {}),
        }
        atomic_write_json(folder / CONFIG, meta)

    def prototype_tensors(self) -> dict[str, torch.Tensor]:
        """What ``prototypes.safetensors`` holds: one (n_values, D) float32 tensor per factor name,
        and the mean code under ``MEAN_CODE``."""
        return {**{f.name: p for f, p in zip(self.spec.factors, self.prototypes)}, MEAN_CODE: self.mean_code}

    @classmethod
    def load(cls, folder: Path) -> "FactorModel":
        folder = Path(folder)
        if not (folder / CONFIG).is_file():
            raise FactordiffError(f"{folder}: no {CONFIG}; expected a model folder written by factordiff fit")
        meta = read_json(folder / CONFIG)
        try:
            config = from_dict(RunConfig, saved_before(meta["run"]), f"{folder / CONFIG}:run")
            spec = FactorSpec.from_json(meta["factors"])
            shape = ModelShape(**meta["shape"])
        except (KeyError, TypeError) as e:
            raise FactordiffError(f"{folder / CONFIG}: missing or malformed entry {e}") from None
        encoder = build_encoder(config, spec, shape)
        denoiser = build_denoiser(config, spec, shape)
        autoencoder = (
            build_autoencoder(config.autoencoder, shape.channels, shape.size)
            if config.autoencoder.enabled
            else None
        )
        dae = build_dae(config, shape)
        control = build_control(config, shape, denoiser)
        parts = {
            code_part(config): encoder,
            "denoiser": denoiser,
            **({"autoencoder": autoencoder} if autoencoder is not None else {}),
            **({"daed": dae} if dae is not None else {}),
            **({"control": control} if control is not None else {}),
        }
        lean = config.unsupervised.base_blocks > 0  # parts shared with the base may be left out
        for name, m in parts.items():
            path = folder / f"{name}.safetensors"
            state = {} if lean and name == "autoencoder" and not path.is_file() else load_tensors(path)
            if lean and (
                (name == "autoencoder" and not state)
                or (name == "denoiser" and not any(k.startswith("base.") for k in state))
            ):
                state = {**base_weights(config, name), **state}
            try:
                m.load_state_dict(state, strict=True)
            except RuntimeError as e:
                raise FactordiffError(
                    f"{folder / (name + '.safetensors')}: weights do not fit the config "
                    f"({str(e).splitlines()[0][:120]})"
                ) from None
        prototypes = None
        if (folder / PROTOTYPES).is_file():
            t = load_tensors(folder / PROTOTYPES)
            prototypes = [t[f.name] for f in spec.factors]
        model = cls(
            config,
            spec,
            shape,
            encoder,
            autoencoder,
            denoiser,
            prototypes,
            meta.get("factor_blocks"),
            dae,
            control,
        )
        if prototypes is not None:
            model.mean_code = t.get(MEAN_CODE)
        return model
