"""Morphological profile tables (CellProfiler-style): one row per well or cell, ``Metadata_*``
columns for the perturbation and the experiment, numeric feature columns.

``read_profiles`` reads CSV, CSV.gz and parquet and cleans the table the way profiling tools do,
recording every step in ``ProfileTable.cleaning`` so it can be reported:

1. factor columns: ``factors`` if given, else every metadata column with more than one value that
   is not an identifier (a column with a distinct value in every row, such as the well);
2. feature columns: every other numeric column that is not metadata (a metadata column is one
   whose name starts with ``Metadata_`` or contains ``_Metadata_``, as CellProfiler's
   ``Image_Metadata_Plate``); a non-numeric feature column or an infinite value is an error naming
   the columns;
3. feature columns with a share of missing values above ``max_missing`` are dropped, then rows that
   still have any missing value, then constant columns.

Per-plate normalisation (``normalize_plates``) is applied later, once the held-out rows are known,
because its medians and spreads are statistics fitted on data and must come from training rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

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
)
MAD_TO_SD = 1.4826  # scales the median absolute deviation to a standard deviation under normality


@dataclass
class ProfileTable:
    """A cleaned profile table.

    Args:
        features: (N, F) float32 feature values.
        factors: (N, K) int64 value indices into ``spec``.
        spec: the factors, each with a role (``biological`` or ``technical``).
        feature_names: the F feature columns, in order.
        metadata: every metadata column as strings (N rows each), factor columns included.
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
        return ProfileTable(
            self.features[mask_or_index],
            self.factors[mask_or_index],
            self.spec,
            self.feature_names,
            {k: v[mask_or_index] for k, v in self.metadata.items()},
            self.rows[mask_or_index],
            self.source,
            self.cleaning,
        )


def is_metadata(column: str) -> bool:
    return column.startswith("Metadata_") or "_Metadata_" in column


def default_role(name: str) -> str:
    """``technical`` for experiment columns (batch, plate, well, source, date, ...), else ``biological``."""
    low = name.lower()
    return "technical" if any(w in low for w in TECHNICAL_WORDS) else "biological"


def _read_frame(path: Path):
    import pandas as pd

    if not path.is_file():
        raise FactordiffError(f"{path}: no such file")
    name = path.name.lower()
    try:
        if name.endswith(".parquet") or name.endswith(".pq"):
            return pd.read_parquet(path)
        if name.endswith(".csv") or name.endswith(".csv.gz"):
            return pd.read_csv(path, low_memory=False)
    except Exception as e:  # pandas and pyarrow raise many types for a corrupt file
        raise FactordiffError(
            f"{path}: cannot read the table ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:120] if str(e) else ''})"
        ) from None
    raise FactordiffError(f"{path}: expected a .csv, .csv.gz or .parquet profile table")


def _factor(name: str, column, role: str) -> tuple[Factor, np.ndarray]:
    """A factor from a metadata column: ordinal when every value is a finite number."""
    import pandas as pd

    numeric = pd.to_numeric(column, errors="coerce")
    if column.notna().all() and numeric.notna().all() and np.isfinite(numeric).all():
        values = np.sort(numeric.unique()).astype(float)
        idx = np.searchsorted(values, numeric.to_numpy(float))
        return Factor(name, tuple(float(v) for v in values), "ordinal", role), idx.astype(np.int64)
    text = column.astype("string").fillna("NA").str.strip().to_numpy(str)
    values, idx = np.unique(text, return_inverse=True)
    return Factor(name, tuple(str(v) for v in values), "categorical", role), idx.astype(np.int64)


def read_profiles(
    path: Path | str,
    factors: list[str] | None = None,
    roles: dict[str, str] | None = None,
    max_missing: float = 0.05,
) -> ProfileTable:
    """Read and clean a profile table (see the module docstring).

    Args:
        path: a .csv, .csv.gz or .parquet file.
        factors: the factor columns (None: every non-identifier metadata column with > 1 value).
        roles: role per factor name (``biological`` or ``technical``); others get ``default_role``.
        max_missing: feature columns with a larger share of missing values are dropped.
    """
    path = Path(path)
    df = _read_frame(path)
    if df.empty:
        raise FactordiffError(f"{path}: the table has no rows")
    columns = [str(c) for c in df.columns]
    df.columns = columns
    cleaning: dict = {"rows_read": len(df), "max_missing": max_missing}
    meta_cols = [c for c in columns if is_metadata(c)]
    if factors:
        missing = [c for c in factors if c not in columns]
        if missing:
            raise FactordiffError(
                f"{path}: no column {', '.join(map(repr, missing))}; metadata columns are "
                f"{', '.join(meta_cols[:15]) or 'none'}"
            )
        names = list(factors)
    else:
        many = [c for c in meta_cols if df[c].nunique(dropna=False) > 1]
        names = [c for c in many if df[c].nunique(dropna=False) < len(df)]
        cleaning["identifier_columns_skipped"] = [c for c in many if c not in names]
        if not names:
            raise FactordiffError(
                f"{path}: no Metadata_* column with more than one value; name the factor "
                "columns with --factors"
            )
    meta_cols += [c for c in names if c not in meta_cols]
    feature_cols = [c for c in columns if c not in meta_cols]
    if not feature_cols:
        raise FactordiffError(f"{path}: no feature columns (every column is metadata)")
    non_numeric = [c for c in feature_cols if not _is_numeric(df[c])]
    if non_numeric:
        raise FactordiffError(
            f"{path}: feature column(s) {', '.join(non_numeric[:5])}{' ...' if len(non_numeric) > 5 else ''} "
            "are not numeric; name metadata columns Metadata_* or drop them"
        )
    values = df[feature_cols].to_numpy(np.float64)
    infinite = [feature_cols[j] for j in np.flatnonzero(np.isinf(values).any(0))]
    if infinite:
        raise FactordiffError(
            f"{path}: infinite values in feature column(s) "
            f"{', '.join(infinite[:5])}{' ...' if len(infinite) > 5 else ''}"
        )
    share = np.isnan(values).mean(0)
    keep_cols = share <= max_missing
    cleaning["columns_dropped_missing"] = [feature_cols[j] for j in np.flatnonzero(~keep_cols)]
    values, feature_cols = values[:, keep_cols], [c for c, k in zip(feature_cols, keep_cols) if k]
    keep_rows = ~np.isnan(values).any(1)
    cleaning["rows_dropped_missing"] = int((~keep_rows).sum())
    values, df = values[keep_rows], df.loc[keep_rows]
    if not len(values):
        raise FactordiffError(
            f"{path}: every row has a missing feature value; raise the missing-value cutoff"
        )
    constant = np.ptp(values, axis=0) == 0
    cleaning["columns_dropped_constant"] = [c for c, k in zip(feature_cols, constant) if k]
    values, feature_cols = values[:, ~constant], [c for c, k in zip(feature_cols, constant) if not k]
    if not feature_cols:
        raise FactordiffError(f"{path}: every feature column is constant or mostly missing")
    roles = dict(roles or {})
    built = []
    for name in names:
        role = roles.pop(name, None) or default_role(name)
        if role not in ("biological", "technical"):
            raise FactordiffError(f"role of {name}: expected biological or technical, got {role!r}")
        built.append(_factor(name, df[name], role))
    if roles:
        raise FactordiffError(
            f"--roles: {', '.join(roles)} is not a factor column; factors are {', '.join(names)}"
        )
    cleaning.update(rows=len(values), features=len(feature_cols))
    spec = FactorSpec(tuple(f for f, _ in built))
    metadata = {c: df[c].astype("string").fillna("NA").to_numpy(str) for c in meta_cols}
    return ProfileTable(
        values.astype(np.float32),
        np.stack([i for _, i in built], 1),
        spec,
        feature_cols,
        metadata,
        np.flatnonzero(keep_rows),
        str(path),
        cleaning,
    )


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


def normalize_plates(
    table: ProfileTable,
    mode: Normalize,
    fit_rows: np.ndarray,
    controls: np.ndarray | None = None,
    plate: str | None = None,
) -> tuple[np.ndarray, dict]:
    """Robust z-scores per plate, (x - median) / (1.4826 MAD), as pycytominer's ``robustize_mad``.

    Args:
        mode: ``none``, ``plate`` (statistics of the plate's rows) or ``controls`` (of its control rows).
        fit_rows: bool mask of the rows statistics may come from (the training rows: held-out rows
            never set a median).
        controls: bool mask of control rows (``controls`` mode).
        plate: the plate column (None: found by name).

    A spread of zero (a feature constant on a plate) falls back to the plate's standard deviation
    and then to 1. Returns the normalised features and a summary for the report.
    """
    if mode == "none":
        return table.features, {"normalize": "none"}
    if mode not in NORMALIZE:
        raise FactordiffError(f"--normalize: expected one of {', '.join(NORMALIZE)}, got {mode!r}")
    plate = plate or plate_column(table)
    if plate not in table.metadata:
        raise FactordiffError(f"{table.source}: no column {plate!r} for per-plate normalisation")
    ref = fit_rows & (controls if mode == "controls" else True)
    out = np.empty_like(table.features)
    plates = table.metadata[plate]
    for p in np.unique(plates):
        rows = plates == p
        base = table.features[rows & ref]
        if not len(base):
            what = "control rows" if mode == "controls" else "rows"
            raise FactordiffError(f"{table.source}: plate {p} has no training {what} to normalise to")
        med = np.median(base, 0)
        scale = MAD_TO_SD * np.median(np.abs(base - med), 0)
        sd = base.std(0)
        scale = np.where(scale > 0, scale, np.where(sd > 0, sd, 1.0))
        out[rows] = (table.features[rows] - med) / scale
    return out.astype(np.float32), {
        "normalize": mode,
        "plate_column": plate,
        "plates": int(len(np.unique(plates))),
    }


def read_profiles_like(path: Path | str, spec: FactorSpec, feature_names: list[str]) -> ProfileTable:
    """A table of new rows in the layout of a run's table: the run's factor columns (``spec``), whose
    values must be values the run knows, and its feature columns (``feature_names``), which must be
    present and hold finite numbers; other metadata columns are carried through. Nothing is fitted
    or dropped: a missing column, an unknown value or a missing number is one line naming it."""
    import pandas as pd

    path = Path(path)
    df = _read_frame(path)
    missing = [c for c in [*spec.names, *feature_names] if c not in df.columns]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise FactordiffError(f"{path}: no column {shown}; expected the run's factor and feature columns")
    values = df[feature_names].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        r, c = map(int, np.argwhere(bad)[0])
        raise FactordiffError(f"{path}: row {r + 1}, column {feature_names[c]}: expected a number")
    factors = np.zeros((len(df), len(spec)), np.int64)
    for k, f in enumerate(spec.factors):
        cells = df[f.name].astype("string").fillna("NA").str.strip().to_numpy(str)
        for value in np.unique(cells):
            try:
                factors[cells == value, k] = f.index(str(value))
            except FactordiffError as e:
                raise FactordiffError(f"{path}: column {f.name}: {e}") from None
    meta_cols = [c for c in df.columns if is_metadata(c) or c in spec.names]
    metadata = {c: df[c].astype("string").fillna("NA").to_numpy(str) for c in meta_cols}
    return ProfileTable(
        values.astype(np.float32),
        factors,
        spec,
        list(feature_names),
        metadata,
        np.arange(len(df)),
        str(path),
        {"rows": len(df), "rows_read": len(df), "features": len(feature_names)},
    )
