"""FactorDataset, the one dataset type every image reader returns (``sources.load_data`` picks the reader)."""

from __future__ import annotations

from dataclasses import dataclass

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
        control: a controlled run's conditioning images (N, H, W, C_control) uint8, the channels
            ``denoiser.control`` names, taken out of ``images`` (``sources.take_control``); None.
    """

    images: np.ndarray
    factors: np.ndarray
    spec: FactorSpec
    source: str = ""
    control: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise FactordiffError(
                f"{self.source}: images must be an (N, H, W, C) uint8 array, got {self.images.dtype} "
                f"{self.images.shape}"
            )
        self.factors = self.spec.check_indices(self.factors, where=f"{self.source} factors")
        if len(self.factors) != len(self.images):
            raise FactordiffError(
                f"{self.source}: {len(self.images)} images but {len(self.factors)} factor rows"
            )
        if self.control is not None and (
            self.control.shape[:3] != self.images.shape[:3] or self.control.dtype != np.uint8
        ):
            raise FactordiffError(
                f"{self.source}: control images must be uint8 {self.images.shape[:3]} x channels, got "
                f"{self.control.dtype} {self.control.shape}"
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
        lazy = getattr(self.images, "select", None)  # ShardedImages: a lazy selection
        images = lazy(mask_or_index) if lazy is not None else self.images[mask_or_index]
        control = None if self.control is None else self.control[mask_or_index]
        return FactorDataset(images, self.factors[mask_or_index], self.spec, self.source, control)
