"""Fields of view as training data: ``--data fields:SOURCE``.

SOURCE is anything ``factordiff fields`` reads (``load_data:TABLE``, ``phenix:DIR``, ``rxrx:CSV``,
``bbbc021:CSV``, ``npy:CSV``; an index written by ``fields --out`` is a ``load_data`` table), with
the run's ``--channels`` (names, or ``NAME=NUMBER`` for Phenix and RxRx), ``--plate``, ``--root``
and ``--join TABLE:COL=COL`` plate maps.

Each field is read once (every file checked as ``fields`` checks it), divided by CellProfiler's
illumination functions where ``--illum DIR`` gives them (``<plate>_Illum<Ch>.npy``), and cut into
single-cell crops centred on the nuclei of its DNA channel (``--crop`` pixels; a crop that would
leave the field is dropped and counted) or into an N x N grid of tiles (``--tiles N``). The crops
are kept as a crop stack in the run folder (``RUN/crops/crops.npz`` in the field's bit depth and
``crops.csv``: the field's metadata, ``Metadata_Field`` (its row in the field table) and
``Metadata_CropY``/``_CropX`` (the crop's top-left pixel)), with ``source.json`` recording the
options, the counts and the files they were cut from; a resumed fit, ``evaluate`` and
``regenerate`` read the stack, not the fields. From there the run is a crop-stack run
(``data/crops.py``): each plate's channels are scaled by its training crops only, and crops are
resized to ``--size``.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

from factordiff.data.cells import (
    FieldTable,
    correct_illumination,
    illumination_functions,
    join_metadata,
    nucleus_centres,
    open_fields,
)
from factordiff.errors import FactordiffError

FIELDS = "fields:"
CACHE = "crops"  # the run's subfolder holding the crop stack
FIELD, CROP_Y, CROP_X = "Metadata_Field", "Metadata_CropY", "Metadata_CropX"
POSITIONS = (FIELD, CROP_Y, CROP_X)  # kept with each crop, never a default factor
DEFAULT_CROP = 96
DNA_NAMES = ("dna", "dapi", "hoechst", "nuclei", "nucleus")


def field_table(data) -> FieldTable:
    """The field table that ``data`` (a ``DataConfig`` with a ``fields:`` source) names, plate maps joined."""
    ref = data.source[len(FIELDS) :]
    channels = ",".join(data.channels) if data.channels else None
    fields = open_fields(ref, channels, Path(data.root) if data.root else None, data.plate)
    for spec in data.join or []:
        fields = join_metadata(fields, *parse_join(spec))
    if not len(fields):
        raise FactordiffError(f"{fields.source}: no fields")
    return fields


def parse_join(spec: str) -> tuple[Path, dict[str, str]]:
    """``TABLE:FIELD_COLUMN=TABLE_COLUMN[,...]`` -> (table, {field column: table column})."""
    table, sep, pairs = spec.rpartition(":")
    items = [p.strip() for p in pairs.split(",") if p.strip()]
    if not sep or not table or not items or not all("=" in p for p in items):
        raise FactordiffError(
            f"--join {spec!r}: expected TABLE:FIELD_COLUMN=TABLE_COLUMN[,...], e.g. "
            "platemap.csv:Metadata_Well=well"
        )
    return Path(table), dict(p.split("=", 1) for p in items)


def dna_channel(channels: tuple[str, ...]) -> int:
    """The channel whose nuclei centre the crops: the first named like DNA (DAPI, Hoechst), else 0."""
    for i, name in enumerate(channels):
        if name.lower() in DNA_NAMES:
            return i
    return 0


def crop_windows(
    dna: np.ndarray, crop: int | None, tiles: int | None
) -> tuple[list[tuple[int, int]], int, int]:
    """Top-left corners of the crops of a field (its DNA plane ``dna``), the crop size and the number
    of nuclei dropped at the border."""
    h, w = dna.shape
    if tiles:
        size = min(h, w) // tiles
        if size < 8:
            raise FactordiffError(f"--tiles {tiles}: tiles of {size} pixels from a field of {w}x{h}")
        return [(y * size, x * size) for y in range(tiles) for x in range(tiles)], size, 0
    assert crop is not None
    if crop > min(h, w):
        raise FactordiffError(f"--crop {crop}: larger than the fields ({w}x{h} pixels)")
    corners, dropped = [], 0
    for cy, cx in nucleus_centres(dna):
        y0, x0 = int(cy) - crop // 2, int(cx) - crop // 2
        if y0 < 0 or x0 < 0 or y0 + crop > h or x0 + crop > w:
            dropped += 1
        else:
            corners.append((y0, x0))
    return corners, crop, dropped


def _options(data) -> dict:
    """What the crops are cut from and how (the run's options)."""
    return {
        "source": data.source,
        "channels": list(data.channels or []),
        "crop": data.crop,
        "tiles": data.tiles,
        "illum": data.illum,
        "join": list(data.join or []),
        "plate": data.plate,
        "root": data.root,
    }


def cut_crops(fields: FieldTable, data, progress: bool = True) -> tuple[np.ndarray, dict[str, list], dict]:
    """Every field of ``fields`` read, illumination-corrected where ``data.illum`` says, and cut:
    (crops (N, S, S, C) in the fields' bit depth, metadata columns, counts)."""
    from tqdm.auto import tqdm

    if data.crop and data.tiles:
        raise FactordiffError("fields: --crop (crops around nuclei) and --tiles (a grid) exclude each other")
    crop = data.crop or (None if data.tiles else DEFAULT_CROP)
    plate = next((c for c in fields.metadata if c.lower().endswith("plate")), None)
    illum: dict[str, np.ndarray] = {}
    dna = dna_channel(fields.channels)
    crops, meta, counts = (
        [],
        {k: [] for k in list(fields.metadata) + [FIELD, CROP_Y, CROP_X]},
        {
            "fields": len(fields),
            "crops": 0,
            "dropped_at_border": 0,
            "fields_without_crops": 0,
        },
    )
    depth = None
    bar = tqdm(
        range(len(fields)),
        desc="reading and cropping fields",
        unit="field",
        disable=not (progress and sys.stderr.isatty()),
    )
    for i in bar:
        f = fields.field(i, depth)  # every file of the depth of the first field's first file
        if depth is None:
            depth = f.dtype.itemsize * 8
            f = fields.field(i, depth)
        dtype = f.dtype
        if data.illum:
            p = str(fields.metadata[plate][i]) if plate else ""
            if p not in illum:
                illum[p] = illumination_functions(Path(data.illum), p, fields.channels)
            g = correct_illumination(f, illum[p])
            f = np.clip(np.rint(g), 0, np.iinfo(dtype).max).astype(dtype)
        corners, size, dropped = crop_windows(f[dna], crop, data.tiles)
        counts["dropped_at_border"] += dropped
        counts["fields_without_crops"] += not corners
        for y0, x0 in corners:
            crops.append(np.moveaxis(f[:, y0 : y0 + size, x0 : x0 + size], 0, -1))
            for k, v in fields.metadata.items():
                meta[k].append(str(v[i]))
            meta[FIELD].append(str(i))
            meta[CROP_Y].append(str(y0))
            meta[CROP_X].append(str(x0))
    if not crops:
        raise FactordiffError(
            f"{fields.source}: no crop inside any field ({counts['dropped_at_border']} nuclei too close to "
            "the border); use a smaller --crop or --tiles"
        )
    counts["crops"] = len(crops)
    return np.stack(crops), meta, counts


def fields_stack(data, run: Path, progress: bool = True) -> Path:
    """The crop stack of a ``fields:`` run in ``run/crops``: cut now, unless the run already holds
    the crops cut with the same options (a resumed fit, evaluate, regenerate: the run's data are
    the crops it was fitted on, and no field is read again); returns the path of ``crops.npz``."""
    import pandas as pd

    folder = Path(run) / CACHE
    fp = _options(data)
    record = folder / "source.json"
    if record.is_file() and (folder / "crops.npz").is_file():
        saved = json.loads(record.read_text())
        if saved.get("options") == fp:
            return folder / "crops.npz"
    fields = field_table(data)
    images, meta, counts = cut_crops(fields, data, progress)
    tmp = Path(run) / (CACHE + ".partial")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        if progress:
            print(f"packing {len(images)} crops of {images.shape[1]} pixels into {folder}", file=sys.stderr)
        np.savez(tmp / "crops.npz", images=images)
        pd.DataFrame(meta).to_csv(tmp / "crops.csv", index=False)
        files = [[str(p) for p in row] for row in fields.files]
        (tmp / "source.json").write_text(
            json.dumps(
                {"options": fp, "counts": counts, "channels": list(fields.channels), "files": files}, indent=1
            )
        )
        shutil.rmtree(folder, ignore_errors=True)
        tmp.replace(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if progress:
        print(
            f"{counts['crops']} crops from {counts['fields']} fields ({counts['dropped_at_border']} nuclei "
            "too close to the border dropped)",
            file=sys.stderr,
        )
    return folder / "crops.npz"


def stack_channels(run: Path) -> tuple[str, ...]:
    """The channel names of the run's crops, as the field reader named them."""
    return tuple(json.loads((Path(run) / CACHE / "source.json").read_text())["channels"])
