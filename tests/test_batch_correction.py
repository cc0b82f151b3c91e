"""Feature-space batch corrections (``evaluate/batch_correction.py``) and the mean shift restricted
to the unchanged factors (``evaluate/baselines.py``), on small synthetic profile tables."""

from __future__ import annotations

import numpy as np
import pytest

from factordiff.errors import FactordiffError
from factordiff.evaluate.baselines import BASELINES, BATCH_BASELINES, baseline_rows, mean_shift
from factordiff.evaluate.batch_correction import combat, sphering
from factordiff.factors import Factor, FactorSpec

COMPOUND, BATCH, PLATE, LINE = range(4)


def _spec() -> FactorSpec:
    return FactorSpec(
        (
            Factor("compound", ("c0", "c1", "c2", "DMSO"), "categorical", "biological"),
            Factor("batch", ("b0", "b1", "b2", "b3"), "categorical", "technical"),
            Factor("plate", ("p0", "p1", "p2", "p3"), "categorical", "technical"),
            Factor("cell_line", ("U2OS",), "categorical", "biological"),
        )
    )


def _table(seed: int = 0, wells: int = 16, features: int = 20):
    """3 batches x 4 compounds (compound 3 the DMSO control), ``wells`` wells each: features = batch
    shift + batch scale x (compound effect + noise), as noisy as wells are. The plate is the batch
    (confounded with it), the cell line constant. (batch 2, compound 0) is held out; the sources are
    compound 0's wells of batch 0, sent to batch 2. Returns x, factors, train, src, target, held."""
    rng = np.random.default_rng(seed)
    batch = np.repeat(np.arange(3), 4 * wells)
    compound = np.tile(np.repeat(np.arange(4), wells), 3)
    factors = np.c_[compound, batch, batch, np.zeros_like(batch)]
    effect = rng.normal(0, 1.0, (4, features))
    effect[3] = 0.0
    shift = rng.normal(0, 1.0, (3, features))
    scale = np.exp(rng.normal(0, 0.2, (3, features)))
    x = shift[batch] + scale[batch] * (effect[compound] + rng.normal(0, 1.0, (len(batch), features)))
    held = (batch == 2) & (compound == 0)
    src = np.flatnonzero((batch == 0) & (compound == 0))
    target = factors[src].copy()
    target[:, BATCH] = 2
    return x, factors, ~held, src, target, held


def _run(name, x, f, train, src, target, info=None):
    return baseline_rows(
        name, _spec(), x, f, train, src, target, seed=3, info=info, controls=f[:, COMPOUND] == 3
    )


@pytest.mark.parametrize("name", BATCH_BASELINES)
def test_batch_corrections_land_nearer_the_held_out_wells_than_a_copy(name):
    x, f, train, src, target, held = _table()
    truth = x[held].mean(0)
    info: dict = {}
    out = _run(name, x, f, train, src, target, info)
    copy = _run("copy", x, f, train, src, target)
    assert out.shape == (len(src), x.shape[1]) and out.dtype == x.dtype
    far, near = np.linalg.norm(copy.mean(0) - truth), np.linalg.norm(out.mean(0) - truth)
    # Harmony corrects within soft clusters of few wells here, and least of the three
    assert near < {"combat": 0.6, "sphering": 0.6, "harmony": 1.0}[name] * far, (name, near, far)
    assert info["changed"] == [BATCH] and info["moved_rows"] == len(src)
    if name == "combat":
        # compound: one column per value but the first; the plate is the batch; the cell line constant
        assert info["covariates"] == [(COMPOUND, 1), (COMPOUND, 2), (COMPOUND, 3)]
        assert info["covariates_confounded"] == [(PLATE, 1), (PLATE, 2)]
        assert info["covariates_constant"] == [LINE] and not info["mean_only"]
        assert info["outside_train_rows"] == 0
    if name == "sphering":
        assert (
            info["no_controls"] == [] and 1 <= info["components"] <= x.shape[1]
        )  # 16 controls < 20 features
    if name == "harmony":
        assert info["components"] == 20 and info["clusters"] == 6  # 176 training wells / 30


@pytest.mark.parametrize("name", BASELINES + BATCH_BASELINES)
def test_held_out_wells_never_reach_a_baseline(name):
    x, f, train, src, target, held = _table(1)
    before = _run(name, x, f, train, src, target)
    x2, f2 = x.copy(), f.copy()
    x2[held] += 1000.0
    f2[np.flatnonzero(held)[:3], BATCH] = 0  # even their factor values
    np.testing.assert_array_equal(_run(name, x2, f2, train, src, target), before)
    # a training well of the target batch does move every fitted baseline (``nearest`` draws wells of
    # batch 0 here: the target keeps plate 0, so batch 0's compound 0 is the nearest condition)
    x3 = x.copy()
    x3[np.flatnonzero(train & (f[:, BATCH] == 2))] += 5.0
    assert np.array_equal(_run(name, x3, f, train, src, target), before) == (name in ("copy", "nearest"))


@pytest.mark.parametrize("name", BATCH_BASELINES)
def test_a_target_batch_without_training_wells_is_refused_on_one_line(name):
    x, f, train, src, target, _ = _table(2)
    with pytest.raises(FactordiffError, match="training row") as e:
        _run(name, x, f, train & (f[:, BATCH] != 2), src, target)
    assert "\n" not in str(e.value)
    # sources already in their target batch are returned as they are
    np.testing.assert_array_equal(_run(name, x, f, train, src, f[src]), x[src])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # pyComBat's convergence test divides by zero
@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # np.matrix
def test_combat_is_pycombat_with_a_reference_batch(monkeypatch):
    pd = pytest.importorskip("pandas")
    pc = pytest.importorskip("combat.pycombat")
    x, f, train, src, target, _ = _table(3)
    rows = np.flatnonzero(train)
    # combat 0.3.3's three bugs, worked around: with a reference batch it writes into
    # DataFrame.to_numpy(), read-only under pandas 3, and restores the reference batch's samples
    # along the features axis; its scale iteration subtracts the first feature's location from every
    # feature (``g_new[0][0]``: right only for the np.matrix its successor inmoose passes)
    plain_batchmod, plain_adjust, plain_it_sol = pc.define_batchmod, pc.adjust_data, pc.it_sol
    monkeypatch.setattr(pc, "define_batchmod", lambda batch: plain_batchmod(batch).copy())
    monkeypatch.setattr(
        pc, "it_sol", lambda sdat, g_hat, *rest: plain_it_sol(sdat, np.asmatrix(g_hat), *rest)
    )

    def adjust(*args):
        *head, ref, batches, dat = args
        out = plain_adjust(*head, None, batches, dat)
        out[:, batches[ref]] = dat[:, batches[ref]]
        return out

    monkeypatch.setattr(pc, "adjust_data", adjust)
    theirs = pc.pycombat(
        pd.DataFrame(x[rows].T),
        [f"b{b}" for b in f[rows, BATCH]],
        mod=[[f"c{c}" for c in f[rows, COMPOUND]]],
        ref_batch="b2",
    )
    ours = combat(x, f, train, src, target)
    np.testing.assert_allclose(ours, theirs.to_numpy().T[np.searchsorted(rows, src)], atol=1e-8)


def test_combat_adjusts_a_well_outside_the_fit_as_the_fit_says():
    x, f, train, src, target, _ = _table(4)
    # a training well of batch 0, and the same well again as a row outside train
    r = np.flatnonzero(train & (f[:, BATCH] == 0) & (f[:, COMPOUND] == 1))[0]
    x2, f2, train2 = np.r_[x, x[r : r + 1]], np.r_[f, f[r : r + 1]], np.r_[train, False]
    to = f[[r]].copy()
    to[:, BATCH] = 2
    info: dict = {}
    outside = combat(x2, f2, train2, np.array([len(x)]), to, info)
    np.testing.assert_allclose(outside, combat(x, f, train, np.array([r]), to), rtol=1e-12)
    assert info["outside_train_rows"] == 1


def test_mean_shift_restricts_both_means_to_the_source_compound():
    spec = _spec()
    rng = np.random.default_rng(5)
    effect, shift = rng.normal(0, 3, (4, 5)), rng.normal(0, 1, (2, 5))
    # batch 0 holds compounds 0 and 1, batch 1 compounds 0 and 2: the batches' mixes differ
    f = np.array([(c, b, b, 0) for b, cs in ((0, (0, 1)), (1, (0, 2))) for c in cs for _ in range(4)])
    x = effect[f[:, COMPOUND]] + shift[f[:, BATCH]]
    src = np.r_[
        np.flatnonzero((f[:, BATCH] == 0) & (f[:, COMPOUND] == 0))[:3], np.flatnonzero(f[:, COMPOUND] == 1)[0]
    ]
    target = f[src].copy()
    target[:, [BATCH, PLATE]] = 1
    info: dict = {}
    out = baseline_rows("mean_shift", spec, x, f, np.ones(len(x), bool), src, target, info=info)
    # compound 0 is in both batches: it moves by its own difference, exactly the batch shift
    np.testing.assert_allclose(out[:3], x[src[:3]] + shift[1] - shift[0])
    joint = x[f[:, BATCH] == 1].mean(0) - x[f[:, BATCH] == 0].mean(0)
    assert not np.allclose(joint, shift[1] - shift[0], atol=0.5)  # the unrestricted means mix compounds
    # compound 1 has no well in batch 1: the unrestricted joint means
    np.testing.assert_allclose(out[3], x[src[3]] + joint)
    assert info == {"rows": 4, "fallback_rows": 0, "matched_rows": 3}
    _, fell_back = mean_shift(x, f, np.ones(len(x), bool), src, target)
    assert not fell_back.any()


def test_sphering_takes_all_training_wells_of_a_batch_without_controls():
    x, f, train, src, target, _ = _table(6)
    controls = (f[:, COMPOUND] == 3) & (f[:, BATCH] != 0)  # batch 0 ran no DMSO well
    info: dict = {}
    out = baseline_rows("sphering", _spec(), x, f, train, src, target, info=info, controls=controls)
    assert info["no_controls"] == [{BATCH: 0}] and np.isfinite(out).all()
    # in the features themselves (no PCA space) it moves towards the held-out wells too
    info = {}
    plain = sphering(x, f, train, src, target, controls=f[:, COMPOUND] == 3, pca=False, info=info)
    truth = x[~train].mean(0)
    assert info["components"] is None
    assert np.linalg.norm(plain.mean(0) - truth) < 0.6 * np.linalg.norm(x[src].mean(0) - truth)
