import numpy as np
import pytest

from factordiff import Factor, FactordiffError, FactorSpec
from factordiff.factors import continuous


def spec() -> FactorSpec:
    return FactorSpec((Factor("hue", (0.0, 0.5, 1.0), "ordinal"), Factor("shape", ("cube", "ball"))))


def test_index_matches_numbers_and_strings():
    s = spec()
    assert s["hue"].index("0.5") == 1 and s["hue"].index(1.0) == 2
    assert s["shape"].index("ball") == 1


def test_unknown_value_and_factor_name_what_was_expected():
    s = spec()
    with pytest.raises(
        FactordiffError, match=r"factor hue: unknown value '0.7'; expected one of 0.0, 0.5, 1.0"
    ):
        s["hue"].index("0.7")
    with pytest.raises(FactordiffError, match=r"unknown factor 'colour'; expected one of hue, shape"):
        s.position("colour")


def test_grid_is_row_major_with_last_factor_fastest():
    g = spec().grid()
    assert g.tolist() == [[0, 0], [0, 1], [1, 0], [1, 1], [2, 0], [2, 1]]
    assert spec().ravel(g).tolist() == list(range(6))


def test_json_round_trip():
    s = spec()
    assert FactorSpec.from_json(s.to_json()) == s


def test_check_indices_rejects_out_of_range():
    with pytest.raises(FactordiffError, match="out of range"):
        spec().check_indices(np.array([[3, 0]]))


def test_continuous_names_the_ordinal_factors_and_reorders_their_values():
    s = FactorSpec(
        (
            Factor("plate", ("10", "2", "3"), role="technical"),  # numbers read as text, sorted as text
            Factor("dose", (0.1, 1.0, 10.0), "ordinal", "biological"),
        )
    )
    idx = np.array([[0, 2], [1, 0], [2, 1], [-1, 0]])
    assert continuous(s, idx, None) == (s, idx)
    out, new = continuous(s, idx, ["plate"])
    assert out["plate"].kind == "ordinal" and out["plate"].values == (2.0, 3.0, 10.0)
    assert out["plate"].role == "technical" and out["dose"].kind == "categorical"
    assert [out["plate"].values[i] for i in new[:3, 0]] == [10.0, 2.0, 3.0] and new[3, 0] == -1
    assert (new[:, 1] == idx[:, 1]).all()
    with pytest.raises(FactordiffError, match="data.continuous: no factor 'well'; factors are plate, dose"):
        continuous(s, idx, ["well"])
    with pytest.raises(
        FactordiffError, match="'shape' has the value 'cube'; a continuous factor needs numbers"
    ):
        continuous(spec(), np.zeros((1, 2), int), ["shape"])
