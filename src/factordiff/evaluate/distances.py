"""Distances between two samples of feature vectors (rows of ``a`` and ``b``), the same for every
kind of run: profile runs pass their (standardised) features, image runs the oracle's features.

- ``energy_distance``: the energy distance (Szekely & Rizzo), unbiased: 0 in expectation when the
  two samples come from one distribution, so an estimate may be slightly negative;
- ``frechet``: the Frechet distance between Gaussians fitted to the two samples (FID when the
  features are an image network's; Heusel et al. 2017);
- ``kernel_distance``: the unbiased squared MMD with the cubic polynomial kernel (KID; Binkowski
  et al. 2018);
- ``classifier_two_sample``: the cross-validated ROC AUC of a classifier telling the
  samples apart, 0.5 when it cannot (C2ST; Lopez-Paz & Oquab 2017).
"""

from __future__ import annotations

import numpy as np


def _within_mean(d: np.ndarray) -> float:
    """Mean of a square distance matrix over pairs i != j; 0 for a single row, which has no spread
    (a one-row sample, e.g. the one real well of a held-out condition, is a point)."""
    n = len(d)
    return float((d.sum() - np.trace(d)) / (n * (n - 1))) if n > 1 else 0.0


def energy_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Energy distance 2 E|A - B| - E|A - A'| - E|B - B'| over Euclidean distances (Szekely & Rizzo,
    "Energy statistics: a class of statistics based on distances", 2013), in the units of the
    features. The within-sample means run over pairs i != j only (the unbiased U-statistic): the
    zero distance of a row to itself is not a draw of |A - A'|, and counting it (the V-statistic)
    raises the estimate by exactly E|A - A'| / m + E|B - B'| / n (those means over i != j; m, n
    the sizes). Zero in expectation when ``a`` and ``b`` come from one distribution (an estimate
    may then be negative). A one-row sample has no within-sample pair and counts as a point (its
    within-sample mean is 0), so the distance of generated rows to a single real row is defined."""
    from scipy.spatial.distance import cdist

    return float(2 * cdist(a, b).mean() - _within_mean(cdist(a, a)) - _within_mean(cdist(b, b)))


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to feature sets ``a`` and ``b``: |mu_a - mu_b|^2 +
    tr(C_a + C_b - 2 (C_a C_b)^(1/2)), in squared feature units (FID over an image network's
    features; Heusel et al. 2017)."""
    from scipy import linalg

    ma, mb = a.mean(0), b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(ca @ cb)
    return float(((ma - mb) ** 2).sum() + np.trace(ca + cb - 2 * np.real(root)))


def kernel_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased squared MMD with the polynomial kernel (x.y / d + 1)^3 (KID; Binkowski et al. 2018):
    zero in expectation when ``a`` and ``b`` come from one distribution."""
    d = a.shape[1]

    def k(x, y):
        return (x @ y.T / d + 1) ** 3

    m, n = len(a), len(b)
    kaa, kbb = k(a, a), k(b, b)
    return float(
        (kaa.sum() - np.trace(kaa)) / (m * (m - 1))
        + (kbb.sum() - np.trace(kbb)) / (n * (n - 1))
        - 2 * k(a, b).mean()
    )


def classifier_two_sample(a: np.ndarray, b: np.ndarray, seed: int = 0) -> float:
    """Classifier two-sample test (Lopez-Paz & Oquab, "Revisiting classifier two-sample tests",
    2017): the ROC AUC of a logistic regression's out-of-fold probabilities telling rows of ``b``
    from rows of ``a`` (features standardised inside each fold, on its training part; stratified
    5-fold cross-validation, as many folds as the smaller sample has rows when under 5, shuffled
    with ``seed``). 0.5 when the classifier cannot tell the samples apart, 1 when it always can;
    not moved by the samples' sizes. NaN when a sample has fewer than 2 rows."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = min(5, len(a), len(b))
    if folds < 2:
        return float("nan")
    x = np.concatenate([a, b]).astype(np.float64)
    y = np.r_[np.zeros(len(a), int), np.ones(len(b), int)]
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    prob = cross_val_predict(clf, x, y, cv=cv, method="predict_proba")[:, 1]
    return float(roc_auc_score(y, prob))
