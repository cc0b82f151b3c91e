"""factordiff: diffusion models conditioned on disentangled factor codes, and counterfactual edits.

The doors of the Python API, for images and profiles alike::

    from factordiff import load_run
    from factordiff.evaluate.suite import evaluate
    from factordiff.regenerate import regenerate, write_regenerated

    run = load_run("runs/quickstart")          # run.kind, run.spec, run.config, run.model
    out = regenerate(run, where=["shape=cube"], set=["object_hue=0.3"])
    write_regenerated(out, run, "runs/cube-hue0.3")
    metrics = evaluate(run.path)
"""

from factordiff.errors import FactordiffError
from factordiff.factors import Factor, FactorSpec

__all__ = ["Factor", "FactorSpec", "FactordiffError", "load_run"]
__version__ = "0.1.0"


def __getattr__(name: str):
    """``load_run`` (torch, diffusers) loads on first use, so ``import factordiff`` stays cheap."""
    if name == "load_run":
        from factordiff.models.runs import load_run

        return load_run
    raise AttributeError(f"module 'factordiff' has no attribute {name!r}")
