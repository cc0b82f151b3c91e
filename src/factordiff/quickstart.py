"""``factordiff quickstart``: the main job on the built-in data, from nothing to a report.

``--data shapes`` (the default: the 3D Shapes replica, ``configs/quickstart.json``) or ``--data
cellsim`` (the built-in Cell Painting assay, ``configs/cellsim32.json``). With no ``--minutes`` it
starts from the small pretrained model shipped in the package (``pretrained/<data><size>``, trained
by ``factordiff fit`` with the documented command in its folder's README, training log beside it);
with ``--minutes N`` (or ``--from-scratch``) it trains every stage from scratch in that budget.
Either way it then evaluates the counterfactuals (training the oracle unless the shipped model
brings the one its figures were measured with) and writes the report.

Its output folder holds ``quickstart.json`` (what it did), written before anything else, so that a
later quickstart replaces an earlier one's output (finished or interrupted) and nothing else: a
folder without the marker (a ``factordiff fit`` run, say) is refused.
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

from factordiff.checkpoint import atomic_write_json
from factordiff.config import RunConfig, load_config
from factordiff.errors import FactordiffError
from factordiff.evaluate.suite import evaluate_run
from factordiff.fit import fit
from factordiff.report import build_report

DEFAULT_MINUTES = 15.0
CONFIGS = {"shapes": "quickstart.json", "cellsim": "cellsim32.json"}  # the experiment per --data
MARKER = "quickstart.json"  # marks a folder as a quickstart's output, which the next quickstart may replace


def quickstart_config(
    size: int = 32,
    minutes: float | None = DEFAULT_MINUTES,
    overrides: dict | None = None,
    data: str = "shapes",
) -> RunConfig:
    """The quickstart experiment (``overrides``: further ``"section.field": value`` settings):
    shapes: the 3D Shapes replica, object_hue x shape composition block held out; cellsim: three
    compound x batch combinations and four compounds held out."""
    if data not in CONFIGS:
        raise FactordiffError(f"--data {data}: expected one of {', '.join(CONFIGS)}")
    path = resources.files("factordiff") / "configs" / CONFIGS[data]
    with resources.as_file(path) as p:
        cfg = load_config(p, {"data.size": size, "train.minutes": minutes, **(overrides or {})})
    return cfg


def pretrained_run(size: int, data: str = "shapes") -> Path | None:
    """The shipped pretrained run folder for this data and image size, if the package has one."""
    folder = resources.files("factordiff") / "pretrained" / f"{data}{size}"
    path = Path(str(folder))
    return path if (path / "model" / "config.json").is_file() else None


def _prepare_out(out: Path) -> None:
    """Leave ``out`` an empty folder: create it, or replace an earlier quickstart's output (it holds
    MARKER); refuse anything else, so that no other run is ever deleted."""
    if out.exists() and not out.is_dir():
        raise FactordiffError(f"{out}: is a file, not a folder; choose another --out")
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise FactordiffError(
                f"{out}: not empty and not a quickstart's output (no {MARKER}); quickstart replaces only its "
                "own output: choose another --out"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def quickstart(
    out: Path = Path("runs/quickstart"),
    minutes: float | None = None,
    size: int = 32,
    from_scratch: bool = False,
    progress: bool = True,
    data: str = "shapes",
) -> dict:
    """Fit (or load the pretrained model), evaluate and report; returns the metrics."""
    out = Path(out)
    config = quickstart_config(size, minutes or DEFAULT_MINUTES, data=data)  # refuses an unknown --data first
    pretrained = pretrained_run(size, data)
    use_pretrained = pretrained is not None and minutes is None and not from_scratch
    minutes = None if use_pretrained else (DEFAULT_MINUTES if minutes is None else minutes)
    _prepare_out(out)
    done = {
        "command": "factordiff quickstart",
        "data": data,
        "size": size,
        "start": "pretrained" if use_pretrained else "scratch",
        "pretrained": str(pretrained) if use_pretrained else None,
        "minutes": minutes,
    }
    atomic_write_json(
        out / MARKER, {**done, "finished": False}
    )  # first, so that even an interrupted quickstart is recognised
    if use_pretrained:
        shutil.copytree(pretrained, out, dirs_exist_ok=True)
        print(f"starting from the pretrained model in {pretrained} (train from scratch with --minutes N)")
    else:
        config.train.minutes = minutes
        fit(config, out, progress=progress, keep=(MARKER,))
    metrics = evaluate_run(out, progress=progress)
    build_report(out)
    atomic_write_json(out / MARKER, {**done, "finished": True})
    return metrics
