"""Morphological profile tables (CellProfiler-style): one row per well or cell, ``Metadata_*``
columns for the perturbation and the experiment, numeric feature columns.

Reading and cleaning are two steps, because cleaning decides from data and only training rows may
decide anything:

1. ``read_profiles`` reads CSV, CSV.gz and parquet (parquet by column projection and in row batches,
   straight into one float32 matrix) and builds the factors: ``factors`` if given, else every
   metadata column with more than one value that is not an identifier (a distinct value in every
   row, such as the well). Metadata are kept as the text read (``72`` stays ``72``), so written
   output joins with the input. A numeric factor is ordinal (a dose, a time) unless its name says
   it is an experiment id (plate, site, well, batch, ...): those are categorical. Feature columns
   are every other numeric column; a non-numeric one, an infinite value, duplicate column names and
   a factor with one value are errors naming the columns. Nothing is dropped here.
2. ``select_features`` decides the feature columns on the training rows only: a share of missing
   values above ``max_missing``, constant columns, and the field's filters (``FEATURE_SELECT``,
   pycytominer's ``feature_select`` operations); ``ProfileTable.keep`` then keeps those columns and
   drops rows that still miss a value (counted, training and held-out apart).

Per-plate normalisation (``PlateStats``) is fitted later on training rows, and saved with the model
so that a regenerated row can be written back in a plate's raw units.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm.auto import tqdm

from factordiff.errors import FactordiffError
from factordiff.factors import Factor, FactorSpec

Normalize = Literal["none", "plate", "controls"]
NORMALIZE: tuple[str, ...] = ("none", "plate", "controls")
TECHNICAL_WORDS = (
    "batch",
    "plate",
    "well",
    "site",
    "source",
    "row",
    "col",
    "date",
    "barcode",
    "replicate",
    "week",
    "microscope",
    "lab",
    "field",
    "image",
    "object",
)
MAD_TO_SD = 1.4826  # scales the median absolute deviation to a standard deviation under normality
NA_TEXT = ["", "NA", "N/A", "n/a", "NaN", "nan", "-nan", "null", "NULL", "None", "#N/A", "<NA>"]
BLOCK = 256  # feature columns per block where a statistic is computed column block by column block


@dataclass
class ProfileTable:
    """A profile table.

    Args:
        features: (N, F) float32 feature values (NaN where missing, until ``keep``).
        factors: (N, K) int64 value indices into ``spec`` (-1: a value the run's spec does not know,
            only in tables read with ``read_profiles_like``).
        spec: the factors, each with a role (``biological`` or ``technical``).
        feature_names: the F feature columns, in order.
        metadata: every metadata column as the text read (N rows each; ``""`` where empty).
        rows: the source row number of each row (0-based, in the file's order).
        source: the file, for messages.
        cleaning: what was dropped and why (counts and column names).
    """

    features: np.ndarray
    factors: np.ndarray
    spec: FactorSpec
    feature_names: list[str]
    metadata: dict[str, np.ndarray]
    rows: np.ndarray
    source: str = ""
    cleaning: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.features)

    def subset(self, mask_or_index: np.ndarray) -> "ProfileTable":
        return replace(
            self,
            features=self.features[mask_or_index],
            factors=self.factors[mask_or_index],
            metadata={k: v[mask_or_index] for k, v in self.metadata.items()},
            rows=self.rows[mask_or_index],
        )

    def text(self, k: int, v: int) -> str:
        """Factor ``k``'s value ``v`` as the table writes it (the text of a row that has it)."""
        f = self.spec.factors[k]
        rows = np.flatnonzero(self.factors[:, k] == v)
        if len(rows) and f.name in self.metadata:
            return str(self.metadata[f.name][rows[0]])
        return number_text(f.values[v]) if f.kind == "ordinal" else str(f.values[v])

    def keep(
        self, names: list[str], train: np.ndarray, in_place: bool = False
    ) -> tuple["ProfileTable", np.ndarray]:
        """The table with feature columns ``names`` only and without rows that miss one of them;
        the training mask of the rows kept. The dropped rows are counted in ``cleaning``.
        ``in_place`` compacts the columns inside this table's own feature buffer (no second copy
        of a large table; this table's features are then no longer valid)."""
        index = {c: j for j, c in enumerate(self.feature_names)}
        cols = np.asarray([index[c] for c in names], np.int64)
        if len(cols) == len(self.feature_names) and (cols == np.arange(len(cols))).all():
            features = self.features
        elif in_place and self.features.flags.c_contiguous and self.features.flags.writeable:
            features = _compact_columns(self.features, cols)
        else:
            features = self.features[:, cols]
        complete = np.ones(len(self), bool)
        for i in range(0, len(self), 65536):
            complete[i : i + 65536] = ~np.isnan(features[i : i + 65536]).any(1)
        cleaning = {
            **self.cleaning,
            "rows_dropped_missing": int((~complete).sum()),
            "train_rows_dropped_missing": int((~complete & train).sum()),
            "heldout_rows_dropped_missing": int((~complete & ~train).sum()),
            "rows": int(complete.sum()),
            "features": len(names),
        }
        table = replace(self, features=features, feature_names=list(names), cleaning=cleaning)
        return (table, train) if complete.all() else (table.subset(complete), train[complete])


def _compact_columns(x: np.ndarray, cols: np.ndarray, rows: int = 4096) -> np.ndarray:
    """``x[:, cols]`` written over the front of ``x``'s own buffer, a block of rows at a time (the
    block is copied out first, and its destination ends before the next block's source begins),
    returned as a view of that buffer."""
    n, f = x.shape
    flat = x.reshape(-1)
    k = len(cols)
    for r in range(0, n, rows):
        block = x[r : r + rows][:, cols].copy()
        flat[r * k : r * k + block.size] = block.reshape(-1)
    return flat[: n * k].reshape(n, k)


def number_text(v: float) -> str:
    """A number as a table would write it: ``72`` for 72.0, ``0.5`` for 0.5."""
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else repr(float(v))


def is_metadata(column: str) -> bool:
    return column.startswith("Metadata_") or "_Metadata_" in column


def default_role(name: str) -> str:
    """``technical`` for experiment columns (batch, plate, well, source, date, ...), else ``biological``."""
    low = name.lower()
    return "technical" if any(w in low for w in TECHNICAL_WORDS) else "biological"


def fingerprint(path: Path | str) -> str:
    """A content hash of a file (BLAKE2b, 16 bytes), read in 8 MB blocks; a ``.gz`` file's
    decompressed content, so that the same table written again (its gzip header holds the time of
    writing) keeps its fingerprint."""
    h = hashlib.blake2b(digest_size=16)
    with (gzip.open if str(path).lower().endswith(".gz") else open)(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 23), b""):
            h.update(block)
    return h.hexdigest()


def _parquet(name: str) -> bool:
    return name.endswith(".parquet") or name.endswith(".pq")


def _header(path: Path) -> list[str]:
    """The column names of a table, as written (duplicates included)."""
    if not path.is_file():
        raise FactordiffError(f"{path}: no such file")
    name = path.name.lower()
    try:
        if _parquet(name):
            import pyarrow.parquet as pq

            return [str(c) for c in pq.read_schema(path).names]
        if name.endswith(".csv") or name.endswith(".csv.gz"):
            opener = gzip.open if name.endswith(".gz") else open
            with opener(path, "rt", newline="") as fh:
                return next(csv.reader(fh), [])
    except Exception as e:  # pyarrow, gzip and csv raise many types for a corrupt file
        raise FactordiffError(f"{path}: cannot read the table ({_reason(e)})") from None
    raise FactordiffError(f"{path}: expected a .csv, .csv.gz or .parquet profile table")


def _reason(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"


def _read(path: Path, meta_cols: list[str], feature_cols: list[str]):
    """Metadata columns as text (a DataFrame of str, ``""`` where empty) and the feature columns as
    one (N, F) float32 matrix (NaN where missing). Parquet is read by column and in row batches."""
    import pandas as pd

    name = path.name.lower()
    try:
        if _parquet(name):
            import pyarrow as pa
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(path, pre_buffer=False)
            types = {f.name: f.type for f in pf.schema_arrow}
            bad = [
                c
                for c in feature_cols
                if not (
                    pa.types.is_integer(types[c])
                    or pa.types.is_floating(types[c])
                    or pa.types.is_boolean(types[c])
                )
            ]
            if bad:
                raise _NonNumeric(bad)
            meta = (
                pf.read(columns=meta_cols).to_pandas()
                if meta_cols
                else pd.DataFrame(index=range(pf.metadata.num_rows))
            )
            x = np.empty((pf.metadata.num_rows, len(feature_cols)), np.float32)
            i = 0
            bar = tqdm(total=len(x), desc=f"reading {path.name}", unit="row", disable=len(x) < 100_000)
            # one row group at a time, its buffers handed back after it: the arrow memory held at
            # once is one group's (a whole-file read would hold the table twice)
            parts = (
                (pf.read_row_group(g, columns=feature_cols) for g in range(pf.num_row_groups))
                if pf.num_row_groups > 1
                else pf.iter_batches(columns=feature_cols, batch_size=16384)
            )
            for part in parts:
                n = part.num_rows
                for j, col in enumerate(part.columns):
                    x[i : i + n, j] = col.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
                i += n
                bar.update(n)
                del part
                pa.default_memory_pool().release_unused()
            bar.close()
            meta = meta.astype("string").fillna("")
            return pd.DataFrame({c: meta[c].to_numpy(str) for c in meta_cols}), x
        frame = pd.read_csv(
            path,
            usecols=meta_cols + feature_cols,
            dtype={c: str for c in meta_cols},
            keep_default_na=False,
            na_values={c: NA_TEXT for c in feature_cols},
            low_memory=False,
        )
    except _NonNumeric:
        raise
    except Exception as e:  # pandas and pyarrow raise many types for a corrupt file
        raise FactordiffError(f"{path}: cannot read the table ({_reason(e)})") from None
    bad = [c for c in feature_cols if not _is_numeric(frame[c])]
    if bad:
        raise _NonNumeric(bad)
    return frame[meta_cols].fillna(""), frame[feature_cols].to_numpy(np.float32)


class _NonNumeric(Exception):
    def __init__(self, columns: list[str]):
        self.columns = columns


def _read_checked(path: Path, meta_cols: list[str], feature_cols: list[str]):
    try:
        meta, x = _read(path, meta_cols, feature_cols)
    except _NonNumeric as e:
        shown = ", ".join(e.columns[:5]) + (" ..." if len(e.columns) > 5 else "")
        raise FactordiffError(
            f"{path}: feature column(s) {shown} are not numeric; "
            "name metadata columns Metadata_* or drop them"
        ) from None
    if not len(x):
        raise FactordiffError(f"{path}: the table has no rows")
    infinite = np.zeros(x.shape[1], bool)
    for i in range(0, len(x), 65536):
        infinite |= np.isinf(x[i : i + 65536]).any(0)
    if infinite.any():
        names = [feature_cols[j] for j in np.flatnonzero(infinite)]
        raise FactordiffError(
            f"{path}: infinite values in feature column(s) "
            f"{', '.join(names[:5])}{' ...' if len(names) > 5 else ''}"
        )
    return meta, x


def _factor(name: str, cells: np.ndarray, role: str) -> tuple[Factor, np.ndarray]:
    """A factor from a metadata column's text: ordinal when every value is a finite number and the
    name is not an experiment id's (``default_role``), else categorical on the stripped text."""
    text = np.char.strip(cells.astype(str))
    numbers = _numbers(text)
    if numbers is not None and default_role(name) == "biological":
        values = np.unique(numbers)
        idx = np.searchsorted(values, numbers)
        return Factor(name, tuple(float(v) for v in values), "ordinal", role), idx.astype(np.int64)
    values, idx = np.unique(np.where(text == "", "NA", text), return_inverse=True)
    return Factor(name, tuple(str(v) for v in values), "categorical", role), idx.astype(np.int64)


def _numbers(text: np.ndarray) -> np.ndarray | None:
    """``text`` as finite floats, or None if any cell is not a finite number."""
    try:
        numbers = text.astype(np.float64)
    except ValueError:
        return None
    return numbers if np.isfinite(numbers).all() else None


def _duplicates(path: Path, columns: list[str]) -> None:
    seen, dup = set(), []
    for c in columns:
        if c in seen and c not in dup:
            dup.append(c)
        seen.add(c)
    if dup:
        raise FactordiffError(
            f"{path}: duplicate column name(s) {', '.join(map(repr, dup[:5]))}; rename them"
        )


def metadata_factors(
    path: Path, meta, meta_cols: list[str], factors: list[str] | None, roles: dict[str, str] | None
) -> tuple[FactorSpec, np.ndarray, list[str]]:
    """The factors of a metadata table (text, a DataFrame): the columns ``factors`` (each needs two
    or more values), else every column of ``meta_cols`` with more than one value that is not an
    identifier; each with its role (``roles`` or ``default_role``). Returns the spec, the (N, K)
    value indices and the identifier columns skipped."""
    skipped: list[str] = []
    if factors:
        names = list(factors)
        single = [c for c in names if meta[c].nunique() < 2]
        if single:
            raise FactordiffError(
                f"{path}: factor column {single[0]!r} has one value ({meta[single[0]].iloc[0]!r}); "
                "a factor needs two or more"
            )
    else:
        many = [c for c in meta_cols if meta[c].nunique() > 1]
        names = [c for c in many if meta[c].nunique() < len(meta)]
        skipped = [c for c in many if c not in names]
        if not names:
            raise FactordiffError(
                f"{path}: no Metadata_* column with more than one value; name the factor "
                "columns with --factors"
            )
    roles = dict(roles or {})
    built = []
    for name in names:
        role = roles.pop(name, None) or default_role(name)
        if role not in ("biological", "technical"):
            raise FactordiffError(f"role of {name}: expected biological or technical, got {role!r}")
        built.append(_factor(name, meta[name].to_numpy(str), role))
    if roles:
        raise FactordiffError(
            f"--roles: {', '.join(roles)} is not a factor column; factors are {', '.join(names)}"
        )
    return FactorSpec(tuple(f for f, _ in built)), np.stack([i for _, i in built], 1), skipped


def read_profiles(
    path: Path | str,
    factors: list[str] | None = None,
    roles: dict[str, str] | None = None,
) -> ProfileTable:
    """Read a profile table and build its factors (see the module docstring); nothing is dropped.

    Args:
        path: a .csv, .csv.gz or .parquet file.
        factors: the factor columns (None: every non-identifier metadata column with > 1 value).
        roles: role per factor name (``biological`` or ``technical``); others get ``default_role``.
    """
    path = Path(path)
    columns = _header(path)
    _duplicates(path, columns)
    meta_cols = [c for c in columns if is_metadata(c)]
    if factors:
        missing = [c for c in factors if c not in columns]
        if missing:
            raise FactordiffError(
                f"{path}: no column {', '.join(map(repr, missing))}; metadata columns are "
                f"{', '.join(meta_cols[:15]) or 'none'}"
            )
        meta_cols += [c for c in factors if c not in meta_cols]
    feature_cols = [c for c in columns if c not in meta_cols]
    if not feature_cols:
        raise FactordiffError(f"{path}: no feature columns (every column is metadata)")
    meta, x = _read_checked(path, meta_cols, feature_cols)
    cleaning: dict = {"rows_read": len(x), "features_read": len(feature_cols)}
    spec, indices, skipped = metadata_factors(path, meta, meta_cols, factors, roles)
    if skipped:
        cleaning["identifier_columns_skipped"] = skipped
    return ProfileTable(
        x,
        indices,
        spec,
        feature_cols,
        {c: meta[c].to_numpy(str) for c in meta_cols},
        np.arange(len(x)),
        str(path),
        cleaning,
    )


FEATURE_SELECT = ("variance_threshold", "correlation_threshold", "blocklist")


def select_features(
    table: ProfileTable, train: np.ndarray, max_missing: float = 0.05, operations: tuple[str, ...] = ()
) -> tuple[list[str], dict]:
    """The feature columns to keep, decided on the rows of ``train`` only: a share of missing values
    above ``max_missing`` drops a column, then a column constant on the training rows, then each of
    ``operations`` (``FEATURE_SELECT``: pycytominer's ``feature_select`` operations of those names,
    with its default cut-offs, run by pycytominer on the training rows). Returns the names and what
    was dropped by which step."""
    x, names = table.features, table.feature_names
    rows = np.flatnonzero(train)
    missing = np.zeros(len(names))
    constant = np.zeros(len(names), bool)
    for j in tqdm(
        range(0, len(names), BLOCK), desc="feature statistics", unit="block", disable=len(rows) < 100_000
    ):
        block = x[rows, j : j + BLOCK]
        nan = np.isnan(block)
        missing[j : j + BLOCK] = nan.mean(0)
        with np.errstate(invalid="ignore"):
            lo, hi = np.nanmin(np.where(nan, np.inf, block), 0), np.nanmax(np.where(nan, -np.inf, block), 0)
        constant[j : j + BLOCK] = ~(hi > lo)
    drop_missing = missing > max_missing
    drop_constant = constant & ~drop_missing
    cleaning = {
        "max_missing": max_missing,
        "columns_dropped_missing": [names[j] for j in np.flatnonzero(drop_missing)],
        "columns_dropped_constant": [names[j] for j in np.flatnonzero(drop_constant)],
    }
    kept = [c for j, c in enumerate(names) if not (drop_missing[j] or drop_constant[j])]
    for op in operations:
        if op not in FEATURE_SELECT:
            raise FactordiffError(
                f"profiles.feature_select: expected some of {', '.join(FEATURE_SELECT)}, got {op!r}"
            )
        before = kept
        kept = _pycytominer_select(table, rows, kept, op)
        cleaning[f"columns_dropped_{op}"] = [c for c in before if c not in set(kept)]
    if not kept:
        raise FactordiffError(
            f"{table.source}: every feature column is constant or mostly missing on training rows"
        )
    cleaning["operations"] = ["missing", "constant", *operations]
    return kept, cleaning


NON_MORPHOLOGICAL = re.compile(
    r"(^|_)(Location_|Number_Object_Number|Parent_|Children_|ImageNumber|ObjectNumber|TableNumber)"
)


def _pycytominer_select(table: ProfileTable, rows: np.ndarray, names: list[str], op: str) -> list[str]:
    """pycytominer's ``feature_select(operation=op)`` on the training rows' columns ``names``;
    ``blocklist`` also drops what is not morphology (``NON_MORPHOLOGICAL``: object positions,
    object numbers and parent/child counts, image numbers)."""
    import pandas as pd
    from pycytominer import feature_select

    if op == "blocklist":
        names = [c for c in names if not NON_MORPHOLOGICAL.search(c)]

    index = {c: j for j, c in enumerate(table.feature_names)}
    # variance_threshold and blocklist judge each column alone: run them a block of columns at a
    # time, so a JUMP-sized table is never copied whole; correlation_threshold needs every column
    step = len(names) if op == "correlation_threshold" else BLOCK
    kept: set[str] = set()
    for j in range(0, len(names), step):
        cols = names[j : j + step]
        frame = pd.DataFrame(table.features[np.ix_(rows, [index[c] for c in cols])], columns=cols)
        kept |= set(feature_select(frame, features=cols, operation=op).columns)
    return [c for c in names if c in kept]


def _is_numeric(column) -> bool:
    import pandas as pd

    return pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column)


def plate_column(table: ProfileTable) -> str:
    """The metadata column naming the plate: the first whose name ends in ``plate`` (any case)."""
    for c in table.metadata:
        if c.lower().endswith("plate"):
            return c
    raise FactordiffError(
        f"{table.source}: no plate column (a metadata column named *Plate) for per-plate normalisation"
    )


@dataclass
class PlateStats:
    """Per-plate robust location and spread, (x - median) / (1.4826 MAD) as pycytominer's
    ``mad_robustize``, fitted on training rows (``fit_plates``) and saved with the model, so that
    ``raw`` writes a profile back in a plate's units.

    Args:
        mode: ``plate`` (statistics of each plate's training rows) or ``controls`` (of its training
            control rows).
        column: the plate column.
        plates: plate ids (text as read).
        center, scale: (P, F) medians and spreads.
    """

    mode: str
    column: str
    plates: list[str]
    center: np.ndarray
    scale: np.ndarray

    def saved(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(the JSON entry, the arrays) a model file keeps of these statistics."""
        meta = {"mode": self.mode, "column": self.column, "names": self.plates}
        return meta, {"plates.center": self.center, "plates.scale": self.scale}

    @classmethod
    def restore(cls, meta: dict | None, tensors: dict) -> "PlateStats | None":
        """The statistics ``saved`` wrote (None when the entry is None: no normalisation)."""
        if meta is None:
            return None
        return cls(
            meta["mode"],
            meta["column"],
            list(meta["names"]),
            np.asarray(tensors["plates.center"]),
            np.asarray(tensors["plates.scale"]),
        )

    def index(self, plates: np.ndarray) -> np.ndarray:
        """Row index into ``self.plates`` per plate id, -1 for a plate without statistics."""
        where = {p: i for i, p in enumerate(self.plates)}
        return np.asarray([where.get(str(p), -1) for p in plates], np.int64)

    def apply(self, table: ProfileTable) -> np.ndarray:
        """The table's features in normalised units (every plate must have statistics)."""
        idx = self.index(table.metadata[self.column])
        if (idx < 0).any():
            raise FactordiffError(
                f"{table.source}: plate {table.metadata[self.column][idx < 0][0]} has no statistics"
            )
        out = np.empty_like(table.features)
        for p in np.unique(idx):
            rows = idx == p
            out[rows] = (table.features[rows] - self.center[p]) / self.scale[p]
        return out

    def raw(self, z: np.ndarray, plates: list[list[int]]) -> np.ndarray:
        """Normalised rows ``z`` back in raw units: row i in the mean units of the plates ``plates[i]``
        (indices into ``self.plates``: the target plate, or every plate of the target batch)."""
        out = np.empty_like(z)
        for i, group in enumerate(plates):
            out[i] = z[i] * self.scale[group].mean(0) + self.center[group].mean(0)
        return out

    def merged(self, other: "PlateStats") -> "PlateStats":
        """These statistics and those of ``other``'s plates that these lack."""
        new = [i for i, p in enumerate(other.plates) if p not in set(self.plates)]
        return PlateStats(
            self.mode,
            self.column,
            self.plates + [other.plates[i] for i in new],
            np.concatenate([self.center, other.center[new]]),
            np.concatenate([self.scale, other.scale[new]]),
        )


def fit_plates(
    table: ProfileTable,
    mode: Normalize,
    fit_rows: np.ndarray,
    controls: np.ndarray | None = None,
    plate: str | None = None,
) -> PlateStats | None:
    """Per-plate statistics (``PlateStats``) from the rows of ``fit_rows`` (and ``controls`` in
    ``controls`` mode) of each plate; None for ``none``. A spread of zero (a feature constant on a
    plate) falls back to the plate's standard deviation and then to 1."""
    if mode == "none":
        return None
    if mode not in NORMALIZE:
        raise FactordiffError(f"--normalize: expected one of {', '.join(NORMALIZE)}, got {mode!r}")
    plate = plate or plate_column(table)
    if plate not in table.metadata:
        raise FactordiffError(f"{table.source}: no column {plate!r} for per-plate normalisation")
    ref = fit_rows & (controls if mode == "controls" else True)
    plates = table.metadata[plate]
    names = sorted(set(plates.tolist()))
    center = np.empty((len(names), table.features.shape[1]), np.float32)
    scale = np.empty_like(center)
    for i, p in enumerate(names):
        base = table.features[(plates == p) & ref]
        if not len(base):
            what = "control rows" if mode == "controls" else "rows"
            raise FactordiffError(f"{table.source}: plate {p} has no training {what} to normalise to")
        med = np.median(base, 0)
        mad = MAD_TO_SD * np.median(np.abs(base - med), 0)
        sd = base.std(0)
        center[i], scale[i] = med, np.where(mad > 0, mad, np.where(sd > 0, sd, 1.0))
    return PlateStats(mode, plate, names, center, scale)


def read_profiles_like(
    path: Path | str, spec: FactorSpec, feature_names: list[str], strict: bool = False
) -> ProfileTable:
    """A table in the layout of a run's: the run's factor columns (``spec``) mapped to its values by
    name (a value the run does not know gets index -1; ``unknown_values`` names them), and its
    feature columns (``feature_names``) by name, which must all be present; other metadata columns
    are carried through. Nothing is fitted; rows that miss a feature value are dropped and counted
    (``keep``), or with ``strict`` (a user's new rows) refused naming the row and column."""
    path = Path(path)
    columns = _header(path)
    _duplicates(path, columns)
    missing = [c for c in [*spec.names, *feature_names] if c not in columns]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise FactordiffError(f"{path}: no column {shown}; expected the run's factor and feature columns")
    meta_cols = [c for c in columns if (is_metadata(c) or c in spec.names) and c not in feature_names]
    meta, x = _read_checked(path, meta_cols, list(feature_names))
    if strict and np.isnan(x).any():
        r, c = map(int, np.argwhere(np.isnan(x))[0])
        raise FactordiffError(f"{path}: row {r + 1}, column {feature_names[c]}: expected a number")
    factors = np.full((len(x), len(spec)), -1, np.int64)
    for k, f in enumerate(spec.factors):
        cells = np.char.strip(meta[f.name].to_numpy(str))
        for value in np.unique(cells):
            try:
                factors[cells == value, k] = f.index(str(value) if value != "" else "NA")
            except FactordiffError:
                pass
    table = ProfileTable(
        x,
        factors,
        spec,
        list(feature_names),
        {c: meta[c].to_numpy(str) for c in meta_cols},
        np.arange(len(x)),
        str(path),
        {"rows_read": len(x), "features_read": len(feature_names)},
    )
    return table.keep(list(feature_names), np.ones(len(x), bool), in_place=True)[0]


def unknown_values(table: ProfileTable, rows: np.ndarray) -> list[str]:
    """``F=V`` for each factor value in ``rows`` that the table's spec does not know."""
    out = []
    for k, f in enumerate(table.spec.factors):
        bad = rows[table.factors[rows, k] < 0]
        out += [f"{f.name}={v}" for v in sorted(set(table.metadata[f.name][bad].tolist()))]
    return out
