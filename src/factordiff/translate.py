"""Image-to-image translation with a controlled run (``denoiser.control``): predicted images from
conditioning images alone (e.g. the five stains from a brightfield field), with the factor codes
of whatever metadata is known (``--set``) and every other factor absent."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import tifffile
import torch

from factordiff.diffusion.guidance import Guidance
from factordiff.errors import FactordiffError
from factordiff.models.images import FactorModel, denoiser_space


def translate(
    model: FactorModel,
    control: np.ndarray,
    values: dict[int, np.ndarray | int],
    samples: int = 8,
    steps: int = 20,
    seed: int = 0,
    guidance: Guidance | None = None,
) -> np.ndarray:
    """``samples`` draws from noise per conditioning image ``control`` (N, H, W, C) uint8, returned
    as (N, samples, H, W, channels) uint8. ``values``: factor position -> value index (one, or one
    per image, -1 where unknown) of the known metadata; those blocks are the values' prototypes,
    every other factor is absent. The noise is seeded by ``seed``."""
    if not model.config.denoiser.control:
        raise FactordiffError("translate: this run has no control branch; fit it with --control CHANNELS")
    n = len(control)
    codes, present = known_codes(model, n, values)
    channels, size = denoiser_space(model.config, model.shape)
    gen = torch.Generator().manual_seed(seed)
    x_T = torch.randn(n * samples, channels, size, size, generator=gen)
    out = model.generate(
        x_T,
        codes.repeat_interleave(samples, 0),
        steps,
        guidance,
        present.repeat_interleave(samples, 0),
        control=np.repeat(control, samples, axis=0),
    )
    return out.reshape(n, samples, *out.shape[1:])


def known_codes(
    model: FactorModel, n: int, values: dict[int, np.ndarray | int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes (n, blocks, D) and their present mask for ``n`` images of which only the metadata
    ``values`` is known (factor position -> one value index, or one per image, -1 where unknown):
    those blocks are the values' prototypes, every other block is absent (the mean code under it)."""
    codes = model.mean_code.expand(n, *model.mean_code.shape).clone()
    present = torch.zeros(codes.shape[:2], dtype=torch.bool)
    for k, v in values.items():
        v = np.broadcast_to(np.asarray(v), (n,))
        rows = np.flatnonzero(v >= 0)
        if len(rows):
            block = torch.stack([model.prototype(k, int(v[i])) for i in rows])
            codes[torch.from_numpy(rows), model.factor_blocks[k]] = block
            present[torch.from_numpy(rows), model.factor_blocks[k]] = True
    return codes, present


def write_translations(
    predicted: np.ndarray, stems: list[str], channels: tuple[str, ...], scale: int | None, out: Path
) -> None:
    """The folder ``out``: per image and channel the mean of its samples (``STEM_CHANNEL.tiff``) and
    each sample (``STEM_sK_CHANNEL.tiff``), 16-bit (``value * scale + scale / 2``) where the source
    was 16-bit (``scale``), 8-bit otherwise. Written beside and renamed, so nothing is half-written."""
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)

    def write(name: str, img: np.ndarray) -> None:
        pixels = (
            np.rint(img * scale + scale // 2).astype(np.uint16) if scale else np.rint(img).astype(np.uint8)
        )
        tifffile.imwrite(tmp / name, pixels)

    for stem, draws in zip(stems, predicted):
        mean = draws.astype(np.float64).mean(0)
        for c, name in enumerate(channels):
            write(f"{stem}_{name}.tiff", mean[..., c])
            for k, draw in enumerate(draws):
                write(f"{stem}_s{k}_{name}.tiff", draw[..., c].astype(np.float64))
    if out.exists():
        out.rmdir()
    tmp.replace(out)
