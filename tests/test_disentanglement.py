"""Tests for factordiff.evaluate.disentanglement on constructed codes with known structure.

The library defaults follow disentanglement_lib (10,000 / 5,000 points); the tests run at
``scale=0.05`` (500 train / 250 test points, 500 / 250 FactorVAE and BetaVAE votes) because the
default GradientBoostingClassifier of DCI dominates the run time on 2 cores.
"""

from __future__ import annotations

import numpy as np
import pytest

from factordiff.errors import FactordiffError
from factordiff.evaluate import disentanglement as dis

SIZES = (10, 10, 10, 8, 4, 15)
N = 4000
SCALE = 0.05
SPLIT = {"num_train": 500, "num_test": 250}


@pytest.fixture(scope="module")
def factors() -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.stack([rng.integers(s, size=N) for s in SIZES], axis=1)


@pytest.fixture(scope="module")
def equal_codes(factors) -> np.ndarray:
    """One code dim per factor, equal to the factor's value index plus tiny noise."""
    return factors.astype(np.float64) + np.random.default_rng(1).normal(0.0, 0.01, factors.shape)


@pytest.fixture(scope="module")
def noise_codes() -> np.ndarray:
    return np.random.default_rng(2).normal(size=(N, len(SIZES)))


@pytest.fixture(scope="module")
def equal_scores(equal_codes, factors) -> dict:
    return dis.score_all(equal_codes, factors, scale=SCALE)


@pytest.fixture(scope="module")
def noise_dci(noise_codes, factors) -> dict:
    return dis.dci(noise_codes, factors, **SPLIT)


@pytest.fixture(scope="module")
def noise_modexp(noise_codes, factors) -> dict:
    return dis.modularity_explicitness(noise_codes, factors, **SPLIT)


def test_score_all_returns_exactly_the_documented_keys_and_settings(equal_scores):
    assert set(equal_scores) == set(dis.SCORE_KEYS) | {"settings"}
    settings = equal_scores["settings"]
    assert settings["n"] == N and settings["seed"] == 0 and settings["first_pc"] is False
    assert settings["dci"] == SPLIT and settings["factorvae"]["num_variance_estimate"] == N
    assert all(isinstance(equal_scores[k], float) for k in dis.SCORE_KEYS)


def test_factor_equal_codes_score_near_perfect_on_dci_mig_and_factorvae(equal_scores):
    assert equal_scores["dci_disentanglement"] > 0.95
    assert equal_scores["dci_completeness"] > 0.95
    assert equal_scores["mig"] > 0.9
    assert equal_scores["factorvae"] == 1.0


def test_permuting_code_columns_leaves_every_score_unchanged(equal_codes, factors, equal_scores):
    # Row draws do not depend on the columns and every per-column computation is the same; only
    # floating-point summation order in the classifiers may differ (measured: ~1e-15).
    permuted = dis.score_all(equal_codes[:, [3, 0, 5, 1, 4, 2]], factors, scale=SCALE)
    for key in dis.SCORE_KEYS:
        assert permuted[key] == pytest.approx(equal_scores[key], abs=1e-9), key


def test_gaussian_noise_codes_have_low_dci_disentanglement_and_mig(noise_codes, factors, noise_dci):
    assert noise_dci["disentanglement"] < 0.1
    assert dis.mig(noise_codes, factors, num_train=500) < 0.05


def test_duplicating_a_factor_code_lowers_completeness_and_mig_but_not_disentanglement(
    equal_codes, factors, equal_scores
):
    twin = equal_codes[:, :1] + np.random.default_rng(3).normal(0.0, 1e-3, (N, 1))
    doubled = np.concatenate([equal_codes, twin], axis=1)
    scores = dis.dci(doubled, factors, **SPLIT)
    assert scores["completeness"] < equal_scores["dci_completeness"] - 0.03
    assert dis.mig(doubled, factors, num_train=500) < equal_scores["mig"] - 0.1
    assert scores["disentanglement"] > 0.95
    assert scores["disentanglement"] == pytest.approx(equal_scores["dci_disentanglement"], abs=0.01)


def test_reduce_blocks_first_pc_recovers_a_factor_carried_along_a_rotated_direction(factors):
    rng = np.random.default_rng(4)
    blocks = []
    for k, dim in ((0, 3), (3, 2)):
        direction = rng.normal(size=dim)
        direction /= np.linalg.norm(direction)
        blocks.append(np.outer(factors[:, k], direction) + rng.normal(0.0, 0.05, (N, dim)))
    reduced = dis.reduce_blocks(np.concatenate(blocks, axis=1), [3, 2])
    assert reduced.shape == (N, 2)
    for column, k in zip(reduced.T, (0, 3)):
        assert abs(np.corrcoef(column, factors[:, k])[0, 1]) > 0.99


def test_sap_is_higher_on_factor_equal_codes_than_on_noise(equal_scores, noise_codes, factors):
    # disentanglement_lib's discrete SAP uses one-dimensional LinearSVC(C=0.01) classifiers, which
    # cannot separate the middle values of a 10-value factor: the faithful score on factor-equal
    # codes is ~0.29-0.39 here (1.0 only for the 4-value factor), not > 0.5.
    noise = dis.sap(noise_codes, factors, **SPLIT)
    assert equal_scores["sap"] > 0.25
    assert noise < 0.05
    assert equal_scores["sap"] > 5 * noise


def test_sap_is_the_gap_to_chance_when_one_dim_classifies_a_binary_factor_perfectly():
    # Discrete SAP compares accuracies, so the second-best dim sits at chance (0.5 for a balanced
    # binary factor) and the best possible score is about 1.0 - 0.5.
    rng = np.random.default_rng(5)
    binary = rng.integers(2, size=(1000, 3))
    codes = binary + rng.normal(0.0, 0.01, binary.shape)
    assert 0.4 < dis.sap(codes, binary, **SPLIT) < 0.55


def test_modularity_and_explicitness_are_high_on_factor_equal_codes(equal_scores):
    assert equal_scores["modularity"] > 0.95
    assert equal_scores["explicitness"] > 0.95


def test_explicitness_is_chance_on_noise_and_modularity_well_below_factor_equal(noise_modexp, equal_scores):
    # Modularity only asks whether each code depends on ONE factor; the finite-sample MI bias of
    # pure noise is spread unevenly, so noise still scores ~0.6 (a known property of the metric).
    assert noise_modexp["explicitness_test"] < 0.55
    assert noise_modexp["modularity"] < equal_scores["modularity"] - 0.2


def test_betavae_separates_factor_equal_codes_from_noise(equal_scores, noise_codes, factors):
    noise = dis.beta_vae(noise_codes, factors, num_train=500, num_eval=250)
    assert equal_scores["betavae"] == 1.0
    assert noise["eval_accuracy"] < 0.35


def test_factorvae_gives_zero_when_every_dim_is_pruned(factors):
    flat = np.random.default_rng(6).normal(0.0, 1e-3, (N, 3))
    scores = dis.factor_vae(flat, factors, num_train=50, num_eval=50)
    assert scores == {"train_accuracy": 0.0, "eval_accuracy": 0.0, "num_active_dims": 0}


def test_constant_factor_is_skipped_and_reported_and_small_data_uses_all_rows():
    rng = np.random.default_rng(7)
    small = np.stack([rng.integers(3, size=300), np.zeros(300, dtype=int), rng.integers(2, size=300)], axis=1)
    codes = small + rng.normal(0.0, 0.01, small.shape)
    scores = dis.score_all(codes, small, scale=1.0)
    assert scores["settings"]["skipped_constant_factors"] == [1]
    assert scores["settings"]["dci"] == {"num_train": 200, "num_test": 100}
    assert scores["settings"]["mig"]["num_train"] == 300
    assert all(np.isfinite(scores[k]) for k in dis.SCORE_KEYS)


def test_score_all_first_pc_reduces_blocks_and_records_them():
    rng = np.random.default_rng(8)
    small = np.stack([rng.integers(3, size=600), rng.integers(4, size=600)], axis=1)
    codes = np.concatenate([np.outer(small[:, 0], [0.6, 0.8]), np.outer(small[:, 1], [0.8, -0.6])], axis=1)
    codes += rng.normal(0.0, 0.01, codes.shape)
    scores = dis.score_all(codes, small, blocks=[2, 2], first_pc=True, scale=0.05)
    assert scores["settings"]["blocks"] == [2, 2] and scores["settings"]["first_pc"] is True
    assert scores["settings"]["code_dims"] == 2
    assert scores["mig"] > 0.9


@pytest.mark.parametrize(
    ("codes", "factors", "needle"),
    [
        (np.zeros((20, 2)), np.zeros((19, 1), dtype=int), "one row per code row"),
        (np.full((20, 2), np.nan), np.arange(20)[:, None] % 2, "NaN"),
        (np.zeros((20, 2)), np.full((20, 1), 0.5), "non-integer"),
        (np.zeros((20, 2)), -(np.arange(20)[:, None] % 2), "negative"),
        (np.zeros(20), np.arange(20)[:, None] % 2, "2-D float"),
        (np.zeros((20, 2), dtype=int), np.arange(20)[:, None] % 2, "2-D float"),
        (np.zeros((20, 2)), np.arange(20) % 2, "factors: expected a 2-D"),
    ],
)
def test_invalid_inputs_raise_factordiff_error_naming_the_problem(codes, factors, needle):
    with pytest.raises(FactordiffError, match=needle) as info:
        dis.mig(codes, factors)
    assert "\n" not in str(info.value)


def test_float_factors_holding_integers_are_accepted():
    rng = np.random.default_rng(9)
    ints = rng.integers(3, size=(200, 2))
    codes = ints + rng.normal(0.0, 0.01, ints.shape)
    assert dis.mig(codes, ints.astype(np.float32)) == dis.mig(codes, ints)


def test_blocks_not_summing_to_code_columns_raise():
    with pytest.raises(FactordiffError, match="blocks"):
        dis.reduce_blocks(np.zeros((20, 5)), [2, 2])


def test_load_and_score_on_corrupt_npy_names_the_file(tmp_path):
    good = tmp_path / "factors.npy"
    np.save(good, np.arange(20)[:, None] % 2)
    bad = tmp_path / "codes.npy"
    bad.write_bytes(b"\x93NUMPY garbage that is not an array")
    with pytest.raises(FactordiffError, match="codes.npy") as info:
        dis.load_and_score(bad, good)
    assert "\n" not in str(info.value)


def test_load_and_score_round_trips_and_formats_a_table(tmp_path):
    rng = np.random.default_rng(10)
    small = rng.integers(3, size=(400, 2))
    np.save(tmp_path / "codes.npy", small + rng.normal(0.0, 0.01, small.shape))
    np.save(tmp_path / "factors.npy", small)
    scores = dis.load_and_score(tmp_path / "codes.npy", tmp_path / "factors.npy", scale=0.05)
    table = dis.format_table(scores).splitlines()
    assert table[0].split() == ["metric", "value"]
    assert [line.split()[0] for line in table[2:12]] == list(dis.SCORE_KEYS)
    assert len({len(line) for line in table}) == 1
