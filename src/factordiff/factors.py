"""FactorSpec: the one description of a dataset's factors of variation."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np

from factordiff.errors import FactordiffError

Kind = Literal["categorical", "ordinal"]
Value = float | str


@dataclass(frozen=True)
class Factor:
    """One factor of variation.

    Args:
        name: identifier used in tables, codes and the CLI (``--set name=value``).
        values: the factor's values in their natural order; images store the *index* into this tuple.
        kind: ``"ordinal"`` for continuous factors sampled on a grid (order and distance matter) or
            ``"categorical"`` (no order).
        role: optional free label, e.g. ``"biological"`` or ``"technical"``.
    """

    name: str
    values: tuple[Value, ...]
    kind: Kind = "categorical"
    role: str | None = None

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise FactordiffError(f"factor name must be a non-empty string, got {self.name!r}")
        if self.kind not in ("categorical", "ordinal"):
            raise FactordiffError(
                f"factor {self.name}: kind must be 'categorical' or 'ordinal', got {self.kind!r}"
            )
        if len(self.values) < 1:
            raise FactordiffError(f"factor {self.name}: needs at least one value")
        if len(set(self.values)) != len(self.values):
            raise FactordiffError(f"factor {self.name}: values must be distinct")
        if self.kind == "ordinal" and not all(isinstance(v, (int, float)) for v in self.values):
            raise FactordiffError(f"factor {self.name}: an ordinal factor needs numeric values")

    @property
    def size(self) -> int:
        return len(self.values)

    def index(self, value: Value) -> int:
        """Index of ``value``; numeric values match to within 1e-6 of the declared grid."""
        if self.kind == "ordinal" or all(isinstance(v, (int, float)) for v in self.values):
            try:
                x = float(value)
            except (TypeError, ValueError):
                x = math.nan
            if not math.isnan(x):
                for i, v in enumerate(self.values):
                    if abs(float(v) - x) <= 1e-6 * max(1.0, abs(float(v))):
                        return i
        for i, v in enumerate(self.values):
            if str(v) == str(value):
                return i
        shown = ", ".join(str(v) for v in self.values[:20]) + (" ..." if self.size > 20 else "")
        raise FactordiffError(f"factor {self.name}: unknown value {value!r}; expected one of {shown}")

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "values": list(self.values), "kind": self.kind, "role": self.role}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Factor":
        return cls(d["name"], tuple(d["values"]), d.get("kind", "categorical"), d.get("role"))


def short_name(name: str) -> str:
    """A column name without its ``Metadata_`` / ``Image_Metadata_`` prefix, lower-cased."""
    low = name.lower()
    for prefix in ("image_metadata_", "metadata_"):
        if low.startswith(prefix):
            return low[len(prefix) :]
    return low


def _split_unquoted(text: str, where: str) -> list[str]:
    """``text`` split at the commas that stand outside double quotes."""
    parts, part, quoted = [], [], False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            parts.append("".join(part))
            part = []
        else:
            part.append(ch)
    if quoted:
        raise FactordiffError(f"{where}: unbalanced double quote in {text!r}")
    return parts + ["".join(part)]


def parse_pairs(text: str, where: str) -> list[tuple[str, str]]:
    """``"F=V,G=W"`` -> ``[("F", "V"), ("G", "W")]``: the one grammar of ``--set``, ``--where`` and
    ``--holdout-where``. A value holding a comma is double-quoted (``compound="a,b",dose=1``); the
    quotes are not part of it. A malformed pair raises naming ``where``."""
    pairs = []
    for part in (p.strip() for p in _split_unquoted(text, where)):
        name, eq, value = part.partition("=")
        name, value = name.strip(), value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        if not part or not eq or not name or not value:
            raise FactordiffError(f"{where}: expected FACTOR=VALUE pairs separated by commas, got {text!r}")
        pairs.append((name, value))
    return pairs


def parse_settings(spec: "FactorSpec", texts: Sequence[str], where: str = "--set") -> dict[int, str]:
    """Repeatable ``--set "F=V,G=W"`` -> {factor position: value as written}; names resolve with or
    without their ``Metadata_`` prefix (``FactorSpec.resolve``). ``--set a=1 --set b=2`` and ``--set
    a=1,b=2`` are the same; a factor set twice to different values is an error."""
    out: dict[int, str] = {}
    for text in texts:
        for name, value in parse_pairs(text, where):
            try:
                k = spec.resolve(name)
            except FactordiffError as e:
                raise FactordiffError(f"{where} {name}={value}: {e}") from None
            if k in out and out[k] != value:
                raise FactordiffError(f"{where}: {spec.factors[k].name} set twice ({out[k]} and {value})")
            out[k] = value
    if not out:
        raise FactordiffError(f"{where}: expected at least one FACTOR=VALUE")
    return out


@dataclass(frozen=True)
class FactorSpec:
    """An ordered set of factors; a grid combination is a tuple of value indices, one per factor."""

    factors: tuple[Factor, ...]
    _by_name: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = [f.name for f in self.factors]
        if len(set(names)) != len(names):
            raise FactordiffError(f"factor names must be distinct, got {names}")
        object.__setattr__(self, "_by_name", {n: i for i, n in enumerate(names)})

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.factors]

    @property
    def sizes(self) -> list[int]:
        return [f.size for f in self.factors]

    @property
    def grid_size(self) -> int:
        return int(np.prod(self.sizes))

    def __len__(self) -> int:
        return len(self.factors)

    def __getitem__(self, name: str) -> Factor:
        return self.factors[self.position(name)]

    def position(self, name: str) -> int:
        """Column of factor ``name``; raises naming the known factors."""
        if name not in self._by_name:
            raise FactordiffError(f"unknown factor {name!r}; expected one of {', '.join(self.names)}")
        return self._by_name[name]

    def resolve(self, name: str) -> int:
        """Position of ``name``, also accepting a table column's name without its ``Metadata_``
        prefix, in any case (``compound`` for ``Metadata_Compound``)."""
        if name in self._by_name:
            return self._by_name[name]
        short = {short_name(n): i for i, n in enumerate(self.names)}
        if short_name(name) in short:
            return short[short_name(name)]
        return self.position(name)

    def grid(self) -> np.ndarray:
        """Every combination, (grid_size, K) int64, row-major with the last factor fastest."""
        return np.stack(np.unravel_index(np.arange(self.grid_size), self.sizes), axis=1).astype(np.int64)

    def ravel(self, indices: np.ndarray) -> np.ndarray:
        """Row-major flat index of each combination in ``indices`` (N, K)."""
        return np.ravel_multi_index(tuple(np.asarray(indices).T), self.sizes)

    def values_of(self, indices: Sequence[int]) -> dict[str, Value]:
        return {f.name: f.values[int(i)] for f, i in zip(self.factors, indices)}

    def check_indices(self, indices: np.ndarray, where: str = "factors") -> np.ndarray:
        """Validate an (N, K) array of value indices against the spec."""
        a = np.asarray(indices)
        if a.ndim != 2 or a.shape[1] != len(self):
            raise FactordiffError(
                f"{where}: expected an (N, {len(self)}) array of value indices, got shape {a.shape}"
            )
        if a.size and (a.min() < 0 or np.any(a.max(axis=0) >= np.array(self.sizes))):
            raise FactordiffError(f"{where}: value index out of range for sizes {self.sizes}")
        return a.astype(np.int64)

    def to_json(self) -> list[dict[str, Any]]:
        return [f.to_json() for f in self.factors]

    @classmethod
    def from_json(cls, data: list[dict[str, Any]]) -> "FactorSpec":
        return cls(tuple(Factor.from_json(d) for d in data))

    def dumps(self) -> str:
        return json.dumps(self.to_json())


def continuous(
    spec: FactorSpec, indices: np.ndarray, names: Sequence[str] | None, where: str = "data.continuous"
) -> tuple[FactorSpec, np.ndarray]:
    """``spec`` with exactly the factors ``names`` continuous (ordinal) and every other factor
    categorical, and the value indices (N, K) that go with it; ``names`` None: both unchanged (each
    reader's own choice). A named factor must exist and have numbers for values; its values are
    ordered by number, and its indices follow them. Roles stay."""
    if names is None:
        return spec, indices
    unknown = [n for n in names if n not in spec.names]
    if unknown:
        raise FactordiffError(f"{where}: no factor {unknown[0]!r}; factors are {', '.join(spec.names)}")
    out, idx = [], np.array(indices, copy=True)
    for k, f in enumerate(spec.factors):
        if f.name not in names:
            out.append(Factor(f.name, f.values, "categorical", f.role))
            continue
        numbers = []
        for v in f.values:
            try:
                numbers.append(float(v))
            except (TypeError, ValueError):
                raise FactordiffError(
                    f"{where}: factor {f.name!r} has the value {v!r}; a continuous factor needs numbers"
                ) from None
        if not all(math.isfinite(x) for x in numbers):
            raise FactordiffError(f"{where}: factor {f.name!r} has a value that is not a finite number")
        order = np.argsort(numbers, kind="stable")
        rank = np.empty(len(order), np.int64)
        rank[order] = np.arange(len(order))
        idx[:, k] = np.where(indices[:, k] >= 0, rank[np.maximum(indices[:, k], 0)], indices[:, k])
        out.append(Factor(f.name, tuple(numbers[i] for i in order), "ordinal", f.role))
    return FactorSpec(tuple(out)), idx
