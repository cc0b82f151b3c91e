"""Profiles at JUMP scale: a generated table of a JUMP source's size through every stage of the
profile path on this machine, into ``benchmarks/results/profiles_scale.json``.

    python benchmarks/profiles_scale.py [--rows 200000] [--features 4762] [--work runs/bench-scale]

The table (parquet, written once into ``--work`` in row groups of 8,192 wells) has ``--rows`` wells
of float32 features on 384-well plates nested in batches of 40 plates, 16 DMSO wells per plate and
the other wells spread over 5,000 compounds; features are a rank-32 compound effect, a per-batch
and per-plate offset and noise, plus 5 columns missing in 30% of wells and 3 constant columns (the
cleaning must drop both). The stages are the library calls that ``factordiff fit`` and
``factordiff regenerate`` make, timed one by one in one process:

1. read: ``read_profiles`` (parquet by column projection and row batch into one float32 matrix);
2. clean: the split, ``select_features`` on the training rows (missing share, constant columns and
   pycytominer's ``variance_threshold``, a block of columns at a time) and ``keep``
   (``prepare_profiles`` times both);
3. fit: ``fit_profiles`` at the config's defaults (4,000 steps of 128 rows), DMSO of one batch
   held out;
4. regenerate: 10,000 wells of one batch as if run in the held-out batch (the table read again
   by name, DDIM inversion and regeneration in chunks of 512 rows) and written to parquet in
   row groups.

Peak memory is the process's maximum resident set size (``ru_maxrss``); ``rows_per_second`` is
rows over each stage's seconds. The correlation filter is out of scope at this size.
"""

from __future__ import annotations

import argparse
import platform
import resource
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from factordiff.checkpoint import atomic_write_json
from factordiff.config import load_config
from factordiff.fit import fit_profiles
from factordiff.models.profiles import prepare_profiles
from factordiff.models.runs import load_run
from factordiff.regenerate import regenerate, write_regenerated

RESULTS = Path(__file__).parent / "results" / "profiles_scale.json"
PLATE, PLATES_PER_BATCH, DMSO_PER_PLATE, COMPOUNDS, RANK = 384, 40, 16, 5000, 32


def feature_names(n: int) -> list[str]:
    parts = ("Cells", "Cytoplasm", "Nuclei")
    kinds = ("AreaShape", "Intensity", "Texture", "Granularity", "RadialDistribution", "Correlation")
    return [f"{parts[j % 3]}_{kinds[(j // 3) % 6]}_Feature{j:04d}" for j in range(n)]


def generate(path: Path, rows: int, features: int, seed: int = 0) -> None:
    """The table described in the module docstring, written in row groups of 8,192 wells."""
    rng = np.random.default_rng(seed)
    names = feature_names(features)
    loadings = rng.normal(0, 0.5, (RANK, features)).astype(np.float32)
    compound_codes = rng.normal(0, 1, (COMPOUNDS, RANK)).astype(np.float32)
    n_plates = -(-rows // PLATE)
    batch_of_plate = np.arange(n_plates) // PLATES_PER_BATCH
    batch_offset = rng.normal(0, 0.7, (batch_of_plate.max() + 1, features)).astype(np.float32)
    plate_offset = rng.normal(0, 0.2, (n_plates, features)).astype(np.float32)
    tmp = path.with_name(path.name + ".partial")
    writer = None
    chunk = 8192
    for i in tqdm(range(0, rows, chunk), desc="generating the table", unit="chunk"):
        n = min(chunk, rows - i)
        well = np.arange(i, i + n)
        plate, pos = well // PLATE, well % PLATE
        dmso = pos < DMSO_PER_PLATE
        compound = np.where(dmso, -1, rng.integers(0, COMPOUNDS, n))
        x = rng.standard_normal((n, features), dtype=np.float32)
        x += batch_offset[batch_of_plate[plate]] + plate_offset[plate]
        x[~dmso] += compound_codes[compound[~dmso]] @ loadings
        x[:, :3] = 1.0  # constant columns
        holes = rng.random((n, 5)) < 0.3
        x[:, 3:8][holes] = np.nan  # five columns missing in 30% of wells
        columns = {
            "Metadata_Batch": pa.array([f"B{b:02d}" for b in batch_of_plate[plate]]),
            "Metadata_Plate": pa.array([f"P{p:04d}" for p in plate]),
            "Metadata_Well": pa.array([f"{chr(65 + q // 24)}{q % 24 + 1:02d}" for q in pos]),
            "Metadata_JCP2022": pa.array(["DMSO" if c < 0 else f"JCP{c:05d}" for c in compound]),
        }
        columns.update({name: pa.array(x[:, j]) for j, name in enumerate(names)})
        table = pa.table(columns)
        writer = writer or pq.ParquetWriter(tmp, table.schema)
        writer.write_table(table)
    writer.close()
    tmp.replace(path)


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--features", type=int, default=4762)
    ap.add_argument("--regenerate", type=int, default=10_000, help="rows to regenerate")
    ap.add_argument("--work", default="runs/bench-scale")
    a = ap.parse_args()
    torch.set_num_threads(2)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"jump-like-{a.rows}x{a.features}.parquet"
    t0 = time.monotonic()
    if not path.is_file():
        generate(path, a.rows, a.features)
    generate_s = time.monotonic() - t0
    held = "Metadata_JCP2022=DMSO,Metadata_Batch=B02"
    cfg = load_config(
        None,
        {
            "data.source": f"profiles:{path}",
            "data.factors": ["Metadata_JCP2022", "Metadata_Batch"],
            "split.where": [held],
            "profiles.controls": "Metadata_JCP2022=DMSO",
            "profiles.feature_select": ["variance_threshold"],
            "train.threads": 2,
        },
    )
    stages: dict[str, dict] = {}

    def stage(name: str, rows: int, start: float) -> None:
        seconds = time.monotonic() - start
        stages[name] = {
            "seconds": round(seconds, 1),
            "rows": rows,
            "rows_per_second": round(rows / seconds, 1),
            "peak_memory_gb_so_far": round(peak_gb(), 2),
        }
        print(f"{name}: {seconds:.1f} s, peak {peak_gb():.2f} GB", flush=True)

    total = time.monotonic()
    data = prepare_profiles(cfg)
    for name in ("read", "clean"):
        rows = data.table.cleaning["rows_read"] if name == "read" else len(data.table)
        stages[name] = {"seconds": round(data.seconds[name], 1), "rows": rows}
        stages[name]["rows_per_second"] = round(rows / data.seconds[name], 1)
    stages["clean"]["peak_memory_gb_so_far"] = round(peak_gb(), 2)
    print(f"read and clean: {data.seconds}, peak {peak_gb():.2f} GB", flush=True)
    cleaning = data.table.cleaning
    train = data.train

    start = time.monotonic()
    run = work / "run"
    if run.exists():
        import shutil

        shutil.rmtree(run)
    fit_profiles(cfg, run, data=data)
    stage("fit", int(train.sum()), start)
    features_kept = len(data.table.feature_names)
    del data

    start = time.monotonic()
    loaded = load_run(run)
    result = regenerate(loaded, ["Metadata_Batch=B00"], ["Metadata_Batch=B02"], limit=a.regenerate)
    write_regenerated(result, loaded, work / "regenerated.parquet")
    stage("regenerate", len(result.samples), start)
    total_s = time.monotonic() - total

    out = {
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d"),
        "command": "python " + shlex.join(sys.argv),
        "rows": a.rows,
        "features": a.features,
        "features_kept": features_kept,
        "table_gb": round(path.stat().st_size / 2**30, 2),
        "generate_seconds": round(generate_s, 1),
        "total_seconds": round(total_s, 1),
        "peak_memory_gb": round(peak_gb(), 2),
        "stages": stages,
        "cleaning": {
            k: (len(v) if isinstance(v, list) and k != "operations" else v)
            for k, v in cleaning.items()
            if k.startswith("columns_dropped") or k == "operations"
        },
        "regenerated_rows": len(result.samples),
    }
    atomic_write_json(RESULTS, out)
    print(f"total {total_s:.1f} s, peak {peak_gb():.2f} GB; wrote {RESULTS}")


if __name__ == "__main__":
    main()
