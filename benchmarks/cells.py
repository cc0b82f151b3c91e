"""Cell Painting images on cellsim: fit, evaluate and regenerate in a stated budget, every figure
beside its null; into ``benchmarks/results/cells.json``.

    python benchmarks/cells.py [--size 32] [--minutes 20] [--n 60000] [--set FIELD=VALUE ...]

Held out of every learning stage: three compound x batch combinations (nocodazole in batch_2,
colchicine in batch_3, rotenone in batch_4) and two compounds entirely (caffeine, camptothecin).
The run is ``factordiff fit --data cellsim`` with those ``--holdout-where`` conditions; then
``factordiff evaluate`` (batch swap, per-channel Frechet, unseen compound by SMILES, mAP) and one
``factordiff regenerate`` into a held-out combination, each timed.

``--fit-only`` fits into ``--out`` and stops (its minutes and command go to ``--out/bench_fit.json``);
``--set`` passes config overrides to the fit (the configurations compared in docs/design.md).
``--evaluate-only`` keeps the fitted run in ``--out`` (and the fit's minutes from
``bench_fit.json``, else from the results file), gives it the current evaluation settings of a
cellsim run (its config's ``evaluate`` section), retrains its oracle, and evaluates and
regenerates again.

``--edits 0.55:2:residual,1:2:plain --guidances 2,5,8`` instead compares edit settings on the run
already in ``--out`` without looking at what is held out: batch swaps into seen compound x batch
combinations (``seen_batch_swaps``) for each technical setting, and controls regenerated into
training compounds (``seen_compound_edits``) for each compound-edit guidance; it records the
held-out batch swap of each technical setting beside them, into the results file's
``edit_settings`` entry (the rest is left as it was), with the nulls: copy the source, the pixel
batch mean shift, the true counterfactual, and the baselines of ``evaluate/baselines.py`` over
oracle features (``features_mean_shift``, ``features_nearest``, ``features_linear``). cellsim's
defaults (``config.SOURCE_DEFAULTS``) are the settings it chose. ``--code-loo`` runs the
unseen-compound test on training compounds, each coded from its structure and the others' codes,
beside their own codes.
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

import torch

from factordiff.checkpoint import atomic_write_json
from factordiff.config import load_config
from factordiff.data.cellsim import CHANNELS, COMPOUNDS
from factordiff.data.sources import prepare_data
from factordiff.data.splits import make_split
from factordiff.evaluate.cells import evaluate_cells, seen_batch_swaps, seen_compound_edits
from factordiff.evaluate.suite import evaluate_run, get_oracle
from factordiff.fit import fit
from factordiff.models.runs import load_model, load_run
from factordiff.regenerate import regenerate, write_regenerated
from factordiff.report import build_report

RESULTS = Path(__file__).parent / "results" / "cells.json"
HOLDOUT = [
    "compound=nocodazole,batch=batch_2",
    "compound=colchicine,batch=batch_3",
    "compound=rotenone,batch=batch_4",
    "compound=caffeine",
    "compound=camptothecin",
]
FIT_RECORD = "bench_fit.json"  # in the run folder: the fit's minutes and command, for --evaluate-only


def overrides(pairs: list[str]) -> dict:
    """``--set FIELD=VALUE`` pairs as config overrides; a value that parses as JSON (a number, a list,
    true/false) is taken as such."""

    out = {}
    for kv in pairs:
        key, _, value = kv.partition("=")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--minutes", type=float, default=20.0, help="fit budget (all stages)")
    ap.add_argument("--n", type=int, default=60000, help="fields rendered (the CLI's default)")
    ap.add_argument("--out", default="runs/bench-cells")
    ap.add_argument(
        "--evaluate-only",
        action="store_true",
        help="re-evaluate the run in --out with today's evaluation settings (no fit)",
    )
    ap.add_argument(
        "--edits",
        help="compare batch-swap settings STRENGTH:GUIDANCE:residual|marginal|plain (comma-separated) on "
        "the run in --out and stop",
    )
    ap.add_argument(
        "--results",
        default=str(RESULTS),
        help="with --edits: the results file whose edit_settings entry is written (default cells.json; "
        "the shipped model's: cells_shipped.json)",
    )
    ap.add_argument(
        "--guidances",
        default="",
        help="with --edits: compound-edit guidance weights to compare (comma-separated)",
    )
    ap.add_argument(
        "--code-loo",
        action="store_true",
        help="the unseen-compound test on training compounds (codes from the others' structures) on "
        "the run in --out, and stop",
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a config override of the fit (repeatable), e.g. autoencoder.enabled=false",
    )
    ap.add_argument(
        "--fit-only",
        action="store_true",
        help="fit into --out and stop (evaluate later with --evaluate-only)",
    )
    a = ap.parse_args()
    torch.set_num_threads(2)
    out = Path(a.out)
    if a.code_loo:
        return probe_code_loo(out)
    if a.edits:
        guid = [float(x) for x in a.guidances.split(",") if x]
        return probe_edits(out, a.edits.split(","), guid, Path(a.results))
    cfg = load_config(
        None,
        {
            "data.source": "cellsim",
            "data.size": a.size,
            "data.n": a.n,
            "split.kind": "none",
            "split.where": HOLDOUT,
            "train.minutes": a.minutes,
            "train.threads": 2,
            **overrides(a.set),
        },
    )
    command = shlex.join(
        [
            "factordiff",
            "fit",
            "--data",
            "cellsim",
            "--size",
            str(a.size),
            "--minutes",
            f"{a.minutes:g}",
            *sum((["--holdout-where", w] for w in HOLDOUT), []),
            *sum((["--set", kv] for kv in a.set), []),
            "--out",
            str(out),
        ]
    )
    if a.evaluate_only:
        import dataclasses
        import json

        saved = json.loads((out / "run_config.json").read_text())
        saved["evaluate"] = dataclasses.asdict(cfg.evaluate)
        atomic_write_json(out / "run_config.json", saved)
        shutil.rmtree(out / "oracle", ignore_errors=True)
        shutil.rmtree(out / "regenerated-batch2", ignore_errors=True)
        previous = (
            json.loads((out / FIT_RECORD).read_text())
            if (out / FIT_RECORD).exists()
            else json.loads(RESULTS.read_text())
        )
        fit_min, command = previous["minutes"]["fit"], previous["fit_command"]
    else:
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.monotonic()
        fit(cfg, out, progress=True)
        fit_min = (time.monotonic() - t0) / 60
        atomic_write_json(out / FIT_RECORD, {"minutes": {"fit": round(fit_min, 1)}, "fit_command": command})
        if a.fit_only:
            return
    t0 = time.monotonic()
    m = evaluate_run(out, progress=True)
    build_report(out)
    eval_min = (time.monotonic() - t0) / 60
    t0 = time.monotonic()
    run = load_run(out)
    regenerated = regenerate(
        run, ["compound=nocodazole,batch=batch_1"], ["batch=batch_2,plate=plate_3"], limit=64
    )
    regen = write_regenerated(regenerated, run, out / "regenerated-batch2")
    regen_min = (time.monotonic() - t0) / 60
    keep = {k: m[k] for k in ("batch_swap", "unseen_compound", "map", "frechet") if k in m}
    result = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d"),
        "command": "python " + shlex.join(sys.argv),
        "fit_command": command,
        "size": a.size,
        "fields": a.n,
        "minutes": {
            "fit": round(fit_min, 1),
            "evaluate": round(eval_min, 1),
            "regenerate_64_fields": round(regen_min, 2),
        },
        "heldout": HOLDOUT,
        **keep,
        "counterfactual_heldout": {
            k: m["counterfactual"]["heldout"][k] for k in ("effectiveness", "preservation", "all_right")
        },
        "samples": {k: v["all_factors"] for k, v in m["samples"].items()},
        "oracle_accuracy": m["oracle_accuracy"],
        "reconstruction_mse": m["reconstruction_mse"],
        "regenerate": regen,
    }
    atomic_write_json(RESULTS, result)
    print(f"wrote {RESULTS}")


def probe_code_loo(run: Path) -> None:
    """The unseen-compound test on training compounds: each one's code from its structure and the
    other training compounds' codes (``compound_code``), at the run's compound-edit settings; into
    the results file's ``structure_codes_leave_one_out`` entry."""
    cfg, model = load_model(run)
    data, _, _ = prepare_data(cfg)
    split = make_split(data.spec, cfg.split)
    oracle, _ = get_oracle(run, cfg, data, progress=False)
    args = (model, oracle, data, split, cfg.evaluate, cfg.train.seed)
    loo = {
        "command": "python " + shlex.join(sys.argv),
        "guidance": cfg.evaluate.guidance,
        "own_codes": seen_compound_edits(*args),
        "codes_from_structure": seen_compound_edits(*args, leave_one_out=COMPOUNDS),
    }
    print(loo, flush=True)
    saved = json.loads(RESULTS.read_text())
    saved["structure_codes_leave_one_out"] = loo
    atomic_write_json(RESULTS, saved)


def probe_edits(run: Path, technical: list[str], guidances: list[float], results: Path = RESULTS) -> None:
    """Choose edit settings on training combinations only: batch swaps into seen compound x batch
    combinations for each technical setting (``STRENGTH:GUIDANCE:residual|marginal|plain``), and controls
    regenerated into training compounds for each compound-edit guidance; the held-out batch swap of
    each technical setting beside them, for the record."""
    import dataclasses

    cfg, model = load_model(run)
    data, _, _ = prepare_data(cfg)
    split = make_split(data.spec, cfg.split)
    oracle, _ = get_oracle(run, cfg, data, progress=False)
    keys = ("target_batch_rate", "compound_kept_rate", "biology_kept_rate")
    rows, null = [], None
    for text in technical:
        strength, guidance, kind = text.split(":")
        e = dataclasses.replace(
            cfg.evaluate,
            technical_strength=float(strength),
            technical_guidance=float(guidance),
            technical_residual="marginal" if kind == "marginal" else kind == "residual",
        )
        seen = seen_batch_swaps(model, oracle, data, split, e, n=cfg.evaluate.sources, seed=cfg.train.seed)
        held = evaluate_cells(
            model,
            oracle,
            data,
            split,
            CHANNELS,
            e,
            n=cfg.evaluate.sources,
            seed=cfg.train.seed,
            library=None,
            parts=("batch_swap",),
        )["batch_swap"]
        rows.append(
            {
                "technical": text,
                "seen": {k: seen[k] for k in keys},
                "heldout": {**{k: held[k] for k in keys}, "frechet_all": held["frechet"]["all"]},
            }
        )
        null = {
            name: {"seen": {k: seen[name][k] for k in keys}, "heldout": {k: held[name][k] for k in keys}}
            for name in ("copy_source", "mean_shift", "true_counterfactual")
            if name in seen
        }
        null["copy_source"]["heldout"]["frechet_all"] = held["copy_source_distances"]["frechet"]["all"]
        null["mean_shift"]["heldout"]["frechet_all"] = held["mean_shift_distances"]["frechet"]["all"]
        for name in ("mean_shift", "nearest", "linear"):  # the profile baselines over oracle features
            null[f"features_{name}"] = {
                part: {k: swaps["feature_baselines"][name][k] for k in keys}
                for part, swaps in (("seen", seen), ("heldout", held))
            }
        print(rows[-1], flush=True)
    bio = []
    for g in guidances:
        e = dataclasses.replace(cfg.evaluate, guidance=g)
        bio.append(
            {
                "guidance": g,
                "seen_compounds_closer_than_control": seen_compound_edits(
                    model, oracle, data, split, e, cfg.train.seed
                ),
            }
        )
        print(bio[-1], flush=True)
    saved = json.loads(results.read_text()) if results.is_file() else {}
    command = "python " + shlex.join(sys.argv)
    for row in rows:
        row["command"] = command
    earlier = [  # settings compared by an earlier call on the same run stay beside the new ones
        r
        for r in saved.get("edit_settings", {}).get("technical", [])
        if r["technical"] not in technical and "command" in r
    ]
    saved["edit_settings"] = {
        "command": command,
        "date": time.strftime("%Y-%m-%d"),
        "steps": cfg.evaluate.steps,
        "technical": earlier + rows,
        "nulls": null,
        "compound_guidance": bio,
    }
    atomic_write_json(results, saved)
    print(f"wrote {results} (edit_settings)")


if __name__ == "__main__":
    main()
