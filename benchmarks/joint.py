"""Joint Diffusion, semi-supervised: the accuracy of the denoiser's classification head (``fit
--head F --label-fraction f``) against a CNN of the same size trained on the labelled share only,
into ``benchmarks/results/joint.json``.

    python benchmarks/joint.py [--datasets shapes,bbbc021_crops] [--fractions 0.05,0.2,0.02,0.1]
        [--seeds 0,1,2] [--steps 1200] [--cnn-steps 1500] [--head-max-t T] [--head-augment dihedral,mixup]
        [--head-unconditioned]
    python benchmarks/joint.py --counterfactuals RUN [--per-factor 100]
    python benchmarks/joint.py --daed [--steps 1200] [--daed-steps 1200]

Two tasks, each at 32x32 in pixel space (``autoencoder.enabled`` false) with a UNet of 16, 32 and 64
channels and the embed adapter (0.8 M parameters: 0.47 s a step of 64 images and the head's 32 on
the 2-core CPU, where 32, 64, 128 channels took 1.3 s):

- ``shapes``: orientation (15 values) of the 3D Shapes replica, 20,000 training images (every
  factor a code; only orientation's labels are shared out), accuracy on 2,000 fresh renders;
- ``bbbc021_crops``: treatment of the real BBBC021 single-cell crops (4 classes: DMSO and
  cyclohexamide at 5, 15 and 50 uM; factors treatment and plate), split by field: a quarter of the
  fields (plate, well, site), drawn once, are the test crops, never read by a fit, and each plate's
  intensity scale is fitted on the training crops.

Per fraction f and seed s (the seed draws the labelled share, ``fit.labelled_rows``, and the
initialisation):

- *head*: ``fit`` with ``denoiser.head`` the task's factor and ``denoiser.label_fraction`` f, the
  distiller 500 steps and the denoiser ``--steps`` (budgets in steps, not minutes, so that the
  figures do not depend on what else the machine runs); the distiller and the prototypes read
  the labelled share of that factor only (``fit.known_factors``), the diffusion loss every
  training image. Read at t = 0 with every factor absent.
- *cnn*: the same network (the run's UNet and head, freshly initialised), trained by cross-entropy
  on the labelled share alone at t = 0 for ``--cnn-steps`` steps of 32 images, keeping the weights
  that score best on a fifth of the labelled share held aside for it (early stopping: the
  baseline gets a validation set the head does not).

*Visual counterfactuals* (``--counterfactuals RUN``, a Shapes run with a head, trained from the
shipped model's distiller and autoencoder by ``scripts/retrain_denoiser.py RUN --set
'denoiser.head=[...]'``, the command recorded as ``model_command``; ``visual_counterfactuals`` of
the file): the oracle-judged edits of
``evaluate/counterfactual.py`` (``--per-factor`` edits of each factor whose target combination
was seen in training, as many into held-out combinations), made three ways from the same sources:
the classifier method (``edit.classifier_edit``: noise to ``noise`` of the schedule, reconstruct
under the other factors' codes guided by the head with weight ``guidance``), the code swap (the
run's ``evaluate`` settings, ``factordiff counterfactual``'s default) and the copy of the source.
The classifier method's (start, noise, guidance) is chosen on a second, disjoint draw of seen
edits (largest share with every factor right); the start is fresh noise (Joint Diffusion's) or the
source's DDIM inversion (``--start source``); held-out edits play no part in the choice.

*DAED* (``--daed``, ``daed`` of the file): one run per data set (``shapes``, ``bbbc021_crops``;
the same 32x32 pixel-space UNet, ``fit --model daed``: the denoiser ``--steps`` steps on the
whole schedule, then the denoising autoencoder ``--daed-steps`` steps below 0.1 of it), each
applied to 500 test images of its own data set (in domain) and of the other (out of domain):
noised to t/T = 0.1 with one seeded draw, denoised by the DAE in one pass and by the run's own
diffusion chain (1 and 10 DDIM steps from the same noised input), every factor absent. Mean
absolute error to the clean image on [0, 1]; the noised input's own error is the floor a method
must beat. ``out_of_domain`` and ``in_domain`` average the two directions. The DAE's output form
is ``--daed-parameterization`` (``daed.parameterization``; the default ``v``), the runs' seed
``--daed-seed`` (0): another form's or seed's block is kept beside it as ``daed_<form>``,
``daed_seed<N>`` (``daed_edm``, ``daed_seed1``), its runs in ``daed-<name>[-<form>][-seed<N>]``.

Also reported: the majority class's accuracy (the test share of the most frequent class) and the
balanced accuracy of both. Rows are written as they finish; rows already in the file for other
(dataset, fraction, seed, head_max_t, head_augment, head_conditioned, steps) are kept; the summary
lists a fit other than the default as a dataset of its own (``shapes (head_max_t 0.1)``,
``bbbc021_crops (augment dihedral+mixup, 3600 steps)``). ``--head-augment``
(``denoiser.head_augment``) augments the CNN's batches the same way, so the two networks always see
the same labelled images. ``--head-unconditioned`` (``denoiser.head_conditioned`` false) keeps the
head factor's codes from the UNet, whose features then have to carry it, as Joint Diffusion's
unconditional UNet (rows ``... (head unconditioned)``).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import balanced_accuracy_score

from factordiff.checkpoint import atomic_write_json, read_json
from factordiff.config import RunConfig, from_dict, load_config
from factordiff.data.crops import crops_dataset, fit_intensity, read_crops
from factordiff.data.sources import load_data, prepare_data
from factordiff.data.splits import make_split
from factordiff.diffusion.head import augment, classify, head_loss
from factordiff.edit import classifier_edit
from factordiff.evaluate.counterfactual import Edits, get_oracle, plan_edits, run_edits, score_edits
from factordiff.fit import fit, labelled_rows
from factordiff.models.images import ModelShape, build_denoiser, to_unit
from factordiff.models.runs import load_model
from factordiff.quickstart import pretrained_run

RESULTS = Path(__file__).parent / "results" / "joint.json"
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real" / "bbbc021-singlecell"
TREATMENT = "Metadata_Treatment"


def shapes_task(work: Path):
    train = load_data("shapes", size=32, n=20000, seed=0)
    test = load_data("shapes", size=32, n=2000, seed=1)
    return train, test, "orientation", {"data.source": "shapes"}


def crops_task(work: Path, stack_path: Path):
    """The crops with a treatment column (compound and dose) in an index of the work folder."""
    table = pd.read_csv(stack_path.with_suffix(".csv"))
    keep = table["Metadata_Compound"].isin(["DMSO", "cyclohexamide"])
    dose = table["Metadata_Concentration"].astype(str)
    table[TREATMENT] = np.where(table["Metadata_Compound"] == "DMSO", "DMSO", "cyclohexamide_" + dose)
    if not keep.all():
        sys.exit(f"{stack_path}: expected DMSO and cyclohexamide crops only")
    work.mkdir(parents=True, exist_ok=True)
    index = work / "crops_index.csv"
    table.to_csv(index, index=False)
    stack = read_crops(stack_path, index, ["DAPI", "Tubulin", "Actin"], [TREATMENT, "Metadata_Plate"])
    fields = table["Metadata_Plate"] + "/" + table["Metadata_Well"] + "/" + table["Metadata_Site"].astype(str)
    names = np.array(sorted(set(fields)))
    test_fields = set(np.random.default_rng(0).choice(names, len(names) // 4, replace=False))
    train_rows = ~fields.isin(test_fields).to_numpy()
    data = crops_dataset(stack, fit_intensity(stack, train_rows, 0), 32)
    source = {"data.source": f"crops:{stack_path}"}
    return data.subset(train_rows), data.subset(~train_rows), TREATMENT, source


def pixel_config(extra: dict, steps: int, **over):
    """The benchmark's run: 32x32 pixel space, a UNet of 16/32/64 channels, the embed adapter, the
    distiller 500 steps and the denoiser ``steps``; ``over``: more fields (``section__name``)."""
    return load_config(
        None,
        {
            **extra,
            "data.size": 32,
            "split.kind": "none",
            "autoencoder.enabled": False,
            "denoiser.block_out_channels": [16, 32, 64],
            "denoiser.adapter": "embed",
            "distill.steps": 500,
            "denoiser.steps": steps,
            "train.threads": 2,
            **{k.replace("__", "."): v for k, v in over.items()},
        },
    )


def config(
    extra: dict,
    factor: str,
    fraction: float,
    seed: int,
    steps: int,
    head_max_t: float = 1.0,
    ops=(),
    conditioned: bool = True,
):
    return pixel_config(
        extra,
        steps,
        denoiser__head=[factor],
        denoiser__label_fraction=fraction,
        denoiser__head_max_t=head_max_t,
        denoiser__head_augment=list(ops),
        denoiser__head_conditioned=conditioned,
        train__seed=seed,
    )


@torch.no_grad()
def predict(denoiser, x: torch.Tensor) -> np.ndarray:
    denoiser.eval()
    out = [
        classify(denoiser, x[i : i + 256], torch.zeros(len(x[i : i + 256]), dtype=torch.long))[0].argmax(1)
        for i in range(0, len(x), 256)
    ]
    return torch.cat(out).numpy()


def scores(pred: np.ndarray, truth: np.ndarray) -> dict:
    balanced = float(balanced_accuracy_score(truth, pred))
    return {"accuracy": float((pred == truth).mean()), "balanced": balanced}


def train_cnn(cfg, train, k: int, rows: np.ndarray, seed: int, steps: int) -> tuple[torch.nn.Module, dict]:
    """The run's network, fresh, trained on the labelled rows at t = 0 with early stopping; its
    batches augmented as the head's (``denoiser.head_augment``)."""
    torch.manual_seed(seed)
    net = build_denoiser(cfg, train.spec, ModelShape(train.channels, train.size))
    idx = np.flatnonzero(rows)
    rng = np.random.default_rng(seed + 5)
    rng.shuffle(idx)
    val, fit_rows = idx[: max(1, len(idx) // 5)], idx[max(1, len(idx) // 5) :]
    x = to_unit(train.images[fit_rows])
    y = torch.from_numpy(train.factors[fit_rows, k].astype(np.int64))
    xv, yv = to_unit(train.images[val]), train.factors[val, k]
    opt = torch.optim.AdamW(net.parameters(), lr=2e-4, weight_decay=1e-2)
    gen = torch.Generator().manual_seed(seed)
    best, best_state = -1.0, None
    for step in range(1, steps + 1):
        net.train()
        b = torch.randint(0, len(x), (32,), generator=gen)
        xb, yb, mix = x[b], y[b].view(-1, 1), None
        if cfg.denoiser.head_augment:
            xb, mix = augment(xb, yb, cfg.denoiser.head_augment, gen)
        loss = head_loss(net, xb, torch.zeros(len(b), dtype=torch.long), yb, mix)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0:
            acc = float((predict(net, xv) == yv).mean())
            if acc > best:
                best, best_state = acc, copy.deepcopy(net.state_dict())
    if best_state is not None:
        net.load_state_dict(best_state)
    return net, {"steps": steps, "validation_accuracy": best, "validation_images": len(val)}


def classifier_edits(
    model, data, edits: Edits, noise: float, guidance: float, steps: int, seed: int, start: str = "noise"
):
    """Every edit of ``edits`` by the classifier method, uint8 images in the order of ``edits``."""
    src = data.images[np.asarray(edits.source)]
    out = np.empty_like(src)
    factor, target = np.asarray(edits.factor), np.asarray(edits.target)
    for k in sorted(set(factor)):
        rows = np.flatnonzero(factor == k)
        out[rows] = classifier_edit(
            model, src[rows], int(k), target[rows], steps, guidance, noise, seed, start
        )
    return out


def head_accuracy(model, data, split, n: int = 2000, seed: int = 7) -> dict:
    """The head's accuracy per factor at t = 0 on ``n`` images of ``data`` (seen and held-out
    combinations apart)."""
    rows = np.random.default_rng(seed).choice(len(data), min(n, len(data)), replace=False)
    held = split.heldout(data.factors[rows])
    with torch.no_grad():
        z = model.to_latent(to_unit(data.images[rows]))
        logits = [
            classify(model.denoiser, z[i : i + 256], torch.zeros(len(z[i : i + 256]), dtype=torch.long))
            for i in range(0, len(z), 256)
        ]
    out: dict = {}
    for j, k in enumerate(model.denoiser.head.factors):
        pred = torch.cat([lg[j] for lg in logits]).argmax(1).numpy()
        right = pred == data.factors[rows, k]
        name = data.spec.factors[k].name
        out[name] = {
            "seen": float(right[~held].mean()),
            "heldout": float(right[held].mean()) if held.any() else None,
        }
    return out


def model_command(run: Path) -> str:
    """The command that trains ``run`` from the shipped Shapes model: ``scripts/retrain_denoiser.py``
    with a ``--set`` for each field where the run's config differs from the shipped one."""
    config = lambda folder: from_dict(RunConfig, read_json(folder / "run_config.json"), "run config")  # noqa: E731
    shipped, mine = config(pretrained_run(32)).to_json(), config(run).to_json()
    sets = [
        f"--set {shlex.quote(f'{section}.{name}={json.dumps(value)}')}"
        for section, fields in mine.items()
        for name, value in fields.items()
        if shipped.get(section, {}).get(name) != value
    ]
    return " ".join(["python scripts/retrain_denoiser.py", str(run), *sets])


def visual_counterfactuals(run: Path, per_factor: int, noises, guidances, seed: int = 0) -> dict:
    """The ``visual_counterfactuals`` block (module docstring)."""
    cfg, model = load_model(run)
    data, split, _ = prepare_data(cfg)
    oracle, oracle_acc = get_oracle(run, cfg, data, progress=True)
    e = cfg.evaluate
    steps = e.steps
    heads = set(model.denoiser.head.factors)
    choice = plan_edits(data, split, max(1, per_factor // 4), seed + 1)["seen"].keep(lambda k, v: k in heads)
    truth = lambda edits: data.factors[np.asarray(edits.source, int)]  # noqa: E731
    grid = []
    for start, noise, guidance in itertools.product(("noise", "source"), noises, guidances):
        t0 = time.monotonic()
        images = classifier_edits(model, data, choice, noise, guidance, steps, seed, start)
        sc = score_edits(oracle, data.spec, choice, images, truth(choice))
        grid.append(
            {
                "start": start,
                "noise": noise,
                "guidance": guidance,
                **{k: sc[k] for k in ("effectiveness", "preservation", "all_right", "edits")},
                "seconds": round(time.monotonic() - t0, 1),
            }
        )
        print(json.dumps(grid[-1]), flush=True)
    best = max(grid, key=lambda r: (r["all_right"], r["effectiveness"]))
    out: dict = {
        "model_command": model_command(run),
        "oracle_accuracy": oracle_acc,
        "head_accuracy_t0": head_accuracy(model, data, split),
        "choice_edits": len(choice),
        "grid": grid,
        "chosen": {"start": best["start"], "noise": best["noise"], "guidance": best["guidance"]},
        "swap_settings": {"steps": steps, "guidance": e.guidance, "strength": e.edit_strength},
    }
    for kind, edits in plan_edits(data, split, per_factor, seed).items():
        edits = edits.keep(lambda k, v: k in heads)
        src = data.images[np.asarray(edits.source)]
        made = {
            "classifier": classifier_edits(
                model, data, edits, best["noise"], best["guidance"], steps, seed, best["start"]
            ),
            "swap": run_edits(model, data, edits, steps, e.guidance, strength=e.edit_strength),
            "copy": src,
        }
        block = {}
        for method, images in made.items():
            sc = score_edits(oracle, data.spec, edits, images, truth(edits))
            block[method] = {k: v for k, v in sc.items() if k != "changed_right"}
        out[f"shapes_{kind}"] = {
            "effectiveness": block["classifier"]["effectiveness"],
            "preservation": block["classifier"]["preservation"],
            **block,
        }
        print(
            kind,
            json.dumps({m: (b["effectiveness"], b["preservation"]) for m, b in block.items()}),
            flush=True,
        )
    out["command"] = "python " + shlex.join(sys.argv)
    return out


def denoising_errors(model, images: np.ndarray, noise: float = 0.1, seed: int = 0) -> dict:
    """Mean absolute errors on [0, 1] of the noised images and of each denoiser (``--daed``)."""
    mae = lambda a: float(np.abs(a.astype(np.float32) - images).mean() / 255)  # noqa: E731
    noised, daed = model.denoise(images, noise, "daed", 10, seed)
    out = {"noised_mae": mae(noised), "daed_mae": mae(daed)}
    for steps in (1, 10):
        out[f"diffusion_{steps}_mae"] = mae(model.denoise(images, noise, "diffusion", steps, seed)[1])
    out["diffusion_mae"] = out["diffusion_10_mae"]
    return out


def daed_tags(form: str, seed: int) -> list[str]:
    """What sets a DAED block apart from the default one (form ``v``, seed 0): its name's parts."""
    return [*([form] if form != "v" else []), *([f"seed{seed}"] if seed else [])]


def daed_block(
    work: Path, crops: Path, steps: int, daed_steps: int, form: str = "v", seed: int = 0, n: int = 500
) -> dict:
    """The ``daed`` block of the file (module docstring), the DAE of output form ``form``, the runs
    of train seed ``seed``."""
    tasks = {"shapes": shapes_task(work), "bbbc021_crops": crops_task(work, crops)}
    tests = {name: task[1].images[:n] for name, task in tasks.items()}
    rows = []
    for name, (train, _, _, extra) in tasks.items():
        cfg = pixel_config(
            extra,
            steps,
            daed__enabled=True,
            daed__steps=daed_steps,
            daed__parameterization=form,
            train__seed=seed,
        )
        run = work / "-".join([f"daed-{name}", *daed_tags(form, seed)])
        t0 = time.monotonic()
        model = fit(
            cfg,
            run,
            resume=run.is_dir(),
            progress=False,
            data=(train, make_split(train.spec, cfg.split), train),
        ).model
        fit_s = round(time.monotonic() - t0, 1)
        for target, images in tests.items():
            rows.append(
                {
                    "trained_on": name,
                    "applied_to": target,
                    **denoising_errors(model, images),
                    "fit_seconds": fit_s,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    keys = ("noised_mae", "daed_mae", "diffusion_1_mae", "diffusion_10_mae", "diffusion_mae")
    out: dict = {}
    for kind, same in (("in_domain", True), ("out_of_domain", False)):
        part = [r for r in rows if (r["trained_on"] == r["applied_to"]) == same]
        out[kind] = {k: float(np.mean([r[k] for r in part])) for k in keys}
        out[kind]["directions"] = {
            f"{r['trained_on']} -> {r['applied_to']}": {k: r[k] for k in keys} for r in part
        }
    return {
        **out,
        "noise": 0.1,
        "test_images": n,
        "denoiser_steps": steps,
        "daed_steps": daed_steps,
        "parameterization": form,
        "seed": seed,
        "rows": rows,
        "command": "python " + shlex.join(sys.argv),
    }


STEPS = 1200  # the joint fits' default denoiser steps


def _key(r: dict) -> tuple:
    return (
        r["dataset"],
        r["fraction"],
        r["seed"],
        r.get("head_max_t", 1.0),
        tuple(r.get("head_augment", [])),
        r.get("steps", STEPS),
        r.get("head_conditioned", True),
    )


def variant(head_max_t: float, ops, steps: int = STEPS, conditioned: bool = True) -> str:
    """How a row's joint fit differs from the default, for its dataset's name in the summary."""
    parts = [] if head_max_t == 1 else [f"head_max_t {head_max_t:g}"]
    parts += [f"augment {'+'.join(ops)}"] if ops else []
    parts += [] if conditioned else ["head unconditioned"]
    return ", ".join(parts + ([f"{steps} steps"] if steps != STEPS else []))


def summarise(rows: list[dict]) -> dict:
    out: dict = {}
    for r in rows:
        tag = variant(
            r.get("head_max_t", 1.0),
            r.get("head_augment", []),
            r.get("steps", STEPS),
            r.get("head_conditioned", True),
        )
        name = f"{r['dataset']} ({tag})" if tag else r["dataset"]
        out.setdefault(name, {}).setdefault(str(r["fraction"]), []).append(r)
    table: dict = {}
    for dataset, per in out.items():
        for fraction, rs in sorted(per.items(), key=lambda kv: float(kv[0])):
            head = [r["head"]["accuracy"] for r in rs]
            cnn = [r["cnn"]["accuracy"] for r in rs]
            table.setdefault(dataset, {})[fraction] = {
                "head": float(np.mean(head)),
                "cnn": float(np.mean(cnn)),
                "head_sd": float(np.std(head, ddof=1)) if len(rs) > 1 else None,
                "cnn_sd": float(np.std(cnn, ddof=1)) if len(rs) > 1 else None,
                "head_balanced": float(np.mean([r["head"]["balanced"] for r in rs])),
                "cnn_balanced": float(np.mean([r["cnn"]["balanced"] for r in rs])),
                "majority": rs[0]["majority"],
                "seeds": sorted(r["seed"] for r in rs),
                "command": rs[-1]["command"],
            }
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="shapes,bbbc021_crops")
    ap.add_argument("--fractions", default="0.05,0.2,0.02,0.1")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=STEPS, help="denoiser steps of each joint fit")
    ap.add_argument("--cnn-steps", type=int, default=1500, help="steps of each CNN")
    ap.add_argument(
        "--head-max-t",
        type=float,
        default=1.0,
        help="denoiser.head_max_t of the joint fits (rows of another value are kept apart)",
    )
    ap.add_argument(
        "--head-augment",
        default="",
        help="denoiser.head_augment of the joint fits, comma-separated (dihedral, mixup), given to the "
        "CNN's batches too (rows of another value are kept apart)",
    )
    ap.add_argument(
        "--head-unconditioned",
        action="store_true",
        help="denoiser.head_conditioned false: the head factor's codes never reach the UNet",
    )
    ap.add_argument("--crops", default=str(SHARED / "crops.npz"))
    ap.add_argument("--work", default="runs/bench-joint")
    ap.add_argument(
        "--counterfactuals",
        type=Path,
        metavar="RUN",
        help="measure visual counterfactuals of this Shapes run (fitted with a head) and stop",
    )
    ap.add_argument(
        "--per-factor", type=int, default=100, help="--counterfactuals: edits per factor and kind"
    )
    ap.add_argument("--noises", default="0.1,0.3,0.5,0.7", help="--counterfactuals: noise levels tried")
    ap.add_argument("--guidances", default="3,10,30", help="--counterfactuals: head guidance weights tried")
    ap.add_argument("--daed", action="store_true", help="measure DAED against the diffusion chain and stop")
    ap.add_argument(
        "--daed-steps", type=int, default=1200, help="--daed: steps of each denoising autoencoder"
    )
    ap.add_argument(
        "--daed-parameterization",
        choices=["v", "edm"],
        default="v",
        help="--daed: the DAE's output form (daed.parameterization)",
    )
    ap.add_argument("--daed-seed", type=int, default=0, help="--daed: the runs' train.seed")
    a = ap.parse_args()
    torch.set_num_threads(2)
    work = Path(a.work)
    saved = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    if a.daed:
        if not Path(a.crops).is_file():
            sys.exit(f"{a.crops}: not found; --daed needs the real BBBC021 crops of ../shared")
        form = a.daed_parameterization
        block = daed_block(work, Path(a.crops), a.steps, a.daed_steps, form, a.daed_seed)
        saved = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
        atomic_write_json(RESULTS, {**saved, "_".join(["daed", *daed_tags(form, a.daed_seed)]): block})
        print(f"wrote {RESULTS}")
        return
    if a.counterfactuals is not None:
        block = visual_counterfactuals(
            a.counterfactuals,
            a.per_factor,
            [float(v) for v in a.noises.split(",")],
            [float(v) for v in a.guidances.split(",")],
        )
        saved = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
        atomic_write_json(RESULTS, {**saved, "visual_counterfactuals": block})
        print(f"wrote {RESULTS}")
        return
    rows = saved.get("semi_supervised_rows", [])
    ops = [op for op in a.head_augment.split(",") if op]
    for dataset in a.datasets.split(","):
        if dataset == "shapes":
            train, test, factor, extra = shapes_task(work)
        elif dataset == "bbbc021_crops":
            if not Path(a.crops).is_file():
                sys.exit(f"{a.crops}: not found; the crops task needs the real BBBC021 crops of ../shared")
            train, test, factor, extra = crops_task(work, Path(a.crops))
        else:
            sys.exit(f"--datasets: expected shapes or bbbc021_crops, got {dataset!r}")
        k = train.spec.resolve(factor)
        truth = test.factors[:, k]
        majority = float(np.bincount(truth).max() / len(truth))
        x_test = to_unit(test.images)
        for fraction in map(float, a.fractions.split(",")):
            for seed in map(int, a.seeds.split(",")):
                conditioned = not a.head_unconditioned
                cfg = config(extra, factor, fraction, seed, a.steps, a.head_max_t, ops, conditioned)
                tail = "" if a.head_max_t == 1 else f"-t{a.head_max_t:g}"
                tail += "".join(f"-{op}" for op in ops) + ("" if a.steps == STEPS else f"-{a.steps}steps")
                tail += "" if conditioned else "-uncond"
                run = work / f"{dataset}-{fraction:g}-{seed}{tail}"
                split = make_split(train.spec, cfg.split)
                t0 = time.monotonic()
                result = fit(cfg, run, resume=run.is_dir(), progress=False, data=(train, split, train))
                fit_s = time.monotonic() - t0
                head = scores(predict(result.model.denoiser, x_test), truth)
                labelled = labelled_rows(len(train), fraction, seed)
                t0 = time.monotonic()
                net, info = train_cnn(cfg, train, k, labelled, seed, a.cnn_steps)
                cnn = scores(predict(net, x_test), truth)
                row = {
                    "dataset": dataset,
                    "fraction": fraction,
                    "seed": seed,
                    "head_max_t": a.head_max_t,
                    "head_augment": ops,
                    "steps": a.steps,
                    **({} if conditioned else {"head_conditioned": False}),
                    "labelled_images": int(labelled.sum()),
                    "train_images": len(train),
                    "test_images": len(test),
                    "majority": majority,
                    "head": head,
                    "cnn": cnn,
                    "fit_seconds": round(fit_s, 1),
                    "cnn_seconds": round(time.monotonic() - t0, 1),
                    "cnn_training": info,
                    "command": "python " + shlex.join(sys.argv),
                }
                print(json.dumps(row), flush=True)
                key = (dataset, fraction, seed, a.head_max_t, tuple(ops), a.steps)
                rows = [r for r in rows if _key(r) != key] + [row]
                atomic_write_json(
                    RESULTS,
                    {
                        **saved,
                        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, "
                        f"torch {torch.__version__}",
                        "date": time.strftime("%Y-%m-%d"),
                        "semi_supervised": summarise(rows),
                        "semi_supervised_rows": rows,
                    },
                )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
