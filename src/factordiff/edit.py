"""Counterfactual edits of single images, as the ``factordiff counterfactual`` command makes them."""

from __future__ import annotations

import numpy as np
import torch

from factordiff.data.shapes import resize_images
from factordiff.errors import FactordiffError
from factordiff.model import FactorModel


def fit_image(model: FactorModel, image: np.ndarray, where: str) -> np.ndarray:
    """Bring one (H, W, C) uint8 image to the model's size and channels, or say why it cannot be."""
    size, channels = model.shape.size, model.shape.channels
    if image.shape[0] != image.shape[1]:
        raise FactordiffError(f"{where}: image is {image.shape[1]}x{image.shape[0]}; expected a square image")
    if image.shape[2] == 4 and channels == 3:
        image = image[..., :3]  # drop alpha
    if image.shape[2] != channels:
        raise FactordiffError(f"{where}: image has {image.shape[2]} channel(s); this model expects {channels}")
    if image.shape[0] != size:
        if image.shape[0] % size:
            raise FactordiffError(f"{where}: image is {image.shape[0]}x{image.shape[0]}; expected {size}x{size} or a multiple of it")
        image = resize_images(image[None], size)[0]
    return image


def parse_sets(model: FactorModel, sets: list[str]) -> dict[int, int]:
    """``["object_hue=0.3", ...]`` -> {factor position: value index}, naming any unknown factor or value."""
    out = {}
    for item in sets:
        name, eq, value = item.partition("=")
        if not eq or not name or not value:
            raise FactordiffError(f"--set {item!r}: expected FACTOR=VALUE, e.g. {model.spec.names[0]}={model.spec.factors[0].values[0]}")
        k = model.spec.position(name.strip())
        out[k] = model.spec.factors[k].index(value.strip())
    return out


@torch.no_grad()
def edit_image(model: FactorModel, image: np.ndarray, sets: dict[int, int] | None = None, reference: np.ndarray | None = None, factors: list[int] | None = None, steps: int = 50, guidance: float = 1.0) -> np.ndarray:
    """The image with some factors changed: to given values (their prototype codes) or to the values
    a reference image has (its code blocks). Returns the edited (H, W, C) uint8 image."""
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
    from factordiff.diffusion.guidance import Guidance

    x_T = model.invert(image[None], codes, steps)
    return model.generate(x_T, new, steps, Guidance(factors={k: guidance for k in changed}))[0]
