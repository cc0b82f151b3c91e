"""Generalisation benchmark: the three adapters on the quickstart's composition split, then the best
of them on the interpolation, extrapolation and unseen-value splits, every row at the same stated
denoiser budget; one row per run in ``benchmarks/results/generalization.json``.

    python benchmarks/generalization.py [--minutes 10] [--rows composition] [--best embed]
        [--set distill.ordinal_dims=1]

- ``composition`` rows (``--adapters``): object_hue x shape block held out (the quickstart's split).
  They start from the shipped quickstart model's distiller and autoencoder, which were trained on
  this split's training images only, and train the denoiser (and, with ``--base frozen``, its base
  first) for ``--minutes``.
- ``interpolation``, ``extrapolation``, ``unseen_value`` rows (adapter ``--best``): every stage is
  trained from scratch on that split's training images (the shipped encoders saw images these
  splits hold out), with the stage shares of the config, so that the denoiser gets ``--minutes``.

Each row: ``adapter``, ``train_base``, ``split`` (what it holds out), ``guidance_form``,
``minutes`` (denoiser stages), ``samples_all_right`` (seen and held-out), ``edits_all_right``,
``effectiveness`` and ``preservation`` (held-out single-factor edits), ``pairs_all_right``
(two-factor edits into a held-out combination), ``probe_r2`` (held-out: the mean R^2 of a linear
read-out of each factor from the distiller's codes) and ``command``. ``--set KEY=VALUE`` (JSON
values, repeatable) changes the rows' config: a lever, recorded as the row's ``levers`` and kept
beside the rows without it. Rows of the same (split, adapter, base, levers) replace earlier ones;
``--table`` prints the README table.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from factordiff.checkpoint import atomic_write_json
from factordiff.config import load_config
from factordiff.data.sources import prepare_data
from factordiff.data.splits import make_split
from factordiff.evaluate.latent import heldout_readout
from factordiff.evaluate.suite import evaluate_run
from factordiff.fit import fit, start_from
from factordiff.models.runs import load_model
from factordiff.quickstart import pretrained_run

RESULTS = Path(__file__).parent / "results" / "generalization.json"
SPLITS = {
    "composition": {
        "split.kind": "composition",
        "split.factors": ["object_hue", "shape"],
        "split.fraction": 0.4,
    },
    "interpolation": {"split.kind": "interpolation", "split.factors": ["object_hue"]},
    "extrapolation": {"split.kind": "extrapolation", "split.factors": ["scale"], "split.fraction": 0.25},
    "unseen_value": {"split.kind": "unseen_value", "split.factors": ["object_hue"]},
}
ENCODING_MINUTES = 1.0
SHARES = {"distill.budget": 0.08, "autoencoder.budget": 0.3, "denoiser.budget": 0.62}


def _from_shipped(out: Path, cfg) -> None:
    """A run folder holding the shipped model's distiller and autoencoder (stages done) and this
    row's config, so that ``fit(..., resume=True)`` trains only the denoiser stages."""
    shipped = pretrained_run(32)
    if shipped is None:
        sys.exit("the shipped 32x32 quickstart model is missing from the package")
    start_from(shipped, out, cfg, ("distiller", "autoencoder"))


def _steps(out: Path, stage: str) -> int:
    log = out / "logs" / f"{stage}.jsonl"
    return sum(1 for _ in log.open()) if log.is_file() else 0


def run_folder(work: Path, split: str, adapter: str, base: str, levers: dict) -> Path:
    """A row's run folder: split, adapter, base and each lever."""
    return work / "-".join(
        [split, adapter, base, *(f"{k}={json.dumps(v)}" for k, v in sorted(levers.items()))]
    )


def run_row(
    split: str, adapter: str, base: str, minutes: float, work: Path, levers: dict | None = None
) -> dict:
    levers = levers or {}
    over = {
        **SPLITS[split],
        "data.source": "shapes",
        "data.size": 32,
        "data.n": 100000,
        "train.threads": 2,
        "train.checkpoint_every": 1000,
        "denoiser.adapter": adapter,
        "denoiser.train_base": base == "joint",
        "evaluate.sample_guidance": 2.0,
    }
    shipped = split == "composition"
    # the fit's clock also runs while the training images are encoded to latents and codes (about a
    # minute here), before the denoiser starts: the composition rows get that minute on top
    over["train.minutes"] = minutes + ENCODING_MINUTES if shipped else minutes / SHARES["denoiser.budget"]
    if not shipped:
        over.update(SHARES)
    cfg = load_config(None, {**over, **levers})
    out = run_folder(work, split, adapter, base, levers)
    if out.exists():
        shutil.rmtree(out)
    if shipped:
        _from_shipped(out, cfg)
    t0 = time.monotonic()
    fit(cfg, out, resume=shipped, progress=True)
    fit_min = (time.monotonic() - t0) / 60
    m = evaluate_run(out, progress=True)
    probe = probe_summary(m.get("distiller_readout", {}))
    cf, s = m["counterfactual"], m["samples"]
    command = [
        "factordiff",
        "fit",
        "--holdout",
        SPLITS[split]["split.kind"],
        "--holdout-factors",
        ",".join(SPLITS[split]["split.factors"]),
        "--adapter",
        adapter,
        "--base",
        base,
        "--minutes",
        f"{over['train.minutes']:g}",
    ]
    return {
        "split": split,
        "heldout": json.loads((out / "split.json").read_text()).get("description"),
        "adapter": adapter,
        "train_base": base == "joint",
        "levers": levers,
        "guidance_form": m.get("samples_guidance", {}).get("form", "joint"),
        "sample_guidance": m.get("samples_guidance", {}).get("weight"),
        "minutes": minutes,
        "fit_minutes": round(fit_min, 1),
        "steps": {stage: _steps(out, stage) for stage in ("base", "denoiser") if _steps(out, stage)},
        "encoders": "shipped quickstart model" if shipped else "trained in this run",
        "samples_all_right_seen": s["seen"]["all_factors"],
        "samples_all_right_heldout": s["heldout"]["all_factors"],
        "edits_all_right": cf["heldout"]["all_right"],
        "effectiveness": cf["heldout"]["effectiveness"],
        "preservation": cf["heldout"]["preservation"],
        "pairs_all_right": cf.get("heldout_pairs", {}).get("all_right"),
        # how many held-out samples and edit targets took a code block from a real image; values of
        # a continuous factor are coded from the value (FactorModel.value_code): 0 for these splits
        "codes_from_reference": s["heldout"].get("codes_from_reference"),
        "edit_targets_from_reference": cf["heldout"].get("targets_from_reference"),
        "codes_from_value": m.get("codes_from_value", []),
        "edit_strength": cf.get("edit_strength"),
        "edit_steps": cf.get("steps"),
        **probe,
        # a lever is no flag of `factordiff fit`: such a row names the benchmark call that made it
        "command": "python " + shlex.join(sys.argv)
        if levers
        else shlex.join(command)
        + ("  # from the shipped distiller and autoencoder: benchmarks/generalization.py" if shipped else ""),
    }


def _row_key(r: dict) -> tuple:
    """Rows of the same key replace each other."""
    return r["split"], r["adapter"], r["train_base"], json.dumps(r.get("levers", {}), sort_keys=True)


def probe_summary(readout: dict) -> dict:
    """``probe_r2``: the mean held-out R^2 over the factors where it is defined (held-out images with
    more than one value of the factor); ``probe_mae``: the mean held-out absolute error of the
    read-out over every factor, in units of each factor's range."""
    rows = [v for v in readout.values() if isinstance(v, dict)]
    r2 = [v["r2_heldout"] for v in rows if v.get("r2_heldout") is not None]
    mae = [v["mae_heldout"] for v in rows if v.get("mae_heldout") is not None]
    return {"probe_r2": float(np.mean(r2)) if r2 else None, "probe_mae": float(np.mean(mae)) if mae else None}


def table(rows: list[dict]) -> str:
    def f(v):
        return "" if v is None else f"{v:.3f}"

    lines = [
        "| split (held out) | adapter | base | denoiser minutes | samples all right, seen | held-out "
        "| edits all right | effectiveness | preservation | pairs all right | probe R^2 | probe error |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['split']} ({r['heldout']}) | {r['adapter']} | {'joint' if r['train_base'] else 'frozen'} "
            f"| {r['minutes']:g} | "
            + " | ".join(
                f(r[k])
                for k in (
                    "samples_all_right_seen",
                    "samples_all_right_heldout",
                    "edits_all_right",
                    "effectiveness",
                    "preservation",
                    "pairs_all_right",
                    "probe_r2",
                    "probe_mae",
                )
            )
            + " |"
        )
    return "\n".join(lines)


def rescore(previous: dict, work: Path) -> None:
    """Recompute ``probe_r2``/``probe_mae`` of every row whose run folder is in ``work``."""
    for row in previous["rows"]:
        base = "joint" if row["train_base"] else "frozen"
        run = run_folder(work, row["split"], row["adapter"], base, row.get("levers", {}))
        if not (run / "model").is_dir():
            continue
        cfg, model = load_model(run)
        data, _, _ = prepare_data(cfg)
        row.update(
            probe_summary(heldout_readout(model, data, make_split(data.spec, cfg.split), seed=cfg.train.seed))
        )
    atomic_write_json(RESULTS, previous)
    print(table(previous["rows"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--minutes",
        type=float,
        default=10.0,
        help="denoiser training minutes of every row (the stated budget)",
    )
    ap.add_argument(
        "--rows",
        default="composition,interpolation,extrapolation,unseen_value",
        help="splits to run, comma-separated",
    )
    ap.add_argument("--adapters", default="embed,tokens,shift", help="adapters of the composition rows")
    ap.add_argument(
        "--best",
        default=None,
        help="adapter of the other splits' rows (default: the composition row with the "
        "best held-out samples)",
    )
    ap.add_argument("--base", choices=["joint", "frozen"], default="joint")
    ap.add_argument("--work", default="runs/bench-generalization")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config field of every row this call runs (a lever; JSON value), e.g. distill.ordinal_dims=1",
    )
    ap.add_argument(
        "--table", action="store_true", help="print the README table from the results file and stop"
    )
    ap.add_argument(
        "--rescore-probes",
        action="store_true",
        help="recompute every row's probe figures from its run folder in --work, then stop",
    )
    a = ap.parse_args()
    previous = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"rows": []}
    if a.table:
        print(table(previous["rows"]))
        return
    if a.rescore_probes:
        rescore(previous, Path(a.work))
        return
    torch.set_num_threads(2)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = list(previous["rows"])

    def record(row: dict) -> None:
        rows[:] = [r for r in rows if _row_key(r) != _row_key(row)] + [row]
        atomic_write_json(
            RESULTS,
            {
                "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, "
                f"torch {torch.__version__}",
                "date": time.strftime("%Y-%m-%d"),
                "command": "python " + shlex.join(sys.argv),
                "rows": rows,
            },
        )
        print(table([row]), flush=True)

    levers = {k: json.loads(v) for k, v in (item.split("=", 1) for item in a.set)}
    wanted = a.rows.split(",")
    if "composition" in wanted:
        for adapter in a.adapters.split(","):
            record(run_row("composition", adapter, a.base, a.minutes, work, levers))
    best = (
        a.best
        or max(
            (r for r in rows if r["split"] == "composition"),
            key=lambda r: r["samples_all_right_heldout"],
            default={"adapter": "embed"},
        )["adapter"]
    )
    for split in [s for s in wanted if s != "composition"]:
        record(run_row(split, best, a.base, a.minutes, work, levers))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
