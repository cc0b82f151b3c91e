"""Datasets: images with a table of factor values, described by a FactorSpec."""

from factordiff.data.base import FactorDataset, load_data

__all__ = ["FactorDataset", "load_data"]
