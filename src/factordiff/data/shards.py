"""Assays larger than memory: a packed dataset of memory-mapped image shards, read lazily.

``pack(data, DIR)`` (``factordiff data pack SOURCE --out DIR``) writes

- ``images-000000.npy``, ...: (n, H, W, C) uint8 arrays of ``shard_size`` images each, in the
  ``.npy`` format (no pickle), memory-mapped when read;
- ``factors.npy``: the (N, K) int64 value indices of every image (the factor table, small);
- ``index.json``: the factor spec, the shards and their row counts, the image shape, the source.
  It is written last, so a folder without it is an interrupted pack and is refused.

``load_data("shards:DIR")`` returns a ``FactorDataset`` whose ``images`` is a ``ShardedImages``:
an array-like of uint8 images that reads from disk only the rows asked for. Because rows are read
by index, training draws exactly the batches an in-memory dataset would (``ArrayBatches``: global
shuffling, exact resume of the data order, each process reading only its rows), with no shuffle
buffer. Uncompressed shards are what makes random rows cheap: a 32x32x3 image is 3 KB read in place.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from factordiff.checkpoint import atomic_write_json, read_json
from factordiff.data.base import FactorDataset
from factordiff.errors import FactordiffError
from factordiff.factors import FactorSpec

INDEX = "index.json"
FORMAT = "factordiff-shards/1"


class ShardedImages:
    """uint8 images (N, H, W, C) spread over memory-mapped shards; ``rows`` selects a lazy view.

    Indexing with an int, a slice, an integer array or a boolean mask returns an in-memory
    ``np.ndarray`` of just those images; ``select(rows)`` returns another ``ShardedImages`` without
    reading anything; ``np.asarray`` reads everything (for small data only)."""

    def __init__(
        self,
        files: list[Path],
        counts: list[int],
        shape: tuple[int, int, int],
        rows: np.ndarray | None = None,
    ):
        self.files, self.counts, self.image_shape = list(files), list(counts), tuple(shape)
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.rows = np.arange(self.starts[-1], dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
        self._maps: dict[int, np.ndarray] = {}

    dtype = np.dtype(np.uint8)
    ndim = 4

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.image_shape)

    def __len__(self) -> int:
        return len(self.rows)

    def _shard(self, s: int) -> np.ndarray:
        if s not in self._maps:
            try:
                m = np.load(self.files[s], mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as e:
                raise FactordiffError(
                    f"{self.files[s]}: unreadable shard ({e}); pack the data again"
                ) from None
            if m.shape != (self.counts[s], *self.image_shape) or m.dtype != np.uint8:
                raise FactordiffError(
                    f"{self.files[s]}: expected uint8 {(self.counts[s], *self.image_shape)}, got {m.dtype} "
                    f"{m.shape}; pack the data again"
                )
            self._maps[s] = m
        return self._maps[s]

    def _select(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self.rows[[key]]
        if isinstance(key, np.ndarray) and key.dtype == bool:
            if len(key) != len(self.rows):
                raise IndexError(f"boolean index of length {len(key)} for {len(self.rows)} images")
            return self.rows[key]
        return self.rows[key]

    def select(self, key) -> "ShardedImages":
        """The images ``key`` selects, still on disk."""
        return ShardedImages(self.files, self.counts, self.image_shape, self._select(key))

    def __getitem__(self, key) -> np.ndarray:
        rows = self._select(key)
        out = np.empty((len(rows), *self.image_shape), np.uint8)
        shard = np.searchsorted(self.starts, rows, side="right") - 1
        for s in np.unique(shard):
            at = np.flatnonzero(shard == s)
            local = rows[at] - self.starts[s]
            order = np.argsort(local, kind="stable")  # read each shard in file order
            out[at[order]] = self._shard(int(s))[local[order]]
        return out[0] if isinstance(key, (int, np.integer)) else out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        a = self[np.arange(len(self.rows))]
        return a if dtype is None else a.astype(dtype)


def pack(data, out: Path, shard_size: int = 4096, progress: bool = True) -> dict:
    """Write ``data`` (a FactorDataset) as shards into the new folder ``out``; returns the index.
    Everything is written into ``out``'s sibling ``.partial`` folder and renamed at the end, so an
    interrupted pack leaves nothing that looks like a pack."""
    from tqdm.auto import tqdm

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FactordiffError(f"{out}: exists and is not an empty folder; choose another --out")
    if shard_size < 1:
        raise FactordiffError(f"--shard-size: expected a positive number of images, got {shard_size}")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        n = len(data)
        shards = []
        with tqdm(total=n, desc="packing", unit="img", disable=not progress) as bar:
            for s, start in enumerate(range(0, n, shard_size)):
                name = f"images-{s:06d}.npy"
                chunk = np.ascontiguousarray(data.images[start : start + shard_size])
                np.save(tmp / name, chunk, allow_pickle=False)
                shards.append({"file": name, "images": len(chunk)})
                bar.update(len(chunk))
        np.save(tmp / "factors.npy", np.asarray(data.factors, np.int64), allow_pickle=False)
        index = {
            "format": FORMAT,
            "images": n,
            "image_shape": list(data.images.shape[1:]),
            "spec": data.spec.to_json(),
            "source": data.source,
            "shards": shards,
        }
        atomic_write_json(tmp / INDEX, index)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return index


def open_shards(folder: Path):
    """The packed dataset in ``folder`` as a FactorDataset with lazily read images."""
    folder = Path(folder)
    if not (folder / INDEX).is_file():
        raise FactordiffError(f"{folder}: no {INDEX}; expected a folder written by factordiff data pack")
    index = read_json(folder / INDEX)
    if index.get("format") != FORMAT:
        raise FactordiffError(f"{folder / INDEX}: format {index.get('format')!r}, expected {FORMAT!r}")
    try:
        factors = np.load(folder / "factors.npy", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise FactordiffError(f"{folder / 'factors.npy'}: unreadable ({e}); pack the data again") from None
    counts = [int(s["images"]) for s in index["shards"]]
    if sum(counts) != len(factors) or len(factors) != index["images"]:
        raise FactordiffError(
            f"{folder}: {len(factors)} factor rows for {sum(counts)} images in the shards; "
            "pack the data again"
        )
    missing = [s["file"] for s in index["shards"] if not (folder / s["file"]).is_file()]
    if missing:
        raise FactordiffError(
            f"{folder}: missing shard file(s) {', '.join(missing[:3])}; pack the data again"
        )
    images = ShardedImages([folder / s["file"] for s in index["shards"]], counts, tuple(index["image_shape"]))
    return FactorDataset(images, factors, FactorSpec.from_json(index["spec"]), f"shards:{folder}")


def describe(index: dict) -> str:
    h, w, c = index["image_shape"]
    return f"{index['images']} images ({h}x{w}x{c}) in {len(index['shards'])} shard(s)"
