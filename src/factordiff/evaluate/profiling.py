"""Biology-aware evaluation of regenerated profiles, each figure beside the baselines a profiling
scientist tries first (``evaluate/profile_suite.py`` runs them).

Baselines: ``copy``, ``mean_shift``, ``nearest`` and ``linear`` of ``evaluate/baselines.py``, shared
with image runs (which apply them to oracle features), every one fitted on training rows only. The
mean shift moves each source row by the difference between the training means of its changed
factors' joint target combination and joint source combination (a compound that changes with its
concentration and MoA is moved once, not once per factor); rows whose joint combination no
training row has fall back to the per-factor sum, and each task records the share of them as
``mean_shift_fallback``.

Figures:
- ``truth``: regenerated rows against the real held-out rows of the same condition: mean over
  features of |mean difference| (features standardised by the training rows) and the energy
  distance (Szekely & Rizzo; unbiased, without self-pairs: ``evaluate/distances.py``) in the same
  units, about 0 (and possibly below) for rows drawn like the real ones;
- ``batch_swap``: an oracle (logistic regression on every real row: the one learner that may
  see held-out rows) reads each technical factor of the regenerated rows (share read as the
  target) and each biological factor (share still read as the source's);
- ``retrieval``: mean average precision with copairs (positives: same perturbation in another
  plate; negatives: the controls), for real rows, rows regenerated from controls into each
  perturbation, the copy-the-control null and the mean shift;
- ``unseen``: perturbations held out entirely, generated from what is known about them (their
  other factors, e.g. mechanism of action and dose; the perturbation's own code is absent):
  share of generated rows whose nearest training profile (cosine) has their true MoA, against the
  controls' share.
"""

from __future__ import annotations

import numpy as np

from factordiff.evaluate.distances import energy_distance
from factordiff.factors import FactorSpec


def standardizer(x_train: np.ndarray):
    mu, sd = x_train.mean(0), x_train.std(0)
    sd = np.where(sd > 0, sd, 1.0)
    return lambda x: (x - mu) / sd


def truth_distances(generated: np.ndarray, real: np.ndarray, scale) -> dict[str, float]:
    """Generated rows against the real rows of the same condition, both standardised by ``scale``:
    ``mean_error``, the mean over features of |mean difference|, and ``energy``, the unbiased energy
    distance (``distances.energy_distance``), in standardised units."""
    g, r = scale(generated), scale(real)
    return {"mean_error": float(np.abs(g.mean(0) - r.mean(0)).mean()), "energy": energy_distance(g, r)}


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
    group: str | list[str],
    controls: np.ndarray,
    plate: str | None,
    seed: int = 0,
    standard: bool = False,
) -> dict:
    """copairs mAP of each non-control group (rows sharing every column of ``group``) against the
    controls. ``standard`` (the phenotypic-activity setup of copairs and the JUMP papers): positives
    are rows of the same group, negatives the control rows on the same plate. Otherwise positives
    must come from a different plate when ``plate`` is given and the rows span several plates, and
    negatives are every control row. Returns the mean over groups, the share of groups significant
    at 0.05 (corrected), and per-group values."""
    import pandas as pd
    from copairs.map import average_precision
    from copairs.map import mean_average_precision as map_
    from copairs.matching import UnpairedException

    groups = [group] if isinstance(group, str) else list(group)
    ref = "Metadata_reference_index"
    frame = pd.DataFrame({**{g: meta[g] for g in groups}, **({plate: meta[plate]} if plate else {})})
    frame[ref] = np.where(controls, np.arange(len(frame)), -1)  # copairs' assign_reference_index
    across = not standard and bool(plate) and len(np.unique(meta[plate])) > 1
    empty = {"map": float("nan"), "significant": float("nan"), "groups": 0, "positives_across_plates": across}
    try:
        ap = average_precision(
            frame,
            np.asarray(x),
            pos_sameby=[*groups, ref],
            pos_diffby=[plate] if across else [],
            neg_sameby=[plate] if standard and plate else [],
            neg_diffby=[*groups, ref],
            progress_bar=False,
        )
    except UnpairedException:
        return empty
    ap = ap[ap[ref] == -1].dropna(subset=["average_precision"])
    if ap.empty:
        return empty
    m = map_(ap, sameby=groups, null_size=10000, threshold=0.05, seed=seed, progress_bar=False)
    names = m[groups].astype(str).agg(" ".join, axis=1)
    return {
        "map": float(m["mean_average_precision"].mean()),
        "significant": float(m["below_corrected_p"].mean()),
        "groups": int(len(m)),
        "positives_across_plates": across,
        "by_group": {str(g): float(v) for g, v in zip(names, m["mean_average_precision"])},
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
