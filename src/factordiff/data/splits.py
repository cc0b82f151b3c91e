"""Held-out splits: which factor combinations no learning stage may see.

Each split is a pure function of the FactorSpec, its parameters and a seed. ``heldout(spec, ...)``
returns a predicate over combinations (an (N, K) array of value indices -> boolean mask), so the
same split applies to the full grid, to a sampled replica, or to a table that covers only part of
the grid.

Kinds:
- ``none``: nothing held out.
- ``random``: a random fraction of all grid combinations.
- ``composition``: a block of joint values of two factors (every value of each factor is still
  seen with others), e.g. object_hue in {0.4, 0.5, 0.6} together with shape in {sphere, capsule}.
- ``interpolation``: the inner values of one ordinal factor (every other value from the second to
  the second-last).
- ``extrapolation``: the values of one ordinal factor above a quantile threshold.
- ``unseen_value``: one value of one factor.

Any kind can add conditions by value (``where``, the CLI's repeatable ``--holdout-where
"F=V,G=W"``): a row matching every pair of any one condition is held out too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from factordiff.config import SPLIT_KINDS, SplitConfig
from factordiff.errors import FactordiffError
from factordiff.factors import FactorSpec, parse_pairs, short_name


@dataclass(frozen=True)
class Split:
    """A resolved split: the held-out predicate plus a description of what it holds out."""

    config: SplitConfig
    description: str
    held_values: dict[str, list[int]] = field(default_factory=dict)
    _predicate: Callable[[np.ndarray], np.ndarray] | None = None

    def heldout(self, indices: np.ndarray) -> np.ndarray:
        """Boolean mask: True where a combination (row of value indices) is held out."""
        idx = np.asarray(indices)
        if self._predicate is None:
            return np.zeros(len(idx), bool)
        return self._predicate(idx)

    def to_json(self) -> dict:
        return {
            "config": self.config.to_json(),
            "description": self.description,
            "held_values": self.held_values,
            "held_where": self.held_where,
        }

    @property
    def held_where(self) -> list[dict[str, str]]:
        """The ``where`` conditions resolved to factor names and values, one mapping each."""
        return [dict(c) for c in self._where]

    _where: tuple[tuple[tuple[str, str], ...], ...] = ()


def _pick(
    spec: FactorSpec,
    names: tuple[str, ...],
    count: int,
    rng: np.random.Generator,
    ordinal: bool,
    min_size: int,
) -> list[int]:
    if names:
        if len(names) != count:
            raise FactordiffError(f"split factors: expected {count} factor name(s), got {list(names)}")
        pos = [spec.position(n) for n in names]
    else:
        ok = [
            k
            for k, f in enumerate(spec.factors)
            if f.size >= min_size and (f.kind == "ordinal" or not ordinal)
        ]
        if len(ok) < count:
            raise FactordiffError(
                f"split: need {count} factor(s) with at least {min_size} "
                f"values{' (ordinal)' if ordinal else ''}"
            )
        pos = sorted(rng.choice(ok, count, replace=False).tolist())
    for k in pos:
        f = spec.factors[k]
        if f.size < min_size or (ordinal and f.kind != "ordinal"):
            raise FactordiffError(
                f"split: factor {f.name} needs at least {min_size} {'ordinal ' if ordinal else ''}values"
            )
    return pos


def _window(n: int, fraction: float, rng: np.random.Generator) -> list[int]:
    """A cyclic window of about ``fraction * n`` consecutive values (at least 1, at most n - 1)."""
    width = int(np.clip(round(fraction * n), 1, n - 1))
    start = int(rng.integers(n))
    return sorted((start + i) % n for i in range(width))


def _values_in(column: int, values: list[int]) -> Callable[[np.ndarray], np.ndarray]:
    held = np.asarray(values)
    return lambda idx: np.isin(idx[:, column], held)


def where_conditions(
    spec: FactorSpec, texts: tuple[str, ...] | list[str], what: str = "--holdout-where"
) -> list[list[tuple[int, int]]]:
    """Each ``"F=V,G=W"`` resolved to ``[(factor position, value index), ...]``; unknown names or
    values raise naming them."""
    out = []
    for text in texts:
        pairs = []
        for name, value in parse_pairs(text, what):
            try:
                k = spec.resolve(name)
                pairs.append((k, spec.factors[k].index(value)))
            except FactordiffError as e:
                raise FactordiffError(f"{what} {text!r}: {e}") from None
        out.append(pairs)
    return out


def match_where(indices: np.ndarray, conditions: list[list[tuple[int, int]]]) -> np.ndarray:
    """True for rows (value indices) that match every pair of at least one condition."""
    idx = np.asarray(indices)
    hit = np.zeros(len(idx), bool)
    for pairs in conditions:
        m = np.ones(len(idx), bool)
        for k, v in pairs:
            m &= idx[:, k] == v
        hit |= m
    return hit


def select(
    spec: FactorSpec,
    indices: np.ndarray,
    where: Sequence[str],
    metadata: Mapping[str, np.ndarray] | None = None,
    what: str = "--where",
) -> np.ndarray:
    """Bool mask of the rows matching every pair of any one ``where`` condition (all rows when there
    is none): the one selector of images and profile rows. A pair names a factor (with or without
    its ``Metadata_`` prefix) and one of its values, or, for tables, any other ``metadata`` column
    and a value some row has (compared as text)."""
    if not where:
        return np.ones(len(indices), bool)
    others = {short_name(c): c for c in (metadata or {}) if c not in spec.names}
    hit = np.zeros(len(indices), bool)
    for text in where:
        m = np.ones(len(indices), bool)
        for name, value in parse_pairs(text, what):
            column = others.get(short_name(name)) if name not in spec.names else None
            if column is None:
                try:
                    k = spec.resolve(name)
                except FactordiffError as e:
                    if metadata is None:
                        raise FactordiffError(f"{what} {text!r}: {e}") from None
                    shown = ", ".join(list(metadata)[:15])
                    raise FactordiffError(
                        f"{what} {text!r}: unknown column {name!r}; metadata columns are {shown}"
                    ) from None
                try:
                    m &= np.asarray(indices)[:, k] == spec.factors[k].index(value)
                except FactordiffError as e:
                    raise FactordiffError(f"{what} {text!r}: {e}") from None
            else:
                col = np.asarray(metadata[column]).astype(str)
                if not (col == value).any():
                    raise FactordiffError(f"{what} {text!r}: no row has {column}={value}")
                m &= col == value
        hit |= m
    return hit


def make_split(spec: FactorSpec, config: SplitConfig) -> Split:
    """Resolve ``config`` against ``spec`` into a Split (deterministic in spec, config and seed);
    rows matching a ``where`` condition are held out in addition to the kind's."""
    split = _make_kind_split(spec, config)
    if not config.where:
        return split
    conds = where_conditions(spec, config.where)
    kind_pred = split._predicate
    named = tuple(
        tuple((spec.factors[k].name, str(spec.factors[k].values[v])) for k, v in pairs) for pairs in conds
    )
    text = "; ".join(", ".join(f"{n}={v}" for n, v in c) for c in named)
    desc = text if config.kind == "none" else f"{split.description}; and {text}"

    def predicate(idx: np.ndarray) -> np.ndarray:
        where = match_where(idx, conds)
        return where if kind_pred is None else where | kind_pred(idx)

    return Split(config, desc, split.held_values, predicate, named)


def _make_kind_split(spec: FactorSpec, config: SplitConfig) -> Split:
    rng = np.random.default_rng(config.seed)
    kind = config.kind
    if not 0.0 < config.fraction < 1.0:
        raise FactordiffError(f"split fraction: expected a number in (0, 1), got {config.fraction}")
    if kind == "none":
        return Split(config, "nothing held out")
    if kind == "random":
        flat = np.flatnonzero(rng.random(spec.grid_size) < config.fraction)
        return Split(
            config,
            f"random {config.fraction:.0%} of combinations",
            {},
            lambda idx: np.isin(spec.ravel(idx), flat),
        )
    if kind == "composition":
        a, b = _pick(spec, config.factors, 2, rng, ordinal=False, min_size=2)
        va = _window(spec.sizes[a], config.fraction, rng)
        vb = _window(spec.sizes[b], config.fraction, rng)
        fa, fb = spec.factors[a], spec.factors[b]
        desc = (
            f"{fa.name} in {[fa.values[i] for i in va]} together with {fb.name} in "
            f"{[fb.values[i] for i in vb]}"
        )
        pa, pb = _values_in(a, va), _values_in(b, vb)
        return Split(config, desc, {fa.name: va, fb.name: vb}, lambda idx: pa(idx) & pb(idx))
    if kind == "interpolation":
        (k,) = _pick(spec, config.factors, 1, rng, ordinal=True, min_size=3)
        held = list(range(1, spec.sizes[k] - 1, 2))
    elif kind == "extrapolation":
        (k,) = _pick(spec, config.factors, 1, rng, ordinal=True, min_size=2)
        n = spec.sizes[k]
        held = list(range(n - int(np.clip(round(config.fraction * n), 1, n - 1)), n))
    elif kind == "unseen_value":
        (k,) = _pick(spec, config.factors, 1, rng, ordinal=False, min_size=2)
        held = [int(rng.integers(1, spec.sizes[k] - 1)) if spec.sizes[k] > 2 else 1]
    else:
        raise FactordiffError(f"split kind: expected one of {', '.join(SPLIT_KINDS)}, got {kind!r}")
    f = spec.factors[k]
    desc = f"{kind}: {f.name} values {[f.values[i] for i in held]}"
    return Split(config, desc, {f.name: held}, _values_in(k, held))
