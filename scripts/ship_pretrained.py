"""Copy a finished run into the package as the quickstart's pretrained starting point.

    python scripts/ship_pretrained.py RUN [--data shapes|cellsim] [--size 32] [--oracle RUN2] [--name NAME]
    python scripts/ship_pretrained.py --prototypes-only [--data shapes|cellsim] [--size 32]

Writes ``src/factordiff/pretrained/{data}{size}/``: the run's config, split, full training log and
its model, with the network weights stored as float16 (half the size; they are cast back to
float32 on load; an unsupervised code's basis stays float32, and the quickstart's numbers are
measured on these float16 weights). The value prototypes and the mean code are then recomputed
with those shipped weights from the training images only (the run's data rendered again from its
config, held-out combinations removed), and stored as float32. ``--prototypes-only`` does only
that last step on the shipped folder. The README in that folder names the command that trained
the run. ``--oracle RUN2`` also ships the
evaluation oracle that ``factordiff evaluate RUN2`` trained (``RUN2/oracle``: weights and its
accuracy on fresh renders), so the quickstart judges with it instead of training one.
``--name NAME`` ships to ``pretrained/NAME`` instead. An unsupervised run trained on a shipped
model's frozen denoiser (``unsupervised.base``) ships without the weights it shares with that base
(its autoencoder, and the base inside its denoiser): ``FactorModel.load`` takes them from the base.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from factordiff.checkpoint import atomic_save_tensors, load_tensors, read_json
from factordiff.config import RunConfig, from_dict
from factordiff.data.sources import prepare_data
from factordiff.models.images import PROTOTYPES, FactorModel, base_folder

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "factordiff" / "pretrained"
HALF = ("distiller", "encoder", "autoencoder", "denoiser")


def ship_weights(run: Path, dest: Path) -> dict:
    """Copy the run into ``dest`` with float16 network weights; returns the last step of each stage."""
    if not (run / "model" / "config.json").is_file():
        raise SystemExit(f"{run}: no finished model in {run / 'model'}")
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "model").mkdir(parents=True)
    for name in ("run_config.json", "split.json", "train_log.jsonl"):
        shutil.copy2(run / name, dest / name)
    base = read_json(run / "run_config.json")["unsupervised"].get("base")
    # a base that ships too (the folder that the fit and the loader resolve is in the package)
    shared = base is not None and PACKAGE in base_folder(base).resolve().parents
    for f in sorted((run / "model").iterdir()):
        if shared and f.stem == "autoencoder":
            continue
        if f.suffix == ".safetensors" and f.stem in HALF:
            state = {
                k: (v.half() if v.is_floating_point() and "basis." not in k else v)  # a basis stays exact
                for k, v in load_tensors(f).items()
                if not (shared and k.startswith("base."))
            }
            atomic_save_tensors(state, dest / "model" / f.name)
        else:
            shutil.copy2(f, dest / "model" / f.name)
    steps = {}
    for line in (run / "train_log.jsonl").read_text().splitlines():
        row = json.loads(line)
        steps[row["stage"]] = row["step"]
    return steps


def ship_prototypes(dest: Path) -> dict:
    """Recompute ``dest/model/prototypes.safetensors`` with the shipped weights from the training
    images only; returns the number of training images and the values left without a prototype."""
    cfg = from_dict(RunConfig, read_json(dest / "run_config.json"), str(dest / "run_config.json"))
    _, _, train = prepare_data(cfg)
    model = FactorModel.load(dest / "model")
    model.set_prototypes(model.codes(train.images), train.factors)
    atomic_save_tensors(
        {k: v.float() for k, v in model.prototype_tensors().items()}, dest / "model" / PROTOTYPES
    )
    missing = [
        f"{f.name}={f.values[v]}"
        for k, f in enumerate(model.spec.factors)
        for v in range(f.size)
        if not model.has_prototype(k, v)
    ]
    return {"train_images": len(train), "values_without_prototype": missing}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "run", type=Path, nargs="?", help="the finished run folder to ship (not with --prototypes-only)"
    )
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--data", choices=["shapes", "cellsim"], default="shapes")
    ap.add_argument("--oracle", type=Path, help="a run whose trained oracle (RUN/oracle) ships too")
    ap.add_argument("--name", help="the shipped folder's name (default: DATA then SIZE, e.g. shapes32)")
    ap.add_argument(
        "--prototypes-only",
        action="store_true",
        help="only recompute the shipped model's prototypes from its training images",
    )
    args = ap.parse_args()
    dest = PACKAGE / (args.name or f"{args.data}{args.size}")
    if (args.run is None) != args.prototypes_only:
        raise SystemExit("pass RUN, or --prototypes-only without RUN")
    report = {"shipped": str(dest)}
    if args.run is not None:
        report["steps"] = ship_weights(args.run, dest)
    report["prototypes"] = ship_prototypes(dest)
    if args.oracle is not None:
        if not (args.oracle / "oracle" / "oracle.safetensors").is_file():
            raise SystemExit(f"{args.oracle}: no trained oracle in {args.oracle / 'oracle'}")
        shutil.copytree(args.oracle / "oracle", dest / "oracle", dirs_exist_ok=True)
        report["oracle"] = read_json(dest / "oracle" / "accuracy.json")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
