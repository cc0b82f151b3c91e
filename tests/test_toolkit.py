"""The evaluation toolkit both kinds of run share: distances between sample sets
(``evaluate/distances.py``) and the baselines on feature matrices (``evaluate/baselines.py``)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from factordiff.evaluate.baselines import (
    BASELINES,
    baseline_rows,
    fallback_share,
    interpolate,
    mean_shift,
    nearest_rows,
)
from factordiff.evaluate.distances import classifier_two_sample, energy_distance, frechet, kernel_distance
from factordiff.factors import Factor, FactorSpec


def _biased_energy(a: np.ndarray, b: np.ndarray) -> float:
    """The former estimate: within-sample means over every pair, self-pairs (distance 0) included."""
    return float(2 * cdist(a, b).mean() - cdist(a, a).mean() - cdist(b, b).mean())


def test_energy_distance_known_value_in_one_dimension():
    a, b = np.array([[0.0], [1.0]]), np.array([[3.0], [5.0]])
    # E|A-B| = (3 + 5 + 2 + 4) / 4 = 3.5; E|A-A'| over i != j = 1; E|B-B'| = 2
    assert energy_distance(a, b) == pytest.approx(2 * 3.5 - 1 - 2)
    # with self-pairs the within-sample means halve (0.5, 1): the old, biased 5.5
    assert _biased_energy(a, b) == pytest.approx(5.5)
    c = np.array([[3.0], [4.0], [8.0]])  # unequal sizes: E|A-C| = 27/6, E|C-C'| = (1 + 5 + 4) / 3
    assert energy_distance(a, c) == pytest.approx(2 * 27 / 6 - 1 - 10 / 3)
    # one real row is a point: 2 E|A - 3| - E|A - A'| = 2 * (3 + 2) / 2 - 1
    assert energy_distance(a, c[:1]) == pytest.approx(4.0) == _biased_energy(a, c[:1]) - 0.5


def test_energy_distance_is_unbiased_where_the_old_one_is_not():
    rng = np.random.default_rng(0)
    values, old = [], []
    for _ in range(40):
        a, b = rng.normal(size=(30, 4)), rng.normal(size=(30, 4))
        values.append(energy_distance(a, b))
        old.append(_biased_energy(a, b))
    values, old = np.array(values), np.array(old)
    assert (old > 0).all() and old.mean() > 0.1  # biased up by about E|A-A'| (1/m + 1/n)
    assert abs(values.mean()) < 0.02 and (values < 0).any()  # zero in expectation, both signs
    # an identical sample: every cross pair is a within pair, and the estimate falls below zero
    a = rng.normal(size=(50, 4))
    assert energy_distance(a, a) < 0 and abs(_biased_energy(a, a)) < 1e-12
    assert energy_distance(a, a + 2) > 1.0
    # the self-pairs raise the estimate by exactly E|A-A'|/m + E|B-B'|/n (means over i != j)
    b = rng.normal(0.5, 2.0, size=(7, 4))

    def within(x):
        return cdist(x, x).sum() / (len(x) * (len(x) - 1))

    assert _biased_energy(a, b) - energy_distance(a, b) == pytest.approx(within(a) / 50 + within(b) / 7)


def test_frechet_of_a_shifted_copy_is_the_squared_shift():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(400, 3)) @ np.array([[1.0, 0.3, 0.0], [0.0, 1.0, 0.5], [0.0, 0.0, 2.0]])
    assert frechet(a, a + np.array([1.0, -2.0, 0.5])) == pytest.approx(1 + 4 + 0.25, rel=1e-6)
    # scaling multiplies the covariance by 4: trace(C + 4C - 2 * 2C) = trace(C)
    assert frechet(a - a.mean(0), 2 * (a - a.mean(0))) == pytest.approx(np.trace(np.cov(a, rowvar=False)))


def test_kernel_distance_against_a_direct_sum():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(6, 3)), rng.normal(1.0, 1.0, size=(5, 3))

    def k(x, y):
        return (x @ y / 3 + 1) ** 3

    within_a = sum(k(a[i], a[j]) for i in range(6) for j in range(6) if i != j) / 30
    within_b = sum(k(b[i], b[j]) for i in range(5) for j in range(5) if i != j) / 20
    cross = sum(k(x, y) for x in a for y in b) / 30
    assert kernel_distance(a, b) == pytest.approx(within_a + within_b - 2 * cross)
    # one distribution: zero in expectation (single estimates spread about 0.26 either side)
    same = [kernel_distance(rng.normal(size=(40, 3)), rng.normal(size=(40, 3))) for _ in range(200)]
    assert abs(np.mean(same)) < 0.06 and min(same) < 0 < max(same)
    assert kernel_distance(rng.normal(size=(40, 3)), rng.normal(1.0, 1.0, size=(40, 3))) > 3


def test_classifier_two_sample():
    rng = np.random.default_rng(3)
    same = classifier_two_sample(rng.normal(size=(200, 5)), rng.normal(size=(200, 5)), seed=0)
    assert abs(same - 0.5) < 0.1
    apart = classifier_two_sample(rng.normal(size=(200, 5)), rng.normal(3.0, 1.0, size=(200, 5)))
    assert apart > 0.95
    # unequal sizes: answering "the larger one" is 83% accurate and 0.5 balanced
    a, b = rng.normal(size=(300, 5)), rng.normal(size=(60, 5))
    assert abs(classifier_two_sample(a, b) - 0.5) < 0.1
    # features of very different scales are standardised: a shift in the small one is found
    big = np.c_[rng.normal(0, 1e4, size=(100, 1)), rng.normal(size=(100, 1))]
    moved = np.c_[rng.normal(0, 1e4, size=(100, 1)), rng.normal(2.0, 1.0, size=(100, 1))]
    assert classifier_two_sample(big, moved) > 0.8
    # fewer than 5 rows: as many folds as rows; one row: no test
    assert 0 <= classifier_two_sample(a[:3], b[:3] + 5) <= 1
    assert np.isnan(classifier_two_sample(a[:1], b))


def _spec() -> FactorSpec:
    return FactorSpec(
        (
            Factor("compound", ("DMSO", "taxol", "nocodazole", "new"), "categorical", "biological"),
            Factor("moa", ("control", "tubulin", "other"), "categorical", "biological"),
            Factor("batch", ("w1", "w2", "w3"), "categorical", "technical"),
        )
    )


def _nested_table(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rows of (compound, MoA nested in the compound, batch), features = compound effect + batch
    effect + noise; compound 3 ("new") has no row."""
    rng = np.random.default_rng(seed)
    compound = rng.integers(0, 3, 240)
    moa = np.array([0, 1, 1])[compound]
    batch = rng.integers(0, 3, 240)
    effect = np.array([[0.0, 0.0], [5.0, 0.0], [0.0, 3.0]])[compound]
    x = effect + np.array([[0.0, 0.0], [1.0, 1.0], [-1.0, 2.0]])[batch] + rng.normal(0, 0.1, (240, 2))
    return x, np.c_[compound, moa, batch]


def test_mean_shift_moves_once_to_the_joint_target_combination():
    spec = _spec()
    x, f = _nested_table()
    train = np.ones(len(x), bool)
    src = np.flatnonzero((f[:, 0] == 0) & (f[:, 2] == 0))[:10]  # DMSO in w1
    target = f[src].copy()
    target[:, :2] = [1, 1]  # taxol, tubulin: compound and MoA change together
    info: dict = {}
    out = baseline_rows("mean_shift", spec, x, f, train, src, target, info=info)
    # both means restricted to the source's batch (w1), the factor that does not change
    w1 = f[:, 2] == 0
    joint = x[w1 & (f[:, 0] == 1) & (f[:, 1] == 1)].mean(0) - x[w1 & (f[:, 0] == 0) & (f[:, 1] == 0)].mean(0)
    np.testing.assert_allclose(out, x[src] + joint)
    np.testing.assert_allclose(out.mean(0) - x[src].mean(0), [5.0, 0.0], atol=0.3)  # moved once, not twice
    assert info == {"rows": 10, "fallback_rows": 0, "matched_rows": 10} and fallback_share(info) == 0.0
    # one target combination no training row has: that row falls back to the per-factor sum
    target[0, :2] = [3, 1]  # "new" compound, tubulin: the compound adds nothing, the MoA its shift
    out, fell_back = mean_shift(x, f, train, src, target)
    assert fell_back.tolist() == [True] + [False] * 9
    moa_shift = x[f[:, 1] == 1].mean(0) - x[f[:, 1] == 0].mean(0)
    np.testing.assert_allclose(out[0], x[src[0]] + moa_shift)
    np.testing.assert_allclose(out[1:], x[src[1:]] + joint)


def test_mean_shift_per_row_changed_factors_and_unchanged_rows():
    spec = _spec()
    x, f = _nested_table(1)
    train = np.ones(len(x), bool)
    src = np.r_[np.flatnonzero(f[:, 2] == 0)[:3], np.flatnonzero(f[:, 2] == 2)[:3]]
    target = f[src].copy()
    target[:3, 2] = 1  # w1 -> w2; the other three rows already have their target
    out = baseline_rows("mean_shift", spec, x, f, train, src, target)
    # each row moves by its batch change, measured on rows of its own compound (and MoA)
    for i in range(3):
        same = (f[:, 0] == f[src[i], 0]) & (f[:, 1] == f[src[i], 1])
        shift = x[same & (f[:, 2] == 1)].mean(0) - x[same & (f[:, 2] == 0)].mean(0)
        np.testing.assert_allclose(out[i], x[src[i]] + shift)
    np.testing.assert_array_equal(out[3:], x[src[3:]])


def test_copy_nearest_linear_keep_their_definitions():
    spec = _spec()
    x, f = _nested_table(2)
    train = np.ones(len(x), bool)
    src = np.flatnonzero((f[:, 0] == 0) & (f[:, 2] == 0))[:8]
    target = f[src].copy()
    target[:, 2] = 2
    np.testing.assert_array_equal(baseline_rows("copy", spec, x, f, train, src, target), x[src])
    near = baseline_rows("nearest", spec, x, f, train, src, target, seed=4)
    rows = [np.flatnonzero((x == r).all(1))[0] for r in near]
    assert (f[rows] == target).all()  # DMSO rows of w3 exist: each drawn row is of the target condition
    lin = baseline_rows("linear", spec, x, f, train, src, target)
    np.testing.assert_allclose(lin.mean(0) - x[src].mean(0), [-1.0, 2.0], atol=0.3)
    with pytest.raises(ValueError, match="unknown baseline"):
        baseline_rows("median", spec, x, f, train, src, target)


@pytest.mark.parametrize("name", BASELINES)
def test_held_out_rows_never_reach_a_baseline(name):
    spec = _spec()
    x, f = _nested_table(3)
    held = (f[:, 0] == 1) & (f[:, 2] == 2)  # taxol in w3 held out
    train = ~held
    src = np.flatnonzero(train & (f[:, 0] == 1))[:12]
    target = f[src].copy()
    target[:, 2] = 2  # into the held-out combination
    before = baseline_rows(name, spec, x, f, train, src, target, seed=5)
    x2, f2 = x.copy(), f.copy()
    x2[held] += 1000.0
    f2[np.flatnonzero(held)[:5], 2] = 0  # even their factor values
    after = baseline_rows(name, spec, x2, f2, train, src, target, seed=5)
    np.testing.assert_array_equal(before, after)
    # training rows do move a fitted baseline (copy reads the sources alone): those of the target
    # batch and those of the target's compound elsewhere (where nearest draws from), sources aside
    x3 = x.copy()
    x3[np.setdiff1d(np.flatnonzero(train & ((f[:, 2] == 2) | (f[:, 0] == 1))), src)] += 1000.0
    moved = baseline_rows(name, spec, x3, f, train, src, target, seed=5)
    assert np.array_equal(moved, before) == (name == "copy")


def test_nearest_condition_as_a_scientist_picks_it():
    """A held-out (cell line, round, time) cell: nearest is the same cell line in the target round
    at the nearest time point, not another cell line at the same time, not the other round."""
    spec = FactorSpec(
        (
            Factor("cell", ("A549", "U2OS"), "categorical", "biological"),
            Factor("round", ("r1", "r2"), "categorical", "technical"),
            Factor("time", (6.0, 24.0, 48.0), "ordinal", "biological"),
        )
    )
    f = np.array([[c, r, t] for c in (0, 1) for r in (0, 1) for t in (0, 1, 2) for _ in range(3)])
    held = (f == [0, 1, 1]).all(1)  # A549, round 2, 24 h
    target = np.tile([0, 1, 1], (4, 1))
    info: dict = {}
    rows = nearest_rows(spec, f, ~held, target, np.array([1]), seed=0, info=info)
    assert (f[rows, 0] == 0).all() and (f[rows, 1] == 1).all() and set(f[rows, 2]) <= {0, 2}
    assert all(c.startswith("cell=A549, round=r2") for c in info["nearest_conditions"])


def test_interpolate_draws_the_dose_response_line_in_log_dose():
    spec = FactorSpec(
        (
            Factor("compound", ("a", "b"), "categorical", "biological"),
            Factor("dose", (0.1, 0.3, 1.0, 3.0, 10.0), "ordinal", "biological"),
        )
    )
    # two wells per (compound, dose): a feature linear in log10 dose with a slope per compound
    compound, dose = np.repeat([0, 1], 10), np.tile(np.repeat(np.arange(5), 2), 2)
    logd = np.log10(np.array(spec.factors[1].values))[dose]
    noise = np.tile([[0.1, 0.0], [-0.1, 0.0]], (10, 1))
    x = np.c_[np.where(compound == 0, 1.0, -2.0) * logd, np.ones(20)] + noise
    f = np.c_[compound, dose]
    held = dose == 2  # 1.0 uM of both compounds held out: a value no training row has
    src = np.flatnonzero((compound == 0) & ~held)
    target = f[src].copy()
    target[:, 1] = 2
    info: dict = {}
    out = interpolate(spec, x, f, ~held, src, target, info)
    # between 0.3 and 3 on the log axis: the held-out wells' mean, and each source keeps its residual
    np.testing.assert_allclose(out.mean(0), x[held & (compound == 0)].mean(0), atol=1e-6)
    np.testing.assert_allclose(out[0] - out[1], x[src[0]] - x[src[1]], atol=1e-9)  # same dose, own noise
    assert info["interpolate_fallback_rows"] == 0
    # beyond the tested doses: the nearest tested dose's mean, counted
    beyond = f[src].copy()
    beyond[:, 1] = 4
    far = interpolate(spec, x, f, ~held & (dose != 4), src, beyond, info)
    np.testing.assert_allclose(far.mean(0), x[(compound == 0) & (dose == 3)].mean(0), atol=1e-6)
    assert info["interpolate_fallback_rows"] == len(src)
    with pytest.raises(ValueError, match="one ordinal factor"):
        swap = f[src].copy()
        swap[:, 0] = 1
        interpolate(spec, x, f, ~held, src, swap)
