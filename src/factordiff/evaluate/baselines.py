"""The simplest regenerations a user would try, on feature matrices, so that every kind of run
shares them: profile runs pass their features, image runs the oracle's features of their images
(``evaluate/cells.py``).

Each regenerates source rows ``src`` (indices into ``x``) into ``target`` (N, K) value indices, and
every statistic it uses comes from the rows of ``train`` (held-out rows never reach it):

- ``copy``: the source rows unchanged;
- ``mean_shift``: per source row, source + mean(training rows whose changed factors jointly have
  the target's values) - mean(training rows whose changed factors jointly have the source's), the
  changed factors being those where the row's target differs from its source: one shift per
  changed combination, so a compound that changes with its concentration and MoA moves once (the
  classic batch correction when only the batch changes). Both means are first restricted to the
  training rows that also have the source row's values of the unchanged factors (a batch change
  of compound X moves by X's own difference between the batches, not by the batches' mixes of
  compounds), where both restricted groups have rows; else they are the unrestricted joint means.
  Where no training row has the joint target (or source) combination, the row falls back to the
  sum over its changed factors of each one's mean difference (a value no training row has adds
  nothing), and is counted;
- ``nearest``: a training row of the nearest existing condition, drawn per source row
  (``nearest_rows``: the categorical factors that are not set first, then the set factors, then
  the nearest ordinal values);
- ``linear``: an additive ridge model of the features on one-hot factors, source + f(target) -
  f(source);
- ``interpolate`` (``ORDINAL_BASELINES``: only where one ordinal factor alone is set, a dose or a
  time): the dose-response line a scientist draws, per source row source + m(target) - m(source),
  where m is the mean of the training rows of the row's other factors at a value of the set factor,
  and m(target) is interpolated linearly on the factor's axis (``axis_positions``: log for doses)
  between the nearest training values below and above the target's; a target outside the training
  values takes the nearest one's mean instead, and is counted.

``BATCH_BASELINES`` are the batch corrections of ``evaluate/batch_correction.py`` (``combat``,
``sphering``, ``harmony``), under the same rule and through the same ``baseline_rows``.
"""

from __future__ import annotations

import numpy as np

from factordiff.encoders.metadata import axis_positions, one_hot, seen_values
from factordiff.evaluate.batch_correction import combat, harmony, sphering
from factordiff.factors import FactorSpec

BASELINES = ("copy", "mean_shift", "nearest", "linear")
BATCH_BASELINES = ("combat", "sphering", "harmony")
ORDINAL_BASELINES = ("interpolate",)


def baseline_rows(
    name: str,
    spec: FactorSpec,
    x: np.ndarray,
    factors: np.ndarray,
    train: np.ndarray,
    src: np.ndarray,
    target: np.ndarray,
    seed: int = 0,
    info: dict | None = None,
    controls: np.ndarray | None = None,
) -> np.ndarray:
    """The baseline ``name``'s regeneration of rows ``src`` (indices into ``x`` (N, F) and
    ``factors`` (N, K)) into ``target`` (len(src), K) value indices, from the rows of the boolean
    mask ``train`` only; rows in the units of ``x``. With ``info``, ``mean_shift`` records in it
    ``rows``, ``fallback_rows`` (how many rows had no training row of their joint target or
    source combination and took the per-factor sum) and ``matched_rows`` (how many took the means
    restricted to their unchanged factors' values), and the batch corrections what they did
    (``evaluate/batch_correction.py``). ``controls`` (a boolean (N,) mask of control wells) is
    read by ``sphering`` alone."""
    xs, fs = x[src], factors[src]
    changed = np.flatnonzero((fs != target).any(0))
    if name == "copy":
        return xs.copy()
    if name == "mean_shift":
        return mean_shift(x, factors, train, src, target, info)[0]
    if name == "combat":
        return combat(x, factors, train, src, target, info=info)
    if name == "sphering":
        return sphering(x, factors, train, src, target, controls=controls, info=info)
    if name == "harmony":
        return harmony(x, factors, train, src, target, seed=seed, info=info)
    if name == "nearest":
        rows = nearest_rows(spec, factors, train, target, changed, seed, info)
        return x[rows]
    if name == "interpolate":
        return interpolate(spec, x, factors, train, src, target, info)
    if name == "linear":
        from sklearn.linear_model import Ridge

        model = Ridge(alpha=1.0).fit(one_hot(spec, factors[train]), x[train])
        return xs + model.predict(one_hot(spec, target)) - model.predict(one_hot(spec, fs))
    raise ValueError(f"unknown baseline {name!r}")


def ordinal_change(spec: FactorSpec, source: np.ndarray, target: np.ndarray) -> int | None:
    """The one ordinal factor in which every target row differs from its source where any
    differs, else None (an ``ORDINAL_BASELINES`` task sets one ordinal factor alone)."""
    changed = np.flatnonzero((source != target).any(0))
    if len(changed) != 1 or spec.factors[changed[0]].kind != "ordinal":
        return None
    return int(changed[0])


def interpolate(
    spec: FactorSpec,
    x: np.ndarray,
    factors: np.ndarray,
    train: np.ndarray,
    src: np.ndarray,
    target: np.ndarray,
    info: dict | None = None,
) -> np.ndarray:
    """The ``interpolate`` baseline (module docstring); raises ValueError unless one ordinal factor
    alone is set. With ``info``, ``interpolate_fallback_rows`` counts the rows whose target lay
    outside their group's training values (or whose group had none)."""
    fs = factors[src]
    k = ordinal_change(spec, fs, target)
    if k is None:
        raise ValueError("interpolate: the task must set one ordinal factor alone")
    pos = axis_positions(spec, seen_values(spec, factors[train]))[k].numpy()
    others = [j for j in range(len(spec)) if j != k]
    out, fallback, means = np.empty((len(src), x.shape[1])), 0, {}
    for i, (f_src, f_tgt) in enumerate(zip(fs, target)):
        key = tuple(int(v) for v in f_src[others])
        if key not in means:
            rows = np.flatnonzero(train & (factors[:, others] == f_src[others]).all(1))
            values = np.unique(factors[rows, k])
            means[key] = (values, np.stack([x[rows[factors[rows, k] == v]].mean(0) for v in values]))
        values, m = means[key]
        at = pos[values]
        order = np.argsort(at)
        at, m_sorted = at[order], m[order]
        p = pos[f_tgt[k]]
        own = m[np.flatnonzero(values == f_src[k])[0]] if (values == f_src[k]).any() else x[src[i]]
        if len(at) >= 2 and at[0] <= p <= at[-1]:
            j = min(int(np.searchsorted(at, p, side="right")), len(at) - 1)
            lo, hi = max(j - 1, 0), j
            w = 0.0 if at[hi] == at[lo] else (p - at[lo]) / (at[hi] - at[lo])
            want = (1 - w) * m_sorted[lo] + w * m_sorted[hi]
        else:
            fallback += 1
            want = m_sorted[int(np.argmin(np.abs(at - p)))] if len(at) else own
        out[i] = x[src[i]] + want - own
    if info is not None:
        info["interpolate_fallback_rows"] = fallback
    return out


def nearest_rows(
    spec: FactorSpec,
    factors: np.ndarray,
    train: np.ndarray,
    target: np.ndarray,
    changed: np.ndarray,
    seed: int = 0,
    info: dict | None = None,
) -> np.ndarray:
    """Per target row, a training row of the nearest condition, as a scientist picks it: the most
    categorical factors that are not set equal to the target's (the same compound, cell line), then
    the most set factors equal (the target batch or round), then the nearest values of the ordinal
    factors (the nearest dose or time point, by position on their grid); drawn at random among
    ties. With ``info``, ``nearest_conditions`` records the conditions drawn from (``F=V, ...``)."""
    rng = np.random.default_rng(seed)
    tr = np.flatnonzero(train)
    ft = factors[tr]
    ordinal = [k for k, f in enumerate(spec.factors) if f.kind == "ordinal"]
    kept = [k for k, f in enumerate(spec.factors) if f.kind != "ordinal" and k not in set(changed.tolist())]
    best: dict[tuple, np.ndarray] = {}
    out = np.empty(len(target), np.int64)
    for i, t in enumerate(target):
        key = tuple(int(v) for v in t)
        if key not in best:
            cand = np.arange(len(tr))
            for score in (
                (ft[:, kept] == t[kept]).sum(1),
                (ft[:, changed] == t[changed]).sum(1),
                -np.abs(ft[:, ordinal] - t[ordinal]).sum(1),
            ):
                cand = cand[score[cand] == score[cand].max()]
            best[key] = tr[cand]
        out[i] = rng.choice(best[key])
    if info is not None:
        info["nearest_conditions"] = condition_texts(spec, factors[out])
    return out


def condition_texts(spec: FactorSpec, factors: np.ndarray) -> list[str]:
    """The distinct conditions (value-index rows) among ``factors``, as ``F=V, G=W`` texts."""
    combos = {tuple(int(v) for v in row) for row in factors}
    return sorted(", ".join(f"{f.name}={f.values[v]}" for f, v in zip(spec.factors, c)) for c in combos)


def fallback_share(info: dict) -> float:
    """The share of ``mean_shift``'s rows that fell back to the per-factor sum (``baseline_rows``'
    ``info``); NaN without rows."""
    return info["fallback_rows"] / info["rows"] if info.get("rows") else float("nan")


class _GroupMeans:
    """Means of the training rows ``xt`` (N, F) whose factors ``ft`` (N, K) at given positions have
    given values, computed once per (positions, values); None where no row has them."""

    def __init__(self, xt: np.ndarray, ft: np.ndarray):
        self.xt, self.ft, self.cache = xt, ft, {}

    def __call__(self, ks: tuple[int, ...], values: tuple[int, ...]) -> np.ndarray | None:
        key = (ks, values)
        if key not in self.cache:
            rows = np.all(self.ft[:, list(ks)] == np.asarray(values), axis=1)
            self.cache[key] = self.xt[rows].mean(0) if rows.any() else None
        return self.cache[key]


def mean_shift(
    x: np.ndarray,
    factors: np.ndarray,
    train: np.ndarray,
    src: np.ndarray,
    target: np.ndarray,
    info: dict | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``mean_shift`` baseline (module docstring): the rows (len(src), F), in the units of ``x``,
    and a boolean per row, true where the joint target or source combination has no training row
    and the row took the per-factor sum instead. With ``info``, records ``rows``, ``fallback_rows``
    and ``matched_rows`` (the rows that took the means restricted to their unchanged factors'
    values; all the rows that move when every factor changes, where the restriction is empty)."""
    means = _GroupMeans(x[train], factors[train])
    fs = factors[src]
    out = x[src].copy()
    fell_back = np.zeros(len(src), bool)
    matched = np.zeros(len(src), bool)
    every = tuple(range(factors.shape[1]))
    for i in range(len(src)):
        ks = tuple(int(k) for k in np.flatnonzero(fs[i] != target[i]))
        if not ks:
            continue
        to = means(every, tuple(int(v) for v in target[i]))
        frm = means(every, tuple(int(v) for v in fs[i]))
        if to is not None and frm is not None:
            out[i] += to - frm
            matched[i] = True
            continue
        to = means(ks, tuple(int(v) for v in target[i, list(ks)]))
        frm = means(ks, tuple(int(v) for v in fs[i, list(ks)]))
        if to is not None and frm is not None:
            out[i] += to - frm
            continue
        fell_back[i] = True
        for k in ks:
            to, frm = means((k,), (int(target[i, k]),)), means((k,), (int(fs[i, k]),))
            if to is not None and frm is not None:
                out[i] += to - frm
    if info is not None:
        info.update(rows=int(len(src)), fallback_rows=int(fell_back.sum()), matched_rows=int(matched.sum()))
    return out, fell_back
