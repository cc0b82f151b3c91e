"""factordiff: diffusion models conditioned on disentangled factor codes, and counterfactual edits."""

from factordiff.errors import FactordiffError
from factordiff.factors import Factor, FactorSpec

__all__ = ["Factor", "FactorSpec", "FactordiffError"]
__version__ = "0.1.0"
