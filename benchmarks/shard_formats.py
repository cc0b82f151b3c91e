"""Which format packs an assay for ``fit --data shards:DIR``: factordiff's memory-mapped ``.npy``
shards against the two the performance issue named, zarr and WebDataset tars; into
``benchmarks/results/shard_formats.json``.

    pip install zarr webdataset        # for this benchmark only; factordiff does not need them
    python benchmarks/shard_formats.py [--n 100000] [--size 32]

The same images (the shapes renderer, uint8) go into each format: ``factordiff data pack`` (.npy
shards of 4,096 images); a zarr v3 array chunked by ``--zarr-chunk`` images with its default
compressor (zstd); WebDataset tars of 4,096 samples, each image stored as raw ``.npy`` bytes (no
image codec, as in the .npy pack). Measured per format: seconds to pack, bytes on disk, and images
per second delivered as training batches of 64 the way each is meant to be read, after one
warm-up pass (so the files are in the page cache: cold reads are not measured here):

- ``.npy`` and zarr: random rows (the global shuffle that ``ArrayBatches`` draws; exact resume is
  the step number);
- WebDataset: the tars streamed in a shuffled order through a shuffle buffer of ``--buffer``
  samples (a local shuffle; resuming exactly needs the stream's position and the buffer's state).
"""

from __future__ import annotations

import argparse
import io
import platform
import shlex
import shutil
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

from factordiff.checkpoint import atomic_write_json
from factordiff.data.shards import open_shards, pack
from factordiff.data.sources import load_data

OUT = Path(__file__).parent / "results" / "shard_formats.json"
BATCH = 64


def size_of(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def random_rows(read, n: int, batches: int, seed: int = 0) -> float:
    """Images/s of ``read(rows)`` over random batches, after a warm-up pass over the same batches."""
    rng = np.random.default_rng(seed)
    plan = [rng.integers(0, n, BATCH) for _ in range(batches)]
    for rows in plan:
        read(rows)
    t = time.perf_counter()
    for rows in plan:
        read(rows)
    return batches * BATCH / (time.perf_counter() - t)


def write_tars(images: np.ndarray, factors: np.ndarray, folder: Path, per_shard: int = 4096) -> None:
    folder.mkdir(parents=True)
    for s in range(0, len(images), per_shard):
        with tarfile.open(folder / f"shard-{s // per_shard:05d}.tar", "w") as tar:
            for i in range(s, min(s + per_shard, len(images))):
                for ext, arr in (("img.npy", images[i]), ("factors.npy", factors[i])):
                    buf = io.BytesIO()
                    np.save(buf, arr)
                    info = tarfile.TarInfo(f"{i:08d}.{ext}")
                    info.size = buf.tell()
                    buf.seek(0)
                    tar.addfile(info, buf)


def stream_rate(folder: Path, batches: int, buffer: int) -> float:
    import webdataset as wds

    def npy(data: bytes) -> np.ndarray:
        return np.load(io.BytesIO(data))

    urls = sorted(str(p) for p in folder.glob("*.tar"))

    def run(count: int) -> float:
        ds = (
            wds.WebDataset(urls, shardshuffle=len(urls), empty_check=False)
            .shuffle(buffer)
            .map_dict(**{"img.npy": npy, "factors.npy": npy})
            .to_tuple("img.npy", "factors.npy")
            .batched(BATCH, collation_fn=lambda s: np.stack([x[0] for x in s]))
        )
        t, seen = time.perf_counter(), 0
        for batch in ds:
            seen += len(batch)
            if seen >= count * BATCH:
                break
        return seen / (time.perf_counter() - t)

    run(batches)  # warm-up: page cache
    return run(batches)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100000)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batches", type=int, default=300)
    ap.add_argument("--zarr-chunk", type=int, default=64, help="images per zarr chunk")
    ap.add_argument("--buffer", type=int, default=1000, help="WebDataset shuffle buffer (samples)")
    ap.add_argument("--work", default="runs/bench-shard-formats")
    a = ap.parse_args()
    try:
        import webdataset  # noqa: F401
        import zarr
    except ImportError as e:
        sys.exit(
            f"this benchmark needs zarr and webdataset ({e.name} is missing): pip install zarr webdataset"
        )
    work = Path(a.work)
    shutil.rmtree(work, ignore_errors=True)
    data = load_data("shapes", size=a.size, n=a.n, seed=0)
    images = np.ascontiguousarray(data.images)
    result: dict = {"images": a.n, "size": a.size, "batch": BATCH, "formats": {}}

    t = time.perf_counter()
    pack(data, work / "npy")
    pack_s = time.perf_counter() - t
    disk = open_shards(work / "npy").images
    result["formats"]["npy shards (factordiff)"] = {
        "pack_seconds": pack_s,
        "bytes": size_of(work / "npy"),
        "access": "random rows",
        "exact_resume": "the step number",
        "img_s": random_rows(lambda r: disk[np.sort(r)], a.n, a.batches),
    }

    t = time.perf_counter()
    arr = zarr.create_array(
        store=str(work / "images.zarr"),
        shape=images.shape,
        chunks=(a.zarr_chunk, *images.shape[1:]),
        dtype="uint8",
    )
    arr[:] = images
    pack_s = time.perf_counter() - t
    z = zarr.open_array(str(work / "images.zarr"), mode="r")
    result["formats"][f"zarr v3, zstd, {a.zarr_chunk} images per chunk"] = {
        "pack_seconds": pack_s,
        "bytes": size_of(work / "images.zarr"),
        "access": "random rows",
        "exact_resume": "the step number",
        "img_s": random_rows(lambda r: z.get_orthogonal_selection((np.unique(r),)), a.n, a.batches),
    }

    t = time.perf_counter()
    write_tars(images, data.factors, work / "wds")
    pack_s = time.perf_counter() - t
    result["formats"][f"WebDataset tars, raw .npy samples, shuffle buffer {a.buffer}"] = {
        "pack_seconds": pack_s,
        "bytes": size_of(work / "wds"),
        "access": "stream + shuffle buffer (local shuffle)",
        "exact_resume": "needs the stream position and the buffer state",
        "img_s": stream_rate(work / "wds", a.batches, a.buffer),
    }

    import torch

    result.update(
        machine=f"{platform.machine()}, {torch.get_num_threads()} threads",
        date=time.strftime("%Y-%m-%d"),
        command="python " + shlex.join(sys.argv),
        versions={"zarr": zarr.__version__, "webdataset": __import__("webdataset").__version__},
    )
    atomic_write_json(OUT, result)
    for name, r in result["formats"].items():
        print(f"{name}: pack {r['pack_seconds']:.1f} s, {r['bytes'] / 1e6:.0f} MB, {r['img_s']:,.0f} img/s")


if __name__ == "__main__":
    main()
