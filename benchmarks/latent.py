"""Latent-space numbers on the Shapes replica: disentanglement_lib metrics of the supervised
distiller and of the unsupervised encoder, written to benchmarks/results/latent.json.

    python benchmarks/latent.py [--part distiller|unsupervised|both] [--size 32]
                                [--retrain] [--base shapes32] [--unsupervised-minutes 60]
                                [--from RUN] [--out runs/latent]

Each part replaces its own entry in the results file and keeps the others': ``distiller`` and
``unsupervised`` at 32x32, ``distiller_64`` and ``unsupervised_64`` at 64x64; ``unsupervised_raw``
scores the same encoder's raw codes, before its basis (``unsupervised.unmix``). ``--set KEY=VALUE``
(JSON values, repeatable; with ``--retrain``) trains the unsupervised encoder with a lever: its row
goes to ``unsupervised_levers`` (one row per size, base, budget and set of levers, the row without
levers included when asked for with ``--set none``), never to the main entry, so that levers are
compared at one budget and only the one kept is trained long and shipped.

At 32x32 the shipped models are scored as they are, without training: the quickstart's distiller
(``pretrained/shapes32``) and the unsupervised encoder trained on its frozen denoiser
(``pretrained/shapes32-unsupervised``). ``--retrain`` (and any other size) trains them here: the
distiller from scratch, the unsupervised encoder from scratch or, with ``--base RUN`` (a supervised
run folder or a shipped model's name), on that run's frozen autoencoder and denoiser. ``--from RUN``
keeps a finished unsupervised run's encoder and branch and runs only the stages after them (the
basis of ``unsupervised.unmix``) into ``--out``, for ``scripts/ship_pretrained.py``; it scores nothing.

Codes of 15,000 replica images (10,000 train / 5,000 test points as disentanglement_lib uses),
nothing held out (as disentanglement papers train on the whole grid). The replica is factordiff's
procedural re-rendering of 3D Shapes, not DeepMind's dataset: compare with published numbers as
indications only.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import replace
from importlib import resources
from pathlib import Path

import torch

from factordiff.config import load_config
from factordiff.data.shapes import replica
from factordiff.evaluate.analysis import code_metrics
from factordiff.fit import fit, start_from
from factordiff.models.images import FactorModel
from factordiff.models.runs import read_run_config

OUT = Path(__file__).parent / "results" / "latent.json"
PUBLISHED = {  # Shapes3D, as reported by the papers
    "EncDiff": {"factorvae": 0.999, "dci_disentanglement": 0.969},
    "FDAE": {"factorvae": 0.987, "dci_disentanglement": 0.917, "mig": 0.473},
    "DisDiff": {"factorvae": 0.902, "dci_disentanglement": 0.723},
}


def scores(model, size: int, n: int, seed: int) -> dict:
    data = replica(size, n=n, seed=seed)
    codes = model.codes(data.images).numpy()
    return code_metrics(codes, data.factors, scale=1.0, seed=0, progress=True)


def shipped(name: str) -> Path:
    return Path(str(resources.files("factordiff") / "pretrained" / name))


def entry(net, size: int, command: str, **extra) -> dict:
    """The results row of the codes of ``net`` (a FactorModel) on fresh ``size`` x ``size`` replica images."""
    return {"command": command, "size": size, **extra, **scores(net, size, 15000, seed=101)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--images", type=int, default=60000, help="training images rendered")
    ap.add_argument("--unsupervised-minutes", type=float, default=60.0)
    ap.add_argument("--unsupervised-steps", type=int, default=None, help="cap on the encoder's steps")
    ap.add_argument(
        "--base", default=None, help="train the unsupervised encoder on this run's frozen denoiser"
    )
    ap.add_argument(
        "--retrain", action="store_true", help="train at 32x32 instead of scoring the shipped models"
    )
    ap.add_argument("--part", choices=("distiller", "unsupervised", "both"), default="both")
    ap.add_argument("--out", default="runs/latent")
    ap.add_argument("--resume", action="store_true", help="continue an interrupted training run in --out")
    ap.add_argument(
        "--from",
        dest="source",
        default=None,
        help="a finished unsupervised run whose encoder and branch to keep: only later stages run (unmix)",
    )
    ap.add_argument(
        "--set", action="append", default=[], help="KEY=VALUE: a lever of the unsupervised encoder (JSON)"
    )
    args = ap.parse_args()
    if args.set and not (args.retrain or args.size != 32):
        ap.error("--set: a lever needs a training run (--retrain)")
    torch.set_num_threads(2)
    out = Path(args.out)
    command = "python " + shlex.join(sys.argv)
    results: dict = json.loads(OUT.read_text()) if OUT.is_file() else {}
    results |= {
        "points": 15000,
        "published_shapes3d": PUBLISHED,
        "note": "factordiff's procedural replica of 3D Shapes, not the original dataset",
    }
    suffix = "" if args.size == 32 else f"_{args.size}"
    train = args.retrain or args.size != 32
    common = {"data.size": args.size, "data.n": args.images, "split.kind": "none", "train.threads": 2}
    if args.part in ("distiller", "both"):
        if train:
            t = time.time()
            over = {**common, "distill.ordinal_dims": 1}  # one axis per ordinal factor (see the README)
            sup = fit(
                load_config(None, over),
                out / f"distiller{suffix}",
                args.resume,
                progress=True,
                encoder_only=True,
            )
            row = {"train_seconds": round(time.time() - t), "config": over}
            results[f"distiller{suffix}"] = entry(sup.model, args.size, command, **row)
        else:
            model = FactorModel.load(shipped("shapes32") / "model")
            row = {
                "model": "pretrained/shapes32",
                "config": json.loads((shipped("shapes32") / "run_config.json").read_text())["distill"],
            }
            results["distiller"] = entry(model, 32, command, **row)
    if args.part in ("unsupervised", "both"):
        if train:
            over = {
                **common,
                "unsupervised.enabled": True,
                "train.minutes": args.unsupervised_minutes,
            }
            if args.unsupervised_steps:
                over["unsupervised.steps"] = args.unsupervised_steps
            if args.base:
                over["unsupervised.base"] = args.base
            else:
                over["autoencoder.block_out_channels"] = (
                    [32, 64, 128, 128] if args.size == 64 else [32, 64, 128]
                )
            levers = {k: json.loads(v) for k, v in (i.split("=", 1) for i in args.set if i != "none")}
            over.update(levers)
            name = f"unsupervised{suffix}" + "".join(
                f"-{k}={json.dumps(v)}" for k, v in sorted(levers.items())
            )
            name += "-levers" if args.set else ""
            t = time.time()
            cfg = load_config(None, over)
            if args.source and not (args.resume and (out / name).exists()):
                source = Path(args.source)
                done = read_run_config(source)  # a finished run (refused in one line otherwise)
                cfg = replace(done, unsupervised=replace(done.unsupervised, unmix=cfg.unsupervised.unmix))
                start_from(source, out / name, cfg, ("encoder", "denoiser"))
                args.resume = True
            uns = fit(cfg, out / name, args.resume, progress=True)
            if args.source:  # what is shipped is scored, not this folder
                print(
                    f"{out / name}: {args.source} and its later stages; ship with scripts/ship_pretrained.py"
                )
                return
            row = {"train_seconds": round(time.time() - t), "config": over}
            model = uns.model
        else:
            folder = shipped("shapes32-unsupervised")
            model = FactorModel.load(folder / "model")
            row = {
                "model": "pretrained/shapes32-unsupervised",
                "config": json.loads((folder / "run_config.json").read_text())["unsupervised"],
            }
        about = {"factor_blocks": model.factor_blocks, **row}
        row = entry(model, args.size, command, **about)
        if args.set:
            row["levers"] = levers
            same = ("size", "levers", "config")
            kept = [r for r in results.get("unsupervised_levers", []) if any(r[k] != row[k] for k in same)]
            results["unsupervised_levers"] = kept + [row]
        else:
            results[f"unsupervised{suffix}"] = row
        if getattr(model.encoder, "basis", None) is not None and not args.set:
            model.encoder.basis = None  # the same encoder's raw codes: its output before the basis
            raw = entry(model, args.size, command, **about, codes="unmix none")
            results[f"unsupervised_raw{suffix}"] = raw
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2, default=float) + "\n")
    for name in ("distiller", "unsupervised", "unsupervised_raw", "distiller_64", "unsupervised_64"):
        if name in results:
            for variant in ("raw", "first_pc"):
                r = results[name].get(variant)
                if r:
                    print(name, variant, {k: round(v, 3) for k, v in r.items() if isinstance(v, float)})


if __name__ == "__main__":
    main()
