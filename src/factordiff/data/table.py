"""Read and write a folder of images with a CSV table of factor values.

The table is a UTF-8 CSV file with a header row, one column of image paths and one column per
factor, e.g.::

    filename,compound,dose,batch
    images/a01.png,DMSO,0,b1
    images/a02.png,taxol,0.5,b1

* The image column is ``image_column`` if given, else the first column named path, image,
  image_path, file, filename or filepath (any case), else the first column whose every value ends
  with an image suffix (.png .jpg .jpeg .bmp .tif .tiff). Relative paths resolve against the CSV
  file's folder.
* The factor columns are ``factors`` if given, else every other column, in order. A factor whose
  every value is a number is ordinal, its values the sorted distinct numbers (as floats); otherwise
  it is categorical, its values the distinct strings sorted lexically.
* Cells are stripped of surrounding whitespace and blank rows are skipped. Rows are numbered like a
  spreadsheet's: the header is row 1 (the number is the file's line number).

Every problem raises a one-line FactordiffError naming the CSV file and the row or column.
"""

from __future__ import annotations

import csv
import math
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from factordiff.data.base import FactorDataset
from factordiff.data.images import IMAGE_SUFFIXES, PROGRESS_MIN_FILES, read_images
from factordiff.errors import FactordiffError
from factordiff.factors import Factor, FactorSpec, Kind, Value

IMAGE_COLUMN_NAMES = ("path", "image", "image_path", "file", "filename", "filepath")
TABLE_NAME = "factors.csv"

Row = tuple[int, list[str]]  # (row number, stripped cells)


def read_table(
    csv_path: Path, factors: list[str] | None = None, image_column: str | None = None
) -> FactorDataset:
    """Read a CSV table of image paths and factor values, and the images it names.

    Args:
        csv_path: the CSV file.
        factors: the factor columns, in this order; None takes every column but the image column.
        image_column: the column of image paths; None finds it (see the module docstring).

    Returns:
        A FactorDataset with ``source=str(csv_path)``; images are (N, H, H, C) uint8.

    Raises:
        FactordiffError: a one-line message naming the file and the row or column at fault.
    """
    csv_path = Path(csv_path)
    header, rows = _read_csv(csv_path)
    image_col = _find_image_column(csv_path, header, rows, image_column)
    names = _factor_columns(csv_path, header, image_col, factors)
    paths = _image_paths(csv_path, header[image_col], [(n, r[image_col]) for n, r in rows])
    built = [_build_factor(csv_path, name, [(n, r[header.index(name)]) for n, r in rows]) for name in names]
    spec = FactorSpec(tuple(f for f, _ in built))
    indices = np.stack([idx for _, idx in built], axis=1)
    images = read_images(paths, labels=[f"{csv_path} row {n}" for n, _ in rows])
    _check_square(csv_path, images, paths[0])
    return FactorDataset(images, indices, spec, source=str(csv_path))


def _read_csv(csv_path: Path) -> tuple[list[str], list[Row]]:
    """The header and the non-blank data rows, each checked to have as many fields as the header."""
    if not csv_path.is_file():
        raise FactordiffError(f"{csv_path}: no such file")
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            records = [(reader.line_num, [cell.strip() for cell in r]) for r in reader]
    except UnicodeDecodeError as e:
        raise FactordiffError(f"{csv_path}: not UTF-8 text (byte {e.start}); expected a CSV table") from None
    except csv.Error as e:
        raise FactordiffError(f"{csv_path} row {reader.line_num}: malformed CSV ({e})") from None
    records = [(n, r) for n, r in records if any(r)]
    if not records:
        raise FactordiffError(
            f"{csv_path}: empty file; expected a header row naming the image column and the factor columns"
        )
    (header_row, header), rows = records[0], records[1:]
    _check_header(csv_path, header_row, header)
    if not rows:
        raise FactordiffError(f"{csv_path}: header only, no data rows; expected one row per image")
    for n, r in rows:
        if len(r) != len(header):
            raise FactordiffError(
                f"{csv_path} row {n}: {len(r)} fields; expected {len(header)} like the header "
                f"({_columns(header)})"
            )
    return header, rows


def _check_header(csv_path: Path, row: int, header: list[str]) -> None:
    """Reject a missing header (data in row 1), unnamed columns and duplicate names."""
    for cell in header:
        if cell.lower().endswith(IMAGE_SUFFIXES):
            raise FactordiffError(
                f"{csv_path}: no header row; row {row} looks like data ({cell!r}); expected column names "
                "such as 'filename,compound,dose'"
            )
    for i, cell in enumerate(header):
        if not cell:
            raise FactordiffError(
                f"{csv_path} row {row}: column {i + 1} has no name (a pandas index? save with index=False); "
                "expected a name for every column"
            )
    seen: set[str] = set()
    for cell in header:
        if cell in seen:
            raise FactordiffError(
                f"{csv_path}: duplicate column name {cell!r} in the header ({_columns(header)})"
            )
        seen.add(cell)


def _columns(header: Sequence[str]) -> str:
    """The header for messages: 'columns: a, b, c'."""
    return "columns: " + ", ".join(header)


def _find_image_column(csv_path: Path, header: list[str], rows: list[Row], image_column: str | None) -> int:
    """Position of the image column: the named one, a conventional name, or all values image files."""
    if image_column is not None:
        if image_column not in header:
            raise FactordiffError(f"{csv_path}: no image column {image_column!r}; {_columns(header)}")
        return header.index(image_column)
    for i, name in enumerate(header):
        if name.lower() in IMAGE_COLUMN_NAMES:
            return i
    for i in range(len(header)):
        if all(r[i].lower().endswith(IMAGE_SUFFIXES) for _, r in rows):
            return i
    raise FactordiffError(
        f"{csv_path}: no image column; expected one named {'/'.join(IMAGE_COLUMN_NAMES)} or one whose every "
        f"value ends with {' '.join(IMAGE_SUFFIXES)} ({_columns(header)})"
    )


def _factor_columns(
    csv_path: Path, header: list[str], image_col: int, factors: list[str] | None
) -> list[str]:
    """The factor column names: the requested ones (checked) or every non-image column."""
    image_name = header[image_col]
    if factors is None:
        names = [h for h in header if h != image_name]
    else:
        names = list(factors)
        missing = [f for f in names if f not in header]
        if missing:
            which = ", ".join(repr(m) for m in missing)
            raise FactordiffError(
                f"{csv_path}: no factor column{'s' if len(missing) > 1 else ''} {which}; {_columns(header)}"
            )
        if image_name in names:
            raise FactordiffError(
                f"{csv_path}: column {image_name!r} holds the image paths and cannot also be a factor"
            )
        twice = [f for i, f in enumerate(names) if f in names[:i]]
        if twice:
            raise FactordiffError(f"{csv_path}: factor column {twice[0]!r} requested twice")
    if not names:
        raise FactordiffError(
            f"{csv_path}: no factor columns; expected at least one column besides the image "
            f"column {image_name!r}"
        )
    return names


def _image_paths(csv_path: Path, column: str, cells: list[tuple[int, str]]) -> list[Path]:
    """Resolve each row's image path against the CSV's folder; every file must exist."""
    paths: list[Path] = []
    for n, cell in cells:
        if not cell:
            raise FactordiffError(f"{csv_path} row {n}: no image path in column {column!r}")
        p = Path(cell)
        paths.append(p if p.is_absolute() else csv_path.parent / p)
    missing = [(n, p) for (n, _), p in zip(cells, paths) if not p.is_file()]
    if missing:
        (n, p), more = missing[0], len(missing) - 1
        also = f" (and {more} more row{'s' if more > 1 else ''} with missing files)" if more else ""
        raise FactordiffError(f"{csv_path} row {n}: image file {p} not found{also}")
    return paths


def _number(text: str) -> float | None:
    """``text`` as a float (nan and inf included), or None when it is not a number."""
    if "_" in text:  # float() accepts '1_000'; a table should not
        return None
    try:
        return float(text)
    except ValueError:
        return None


def _build_factor(csv_path: Path, name: str, cells: list[tuple[int, str]]) -> tuple[Factor, np.ndarray]:
    """A Factor from one column's (row, cell) pairs and each row's value index into it."""
    for n, cell in cells:
        if not cell:
            raise FactordiffError(f"{csv_path} row {n}: empty value in factor column {name!r}")
    numbers = [x for x in (_number(cell) for _, cell in cells) if x is not None]
    if len(numbers) < len(cells):
        return _indexed(name, [cell for _, cell in cells], "categorical")
    for (n, cell), x in zip(cells, numbers):
        if not math.isfinite(x):
            raise FactordiffError(
                f"{csv_path} row {n}: {cell!r} in numeric factor column {name!r}; expected a finite number"
            )
    return _indexed(name, numbers, "ordinal")


def _indexed(name: str, keys: Sequence[float] | Sequence[str], kind: Kind) -> tuple[Factor, np.ndarray]:
    """The Factor whose values are the sorted distinct ``keys``, and the index of each key."""
    values: tuple[Value, ...] = tuple(sorted(set(keys)))
    position = {v: i for i, v in enumerate(values)}
    return Factor(name, values, kind), np.array([position[k] for k in keys], np.int64)


def _check_square(csv_path: Path, images: np.ndarray, first: Path) -> None:
    """The model works on square images; say so naming an example file."""
    h, w = images.shape[1:3]
    if h != w:
        raise FactordiffError(
            f"{csv_path}: images are {w}x{h} pixels (e.g. {first}); the model needs square images, "
            "crop or pad them first"
        )


def write_table(dataset: FactorDataset, folder: Path, image_column: str = "path") -> Path:
    """Write ``dataset`` as ``folder/images/00000.png ...`` and ``folder/factors.csv``; return the CSV path.

    The CSV holds the factor *values* (not indices) and paths relative to ``folder``; it is written
    last and atomically (a temporary file in ``folder`` then ``os.replace``), so an existing
    ``factors.csv`` always names complete images. ``read_table`` reads it back with the same images
    and values; note that a categorical factor whose values all look like numbers comes back ordinal.

    Raises:
        FactordiffError: a factor named like ``image_column``, a value a CSV cannot carry back
            (empty or with surrounding spaces), images with 2 channels, or a folder not writable.
    """
    folder = Path(folder)
    spec = dataset.spec
    if image_column in spec.names:
        raise FactordiffError(
            f"write_table: image_column {image_column!r} is also a factor name; choose another"
        )
    cells = [_value_cells(f) for f in spec.factors]
    width = max(5, len(str(len(dataset) - 1)))
    names = [f"images/{i:0{width}d}.png" for i in range(len(dataset))]
    try:
        (folder / "images").mkdir(parents=True, exist_ok=True)
        _write_pngs(dataset.images, [folder / n for n in names])
        rows = [
            [n, *(cells[k][j] for k, j in enumerate(idx))] for n, idx in zip(names, dataset.factors.tolist())
        ]
        return _write_csv_atomic(folder / TABLE_NAME, [image_column, *spec.names], rows)
    except OSError as e:
        raise FactordiffError(f"{folder}: cannot write the table ({e.strerror or e})") from None


def _value_cells(factor: Factor) -> list[str]:
    """The CSV text of each value of ``factor``: floats as repr (exact round trip), others as str."""
    cells = [repr(v) if isinstance(v, float) else str(v) for v in factor.values]
    for v, cell in zip(factor.values, cells):
        if not cell or cell != cell.strip():
            raise FactordiffError(
                f"write_table: factor {factor.name} value {v!r} cannot be written to a CSV cell and read "
                "back (empty or surrounding spaces)"
            )
    return cells


def _write_pngs(images: np.ndarray, paths: list[Path]) -> None:
    """Save each (H, W, C) uint8 image as a PNG (grayscale, RGB or RGBA by C)."""
    from PIL import Image
    from tqdm import tqdm

    channels = images.shape[3]
    if channels not in (1, 3, 4):
        raise FactordiffError(
            f"write_table: cannot write {channels}-channel images as PNG; expected 1, 3 or 4 channels"
        )
    show = len(paths) >= PROGRESS_MIN_FILES and sys.stderr.isatty()
    for img, path in zip(tqdm(images, desc="writing images", unit="img", disable=not show), paths):
        Image.fromarray(img[:, :, 0] if channels == 1 else img).save(path, format="PNG")


def _write_csv_atomic(target: Path, header: list[str], rows: list[list[str]]) -> Path:
    """Write a CSV to a temporary name next to ``target``, then rename it into place."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target
