"""Disentanglement metrics on a fixed set of codes, following google-research disentanglement_lib.

Every metric reproduces the protocol of disentanglement_lib (Locatello et al., "Challenging Common
Assumptions in the Unsupervised Learning of Disentangled Representations", ICML 2019) with the
settings of its ``unsupervised_study_v1/metric_configs`` gin files: ``random_seed = 0``,
10,000 training and 5,000 test/eval points, 20 histogram bins, FactorVAE batches of 64 with
10,000 points for the global variances and ``prune_dims.threshold = 0.05``, BetaVAE batches of 64.
Codes are meant to be the encoder's means, as in disentanglement_lib.

The one structural difference: disentanglement_lib samples factors from a ground-truth generator
and encodes fresh images. Here the input is a FIXED set of N codes with their N factor rows
(value indices), so

- metrics on i.i.d. points (DCI, MIG, SAP, modularity/explicitness) draw their train and test
  points from the given rows, without replacement and with disjoint train and test sets; when
  fewer than ``num_train + num_test`` rows exist, all rows are used, split in the ratio
  ``num_train : num_test`` (the numbers used are reported by :func:`score_all` in ``settings``);
- FactorVAE and BetaVAE, which need points sharing the value of one factor, draw those points
  from the rows having that value (see :func:`factor_vae` and :func:`beta_vae`).

Factors with fewer than two distinct values carry no information and would break the classifiers
and the MIG normalisation (entropy 0); each metric leaves such factors out (those constant on the
points it fits on) and :func:`score_all` lists the constant ones in ``settings``.

All classifiers keep scikit-learn's default hyperparameters as disentanglement_lib does; only
``random_state`` is set to ``seed`` so that scores are reproducible.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import scipy.stats
from joblib import Parallel, delayed
from sklearn.decomposition import PCA
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import mutual_info_score, roc_auc_score
from sklearn.svm import LinearSVC
from tqdm.auto import tqdm

from factordiff.errors import FactordiffError

__all__ = [
    "beta_vae",
    "dci",
    "factor_vae",
    "format_table",
    "load_and_score",
    "mig",
    "modularity_explicitness",
    "reduce_blocks",
    "sap",
    "score_all",
]

MIN_ROWS = 10
SCORE_KEYS = (
    "dci_disentanglement",
    "dci_completeness",
    "dci_informativeness_test",
    "dci_informativeness_train",
    "mig",
    "sap",
    "factorvae",
    "betavae",
    "modularity",
    "explicitness",
)

# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------


def _check_codes(codes: Any) -> np.ndarray:
    """Return ``codes`` as a finite 2-D float64 array or raise FactordiffError."""
    arr = np.asarray(codes)
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.floating):
        raise FactordiffError(
            f"codes: expected a 2-D float array (points x dims), got {arr.ndim}-D {arr.dtype}"
        )
    if arr.shape[0] < MIN_ROWS or arr.shape[1] < 1:
        raise FactordiffError(f"codes: expected at least {MIN_ROWS} rows and 1 column, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise FactordiffError(
            f"codes: expected finite values, found {int(np.sum(~np.isfinite(arr)))} NaN/Inf"
        )
    return arr.astype(np.float64, copy=False)


def _check_factors(factors: Any) -> np.ndarray:
    """Return ``factors`` as a 2-D int64 array of value indices or raise FactordiffError."""
    arr = np.asarray(factors)
    if arr.ndim != 2 or arr.shape[1] < 1:
        raise FactordiffError(f"factors: expected a 2-D array (points x factors), got shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise FactordiffError("factors: expected integer value indices, found non-integer values")
        arr = arr.astype(np.int64)
    elif not np.issubdtype(arr.dtype, np.integer):
        raise FactordiffError(f"factors: expected integer value indices, got dtype {arr.dtype}")
    if np.any(arr < 0):
        raise FactordiffError("factors: expected non-negative value indices, found negative values")
    return arr.astype(np.int64, copy=False)


def _check_pair(codes: Any, factors: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate codes and factors together (same number of rows)."""
    codes_arr, factors_arr = _check_codes(codes), _check_factors(factors)
    if codes_arr.shape[0] != factors_arr.shape[0]:
        raise FactordiffError(
            f"factors: expected one row per code row ({codes_arr.shape[0]}), got {factors_arr.shape[0]} rows"
        )
    if not _varying(factors_arr).any():
        raise FactordiffError("factors: expected at least one factor with 2 or more distinct values")
    return codes_arr, factors_arr


def _check_blocks(blocks: Any, num_dims: int) -> list[int]:
    """Validate block sizes: positive integers summing to the number of code columns."""
    try:
        sizes = [int(b) for b in blocks]
    except (TypeError, ValueError):
        raise FactordiffError(f"blocks: expected a list of positive integers, got {blocks!r}") from None
    if not sizes or any(s < 1 for s in sizes) or sum(sizes) != num_dims:
        raise FactordiffError(
            f"blocks: expected positive sizes summing to {num_dims} code columns, got {sizes}"
        )
    return sizes


def _varying(factors: np.ndarray) -> np.ndarray:
    """Boolean mask of factor columns with at least two distinct values."""
    return np.array([np.unique(col).size >= 2 for col in factors.T], dtype=bool)


# ----------------------------------------------------------------------------------------------
# Sampling from the fixed rows
# ----------------------------------------------------------------------------------------------


def _split_sizes(num_rows: int, num_train: int, num_test: int) -> tuple[int, int]:
    """Numbers of train and test rows used: as requested, or all rows in the requested ratio."""
    if num_train < 1 or num_test < 1:
        raise FactordiffError(f"num_train/num_test: expected positive counts, got {num_train}/{num_test}")
    if num_train + num_test <= num_rows:
        return num_train, num_test
    train = int(round(num_rows * num_train / (num_train + num_test)))
    train = min(max(train, 1), num_rows - 1)
    return train, num_rows - train


def _draw_split(
    rng: np.random.Generator, num_rows: int, num_train: int, num_test: int
) -> tuple[np.ndarray, ...]:
    """Disjoint train and test row indices, drawn without replacement."""
    train, test = _split_sizes(num_rows, num_train, num_test)
    rows = rng.choice(num_rows, size=train + test, replace=False)
    return rows[:train], rows[train:]


def _draw_rows(rng: np.random.Generator, num_rows: int, num: int) -> np.ndarray:
    """``min(num, num_rows)`` row indices drawn without replacement."""
    if num < 1:
        raise FactordiffError(f"num_train: expected a positive count, got {num}")
    return rng.choice(num_rows, size=min(num, num_rows), replace=False)


class _Groups:
    """For one factor column: the rows holding each of its values, for drawing matched batches."""

    def __init__(self, column: np.ndarray) -> None:
        self.order = np.argsort(column, kind="stable")
        _, self.inverse, self.count = np.unique(column, return_inverse=True, return_counts=True)
        self.start = np.concatenate([[0], np.cumsum(self.count)[:-1]])

    def members(self, row: int) -> np.ndarray:
        """Rows sharing this factor's value with ``row``."""
        g = self.inverse[row]
        return self.order[self.start[g] : self.start[g] + self.count[g]]

    def partners(self, rng: np.random.Generator, rows: np.ndarray) -> np.ndarray:
        """For each row, one uniformly drawn row with the same value (possibly the row itself)."""
        g = self.inverse[rows]
        offset = np.floor(rng.random(rows.shape) * self.count[g]).astype(np.int64)
        return self.order[self.start[g] + offset]


# ----------------------------------------------------------------------------------------------
# Shared pieces
# ----------------------------------------------------------------------------------------------


def _histogram_discretize(codes: np.ndarray, num_bins: int) -> np.ndarray:
    """Each code column to bin indices: np.histogram edges (last dropped) then np.digitize."""
    out = np.zeros(codes.shape, dtype=np.int64)
    for j in range(codes.shape[1]):
        edges = np.histogram(codes[:, j], num_bins)[1][:-1]
        out[:, j] = np.digitize(codes[:, j], edges)
    return out


def _mutual_info(discrete_codes: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Matrix (num_codes x num_factors) of discrete mutual information in nats."""
    return np.array(
        [
            [mutual_info_score(factors[:, k], discrete_codes[:, j]) for k in range(factors.shape[1])]
            for j in range(discrete_codes.shape[1])
        ]
    ).reshape(discrete_codes.shape[1], factors.shape[1])


def _entropy_rows(weights: np.ndarray, base: int) -> np.ndarray:
    """Entropy (given base) of each row of non-negative weights; 0 when base < 2."""
    if base < 2:
        return np.zeros(weights.shape[0])
    return scipy.stats.entropy(weights.T + 1e-11, base=base)


def _top_two_gap(matrix: np.ndarray) -> np.ndarray:
    """Per column: largest minus second-largest entry (the largest alone when one row)."""
    ordered = np.sort(matrix, axis=0)[::-1]
    second = ordered[1] if matrix.shape[0] > 1 else np.zeros(matrix.shape[1])
    return ordered[0] - second


# ----------------------------------------------------------------------------------------------
# DCI
# ----------------------------------------------------------------------------------------------


def _fit_gbt(x_train, y, seed: int) -> GradientBoostingClassifier:
    return GradientBoostingClassifier(random_state=seed).fit(x_train, y)


def _importance_gbt(x_train, y_train, x_test, y_test, seed: int) -> tuple[np.ndarray, float, float]:
    """One default GradientBoostingClassifier per factor: |feature_importances_| and accuracies.

    The factors' models are independent, so they are fitted in parallel threads (tree fitting
    releases the GIL); each has ``random_state=seed``, so the result does not depend on the order.
    """
    importance = np.zeros((x_train.shape[1], y_train.shape[1]))
    models = Parallel(n_jobs=-1, prefer="threads")(
        delayed(_fit_gbt)(x_train, y_train[:, k], seed) for k in range(y_train.shape[1])
    )
    acc_train, acc_test = [], []
    for k, model in enumerate(models):
        importance[:, k] = np.abs(model.feature_importances_)
        acc_train.append(np.mean(model.predict(x_train) == y_train[:, k]))
        acc_test.append(np.mean(model.predict(x_test) == y_test[:, k]))
    return importance, float(np.mean(acc_train)), float(np.mean(acc_test))


def _dci_disentanglement(importance: np.ndarray) -> float:
    """Sum over codes of (1 - entropy over factors, base num_factors) weighted by code importance."""
    per_code = 1.0 - _entropy_rows(importance, importance.shape[1])
    total = importance if importance.sum() > 0 else np.ones_like(importance)
    return float(np.sum(per_code * total.sum(axis=1) / total.sum()))


def _dci_completeness(importance: np.ndarray) -> float:
    """Sum over factors of (1 - entropy over codes, base num_codes) weighted by factor importance."""
    per_factor = 1.0 - _entropy_rows(importance.T, importance.shape[0])
    total = importance if importance.sum() > 0 else np.ones_like(importance)
    return float(np.sum(per_factor * total.sum(axis=0) / total.sum()))


def dci(
    codes: np.ndarray, factors: np.ndarray, num_train: int = 10000, num_test: int = 5000, seed: int = 0
) -> dict:
    """DCI disentanglement, completeness and informativeness.

    Eastwood & Williams, "A Framework for the Quantitative Evaluation of Disentangled
    Representations", ICLR 2018, as implemented in disentanglement_lib ``metrics/dci.py``: one
    default ``GradientBoostingClassifier`` per factor on the raw codes; importance matrix
    (codes x factors) of absolute feature importances; disentanglement = importance-weighted mean
    over codes of 1 - entropy over factors (base num_factors); completeness = importance-weighted
    mean over factors of 1 - entropy over codes (base num_codes); informativeness = mean accuracy.

    Args:
        codes: (N, D) float array of codes (encoder means).
        factors: (N, K) integer value indices.
        num_train, num_test: points drawn without replacement from the rows (disjoint sets).
        seed: seeds the row draw and the classifiers' ``random_state``.

    Returns:
        ``disentanglement``, ``completeness``, ``informativeness_train``, ``informativeness_test``.
    """
    codes, factors = _check_pair(codes, factors)
    train, test = _draw_split(np.random.default_rng(seed), codes.shape[0], num_train, num_test)
    keep = _varying(factors[train])
    importance, acc_train, acc_test = _importance_gbt(
        codes[train], factors[train][:, keep], codes[test], factors[test][:, keep], seed
    )
    return {
        "disentanglement": _dci_disentanglement(importance),
        "completeness": _dci_completeness(importance),
        "informativeness_train": acc_train,
        "informativeness_test": acc_test,
    }


# ----------------------------------------------------------------------------------------------
# MIG
# ----------------------------------------------------------------------------------------------


def mig(
    codes: np.ndarray, factors: np.ndarray, num_train: int = 10000, num_bins: int = 20, seed: int = 0
) -> float:
    """Mutual Information Gap (discrete MIG).

    Chen et al., "Isolating Sources of Disentanglement in Variational Autoencoders", NeurIPS
    2018, as implemented in disentanglement_lib ``metrics/mig.py``: histogram-discretise each code
    into ``num_bins`` bins, ``mutual_info_score`` against each factor, then the mean over factors
    of (largest - second largest MI) / H(factor), with H(factor) = mutual_info_score(f, f).

    Args:
        codes: (N, D) float array of codes.
        factors: (N, K) integer value indices.
        num_train: points drawn without replacement from the rows (all rows when fewer).
        num_bins: histogram bins per code dimension.
        seed: seeds the row draw.

    Returns:
        The MIG score; with a single code dimension the gap is to 0.
    """
    codes, factors = _check_pair(codes, factors)
    rows = _draw_rows(np.random.default_rng(seed), codes.shape[0], num_train)
    ys = factors[rows][:, _varying(factors[rows])]
    mi = _mutual_info(_histogram_discretize(codes[rows], num_bins), ys)
    entropy = np.array([mutual_info_score(col, col) for col in ys.T])
    return float(np.mean(_top_two_gap(mi) / entropy))


# ----------------------------------------------------------------------------------------------
# SAP
# ----------------------------------------------------------------------------------------------


def _sap_matrix(x_train, y_train, x_test, y_test, seed: int) -> np.ndarray:
    """Test accuracy of LinearSVC(C=0.01, balanced) on each single code dim for each factor."""
    scores = np.zeros((x_train.shape[1], y_train.shape[1]))
    for j in range(x_train.shape[1]):
        for k in range(y_train.shape[1]):
            clf = LinearSVC(C=0.01, class_weight="balanced", random_state=seed)
            clf.fit(x_train[:, j : j + 1], y_train[:, k])
            scores[j, k] = np.mean(clf.predict(x_test[:, j : j + 1]) == y_test[:, k])
    return scores


def sap(
    codes: np.ndarray, factors: np.ndarray, num_train: int = 10000, num_test: int = 5000, seed: int = 0
) -> float:
    """Separated Attribute Predictability (SAP), discrete-factor branch.

    Kumar et al., "Variational Inference of Disentangled Latent Concepts from Unlabeled
    Observations", ICLR 2018, Sec. 3, as implemented in disentanglement_lib
    ``metrics/sap_score.py`` with ``continuous_factors=False``: score matrix of test accuracies of
    ``LinearSVC(C=0.01, class_weight="balanced")`` fitted on one code dimension per factor; SAP =
    mean over factors of the gap between the two best dimensions.

    Args:
        codes: (N, D) float array of codes.
        factors: (N, K) integer value indices.
        num_train, num_test: points drawn without replacement from the rows (disjoint sets).
        seed: seeds the row draw and the SVMs' ``random_state``.

    Returns:
        The SAP score; with a single code dimension the gap is to 0.
    """
    codes, factors = _check_pair(codes, factors)
    train, test = _draw_split(np.random.default_rng(seed), codes.shape[0], num_train, num_test)
    keep = _varying(factors[train])
    matrix = _sap_matrix(codes[train], factors[train][:, keep], codes[test], factors[test][:, keep], seed)
    return float(np.mean(_top_two_gap(matrix)))


# ----------------------------------------------------------------------------------------------
# FactorVAE
# ----------------------------------------------------------------------------------------------


def _factor_vae_votes(rng, codes, groups, batch_size: int, num_points: int, global_var, active) -> np.ndarray:
    """Vote matrix (num_factors x num_dims): for each batch, fixed factor vs. least-varying dim."""
    votes = np.zeros((len(groups), codes.shape[1]), dtype=np.int64)
    active_idx = np.flatnonzero(active)
    for _ in range(num_points):
        k = int(rng.integers(len(groups)))
        members = groups[k].members(int(rng.integers(codes.shape[0])))
        batch = members[rng.choice(members.size, size=batch_size, replace=members.size < batch_size)]
        local_var = np.var(codes[batch], axis=0, ddof=1)
        votes[k, active_idx[np.argmin(local_var[active] / global_var[active])]] += 1
    return votes


def _vote_accuracy(votes: np.ndarray, classifier: np.ndarray) -> float:
    """Fraction of votes agreeing with the majority-vote classifier (dim -> factor)."""
    return float(votes[classifier, np.arange(votes.shape[1])].sum() / votes.sum())


def factor_vae(
    codes: np.ndarray,
    factors: np.ndarray,
    batch_size: int = 64,
    num_train: int = 10000,
    num_eval: int = 5000,
    num_variance_estimate: int = 10000,
    prune_std: float = 0.05,
    seed: int = 0,
) -> dict:
    """FactorVAE disentanglement metric (majority-vote classifier).

    Kim & Mnih, "Disentangling by Factorising", ICML 2018, as implemented in disentanglement_lib
    ``metrics/factor_vae.py``: global variances (ddof=1) from ``num_variance_estimate`` codes;
    dimensions with std < ``prune_std`` are pruned (active means std >= prune_std, disentanglement_lib's
    ``prune_dims``); each vote fixes one random factor over a batch of ``batch_size`` points and
    votes (factor, argmin over active dims of local variance / global variance); the classifier
    maps each dim to its most voted factor; accuracies on the training votes and on separate
    evaluation votes. Without active dims all scores are 0, as in disentanglement_lib.

    Fixed-rows version: a vote picks factor k uniformly, takes the value v of factor k in a
    uniformly drawn row (so values follow the data), and draws the batch from the rows with
    factor k == v, without replacement when at least ``batch_size`` such rows exist, else with
    replacement. ``num_variance_estimate`` rows are drawn without replacement (all rows when fewer).

    Returns:
        ``train_accuracy``, ``eval_accuracy``, ``num_active_dims``.
    """
    codes, factors = _check_pair(codes, factors)
    rng = np.random.default_rng(seed)
    global_var = np.var(codes[_draw_rows(rng, codes.shape[0], num_variance_estimate)], axis=0, ddof=1)
    active = np.sqrt(global_var) >= prune_std
    if not active.any():
        return {"train_accuracy": 0.0, "eval_accuracy": 0.0, "num_active_dims": 0}
    groups = [_Groups(col) for col in factors[:, _varying(factors)].T]
    train_votes = _factor_vae_votes(rng, codes, groups, batch_size, num_train, global_var, active)
    classifier = np.argmax(train_votes, axis=0)
    eval_votes = _factor_vae_votes(rng, codes, groups, batch_size, num_eval, global_var, active)
    return {
        "train_accuracy": _vote_accuracy(train_votes, classifier),
        "eval_accuracy": _vote_accuracy(eval_votes, classifier),
        "num_active_dims": int(active.sum()),
    }


# ----------------------------------------------------------------------------------------------
# BetaVAE
# ----------------------------------------------------------------------------------------------


def _beta_vae_points(rng, codes, groups, batch_size: int, num_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Features (mean |z1 - z2| over ``batch_size`` pairs sharing factor k) and labels k."""
    labels = rng.integers(len(groups), size=num_points)
    first = rng.integers(codes.shape[0], size=(num_points, batch_size))
    points = np.zeros((num_points, codes.shape[1]))
    for k, group in enumerate(groups):
        idx = np.flatnonzero(labels == k)
        for chunk in np.array_split(idx, max(1, idx.size // 512)):
            second = group.partners(rng, first[chunk])
            points[chunk] = np.abs(codes[first[chunk]] - codes[second]).mean(axis=1)
    return points, labels


def beta_vae(
    codes: np.ndarray,
    factors: np.ndarray,
    batch_size: int = 64,
    num_train: int = 10000,
    num_eval: int = 5000,
    seed: int = 0,
) -> dict:
    """BetaVAE disentanglement metric (scikit-learn version).

    Higgins et al., "beta-VAE: Learning Basic Visual Concepts with a Constrained Variational
    Framework", ICLR 2017, as implemented in disentanglement_lib ``metrics/beta_vae.py``
    (``compute_beta_vae_sklearn``): each point picks a factor k, averages |z1 - z2| over
    ``batch_size`` pairs that share the value of factor k, and is labelled k; a default
    ``LogisticRegression`` is fitted on ``num_train`` points and scored on ``num_eval`` new ones.

    Fixed-rows version: z1 is a uniformly drawn row and z2 a uniformly drawn row with the same
    value of factor k as z1 (with replacement, so z2 may be z1's row when that value is rare).

    Returns:
        ``train_accuracy``, ``eval_accuracy``.
    """
    codes, factors = _check_pair(codes, factors)
    rng = np.random.default_rng(seed)
    groups = [_Groups(col) for col in factors[:, _varying(factors)].T]
    x_train, y_train = _beta_vae_points(rng, codes, groups, batch_size, num_train)
    model = LogisticRegression(random_state=seed).fit(x_train, y_train)
    x_eval, y_eval = _beta_vae_points(rng, codes, groups, batch_size, num_eval)
    return {
        "train_accuracy": float(np.mean(model.predict(x_train) == y_train)),
        "eval_accuracy": float(model.score(x_eval, y_eval)),
    }


# ----------------------------------------------------------------------------------------------
# Modularity and explicitness
# ----------------------------------------------------------------------------------------------


def _modularity(mi: np.ndarray) -> float:
    """Ridgeway & Zemel modularity from the (codes x factors) mutual information matrix."""
    squared = np.square(mi)
    top = squared.max(axis=1)
    if mi.shape[1] < 2:
        return float(np.mean(np.where(top > 0, 1.0, 0.0)))
    with np.errstate(divide="ignore", invalid="ignore"):
        delta = (squared.sum(axis=1) - top) / (top * (mi.shape[1] - 1.0))
    return float(np.mean(np.where(top > 0, 1.0 - delta, 0.0)))


def _multiclass_auc(y: np.ndarray, proba: np.ndarray, classes: np.ndarray) -> float:
    """Macro ROC-AUC over one-vs-rest indicator columns with both labels present."""
    indicator = (y[:, None] == classes[None, :]).astype(np.int64)
    usable = (indicator.min(axis=0) == 0) & (indicator.max(axis=0) == 1)
    return float(roc_auc_score(indicator[:, usable], proba[:, usable]))


def _explicitness(x_train, y_train, x_test, y_test, seed: int) -> tuple[float, float]:
    """ROC-AUC (train, test) of a default LogisticRegression predicting one factor."""
    clf = LogisticRegression(random_state=seed).fit(x_train, y_train)
    return (
        _multiclass_auc(y_train, clf.predict_proba(x_train), clf.classes_),
        _multiclass_auc(y_test, clf.predict_proba(x_test), clf.classes_),
    )


def modularity_explicitness(
    codes: np.ndarray,
    factors: np.ndarray,
    num_train: int = 10000,
    num_test: int = 5000,
    num_bins: int = 20,
    seed: int = 0,
) -> dict:
    """Modularity and explicitness.

    Ridgeway & Zemel, "Learning Deep Disentangled Embeddings With the F-Statistic Loss", NeurIPS
    2018, as implemented in disentanglement_lib ``metrics/modularity_explicitness.py``: modularity
    from the mutual information of histogram-discretised training codes (a code whose largest MI
    is 0 scores 0); explicitness = mean over factors of the ROC-AUC of a default
    ``LogisticRegression`` on codes standardised with the training mean and std, one-vs-rest
    indicator columns per factor value (macro average).

    Deviations that only avoid crashes: a constant code column is divided by 1 instead of 0, and
    a factor value missing from one of the two sets is left out of that set's AUC.

    Returns:
        ``modularity``, ``explicitness_train``, ``explicitness_test``.
    """
    codes, factors = _check_pair(codes, factors)
    train, test = _draw_split(np.random.default_rng(seed), codes.shape[0], num_train, num_test)
    keep = _varying(factors[train])
    y_train, y_test = factors[train][:, keep], factors[test][:, keep]
    mi = _mutual_info(_histogram_discretize(codes[train], num_bins), y_train)
    mean, std = codes[train].mean(axis=0), codes[train].std(axis=0)
    std = np.where(std > 0, std, 1.0)
    x_train, x_test = (codes[train] - mean) / std, (codes[test] - mean) / std
    aucs = [
        _explicitness(x_train, y_train[:, k], x_test, y_test[:, k], seed) for k in range(y_train.shape[1])
    ]
    return {
        "modularity": _modularity(mi),
        "explicitness_train": float(np.mean([a[0] for a in aucs])),
        "explicitness_test": float(np.mean([a[1] for a in aucs])),
    }


# ----------------------------------------------------------------------------------------------
# Blocks, all scores, files, table
# ----------------------------------------------------------------------------------------------


def reduce_blocks(codes: np.ndarray, blocks: list[int]) -> np.ndarray:
    """Replace each multi-dimensional block of code columns by its first principal component.

    As DisDiff (Yang et al., "DisDiff: Unsupervised Disentanglement of Diffusion Probabilistic
    Models", NeurIPS 2023) reports metrics for block-structured codes: sklearn ``PCA`` with one
    component, fitted on all rows of the block; 1-dimensional blocks are kept as they are.

    Args:
        codes: (N, D) float array.
        blocks: consecutive block sizes summing to D.

    Returns:
        (N, len(blocks)) float array.
    """
    codes = _check_codes(codes)
    sizes = _check_blocks(blocks, codes.shape[1])
    edges = np.concatenate([[0], np.cumsum(sizes)])
    columns = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        block = codes[:, lo:hi]
        columns.append(block[:, 0] if hi - lo == 1 else PCA(n_components=1).fit_transform(block)[:, 0])
    return np.stack(columns, axis=1)


def _scaled(num: int, scale: float) -> int:
    """``num * scale`` rounded, at least 2."""
    return max(2, int(round(num * scale)))


def _plan(num_rows: int, scale: float) -> dict:
    """The point counts each metric will use on ``num_rows`` rows at this scale."""
    tr, te, ev = _scaled(10000, scale), _scaled(5000, scale), _scaled(5000, scale)
    split = dict(zip(("num_train", "num_test"), _split_sizes(num_rows, tr, te)))
    return {
        "dci": dict(split),
        "mig": {"num_train": min(tr, num_rows), "num_bins": 20},
        "sap": dict(split),
        "factorvae": {
            "batch_size": 64,
            "num_train": tr,
            "num_eval": ev,
            "num_variance_estimate": min(10000, num_rows),
            "prune_std": 0.05,
        },
        "betavae": {"batch_size": 64, "num_train": tr, "num_eval": ev},
        "modularity_explicitness": {**split, "num_bins": 20},
    }


def score_all(
    codes: np.ndarray,
    factors: np.ndarray,
    blocks: list[int] | None = None,
    first_pc: bool = False,
    scale: float = 1.0,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """All disentanglement_lib metrics with its default settings, as one flat dict.

    Protocols: see :func:`dci`, :func:`mig`, :func:`sap`, :func:`factor_vae` (eval accuracy),
    :func:`beta_vae` (eval accuracy), :func:`modularity_explicitness` (test explicitness); the
    settings are those of disentanglement_lib's ``unsupervised_study_v1`` metric configs.

    Args:
        codes: (N, D) float array of codes.
        factors: (N, K) integer value indices.
        blocks: optional block sizes of the code (summing to D), recorded in ``settings``.
        first_pc: reduce each block to its first principal component first (:func:`reduce_blocks`);
            needs ``blocks``.
        scale: in (0, 1]; multiplies every num_train / num_test / num_eval (1.0 = disentanglement_lib).
        seed: random seed of every metric.
        progress: show a progress bar over the metrics (DCI's gradient boosting takes minutes).

    Returns:
        The keys of ``SCORE_KEYS`` plus ``settings`` (points, blocks, first_pc, seed, scale,
        skipped constant factors and the point counts each metric used).
    """
    codes, factors = _check_pair(codes, factors)
    if not 0.0 < float(scale) <= 1.0:
        raise FactordiffError(f"scale: expected a number in (0, 1], got {scale!r}")
    if first_pc and blocks is None:
        raise FactordiffError("first_pc: needs blocks (the sizes of the code blocks to reduce)")
    sizes = None if blocks is None else _check_blocks(blocks, codes.shape[1])
    if first_pc:
        codes = reduce_blocks(codes, sizes)
    plan = _plan(codes.shape[0], float(scale))
    jobs = {
        "dci": lambda: dci(codes, factors, **plan["dci"], seed=seed),
        "mig": lambda: mig(codes, factors, **plan["mig"], seed=seed),
        "sap": lambda: sap(codes, factors, **plan["sap"], seed=seed),
        "factorvae": lambda: factor_vae(codes, factors, **plan["factorvae"], seed=seed)["eval_accuracy"],
        "betavae": lambda: beta_vae(codes, factors, **plan["betavae"], seed=seed)["eval_accuracy"],
        "modularity_explicitness": lambda: modularity_explicitness(
            codes, factors, **plan["modularity_explicitness"], seed=seed
        ),
    }
    done = {}
    with tqdm(total=len(jobs), desc="metrics", unit="metric", disable=not progress) as bar:
        for name, job in jobs.items():
            bar.set_postfix_str(name)
            done[name] = job()
            bar.update()
    d, me = done["dci"], done["modularity_explicitness"]
    scores = {
        "dci_disentanglement": d["disentanglement"],
        "dci_completeness": d["completeness"],
        "dci_informativeness_test": d["informativeness_test"],
        "dci_informativeness_train": d["informativeness_train"],
        "mig": done["mig"],
        "sap": done["sap"],
        "factorvae": done["factorvae"],
        "betavae": done["betavae"],
        "modularity": me["modularity"],
        "explicitness": me["explicitness_test"],
    }
    scores["settings"] = {
        "n": int(codes.shape[0]),
        "code_dims": int(codes.shape[1]),
        "blocks": sizes,
        "first_pc": bool(first_pc),
        "seed": int(seed),
        "scale": float(scale),
        "skipped_constant_factors": [int(i) for i in np.flatnonzero(~_varying(factors))],
        **plan,
    }
    return scores


def _load_npy(path: str | Path, name: str) -> np.ndarray:
    """np.load a .npy file (no pickles) or raise FactordiffError naming the file."""
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - any failure to read is the user's file problem
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise FactordiffError(f"{name} {path}: cannot read as a .npy array ({reason})") from None
    if not isinstance(arr, np.ndarray):
        arr.close()
        raise FactordiffError(f"{name} {path}: expected a .npy array, got an .npz archive")
    return arr


def load_and_score(
    codes_path: str | Path,
    factors_path: str | Path,
    blocks: list[int] | None = None,
    first_pc: bool = False,
    scale: float = 1.0,
    progress: bool = False,
) -> dict:
    """Load codes and factors from ``.npy`` files, validate them and run :func:`score_all` (seed 0).

    Metrics follow disentanglement_lib; see :func:`score_all`. Unreadable or corrupt files raise
    :class:`FactordiffError` naming the file.
    """
    codes = _load_npy(codes_path, "codes")
    factors = _load_npy(factors_path, "factors")
    return score_all(codes, factors, blocks=blocks, first_pc=first_pc, scale=scale, seed=0, progress=progress)


def format_table(scores: dict) -> str:
    """A two-column text table (metric, value) of the scores, names left- and values right-aligned."""
    rows = [(key, f"{float(scores[key]):.4f}") for key in SCORE_KEYS if key in scores]
    rows += [
        (k, f"{float(v):.4f}")
        for k, v in scores.items()
        if k not in SCORE_KEYS and k != "settings" and isinstance(v, (int, float))
    ]
    if isinstance(scores.get("settings"), dict) and "n" in scores["settings"]:
        rows.append(("points", str(scores["settings"]["n"])))
    left = max([len("metric")] + [len(r[0]) for r in rows])
    right = max([len("value")] + [len(r[1]) for r in rows])
    lines = [f"{'metric':<{left}}  {'value':>{right}}", f"{'-' * left}  {'-' * right}"]
    lines += [f"{name:<{left}}  {value:>{right}}" for name, value in rows]
    return "\n".join(lines)
