import numpy as np
import pytest

from factordiff import FactordiffError
from factordiff.data.shapes import shapes_spec
from factordiff.data.splits import SPLIT_KINDS, SplitConfig, make_split

SPEC = shapes_spec()
GRID = SPEC.grid()


@pytest.mark.parametrize("kind", [k for k in SPLIT_KINDS if k != "none"])
def test_train_and_heldout_are_disjoint_and_cover_the_grid(kind):
    split = make_split(SPEC, SplitConfig(kind, seed=3))
    held = split.heldout(GRID)
    train, test = {tuple(r) for r in GRID[~held]}, {tuple(r) for r in GRID[held]}
    assert train.isdisjoint(test)
    assert len(train) + len(test) == SPEC.grid_size and 0 < len(test) < SPEC.grid_size


@pytest.mark.parametrize("kind", SPLIT_KINDS)
def test_split_is_a_pure_function_of_spec_and_seed(kind):
    a = make_split(SPEC, SplitConfig(kind, seed=5)).heldout(GRID)
    b = make_split(SPEC, SplitConfig(kind, seed=5)).heldout(GRID)
    assert np.array_equal(a, b)


def test_composition_keeps_every_single_value_seen():
    split = make_split(SPEC, SplitConfig("composition", ("object_hue", "shape"), 0.4))
    held = split.heldout(GRID)
    train = GRID[~held]
    for k, n in enumerate(SPEC.sizes):
        assert set(train[:, k]) == set(range(n))
    pairs = {(a, b) for a, b in GRID[held][:, [2, 4]]}
    assert len(pairs) == 4 * 2  # a block: 4 hues x 2 shapes
    assert held.mean() == pytest.approx(8 / 40)


def test_interpolation_extrapolation_unseen_value():
    inter = make_split(SPEC, SplitConfig("interpolation", ("scale",)))
    assert inter.held_values == {"scale": [1, 3, 5]}
    extra = make_split(SPEC, SplitConfig("extrapolation", ("orientation",), 0.2))
    assert extra.held_values == {"orientation": [12, 13, 14]}
    unseen = make_split(SPEC, SplitConfig("unseen_value", ("shape",), seed=1))
    (v,) = unseen.held_values["shape"]
    held = unseen.heldout(GRID)
    assert np.array_equal(held, GRID[:, 4] == v)


def test_none_holds_nothing_and_random_holds_the_fraction():
    assert not make_split(SPEC, SplitConfig("none")).heldout(GRID).any()
    frac = make_split(SPEC, SplitConfig("random", fraction=0.1)).heldout(GRID).mean()
    assert 0.09 < frac < 0.11


def test_bad_split_requests_name_the_problem():
    with pytest.raises(FactordiffError, match="expected 2 factor"):
        make_split(SPEC, SplitConfig("composition", ("shape",)))
    with pytest.raises(FactordiffError, match="shape needs at least 3 ordinal values"):
        make_split(SPEC, SplitConfig("interpolation", ("shape",)))
