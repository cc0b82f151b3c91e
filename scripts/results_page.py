"""Write docs/results.md, every measured table, from the benchmark results in benchmarks/results/*.json.

    python scripts/results_page.py           # writes docs/results.md
    python scripts/results_page.py --check   # exit 1 if docs/results.md differs from what it would write

The page is a pure function of the JSON files (a file that records no command gets the one its
benchmark script's docstring gives, kept below): no clock, no machine, no factordiff import. Numbers are
printed with fixed formats (rates with 3 decimals, throughputs to the image), so regenerating
from the same files gives the same bytes. Private run folders in recorded commands
(``runs/e<N>``) are printed as ``runs/cells``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PAGE = ROOT / "docs" / "results.md"


# ---------------------------------------------------------------------------------------------
# formatting


def f3(x) -> str:
    """A rate or score: 3 decimals; '' for a missing value."""
    if x is None:
        return ""
    s = f"{x:.3f}"
    return "0.000" if s == "-0.000" else s


def f2(x) -> str:
    if x is None:
        return ""
    s = f"{x:.2f}"
    return "0.00" if s == "-0.00" else s


def signed(x, digits: int = 3) -> str:
    s = f"{x:+.{digits}f}"
    return s.replace("-0." + "0" * digits, "+0." + "0" * digits)


def rate(x) -> str:
    """Images (or rows) per second: to the unit from 100 up, one decimal below."""
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def mean(v: list[float]) -> float:
    return math.fsum(v) / len(v)


def spread(v: list[float]) -> str:
    """Mean over seeds with the range in brackets (the range only when there are several)."""
    return f"{mean(v):.3f}" + (f" ({min(v):.2f}-{max(v):.2f})" if len(v) > 1 else "")


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out + [""]


def bold(row: list[str]) -> list[str]:
    return [f"**{c}**" if c not in ("", "-") else c for c in row]


PRIVATE_RUN = re.compile(r"runs/e\d+")


def clean(text: str) -> str:
    """A recorded command or note with private run folders replaced by ``runs/cells``."""
    return PRIVATE_RUN.sub("runs/cells", text)


def code(command: str) -> str:
    """A recorded command as inline code; a trailing '  (...)' or '  # ...' remark stays prose."""
    command = clean(command)
    for mark in ("  (", "  # "):
        if mark in command:
            head, tail = command.split(mark, 1)
            tail = ("(" + tail) if mark == "  (" else tail
            return f"`{head.strip()}` {tail.strip()}"
    return f"`{command.strip()}`"


# The command of a results file that records none, as its benchmark script's docstring gives it.
DOCSTRING_COMMANDS = {"speed.json": "python benchmarks/speed.py [--threads N]"}


def provenance(d: dict, source: str, commands: list[str] | None = None) -> list[str]:
    """The lines under a heading: command(s), JSON file, date and machine where recorded."""
    if commands is None:
        commands = [d["command"]] if "command" in d else []
    lines = []
    if len(commands) == 1:
        lines += [f"Command: {code(commands[0])}", ""]
    elif commands:
        lines.append("Commands:")
        lines += [f"- {code(c)}" for c in commands]
        lines.append("")
    facts = [f"`benchmarks/results/{source}`"]
    if d.get("date"):
        facts.append(f"date {d['date']}")
    machine = d.get("machine")
    if machine:
        machine = machine.split(";")[0].strip()
        if "threads" in d and "thread" not in machine:
            machine += f", {d['threads']} threads"
        if d.get("torch") and "torch" not in machine:
            machine += f", torch {d['torch']}"
        facts.append(f"machine: {machine}")
    lines.append("Source: " + "; ".join(facts) + ".")
    return lines + [""]


def load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


# ---------------------------------------------------------------------------------------------
# sections


def nfe_section() -> list[str]:
    d = load("nfe.json")
    chosen = d["defaults"]["edit"]["chosen"]
    ref = d["defaults"]["edit"]["reference"]
    out: list[str] = []
    commands = list(dict.fromkeys(r["command"] for r in d["rows"]))
    out += provenance(d, "nfe.json", commands)
    out += [
        f"Model: {d['model']}. Every row is the quickstart's evaluation at one solver, edit strength and",
        "step count: one-factor edits into seen and into held-out combinations, two-factor edits into a",
        "held-out pair, and samples from noise (in the strength-1 rows only). The strength is how far up",
        "the noise schedule an edit inverts its source (`evaluate.edit_strength`); an edit costs 2 x steps",
        "network passes. The inversion is the solver's (ODE) or the edit-friendly DDPM inversion",
        '(`evaluate.edit_inversion = "ddpm"`: one noise map per step, exact at any step count).',
        "Rates are oracle-judged 'all right' shares (every factor read as requested), the mean over the",
        "oracles of the row's `oracle_seeds` (one oracle where the column says 1; each retrained oracle",
        "judges about 1 edit in 70 differently). The first oracle reads clean images with accuracy "
        + ", ".join(f"{k} {f3(v)}" for k, v in sorted(d["oracle_accuracy"].items()))
        + ". Bold: the default edit setting.",
        "",
    ]

    def key(r):
        return (
            r.get("inversion", "ode") != "ode",
            r["sampler"],
            r.get("precision", "fp32") != "fp32",
            -r["strength"],
            r["steps"],
        )

    def is_default(r):
        return [r.get(k, "ode") for k in ("sampler", "inversion", "strength", "steps")] == [
            chosen.get(k, "ode") for k in ("sampler", "inversion", "strength", "steps")
        ] and r.get("precision", "fp32") == "fp32"

    rows = []
    for r in sorted(d["rows"], key=key):
        row = [
            (
                "DDPM inversion"
                if r.get("inversion", "ode") == "ddpm"
                else {"ddim": "DDIM", "dpmsolver++": "DPM-Solver++(2M)"}[r["sampler"]]
            )
            + ("" if r.get("precision", "fp32") == "fp32" else f", {r['precision']}"),
            str(len(r.get("oracle_seeds", [0]))),
            f"{r['strength']:g}",
            str(r["steps"]),
            str(r["edit_passes"]),
            f3(r["edits_all_right"]),
            f3(r["effectiveness"]),
            f3(r["preservation"]),
            f2(r["pairs_all_right"]),
            f3(r["seen_edits_all_right"]),
            f3(r["reconstruction_oracle"]),
            f"{r['reconstruction_mse']:.2e}",
            f3(r["samples_all_right_seen"]) or "-",
            f3(r["samples_all_right_heldout"]) or "-",
            f"{r['frechet_oracle']:.0f}" if r["frechet_oracle"] is not None else "-",
            f"{r['edit_seconds']:.1f}",
        ]
        rows.append(bold(row) if is_default(r) else row)
    out += table(
        [
            "solver",
            "oracles",
            "strength",
            "steps",
            "passes",
            "held-out edits all right",
            "effectiveness",
            "preservation",
            "two-factor held-out",
            "seen edits",
            "reconstruction read right",
            "reconstruction MSE",
            "samples seen",
            "samples held-out",
            "Frechet (oracle features)",
            "edit seconds",
        ],
        rows,
    )
    s = d["defaults"]["sample"]
    vs = d["defaults"]["edit"]["against_reference"]
    names = [
        ("edits_all_right", "held-out edits all right"),
        ("effectiveness", "effectiveness"),
        ("preservation", "preservation"),
        ("pairs_all_right", "two-factor held-out edits"),
        ("seen_edits_all_right", "seen edits all right"),
        ("reconstruction_oracle", "reconstruction read right"),
    ]
    chosen_row = next(r for r in d["rows"] if is_default(r))
    inversion = chosen.get("inversion", "ode")
    out += [
        f"Defaults chosen from these rows (`defaults` in the JSON): samples from noise take "
        f"{s['chosen']['sampler'].upper()} at {s['chosen']['steps']} steps (`evaluate.sample_steps`; "
        "reference "
        f"{s['reference']['sampler'].upper()} at {s['reference']['steps']} steps); edits take the "
        + ("DDPM inversion" if inversion == "ddpm" else f"{chosen['sampler'].upper()} inversion")
        + f", strength {chosen['strength']:g}, {chosen['steps']} steps, "
        f"{chosen['edit_passes']} passes (`evaluate.edit_inversion`, `evaluate.edit_strength`, "
        "`evaluate.steps`), the setting of at most "
        f"{d['defaults']['edit']['budget_passes']} passes whose seen edits are most often all right "
        "(held-out edits play no part in the choice). Beside the reference (ODE inversion, strength "
        f"{ref['strength']:g}, {ref['steps']} steps, {ref['edit_passes']} passes):",
        "",
    ]
    out += table(
        ["figure", "default edit", "reference", "difference"],
        [[label, f3(chosen_row[k]), f3(ref[k]), signed(vs[k], 4)] for k, label in names],
    )
    sound = [r for r in sorted(d["rows"], key=key) if r.get("soundness")]
    if sound:
        out += [
            "Soundness (Monteiro et al. 2023, the quickstart's measure, 32 training images, the first",
            "oracle): the share of images whose every factor the oracle still reads as the source's after",
            "the null edit (invert, regenerate under the same codes) once and ten times in a row, and after",
            "an edit of one factor and back; the exact DDPM inversion returns the latents exactly, so ten",
            "null edits compound the autoencoder's round trip, which an ODE inversion partly undoes.",
            "",
        ]
        out += table(
            ["inversion", "strength", "steps", "null edit x1", "null edit x10", "x10 pixel L1", "A->B->A"],
            [
                [
                    "DDPM" if r.get("inversion") == "ddpm" else r["sampler"].upper(),
                    f"{r['strength']:g}",
                    str(r["steps"]),
                    f3(r["soundness"]["null_edit_x1_agree"]),
                    f3(r["soundness"]["null_edit_x10_agree"]),
                    f"{r['soundness']['null_edit_x10_l1']:.4f}",
                    f3(r["soundness"]["reversibility_agree"]),
                ]
                for r in sound
            ],
        )
    prev = d["defaults"]["edit"].get("previous_default")
    if prev:
        out += [
            f"Against the default it replaced ({prev['sampler'].upper()} "
            f"{prev['inversion'].upper()} inversion, strength {prev['strength']:g}, "
            f"{prev['steps']} steps, {prev['edit_passes']} passes, judged by "
            f"the same {len(prev.get('oracle_seeds', [0]))} oracles), default minus previous: "
            + ", ".join(f"{label} {signed(prev['chosen_minus_previous'][k], 4)}" for k, label in names)
            + ".",
            "",
        ]
    bf = d["defaults"]["edit"].get("bf16_against_fp32")
    out += (
        [
            'bf16 autocast of the denoiser\'s passes (`denoiser.inference_precision = "bf16"`) at the '
            f"default edit setting: edit seconds {bf['edit_seconds'][0]:.1f} in fp32 against "
            f"{bf['edit_seconds'][1]:.1f} in bf16; differences in rates (bf16 - fp32): "
            + ", ".join(f"{label} {signed(bf[k], 4)}" for k, label in names)
            + ".",
            "",
        ]
        if bf
        else [
            'bf16 autocast of the denoiser\'s passes (`denoiser.inference_precision = "bf16"`) is measured '
            "in the bf16 row of the table, not at today's default setting.",
            "",
        ]
    )
    out += [
        "Plot of these rows, written by `python benchmarks/nfe.py` (`python benchmarks/nfe.py",
        "--defaults-only` redraws it from the rows in the file):",
        "",
        "![quality against steps](../benchmarks/results/nfe.svg)",
        "",
    ]
    return out


def generalization_section() -> list[str]:
    d = load("generalization.json")
    out = provenance(d, "generalization.json")
    out += [
        "Each row gives the denoiser the same budget and is evaluated as the quickstart is (samples",
        "from noise under joint guidance, edits guided on the changed factor). Rows without a recorded",
        "source of held-out codes were measured with edits inverted to pure noise (strength 1), before",
        "the part-way default of the section above; the others at that default (strength 0.65, 20",
        "steps each way). Probe columns: a linear read-out of the distiller's codes on held-out",
        "images, fitted on training images (mean R^2 over the factors where it is defined; error in",
        "units of each factor's range).",
        "",
    ]
    rows, cmds = [], []
    for r in d["rows"]:
        rows.append(
            [
                r["split"],
                r["heldout"],
                r["adapter"]
                + "".join(f", {k} = {json.dumps(v)}" for k, v in sorted(r.get("levers", {}).items())),
                "joint" if r["train_base"] else "frozen",
                r["encoders"],
                f"{r['minutes']:g}",
                f"{r['steps']['denoiser']:,}",
                f3(r["samples_all_right_seen"]),
                f3(r["samples_all_right_heldout"]),
                f3(r["edits_all_right"]),
                f3(r["effectiveness"]),
                f3(r["preservation"]),
                f3(r["pairs_all_right"]),
                f3(r["probe_r2"]),
                f3(r["probe_mae"]),
                "-"
                if r.get("codes_from_reference") is None
                else "from a real image"
                if r["codes_from_reference"]
                else "from the value"
                if r.get("codes_from_value")
                else "prototypes",
            ]
        )
        lever = "".join(f", {k} = {json.dumps(v)}" for k, v in sorted(r.get("levers", {}).items()))
        cmds.append(f"- {r['split']}, {r['adapter']}{lever}: {code(r['command'])}")
    out += table(
        [
            "split",
            "held out",
            "adapter",
            "base",
            "encoders",
            "denoiser minutes",
            "denoiser steps",
            "samples all right, seen",
            "samples all right, held-out",
            "held-out edits all right",
            "effectiveness",
            "preservation",
            "two-factor held-out edits",
            "probe R^2 (held-out)",
            "probe error (held-out)",
            "held-out sample codes",
        ],
        rows,
    )
    out += [
        "",
        "Held-out sample codes: where the codes of held-out values came from (a real image with the "
        "value, the value itself for a continuous factor, or training prototypes); '-': measured "
        "before this was recorded, when a value no training image had took a real image's code.",
        "",
    ]
    out += ["The fit of each row:", ""] + cmds + [""]
    return out


def distill_section() -> list[str]:
    d = load("distill_heldout.json")
    out = provenance(d, "distill_heldout.json", d["commands"])
    out += [
        "The quickstart's distiller alone, trained on the training images of the composition split",
        "(object hue x shape block held out), read on seen and on held-out images: its own head's",
        "accuracy and the R^2 of a linear read-out, averaged over the held-out factors"
        f" ({', '.join(d['rows'][0]['held_factors'])}). {d['note'][0].upper()}{d['note'][1:]}.",
        "",
    ]
    label = {
        "baseline": "as shipped (adversary weight 0.1)",
        "adversary": "adversary weight 0.5",
        "pooled": "map mean joined to the flattened map (removed)",
    }
    rows = []
    for name, m in d["mean"].items():
        rows.append(
            [
                label.get(name, name),
                ", ".join(str(s) for s in m["seeds"]),
                f"{m['seen_accuracy']:.4f}",
                f"{m['heldout_accuracy']:.4f}",
                f"{m['seen_r2']:.4f}",
                f"{m['heldout_r2']:.4f}",
            ]
        )
    out += table(
        [
            "distiller (mean over seeds)",
            "seeds",
            "accuracy, seen",
            "accuracy, held-out",
            "R^2, seen",
            "R^2, held-out",
        ],
        rows,
    )
    rows = []
    for r in sorted(d["rows"], key=lambda r: (r["variant"], r["seed"])):
        rows.append(
            [
                r["variant"],
                str(r["seed"]),
                ", ".join(f"`{k}={v}`" for k, v in sorted(r["overrides"].items())) or "-",
                f"{r['minutes']:.1f}",
                f3(r["seen_accuracy"]),
                f3(r["heldout_accuracy"]),
                f3(r["seen_r2"]),
                f3(r["heldout_r2"]),
            ]
        )
    out += table(
        [
            "variant",
            "seed",
            "overrides",
            "minutes",
            "accuracy, seen",
            "accuracy, held-out",
            "R^2, seen",
            "R^2, held-out",
        ],
        rows,
    )
    by = {(r["variant"], r["seed"]): r for r in d["rows"]}
    seeds = sorted(s for v, s in by if v == "adversary" and ("baseline", s) in by)
    if seeds:
        acc = [by["adversary", s]["heldout_accuracy"] - by["baseline", s]["heldout_accuracy"] for s in seeds]
        r2 = [by["adversary", s]["heldout_r2"] - by["baseline", s]["heldout_r2"] for s in seeds]
        rows = [[str(s), signed(a), signed(b)] for s, a, b in zip(seeds, acc, r2)]
        rows.append(["mean", signed(mean(acc)), signed(mean(r2))])
        out += ["Paired by seed, adversary weight 0.5 minus the shipped distiller, on held-out images:", ""]
        out += table(["seed", "accuracy", "R^2"], rows)
    return out


LATENT_COLUMNS = [
    ("dci_disentanglement", "DCI dis."),
    ("dci_completeness", "DCI compl."),
    ("dci_informativeness_test", "DCI info. (test)"),
    ("mig", "MIG"),
    ("sap", "SAP"),
    ("factorvae", "FactorVAE"),
    ("betavae", "BetaVAE"),
    ("modularity", "modularity"),
    ("explicitness", "explicitness"),
]


LATENT_ENTRIES = [
    ("distiller", "distiller"),
    ("unsupervised", "unsupervised encoder"),
    ("unsupervised_raw", "unsupervised encoder before its basis"),
    ("distiller_64", "distiller"),
    ("unsupervised_64", "unsupervised encoder"),
]


def latent_section() -> list[str]:
    d = load("latent.json")
    entries = [(key, name) for key, name in LATENT_ENTRIES if key in d]
    out = provenance(d, "latent.json", list(dict.fromkeys(d[key]["command"] for key, _ in entries)))
    st = d[entries[0][0]]["raw"]["settings"]
    out += [
        f"Codes of {d['points']:,} fresh replica images (at each model's size) scored with",
        f"disentanglement_lib's protocols (seed {st['seed']}; DCI {st['dci']['num_train']:,} / "
        f"{st['dci']['num_test']:,} points, MIG {st['mig']['num_bins']} bins, FactorVAE batches of "
        f"{st['factorvae']['batch_size']} with dimensions of std < {st['factorvae']['prune_std']} pruned),",
        "on all dimensions and with each code block reduced to its first principal component. Nothing",
        "is held out.",
        f"Note: {d['note']}; the published rows are for the original Shapes3D (64x64) and are",
        "indications only.",
        "",
    ]
    rows = []
    for key, name in entries:
        p = d[key]
        size = f"{p['size']}x{p['size']}"
        for reading, rname in (
            ("raw", f"all {p['raw']['settings']['code_dims']} dims"),
            ("first_pc", "first PC per block"),
        ):
            rows.append([f"{name} {size}, {rname}"] + [f3(p[reading][k]) for k, _ in LATENT_COLUMNS])
    for name, figs in sorted(d["published_shapes3d"].items()):
        rows.append([f"{name} (Shapes3D, published)"] + [f3(figs.get(k)) for k, _ in LATENT_COLUMNS])
    out += table(["codes"] + [c for _, c in LATENT_COLUMNS], rows)
    for key, name in entries:
        p = d[key]
        cfg = ", ".join(f"`{k} = {json.dumps(v)}`" for k, v in sorted(p["config"].items()))
        if "codes" in p:
            out.append(
                f"- {name} {p['size']}x{p['size']}: the same shipped `{p['model']}` with its encoder's "
                f"output read before the code's basis (`unsupervised.unmix`): {p['codes']}. The basis "
                "whitens each segment, so after it a segment has no first principal component to speak "
                "of: its first-PC row reads one arbitrary direction."
            )
        elif "model" in p:
            out.append(
                f"- {name} {p['size']}x{p['size']}: the shipped `{p['model']}`, scored as shipped "
                f"(its README names the training command); `{key.split('_')[0]}` config {cfg}."
            )
        else:
            out.append(
                f"- {name} {p['size']}x{p['size']}: trained in {p['train_seconds'] / 60:.1f} minutes; "
                f"config {cfg}."
            )
    levers = d.get("unsupervised_levers", [])
    if levers:
        out += [
            "",
            "Levers of the unsupervised encoder (`--retrain --set KEY=VALUE`), each trained at the same",
            "budget beside the row without levers (`--set none`), one seed each; all dimensions, after the",
            "code's basis (`unsupervised.unmix`, `ica` unless a lever sets it):",
            "",
        ]
        rows = [
            [
                ", ".join(f"`{k} = {json.dumps(v)}`" for k, v in sorted(r["levers"].items())) or "none",
                f"{r['size']}x{r['size']}",
                f"{r['train_seconds'] / 60:.0f}",
                code(r["command"]),
            ]
            + [f3(r["raw"][k]) for k in ("dci_disentanglement", "mig", "factorvae")]
            for r in levers
        ]
        out += table(["levers", "size", "minutes", "command", "DCI dis.", "MIG", "FactorVAE"], rows)
    return out + [""]


def profiles_markdown(runs: list[dict]) -> list[str]:
    """Per dataset and model variant, each method's figures averaged over the tasks of a kind, then
    over seeds (the min-max over seeds in brackets); retrieval mAP per method."""
    groups: dict = {}
    for r in runs:
        g = groups.setdefault((r["dataset"], r["residual"]), {})
        per_kind: dict = {}
        for task in r["metrics"]["tasks"]:
            for method, figs in task.get("methods", {}).items():
                row = per_kind.setdefault(task["kind"], {}).setdefault(method, {})
                row.setdefault("mean error", []).append(figs["mean_error"])
                row.setdefault("energy", []).append(figs["energy"])
                if "c2st_auc" in figs:
                    row.setdefault("two-sample AUC", []).append(figs["c2st_auc"])
                    row.setdefault("spread ratio", []).append(figs["spread_ratio"])
                reads = [v for k, v in figs.items() if k.startswith("read_as_target")]
                keeps = [v for k, v in figs.items() if k.startswith("read_as_source")]
                if reads:
                    row.setdefault("read as target", []).append(mean(reads))
                if keeps:
                    row.setdefault("biology kept", []).append(mean(keeps))
                if "moa_hits" in figs:
                    row.setdefault("MoA hits", []).append(figs["moa_hits"])
            if "floor" in task:
                row = per_kind.setdefault(task["kind"], {}).setdefault("replicate floor", {})
                row.setdefault("mean error", []).append(task["floor"]["mean_error"])
                row.setdefault("energy", []).append(task["floor"]["energy"])
                row.setdefault("two-sample AUC", []).append(task["floor"]["c2st_auc"])
                row.setdefault("spread ratio", []).append(task["floor"]["spread_ratio"])
            for _, v in sorted(task.get("real_heldout_read_as_target", {}).items()):
                per_kind.setdefault(task["kind"], {}).setdefault("real held-out rows", {}).setdefault(
                    "read as target", []
                ).append(v)
            if "real_heldout_moa_hits" in task:
                per_kind.setdefault(task["kind"], {}).setdefault("real held-out rows", {}).setdefault(
                    "MoA hits", []
                ).append(task["real_heldout_moa_hits"])
        for kind, methods in per_kind.items():
            for method, figs in methods.items():
                for k, v in figs.items():
                    g.setdefault(kind, {}).setdefault(method, {}).setdefault(k, []).append(mean(v))
        for part in ("retrieval", "retrieval_heldout"):
            label = (
                "retrieval of training compounds"
                if part == "retrieval"
                else "retrieval of held-out compounds"
            )
            for name, v in r["metrics"].get(part, {}).items():
                g.setdefault(label, {}).setdefault(name, {}).setdefault("mAP", []).append(v["map"])
    lines: list[str] = []
    for (dataset, residual), g in groups.items():
        for kind, methods in g.items():
            cols = list(dict.fromkeys(c for m in methods.values() for c in m))
            n = len(next(iter(next(iter(methods.values())).values())))
            lines += [
                f"**{dataset}**, `profiles.residual = {residual}`, {kind} ({n} seed{'s' if n > 1 else ''})",
                "",
            ]
            lines += table(
                ["method"] + cols,
                [[m] + [spread(v[c]) if c in v else "" for c in cols] for m, v in methods.items()],
            )
    return lines


def profiles_per_seed(runs: list[dict], dataset: str = "bbbc021") -> list[str]:
    """Every seed's figures of the dataset's batch transfers (residual none): each method, the
    replicate floor and the real held-out rows' reading."""
    rows = []
    for r in runs:
        if r["dataset"] != dataset or r["residual"] != "none":
            continue
        for task in r["metrics"]["tasks"]:
            if task["kind"] != "transfer" or "floor" not in task:
                continue
            real = mean(list(task.get("real_heldout_read_as_target", {}).values()))
            for method, figs in [*task["methods"].items(), ("replicate floor", task["floor"])]:
                reads = [v for k, v in figs.items() if k.startswith("read_as_target")]
                rows.append(
                    [
                        str(r["seed"]),
                        method,
                        f3(figs["mean_error"]),
                        f3(figs["energy"]),
                        f3(figs["c2st_auc"]),
                        f3(mean(reads)) if reads else "",
                        f3(real) if method == "model" else "",
                    ]
                )
    if not rows:
        return []
    head = [
        "seed",
        "method",
        "mean error",
        "energy",
        "two-sample AUC",
        "read as target",
        "real held-out read",
    ]
    return [f"**{dataset}**, batch transfer, every seed (`profiles.residual = none`)", ""] + table(head, rows)


def profiles_start_selection(runs: list[dict]) -> list[str]:
    """Per run that chose ``profiles.start`` on validation cells: each start's criteria met and mean
    energy distance on those cells, and the start chosen."""
    rows = []
    for r in runs:
        sel = r.get("start_selection")
        if not sel:
            continue
        sc = sel["score"]
        rows.append(
            [
                r["dataset"],
                r["residual"],
                str(r["seed"]),
                *(f"{sc[k]['criteria_met']} / {f3(sc[k]['energy'])}" for k in ("source", "noise")),
                sel["chosen"],
            ]
        )
    if not rows:
        return []
    cells = "; ".join(
        f"`{c}`" for c in next(r for r in runs if r.get("start_selection"))["start_selection"]["cells"]
    )
    head = [
        "dataset",
        "profiles.residual",
        "seed",
        "source: criteria / energy",
        "noise: criteria / energy",
        "chosen",
    ]
    return [
        "### Where the regeneration starts, chosen on training rows",
        "",
        "`profiles.start` is `source` (the source well's DDIM inversion: its own variation carried over)",
        "or `noise` (fresh seeded noise: a new well of the target condition). Each run first fits a",
        f"second model with the validation cells ({cells}) held out as well, regenerates them from each",
        "start beside every baseline, and counts the criteria (lower mean error, lower energy, AUC",
        "nearer 0.5 than every baseline; summed over the cells) that each start meets; more wins,",
        "ties to the lower energy. The held-out condition of record plays no part in the choice.",
        "",
    ] + table(head, rows)


def profiles_sweep(sweep: dict) -> list[str]:
    by: dict = {}
    for r in sweep["rows"]:
        d = by.setdefault((r["condition"], r["guidance_technical"]), {})
        for k, v in r.items():
            if k in ("mean_error", "energy"):
                d.setdefault(k.replace("_", " "), []).append(v)
            elif k.startswith("read_as_target"):
                d.setdefault("read as target", []).append(v)
            elif k.startswith("read_as_source"):
                d.setdefault("biology kept", []).append(v)
    cols = ["mean error", "energy", "read as target", "biology kept"]
    conditions = sorted({c for c, _ in by})
    lead = ["weight"] if len(conditions) == 1 else ["condition", "weight"]
    rows = [
        ([f"{w:g}"] if len(conditions) == 1 else [cond, f"{w:g}"])
        + [spread(d[k]) if k in d else "" for k in cols]
        for (cond, w), d in by.items()
    ]
    return table(lead + cols, rows)


def profiles_section() -> list[str]:
    d = load("profiles.json")
    out = provenance(d, "profiles.json")
    datasets: dict = {}
    timing: dict = {}
    for r in d["runs"]:
        m = r["metrics"]
        kinds: dict = {}
        for t in m["tasks"]:
            kinds[t["kind"]] = kinds.get(t["kind"], 0) + 1
        datasets.setdefault(
            r["dataset"],
            [
                r["dataset"],
                f"{m['cleaning']['rows']:,}",
                f"{m['cleaning']['features']:,}",
                f"{m['rows']['train']:,}",
                f"{m['rows']['heldout']:,}",
                m["normalization"]["normalize"],
                str(kinds.get("transfer", 0)),
                str(kinds.get("unseen", 0)),
            ],
        )
        t = timing.setdefault((r["dataset"], r["residual"]), {"fit": [], "evaluate": [], "steps": set()})
        t["fit"].append(r["fit_seconds"])
        t["evaluate"].append(r["evaluate_seconds"])
        t["steps"].add(r["steps"])
    out += [
        "BBBC021: per-well profiles in weekly batches, the DMSO wells of one week held out (a transfer)",
        "together with one compound per mechanism of action (unseen compounds), no normalisation (the",
        "weeks' batch effects are real). LINCS: one plate, the top dose of some compounds held out and",
        "regenerated from their other doses (transfers), and some compounds held out entirely. A",
        "*transfer* is a condition with a technical factor (or a dose) regenerated from other rows; an",
        "*unseen* perturbation is generated from same-plate controls with its dose and batch, its own",
        "code absent. Every learner sees training rows only, feature selection and plate statistics",
        "included; MoA is not a conditioning factor (it would tell every method the answer). The oracles",
        "(logistic regressions) that read a task's rows are fitted on every real row except the held-out",
        "condition's, and read the real held-out rows too.",
        "",
    ]
    out += table(
        [
            "dataset",
            "rows",
            "features",
            "training rows",
            "held-out rows",
            "normalisation",
            "transfer tasks",
            "unseen tasks",
        ],
        list(datasets.values()),
    )
    out += [
        "Methods: the model, and baselines fitted on training rows (`factordiff.evaluate.baselines`,",
        "`factordiff.evaluate.batch_correction`): *copy* the source, *mean shift* (the training mean of the",
        "target's values of the set factors minus the source's, both on rows matching the source's other",
        "factors where such rows exist; else over all rows; else the sum of per-factor differences, the",
        "share in `mean_shift_fallback`), *nearest* training condition (the categorical factors that are",
        "not set equal first, then the set ones, then the nearest dose or time), an additive *linear*",
        "(ridge) model, and for batch transfers *combat* (ComBat to the target batch as reference),",
        "*sphering* (whiten with the source batch's control wells, colour with the target's) and",
        "*harmony* (Harmony in PCA space plus the target batch's mean correction). The model runs at its",
        "defaults except `profiles.start`, chosen on validation cells of training rows (below): nothing",
        "is tuned on held-out wells. Figures, averaged",
        "over the tasks of a kind, then over seeds (the range over seeds in brackets): *mean error*, the",
        "mean over features of |mean(regenerated) - mean(real held-out rows)|, features standardised by",
        "the training rows; *energy*, the energy distance in the same units, without self-pairs (so it",
        "can be slightly negative; `factordiff.evaluate.distances`); *read as target*, the share of",
        "regenerated rows that an oracle reads",
        "as the target value of the changed factor; *biology kept*, the share still read as the source's",
        "values of the other factors; *MoA hits*, the share of generated rows whose nearest training",
        "profile (cosine) has their MoA; *two-sample AUC*, a classifier's out-of-fold ROC AUC telling the",
        "rows from the real held-out rows (0.5: indistinguishable); *spread ratio*, their spread over the",
        "real rows' (well under 1: mode collapse); retrieval *mAP*, copairs mAP in its standard setup",
        "(positives: wells of the same compound and dose; negatives: control wells on the same plate),",
        "for training and held-out compounds (*copy_control_null*: the control wells unchanged). The",
        "*replicate floor* is the real held-out rows, one random half against the other; the *real",
        "held-out rows* line is how often the same oracle reads them as the target. Time of each fit and",
        "evaluation:",
        "",
    ]
    rows = [
        [
            ds,
            res,
            str(len(t["fit"])),
            ", ".join(f"{s:,}" for s in sorted(t["steps"])),
            spread_s(t["fit"]),
            spread_s(t["evaluate"]),
        ]
        for (ds, res), t in timing.items()
    ]
    out += table(["dataset", "profiles.residual", "seeds", "steps", "fit seconds", "evaluate seconds"], rows)
    out += profiles_markdown(d["runs"])
    out += profiles_per_seed(d["runs"])
    out += profiles_per_seed(d["runs"], "bbbc021 feature_select")
    out += profiles_start_selection(d["runs"])
    sw = d.get("guidance_sweep")
    if sw:
        conditions = sorted({r["condition"] for r in sw["rows"]})
        seeds = sorted({r["seed"] for r in sw["rows"]})
        out += [
            "### Guidance on the changed batch",
            "",
            f"Command: {code(sw['command'])}; date {sw['date']}. The transfer ("
            + "; ".join(f"`{c}`" for c in conditions)
            + ") of the bbbc021 `profiles.residual = none` runs (seeds "
            + ", ".join(str(x) for x in seeds)
            + ") regenerated"
            " at each guidance weight on the changed technical factor; weight 1 is the model row above.",
            "",
        ]
        out += profiles_sweep(sw)
    if "dose_interpolation" in d:
        out += profiles_dose(d["dose_interpolation"])
    out += [
        "### The fits",
        "",
        "Seed 0 of each dataset (the other seeds differ only in `--seed`; the ridge variant only in",
        '`profiles.residual = "ridge"` in its config):',
        "",
    ]
    seen = set()
    for r in d["runs"]:
        if r["dataset"] in seen or r["residual"] != "none":
            continue
        seen.add(r["dataset"])
        out.append(f"- {r['dataset']}: {code(r['command'])}")
    return out + [""]


def profiles_dose(dose: dict) -> list[str]:
    """The LINCS dose held out for every compound: each method's mean error and energy over the
    compounds, and how often the model is nearer than each baseline."""
    sm = dose["summary"]
    names = {
        "model": "model",
        "interpolate": "log-dose interpolation",
        "nearest": "nearest dose",
        "copy": "copy (the other doses)",
        "mean_shift": "mean shift",
        "linear": "linear (ridge)",
    }
    out = [
        "### A dose no well had: LINCS 1.1111 uM",
        "",
        f"Command: {code(dose['command'])}; date {dose['date']}. The LINCS plate with the 1.1111 uM",
        f"well of each of its {sm['compounds']} compounds held out (a dose no training row has; the dose",
        "is an ordinal factor whose code is a function of its position on the log-dose axis), each",
        "regenerated from its compound's five other doses and judged against its one real well. Beside",
        "it, *log-dose interpolation*: per source well, source + the line between the compound's",
        "training means at the nearest doses below and above (0.37 and 3.33 uM) at log 1.1111, minus",
        "the mean at the source's dose (`interpolate`, `factordiff.evaluate.baselines`), what a",
        "scientist would compute; *nearest dose* (0.37 and 3.33 uM are equally near on the log axis:",
        "drawn at random between them). Mean over compounds, then over seeds "
        + ", ".join(str(x) for x in sm["seeds"])
        + "; *model nearer*: the share of compounds whose regenerated wells have a lower mean error",
        "than the method's. *mean shift* equals *copy* here: no training well has the dose, so it has",
        "nothing to shift by. One real well per compound and dose makes each compound's figure noisy;",
        "no replicate floor exists.",
        "",
    ]
    rows = []
    for m, figs in sm["methods"].items():
        share = sm["model_nearer_mean_error_share"].get(m)
        rows.append(
            [names.get(m, m), f3(figs["mean_error"]), f3(figs["energy"]), "-" if share is None else f3(share)]
        )
    return out + table(["method", "mean error", "energy", "model nearer"], rows)


def spread_s(v: list[float]) -> str:
    return f"{mean(v):.1f}" + (f" ({min(v):.1f}-{max(v):.1f})" if len(v) > 1 else "")


def swap_rows(settings: dict) -> list[list[str]]:
    rows = []
    items = [(s["technical"], s) for s in settings["technical"]]
    names = {
        "copy_source": "copy the source",
        "mean_shift": "batch mean shift",
        "true_counterfactual": "true counterfactual",
    }
    items += [(names.get(k, k), v) for k, v in settings["nulls"].items()]
    for name, s in items:
        seen, held = s["seen"], s["heldout"]
        rows.append(
            [
                name,
                f3(seen["target_batch_rate"]),
                f3(seen["compound_kept_rate"]),
                f3(seen["biology_kept_rate"]),
                f3(held["target_batch_rate"]),
                f3(held["compound_kept_rate"]),
                f3(held["biology_kept_rate"]),
                f"{held['frechet_all']:.0f}" if "frechet_all" in held else "-",
            ]
        )
    return rows


SWAP_HEADER = [
    "setting (strength : guidance : kind)",
    "seen: target batch",
    "seen: compound kept",
    "seen: biology kept",
    "held-out: target batch",
    "held-out: compound kept",
    "held-out: biology kept",
    "held-out Frechet",
]


def realism_rows(rows: list[dict], chosen: float) -> list[list[str]]:
    out = []
    for r in rows:
        un = r["unseen_closer_than_control"]
        row = [
            f"{r['guidance']:g}",
            f3(r["closer_than_control"]),
            f3(r["oracle_compound"]),
            f3(r["mean_distance"]),
            " / ".join(f"{k} {f3(v)}" for k, v in sorted(un.items())),
        ]
        out.append(bold(row) if r["guidance"] == chosen else row)
    return out


REALISM_HEADER = [
    "guidance",
    "training compounds: closer than control",
    "oracle reads the compound",
    "mean distance",
    "unseen compounds (record only)",
]


def frechet(fr: dict) -> str:
    chans = [k for k in fr if k != "all"]
    return f"{fr['all']:.0f} (" + " / ".join(f"{fr[c]:.0f}" for c in chans) + ")"


def cells_section() -> list[str]:
    d = load("cells.json")
    prev = d["previous_run_e3"]
    out = provenance(d, "cells.json")
    bs, un = d["batch_swap"], d["unseen_compound"]
    chans = " / ".join(k for k in bs["frechet"] if k != "all")
    out += [
        f"The fit: {code(d['fit_command'])}.",
        "",
        f"{d['fields']:,} fields at {d['size']}x{d['size']}, one seed. Held out of every learning stage: "
        + "; ".join(f"`{h}`" for h in d["heldout"])
        + f". Minutes: fit {d['minutes']['fit']:.1f}, evaluate {d['minutes']['evaluate']:.1f}, regenerating "
        f"{d['regenerate']['images']} fields {d['minutes']['regenerate_64_fields']:.2f}. Batch swaps "
        f"({bs['edits']} edits into {', '.join(bs['combinations'])}) are edits at strength "
        f"{bs['edit']['strength']:g}, guidance {bs['edit']['guidance']:g}, "
        f"{'residual' if bs['edit']['residual'] else 'plain'}; unseen compounds (by SMILES, at "
        f"{float(un['dose']):g} uM) "
        f"at strength {un['edit']['strength']:g}, guidance {un['edit']['guidance']:g}, "
        f"{'residual' if un['edit']['residual'] else 'plain'}. The *previous configuration* column is "
        "`previous_run_e3` in the JSON ("
        + clean(prev["note"].split(": ", 1)[-1])
        + f"; fit: {code(prev['fit_command'])}; evaluated by {code(prev['command'])}). "
        "The *true counterfactual*"
        " is cellsim's ground truth: the same cells rendered again in the target plate.",
        "",
    ]
    ms, cp, tc = bs["mean_shift"], bs["copy_source"], bs["true_counterfactual"]
    pb = prev["batch_swap"]
    pu = prev["unseen_compound"]
    byc = {c["compound"]: c for c in un["by_compound"]}

    def baselines(k: str) -> str:
        copy, shift, true = f3(cp[k]), f3(ms[k]), f3(tc[k])
        return f"{copy} (copy the source); {shift} (batch mean shift); {true} (true counterfactual)"

    rows = [
        [
            "batch swap into held-out compound x batch: read as the target batch",
            f3(bs["target_batch_rate"]),
            f3(pb["target_batch_rate"]),
            baselines("target_batch_rate"),
        ],
        [
            "... compound still read as the source's",
            f3(bs["compound_kept_rate"]),
            f3(pb["compound_kept_rate"]),
            baselines("compound_kept_rate"),
        ],
        [
            "... compound, dose and cell line still read as the source's",
            f3(bs["biology_kept_rate"]),
            f3(pb["biology_kept_rate"]),
            baselines("biology_kept_rate"),
        ],
        [
            f"Frechet to the real held-out fields (oracle features), all ({chans})",
            frechet(bs["frechet"]),
            frechet(pb["frechet"]),
            f"{frechet(bs['copy_source_distances']['frechet'])} (copy the source); "
            f"{frechet(bs['mean_shift_distances']['frechet'])} (batch mean shift)",
        ],
        [
            "kernel distance (KID) to the real held-out fields, all channels",
            f3(bs["kernel"]["all"]),
            f3(pb["kernel"]["all"]),
            f"{f3(bs['copy_source_distances']['kernel']['all'])} (copy the source); "
            f"{f3(bs['mean_shift_distances']['kernel']['all'])} (batch mean shift)",
        ],
        [
            f"unseen compound by SMILES at {float(un['dose']):g} uM, "
            "closer to its real fields than to the controls",
            f"{f3(un['closer_than_control'])} ("
            + ", ".join(f"{c} {f3(v['closer_than_control'])}" for c, v in sorted(byc.items()))
            + ")",
            f3(pu["closer_than_control"]),
            f"{f3(un['copy_control'])} (copy the control); "
            f"{f3(un['nearest_compound'])} (real fields of the nearest "
            "training compound: "
            + ", ".join(
                f"{v['nearest_compound']} {f3(v['nearest_compound_closer'])}" for _, v in sorted(byc.items())
            )
            + ")",
        ],
        [
            "the same edit into training compounds, with their own codes",
            f3(un["seen_compounds"]),
            f3(pu["seen_compounds"]),
            "-",
        ],
        [
            "compound retrieval mAP against controls",
            f3(d["map"]["generated"]),
            f3(prev["map"]["generated"]),
            f"{f3(d['map']['copy_control'])} (copy the control); {f3(d['map']['real'])} (real fields)",
        ],
        [
            "generic held-out counterfactuals: effectiveness / preservation / all right",
            " / ".join(
                f3(d["counterfactual_heldout"][k]) for k in ("effectiveness", "preservation", "all_right")
            ),
            " / ".join(
                f3(prev["counterfactual_heldout"][k]) for k in ("effectiveness", "preservation", "all_right")
            ),
            "-",
        ],
        [
            "samples from noise, every factor right: seen / held-out",
            f"{f3(d['samples']['seen'])} / {f3(d['samples']['heldout'])}",
            f"{f3(prev['samples']['seen'])} / {f3(prev['samples']['heldout'])}",
            "-",
        ],
    ]
    out += table(["figure", "model", "previous configuration", "baselines"], rows)
    out += [
        "Structure ceiling (`unseen_compound.structure_ceiling`): how well the other compounds' true",
        "effects predict an unseen compound's from structure alone, and the nearest training compound's",
        "Tanimoto similarity.",
        "",
    ]
    out += table(
        [
            "unseen compound",
            "images",
            "model closer than control",
            "nearest training compound",
            "its real fields closer",
            "structure ceiling (cosine)",
            "nearest Tanimoto",
        ],
        [
            [
                c,
                str(v["images"]),
                f3(v["closer_than_control"]),
                v["nearest_compound"],
                f3(v["nearest_compound_closer"]),
                f3(un["structure_ceiling"][c]["cosine"]),
                f3(un["structure_ceiling"][c]["nearest_known_tanimoto"]),
            ]
            for c, v in sorted(byc.items())
        ],
    )
    out += [
        "The evaluation oracle's accuracy on fresh fields at all doses (`oracle_accuracy`): "
        + ", ".join(f"{k} {f3(v)}" for k, v in sorted(d["oracle_accuracy"].items()))
        + ".",
        "",
    ]

    # compound guidance
    cg = d["compound_guidance_realism"]
    pcg = prev["compound_guidance_realism"]
    out += [
        "### How compound edits are guided",
        "",
        f"Command: {code(cg['command'])}; date {cg['date']}.",
        "",
        "Controls are regenerated into the training compounds with their own codes, so nothing held out",
        "chooses. *mean distance*: the distance from the generated fields' mean feature to the real",
        "compound's, over the control's distance (above 1: further than the control). The rule: the",
        "guidance at which the oracle names the compound most often, among those whose mean distance",
        "stays below 1. Bold: the guidance the run uses.",
        "",
    ]
    out += table(REALISM_HEADER, realism_rows(cg["rows"], un["edit"]["guidance"]))
    out += [f"Previous configuration: {code(pcg['command'])}; date {pcg['date']}.", ""]
    out += table(REALISM_HEADER, realism_rows(pcg["rows"], pu["edit"]["guidance"]))
    pcomp = prev["edit_settings"].get("compound_guidance") or []
    if pcomp:
        out += [
            "Previous configuration, training compounds closer than the control by compound guidance",
            "(`edit_settings.compound_guidance`):",
            "",
        ]
        out += table(
            ["guidance", "closer than control"],
            [[f"{r['guidance']:g}", f3(r["seen_compounds_closer_than_control"])] for r in pcomp],
        )

    # edit settings
    es, pes = d["edit_settings"], prev["edit_settings"]
    out += [
        "### How the batch-swap settings were chosen",
        "",
        "Batch swaps into *seen* compound x batch combinations choose among strength : guidance : kind (a",
        "*residual* edit returns the source plus the model's change between its regenerations under the new",
        "and the source's own codes); the held-out figures stand beside them for the record. The rule: the",
        "highest minimum of the two seen rates (target batch, compound kept).",
        "",
        f"Command: {code(es['command'])}; date {es['date']}; {es['steps']} steps.",
        "",
    ]
    out += table(SWAP_HEADER, swap_rows(es))
    out += [f"Previous configuration: {code(pes['command'])}; date {pes['date']}; {pes['steps']} steps.", ""]
    out += table(SWAP_HEADER, swap_rows(pes))

    # codes from structure
    loo, ploo = d["structure_codes_leave_one_out"], prev["structure_codes_leave_one_out"]
    sc = prev["structure_codes"]
    out += [
        "### Codes from structure",
        "",
        "Training compounds coded from their structure and the other training compounds' codes",
        "(`--code-loo`), beside their own codes: the share of control edits closer to the compound than to",
        "the controls.",
        "",
    ]
    out += table(
        ["run", "command", "guidance", "own codes", "codes from structure"],
        [
            [
                "current",
                code(loo["command"]),
                f"{loo['guidance']:g}",
                f3(loo["own_codes"]),
                f3(loo["codes_from_structure"]),
            ],
            [
                "previous configuration",
                code(ploo["command"]),
                f"{ploo['guidance']:g}",
                f3(ploo["own_codes"]),
                f3(ploo["codes_from_structure"]),
            ],
        ],
    )
    out += [
        '`denoiser.structure = "compound"` (the compound\'s code learned as a linear function of its',
        "fingerprint during training), against the previous configuration without it.",
        f"Fit: {code(sc['fit_command'])};",
        f"benchmark: {code(sc['command'])}.",
        "",
    ]
    ssu, psu = sc["unseen_compound"], pu
    out += table(
        ["figure", "denoiser.structure = compound", "previous configuration"],
        [
            [
                "unseen compound closer than control",
                f3(ssu["closer_than_control"]),
                f3(psu["closer_than_control"]),
            ],
        ]
        + [
            [
                f"... {c}",
                f3(ssu["by_compound"][c]),
                f3({x["compound"]: x for x in psu["by_compound"]}[c]["closer_than_control"]),
            ]
            for c in sorted(ssu["by_compound"])
        ]
        + [
            ["training compounds, own codes", f3(ssu["seen_compounds"]), f3(psu["seen_compounds"])],
            [
                "held-out batch swap: target batch",
                f3(sc["batch_swap"]["target_batch_rate"]),
                f3(pb["target_batch_rate"]),
            ],
            ["... compound kept", f3(sc["batch_swap"]["compound_kept_rate"]), f3(pb["compound_kept_rate"])],
            ["... biology kept", f3(sc["batch_swap"]["biology_kept_rate"]), f3(pb["biology_kept_rate"])],
            ["Frechet, all channels", f"{sc['frechet_all']:.0f}", f"{pb['frechet']['all']:.0f}"],
            ["mAP, generated", f3(sc["map_generated"]), f3(prev["map"]["generated"])],
        ],
    )

    # probes
    pr = d.get("probes_2026_12_03")
    if pr:
        out += probes_section(pr)
    return out


def probes_section(pr: dict) -> list[str]:
    names = sorted(pr["runs"])
    alias = {k: f"fit {i + 1}" for i, k in enumerate(names)}

    def unalias(text: str) -> str:
        text = clean(text)
        for k, v in alias.items():
            text = re.sub(rf"\b{k}\b", v, text)
        return text

    out = [
        "### Two changes measured and not kept (2026-12-03)",
        "",
        "Machine: "
        + pr["machine"].split(";")[0].strip()
        + ". The figures come from a probe that is not in the tree",
        "(`probes_2026_12_03.why` in the JSON); the runs it probed:",
        "",
    ]
    for k in names:
        text = unalias(pr["runs"][k])
        head, _, rest = text.partition(" (")
        out.append(f"- {alias[k]}: `{head}` ({rest}")
    out.append("")
    cr = pr["code_regression_neighbours_only"]
    today, nb = cr["all_compounds_judged (today's)"], cr["neighbours_only"]
    out += [
        "`CodeRegression`'s choice judged only on training compounds with a structural neighbour ("
        + cr["change"].split(" (")[0].split("taken only over ")[-1]
        + "):",
        "",
    ]

    def choice(c):
        return f"{c['choice'][0]} {c['choice'][1]:g}"

    out += table(
        ["figure", "all training compounds judged (the current rule)", "neighbours only"],
        [
            ["family and parameter chosen", choice(today), choice(nb)],
            ["unseen compound closer than control", f3(today["unseen"]), f3(nb["unseen"])],
        ]
        + [
            [f"... {c}", f3(today["by_compound"][c]), f3(nb["by_compound"][c])]
            for c in sorted(today["by_compound"])
        ]
        + [
            ["analogues coded from the others", f3(today["loo_analogues"]), f3(nb["loo_analogues"])],
            ["analogues with their own codes", f3(cr["own_codes_analogues"]), f3(cr["own_codes_analogues"])],
            ["training compounds, own codes", f3(today["seen_compounds"]), f3(nb["seen_compounds"])],
            [
                "real fields of the nearest training compound (baseline)",
                f3(today["nearest_compound"]),
                f3(nb["nearest_compound"]),
            ],
        ],
    )
    kg = pr["technical_keep_guidance"]
    out += [f"Guidance on the kept biology during batch swaps: {kg['change']}.", ""]
    rows = []
    for k in sorted(x for x in kg if x.startswith("keep_")):
        v = kg[k]
        rows.append(
            [
                f"model, keep guidance {k.split('_')[1]}",
                f3(v["target_batch_rate"]),
                f3(v["compound_kept_rate"]),
                f3(v["biology_kept_rate"]),
            ]
        )
    first = kg[sorted(x for x in kg if x.startswith("keep_"))[0]]
    for b, name in (
        ("copy_source", "copy the source"),
        ("mean_shift", "batch mean shift"),
        ("true_counterfactual", "true counterfactual"),
    ):
        v = first[b]
        rows.append(
            [name, f3(v["target_batch_rate"]), f3(v["compound_kept_rate"]), f3(v["biology_kept_rate"])]
        )
    out += table(["seen swaps", "target batch", "compound kept", "biology kept"], rows)
    return out


def cellsim_distiller_section() -> list[str]:
    d = load("cellsim_distiller.json")
    oracle = load("cells.json")["oracle_accuracy"]
    out = provenance(d, "cellsim_distiller.json")
    factors = list(d["variants"][0]["accuracy"])
    out += [
        "Only the distiller, on the cellsim benchmark's data and split, scored on fresh fields of the",
        "training combinations (accuracy of its class heads per factor; the compound also at the top",
        "dose). Beside it, the cellsim benchmark's evaluation oracle on fresh fields (`cells.json`,",
        "`oracle_accuracy`).",
        "",
    ]
    rows = []
    for v in d["variants"]:
        rows.append(
            [f"{v['steps']:,}", f"{v['fields']:,}", f"{v['minutes']:.2f}", f"{v['fresh_fields']:,}"]
            + [f3(v["accuracy"][f]) for f in factors]
            + [f3(v["compound_top_dose"])]
        )
    rows.append(["oracle", "", "", ""] + [f3(oracle.get(f)) for f in factors] + [""])
    out += table(
        ["steps", "fields", "minutes", "fresh fields scored"] + factors + ["compound, top dose"], rows
    )
    return out


def speed_section() -> list[str]:
    d = load("speed.json")
    out = ["### Throughput of each part", ""]
    out += provenance(d, "speed.json", ["make bench", DOCSTRING_COMMANDS["speed.json"]])
    out += ["Images per second, batches of 64, the quickstart config at 32x32.", ""]
    cols = [
        ("render_32px", "renderer 32px"),
        ("render_64px", "renderer 64px"),
        ("train_distiller", "distiller training"),
        ("train_autoencoder", "autoencoder training"),
        ("train_denoiser", f"denoiser training ({d['train_denoiser']['parameters'] / 1e6:.2f} M parameters)"),
        ("train_oracle", "oracle training"),
        ("ddim_sample_50_steps", "DDIM sampling, 50 steps"),
        ("ddim_invert_50_steps", "DDIM inversion, 50 steps"),
    ]
    out += table([c for _, c in cols], [[rate(d[k]["images_per_s"]) for k, _ in cols]])

    t = load("train_throughput.json")
    out += ["### Training loop against a diffusers reference loop", ""]
    out += provenance(t, "train_throughput.json")

    def prec(x) -> str:
        p = x["precision"]
        if isinstance(p, str):
            return f"{p} both"
        ref = "fp32" if p["reference"] == "no" else p["reference"]
        return (
            f"factordiff {p['factordiff']}" + (" compiled" if x.get("compile") else "") + f", reference {ref}"
        )

    out += [
        f"{t['model']}, {t['model_params'] / 1e6:.2f} M parameters, batch {t['batch_size']},",
        f"{t['optimizer']}; alternating trials of {t['steps_per_trial']} steps, medians. The reference",
        "loop follows diffusers' `train_unconditional.py` example at its `--mixed_precision` (`no` is",
        "the example's default); factordiff's at `train.precision` (`bf16`: autocast around the",
        "forward pass and loss, fp32 weights, optimizer and EMA); *compiled*: `train.compile`",
        "(`torch.compile` of the UNet, which the example does not do; its compilation is in the warm-up",
        "trial, not in the rates).",
        "",
    ]
    rows = []
    for x in [t, *t.get("other_settings", [])]:
        rows.append(
            [
                prec(x),
                rate(x["factordiff_img_s"]),
                rate(x["reference_img_s"]),
                f"{x['ratio_vs_diffusers']:.3f}",
                x.get("date", ""),
                code(x["command"]),
            ]
        )
    out += table(["precision", "factordiff images/s", "reference images/s", "ratio", "date", "command"], rows)
    eq = t.get("equal_wall_clock")
    if eq:
        blocks = [eq, *eq.get("other_seeds", [])]
        out += [
            f"The same levers for quality: the quickstart trained from scratch for {eq['minutes']:g} minutes",
            "under each setting and evaluated as the quickstart is ("
            + ", ".join(f"{code(b['command'])}, {b['date']}" for b in blocks)
            + "; rates are every-factor-right shares; steps per stage in the budget):",
            "",
        ]
        out += table(
            [
                "setting",
                "seed",
                "distiller / AE / denoiser steps",
                "held-out edits",
                "seen edits",
                "two-factor",
                "samples held-out",
                "samples seen",
            ],
            [
                [
                    name,
                    str(b.get("seed", 0)),
                    " / ".join(str(r["steps"].get(k, 0)) for k in ("distiller", "autoencoder", "denoiser")),
                    f3(r["edits_heldout"]),
                    f3(r["edits_seen"]),
                    f2(r["pairs_heldout"]),
                    f3(r["samples_heldout"]),
                    f3(r["samples_seen"]),
                ]
                for b in blocks
                for name, r in b["rows"].items()
            ],
        )
    fl = t.get("flops")
    if fl:
        ed = fl["edit"]
        mfu = fl.get("mfu") or fl.get("mfu_fp32")
        peaks = fl.get("mfu_peak", {k: "fp32" for k in mfu})
        out += [
            f"Model FLOPs ({code(fl.get('command', t['command']))}; `torch.utils.flop_counter`, "
            "convolutions and matrix products): "
            f"{fl['train_per_image_gflop']:.3f} GFLOP per training image (forward and backward), "
            f"{ed['gflop']:.2f} GFLOP per quickstart edit ({ed['unet_passes']} UNet passes; "
            f"{ed['settings']}; the autoencoder included). "
            "The machine's measured matmul peak (2048^3): "
            f"{fl['peak_gflops']['fp32']:.0f} GFLOP/s fp32, {fl['peak_gflops']['bf16']:.0f} GFLOP/s bf16. "
            "Model-FLOPs utilisation of the first row, each loop against the peak of the precision it "
            "computes in: " + ", ".join(f"{k} {v:.3f} ({peaks[k]})" for k, v in mfu.items()) + ".",
            "",
        ]
    if "profile" in t:
        pf, pr = t["profile"]["factordiff"], t["profile"]["reference"]
        out += ["Top operators by self CPU time (`--profile`):", ""]
        rows = []
        for i in range(max(len(pf), len(pr))):
            a = pf[i] if i < len(pf) else None
            b = pr[i] if i < len(pr) else None
            rows.append(
                [str(i + 1)]
                + ([f"`{a['op']}`", f"{a['self_cpu_ms']:.1f}", str(a["calls"])] if a else ["", "", ""])
                + ([f"`{b['op']}`", f"{b['self_cpu_ms']:.1f}", str(b["calls"])] if b else ["", "", ""])
            )
        out += table(["rank", "factordiff op", "ms", "calls", "reference op", "ms", "calls"], rows)

    if (RESULTS / "regen_speed.json").is_file():
        g = load("regen_speed.json")
        im, pr_ = g["images"], g["profiles"]
        out += ["### Regeneration throughput", ""]
        out += provenance(g, "regen_speed.json")
        out += [
            f"`regenerate` as a user calls it: {im['images']} Shapes edits on the shipped model "
            f"({im['settings']}; {im['unet_passes_per_batch_of_64']} UNet passes per batch),",
            f"and {pr_['rows']:,} BBBC021 profile rows of {pr_['features']} features ({pr_['steps']} steps) "
            "moved to another week from each start.",
            "",
        ]
        out += table(
            ["what", "rate"],
            [
                ["image edits", f"{im['images_per_s']:.1f} images/s"],
                [
                    "profile rows, start source (inversion + regeneration)",
                    f"{pr_['rows_per_s_source']:,.0f} rows/s",
                ],
                ["profile rows, start noise (regeneration only)", f"{pr_['rows_per_s_noise']:,.0f} rows/s"],
            ],
        )

    lv = load("levers.json")
    out += ["### Speed levers", ""]
    out += provenance(lv, "levers.json")
    out += [
        f"On the quickstart's denoiser ({lv['model_params'] / 1e6:.2f} M parameters, batch "
        f"{lv['batch_size']}, device {lv['device']}); images/s, medians of alternating trials.",
        "Training: AdamW; sampling: 20 guided DDIM steps.",
        "",
    ]
    rows = []
    tr = lv["train_adamw"]
    rows.append(
        [
            "training: AdamW `fused=True`",
            rate(tr["foreach"]),
            rate(tr["fused"]),
            f"{100 * (tr['fused'] / tr['foreach'] - 1):+.1f}%",
        ]
    )
    sm = lv["sample_20_steps_img_s"]
    base_key = next(k for k in sm if "default" in k)
    for k, v in sm.items():
        if k == base_key:
            continue
        rows.append([f"sampling: {k}", rate(sm[base_key]), rate(v), f"{100 * (v / sm[base_key] - 1):+.1f}%"])
    out += table(["lever", "default", "with the lever", "change"], rows)
    out += [
        "Fused AdamW is what training uses; bf16 autocast is an option (`denoiser.inference_precision`), its",
        "effect on edit quality is in the first section.",
        "",
    ]

    sh = load("shards.json")
    out += ["### Data from disk", ""]
    out += provenance(sh, "shards.json")
    out += [
        f"{sh['images']:,} images at {sh['size']}x{sh['size']}, packed by `factordiff data pack` in "
        f"{sh['pack_seconds']:.2f} s into {sh['pack_bytes'] / 1e6:.0f} MB; random rows, warm page cache",
        "(cold reads",
        "not measured). Images per second:",
        "",
    ]
    out += table(
        ["", "from memory", "from the pack", "pack / memory"],
        [
            [
                label,
                rate(sh[k]["memory"]),
                rate(sh[k]["shards"]),
                f"{100 * (sh[k]['shards'] / sh[k]['memory'] - 1):+.1f}%",
            ]
            for k, label in (
                ("read_img_s_batch64", "read, batches of 64"),
                ("read_img_s_batch256", "read, batches of 256"),
                ("train_distiller_img_s", "distiller training"),
                ("train_autoencoder_img_s", "autoencoder training"),
            )
        ],
    )
    sf = load("shard_formats.json")
    out += ["### Which format", ""]
    out += provenance(sf, "shard_formats.json", ["pip install zarr webdataset; " + sf["command"]])
    out += [
        f"The same {sf['images']:,} images at {sf['size']}x{sf['size']}, batches of {sf['batch']}, "
        "warm cache; " + ", ".join(f"{k} {v}" for k, v in sorted(sf["versions"].items())) + ".",
        "",
    ]
    out += table(
        [
            "format",
            "packed in (s)",
            "on disk (MB)",
            "images/s as training reads them",
            "access",
            "exact resume",
        ],
        [
            [
                name,
                f"{v['pack_seconds']:.1f}",
                f"{v['bytes'] / 1e6:.0f}",
                rate(v["img_s"]),
                v["access"],
                v["exact_resume"],
            ]
            for name, v in sf["formats"].items()
        ],
    )
    return out


def profiles_scale_section() -> list[str]:
    d = load("profiles_scale.json")
    out = provenance(d, "profiles_scale.json")
    out += [
        f"A generated table of a JUMP source's size: {d['rows']:,} wells x {d['features']:,} float32",
        f"features ({d['table_gb']} GB of parquet; 384-well plates nested in batches of 40 plates, 5,000",
        "compounds, 16 DMSO wells a plate; 5 columns missing in 30% of wells and 3 constant ones, which the",
        "cleaning drops), through the stages `factordiff fit` and `factordiff regenerate` run, one after",
        f"another in one process on this CPU: {d['features_kept']:,} features kept, total",
        f"{d['total_seconds'] / 60:.1f} minutes, peak memory {d['peak_memory_gb']} GB. The correlation",
        "filter is out of scope at this size.",
        "",
    ]
    what = {
        "read": "read_profiles: parquet by column and row batch into one float32 matrix",
        "clean": "split; missing share, constant columns, pycytominer variance_threshold on training rows",
        "fit": "fit_profiles at the defaults (4,000 steps of 128 rows); rows = training rows",
        "regenerate": "the table read again by name, inversion and regeneration, parquet in row groups",
    }
    out += table(
        ["stage", "seconds", "rows", "rows/s", "what"],
        [
            [name, f"{v['seconds']:.1f}", f"{v['rows']:,}", f"{v['rows_per_second']:,.0f}", what[name]]
            for name, v in d["stages"].items()
        ],
    )
    return out


def cells_shipped_section() -> list[str]:
    d = load("cells_shipped.json")
    out = provenance(d, "cells_shipped.json")
    bs, un = d["batch_swap"], d["unseen_compound"]
    ms, cp, tc = bs["mean_shift"], bs["copy_source"], bs["true_counterfactual"]
    held = "; ".join(f"`{w}`" for w in d["split"]["config"]["where"])
    steps = ", ".join(f"{k} {v:,}" for k, v in d["training_steps"].items())
    out += [
        "The model shipped in `src/factordiff/pretrained/cellsim32` (trained once for "
        f"{d['training_minutes']:g} minutes of wall clock on the 2-core CPU by "
        "`factordiff fit --config src/factordiff/configs/cellsim32.json`; steps: "
        f"{steps}), judged as a user meets it by `factordiff quickstart --data cellsim` "
        f"({d['quickstart_minutes']:.1f} minutes here). Held out of every learning stage: {held}. "
        "cellsim's compound effects are a function of the same Morgan fingerprints the model reads, "
        "so the unseen-compound figure is an upper bound for real data.",
        "",
    ]
    rows = [
        [
            "held-out batch swaps: read as the target batch",
            f3(bs["target_batch_rate"]),
            f3(cp["target_batch_rate"]),
            f3(ms["target_batch_rate"]),
            f3(tc["target_batch_rate"]),
        ],
        [
            "... compound still read as the source's",
            f3(bs["compound_kept_rate"]),
            f3(cp["compound_kept_rate"]),
            f3(ms["compound_kept_rate"]),
            f3(tc["compound_kept_rate"]),
        ],
    ]
    out += table(["", "model", "copy the source", "batch mean shift", "true counterfactual"], rows)
    out += [
        "",
        f"Unseen compounds (by SMILES, at {float(un['dose']):g} uM, generated from same-batch control "
        "fields): share of fields closer to the compound's real fields than to the control's (oracle "
        "features), beside copying the control and the nearest training compound's real fields; the "
        "structure ceiling's cosine (the true training effects regressed on fingerprints) says how far "
        "structure alone can go.",
        "",
    ]
    ceiling = un.get("structure_ceiling", {})
    rows = [
        [
            c["compound"],
            f3(c["closer_than_control"]),
            f3(c["copy_control_closer"]),
            f"{f3(c['nearest_compound_closer'])} ({c['nearest_compound']})",
            f3(ceiling.get(c["compound"], {}).get("cosine")),
        ]
        for c in un["by_compound"]
    ]
    rows.append(
        bold(["all", f3(un["closer_than_control"]), f3(un["copy_control"]), f3(un["nearest_compound"]), ""])
    )
    out += table(["compound", "model", "copy the control", "nearest compound", "structure cosine"], rows)
    prev = d.get("previous_model")
    if prev:
        pb, pu = prev["batch_swap"], prev["unseen_compound"]
        each = ", ".join(f"{c['compound']} {c['closer_than_control']:.2f}" for c in pu["by_compound"])
        out += [
            "",
            f"The previous shipped model ({prev['date']}, the same config and budget, "
            f"{', '.join(f'{k} {v:,}' for k, v in prev['training_steps'].items())} steps) held out "
            + "; ".join(f"`{w}`" for w in prev["split"]["config"]["where"])
            + f": held-out batch swaps read as the target batch {pb['target_batch_rate']:.3f}, compound"
            f" kept {pb['compound_kept_rate']:.3f} (batch mean shift"
            f" {pb['mean_shift']['compound_kept_rate']:.3f});"
            f" unseen compounds closer than the control {pu['closer_than_control']:.3f} ({each}). Its"
            " batch-swap settings table is in the git history of this page.",
        ]
    es = d.get("edit_settings")
    if es:
        commands = list(dict.fromkeys(r.get("command", es["command"]) for r in es["technical"]))
        out += [
            "",
            "Batch-swap settings of the shipped model, compared on swaps into *seen* compound x batch",
            "combinations by the rule of the cellsim benchmark (the highest minimum of the two seen rates,",
            "target batch and compound kept); the held-out figures stand beside them for the record. "
            f"The rule's choice: `{best_seen(es)}`; the model above edits at "
            f"{bs['edit']['strength']:g} : {bs['edit']['guidance']:g}. "
            f"Commands: {', '.join(code(c) for c in commands)}; date {es['date']}; {es['steps']} steps.",
            "",
        ]
        out += table(SWAP_HEADER, swap_rows(es))
    return out


def best_seen(es: dict) -> str:
    """The setting of ``edit_settings`` with the highest minimum of the two seen rates."""
    rows = es["technical"]
    return max(rows, key=lambda r: min(r["seen"]["target_batch_rate"], r["seen"]["compound_kept_rate"]))[
        "technical"
    ]


def real_cells_section_v1(d: dict) -> list[str]:
    out = provenance(d, "real_cells.json")
    out += [
        "Measured by the version of `benchmarks/real_cells.py` before the crop evaluation moved into",
        "`factordiff evaluate` (commit 904b0e9; its nearest condition was the rule of the profile",
        "toolkit, not yet the same treatment on other plates), not yet rerun.",
        "",
    ]
    out += [
        "Real BBBC021 single-cell crops (MCF-7, 68x68, DAPI / tubulin / actin; `../shared/data/real/",
        "bbbc021-singlecell`), one image run holding out both cells, fitted with",
        f"{code(d['fit_command'])} ({d['fit_seconds'] / 60:.0f} minutes of wall clock on this CPU; the",
        "crops are the `--data` path's `crops.npz`). Every crop becomes a",
        f"profile of {d['features']} morphology features (nucleus shape, per-channel intensity and texture,",
        "raw units), z-scored by training crops. *distance*: mean over features of |mean difference| to",
        "the real held-out crops; *energy*: energy distance; *two-sample AUC*: a classifier's out-of-fold",
        "ROC AUC telling the crops from the real held-out ones (0.5: indistinguishable). Baselines: *copy*",
        "the source crops, *mean shift* (per channel, the training crops' channel-mean difference added to",
        "the pixels), *nearest* condition (real training crops of the closest condition); the *replicate",
        "floor* is the real held-out crops in two halves by field. *gap share*: (model - floor) / (copy -",
        "floor) of the distance.",
        "",
    ]
    for cell in d["cells"]:
        rows = [
            [name, f3(v["distance"]), f3(v["energy"]), f3(v["c2st_auc"])]
            for name, v in [
                *cell["methods"].items(),
                *([("replicate floor", cell["floor"])] if "floor" in cell else []),
            ]
        ]
        out += [
            f"**{cell['cell']}** (`{cell['heldout']}` held out; {cell['sources']} source crops "
            f"regenerated with `{cell['set']}`; "
            f"{cell['truth_crops']} real held-out crops; gap share {cell['model_gap_share']:.2f})",
            "",
        ]
        out += table(["method", "distance", "energy", "two-sample AUC"], rows)
    return out


def real_cells_verdict(task: dict) -> str:
    """One line: the issue's bar for a held-out cell (closer than copy and mean shift, a third of
    copy's gap to the floor at most, two-sample AUC at most 0.95), each part met or not."""
    m, fl = task["methods"], task["floor"]
    model = m["model"]["distance"]
    parts = [
        f"closer than copy ({model:.3f} vs {m['copy']['distance']:.3f}): "
        + ("yes" if model < m["copy"]["distance"] else "no"),
        f"than mean shift ({m['mean_shift']['distance']:.3f}): "
        + ("yes" if model < m["mean_shift"]["distance"] else "no"),
        "gap share at most 1/3: "
        + (
            "undefined (copy at or below the floor)"
            if m["copy"]["distance"] <= fl["distance"]
            else "yes"
            if task["gap_share"] is not None and task["gap_share"] <= 1 / 3
            else "no"
        ),
        f"AUC at most 0.95 ({m['model']['c2st_auc']:.3f}): "
        + ("yes" if m["model"]["c2st_auc"] <= 0.95 else "no"),
        f"beside the nearest condition: {model - m['nearest']['distance']:+.3f}",
    ]
    line = "Bar: " + "; ".join(parts) + "."
    if "distance_range" in fl:
        lo, hi = fl["distance_range"]
        line += f" The floor's distance ranges {lo:.3f}-{hi:.3f} over its {fl['splits']} splits."
    if m["copy"]["c2st_auc"] <= fl["c2st_auc"] or m["copy"]["distance"] <= fl["distance"]:
        line += (
            " Copying is already as close as the replicate floor here (copy's distance"
            f" {m['copy']['distance']:.3f} and AUC {m['copy']['c2st_auc']:.3f} against the floor's"
            f" {fl['distance']:.3f} and {fl['c2st_auc']:.3f}): there is no gap for a method to close."
        )
    return line


def real_cells_section() -> list[str]:
    d = load("real_cells.json")
    if "tasks" not in d:
        return real_cells_section_v1(d)
    out = provenance(d, "real_cells.json")
    out += [
        "Real BBBC021 single-cell crops (MCF-7, 68x68, DAPI / tubulin / actin; `../shared/data/real/",
        "bbbc021-singlecell`), one image run holding out both cells, fitted with",
        f"{code(d['fit_command'])} ({d['fit_seconds'] / 60:.0f} minutes of wall clock on this CPU; the",
        "crops are the `--data` path's `crops.npz`) and judged by `factordiff evaluate` (a crop run's",
        f"evaluation, `factordiff.evaluate.crops`). Every crop becomes a profile of {d['features']}",
        "morphology features (nucleus shape, per-channel intensity and texture, raw units), z-scored by",
        "training crops. *distance*: mean over features of |mean difference| to the real held-out crops;",
        "*energy*: energy distance; *two-sample AUC*: a classifier's out-of-fold ROC AUC telling the",
        "crops from the real held-out ones (0.5: indistinguishable); *FD / KID oracle*: Frechet and",
        "kernel distances over the evaluation oracle's features. Baselines: *copy* the source crops,",
        "*mean shift* (per channel, the training crops' channel-mean difference added to the pixels),",
        "*nearest* condition (real training crops of the same treatment on other plates, nearest dose;",
        "DMSO of other plates for the plate swap); the *replicate floor* is the real held-out crops in",
        "two halves by field, one against the other, "
        + (
            "averaged over every such split (one split alone depends on which sites it pairs)."
            if all("splits" in t.get("floor", {}) for t in d["tasks"] if t["kind"] != "skipped")
            else "one random split (measured before the floor averaged every split)."
        ),
        "*gap share*: (model - floor) / (copy - floor) of the distance. Each",
        "plate's intensity scale is carried through its DMSO crops (`--controls`), and a residual edit",
        "keeps its source's detail at 68x68 (the model works at 64x64).",
        "",
    ]
    for task in d["tasks"]:
        if task["kind"] == "skipped":
            out += [f"**{task['condition']}**: skipped ({task['reason']})", ""]
            continue
        rows = [
            [
                name,
                f3(v["distance"]),
                f3(v["energy"]),
                f3(v["c2st_auc"]),
                f2(v.get("frechet_oracle")),
                f3(v.get("kid_oracle")),
            ]
            for name, v in [*task["methods"].items(), ("replicate floor", task["floor"])]
        ]
        gap = "–" if task["gap_share"] is None else f"{task['gap_share']:.2f}"
        out += [
            f"**`{task['condition']}`** held out ({task['kind']}: {task['sources']} source crops of "
            f"{', '.join(f'`{c}`' for c in task['source_conditions'])} regenerated with `{task['set']}`; "
            f"nearest: {', '.join(f'`{c}`' for c in task['nearest_conditions'])}; "
            f"{task['truth_crops']} real held-out crops; gap share {gap})",
            "",
        ]
        out += table(["method", "distance", "energy", "two-sample AUC", "FD oracle", "KID oracle"], rows)
        out += [real_cells_verdict(task), ""]
        sel = task.get("edit_selection")
        if sel and sel.get("chosen"):
            strength, guidance, residual = sel["chosen"]
            kind = "residual" if residual else "plain"
            tried = "; ".join(f"{k} {v:.3f}" for k, v in sel["distances"].items())
            out += [
                f"The edit (strength {strength:g}, guidance {guidance:g}, {kind})"
                f" was chosen on seen stand-ins, {', '.join(f'`{c}`' for c in sel['analogues'])}"
                f" ({sel['sources_each']} sources each, distance to their real training crops; copy"
                f" {sel['copy_distance']:.3f}): {tried} (strength:guidance:kind).",
                "",
            ]
        elif sel:
            out += [f"No seen stand-in for this cell: the run's edit settings ({sel.get('note', '')}).", ""]
    repeats = d.get("repeats", {})
    if repeats:
        seeds = [("0", [_repeat_row(t) for t in d["tasks"]])]
        seeds += [(seed, rep["tasks"]) for seed, rep in sorted(repeats.items())]
        rows = [
            [
                seed,
                f"`{t['condition']}`",
                *(f3(t["methods"][k]["distance"]) for k in ("model", "copy", "mean_shift", "nearest")),
                f3(t["floor"]["distance"]) + ("" if "splits" in t["floor"] else "*"),
                f3(t["methods"]["model"]["c2st_auc"]),
                "–" if t["gap_share"] is None else f"{t['gap_share']:.2f}",
                _edit_text(t.get("chosen")),
            ]
            for seed, tasks in seeds
            for t in tasks
            if t["kind"] != "skipped"
        ]
        out += [
            "Every seed (each a fresh fit and evaluation; seed 0 above). A floor marked * is one split"
            " of the held-out fields in two (measured before the floor averaged over its splits).",
            "",
        ]
        out += table(
            [
                "seed",
                "held out",
                "model",
                "copy",
                "mean shift",
                "nearest",
                "floor",
                "model AUC",
                "gap share",
                "edit",
            ],
            rows,
        )
        out += ["Commands: " + "; ".join(code(r["command"]) for _, r in sorted(repeats.items())) + ".", ""]
    return out + real_cells_inversions(d)


def real_cells_inversions(d: dict) -> list[str]:
    """The seed-0 fit's edits under other inversions (``real_cells.py --inversion``) beside its own."""
    variants = d.get("inversions", {})
    if not variants:
        return []
    own = [_repeat_row(t) for t in d["tasks"]]
    variants_rows = [(k, v["tasks"]) for k, v in variants.items()]
    rows = [
        [
            name,
            f"`{t['condition']}`",
            f3(t["methods"]["model"]["distance"]),
            f3(t["methods"]["model"]["c2st_auc"]),
            f3(t["methods"]["copy"]["distance"]),
            "–" if t["gap_share"] is None else f"{t['gap_share']:.2f}",
            _edit_text(t.get("chosen")),
        ]
        for name, tasks in [(f"{d.get('edits', 'ode, 20 steps')} (above)", own), *variants_rows]
        for t in tasks
        if t["kind"] != "skipped"
    ]
    out = [
        "The same seed-0 fit with its edits inverted otherwise (each edit chosen again on the seen"
        " stand-ins): the DDPM inversion at 5 steps is the Shapes default since it was chosen there;"
        " crop runs keep the ODE at 20 steps (`config.SOURCE_DEFAULTS`).",
        "",
    ]
    out += table(["inversion", "held out", "model", "model AUC", "copy", "gap share", "edit"], rows)
    return out + ["Commands: " + "; ".join(code(v["command"]) for v in variants.values()) + ".", ""]


def _repeat_row(task: dict) -> dict:
    """A seed-0 task in the shape of a repeat's (``benchmarks/real_cells.py``'s ``repeat_summary``)."""
    return {**task, "chosen": (task.get("edit_selection") or {}).get("chosen")}


def _edit_text(chosen) -> str:
    """(strength, guidance, residual) -> ``1:1:residual`` as the edit selection names it."""
    if not chosen:
        return "–"
    strength, guidance, residual = chosen
    return f"{strength:g}:{guidance:g}:{'residual' if residual else 'plain'}"


def probe_edits_section() -> list[str]:
    d = load("probe_edits.json")
    e = d["edit_settings"]
    out = provenance(d, "probe_edits.json")
    tried = "; ".join(
        f"{direction}: "
        + ", ".join(
            f"{r['gain']:g} -> {r['all_right']:.3f}" for r in d["grid"] if r["direction"] == direction
        )
        for direction in d["chosen_gain"]
    )
    chosen = ", ".join(f"{direction} {g:g}" for direction, g in d["chosen_gain"].items())
    out += [
        f"{d['model'].capitalize()}: the quickstart's oracle-judged one-factor edits made by moving the",
        "code along a sparse (L1) linear probe for the factor (`counterfactual --method probe`; the",
        "position for an ordinal factor, one value against the rest for shape) until the probe's score",
        "has gone `gain` of the way to the mean score of the target value's training codes, beside the",
        "code swap (the default method) and the copy. *probe*: along the probe's activation pattern",
        "(`--direction pattern`, the default); *probe_weight*: along its weight vector, the shortest",
        f"move. Edit settings: {e['inversion']} inversion, {e['steps']} steps, strength {e['strength']:g},",
        f"guidance {e['guidance']:g}. `gain` chosen per direction on {d['choice_edits']} other seen edits",
        f"(all right: {tried}): {chosen}. Mean over {len(d['oracle_seeds'])} oracles.",
        "",
    ]
    factors = list(d["seen"]["swap"]["effectiveness_by_factor"])
    methods = [m for m in ("probe", "probe_weight", "swap", "copy") if m in d["seen"]]
    rows = []
    for kind in ("seen", "heldout"):
        for method in methods:
            b = d[kind][method]
            rows.append(
                [kind, method, f3(b["effectiveness"]), f3(b["preservation"]), f3(b["all_right"])]
                + [
                    f"{b['effectiveness_by_factor'][f]:.2f} / {b['preservation_by_factor'][f]:.2f}"
                    for f in factors
                ]
            )
    out += table(
        ["edits", "method", "effectiveness", "preservation", "all right"]
        + [f"{f} eff. / pres." for f in factors],
        rows,
    )
    probes = ", ".join(
        f"{name} {p['nonzero']}/{p['dims']} dims"
        + (f" (R^2 {p['r2_3fold']:.3f})" if "r2_3fold" in p else f" (AUC {p['roc_auc_3fold']:.3f})")
        for name, p in d["probes"].items()
    )
    return out + [
        f"Probes (dimensions kept of the code, 3-fold CV on training codes): {probes}.",
        "",
        "The distiller codes each value of a factor as a tight cluster of its own (a code lies about 1",
        "from its value's prototype, 16-20 on average from another value's; the ordinal axis is one",
        "dimension of the block's four, measured on orientation, floor hue and shape): a probe reads",
        "the position almost perfectly, but no straight move carries a code from one cluster onto another,",
        "so the ordinal factors' probe edits mostly leave the image's value where it was; shape, one",
        "value against the rest, moves. The swap, which sets the block to the target's prototype, is the",
        "edit for such codes.",
        "",
    ]


def joint_section() -> list[str]:
    d = load("joint.json")
    summary = d["semi_supervised"]
    commands = sorted({row["command"] for per in summary.values() for row in per.values()})
    commands += [d[key]["command"] for key in ("visual_counterfactuals", "daed", "scldm") if key in d]
    out = provenance(d, "joint.json", commands)
    out += [
        "Joint Diffusion, semi-supervised (`benchmarks/joint.py`): the denoiser's classification head",
        "(`fit --head F --label-fraction f`; the distiller and prototypes read the labelled share of F",
        "only) against the *same network* trained by cross-entropy on the labelled share alone (early",
        "stopping on a fifth of that share). 32x32 pixel space, a UNet of 16/32/64 channels, budgets in",
        "steps. *shapes*: orientation (15 values), 20,000 training renders, 2,000 fresh test renders;",
        "*bbbc021_crops*: treatment of the real BBBC021 crops (DMSO, cyclohexamide 5/15/50 uM), a",
        "quarter of the fields as test crops. Accuracy on the test images, mean (sd) over seeds;",
        "*balanced*: mean per-class recall; *majority*: the most frequent class's share. The head trains",
        "at t uniform over the whole schedule (`denoiser.head_max_t` 1, as classifier guidance needs)",
        "unless the row names `head_max_t` (0.1: nearly clean images, as the semi-supervised Joint",
        "Diffusion reads its labelled batch); the CNN is the same in both rows of a seed. A row naming",
        "`augment` (`denoiser.head_augment`: each labelled image turned and mirrored by one of the",
        "square's eight symmetries, half the batch blended by MixUp, as the reference augments its",
        "labelled loader) gives the CNN's batches the same augmentation; a row naming steps trained",
        "the joint model's denoiser that many steps (the CNN keeps its own budget).",
        "",
    ]
    rows = []
    for dataset, per in summary.items():
        for fraction, r in sorted(per.items(), key=lambda kv: float(kv[0])):
            sd = lambda v: f" ({v:.3f})" if v is not None else ""  # noqa: E731
            sds = [v for v in (r["head_sd"], r["cnn_sd"]) if v is not None]
            better = "n/a (1 seed)" if not sds else "yes" if r["head"] > r["cnn"] + max(sds) else "no"
            rows.append(
                [
                    dataset,
                    f"{float(fraction):.0%}",
                    f"{r['head']:.3f}{sd(r['head_sd'])}",
                    f"{r['cnn']:.3f}{sd(r['cnn_sd'])}",
                    f"{r['head_balanced']:.3f} / {r['cnn_balanced']:.3f}",
                    f"{r['majority']:.3f}",
                    str(len(r["seeds"])),
                    better,
                ]
            )
    out += table(
        ["data", "labels", "head", "same CNN", "balanced head / CNN", "majority", "seeds", "ahead > sd"],
        rows,
    )
    if "visual_counterfactuals" in d:
        out += visual_counterfactual_lines(d["visual_counterfactuals"])
    if "daed" in d:
        out += daed_lines(d["daed"], {k[5:]: v for k, v in d.items() if k.startswith("daed_")})
    if "scldm" in d:
        out += scldm_lines(d["scldm"])
    return out + [""]


def few(names: list[str], shown: int = 2) -> str:
    """The first ``shown`` of ``names`` (semicolon-separated) and how many more."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return "; ".join(names[:shown]) + more


def scldm_lines(sc: dict) -> list[str]:
    """The set runs on the BBBC021 fields and on cellsim's wells beside their baselines."""
    out = [
        f"scLDM as a set run ({code(sc['command'])}; the run: {code(sc['fit_command'])}, then",
        "`factordiff evaluate`): the real BBBC021 crops as a single-cell table of morphology features,",
        f"each field a set; `{sc['holdout']}` held out ({sc['heldout_fields']} fields,",
        f"{sc['heldout_cells']} cells), {sc['training_fields']} training fields, fit and evaluation",
        f"{sc['seconds'] / 60:.0f} minutes. Energy distance of each population to the real held-out",
        "cells",
        "(features z-scored by training cells; lower is closer): *model*, one population from noise per",
        "held-out field; *nearest*, the nearest condition's real cells"
        f" ({', '.join(sc['nearest_conditions'])}); *per-field mean model*, the additive model of the",
        "cells' mean repeated once per cell; *floor*, the held-out fields in two halves, averaged over",
        "the halvings.",
        "",
    ]
    runs = [("BBBC021 fields", sc)]
    if "cellsim" in sc:
        cs = sc["cellsim"]
        runs.append((f"cellsim wells ({cs['holdout']})", cs))
        out += [
            f"On cellsim ({code(cs['command'])}; the run: {code(cs['fit_command'])}): each simulated well",
            f"({cs['fields_per_well']} fields of one compound x plate, {cs['wells_per_condition']} wells",
            "each, every compound at 10 uM and DMSO on every plate) is a set, each nucleus a 24x24 crop",
            f"and its features; {cs['heldout_fields']} held-out wells ({cs['heldout_cells']} cells),",
            f"{cs['training_fields']} training wells; nearest condition: {few(cs['nearest_conditions'])}.",
            "",
        ]

    def cell(r: dict, key: str) -> str:
        return "-" if r.get(key) is None else f"{r[key]:.3f}"

    rows = [
        [name, *(cell(r, key) for _, r in runs)]
        for name, key in (
            ("model", "model"),
            ("nearest condition", "nearest"),
            ("per-set mean model, repeated", "per_well_model"),
            ("replicate floor", "floor"),
        )
    ]
    return out + table(["population", *(f"energy distance, {name}" for name, _ in runs)], rows)


def daed_lines(dd: dict, forms: dict[str, dict] | None = None) -> list[str]:
    """DAED's one-pass denoiser against the run's diffusion chain, in and out of domain; ``forms``:
    the same measured with the DAE in another output form (``daed_<form>`` of the file)."""
    out = [
        f"DAED (`fit --model daed`; {code(dd['command'])}): one 32x32 pixel-space run per data set",
        f"(denoiser {dd['denoiser_steps']} steps, then the denoising autoencoder {dd['daed_steps']} steps",
        f"below 0.1 of the schedule, output form `{dd.get('parameterization', 'edm')}`), applied to"
        f" {dd['test_images']} test images of its own data set and",
        f"of the other, noised to t/T = {dd['noise']:g} (one seeded draw) and denoised with every factor",
        "absent. Mean absolute error to the clean image on [0, 1]; *noised*: the noisy input itself.",
        "",
    ]
    rows = []
    for kind in ("in_domain", "out_of_domain"):
        for name, r in [(kind.replace("_", " ") + " (mean)", dd[kind]), *dd[kind]["directions"].items()]:
            rows.append(
                [
                    name,
                    f"{r['noised_mae']:.4f}",
                    f"{r['daed_mae']:.4f}",
                    f"{r['diffusion_1_mae']:.4f}",
                    f"{r['diffusion_10_mae']:.4f}",
                ]
            )
    head = ["trained -> applied", "noised", "DAED (1 pass)", "diffusion (1 step)", "diffusion (10 steps)"]
    out += table(head, rows)
    for other in (forms or {}).values():
        mae = lambda kind, key: other[kind][key]  # noqa: E731
        form, seed = other.get("parameterization", "edm"), other.get("seed", 0)
        which = f"in the `{form}` form" + (f", train seed {seed}" if seed else "")
        same = "fresh denoisers" if seed else "the same denoisers"
        out += [
            f"With the DAE {which} ({code(other['command'])}; {same}): in domain"
            f" DAED {mae('in_domain', 'daed_mae'):.4f} against the chain's"
            f" {mae('in_domain', 'diffusion_mae'):.4f}, out of domain {mae('out_of_domain', 'daed_mae'):.4f}"
            f" against {mae('out_of_domain', 'diffusion_mae'):.4f} ("
            + "; ".join(
                f"{k} {v['daed_mae']:.4f} against {v['diffusion_mae']:.4f}"
                for k, v in other["out_of_domain"]["directions"].items()
            )
            + ").",
            "",
        ]
    return out


def visual_counterfactual_lines(vc: dict) -> list[str]:
    """The visual counterfactuals of ``joint.json``: classifier method beside swap and copy."""
    chosen = vc["chosen"]
    heads = vc["head_accuracy_t0"]
    seen = sum(h["seen"] for h in heads.values()) / len(heads)
    out = [
        f"Visual counterfactuals (Shapes replica, 32x32 latent): {code(vc['command'])}, on a model",
        f"trained by {code(vc['model_command'])} (the shipped model's distiller and autoencoder, a",
        "denoiser with a head on every factor, all training labels). Oracle-judged edits of each",
        "factor, into seen and into held-out combinations, from the same sources: *classifier*",
        f"(from {'fresh noise' if chosen['start'] == 'noise' else 'the DDIM inversion'} at"
        f" {chosen['noise']:g} of the schedule, reconstruct under the other factors' codes",
        f"guided by the head with weight {chosen['guidance']:g}, chosen among"
        f" {len(vc['grid'])} settings on {vc['choice_edits']} other seen edits), *swap* (the code",
        f"swap at the run's settings: strength {vc['swap_settings']['strength']:g},"
        f" {vc['swap_settings']['steps']} steps, guidance {vc['swap_settings']['guidance']:g}) and",
        f"*copy* (the source unchanged). The head reads its factors at t = 0 at {seen:.3f} on seen",
        "combinations (mean over factors).",
        "",
    ]
    rows = []
    for kind in ("seen", "heldout"):
        block = vc.get(f"shapes_{kind}")
        for method in ("classifier", "swap", "copy") if block else ():
            b = block[method]
            rows.append(
                [
                    kind,
                    method,
                    f"{b['effectiveness']:.3f}",
                    f"{b['preservation']:.3f}",
                    f"{b['all_right']:.3f}",
                    str(b["edits"]),
                ]
            )
    out += table(["edits", "method", "effectiveness", "preservation", "all right", "edits"], rows)
    grid = "; ".join(
        f"{r['start']}/{r['noise']:g}/{r['guidance']:g}: {r['effectiveness']:.2f}, {r['preservation']:.2f}"
        for r in vc["grid"]
    )
    return out + [
        f"The choice (start/noise/guidance: effectiveness, preservation on the choice edits): {grid}.",
        "",
    ]


def against(block: dict, other: str, label: str) -> str:
    """One line: on which channels the model's Pearson reaches ``other``'s, and the Frechet verdict."""
    model, base = block["rows"]["model"], block["rows"][other]
    behind = [c for c, v in model["pearson"].items() if v < base["pearson"][c]]
    fr = "lower" if model["frechet"] < base["frechet"] else "not lower"
    if not behind:
        return f"The model's Pearson reaches {label}'s on every channel; its Frechet is {fr}."
    gaps = ", ".join(f"{c} {f3(model['pearson'][c])} against {f3(base['pearson'][c])}" for c in behind)
    return f"The model's Pearson falls short of {label}'s on {gaps}; its Frechet is {fr}."


def control_section() -> list[str]:
    """``control.json``: image-to-image control on cellsim and the structure-only comparison."""
    d = load("control.json")
    out: list[str] = []
    channels = ["DNA", "ER", "RNA", "AGP", "Mito"]

    def pearson_rows(block: dict, names: list[tuple[str, str]]) -> list[str]:
        rows = []
        for key, label in names:
            r = block["rows"].get(key)
            if r is None:
                continue
            held = r.get("pearson_heldout")
            rows.append(
                [label]
                + [f3(r["pearson"][c]) for c in channels]
                + [f3(mean(list(r["pearson_seen"].values())))]
                + [f3(mean(list(held.values()))) if held else "-"]
                + [f2(r["frechet"])]
            )
        header = ["method", *channels, "mean, seen", "mean, held-out", "Frechet"]
        return table(header, rows)

    def opening(title: str, block: dict, text: str) -> list[str]:
        return [f"### {title}", ""] + provenance(block, "control.json") + [text, ""]

    bf = d.get("brightfield_to_stains")
    if bf:
        out += opening(
            "Brightfield to the five stains",
            bf,
            f"{bf['fields']} fresh cellsim fields at 32x32 ({bf['heldout_fields']} of held-out compound x "
            f"batch combinations); Pearson per field between the mean of {bf['samples']} samples "
            f"({bf['sample_steps']} DDIM steps) and the true stain, averaged over fields; the "
            "regression's one prediction likewise. Frechet: single samples against the true fields, "
            f"over the shipped oracle's features. The ControlNet branch and the regression each "
            f"trained {bf['minutes']:g} minutes on the shipped model's training fields.",
        )
        out += pearson_rows(
            bf,
            [
                ("model", "factordiff: ControlNet + metadata codes"),
                ("model_no_metadata", "the same, every factor absent"),
                ("regression", "U-Net regression (label-free)"),
            ],
        )
        out += ["", against(bf, "regression", "the regression")]
        out.append("")
    ceil = d.get("brightfield_ceiling")
    if ceil:
        out += opening(
            "What brightfield allows: cellsim's own ceiling",
            ceil,
            f"{ceil['fields']} cellsim fields at {ceil['size']}x{ceil['size']} rendered again with the same "
            "cells (outlines, nuclei, nucleoli: the same brightfield) and new draws of what brightfield "
            "does not show (textures, mitochondria, noise). A perfect sampler's n-sample mean is the "
            "mean of n such draws, judged against another draw; a perfect regression predicts the "
            f"mean of {ceil['conditional_mean_draws']} draws. Pearson as above.",
        )
        rows = [
            [f"perfect sampler, mean of {n}"] + [f3(v[c]) for c in channels]
            for n, v in ceil["perfect_sampler"].items()
        ]
        rows.append(
            ["perfect regression (conditional mean)"] + [f3(ceil["conditional_mean"][c]) for c in channels]
        )
        if bf:
            rows.append(
                [f"factordiff, mean of {bf['samples']} (above)"] + [f3(bf["model"][c]) for c in channels]
            )
            rows.append(["U-Net regression (above)"] + [f3(bf["regression"][c]) for c in channels])
        out += table(["predictor", *channels], rows)
        out += [
            "",
            "Where most of a stain is invisible in brightfield (Mito: the mitochondria's positions), "
            "even a perfect sampler's 8-sample mean stays below a good regression: the mean of 8 "
            "draws keeps an eighth of the hidden variance, which the regression averages away.",
            "",
        ]
    ct = d.get("control_to_treated")
    if ct:
        out += opening(
            "Control to treated",
            ct,
            f"{ct['fields']} fresh treated cellsim fields of training compounds ({ct['heldout_fields']} of "
            "held-out combinations), each predicted from the same cells rendered untreated (DMSO; "
            "cellsim's paired renders, `render(..., hidden=)`, keep every cell in step under the "
            "compound); "
            f"Pearson and Frechet as above; the regression reads the compound x dose as a class; the "
            "mean shift adds the training fields' mean treated-minus-untreated image of the same "
            "compound x dose x cell line.",
        )
        out += pearson_rows(
            ct,
            [
                ("model", "factordiff: ControlNet + metadata codes"),
                ("regression", "U-Net regression (compound x dose class)"),
                ("mean_shift", "mean shift"),
                ("copy_control", "copy the untreated field"),
            ],
        )
        out += ["", against(ct, "regression", "the regression"), against(ct, "mean_shift", "the mean shift")]
        out.append("")
    so = d.get("structure_only_vs_metadata")
    if so:
        out += opening(
            "Structure alone (Mol2Image's setting) against structure and metadata",
            so,
            f"Samples from noise of cellsim's unseen compounds ({', '.join(so['compounds'])}) at "
            f"{so['dose']:g} uM, {so['fields']} real fields; the model: {so['model']}. Closer than "
            "control: share of samples whose oracle features lie nearer the compound's real fields' "
            "mean than the DMSO fields' mean.",
        )
        rows = [
            [label, f3(so[k]["unseen_closer_than_control"]), f2(so[k]["frechet"])]
            for k, label in (
                ("structure_only", "structure alone"),
                ("factordiff", "structure + metadata (factordiff)"),
                ("metadata_without_compound", "metadata, compound absent"),
            )
            if k in so
        ]
        out += table(["conditioning", "closer than control", "Frechet"], rows) + [""]
    return out


def render() -> str:
    sections = [
        ("Edits and samples against solver steps (Shapes replica)", nfe_section),
        ("Held-out conditions: adapters and splits (Shapes replica)", generalization_section),
        ("The distiller on held-out combinations (Shapes replica)", distill_section),
        ("Latent-space metrics (Shapes replica)", latent_section),
        *(
            [("Probe-direction edits (Shapes replica)", probe_edits_section)]
            if (RESULTS / "probe_edits.json").is_file()
            else []
        ),
        ("Cell Painting profiles: the regenerator beside its baselines", profiles_section),
        ("Cell Painting profiles at JUMP scale", profiles_scale_section),
        ("Real BBBC021 single-cell crops", real_cells_section),
        *(
            [("Joint Diffusion: a classifier head with few labels", joint_section)]
            if (RESULTS / "joint.json").is_file()
            else []
        ),
        *(
            [("Shipped cell model (quickstart --data cellsim)", cells_shipped_section)]
            if (RESULTS / "cells_shipped.json").is_file()
            else []
        ),
        ("Cell Painting images on cellsim", cells_section),
        *(
            [("Image-to-image control on cellsim", control_section)]
            if (RESULTS / "control.json").is_file()
            else []
        ),
        ("cellsim's distiller: steps and fields", cellsim_distiller_section),
        ("Speed", speed_section),
    ]
    out = [
        "# Measured results",
        "",
        "<!-- Generated by scripts/results_page.py from benchmarks/results/*.json: do not edit by hand. -->",
        "",
        "Every measured table of factordiff, generated by `python scripts/results_page.py` from",
        "`benchmarks/results/*.json` (`python scripts/results_page.py --check` fails when this page and the",
        "JSON files disagree). Each section names the command that reproduces it, the JSON file that holds",
        "it, and the date and machine where the file records them. Rates are shares of edits, samples or",
        "rows in [0, 1], printed with 3 decimals; the quickstart's own table is in the README.",
        "",
    ]
    for title, _ in sections:
        anchor = re.sub(r"[^a-z0-9 -]", "", title.lower()).replace(" ", "-")
        out.append(f"- [{title}](#{anchor})")
    out.append("")
    for title, fn in sections:
        out += [f"## {title}", ""] + fn()
    text = "\n".join(out)
    text = re.sub(r"\n{3,}", "\n\n", text).rstrip("\n") + "\n"
    if PRIVATE_RUN.search(text):
        raise SystemExit("results page: a private run folder (runs/e<N>) survived cleaning")
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--check", action="store_true", help="exit 1 if docs/results.md is not what this would write"
    )
    a = ap.parse_args(argv)
    text = render()
    if a.check:
        current = PAGE.read_text() if PAGE.is_file() else None
        if current != text:
            print(
                "docs/results.md is out of date with benchmarks/results/*.json: "
                "run python scripts/results_page.py",
                file=sys.stderr,
            )
            return 1
        return 0
    PAGE.write_text(text)
    print(f"wrote {PAGE.relative_to(ROOT)} ({len(text.encode()):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
