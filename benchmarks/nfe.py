"""Quality against network evaluations, for editing and for sampling from noise, on the shipped
quickstart model; into ``benchmarks/results/nfe.json`` (and the README's plot,
``benchmarks/results/nfe.svg``).

    python benchmarks/nfe.py [--samplers ddim,dpmsolver++] [--steps 5,10,20,50,100]
        [--strengths 1,0.5] [--inversions ode,ddpm] [--oracle-seeds 0,1,2] [--per-factor 100]

Per solver (``denoiser.sampler``: DDIM, or DPM-Solver++(2M) with its own inverse scheduler for
the inversion), per edit strength s (how far up the noise schedule an edit inverts: to t = s T)
and per step count k, the quickstart's evaluation at k steps (each edit inverts in k passes and
regenerates in k, guided on the changed factor as the quickstart's edits are):

- held-out and seen edits: effectiveness, preservation, all factors right (``all_right``), and the
  two-factor held-out edits (the same sources and targets at every k: the differences are paired);
- reconstruction: invert and regenerate with nothing changed, pixel MSE and oracle agreement;
- soundness after Monteiro et al. (the quickstart's: the null edit once and ten times in a row,
  an edit and back), judged by the first oracle (``soundness`` in the row);
- samples from noise under the composed codes (joint guidance at the quickstart's weight, 2.0):
  all factors right on seen and held-out combinations, and the Frechet distance between the
  oracle's features of the samples and of as many real images (``frechet_oracle``); measured in
  the strength-1 rows only (samples start from pure noise whatever the edits' strength).

Both solvers integrate the same probability-flow ODE, so one reference serves both: the most steps
of the first solver (DDIM at 100 by default; ``--steps`` per solver as ``ddim=5,10,20,50,100``).
``defaults`` then names the steps of samples from noise (the fewest whose rates are within 0.01
of the reference's, Frechet distance within 10%) and the setting of edits (solver, strength and
steps, at most 50 passes: the best weaker held-out rate; see ``defaults``), each ``chosen``;
``--defaults-only`` recomputes it from the rows already in the results file. ``--precision bf16``
measures the bf16-autocast lever (``denoiser.inference_precision``); defaults come from fp32 rows.
Rows already in the file for other (solver, strength, steps) are kept. The oracle is the
quickstart's (trained once here and kept in the work folder).
"""

from __future__ import annotations

import argparse
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from factordiff.checkpoint import atomic_write_json
from factordiff.data.sources import prepare_data
from factordiff.data.splits import make_split
from factordiff.diffusion.guidance import Guidance
from factordiff.evaluate.cells import oracle_features
from factordiff.evaluate.counterfactual import TargetCodes, evaluate_counterfactuals, soundness
from factordiff.evaluate.distances import frechet
from factordiff.evaluate.suite import _latent_shape, conditional_samples, get_oracle
from factordiff.models.runs import load_model
from factordiff.quickstart import pretrained_run

OUT = Path(__file__).parent / "results" / "nfe.json"


def measure(
    model, oracles: dict, data, split, cfg, steps: int, per_factor: int, samples: int, strength: float = 1.0
) -> dict:
    """One row: the edits judged by each oracle in ``oracles`` (seed -> oracle; the rates are their
    mean, each oracle's in ``by_oracle``), samples from noise by the first (strength-1 ODE rows)."""
    judged, edit_s = [], []
    for oracle in oracles.values():
        t0 = time.monotonic()
        cf, _ = evaluate_counterfactuals(
            model,
            oracle,
            data,
            split,
            per_factor,
            steps,
            cfg.evaluate.guidance,
            seed=cfg.train.seed,
            strength=strength,
        )
        edit_s.append(time.monotonic() - t0)
        judged.append(
            {
                "edits_all_right": cf["heldout"]["all_right"],
                "effectiveness": cf["heldout"]["effectiveness"],
                "preservation": cf["heldout"]["preservation"],
                "pairs_all_right": cf["heldout_pairs"].get("all_right"),
                "seen_edits_all_right": cf["seen"]["all_right"],
                "reconstruction_mse": cf["reconstruction"]["mse"],
                "reconstruction_oracle": cf["reconstruction"]["oracle_all_factors"],
            }
        )
    rates = {k: float(np.mean([j[k] for j in judged])) for k in judged[0]}
    row = {
        "steps": steps,
        "strength": strength,
        "edit_passes": 2 * steps,
        **rates,
        "oracle_seeds": list(oracles),
        "by_oracle": {k: [j[k] for j in judged] for k in EDIT_RATES},
        "samples_all_right_seen": None,
        "samples_all_right_heldout": None,
        "frechet_oracle": None,
        "edit_seconds": round(min(edit_s), 1),
        "sample_seconds": None,
    }
    oracle = next(iter(oracles.values()))
    sound = soundness(
        model,
        oracle,
        data,
        split,
        cfg.evaluate.soundness_sources,
        steps,
        cfg.evaluate.guidance,
        seed=cfg.train.seed,
        strength=strength,
    )
    row["soundness"] = {  # Monteiro et al.'s composition (null edit x1, x10) and reversibility, first oracle
        "null_edit_x1_agree": sound["composition"]["1"]["oracle_agreement"],
        "null_edit_x10_agree": sound["composition"]["10"]["oracle_agreement"],
        "null_edit_x10_l1": sound["composition"]["10"]["l1"],
        "reversibility_agree": sound["reversibility"]["oracle_agreement"],
        "sources": sound["sources"],
    }
    if strength < 1 or model.config.evaluate.edit_inversion != "ode":
        return row
    guidance = Guidance(all=cfg.evaluate.sample_guidance, form=cfg.evaluate.guidance_form)
    t0 = time.monotonic()
    s = conditional_samples(
        model, oracle, data, split, n=samples, steps=steps, seed=cfg.train.seed, guidance=guidance
    )
    sample_s = time.monotonic() - t0
    # Frechet distance of unconditioned-by-kind samples: the seen and held-out samples together
    # against as many real images (every combination), in the oracle's feature space
    gen = _last_samples(model, data, split, samples, steps, cfg, guidance)
    real = data.images[np.random.default_rng(cfg.train.seed + 7).choice(len(data), len(gen), replace=False)]
    return {
        **row,
        "samples_all_right_seen": s["seen"]["all_factors"],
        "samples_all_right_heldout": s["heldout"]["all_factors"],
        "frechet_oracle": frechet(oracle_features(oracle, gen), oracle_features(oracle, real)),
        "sample_seconds": round(sample_s, 1),
    }


@torch.no_grad()
def _last_samples(model, data, split, n: int, steps: int, cfg, guidance) -> np.ndarray:
    """``n`` samples from noise under the composed codes of random combinations of the training
    support and the held-out block alike (the Frechet distance's generated set)."""
    rng = np.random.default_rng(cfg.train.seed + 11)
    targets = TargetCodes(model, data, cfg.train.seed + 11)
    grid = data.spec.grid()
    grid = grid[targets.possible(grid)]
    combos = grid[rng.choice(len(grid), n)]
    x_T = torch.randn(
        (n,) + _latent_shape(model), generator=torch.Generator().manual_seed(cfg.train.seed + 11)
    )
    return model.generate(x_T, model.compose(combos, targets.block), steps, guidance)


EDIT_RATES = (
    "edits_all_right",
    "effectiveness",
    "preservation",
    "pairs_all_right",
    "seen_edits_all_right",
    "reconstruction_oracle",
)
SAMPLE_RATES = ("samples_all_right_seen", "samples_all_right_heldout")
PREVIOUS_EDIT = ("ddim", "ode", 0.65, 20)  # (sampler, inversion, strength, steps) of the 40-pass default
EDIT_BUDGET = 10  # network passes per edit (issue 32; it was 50, half of the 100 that edits cost before)


def defaults(rows: list[dict]) -> dict:
    """The default steps of each use, from the rows.

    Samples from noise (strength 1): per solver the fewest steps whose rates are all within 0.01 of
    the reference row's (the first solver's most steps) and whose Frechet distance is within 10% of
    it; ``chosen`` is the cheapest. Edits: the reference is the first solver's most steps at
    strength 1 with the ODE inversion (the method at its best); the candidates are the rows within
    the budget (an edit of at most ``EDIT_BUDGET`` network passes) whose reconstruction MSE is
    within 10% of the reference's, and ``chosen`` is the one whose seen edits are most often all
    right, then the cheapest, then the shallowest (it keeps more of the source): the choice sees
    training combinations only, and the held-out rates
    are what it is reported on. ``against_reference`` gives the chosen row's rates minus the
    reference's."""
    for r in rows:
        r.setdefault("strength", 1.0)
        r.setdefault("precision", "fp32")
        r.setdefault("inversion", "ode")
    everything, rows = rows, [r for r in rows if r["precision"] == "fp32"]
    first = [
        r
        for r in rows
        if r["sampler"] == rows[0]["sampler"] and r["strength"] == 1.0 and r["inversion"] == "ode"
    ]
    ref = max(first, key=lambda r: r["steps"])
    out: dict = {}

    def close(r: dict) -> bool:
        ok = all(r[k] is None or ref[k] is None or abs(r[k] - ref[k]) <= 0.01 for k in SAMPLE_RATES)
        return ok and r["frechet_oracle"] is not None and r["frechet_oracle"] <= 1.1 * ref["frechet_oracle"]

    per = {}
    for sampler in dict.fromkeys(r["sampler"] for r in rows):
        ok = sorted(
            r["steps"]
            for r in rows
            if r["sampler"] == sampler and r["strength"] == 1.0 and r["inversion"] == "ode" and close(r)
        )
        per[sampler] = ok[0] if ok else None
    good = sorted((k, name) for name, k in per.items() if k is not None)
    out["sample"] = {
        "reference": {"sampler": ref["sampler"], "steps": ref["steps"]},
        "steps_by_sampler": per,
        "chosen": {"sampler": good[0][1], "steps": good[0][0]}
        if good
        else {"sampler": ref["sampler"], "steps": ref["steps"]},
    }

    def rank(r):  # seen combinations only: held-out edits play no part in the choice
        return (round(r["seen_edits_all_right"], 4), -r["edit_passes"], -r["strength"])

    candidates = [
        r
        for r in rows
        if r["edit_passes"] <= EDIT_BUDGET and r["reconstruction_mse"] <= 1.1 * ref["reconstruction_mse"]
    ]
    best = max(candidates, key=rank) if candidates else ref
    setting = ("sampler", "inversion", "strength", "steps", "edit_passes")
    out["edit"] = {
        "reference": {k: ref[k] for k in (*setting, *EDIT_RATES)},
        "budget_passes": EDIT_BUDGET,
        "chosen_on": "seen_edits_all_right (then fewer passes, then the lower strength)",
        "chosen": {k: best[k] for k in setting},
        "chosen_rates": {k: best[k] for k in (*EDIT_RATES, "oracle_seeds") if k in best},
        "against_reference": {
            k: round(best[k] - ref[k], 4) for k in EDIT_RATES if best[k] is not None and ref[k] is not None
        },
    }
    before = [r for r in rows if [r[k] for k in setting[:4]] == list(PREVIOUS_EDIT)]
    if before:  # the edit default that the 10-pass budget replaced, judged by the same oracles
        out["edit"]["previous_default"] = {
            **{k: before[0][k] for k in (*setting, "oracle_seeds") if k in before[0]},
            "chosen_minus_previous": {
                k: round(best[k] - before[0][k], 4)
                for k in EDIT_RATES
                if best[k] is not None and before[0][k] is not None
            },
        }
    same = [
        r
        for r in everything
        if r["precision"] == "bf16" and [r[k] for k in setting[:4]] == [best[k] for k in setting[:4]]
    ]
    if same:  # the bf16 lever at the chosen setting: its rates and time against fp32's
        out["edit"]["bf16_against_fp32"] = {
            **{
                k: round(same[0][k] - best[k], 4)
                for k in EDIT_RATES
                if same[0][k] is not None and best[k] is not None
            },
            "edit_seconds": [best["edit_seconds"], same[0]["edit_seconds"]],
        }
    return out


def plot(rows: list[dict], path: Path) -> None:
    """Three panels as one SVG (no plotting library): held-out edits all right, held-out samples
    all right and the Frechet distance, against steps (log scale), one line per solver and edit
    strength (dashed: strength below 1; samples are measured at strength 1 only)."""
    panels = (
        ("edits_all_right", "held-out edits, all factors right"),
        ("samples_all_right_heldout", "held-out samples, all factors right"),
        ("frechet_oracle", "Frechet distance (oracle features)"),
    )
    colours = {"ddim": "#1f5fbf", "dpmsolver++": "#d0561b", "ddpm inversion": "#2a8a3a"}
    line = lambda r: (  # noqa: E731
        "ddpm inversion" if r.get("inversion", "ode") == "ddpm" else r["sampler"],
        r.get("strength", 1.0),
    )
    w, h, pad = 300, 200, 36
    steps = sorted({r["steps"] for r in rows})

    def lx(k):
        return pad + (np.log(k) - np.log(steps[0])) / max(1e-9, np.log(steps[-1]) - np.log(steps[0])) * (
            w - pad - 10
        )

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{3 * w}" height="{h + 20}" '
        'font-family="sans-serif" font-size="10">'
    ]
    for i, (key, title) in enumerate(panels):
        vals = [r[key] for r in rows if r[key] is not None]
        lo, hi = min(vals), max(vals)
        hi = hi if hi > lo else lo + 1
        ly = lambda v: h - pad + 10 - (v - lo) / (hi - lo) * (h - pad - 20)  # noqa: E731
        g = [
            f'<g transform="translate({i * w},0)"><text x="{pad}" y="12">{title}</text>',
            f'<line x1="{pad}" y1="{h - pad + 10}" x2="{w - 10}" y2="{h - pad + 10}" stroke="#888"/>',
            f'<text x="2" y="{ly(hi) + 4:.0f}">{hi:.3g}</text><text x="2" y="{ly(lo):.0f}">{lo:.3g}</text>',
        ]
        g += [f'<text x="{lx(k) - 6:.0f}" y="{h - pad + 24}">{k}</text>' for k in steps]
        for sampler, strength in dict.fromkeys(map(line, rows)):
            colour, dash = colours.get(sampler, "#444"), ' stroke-dasharray="5,3"' if strength < 1 else ""
            pts = sorted(
                (r["steps"], r[key]) for r in rows if line(r) == (sampler, strength) and r[key] is not None
            )
            if pts:
                g.append(
                    f'<polyline fill="none" stroke="{colour}" stroke-width="2"{dash} '
                    f'points="{" ".join(f"{lx(k):.1f},{ly(v):.1f}" for k, v in pts)}"/>'
                )
                g += [f'<circle cx="{lx(k):.1f}" cy="{ly(v):.1f}" r="3" fill="{colour}"/>' for k, v in pts]
                if key == "edits_all_right" and strength < 1:
                    k, v = pts[-1]
                    g.append(
                        f'<text x="{lx(k) - 40:.0f}" y="{ly(v) - 6:.0f}" fill="{colour}">strength '
                        f"{strength:g}</text>"
                    )
        g.append(f'<text x="{pad}" y="{h + 14}">steps (an edit costs 2x steps passes)</text></g>')
        parts += g
    parts += [
        f'<text x="{3 * w - 300 + 95 * j}" y="12" fill="{c}">{name}</text>'
        for j, (name, c) in enumerate(colours.items())
    ]
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samplers", default="ddim,dpmsolver++")
    ap.add_argument(
        "--steps",
        default="ddim=5,10,20,50,100;dpmsolver++=5,10,20,50",
        help="step counts per solver (or one list for all)",
    )
    ap.add_argument(
        "--strengths", default="1", help="edit strengths (comma-separated; samples are measured at 1 only)"
    )
    ap.add_argument(
        "--inversions",
        default="ode",
        help="edit inversions, comma-separated: ode (the solver's inversion), ddpm (edit-friendly)",
    )
    ap.add_argument(
        "--oracle-seeds",
        default="0,1,2",
        help="seeds of the oracles that judge the edits (rates are their mean; samples: the first)",
    )
    ap.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16"],
        help="denoiser.inference_precision of these rows (defaults are chosen among fp32 rows)",
    )
    ap.add_argument(
        "--per-factor", type=int, default=100, help="edits per factor and kind (the quickstart's 100)"
    )
    ap.add_argument(
        "--samples", type=int, default=200, help="samples from noise per kind (the quickstart's 200)"
    )
    ap.add_argument("--work", default="runs/bench-nfe")
    ap.add_argument(
        "--defaults-only",
        action="store_true",
        help="recompute defaults and the plot from the results file, then stop",
    )
    a = ap.parse_args()
    if a.defaults_only:
        import json

        saved = json.loads(OUT.read_text())
        saved["defaults"] = defaults(saved["rows"])
        atomic_write_json(OUT, saved)
        plot(saved["rows"], OUT.with_suffix(".svg"))
        print(json.dumps(saved["defaults"], indent=1))
        return
    torch.set_num_threads(2)
    shipped = pretrained_run(32)
    if shipped is None:
        sys.exit("the shipped 32x32 quickstart model is missing from the package")
    run = Path(a.work) / "quickstart"
    if not (run / "model").is_dir():
        shutil.copytree(shipped, run, dirs_exist_ok=True)
    cfg, model = load_model(run)
    data, _, _ = prepare_data(cfg)
    split = make_split(data.spec, cfg.split)
    oracles, accs = {}, {}
    for seed in map(int, a.oracle_seeds.split(",")):
        oracles[seed], accs[seed] = get_oracle(run, cfg, data, progress=True, seed=seed)
    acc = accs[next(iter(accs))]
    import json

    key = lambda r: (  # noqa: E731
        r["sampler"],
        r.get("inversion", "ode"),
        r.get("strength", 1.0),
        r["steps"],
        r.get("precision", "fp32"),
    )
    model.config.denoiser.inference_precision = a.precision
    rows = json.loads(OUT.read_text())["rows"] if OUT.is_file() else []
    per = dict(part.split("=") for part in a.steps.split(";")) if "=" in a.steps else {}
    settings = [
        (inversion, strength, sampler)
        for inversion in a.inversions.split(",")
        for strength in map(float, a.strengths.split(","))
        for sampler in (a.samplers.split(",") if inversion == "ode" else ["ddim"])
    ]  # the DDPM inversion's chain is DDPM's (DDIM with eta 1) whatever the solver
    for inversion, strength, sampler in settings:
        model.config.denoiser.sampler = sampler
        model.config.evaluate.edit_inversion = inversion
        for steps in map(int, per.get(sampler, a.steps).split(",")):
            row = {
                "sampler": sampler,
                "inversion": inversion,
                "precision": a.precision,
                **measure(model, oracles, data, split, cfg, steps, a.per_factor, a.samples, strength),
            }
            row["command"] = "python " + shlex.join(sys.argv)
            rows = [r for r in rows if key(r) != key(row)] + [row]
            print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
            atomic_write_json(
                OUT,
                {
                    "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, "
                    f"torch {torch.__version__}",
                    "date": time.strftime("%Y-%m-%d"),
                    "model": "shipped quickstart model (tokens adapter, composition split)",
                    "oracle_accuracy": acc,
                    "oracle_accuracy_by_seed": accs,
                    "rows": rows,
                    "defaults": defaults(rows),
                },
            )
    plot(rows, OUT.with_suffix(".svg"))
    print(f"wrote {OUT}; defaults {defaults(rows)}")


if __name__ == "__main__":
    main()
