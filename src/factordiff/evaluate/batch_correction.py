"""Batch-correction baselines in feature space: what a Cell Painting scientist would try for "these
wells as if run in batch B", on morphological profiles (rows = wells, columns = features).

Each takes features ``x`` (N, F), value indices ``factors`` (N, K), the boolean mask ``train`` (N,)
of the rows statistics may come from (held-out rows never reach a fitted statistic), the rows to
transfer ``src`` and their targets ``target`` (len(src), K) value indices, and returns the
transferred rows (len(src), F) in the units of ``x``. The *batch* of a row is its joint value of the
changed factors (those where some source row differs from its target); a row's reference batch is
its target's combination, and the other factors are covariates. A source row already in its target
batch is returned unchanged. With ``info``, each records what it did.

- ``combat``: ComBat's empirical Bayes location/scale adjustment towards a reference batch;
- ``sphering``: per-batch whitening and colouring (ZCA) with shrunk covariances of control wells;
- ``harmony``: Harmony in PCA space, with the target batch's mean correction put back.
"""

from __future__ import annotations

import numpy as np

from factordiff.errors import FactordiffError


class _Batches:
    """The batches of a transfer: ``changed`` factor positions, ``keys`` (B, len(changed)) the
    distinct combinations of the training and source rows and the targets in sorted order, ``row``
    (N,) each row's batch (-1 outside the training and source rows, which are never read) and
    ``target`` (len(src),) each target's batch."""

    def __init__(self, factors: np.ndarray, train: np.ndarray, src: np.ndarray, target: np.ndarray):
        self.changed = np.flatnonzero((factors[src] != target).any(0))
        seen = train.copy()
        seen[src] = True
        combos = np.concatenate([factors[seen][:, self.changed], target[:, self.changed]])
        self.keys, inverse = np.unique(combos, axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        self.row = np.full(len(factors), -1)
        self.row[seen] = inverse[: seen.sum()]
        self.target = inverse[seen.sum() :]

    def name(self, b: int) -> dict[int, int]:
        """Batch ``b`` as {factor position: value index}."""
        return {int(k): int(v) for k, v in zip(self.changed, self.keys[b])}

    def require(self, batches, train: np.ndarray, who: str, role: str, least: int = 1) -> None:
        """Raise, on one line, naming the first of ``batches`` with fewer than ``least`` training rows."""
        for b in np.unique(batches):
            if (train & (self.row == b)).sum() < least:
                rows = "no training row" if least == 1 else f"fewer than {least} training rows"
                raise FactordiffError(
                    f"{who}: the {role} batch {self.name(b)} (factor position: value index) has {rows}"
                )


def _start(x, factors, train, src, target, info) -> tuple[_Batches, np.ndarray]:
    """The batches, and which source rows move (their batch is not their target's)."""
    batches = _Batches(factors, np.asarray(train, bool), np.asarray(src), np.asarray(target))
    moves = batches.row[src] != batches.target
    if info is not None:
        info.update(changed=batches.changed.tolist(), moved_rows=int(moves.sum()))
    return batches, moves


def _in_units(out: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``out`` in the dtype of ``x`` where that is floating."""
    return out.astype(x.dtype) if np.issubdtype(x.dtype, np.floating) else out


# ComBat ------------------------------------------------------------------------------------------


def _covariates(cols: np.ndarray, batch: np.ndarray, unchanged: np.ndarray) -> tuple[list, list, list]:
    """Covariate columns (factor position, value index) for fit rows with factor values ``cols``
    (n, K) and batches ``batch``: per unchanged factor, one indicator per value present but its
    first, each kept only where it adds rank to the batch indicators and the columns kept before it
    (else it is confounded with batch). Returns the kept columns, the factors with a single value
    (constant) and the confounded columns."""
    levels = np.unique(batch)
    basis = np.zeros((len(cols), len(levels) + sum(len(np.unique(cols[:, k])) for k in unchanged)))
    basis[:, : len(levels)] = (batch[:, None] == levels) / np.sqrt((batch[:, None] == levels).sum(0))
    rank = len(levels)
    kept, constant, confounded = [], [], []
    for k in unchanged:
        values = np.unique(cols[:, k])
        if len(values) == 1:
            constant.append(int(k))
        for v in values[1:]:
            c = (cols[:, k] == v).astype(float)
            r = c - basis[:, :rank] @ (basis[:, :rank].T @ c)
            if np.linalg.norm(r) > 1e-8 * np.linalg.norm(c):
                basis[:, rank], rank = r / np.linalg.norm(r), rank + 1
                kept.append((int(k), int(v)))
            else:
                confounded.append((int(k), int(v)))
    return kept, constant, confounded


def _indicators(cols: np.ndarray, columns: list) -> np.ndarray:
    """(n, len(columns)) 0/1 indicators of (factor position, value index) columns."""
    return (
        np.stack([cols[:, k] == v for k, v in columns], 1).astype(float)
        if columns
        else np.zeros((len(cols), 0))
    )


def _empirical_bayes(s: np.ndarray, mean_only: bool, tol: float = 1e-4, max_iter: int = 10_000):
    """One batch's parametric empirical Bayes location and scale (gamma*, delta*), from its
    standardized rows ``s`` (n, F), with pyComBat's estimates and iteration (Johnson et al. 2007,
    section 3.1): hyper-priors from the features' moments, then alternating posterior means."""
    n, g_hat = len(s), s.mean(0)
    g_bar, t2 = g_hat.mean(), g_hat.var()
    if mean_only:
        return (t2 * g_hat + g_bar) / (t2 + 1), np.ones_like(g_hat)
    d_hat = s.var(0)
    m, v = d_hat.mean(), d_hat.var()
    a, b = (2 * v + m**2) / v, (m * v + m**3) / v
    g, d = g_hat, d_hat
    for _ in range(max_iter):
        g_new = (t2 * n * g_hat + d * g_bar) / (t2 * n + d)
        d_new = (0.5 * ((s - g_new) ** 2).sum(0) + b) / (0.5 * n + a - 1)
        change = max(np.max(np.abs(g_new - g) / np.maximum(np.abs(g), 1e-12)), np.max(np.abs(d_new - d) / d))
        g, d = g_new, d_new
        if change < tol:
            break
    return g, d


class _ComBatFit:
    """ComBat with a reference batch (Johnson et al. 2007, Biostatistics 8:118; the reference-batch
    form of Zhang et al. 2018, BMC Bioinformatics 19:262, as in R's ``sva::ComBat(ref.batch=)`` and
    pyComBat), fitted on rows ``x`` (n, F) of batches ``batch`` with covariates ``cov`` (n, P):

    1. least squares of x on [batch indicators with the reference's as intercept, covariates];
    2. standardize: s = (x - alpha - cov beta) / sigma, with alpha the reference batch's intercept
       and sigma^2 the reference batch's mean squared residual;
    3. per other batch, empirical Bayes gamma*, delta* from its rows of s;
    4. a row of batch b becomes alpha + cov beta + (x - alpha - cov beta - sigma gamma*_b) / sqrt(delta*_b);
       the reference batch's rows are unchanged.

    Any row of a fitted batch can be adjusted (``apply``), so rows outside the fit take the fitted
    adjustment."""

    def __init__(self, x: np.ndarray, batch: np.ndarray, cov: np.ndarray, ref: int, mean_only: bool):
        self.levels = np.unique(batch)
        design = (batch[:, None] == self.levels).astype(float)
        r = int(np.searchsorted(self.levels, ref))
        design[:, r] = 1.0
        beta = np.linalg.lstsq(np.concatenate([design, cov], 1), x, rcond=None)[0]
        self.ref, self.alpha, self.beta = ref, beta[r], beta[len(self.levels) :]
        resid = x - np.concatenate([design, cov], 1) @ beta
        sd = np.sqrt((resid[batch == ref] ** 2).mean(0))
        self.sd = np.where(sd > 0, sd, 1.0)
        s = (x - self.alpha - cov @ self.beta) / self.sd
        self.gamma, self.delta = {}, {}
        for b in self.levels[self.levels != ref]:
            self.gamma[b], self.delta[b] = _empirical_bayes(s[batch == b], mean_only)

    def apply(self, x: np.ndarray, batch: np.ndarray, cov: np.ndarray) -> np.ndarray:
        mean = self.alpha + cov @ self.beta
        out = x.copy()
        for b in np.unique(batch[batch != self.ref]):
            i = batch == b
            out[i] = mean[i] + (x[i] - mean[i] - self.sd * self.gamma[b]) / np.sqrt(self.delta[b])
        return out


def combat(
    x: np.ndarray,
    factors: np.ndarray,
    train: np.ndarray,
    src: np.ndarray,
    target: np.ndarray,
    info: dict | None = None,
) -> np.ndarray:
    """ComBat (empirical Bayes location/scale, Johnson et al. 2007) towards the target batch.

    Per target batch, parametric ComBat with that batch as reference (``_ComBatFit``) is fitted on
    all training rows, with covariates the one-hot unchanged factors (a factor's first value is the
    baseline; columns constant or confounded with batch are dropped), and adjusts the source rows;
    a source row outside ``train`` is never fitted on and takes the fitted adjustment. If any
    training batch has a single row, only locations are adjusted (``mean_only``, as ``sva`` does).

    This is pyComBat's algorithm (the ``combat`` package, epigenelabs) written in numpy, as
    combat 0.3.3's ``pycombat(..., ref_batch=...)`` cannot serve: it writes into the read-only
    array of ``DataFrame.to_numpy()`` (ValueError under pandas 3), restores the reference batch
    along the wrong axis (IndexError when there are more samples than features; the slicing of
    epigenelabs/inmoose#14), its scale iteration subtracts the first feature's location from every
    feature (``g_new[0][0]`` in ``it_sol``, right only for the ``np.matrix`` its successor inmoose
    passes), and it adjusts only the rows it fits. The tests check that the two agree to rounding
    once these bugs are worked around.

    Parameters
    ----------
    x, factors, train, src, target
        As in the module docstring.
    info
        Records ``covariates`` (kept (factor, value) columns), ``covariates_constant`` (factors with
        one value among the training rows), ``covariates_confounded`` (dropped columns),
        ``mean_only`` and ``outside_train_rows`` (source rows adjusted without being fitted on).

    Returns
    -------
    np.ndarray
        The transferred rows (len(src), F).

    Raises
    ------
    FactordiffError
        A target or source batch with no training row.
    """
    batches, moves = _start(x, factors, train, src, target, info)
    out = x[src].astype(float)
    if not moves.any():
        return _in_units(out, x)
    train = np.asarray(train, bool)
    batches.require(batches.target[moves], train, "combat", "target")
    batches.require(batches.row[src][moves], train, "combat", "source")
    fit = np.flatnonzero(train)
    unchanged = np.setdiff1d(np.arange(factors.shape[1]), batches.changed)
    columns, constant, confounded = _covariates(factors[fit], batches.row[fit], unchanged)
    counts = np.bincount(batches.row[fit])
    mean_only = bool((counts[counts > 0] == 1).any())
    xf, bf, cf = x[fit].astype(float), batches.row[fit], _indicators(factors[fit], columns)
    cs = _indicators(factors[src], columns)
    for ref in np.unique(batches.target[moves]):
        rows = moves & (batches.target == ref)
        model = _ComBatFit(xf, bf, cf, int(ref), mean_only)
        out[rows] = model.apply(out[rows], batches.row[src][rows], cs[rows])
    if info is not None:
        info.update(
            covariates=columns,
            covariates_constant=constant,
            covariates_confounded=confounded,
            mean_only=mean_only,
            outside_train_rows=int((~train[src] & moves).sum()),
        )
    return _in_units(out, x)


# sphering ----------------------------------------------------------------------------------------


def _power(c: np.ndarray, p: float) -> np.ndarray:
    """A symmetric positive semi-definite matrix to the power ``p``, eigenvalues floored at 1e-12
    of the largest."""
    w, v = np.linalg.eigh(c)
    w = np.maximum(w, 1e-12 * max(w.max(), 1e-300))
    return (v * w**p) @ v.T


def _pca_basis(xt: np.ndarray, variance: float = 0.99, most: int | None = None):
    """Mean and components (k, F) of a PCA fitted on ``xt``: the fewest components explaining
    ``variance`` of the variance, at most ``most`` (and len(xt) - 1)."""
    from sklearn.decomposition import PCA

    k = min(xt.shape[1], len(xt) - 1, most or xt.shape[1])
    pca = PCA(n_components=k, svd_solver="full").fit(xt)
    if variance < 1:
        k = min(k, int(np.searchsorted(np.cumsum(pca.explained_variance_ratio_), variance) + 1))
    return pca.mean_, pca.components_[:k]


def sphering(
    x: np.ndarray,
    factors: np.ndarray,
    train: np.ndarray,
    src: np.ndarray,
    target: np.ndarray,
    controls: np.ndarray | None = None,
    pca: bool | None = None,
    info: dict | None = None,
) -> np.ndarray:
    """Per-batch sphering (ZCA): whiten with the source batch's statistics, colour with the target's,
    x' = mu_B + C_B^{1/2} C_A^{-1/2} (x - mu_A).

    A batch's mean mu and covariance C (Ledoit-Wolf shrinkage, so C is positive definite) come
    from its training control rows (``controls``), or from all its training rows where it has
    fewer than two training control rows (recorded). When F is at least the number of rows of the
    smallest batch's statistics (``pca`` None; True or False forces it), this is done in a PCA space
    fitted on the training rows (components explaining 99% of the variance, at most
    n_train - 1): the coordinates z move as above and x' = x + (z' - z) @ components, so the part
    of a row outside that space is kept as it is.

    Parameters
    ----------
    x, factors, train, src, target
        As in the module docstring.
    controls
        Boolean (N,) mask of control wells (e.g. DMSO), or None to use all training rows.
    pca
        Work in the PCA space; None decides as above.
    info
        Records ``components`` (the PCA's, None without it) and ``no_controls`` (the batches whose
        statistics came from all their training rows, as {factor position: value index}).

    Returns
    -------
    np.ndarray
        The transferred rows (len(src), F).

    Raises
    ------
    FactordiffError
        A target or source batch with fewer than two training rows.
    """
    from sklearn.covariance import LedoitWolf

    batches, moves = _start(x, factors, train, src, target, info)
    out = x[src].astype(float)
    if not moves.any():
        return _in_units(out, x)
    train = np.asarray(train, bool)
    needed = np.unique(np.r_[batches.target[moves], batches.row[src][moves]])
    batches.require(batches.target[moves], train, "sphering", "target", least=2)
    batches.require(batches.row[src][moves], train, "sphering", "source", least=2)
    rows, no_controls = {}, []
    for b in needed:
        mine = train & (batches.row == b)
        if controls is not None and (mine & controls).sum() >= 2:
            rows[b] = mine & controls
        else:
            rows[b] = mine
            no_controls.append(batches.name(b))
    if pca is None:
        pca = x.shape[1] >= min(r.sum() for r in rows.values())
    if pca:
        mean, basis = _pca_basis(x[train].astype(float))
    else:
        mean, basis = np.zeros(x.shape[1]), np.eye(x.shape[1])
    stats = {}
    for b, r in rows.items():
        lw = LedoitWolf().fit((x[r] - mean) @ basis.T)
        stats[b] = lw.location_, lw.covariance_
    z = (out - mean) @ basis.T
    for a, b in {(int(a), int(b)) for a, b in zip(batches.row[src][moves], batches.target[moves])}:
        i = moves & (batches.row[src] == a) & (batches.target == b)
        (mu_a, c_a), (mu_b, c_b) = stats[a], stats[b]
        moved = mu_b + (z[i] - mu_a) @ (_power(c_b, 0.5) @ _power(c_a, -0.5)).T
        out[i] += (moved - z[i]) @ basis
    if info is not None:
        info.update(components=len(basis) if pca else None, no_controls=no_controls)
    return _in_units(out, x)


# Harmony -----------------------------------------------------------------------------------------


def harmony(
    x: np.ndarray,
    factors: np.ndarray,
    train: np.ndarray,
    src: np.ndarray,
    target: np.ndarray,
    components: int = 50,
    seed: int = 0,
    info: dict | None = None,
) -> np.ndarray:
    """Harmony (Korsunsky et al. 2019, Nature Methods 16:1289; ``harmonypy``) in PCA space, turned
    into a transfer to the target batch.

    A PCA is fitted on the training rows (``components`` or fewer, at most n_train - 1); Harmony
    runs on the embeddings z of the training and source rows with their batch. Harmony removes
    batch from every row (z -> z_corr); the target batch B's own correction is the mean over its
    training rows of (z - z_corr). A source row's transferred profile is

        inverse-PCA(z_corr + mean_B(z - z_corr)) + (x - inverse-PCA(z)),

    its Harmony-corrected embedding with B's batch effect put back, plus its residual outside the
    PCA space, that is x + (z_corr + mean_B(z - z_corr) - z) @ components.

    Parameters
    ----------
    x, factors, train, src, target
        As in the module docstring.
    components
        The most PCA components.
    seed
        Harmony's ``random_state``.
    info
        Records ``components`` and ``clusters`` (Harmony's, min(max(1, round(n / 30)), 100) for n
        rows, its default but at least one).

    Returns
    -------
    np.ndarray
        The transferred rows (len(src), F).

    Raises
    ------
    FactordiffError
        A target batch with no training row.
    """
    import pandas as pd
    from harmonypy import run_harmony

    batches, moves = _start(x, factors, train, src, target, info)
    out = x[src].astype(float)
    if not moves.any():
        return _in_units(out, x)
    train = np.asarray(train, bool)
    batches.require(batches.target[moves], train, "harmony", "target")
    fit = train.copy()
    fit[src] = True
    fit = np.flatnonzero(fit)
    mean, basis = _pca_basis(x[train].astype(float), variance=1.0, most=components)
    z = (x[fit] - mean) @ basis.T
    clusters = int(min(max(1, round(len(fit) / 30)), 100))
    labels = pd.DataFrame({"batch": [f"b{b}" for b in batches.row[fit]]})
    run = run_harmony(z.T, labels, "batch", nclust=clusters, random_state=seed, verbose=False)
    z_corr = np.asarray(run.Z_corr, float)
    z_corr = z_corr if z_corr.shape[0] == len(fit) else z_corr.T  # harmonypy < 0.1 gives (d, n)
    own = z - z_corr
    offset = {b: own[train[fit] & (batches.row[fit] == b)].mean(0) for b in np.unique(batches.target[moves])}
    at = np.searchsorted(fit, src[moves])
    shift = z_corr[at] + np.stack([offset[b] for b in batches.target[moves]]) - z[at]
    out[moves] += shift @ basis
    if info is not None:
        info.update(components=len(basis), clusters=clusters)
    return _in_units(out, x)
