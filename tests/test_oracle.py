"""The evaluation oracle reads every factor of clean replica images."""

import pytest

from factordiff.data.shapes import replica
from factordiff.evaluate.counterfactual import accuracy, train_oracle


@pytest.mark.slow
def test_oracle_reaches_099_on_clean_replica_images():
    oracle = train_oracle(replica(32, n=20000, seed=1), steps=800, progress=False)
    acc = accuracy(oracle, replica(32, n=2000, seed=2))
    assert min(acc.values()) >= 0.99, acc
