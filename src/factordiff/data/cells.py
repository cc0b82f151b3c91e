"""Cell Painting images as public assays ship them: one grayscale file per channel per field of view.

Every reader returns a ``FieldTable``: per field (one site of one well), the file of each channel in
the order of ``channels``, and metadata columns. The channel order is always explicit (a channel
map or column names), never implied by file names or their order; ``read_field`` reads a field as a
(C, H, W) array and checks each file's size and bit depth.

- ``load_data_fields``: JUMP / Cell Painting Gallery ``load_data`` tables (CSV, CSV.gz or parquet)
  with ``FileName_Orig<Ch>`` and ``PathName_Orig<Ch>`` per channel and ``Metadata_*`` columns
  (``Metadata_Source``, ``_Batch``, ``_Plate``, ``_Well``, ``_Site``);
- ``phenix_fields``: a folder of raw images in the Phenix/Harmony naming of the Gallery,
  ``r<RR>c<CC>f<FF>p<PP>-ch<N>sk1fk1fl1.tiff``, with a channel map (name -> ch number);
- ``rxrx_fields``: RxRx1 / RxRx3 ``metadata.csv`` with ``images/<experiment>/Plate<plate>/
  <well>_s<site>_w<N>.png`` (8-bit PNG, channel map name -> w number);
- ``bbbc021_fields``: BBBC021's ``BBBC021_v1_image.csv`` (DAPI, tubulin, actin files), joined
  with its compound/MoA table by ``join_metadata``;
- ``npy_fields``: an index table with a column of ``.npy`` crops, each (C, H, W).

``join_metadata`` adds plate maps and compound tables (SMILES, InChIKey) on shared columns;
``illumination_functions`` and ``correct_illumination`` divide by CellProfiler's ``*_Illum<Ch>.npy``;
``nucleus_centres`` and ``crop`` cut fixed-size crops around nuclei found by thresholding the DNA
channel (their positions kept); ``PlateScaler`` maps each plate's intensities to uint8 by per-channel
percentiles fitted on training fields only.

Paths in tables resolve against the table's folder (or ``root``); remote paths (``s3://``,
``http://``) are refused: nothing is downloaded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from factordiff.checkpoint import atomic_write_text
from factordiff.errors import FactordiffError

CELL_PAINTING = ("DNA", "ER", "RNA", "AGP", "Mito")
# RxRx1/RxRx3 stain per w<N> (Recursion's protocol): Hoechst, ConA, phalloidin, Syto14, MitoTracker, WGA
RXRX_CHANNELS = {"DNA": 1, "ER": 2, "Actin": 3, "RNA": 4, "Mito": 5, "Membrane": 6}
BBBC021_CHANNELS = {"DNA": "DAPI", "Tubulin": "Tubulin", "Actin": "Actin"}
PHENIX = re.compile(r"^r(\d+)c(\d+)f(\d+)p(\d+)-ch(\d+)sk\d+fk\d+fl\d+\.tiff?$", re.IGNORECASE)
BIT_DEPTHS = (8, 16)


@dataclass
class FieldTable:
    """Fields of view: ``files[i][c]`` is field i's file of channel ``channels[c]``; ``metadata``
    maps column names to arrays of strings, one per field; ``source`` names where it came from."""

    channels: tuple[str, ...]
    files: list[list[Path]]
    metadata: dict[str, np.ndarray] = field(default_factory=dict)
    source: str = ""

    def __len__(self) -> int:
        return len(self.files)

    def field(self, i: int, bit_depth: int | None = None) -> np.ndarray:
        return read_field(self.files[i], self.channels, bit_depth, where=f"{self.source} field {i}")


def read_field(
    files: Sequence[Path], channels: Sequence[str], bit_depth: int | None = None, where: str = ""
) -> np.ndarray:
    """One field as (C, H, W), uint16 (or uint8 where every file is 8-bit).

    Each file must be one 2-D grayscale image of ``bit_depth`` bits when given (8 or 16), all of
    one size. Raises ``FactordiffError`` naming the file and channel otherwise."""
    if len(files) != len(channels):
        raise FactordiffError(
            f"{where}: {len(files)} files for {len(channels)} channels ({', '.join(channels)})"
        )
    planes = []
    for path, name in zip(files, channels):
        plane = _read_plane(Path(path), name)
        depth = plane.dtype.itemsize * 8
        if bit_depth is not None and depth != bit_depth:
            raise FactordiffError(
                f"{path}: channel {name} is {depth}-bit; expected {bit_depth}-bit like the assay's config"
            )
        if planes and plane.shape != planes[0].shape:
            raise FactordiffError(
                f"{path}: channel {name} is {plane.shape[1]}x{plane.shape[0]} pixels; expected "
                f"{planes[0].shape[1]}x{planes[0].shape[0]} like channel {channels[0]}"
            )
        planes.append(plane)
    dtype = np.uint8 if all(p.dtype == np.uint8 for p in planes) else np.uint16
    return np.stack([p.astype(dtype) for p in planes])


def _read_plane(path: Path, channel: str) -> np.ndarray:
    if not path.is_file():
        raise FactordiffError(f"{path}: no such file (channel {channel})")
    suffix = path.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            plane = tifffile.imread(path)
        elif suffix == ".png":
            from PIL import Image

            with Image.open(path, formats=["PNG"]) as im:
                im.load()
                plane = np.asarray(im)
        elif suffix == ".npy":
            plane = np.load(path, allow_pickle=False)
        else:
            raise FactordiffError(
                f"{path}: channel {channel}: unsupported file type {suffix!r}; expected "
                ".tif, .tiff, .png or .npy"
            )
    except FactordiffError:
        raise
    except Exception as e:  # tifffile, Pillow and numpy raise many types for corrupt files
        raise FactordiffError(
            f"{path}: channel {channel}: unreadable or corrupt ({type(e).__name__}: "
            f"{' '.join(str(e).split())})"
        ) from None
    plane = np.squeeze(plane)
    if plane.size == 0:
        raise FactordiffError(f"{path}: channel {channel} holds no pixels (empty or corrupt file)")
    if plane.ndim != 2:
        raise FactordiffError(
            f"{path}: channel {channel} holds an array of shape {plane.shape}; expected one "
            "grayscale image (H, W)"
        )
    if plane.dtype.kind != "u" or plane.dtype.itemsize not in (1, 2):
        raise FactordiffError(
            f"{path}: channel {channel} has {plane.dtype} pixels; expected 8- or 16-bit unsigned integers"
        )
    return plane


def _table(path: Path):
    import pandas as pd

    if not path.is_file():
        raise FactordiffError(f"{path}: no such table")
    try:
        return (
            pd.read_parquet(path)
            if path.suffix.lower() == ".parquet"
            else pd.read_csv(path, dtype=str, keep_default_na=False)
        )
    except Exception as e:
        raise FactordiffError(
            f"{path}: unreadable table ({type(e).__name__}: {' '.join(str(e).split())})"
        ) from None


def _require(df, columns: Sequence[str], where: Path) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise FactordiffError(
            f"{where}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
        )


def _joined(folder: str, name: str) -> str:
    return f"{folder.rstrip('/')}/{name}" if folder else name


def _local(path_text: str, base: Path, where: str) -> Path:
    if re.match(r"^[a-z][a-z0-9+.-]*://", path_text, re.IGNORECASE):
        raise FactordiffError(
            f"{where}: {path_text} is a remote path; factordiff downloads nothing: copy the images locally "
            "and point PathName_* (or --root) at them"
        )
    p = Path(path_text)
    return p if p.is_absolute() else base / p


def _metadata(df, columns: Sequence[str]) -> dict[str, np.ndarray]:
    return {c: df[c].astype(str).to_numpy() for c in columns}


def load_data_fields(
    table: Path, channels: Sequence[str] = CELL_PAINTING, root: Path | None = None
) -> FieldTable:
    """A JUMP / Cell Painting Gallery ``load_data`` table: ``FileName_Orig<Ch>`` and
    ``PathName_Orig<Ch>`` for each of ``channels``, plus every ``Metadata_*`` column."""
    table = Path(table)
    df = _table(table)
    _require(df, [f"{kind}_Orig{c}" for c in channels for kind in ("FileName", "PathName")], table)
    base = Path(root) if root else table.parent
    files = [
        [
            _local(
                _joined(str(r[f"PathName_Orig{c}"]), str(r[f"FileName_Orig{c}"])),
                base,
                f"{table} row {i + 1}",
            )
            for c in channels
        ]
        for i, r in enumerate(df.to_dict("records"))
    ]
    return FieldTable(
        tuple(channels),
        files,
        _metadata(df, [c for c in df.columns if c.startswith("Metadata_")]),
        str(table),
    )


def phenix_fields(folder: Path, channel_map: dict[str, int], plate: str | None = None) -> FieldTable:
    """Raw images in the Phenix/Harmony naming, ``r<row>c<col>f<field>p<plane>-ch<N>...tiff``.

    ``channel_map`` gives each channel's ``ch`` number, in the order the channels are wanted (e.g.
    ``{"DNA": 5, "ER": 2, "RNA": 6, "AGP": 3, "Mito": 4}``); channels not in the map (brightfield)
    are ignored. Metadata: ``Metadata_Plate`` (``plate``, default the folder's name), ``_Well``
    (row letter and two-digit column, C03), ``_Site`` (field), ``_Plane``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FactordiffError(f"{folder}: no such folder")
    found: dict[tuple[int, int, int, int], dict[int, Path]] = {}
    for p in sorted(folder.iterdir()):
        m = PHENIX.match(p.name)
        if m:
            r, c, f, pl, ch = (int(x) for x in m.groups())
            found.setdefault((r, c, f, pl), {})[ch] = p
    if not found:
        raise FactordiffError(f"{folder}: no image named like r03c03f03p01-ch1sk1fk1fl1.tiff (Phenix naming)")
    names, numbers = list(channel_map), list(channel_map.values())
    files, meta = [], {"Metadata_Plate": [], "Metadata_Well": [], "Metadata_Site": [], "Metadata_Plane": []}
    for (r, c, f, pl), chans in sorted(found.items()):
        well = f"{chr(64 + r)}{c:02d}"
        missing = [f"{n} (ch{k})" for n, k in zip(names, numbers) if k not in chans]
        if missing:
            raise FactordiffError(
                f"{folder}: well {well} field {f} plane {pl}: no file for channel {', '.join(missing)}; "
                f"channels on disk: {', '.join(f'ch{k}' for k in sorted(chans))}"
            )
        files.append([chans[k] for k in numbers])
        for k, v in (
            ("Metadata_Plate", plate or folder.name),
            ("Metadata_Well", well),
            ("Metadata_Site", str(f)),
            ("Metadata_Plane", str(pl)),
        ):
            meta[k].append(v)
    return FieldTable(tuple(names), files, {k: np.asarray(v) for k, v in meta.items()}, str(folder))


def rxrx_fields(
    metadata_csv: Path, channel_map: dict[str, int] | None = None, root: Path | None = None
) -> FieldTable:
    """RxRx1 / RxRx3: ``metadata.csv`` (``experiment``, ``plate``, ``well`` or ``address``, ``site``)
    and ``<root>/images/<experiment>/Plate<plate>/<well>_s<site>_w<N>.png``. Every metadata
    column is kept, prefixed ``Metadata_``."""
    metadata_csv = Path(metadata_csv)
    df = _table(metadata_csv)
    well = "well" if "well" in df.columns else "address"
    _require(df, ["experiment", "plate", well, "site"], metadata_csv)
    cmap = channel_map or RXRX_CHANNELS
    base = (Path(root) if root else metadata_csv.parent) / "images"
    files = [
        [
            base / str(r["experiment"]) / f"Plate{r['plate']}" / f"{r[well]}_s{r['site']}_w{k}.png"
            for k in cmap.values()
        ]
        for r in df.to_dict("records")
    ]
    meta = {f"Metadata_{c}": df[c].astype(str).to_numpy() for c in df.columns}
    return FieldTable(tuple(cmap), files, meta, str(metadata_csv))


def bbbc021_fields(image_csv: Path, root: Path | None = None) -> FieldTable:
    """BBBC021's ``BBBC021_v1_image.csv``: ``Image_FileName_<Stain>`` / ``Image_PathName_<Stain>``
    for DAPI, Tubulin and Actin (channels DNA, Tubulin, Actin), with plate, well, compound and
    concentration as ``Metadata_Plate``, ``_Well``, ``_Compound``, ``_Concentration``; the batch
    is the plate name's week (``Week4_27481`` -> ``Week4``)."""
    image_csv = Path(image_csv)
    df = _table(image_csv)
    stains = list(BBBC021_CHANNELS.values())
    named = {
        "Image_Metadata_Plate_DAPI": "Metadata_Plate",
        "Image_Metadata_Well_DAPI": "Metadata_Well",
        "Image_Metadata_Compound": "Metadata_Compound",
        "Image_Metadata_Concentration": "Metadata_Concentration",
    }
    _require(
        df, [f"Image_{k}_{s}" for s in stains for k in ("FileName", "PathName")] + list(named), image_csv
    )
    base = Path(root) if root else image_csv.parent
    files = [
        [
            _local(
                _joined(str(r[f"Image_PathName_{s}"]), str(r[f"Image_FileName_{s}"])),
                base,
                f"{image_csv} row {i + 1}",
            )
            for s in stains
        ]
        for i, r in enumerate(df.to_dict("records"))
    ]
    meta = {new: df[old].astype(str).to_numpy() for old, new in named.items()}
    meta["Metadata_Batch"] = np.asarray([p.split("_")[0] for p in meta["Metadata_Plate"]])
    return FieldTable(tuple(BBBC021_CHANNELS), files, meta, str(image_csv))


def npy_fields(
    index: Path, channels: Sequence[str], column: str = "path", root: Path | None = None
) -> FieldTable:
    """An index table with one ``.npy`` crop per row in ``column``, each (C, H, W) with C =
    len(``channels``); the other columns are metadata. ``read_field`` of such a table reads the
    array (its channel count checked against ``channels``)."""
    index = Path(index)
    df = _table(index)
    _require(df, [column], index)
    base = Path(root) if root else index.parent
    files = [[_local(str(p), base, f"{index} row {i + 1}")] for i, p in enumerate(df[column])]
    meta = {
        c if c.startswith("Metadata_") else f"Metadata_{c}": df[c].astype(str).to_numpy()
        for c in df.columns
        if c != column
    }
    return _NpyTable(tuple(channels), files, meta, str(index))


class _NpyTable(FieldTable):
    def field(self, i: int, bit_depth: int | None = None) -> np.ndarray:
        path = self.files[i][0]
        if not path.is_file():
            raise FactordiffError(f"{path}: no such file ({self.source} row {i + 1})")
        try:
            arr = np.load(path, allow_pickle=False)
        except Exception as e:
            raise FactordiffError(
                f"{path}: unreadable .npy ({type(e).__name__}: {' '.join(str(e).split())})"
            ) from None
        if arr.ndim != 3 or arr.shape[0] != len(self.channels):
            raise FactordiffError(
                f"{path}: array of shape {arr.shape}; expected ({len(self.channels)}, H, W) for channels "
                f"{', '.join(self.channels)}"
            )
        if (
            arr.dtype.kind != "u"
            or arr.dtype.itemsize not in (1, 2)
            or (bit_depth and arr.dtype.itemsize * 8 != bit_depth)
        ):
            raise FactordiffError(
                f"{path}: {arr.dtype} pixels; expected {f'{bit_depth}-bit' if bit_depth else '8- or 16-bit'} "
                "unsigned integers"
            )
        return arr


def join_metadata(
    fields: FieldTable, table: Path, on: dict[str, str], prefix: str = "Metadata_"
) -> FieldTable:
    """Add the columns of ``table`` (a plate map, a compound table with SMILES or InChIKey) to every
    field, matched on ``on`` (field metadata column -> table column). A field with no match, or a
    key that matches several rows, is an error naming it."""
    table = Path(table)
    df = _table(table)
    _require(df, list(on.values()), table)
    for col in on:
        if col not in fields.metadata:
            raise FactordiffError(
                f"{fields.source}: no metadata column {col} to join {table.name} on; have "
                f"{', '.join(fields.metadata)}"
            )
    keys = [tuple(str(r[c]) for c in on.values()) for r in df.to_dict("records")]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise FactordiffError(
            f"{table}: {', '.join(on.values())} = {', '.join(dup)} appears in more than one row"
        )
    rows = {k: i for i, k in enumerate(keys)}
    index = []
    for i in range(len(fields)):
        key = tuple(str(fields.metadata[c][i]) for c in on)
        if key not in rows:
            raise FactordiffError(
                f"{table}: no row for {', '.join(f'{c}={v}' for c, v in zip(on.values(), key))} (field "
                f"{i} of {fields.source})"
            )
        index.append(rows[key])
    meta = dict(fields.metadata)
    for c in df.columns:
        if c not in on.values():
            name = c if c.startswith(prefix) else prefix + c
            meta.setdefault(name, df[c].astype(str).to_numpy()[index])
    return type(fields)(fields.channels, fields.files, meta, fields.source)


def illumination_functions(folder: Path, plate: str, channels: Sequence[str]) -> np.ndarray:
    """CellProfiler's illumination functions ``<plate>_Illum<Ch>.npy`` for each channel, (C, H, W)."""
    out = []
    for c in channels:
        path = Path(folder) / f"{plate}_Illum{c}.npy"
        if not path.is_file():
            raise FactordiffError(f"{path}: no illumination function for channel {c} of plate {plate}")
        fn = np.load(path, allow_pickle=False).astype(np.float32)
        if fn.ndim != 2 or not np.isfinite(fn).all() or fn.min() <= 0:
            raise FactordiffError(
                f"{path}: expected a 2-D array of positive finite values, got {fn.dtype} {fn.shape}"
            )
        out.append(fn)
    return np.stack(out)


def correct_illumination(field: np.ndarray, functions: np.ndarray) -> np.ndarray:
    """``field`` (C, H, W) divided by the illumination functions, as float32."""
    if functions.shape != field.shape:
        raise FactordiffError(
            f"illumination functions of shape {functions.shape} for a field of shape {field.shape}"
        )
    return field.astype(np.float32) / functions


def otsu_threshold(plane: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a grayscale plane (between-class variance maximised over ``bins`` levels)."""
    hist, edges = np.histogram(plane, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mean0 = m0 / np.maximum(w0, 1)
    mean1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mean0 - mean1) ** 2
    return float(centres[int(np.argmax(between[:-1]))])


def nucleus_centres(dna: np.ndarray, min_area: int = 30) -> np.ndarray:
    """(N, 2) integer (y, x) centres of the nuclei of a DNA plane: Otsu threshold, connected
    components of at least ``min_area`` pixels, centre of mass of each."""
    from scipy import ndimage

    mask = dna > otsu_threshold(dna)
    labels, n = ndimage.label(mask)
    if n == 0:
        return np.zeros((0, 2), np.int64)
    areas = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
    keep = np.flatnonzero(areas >= min_area) + 1
    if not len(keep):
        return np.zeros((0, 2), np.int64)
    return np.rint(np.asarray(ndimage.center_of_mass(mask, labels, keep))).astype(np.int64).reshape(-1, 2)


def crop(field: np.ndarray, centre: Sequence[int], size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """A ``size`` x ``size`` crop of ``field`` (C, H, W) around ``centre`` (y, x), shifted to lie
    inside the field; returns the crop and its top-left corner (y, x)."""
    _, h, w = field.shape
    if size > min(h, w):
        raise FactordiffError(f"crop of {size} pixels from a field of {w}x{h}")
    y0 = int(np.clip(centre[0] - size // 2, 0, h - size))
    x0 = int(np.clip(centre[1] - size // 2, 0, w - size))
    return field[:, y0 : y0 + size, x0 : x0 + size], (y0, x0)


@dataclass
class PlateScaler:
    """Per plate and channel intensity normalisation to uint8: ``low`` and ``high`` percentiles
    (fitted with ``fit`` on training fields only) map to 0 and 255, clipped outside."""

    low: float = 0.1
    high: float = 99.9
    bounds: dict[str, np.ndarray] = field(default_factory=dict)  # plate -> (C, 2)

    def fit(self, plates: Sequence[str], fields: Sequence[np.ndarray]) -> "PlateScaler":
        by: dict[str, list[np.ndarray]] = {}
        for p, f in zip(plates, fields):
            by.setdefault(str(p), []).append(f.reshape(f.shape[0], -1))
        for p, fs in by.items():
            x = np.concatenate(fs, 1).astype(np.float32)
            self.bounds[p] = np.stack(
                [np.percentile(x, self.low, axis=1), np.percentile(x, self.high, axis=1)], 1
            )
        return self

    def __call__(self, plate: str, field: np.ndarray) -> np.ndarray:
        if str(plate) not in self.bounds:
            raise FactordiffError(f"plate {plate}: no training field to fit its intensity normalisation on")
        b = self.bounds[str(plate)]
        lo, hi = b[:, 0, None, None], b[:, 1, None, None]
        scaled = (field.astype(np.float32) - lo) / np.maximum(hi - lo, 1e-6)
        return np.rint(np.clip(scaled, 0, 1) * 255).astype(np.uint8)


FIELD_KINDS = ("phenix", "load_data", "rxrx", "bbbc021", "npy")


def parse_channels(text: str | None, numbered: bool) -> dict[str, int] | list[str] | None:
    """``"DNA=5,ER=2"`` (a channel map, for ``numbered`` formats) or ``"DNA,ER"`` (names)."""
    if not text:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not numbered:
        if any("=" in t for t in items):
            raise FactordiffError(
                f"--channels {text!r}: expected channel names in order, e.g. DNA,ER,RNA,AGP,Mito"
            )
        return items
    out: dict[str, int] = {}
    for t in items:
        name, sep, num = t.partition("=")
        if not sep or not num.strip().isdigit():
            raise FactordiffError(
                f"--channels {text!r}: expected NAME=NUMBER pairs in order, e.g. "
                "DNA=5,ER=2,RNA=6,AGP=3,Mito=4"
            )
        out[name.strip()] = int(num)
    if len(set(out.values())) != len(out):
        raise FactordiffError(f"--channels {text!r}: a channel number appears twice")
    return out


def open_fields(
    ref: str, channels: str | None = None, root: Path | None = None, plate: str | None = None
) -> FieldTable:
    """A field table from ``KIND:PATH`` (``phenix:DIR``, ``load_data:TABLE``, ``rxrx:metadata.csv``,
    ``bbbc021:BBBC021_v1_image.csv``, ``npy:INDEX.csv``) and ``--channels`` text."""
    kind, _, arg = ref.partition(":")
    if kind not in FIELD_KINDS or not arg:
        raise FactordiffError(f"{ref!r}: expected one of {', '.join(k + ':PATH' for k in FIELD_KINDS)}")
    path = Path(arg)
    if kind == "phenix":
        cmap = parse_channels(channels, True)
        if cmap is None:
            raise FactordiffError(
                "phenix: --channels is required (which ch number holds which stain), e.g. "
                "DNA=5,ER=2,RNA=6,AGP=3,Mito=4"
            )
        return phenix_fields(path, cmap, plate)
    if kind == "rxrx":
        return rxrx_fields(path, parse_channels(channels, True), root)
    if kind == "bbbc021":
        if channels:
            raise FactordiffError("bbbc021: the channels are fixed (DNA, Tubulin, Actin); drop --channels")
        return bbbc021_fields(path, root)
    names = parse_channels(channels, False) or list(CELL_PAINTING)
    return load_data_fields(path, names, root) if kind == "load_data" else npy_fields(path, names, root=root)


def concat_fields(tables: list[FieldTable]) -> FieldTable:
    """Several field tables of the same kind and channels as one (plates imaged into folders of their
    own); every metadata column is kept, empty where a table lacks it."""
    if len(tables) == 1:
        return tables[0]
    first = tables[0]
    for t in tables[1:]:
        if type(t) is not type(first) or t.channels != first.channels:
            raise FactordiffError(
                f"{t.source}: channels {', '.join(t.channels)}; expected {', '.join(first.channels)} like "
                f"{first.source} (one kind of source and channel list per set)"
            )
    columns = list(dict.fromkeys(c for t in tables for c in t.metadata))
    meta = {
        c: np.concatenate([t.metadata.get(c, np.full(len(t), "", object)).astype(str) for t in tables])
        for c in columns
    }
    files = [row for t in tables for row in t.files]
    return type(first)(first.channels, files, meta, " + ".join(t.source for t in tables))


def check_fields(fields: FieldTable, bit_depth: int | None = None, progress: bool = True) -> dict:
    """Read every field (each file checked); their size, pixel type and per-channel intensity
    percentiles (1, 50, 99.9) over every field. A progress bar on a terminal from 20 fields on."""
    import sys

    from tqdm.auto import tqdm

    if not len(fields):
        raise FactordiffError(f"{fields.source}: no fields")
    shape, dtype, samples = None, None, [[] for _ in fields.channels]
    rng = np.random.default_rng(0)
    for i in tqdm(
        range(len(fields)),
        desc="reading fields",
        unit="field",
        disable=not (progress and len(fields) >= 20 and sys.stderr.isatty()),
    ):
        f = fields.field(i, bit_depth)
        if shape is None:
            shape, dtype = f.shape, f.dtype
        elif f.shape != shape:
            raise FactordiffError(
                f"{fields.source} field {i} ({fields.files[i][0]}): shape {f.shape}; expected "
                f"{shape} like field 0"
            )
        flat = f.reshape(f.shape[0], -1)
        pick = rng.choice(flat.shape[1], min(flat.shape[1], 4096), replace=False)
        for c in range(len(fields.channels)):
            samples[c].append(flat[c, pick])
    pct = {
        name: [float(v) for v in np.percentile(np.concatenate(s), [1, 50, 99.9])]
        for name, s in zip(fields.channels, samples)
    }
    return {
        "fields": len(fields),
        "channels": list(fields.channels),
        "height": int(shape[1]),
        "width": int(shape[2]),
        "dtype": str(dtype),
        "percentiles_1_50_99.9": pct,
        "metadata": sorted(fields.metadata),
    }


def write_index(fields: FieldTable, out: Path) -> None:
    """A ``load_data``-style CSV of the fields (``FileName_Orig<Ch>``, ``PathName_Orig<Ch>`` and the
    metadata), written atomically."""
    import pandas as pd

    cols: dict[str, list] = {}
    if isinstance(fields, _NpyTable):
        cols["path"] = [str(row[0].resolve()) for row in fields.files]
    else:
        for c, name in enumerate(fields.channels):
            cols[f"FileName_Orig{name}"] = [row[c].name for row in fields.files]
            cols[f"PathName_Orig{name}"] = [str(row[c].parent.resolve()) for row in fields.files]
    cols.update({k: list(v) for k, v in fields.metadata.items()})
    atomic_write_text(Path(out), pd.DataFrame(cols).to_csv(index=False))
