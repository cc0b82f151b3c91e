"""Biology-aware evaluation of regenerated profiles, each figure beside the baselines a profiling
scientist tries first.

Baselines (every one fitted on training rows only):
- ``copy``: the source rows unchanged;
- ``mean_shift``: source + (mean of the training rows with the target value - mean of those with
  the source value), summed over the changed factors (the classic batch correction);
- ``nearest``: a training row of the nearest existing condition (most factors equal to the
  target, ties to the changed factors), drawn per source row;
- ``linear``: an additive ridge model of the features on one-hot factors, source + f(target) -
  f(source).

Figures:
- ``truth``: regenerated rows against the real held-out rows of the same condition: mean over
  features of |mean difference| (features standardised by the training rows) and the energy
  distance (Szekely & Rizzo) in the same units;
- ``batch_swap``: an oracle (logistic regression on every real row: the one learner that may
  see held-out rows) reads each technical factor of the regenerated rows (share read as the
  target) and each biological factor (share still read as the source's);
- ``retrieval``: mean average precision with copairs (positives: same perturbation in another
  plate; negatives: the controls), for real rows, rows regenerated from controls into each
  perturbation, and the copy-the-control null;
- ``unseen``: perturbations held out entirely, generated from what is known about them (their
  other factors, e.g. mechanism of action and dose; the perturbation's own code is absent):
  share of generated rows whose nearest training profile (cosine) has their true MoA, against the
  controls' share.
"""

from __future__ import annotations

import numpy as np

from factordiff.encoders.metadata import one_hot
from factordiff.factors import FactorSpec


def standardizer(x_train: np.ndarray):
    mu, sd = x_train.mean(0), x_train.std(0)
    sd = np.where(sd > 0, sd, 1.0)
    return lambda x: (x - mu) / sd


def energy_distance(a: np.ndarray, b: np.ndarray) -> float:
    """2 E|A - B| - E|A - A'| - E|B - B'| over Euclidean distances (0 when the samples coincide in law)."""
    from scipy.spatial.distance import cdist

    return float(2 * cdist(a, b).mean() - cdist(a, a).mean() - cdist(b, b).mean())


def truth_distances(generated: np.ndarray, real: np.ndarray, scale) -> dict[str, float]:
    g, r = scale(generated), scale(real)
    return {"mean_error": float(np.abs(g.mean(0) - r.mean(0)).mean()), "energy": energy_distance(g, r)}


def baseline_rows(
    name: str,
    spec: FactorSpec,
    x: np.ndarray,
    factors: np.ndarray,
    train: np.ndarray,
    src: np.ndarray,
    target: np.ndarray,
    seed: int = 0,
) -> np.ndarray:
    """The baseline ``name``'s regeneration of rows ``src`` (indices) into ``target`` (N, K) value indices."""
    xs, fs = x[src], factors[src]
    changed = np.flatnonzero((fs != target).any(0))
    if name == "copy":
        return xs.copy()
    if name == "mean_shift":
        out = xs.copy()
        xt, ft = x[train], factors[train]
        for k in changed:
            means = {
                v: xt[ft[:, k] == v].mean(0)
                for v in np.unique(np.concatenate([fs[:, k], target[:, k]]))
                if (ft[:, k] == v).any()
            }
            for i in range(len(out)):
                a, b = target[i, k], fs[i, k]
                if a in means and b in means:
                    out[i] += means[a] - means[b]
        return out
    if name == "nearest":
        rng = np.random.default_rng(seed)
        tr = np.flatnonzero(train)
        out = np.empty_like(xs)
        for i in range(len(xs)):
            same = factors[tr] == target[i]
            score = same.sum(1) * (len(changed) + 1) + same[:, changed].sum(1)
            best = tr[score == score.max()]
            out[i] = x[rng.choice(best)]
        return out
    if name == "linear":
        from sklearn.linear_model import Ridge

        model = Ridge(alpha=1.0).fit(one_hot(spec, factors[train]), x[train])
        return xs + model.predict(one_hot(spec, target)) - model.predict(one_hot(spec, fs))
    raise ValueError(f"unknown baseline {name!r}")


BASELINES = ("copy", "mean_shift", "nearest", "linear")


def fit_oracles(
    spec: FactorSpec, x: np.ndarray, factors: np.ndarray, scale, factor_ids: list[int], seed: int = 0
) -> dict[int, tuple[object, float, np.ndarray | None]]:
    """Per factor, a logistic regression reading it from every real row, its stratified
    cross-validated accuracy (5 folds, fewer when a value has fewer rows) and its out-of-fold
    prediction for every row (None when a value has a single row): how often the oracle reads a
    real row right without having seen it, the ceiling for generated rows."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    out = {}
    z = scale(x)
    for k in factor_ids:
        y = factors[:, k]
        counts = np.bincount(y)
        folds = int(min(5, counts[counts > 0].min()))
        clf = LogisticRegression(C=0.1, max_iter=2000)
        acc, oof = float("nan"), None
        if folds >= 2:
            oof = cross_val_predict(clf, z, y, cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
            acc = float((oof == y).mean())
        out[k] = (clf.fit(z, y), acc, oof)
    return out


def read_share(oracle, rows: np.ndarray, want: np.ndarray, scale) -> float:
    return float((oracle.predict(scale(rows)) == want).mean()) if len(rows) else float("nan")


def mean_average_precision(
    meta: dict[str, np.ndarray],
    x: np.ndarray,
    group: str,
    controls: np.ndarray,
    plate: str | None,
    seed: int = 0,
) -> dict:
    """copairs mAP of each non-control group against the controls (positives: same ``group``, in a
    different plate when ``plate`` is given and the rows span several plates; negatives: control
    rows). Returns the mean over groups, the share of groups significant at 0.05 (corrected), and
    per-group values."""
    import pandas as pd
    from copairs.map import average_precision
    from copairs.map import mean_average_precision as map_
    from copairs.matching import UnpairedException

    ref = "Metadata_reference_index"
    frame = pd.DataFrame({group: meta[group], **({plate: meta[plate]} if plate else {})})
    frame[ref] = np.where(
        controls, np.arange(len(frame)), -1
    )  # copairs' assign_reference_index: controls unique, others -1
    feats = pd.DataFrame(x)
    across = bool(plate) and len(np.unique(meta[plate])) > 1  # one plate: positives can only share it
    try:
        ap = average_precision(
            frame,
            feats.to_numpy(),
            pos_sameby=[group, ref],
            pos_diffby=[plate] if across else [],
            neg_sameby=[],
            neg_diffby=[group, ref],
            progress_bar=False,
        )
    except UnpairedException:
        return {
            "map": float("nan"),
            "significant": float("nan"),
            "groups": 0,
            "positives_across_plates": across,
        }
    ap = ap[ap[ref] == -1].dropna(subset=["average_precision"])
    if ap.empty:
        return {
            "map": float("nan"),
            "significant": float("nan"),
            "groups": 0,
            "positives_across_plates": across,
        }
    m = map_(ap, sameby=[group], null_size=10000, threshold=0.05, seed=seed, progress_bar=False)
    return {
        "map": float(m["mean_average_precision"].mean()),
        "significant": float(m["below_corrected_p"].mean()),
        "groups": int(len(m)),
        "positives_across_plates": across,
        "by_group": {str(g): float(v) for g, v in zip(m[group], m["mean_average_precision"])},
    }


def moa_hits(
    generated: np.ndarray, want: np.ndarray, reference: np.ndarray, reference_moa: np.ndarray, scale
) -> float:
    """Share of generated rows whose nearest reference row (cosine, standardised features) has ``want``."""
    if not len(generated):
        return float("nan")
    g, r = scale(generated), scale(reference)
    g = g / np.linalg.norm(g, axis=1, keepdims=True).clip(1e-12)
    r = r / np.linalg.norm(r, axis=1, keepdims=True).clip(1e-12)
    nearest = (g @ r.T).argmax(1)
    return float((reference_moa[nearest] == want).mean())
