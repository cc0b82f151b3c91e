"""FactorDataset, the one dataset type every reader returns, and ``load_data`` that picks a reader."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from factordiff.errors import FactordiffError
from factordiff.factors import FactorSpec


@dataclass
class FactorDataset:
    """Images with the value index of every factor.

    Args:
        images: (N, H, W, C) uint8 array (channels last, as image files store them).
        factors: (N, K) int64 value indices into ``spec.factors[k].values``.
        spec: the factors.
        source: where the data came from (a path or ``"shapes"``), for messages and reports.
    """

    images: np.ndarray
    factors: np.ndarray
    spec: FactorSpec
    source: str = ""

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise FactordiffError(
                f"{self.source}: images must be an (N, H, W, C) uint8 array, got {self.images.dtype} {self.images.shape}"
            )
        self.factors = self.spec.check_indices(self.factors, where=f"{self.source} factors")
        if len(self.factors) != len(self.images):
            raise FactordiffError(
                f"{self.source}: {len(self.images)} images but {len(self.factors)} factor rows"
            )

    def __len__(self) -> int:
        return len(self.images)

    @property
    def size(self) -> int:
        return int(self.images.shape[1])

    @property
    def channels(self) -> int:
        return int(self.images.shape[3])

    def subset(self, mask_or_index: np.ndarray) -> "FactorDataset":
        """The rows selected; packed images (``shards:DIR``) stay on disk."""
        from factordiff.data.shards import ShardedImages

        images = (
            self.images.view(mask_or_index)
            if isinstance(self.images, ShardedImages)
            else self.images[mask_or_index]
        )
        return FactorDataset(images, self.factors[mask_or_index], self.spec, self.source)


def load_data(
    ref: str, size: int | None = None, factors: list[str] | None = None, n: int | None = None, seed: int = 0
) -> FactorDataset:
    """Load a dataset from a reference string.

    ``size`` is the image size to return (None: 32 for the replica, the files' own size otherwise).
    ``shapes`` renders the built-in 3D Shapes replica (``n`` images, all combinations when None);
    ``cellsim`` the built-in 5-channel Cell Painting assay (``n`` fields, 12,000 when None, 64x64);
    ``h5:FILE`` reads DeepMind's ``3dshapes.h5``; ``table:FILE.csv`` reads a folder of images with a
    factor table (``factors`` names the factor columns); ``shards:DIR`` opens a dataset written by
    ``factordiff data pack``, whose images stay on disk until a batch reads them.
    """
    kind, _, arg = ref.partition(":")
    if kind == "shapes" and not arg:
        from factordiff.data.shapes import replica

        return replica(size=size or 32, n=n, seed=seed)
    if kind == "cellsim" and not arg:
        from factordiff.data.cellsim import cellsim

        return cellsim(size=size or 64, n=n, seed=seed)
    if kind == "h5" and arg:
        from factordiff.data.shapes import read_h5

        return read_h5(Path(arg), size=size, n=n, seed=seed)
    if kind == "table" and arg:
        from factordiff.data.shapes import resize_images
        from factordiff.data.table import read_table

        data = read_table(Path(arg), factors=factors)
        if size is not None and data.size != size:
            if data.size % size:
                raise FactordiffError(
                    f"{arg}: images are {data.size}x{data.size}; expected a multiple of the model size {size} (set --size)"
                )
            data.images = resize_images(data.images, size)
        return data
    if kind == "shards" and arg:
        from factordiff.data.shards import open_shards

        data = open_shards(Path(arg))
        if size is not None and data.size != size:
            raise FactordiffError(
                f"{arg}: packed images are {data.size}x{data.size}, not {size}; pack them at --size {size}"
            )
        return data
    raise FactordiffError(
        f"--data: expected 'shapes', 'cellsim', 'h5:FILE', 'table:FILE.csv', 'shards:DIR' or 'profiles:TABLE', got {ref!r}"
    )
