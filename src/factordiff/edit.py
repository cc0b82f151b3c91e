"""Counterfactual edits of single images, as the ``factordiff counterfactual`` command makes them."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from factordiff.data.shapes import resize_images
from factordiff.diffusion.guidance import Guidance
from factordiff.diffusion.head import ClassifierGuidance
from factordiff.encoders.perturbation import CodeRegression, perturbation_features
from factordiff.errors import FactordiffError
from factordiff.models.images import FactorModel


def fit_image(model: FactorModel, image: np.ndarray, where: str, channels: int | None = None) -> np.ndarray:
    """Bring one (H, W, C) uint8 image to the model's size and channels (or ``channels``, e.g. a
    controlled run's control channels), or say why it cannot be."""
    size, channels = model.shape.size, channels or model.shape.channels
    if image.shape[0] != image.shape[1]:
        raise FactordiffError(f"{where}: image is {image.shape[1]}x{image.shape[0]}; expected a square image")
    if image.shape[2] == 4 and channels == 3:
        image = image[..., :3]  # drop alpha
    if image.shape[2] != channels:
        raise FactordiffError(
            f"{where}: image has {image.shape[2]} channel(s); this model expects {channels}"
        )
    if image.shape[0] != size:
        if image.shape[0] % size:
            raise FactordiffError(
                f"{where}: image is {image.shape[0]}x{image.shape[0]}; expected {size}x{size} "
                "or a multiple of it"
            )
        image = resize_images(image[None], size)[0]
    return image


def parse_sets(model: FactorModel, sets: list[str]) -> dict[int, int]:
    """``["object_hue=0.3", ...]`` -> {factor position: value index}, naming any unknown factor or value."""
    out = {}
    for item in sets:
        name, eq, value = item.partition("=")
        if not eq or not name or not value:
            raise FactordiffError(
                f"--set {item!r}: expected FACTOR=VALUE, e.g. "
                f"{model.spec.names[0]}={model.spec.factors[0].values[0]}"
            )
        k = model.spec.position(name.strip())
        out[k] = model.spec.factors[k].index(value.strip())
    return out


def edit_settings(
    e,
    spec,
    factors,
    strength: float | None = None,
    guidance: float | None = None,
    residual: bool | str | None = None,
) -> tuple[float, float, bool | str]:
    """(strength, guidance, residual) of an edit changing ``factors`` (positions in ``spec``) under
    the ``EvaluateConfig`` ``e``: its ``technical_*`` settings where every changed factor is
    technical and they are set, its general ones otherwise; a setting passed here (not None)
    overrides the run's."""
    technical = bool(factors) and all(spec.factors[k].role == "technical" for k in factors)

    def pick(given, tech, general):
        return given if given is not None else general if tech is None or not technical else tech

    return (
        pick(strength, e.technical_strength, e.edit_strength),
        pick(guidance, e.technical_guidance, e.guidance),
        pick(residual, e.technical_residual, e.edit_residual),
    )


@torch.no_grad()
def edit_image(
    model: FactorModel,
    image: np.ndarray,
    sets: dict[int, int] | None = None,
    reference: np.ndarray | None = None,
    factors: list[int] | None = None,
    steps: int = 50,
    guidance: float = 1.0,
    strength: float = 1.0,
    residual: bool | str | None = None,
) -> np.ndarray:
    """The image with some factors changed: to given values (their prototype codes) or to the values
    a reference image has (its code blocks), inverting it to t = ``strength`` T (``residual``:
    ``FactorModel.edit``). Returns the edited (H, W, C) uint8 image."""
    codes = model.codes(image[None])
    new = codes.clone()
    blocks = model.factor_blocks
    for k, v in (sets or {}).items():
        new[0, blocks[k]] = model.prototype(k, v)
    if reference is not None:
        ref = model.codes(reference[None])
        for k in factors or []:
            new[0, blocks[k]] = ref[0, blocks[k]]
    changed = sorted({blocks[k] for k in set(sets or {}) | set(factors or [])})
    if not changed:
        raise FactordiffError("nothing to change: pass --set FACTOR=VALUE or --from REF.png --factor FACTOR")
    return model.edit(
        image[None],
        codes,
        new,
        steps,
        Guidance(factors={k: guidance for k in changed}),
        strength,
        residual=residual,
    )[0]


@torch.no_grad()
def edit_blocks(
    model: FactorModel,
    images: np.ndarray,
    blocks: dict[int, torch.Tensor],
    steps: int = 50,
    guidance: float = 2.0,
    strength: float = 1.0,
    residual: bool | str | None = None,
    noise: torch.Generator | None = None,
) -> np.ndarray:
    """Images (N, H, W, C) uint8 with the code block of each factor in ``blocks`` (factor -> (D,)
    block) replaced: inversion under their own codes (to t = ``strength`` T; with a ``noise``
    generator, fresh noise to that t instead: ``FactorModel.noised``), regeneration under the new
    ones with guidance on the changed blocks (``residual``: ``FactorModel.edit``), in chunks of 64."""
    out = []
    for i in range(0, len(images), 64):
        x = images[i : i + 64]
        codes = model.codes(x)
        new = codes.clone()
        for k, b in blocks.items():
            new[:, model.factor_blocks[k]] = b
        out.append(
            model.edit(
                x,
                codes,
                new,
                steps,
                Guidance(factors={model.factor_blocks[k]: guidance for k in blocks}),
                strength,
                x_T=None if noise is None else model.noised(x, steps, strength, noise),
                residual=residual,
            )
        )
    return np.concatenate(out) if out else images[:0]


def compound_code(
    model: FactorModel, k: int, smiles: str, library: Mapping[str, str], control: str
) -> torch.Tensor:
    """A code block for a compound no training image had, from its structure: the Morgan
    ``CodeRegression`` (Tanimoto kernel ridge offset from the control's prototype, or a
    Tanimoto-weighted mean, whichever has the lower leave-one-out error) of the training compounds'
    prototype blocks on their fingerprints. Only prototypes (training images) are used. A run
    with ``denoiser.structure`` on this factor instead codes it as it codes every compound: its
    ``StructureCodes`` of the fingerprint, learned with the denoiser."""
    f = model.spec.factors[k]
    s = model.structure
    if s is not None and s.factor == k:
        return s.embedder.embed(torch.from_numpy(perturbation_features("morgan", [smiles], set())))[0]
    known = [
        v
        for v in range(f.size)
        if model.has_prototype(k, v) and str(f.values[v]) in library and str(f.values[v]) != control
    ]
    if len(known) < 3:
        raise FactordiffError(
            f"--set {f.name}={smiles}: fewer than three training compounds with structures "
            "to learn codes from"
        )
    fps = perturbation_features("morgan", [library[str(f.values[v])] for v in known] + [smiles], set())
    control_code = (
        model.prototype(k, f.index(control)).numpy()
        if control in map(str, f.values) and model.has_prototype(k, f.index(control))
        else None
    )
    regression = CodeRegression(
        "morgan", fps[:-1], torch.stack([model.prototype(k, v) for v in known]).numpy(), control_code
    )
    return torch.from_numpy(regression.predict(fps[-1:])[0]).float()


@torch.no_grad()
def classifier_edit(
    model: FactorModel,
    images: np.ndarray,
    factor: int,
    value: int | np.ndarray,
    steps: int = 20,
    guidance: float = 5.0,
    noise: float = 0.1,
    seed: int = 0,
    start: str = "noise",
) -> np.ndarray:
    """Joint Diffusion's visual counterfactual: ``images`` (N, H, W, C) uint8 noised to ``noise`` of
    the schedule (fresh seeded noise, t/T = 0.1 by default) and reconstructed in ``steps`` steps
    under their own codes with ``factor`` absent, guided by the classification head toward
    ``value`` (one value index, or one per image) with weight ``guidance``: the model adds or
    removes what the class needs. ``start`` ``source``: x_t is the DDIM inversion of the images
    under their own codes to the same level instead of fresh noise (deterministic; keeps more of
    the source)."""
    if start not in ("noise", "source"):
        raise FactordiffError(f"start {start!r}: expected noise or source")
    head = getattr(model.denoiser, "head", None)
    if head is None:
        raise FactordiffError(
            "--method classifier: this run has no classification head; fit it with --head FACTOR"
        )
    if factor not in head.factors:
        names = ", ".join(model.spec.factors[k].name for k in head.factors)
        raise FactordiffError(
            f"--method classifier: the head reads {names}, not {model.spec.factors[factor].name}"
        )
    codes = model.codes(images)
    present = torch.ones(codes.shape[:2], dtype=torch.bool)
    present[:, model.factor_blocks[factor]] = False
    if start == "source":
        x_t = model.invert(images, codes, steps, noise, method="ode")
    else:
        x_t = model.noised(images, steps, noise, torch.Generator().manual_seed(seed))
    values = torch.as_tensor(np.broadcast_to(np.asarray(value, dtype=np.int64), (len(images),)).copy())
    target = ClassifierGuidance(head.factors.index(factor), values, guidance)
    return model.generate(x_t, codes, steps, None, present, strength=noise, classifier=target, finish=False)
