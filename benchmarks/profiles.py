"""Profile benchmark: the virtual experiment regenerator on real public Cell Painting profiles,
the model beside the four baselines, into ``benchmarks/results/profiles.json``.

    python benchmarks/profiles.py [--data ../shared/data/real] [--week Week4] [--seeds 0,1,2]

- BBBC021 (per-well means, 10 weekly batches; only DMSO spans the weeks): DMSO of one week held
  out and regenerated from the DMSO wells of the other weeks (truth: the real held-out wells), and
  one compound per mechanism of action held out entirely and generated from same-plate controls
  with its MoA, concentration and week (its own code absent).
- LINCS plate SQ00015054 (one plate, 58 compounds at 6 doses): the top dose of eight compounds
  held out and regenerated from their other doses, and one compound per MoA (for MoAs with two
  or more compounds, at most eight) held out entirely.

Every learner (the model and the baselines) sees training rows only, feature selection and plate
statistics included. MoA is not a conditioning factor (it would tell every method the answer); it
is read only by the MoA retrieval. Each transfer is judged against the real held-out wells by mean
error, energy distance (no self-pairs), a classifier two-sample test (ROC AUC; 0.5 =
indistinguishable) and the spread ratio, beside the replicate floor (one half of the real held-out
wells against the other); oracles (logistic regressions) fitted on every real row except the
held-out condition's read the generated wells and the real held-out wells alike. Baselines: copy,
mean shift (one shift for the set factors, on rows matching the source's other factors), nearest
condition, additive ridge, and for batch transfers ComBat, sphering to controls and Harmony
(``factordiff.evaluate.batch_correction``). The model runs at its defaults (guidance 1: nothing is
tuned on the held-out wells). mAP is copairs' standard setup (positives: the same compound and
dose; negatives: control wells on the same plate), for training and held-out compounds.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bbbc021 import bbbc021_table  # noqa: E402

from factordiff.checkpoint import atomic_write_json  # noqa: E402
from factordiff.config import load_config  # noqa: E402
from factordiff.evaluate.profile_suite import (  # noqa: E402
    evaluate_profile_run,
    guidance_sweep,
    summary_lines,
    transfer_figures,
)
from factordiff.fit import fit_profiles  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "profiles.json"


def one_per_moa(table: pd.DataFrame, compound: str, moa: str, control: str, limit: int = 99) -> list[str]:
    """For each MoA with two or more compounds, its alphabetically first compound (at most ``limit``)."""
    t = table[(table[compound] != control) & table[moa].notna() & (table[moa] != "unknown")]
    groups = t.groupby(moa)[compound].unique()
    picks = sorted(sorted(map(str, c))[0] for c in groups if len(c) >= 2)
    return picks[:limit]


def _fit(
    name: str,
    table: Path,
    factors: list[str],
    where: list[str],
    controls: str,
    moa: str,
    out: Path,
    steps: int,
    seed: int,
    residual: str,
    feature_select: list[str] | None,
    start: str,
) -> float:
    """One fit into ``out`` (replaced); its seconds."""
    cfg = load_config(
        None,
        {
            "data.source": f"profiles:{table}",
            "data.factors": factors,
            "split.where": where,
            "profiles.controls": controls,
            "profiles.moa": moa,
            "profiles.steps": steps,
            "profiles.residual": residual,
            "profiles.start": start,
            "train.seed": seed,
            "train.threads": 2,
            "profiles.feature_select": feature_select or [],
        },
    )
    if out.exists():
        import shutil

        shutil.rmtree(out)
    t0 = time.monotonic()
    fit_profiles(cfg, out, progress=True)
    return time.monotonic() - t0


def beaten(task: dict) -> int:
    """How many of the three transfer criteria the model meets against every baseline of ``task``:
    lower mean error, lower energy distance, two-sample AUC nearer 0.5."""
    m = task["methods"]
    others = [v for k, v in m.items() if k != "model"]
    return (
        int(m["model"]["mean_error"] < min(v["mean_error"] for v in others))
        + int(m["model"]["energy"] < min(v["energy"] for v in others))
        + int(abs(m["model"]["c2st_auc"] - 0.5) < min(abs(v["c2st_auc"] - 0.5) for v in others))
    )


def choose_start(fit_args: tuple, where: list[str], validation: list[str], out: Path) -> dict:
    """``profiles.start`` chosen on training rows only: a model fitted with the ``validation``
    cells (seen conditions, e.g. DMSO of the neighbouring weeks) held out as well regenerates them
    from each start; the start whose regenerations meet more of the three criteria against every
    baseline (summed over the cells) wins, ties to the lower mean energy distance, then to
    ``source``. The held-out condition of record plays no part."""
    name, table, factors, _, controls, moa, _, steps, seed, residual, ops = fit_args
    fit_s = _fit(
        name, table, factors, where + validation, controls, moa, out, steps, seed, residual, ops, "source"
    )
    figures = transfer_figures(out, validation, ["source", "noise"])
    score = {
        start: {
            "criteria_met": sum(beaten(t) for t in cells.values()),
            "energy": float(np.mean([t["methods"]["model"]["energy"] for t in cells.values()])),
        }
        for start, cells in figures.items()
    }
    chosen = min(score, key=lambda k: (-score[k]["criteria_met"], score[k]["energy"], k != "source"))
    print(f"{name} seed={seed}: start chosen on {', '.join(validation)}: {chosen} {score}", flush=True)
    compact = {
        start: {
            cell: {
                meth: {k: r[k] for k in ("mean_error", "energy", "c2st_auc", "spread_ratio")}
                for meth, r in t["methods"].items()
            }
            for cell, t in cells.items()
        }
        for start, cells in figures.items()
    }
    return {
        "cells": validation,
        "fit_seconds": round(fit_s, 1),
        "score": score,
        "chosen": chosen,
        "figures": compact,
    }


def run_case(
    name: str,
    table: Path,
    factors: list[str],
    where: list[str],
    controls: str,
    moa: str,
    work: Path,
    steps: int,
    seed: int,
    residual: str,
    feature_select: list[str] | None = None,
    validation: list[str] | None = None,
) -> dict:
    """One fit and evaluation; with ``validation`` (held-out conditions cut from training rows), the
    regeneration's start is first chosen on them (``choose_start``), else it is ``source``."""
    out = work / f"{name.replace(' ', '-')}-{residual}-seed{seed}"
    args = (name, table, factors, where, controls, moa, out, steps, seed, residual, feature_select)
    chosen = (
        choose_start(args, where, validation, out.with_name(out.name + "-validation")) if validation else None
    )
    start = chosen["chosen"] if chosen else "source"
    fit_s = _fit(*args, start)
    metrics = evaluate_profile_run(out, progress=True)
    print("\n".join([f"{name} residual={residual} seed={seed}", *summary_lines(metrics)]), flush=True)
    command = [
        "factordiff",
        "fit",
        "--data",
        f"profiles:{table.name}",
        "--factors",
        ",".join(factors),
        *sum((["--holdout-where", w] for w in where), []),
        "--controls",
        controls,
        "--moa",
        moa,
        "--seed",
        str(seed),
        *(["--feature-select", ",".join(feature_select)] if feature_select else []),
    ]
    config = [
        f"profiles.{k} = {v!r}"
        for k, v in (("residual", residual), ("start", start))
        if v not in ("none", "source")
    ]
    return {
        "dataset": name,
        "residual": residual,
        "seed": seed,
        "start": start,
        **({"start_selection": chosen} if chosen else {}),
        "fit_seconds": round(fit_s, 1),
        "evaluate_seconds": metrics["seconds"],
        "steps": steps,
        "command": shlex.join(command) + (f"  # config: {', '.join(config)}" if config else ""),
        "metrics": metrics,
    }


def bbbc021_setup(data: Path, work: Path, week: str) -> tuple[Path, list[str]]:
    """The BBBC021 table written into ``work`` and the held-out conditions: DMSO of ``week`` and
    one compound per MoA."""
    table = bbbc021_table(data / "bbbc021-profiles")
    path = work / "bbbc021.csv.gz"
    table.to_csv(path, index=False)
    held = one_per_moa(table, "Metadata_Compound", "Metadata_MoA", "DMSO")
    return path, [f"Metadata_Compound=DMSO,Metadata_Batch={week}"] + [f"Metadata_Compound={c}" for c in held]


def bbbc021_case(
    path: Path,
    where: list[str],
    work: Path,
    steps: int,
    seed: int,
    residual: str,
    name: str = "bbbc021",
    ops: list[str] | None = None,
    validation: list[str] | None = None,
) -> dict:
    """One BBBC021 fit and evaluation (MoA read, not a factor); ``validation``: the weeks whose DMSO
    wells choose the regeneration's start (``choose_start``)."""
    factors = ["Metadata_Compound", "Metadata_Concentration", "Metadata_Batch"]
    moa = "Metadata_MoA"
    cells = [f"Metadata_Compound=DMSO,Metadata_Batch={w}" for w in validation or []]
    return run_case(
        name, path, factors, where, "Metadata_Compound=DMSO", moa, work, steps, seed, residual, ops, cells
    )


LINCS_DOSE = 1.1111  # the dose held out: between 0.37037 and 3.3333 uM, their geometric mean


def dose_interpolation_case(data: Path, work: Path, steps: int, seed: int) -> dict:
    """The LINCS plate with the 1.1111 uM well of every compound held out (a dose no training row
    has), each regenerated from its compound's other doses, beside the baselines (``interpolate``:
    the dose-response line in log dose between the compound's 0.37 and 3.33 uM wells)."""
    path = data / "lincs-SQ00015054" / "SQ00015054_normalized_feature_select.csv.gz"
    table = pd.read_csv(path)
    comp, dose = "Metadata_broad_sample", "Metadata_mmoles_per_liter"
    compounds = sorted(set(table.loc[np.isclose(table[dose], LINCS_DOSE), comp]) - {"DMSO"})
    where = [f"{comp}={c},{dose}={LINCS_DOSE}" for c in compounds]
    name, controls = "lincs dose interpolation", f"{comp}=DMSO"
    return run_case(name, path, [comp, dose], where, controls, "Metadata_moa", work, steps, seed, "none")


def dose_summary(runs: list[dict]) -> dict:
    """Per method, the mean over compounds (then over seeds) of each held-out well's mean error and
    energy distance, and the share of compounds where the model is nearer than each baseline."""
    per: dict = {}
    wins: dict = {}
    for r in runs:
        tasks = [t for t in r["metrics"]["tasks"] if t["kind"] == "transfer"]
        for method in tasks[0]["methods"]:
            for k in ("mean_error", "energy"):
                v = [t["methods"][method][k] for t in tasks]
                per.setdefault(method, {}).setdefault(k, []).append(float(np.mean(v)))
            if method != "model":
                share = np.mean(
                    [t["methods"]["model"]["mean_error"] < t["methods"][method]["mean_error"] for t in tasks]
                )
                wins.setdefault(method, []).append(float(share))
    return {
        "compounds": len(tasks),
        "seeds": [r["seed"] for r in runs],
        "methods": {m: {k: float(np.mean(v)) for k, v in figs.items()} for m, figs in per.items()},
        "model_nearer_mean_error_share": {m: float(np.mean(v)) for m, v in wins.items()},
    }


def neighbour_weeks(week: str) -> list[str]:
    """The weeks before and after ``week`` (BBBC021 has Week1 to Week10)."""
    n = int(week.removeprefix("Week"))
    return [f"Week{i}" for i in (n - 1, n + 1) if 1 <= i <= 10]


def summarize(runs: list[dict]) -> dict:
    """Per dataset, task and method: each figure's mean over seeds with its min and max."""
    out: dict = {}
    for r in runs:
        d = out.setdefault(f"{r['dataset']} (residual {r['residual']})", {"tasks": {}, "retrieval": {}})
        for task in r["metrics"]["tasks"]:
            t = d["tasks"].setdefault(task["condition"], {"kind": task["kind"]})
            for method, figs in task.get("methods", {}).items():
                for k, v in figs.items():
                    t.setdefault(method, {}).setdefault(k, []).append(v)
            if "real_heldout_moa_hits" in task:
                t.setdefault("real_heldout", {}).setdefault("moa_hits", []).append(
                    task["real_heldout_moa_hits"]
                )
            if "mean_shift_fallback" in task:
                t.setdefault("mean_shift_fallback", []).append(task["mean_shift_fallback"])
            for k, v in task.get("floor", {}).items():
                t.setdefault("replicate_floor", {}).setdefault(k, []).append(v)
            for k, v in task.get("real_heldout_read_as_target", {}).items():
                t.setdefault("real_heldout", {}).setdefault(f"read_as_target.{k}", []).append(v)
        for part in ("retrieval", "retrieval_heldout"):
            for name, v in r["metrics"].get(part, {}).items():
                d.setdefault(part, {}).setdefault(name, {}).setdefault("map", []).append(v["map"])

    def stats(v):
        return (
            {"mean": float(np.mean(v)), "min": float(np.min(v)), "max": float(np.max(v)), "n": len(v)}
            if isinstance(v, list)
            else v
        )

    def walk(x):
        return {k: walk(v) if isinstance(v, dict) else stats(v) for k, v in x.items()}

    return walk(out)


def sweep_table(sweep: dict) -> str:
    """The guidance sweep: per weight, the model's figures averaged over seeds (min-max)."""
    by: dict = {}
    for r in sweep["rows"]:
        d = by.setdefault((r["condition"], r["guidance_technical"]), {})
        for k, v in r.items():
            if k in ("mean_error", "energy") or k.startswith(("read_as_target", "read_as_source")):
                d.setdefault(
                    "read as target"
                    if k.startswith("read_as_target")
                    else "biology kept"
                    if k.startswith("read_as_source")
                    else k.replace("_", " "),
                    [],
                ).append(v)

    def f(v):
        return f"{np.mean(v):.3f} ({min(v):.2f}-{max(v):.2f})"

    lines = [
        "**bbbc021**, model (residual none) by guidance weight on the changed technical factor "
        f"(`{sweep['command']}`)",
        "",
        "| condition | weight | mean error | energy | read as target | biology kept |",
        "|---|---|---|---|---|---|",
    ]
    for (cond, w), d in by.items():
        lines.append(
            f"| {cond} | {w:g} | "
            + " | ".join(
                f(d[k]) if k in d else "" for k in ("mean error", "energy", "read as target", "biology kept")
            )
            + " |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real")
    )
    ap.add_argument("--week", default="Week4", help="BBBC021 week whose DMSO wells are held out")
    ap.add_argument(
        "--steps", type=int, default=4000, help="training steps of each model (the config default)"
    )
    ap.add_argument(
        "--seeds",
        default="0,1,2",
        help="BBBC021: one model per seed, the spread between seeds is part of the result",
    )
    ap.add_argument(
        "--validation",
        default="neighbours",
        help="BBBC021 weeks whose DMSO wells, held out of a second fit, choose profiles.start "
        "(comma-separated; default: the weeks either side of --week; none: start from the source)",
    )
    ap.add_argument("--lincs-seeds", default="0")
    ap.add_argument("--residuals", default="none,ridge", help="profiles.residual variants to run")
    ap.add_argument("--work", default="runs/bench-profiles")
    ap.add_argument("--only", choices=["bbbc021", "lincs"], help="run one dataset only")
    ap.add_argument(
        "--feature-select",
        metavar="OP,...",
        help="instead: BBBC021 (residual none, --seeds) with these pycytominer feature_select operations, "
        "added to the results file as dataset 'bbbc021 feature_select'",
    )
    ap.add_argument(
        "--dose-interpolation",
        action="store_true",
        help="instead: the LINCS plate with every compound's 1.1111 uM well held out, regenerated from "
        "its other doses (--seeds), into the results file's dose_interpolation",
    )
    ap.add_argument(
        "--sweep",
        metavar="W,W,...",
        help="instead: regenerate the BBBC021 transfer of the runs in --work (residual none, --seeds) at "
        "each guidance weight on the technical factor, into the results file's guidance_sweep",
    )
    a = ap.parse_args()
    if a.sweep:
        torch.set_num_threads(2)
        weights = [float(w) for w in a.sweep.split(",")]
        rows = []
        for seed in [int(x) for x in a.seeds.split(",")]:
            run = Path(a.work) / f"bbbc021-none-seed{seed}"
            if not (run / "run_config.json").is_file():
                sys.exit(f"{run}: no such run; run the benchmark without --sweep first")
            rows += [{"seed": seed, **r} for r in guidance_sweep(run, weights)]
        saved = json.loads(RESULTS.read_text())
        saved["guidance_sweep"] = {
            "command": "python " + shlex.join(sys.argv),
            "date": time.strftime("%Y-%m-%d"),
            "rows": rows,
        }
        atomic_write_json(RESULTS, saved)
        print(sweep_table(saved["guidance_sweep"]))
        return
    torch.set_num_threads(2)
    data, work = Path(a.data), Path(a.work)
    if a.dose_interpolation:
        work.mkdir(parents=True, exist_ok=True)
        runs = [dose_interpolation_case(data, work, a.steps, seed) for seed in map(int, a.seeds.split(","))]
        saved = json.loads(RESULTS.read_text())
        saved["dose_interpolation"] = {
            "command": "python " + shlex.join(sys.argv),
            "date": time.strftime("%Y-%m-%d"),
            "summary": dose_summary(runs),
            "runs": runs,
        }
        atomic_write_json(RESULTS, saved)
        print(json.dumps(saved["dose_interpolation"]["summary"], indent=1))
        return
    validation = (
        neighbour_weeks(a.week)
        if a.validation == "neighbours"
        else []
        if a.validation == "none"
        else a.validation.split(",")
    )
    if a.feature_select:
        ops = a.feature_select.split(",")
        work.mkdir(parents=True, exist_ok=True)
        path, where = bbbc021_setup(data, work, a.week)
        name = "bbbc021 feature_select"
        rows = [
            bbbc021_case(path, where, work, a.steps, seed, "none", name, ops, validation)
            for seed in [int(x) for x in a.seeds.split(",")]
        ]
        saved = json.loads(RESULTS.read_text())
        saved["runs"] = [r for r in saved["runs"] if r["dataset"] != name] + rows
        saved["feature_select_command"] = "python " + shlex.join(sys.argv)
        saved["summary"] = summarize(saved["runs"])
        atomic_write_json(RESULTS, saved)
        print(f"wrote {RESULTS}")
        return
    seeds = [int(x) for x in a.seeds.split(",")]
    residuals = a.residuals.split(",")
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    if a.only in (None, "bbbc021"):
        path, where = bbbc021_setup(data, work, a.week)
        for residual in residuals:
            for seed in seeds:
                rows.append(bbbc021_case(path, where, work, a.steps, seed, residual, validation=validation))
    if a.only in (None, "lincs"):
        path = data / "lincs-SQ00015054" / "SQ00015054_normalized_feature_select.csv.gz"
        table = pd.read_csv(path)
        comp, dose, moa = "Metadata_broad_sample", "Metadata_mmoles_per_liter", "Metadata_moa"
        held = one_per_moa(table, comp, moa, "DMSO", limit=8)
        treated = sorted(set(table.loc[(table[comp] != "DMSO"), comp]) - set(held))[:8]
        top = [f"{comp}={c},{dose}={table.loc[table[comp] == c, dose].max()}" for c in treated]
        for residual in residuals:
            for seed in [int(x) for x in a.lincs_seeds.split(",")]:
                rows.append(
                    run_case(
                        "lincs",
                        path,
                        [comp, dose],
                        top + [f"{comp}={c}" for c in held],
                        f"{comp}=DMSO",
                        moa,
                        work,
                        a.steps,
                        seed,
                        residual,
                    )
                )
    result = {
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d"),
        "command": "python " + shlex.join(sys.argv),
        "runs": rows,
    }
    previous = json.loads(RESULTS.read_text()) if RESULTS.is_file() else None
    if previous:  # runs of a (dataset, residual) not run again stay
        done = {(r["dataset"], r["residual"]) for r in rows}
        keep = [r for r in previous.get("runs", []) if (r["dataset"], r["residual"]) not in done]
        result["runs"] = keep + rows
        for k in ("guidance_sweep", "feature_select_command"):
            if k in previous:
                result[k] = previous[k]
    result["summary"] = summarize(result["runs"])
    atomic_write_json(RESULTS, result)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
