"""``factordiff quickstart``: the main job on the built-in data, from nothing to a report.

With no ``--minutes`` it starts from the small pretrained model shipped in the package (trained by
``factordiff fit`` with the documented command in its folder's README, training log beside it);
with ``--minutes N`` (or ``--from-scratch``) it trains every stage from scratch in that budget.
Either way it then trains the oracle, evaluates the counterfactuals and writes the report.
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

from factordiff.config import RunConfig, load_config
from factordiff.errors import FactordiffError

DEFAULT_MINUTES = 15.0


def quickstart_config(size: int = 32, minutes: float | None = DEFAULT_MINUTES) -> RunConfig:
    """The quickstart experiment: 3D Shapes replica, object_hue x shape composition block held out."""
    path = resources.files("factordiff") / "configs" / "quickstart.json"
    with resources.as_file(path) as p:
        cfg = load_config(p, {"data.size": size, "train.minutes": minutes})
    return cfg


def pretrained_run(size: int) -> Path | None:
    """The shipped pretrained run folder for this image size, if the package has one."""
    folder = resources.files("factordiff") / "pretrained" / f"shapes{size}"
    path = Path(str(folder))
    return path if (path / "model" / "config.json").is_file() else None


def _prepare_out(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        if not (out / "run_config.json").is_file():
            raise FactordiffError(f"{out}: exists and is not a factordiff run folder; choose another --out")
        shutil.rmtree(out)  # a previous quickstart run: start again
    out.mkdir(parents=True, exist_ok=True)


def quickstart(out: Path = Path("runs/quickstart"), minutes: float | None = None, size: int = 32, from_scratch: bool = False, progress: bool = True) -> dict:
    """Fit (or load the pretrained model), evaluate and report; returns the metrics."""
    from factordiff.evaluate.suite import evaluate_run
    from factordiff.fit import fit
    from factordiff.report import build_report

    out = Path(out)
    pretrained = pretrained_run(size)
    use_pretrained = pretrained is not None and minutes is None and not from_scratch
    _prepare_out(out)
    if use_pretrained:
        shutil.copytree(pretrained, out, dirs_exist_ok=True)
        print(f"starting from the pretrained model in {pretrained} (train from scratch with --minutes N)")
    else:
        cfg = quickstart_config(size, minutes if minutes is not None else DEFAULT_MINUTES)
        shutil.rmtree(out)
        fit(cfg, out, progress=progress)
    metrics = evaluate_run(out, progress=progress)
    build_report(out)
    return metrics

