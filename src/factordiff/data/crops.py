"""Single-cell crop stacks: ``--data crops:STACK.npz``.

A stack is an ``.npz`` with key ``images``, an (N, H, W, C) array (uint8, uint16 or float, as
imaged), and an index table beside it (``STACK.csv``, or ``data.index``) whose row i describes
crop i: its ``Metadata_*`` columns (plate, well, compound, dose...) give the factors with the
profiles' grammar (``--factors``, ``--roles``, ``--holdout-where``), read as text.

The models work on uint8 images at a power-of-two size, so each plate's channels are scaled to
[0, 255] between their 0.1th and 99.9th percentiles (``Intensity``), fitted on that plate's
training crops only (held-out crops never set a scale; a plate without training crops takes the
mean of the training plates'), and resized to ``--size`` (default: the largest power of two that
fits the crop). With controls (``--controls F=V``), a plate's scale is instead the pooled
training crops' range carried through that plate's controls: its control pixels' 1st and 99th
percentiles matched to the pooled controls' (as profiles are normalised to their plate's
negative controls), so a plate's treatments never set its scale and treated cells brighter than
any control keep their range; a plate with no training control takes the mean scale.
``Intensity.raw`` undoes both, so regenerated crops are written back as the stack was: the
source's dtype, crop size and intensity scale (of the target plate where it is set).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from factordiff.data.base import FactorDataset
from factordiff.data.profiles import is_metadata, metadata_factors, plate_column
from factordiff.errors import FactordiffError
from factordiff.factors import FactorSpec

LOW, HIGH = 0.1, 99.9  # percentiles mapped to 0 and 255


@dataclass
class CropStack:
    """A crop stack as read: raw images (N, H, W, C), metadata as text, factors and channels."""

    images: np.ndarray
    metadata: dict[str, np.ndarray]
    spec: FactorSpec
    factors: np.ndarray
    channels: tuple[str, ...]
    source: str

    @property
    def plate(self) -> str | None:
        """The metadata column naming the plate (``*Plate``), None if there is none."""
        try:
            return plate_column(self)  # type: ignore[arg-type]
        except FactordiffError:
            return None


def read_crops(
    path: Path | str,
    index: Path | str | None = None,
    channels: list[str] | None = None,
    factors: list[str] | None = None,
    roles: dict[str, str] | None = None,
    positions: tuple[str, ...] = (),
) -> CropStack:
    """Read ``path`` (.npz, key ``images``) and its index table (``index``, else ``STACK.csv``);
    every bad input is one line naming the file and what was expected. ``positions``: metadata
    columns kept but never chosen as factors by default (a crop's field and pixel position)."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FactordiffError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "images" not in z.files:
                raise FactordiffError(f"{path}: no array 'images' (found {', '.join(z.files) or 'none'})")
            images = z["images"]
    except FactordiffError:
        raise
    except Exception as e:  # zipfile, numpy and OS errors for a corrupt file
        raise FactordiffError(f"{path}: cannot read the stack ({type(e).__name__}: {e})") from None
    if images.ndim != 4 or images.shape[1] != images.shape[2]:
        raise FactordiffError(
            f"{path}: images: expected an (N, H, W, C) array of square crops, got {images.shape}"
        )
    if not (images.dtype in (np.uint8, np.uint16) or np.issubdtype(images.dtype, np.floating)):
        raise FactordiffError(f"{path}: images: expected uint8, uint16 or float pixels, got {images.dtype}")
    if np.issubdtype(images.dtype, np.floating) and not np.isfinite(images).all():
        raise FactordiffError(f"{path}: images: expected finite pixel values, found NaN or infinity")
    n, c = len(images), images.shape[3]
    if channels and len(channels) != c:
        raise FactordiffError(
            f"--channels names {len(channels)} channel(s) ({', '.join(channels)}); {path} has {c}"
        )
    index = Path(index) if index else path.with_suffix(".csv")
    if not index.is_file():
        raise FactordiffError(f"{index}: no such file; the index table of {path.name} (or give --index)")
    try:
        meta = pd.read_csv(index, dtype=str, keep_default_na=False)
    except Exception as e:  # pandas raises many types for a corrupt table
        raise FactordiffError(f"{index}: cannot read the table ({type(e).__name__})") from None
    if len(meta) != n:
        raise FactordiffError(
            f"{index}: {len(meta)} rows, but {path.name} holds {n} crops; expected one row per crop"
        )
    meta_cols = [c for c in meta.columns if is_metadata(c)]
    if factors:
        missing = [f for f in factors if f not in meta.columns]
        if missing:
            raise FactordiffError(
                f"{index}: no column {', '.join(map(repr, missing))}; "
                f"metadata columns are {', '.join(meta_cols[:15])}"
            )
        meta_cols += [f for f in factors if f not in meta_cols]
    candidates = [c for c in meta_cols if c not in positions]
    spec, indices, _ = metadata_factors(index, meta, candidates, factors, roles)
    names = tuple(channels) if channels else tuple(f"ch{i + 1}" for i in range(c))
    return CropStack(images, {k: meta[k].to_numpy(str) for k in meta_cols}, spec, indices, names, str(path))


@dataclass
class Intensity:
    """Per plate and channel, the raw values mapped to 0 and 255 (``LOW`` and ``HIGH`` percentiles of
    the plate's training crops); ``plates`` empty: one scale for every crop."""

    column: str | None
    plates: list[str]
    low: np.ndarray  # (P, C)
    high: np.ndarray  # (P, C)
    dtype: str
    crop: int  # the stack's crop size

    def rows(self, plates: np.ndarray | None, n: int) -> np.ndarray:
        if not self.plates or plates is None:
            return np.zeros(n, np.int64)
        where = {p: i for i, p in enumerate(self.plates)}
        return np.asarray([where.get(str(p), len(self.plates)) for p in plates], np.int64)

    def _bounds(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        low = np.concatenate([self.low, self.low.mean(0, keepdims=True)])  # unknown plate: the mean
        high = np.concatenate([self.high, self.high.mean(0, keepdims=True)])
        return low[rows], high[rows]

    def to_uint8(self, images: np.ndarray, plates: np.ndarray | None) -> np.ndarray:
        """Raw crops (N, H, W, C) -> uint8 by each crop's plate's scale."""
        low, high = self._bounds(self.rows(plates, len(images)))
        out = np.empty(images.shape, np.uint8)
        for i in range(0, len(images), 1024):
            x = images[i : i + 1024].astype(np.float32)
            lo, hi = low[i : i + 1024, None, None, :], high[i : i + 1024, None, None, :]
            out[i : i + 1024] = np.clip(np.rint((x - lo) / (hi - lo) * 255.0), 0, 255)
        return out

    def raw(
        self, images: np.ndarray, plates: np.ndarray | None, detail: np.ndarray | None = None
    ) -> np.ndarray:
        """uint8 crops at any size -> the stack's crop size, dtype and the given plates' scale;
        ``detail`` (int16 at the crop size, ``detail``): added after the resize."""
        images = resize(images, self.crop).astype(np.float32)
        if detail is not None:
            images = np.clip(images + detail, 0, 255)
        low, high = self._bounds(self.rows(plates, len(images)))
        x = low[:, None, None, :] + images / 255.0 * (high - low)[:, None, None, :]
        if np.issubdtype(np.dtype(self.dtype), np.integer):
            info = np.iinfo(np.dtype(self.dtype))
            return np.clip(np.rint(x), info.min, info.max).astype(self.dtype)
        return x.astype(self.dtype)

    def to_json(self) -> dict:
        return {
            "column": self.column,
            "plates": self.plates,
            "low": self.low.tolist(),
            "high": self.high.tolist(),
            "dtype": self.dtype,
            "crop": self.crop,
        }


def _percentiles(stack: CropStack, rows: np.ndarray, q: tuple[float, ...], rng) -> np.ndarray:
    """Per channel percentiles ``q`` (len(q), C) of the crops ``rows`` (a bool mask), over at most
    2 million of their pixels."""
    idx = np.flatnonzero(rows)
    per = stack.images.shape[1] * stack.images.shape[2]
    take = idx if len(idx) * per <= 2_000_000 else rng.choice(idx, max(1, 2_000_000 // per), replace=False)
    pix = stack.images[np.sort(take)].reshape(-1, stack.images.shape[3]).astype(np.float32)
    return np.percentile(pix, q, axis=0)


def fit_intensity(
    stack: CropStack, train: np.ndarray, seed: int = 0, controls: np.ndarray | None = None
) -> Intensity:
    """``Intensity`` from the training crops (``train``), per plate and channel (percentiles over
    at most 2 million pixels of each); with ``controls`` (a bool mask of the control crops) each
    plate's scale comes from its training controls (module docstring)."""
    rng = np.random.default_rng(seed)
    column = stack.plate
    by_controls = controls is not None and column is not None and (train & controls).any()
    ref = train & controls if by_controls else train
    plates = sorted(set(stack.metadata[column][ref].tolist())) if column else []
    groups = [ref & (stack.metadata[column] == p) for p in plates] if column else [ref]
    if not by_controls:
        bounds = np.stack([_percentiles(stack, g, (LOW, HIGH), rng) for g in groups])
        low, high = bounds[:, 0], bounds[:, 1]
    else:  # the pooled training range, through each plate's controls
        span = _percentiles(stack, train, (LOW, HIGH), rng)
        pooled = _percentiles(stack, ref, (1, 99), rng)
        plate = np.stack([_percentiles(stack, g, (1, 99), rng) for g in groups])
        a = (pooled[1] - pooled[0]) / np.maximum(plate[:, 1] - plate[:, 0], 1e-6)  # plate -> pooled
        b = pooled[0] - a * plate[:, 0]
        low, high = (span[0] - b) / a, (span[1] - b) / a
    low, high = low.astype(np.float32), high.astype(np.float32)
    high = np.where(high > low, high, low + 1.0)
    return Intensity(column, plates, low, high, str(stack.images.dtype), int(stack.images.shape[1]))


def model_size(crop: int, size: int | None) -> int:
    """The size the models work at: ``size``, or the largest power of two <= the crop (at least 16)."""
    if size:
        return size
    return max(16, 1 << (int(crop).bit_length() - 1))


def resize(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 images (N, H, W, C) resized to ``size`` (area-averaged down, bilinear up)."""
    import torch
    import torch.nn.functional as F

    if images.shape[1] == size:
        return images
    out = np.empty((len(images), size, size, images.shape[3]), np.uint8)
    for i in range(0, len(images), 512):
        x = torch.from_numpy(images[i : i + 512]).permute(0, 3, 1, 2).float()
        y = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[i : i + 512] = y.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    return out


def detail(images: np.ndarray, size: int) -> np.ndarray:
    """What resizing uint8 crops (N, H, W, C) to ``size`` and back loses: int16 at the crop size.
    A residual edit made at the model size plus this is the source at its own resolution plus the
    model's change, resized up: fine detail the model never saw is kept as it was."""
    back = resize(resize(images, size), images.shape[1])
    return images.astype(np.int16) - back.astype(np.int16)


def crops_dataset(stack: CropStack, intensity: Intensity, size: int) -> FactorDataset:
    """The stack as the models read it: uint8 by each plate's training scale, at ``size``."""
    plates = stack.metadata[intensity.column] if intensity.column else None
    images = resize(intensity.to_uint8(stack.images, plates), size)
    return FactorDataset(images, stack.factors, stack.spec, stack.source)
