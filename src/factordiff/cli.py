"""``factordiff`` commands: a thin layer over the Python API.

Each ``_cmd_*`` function turns parsed arguments into one library call and prints the result.
A FactordiffError (bad input, impossible request) becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Sequence

from factordiff.errors import FactordiffError


def _csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _cmd_quickstart(args: argparse.Namespace) -> None:
    from factordiff.evaluate.suite import summary_lines
    from factordiff.quickstart import quickstart

    metrics = quickstart(Path(args.out), minutes=args.minutes, size=args.size, from_scratch=args.from_scratch)
    print("\n".join(summary_lines(metrics)))
    print(f"report: {Path(args.out) / 'report.html'}")


def _fit_overrides(args: argparse.Namespace) -> dict:
    pairs = {
        "data.source": args.data,
        "data.size": args.size,
        "data.factors": _csv_list(args.factors) if args.factors else None,
        "split.kind": args.holdout,
        "split.factors": _csv_list(args.holdout_factors) if args.holdout_factors else None,
        "split.where": args.holdout_where,
        "train.minutes": args.minutes,
        "train.seed": args.seed,
        "profiles.normalize": args.normalize,
        "profiles.controls": args.controls,
        "profiles.moa": args.moa,
        "profiles.max_missing": args.max_missing,
        "profiles.perturbation_embedding": args.perturbation_embedding,
        "profiles.smiles": args.smiles,
        "profiles.roles": _csv_list(args.roles) if args.roles else None,
        "denoiser.adapter": args.adapter,
        "denoiser.train_base": {"joint": True, "frozen": False}.get(args.base),
        "denoiser.structure": args.structure,
    }
    over = {k: v for k, v in pairs.items() if v is not None}
    if args.data and not args.data.startswith("shapes"):
        over.setdefault("data.n", None)
    return over


def _cmd_fit(args: argparse.Namespace) -> None:
    from factordiff.config import load_config
    from factordiff.fit import fit
    from factordiff.train import process

    result = fit(load_config(args.config, _fit_overrides(args)), Path(args.out), resume=args.resume)
    if process()[2]:  # under accelerate launch, one line from the main process
        print("\n".join(result.summary()))


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from factordiff.evaluate.suite import evaluate, summary_lines

    print("\n".join(summary_lines(evaluate(Path(args.run)))))
    print(f"metrics: {Path(args.run) / 'metrics.json'}")


def _cmd_info(args: argparse.Namespace) -> None:
    from factordiff.models.runs import load_run

    info = load_run(Path(args.run)).info()
    print(f"{info['run']}: {info['kind']} run of {info['source']}")
    for f in info["factors"]:
        values = ", ".join(f["values"][:12]) + (
            f" ... ({len(f['values'])} values)" if len(f["values"]) > 12 else ""
        )
        print(f"  {f['name']} ({f['kind']}, {f['role'] or 'no role'}): {values}")
    print(f"training rows: {info['train_rows']}")
    print(f"held out: {info['heldout'] or 'nothing'}")
    print(f"written by factordiff {info['factordiff_version'] or '(version not recorded)'}")


def _cmd_report(args: argparse.Namespace) -> None:
    from factordiff.report import build_report

    print(f"report: {build_report(Path(args.run))}")


def _cmd_analyze(args: argparse.Namespace) -> None:
    from factordiff.evaluate.analysis import analyze_run
    from factordiff.report import build_report

    a = analyze_run(Path(args.run), images=args.images, metric_scale=args.metric_scale)
    for variant, scores in a["disentanglement"].items():
        print(variant, " ".join(f"{k}={v:.3f}" for k, v in scores.items() if isinstance(v, float)))
    print(f"report: {build_report(Path(args.run))}")


def _cmd_counterfactual(args: argparse.Namespace) -> None:
    from factordiff.data.images import read_image, save_png
    from factordiff.edit import edit_image, edit_settings, fit_image
    from factordiff.factors import parse_settings
    from factordiff.models.runs import load_run

    if not args.set and not (args.from_ and args.factor):
        raise FactordiffError("expected --set FACTOR=VALUE, or --from REF.png with --factor FACTOR")
    if bool(args.from_) != bool(args.factor):
        raise FactordiffError("--from and --factor go together: --from REF.png --factor FACTOR")
    if Path(args.out).suffix.lower() != ".png":
        raise FactordiffError(f"--out {args.out}: expected a .png path")
    run = load_run(Path(args.run))
    if run.kind != "images":
        raise FactordiffError(
            f"{args.run}: a {run.kind} run; counterfactual edits images (use factordiff regenerate)"
        )
    cfg, model = run.config, run.model
    image = fit_image(model, read_image(Path(args.image)), args.image)
    settings = parse_settings(model.spec, args.set) if args.set else {}
    sets = {k: model.spec.factors[k].index(v) for k, v in settings.items()}
    reference, factors = None, None
    if args.from_:
        reference = fit_image(model, read_image(Path(args.from_)), args.from_)
        factors = [model.spec.resolve(n) for n in _csv_list(args.factor)]
    strength, guidance, residual = edit_settings(
        cfg.evaluate,
        model.spec,
        sorted(set(sets) | set(factors or [])),
        args.strength,
        args.guidance,
        args.residual,
    )
    out = edit_image(
        model,
        image,
        sets,
        reference,
        factors,
        steps=args.steps or cfg.evaluate.steps,
        guidance=guidance,
        strength=strength,
        residual=residual,
    )
    save_png(out if out.shape[2] != 1 else out[..., 0], Path(args.out), scale=1)
    print(f"wrote {args.out}")


def _cmd_regenerate(args: argparse.Namespace) -> None:
    from factordiff.models.runs import load_run
    from factordiff.regenerate import check_out, regenerate, write_regenerated

    run = load_run(Path(args.run))
    check_out(run, Path(args.out))
    result = regenerate(
        run,
        args.where or [],
        args.set,
        steps=args.steps,
        guidance=args.guidance,
        strength=args.strength,
        residual=args.residual,
        limit=args.limit,
        draws=args.draws,
        seed=args.seed,
        table=args.table,
    )
    r = write_regenerated(result, run, Path(args.out))
    for v in r["unseen_values"]:
        print(
            f"note: {v} has no training row; generated with that factor's code absent "
            "(from the other factors)"
        )
    print(
        f"wrote {r['rows']} regenerated {run.kind == 'profiles' and 'rows' or 'images'} "
        f"({r['edit']}) to {r['out']}"
    )


def _cmd_pack(args: argparse.Namespace) -> None:
    from factordiff.data.shards import describe, pack
    from factordiff.data.sources import load_data

    if args.source.startswith("shards:"):
        raise FactordiffError(f"{args.source}: already packed")
    data = load_data(
        args.source,
        size=args.size,
        factors=_csv_list(args.factors) if args.factors else None,
        n=args.n,
        seed=args.seed,
    )
    index = pack(data, Path(args.out), shard_size=args.shard_size)
    print(f"packed {describe(index)} into {args.out}; train with --data shards:{args.out}")


def _cmd_fields(args: argparse.Namespace) -> None:
    from factordiff.data.cells import check_fields, join_metadata, open_fields, write_index

    fields = open_fields(args.source, args.channels, Path(args.root) if args.root else None, args.plate)
    for spec in args.join or []:
        table, sep, pairs = spec.rpartition(":")
        on = (
            dict(p.split("=", 1) for p in _csv_list(pairs))
            if sep and all("=" in p for p in _csv_list(pairs))
            else None
        )
        if not on:
            raise FactordiffError(
                f"--join {spec!r}: expected TABLE:FIELD_COLUMN=TABLE_COLUMN[,...], e.g. "
                "platemap.csv:Metadata_Well=well"
            )
        fields = join_metadata(fields, Path(table), on)
    summary = check_fields(fields, args.bit_depth)
    print(
        f"{summary['fields']} fields of {summary['width']}x{summary['height']} {summary['dtype']}, channels "
        f"{', '.join(summary['channels'])}"
    )
    for name, (lo, mid, hi) in summary["percentiles_1_50_99.9"].items():
        print(f"  {name:10s} intensity percentiles 1 / 50 / 99.9: {lo:g} / {mid:g} / {hi:g}")
    print(f"  metadata: {', '.join(summary['metadata'])}")
    if args.out:
        write_index(fields, Path(args.out))
        print(f"wrote {args.out}")


def _cmd_disentanglement(args: argparse.Namespace) -> None:
    from factordiff.checkpoint import atomic_write_json
    from factordiff.evaluate.disentanglement import format_table, load_and_score

    blocks = [int(b) for b in _csv_list(args.blocks)] if args.blocks else None
    scores = load_and_score(
        args.codes, args.factors, blocks=blocks, first_pc=args.first_pc, scale=args.scale, progress=True
    )
    print(format_table(scores))
    if args.json:
        atomic_write_json(Path(args.json), scores)


def _positive_int(text: str) -> int:
    v = int(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return v


def _strength(text: str) -> float:
    v = float(text)
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"expected a share of the noise schedule in (0, 1], got {text}")
    return v


SET_HELP = (
    "new factor values, F=V,G=W (repeatable; names with or without Metadata_; "
    'a value holding a comma in double quotes: compound="a,b")'
)
WHERE_HELP = (
    "rows to regenerate: matching every pair of F=V,G=W (repeatable: any condition); default all rows"
)


def _edit_options(p: argparse.ArgumentParser) -> None:
    """The edit options that counterfactual and regenerate share, for every kind of run."""
    p.add_argument(
        "--steps",
        type=_positive_int,
        help="solver steps of the inversion and of the regeneration (default: the run's evaluate.steps; "
        "profiles: profiles.sample_steps)",
    )
    p.add_argument(
        "--guidance",
        type=float,
        help="one guidance weight on the set factors (default: the run's weights per role in its config)",
    )
    p.add_argument(
        "--strength",
        type=_strength,
        help="how far up the noise schedule to invert, in (0, 1]; 1 = to pure noise (default: the run's "
        "evaluate.edit_strength or technical_strength; profiles: 1)",
    )
    p.add_argument(
        "--residual",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep the source's detail: source + the model's change between regenerations "
        "under the new and the source's codes (default: the run's evaluate.edit_residual or "
        "technical_residual; profiles: off)",
    )


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (no usage block), exit code 2 as before."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="factordiff", description="Counterfactual images from factor-conditioned diffusion models."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "quickstart",
        help="train (or load the shipped model), evaluate and report on the built-in 3D Shapes replica",
    )
    p.add_argument(
        "--minutes",
        type=float,
        help="train from scratch for this many minutes (default: start from the shipped pretrained model)",
    )
    p.add_argument("--size", type=_positive_int, default=32, help="image size in pixels (default 32)")
    p.add_argument("--out", default="runs/quickstart", help="run folder (default runs/quickstart)")
    p.add_argument("--from-scratch", action="store_true", help="ignore the shipped pretrained model")
    p.set_defaults(handler=_cmd_quickstart)

    p = sub.add_parser("fit", help="train a model on a dataset")
    p.add_argument(
        "--data",
        help="shapes | cellsim | h5:FILE | table:FACTORS.csv | profiles:TABLE (.csv, .csv.gz, .parquet)",
    )
    p.add_argument(
        "--holdout", help="none | random | composition | interpolation | extrapolation | unseen_value"
    )
    p.add_argument("--holdout-factors", help="factor names the split acts on, comma-separated")
    p.add_argument(
        "--factors",
        help="factor columns of a table, comma-separated (default: every non-image column; profiles: every "
        "Metadata_* column with more than one value that is not an identifier)",
    )
    p.add_argument(
        "--holdout-where",
        action="append",
        metavar="F=V,G=W",
        help="hold out rows matching every pair (repeatable; any one condition holds a row out)",
    )
    p.add_argument(
        "--normalize",
        choices=["none", "plate", "controls"],
        help="profiles: per-plate robust z-score to the plate's training rows or controls (default none)",
    )
    p.add_argument(
        "--controls",
        metavar="F=V",
        help="the perturbation factor and its control value, e.g. Metadata_Compound=DMSO (profiles; the "
        "cell figures of image runs)",
    )
    p.add_argument(
        "--moa",
        metavar="COLUMN",
        help="profiles: the mechanism-of-action column (unseen-perturbation retrieval)",
    )
    p.add_argument(
        "--perturbation-embedding",
        metavar="KIND",
        help="profiles: onehot (default) | morgan | table:PATH, how the perturbation (the "
        "--controls factor) is coded",
    )
    p.add_argument(
        "--smiles",
        metavar="COLUMN",
        help="profiles: metadata column with each row's SMILES (for --perturbation-embedding morgan)",
    )
    p.add_argument(
        "--max-missing",
        type=float,
        help="profiles: drop feature columns with a larger share of missing values (default 0.05)",
    )
    p.add_argument(
        "--roles",
        metavar="F=ROLE,...",
        help="profiles: biological or technical per factor (default from the name: batch, plate, "
        "well, ... are technical)",
    )
    p.add_argument("--size", type=_positive_int, help="image size the models work at")
    p.add_argument(
        "--adapter",
        choices=["embed", "tokens", "shift"],
        help="how codes enter the UNet: time embedding, cross-attention tokens, or a shift "
        "branch (default embed)",
    )
    p.add_argument(
        "--base",
        choices=["joint", "frozen"],
        help="train the UNet with the adapter, or first alone and then frozen (default joint)",
    )
    p.add_argument(
        "--structure",
        metavar="FACTOR",
        help="image runs: code this perturbation factor (e.g. compound) as a function of its Morgan "
        "fingerprint, learned with the denoiser (denoiser.structure)",
    )
    p.add_argument("--minutes", type=float, help="wall-clock budget of the whole fit")
    p.add_argument("--seed", type=int)
    p.add_argument("--config", help="config file (.json, .toml, .yaml); flags override it")
    p.add_argument("--out", default="runs/fit", help="run folder")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.set_defaults(handler=_cmd_fit)

    p = sub.add_parser("counterfactual", help="change factors of one image")
    p.add_argument("run", help="run folder")
    p.add_argument("--image", required=True, help="source image")
    p.add_argument("--set", action="append", metavar="F=V,G=W", help=SET_HELP)
    p.add_argument(
        "--from", dest="from_", metavar="REF.png", help="take factor codes from this reference image"
    )
    p.add_argument("--factor", help="factor(s) to take from --from, comma-separated")
    p.add_argument("--out", required=True, help="output .png")
    _edit_options(p)
    p.set_defaults(handler=_cmd_counterfactual)

    p = sub.add_parser(
        "regenerate",
        help="regenerate the rows of a profile table, or the images of a run, with factors changed "
        "(a virtual experiment)",
    )
    p.add_argument("run", help="run folder of fit (images or profiles)")
    p.add_argument("--where", action="append", metavar="F=V,G=W", help=WHERE_HELP)
    p.add_argument("--set", action="append", required=True, metavar="F=V,G=W", help=SET_HELP)
    p.add_argument(
        "--out",
        required=True,
        help="profiles: output .csv, .csv.gz or .parquet; images: a new folder (images and regenerated.csv)",
    )
    p.add_argument("--limit", type=_positive_int, help="regenerate at most this many of the matching rows")
    p.add_argument(
        "--draws",
        type=_positive_int,
        default=1,
        help="regenerations per source (more than one: each from fresh noise)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the draws' noise (default 0)")
    p.add_argument(
        "--table",
        metavar="NEW.csv",
        help="regenerate the rows of this table instead of the run's data (rows the fit never saw, "
        "in the run's layout: profiles: its factor and feature columns; images: an image table with "
        "its factor columns; factor values the run knows)",
    )
    _edit_options(p)
    p.set_defaults(handler=_cmd_regenerate)

    p = sub.add_parser("evaluate", help="oracle-judged counterfactuals and samples; writes RUN/metrics.json")
    p.add_argument("run")
    p.set_defaults(handler=_cmd_evaluate)

    p = sub.add_parser(
        "info", help="what a run folder holds: kind, factors with values and roles, split, version"
    )
    p.add_argument("run")
    p.set_defaults(handler=_cmd_info)

    p = sub.add_parser("report", help="write RUN/report.html from RUN/metrics.json")
    p.add_argument("run")
    p.set_defaults(handler=_cmd_report)

    p = sub.add_parser(
        "analyze",
        help="latent-space analysis (metrics, traversals, interpolations, probes, "
        "projections) into the report",
    )
    p.add_argument("run")
    p.add_argument(
        "--images", type=_positive_int, default=5000, help="images whose codes are analysed (default 5000)"
    )
    p.add_argument(
        "--metric-scale",
        type=float,
        default=1.0,
        help="fraction of disentanglement_lib's sample counts (default 1)",
    )
    p.set_defaults(handler=_cmd_analyze)

    p = sub.add_parser(
        "fields",
        help="read and check every field of a Cell Painting image set (phenix:DIR, load_data:TABLE, "
        "rxrx:CSV, bbbc021:CSV, npy:CSV)",
    )
    p.add_argument(
        "source",
        help="phenix:DIR | load_data:TABLE | rxrx:metadata.csv | bbbc021:BBBC021_v1_image.csv "
        "| npy:INDEX.csv",
    )
    p.add_argument(
        "--channels",
        help="phenix/rxrx: NAME=NUMBER in the wanted order (DNA=5,ER=2,RNA=6,AGP=3,Mito=4); load_data/npy: "
        "names (default DNA,ER,RNA,AGP,Mito)",
    )
    p.add_argument(
        "--root", help="folder that relative image paths resolve against (default: the table's folder)"
    )
    p.add_argument("--plate", help="phenix: the plate (barcode) of the folder (default: the folder's name)")
    p.add_argument(
        "--join",
        action="append",
        metavar="TABLE:COL=COL",
        help="add a plate map or compound table's columns, matched on field metadata column = "
        "table column (repeatable)",
    )
    p.add_argument("--bit-depth", type=int, choices=[8, 16], help="refuse files of another bit depth")
    p.add_argument("--out", help="write a load_data-style index CSV of the fields")
    p.set_defaults(handler=_cmd_fields)

    p = sub.add_parser(
        "data",
        help="prepare data: 'data pack SOURCE --out DIR' writes shards that fit --data "
        "shards:DIR reads from disk",
    )
    data_sub = p.add_subparsers(dest="data_command", required=True)
    p = data_sub.add_parser(
        "pack", help="write a dataset as memory-mapped image shards with its factor table"
    )
    p.add_argument("source", help="any --data of fit: shapes, cellsim, h5:FILE, table:FILE.csv")
    p.add_argument("--out", required=True, help="a new folder")
    p.add_argument("--size", type=_positive_int, help="image size (default: the source's)")
    p.add_argument("--factors", help="table: factor columns, comma-separated")
    p.add_argument("--n", type=_positive_int, help="shapes, cellsim, h5: number of images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard-size", type=_positive_int, default=4096, help="images per shard (default 4096)")
    p.set_defaults(handler=_cmd_pack)

    p = sub.add_parser("disentanglement", help="disentanglement_lib metrics of any codes")
    p.add_argument("codes", help="CODES.npy, (N, D) float")
    p.add_argument("factors", help="FACTORS.npy, (N, K) value indices")
    p.add_argument("--blocks", help="code dimensions per factor block, e.g. 4,4,4")
    p.add_argument(
        "--first-pc",
        action="store_true",
        help="reduce each block to its first principal component (as DisDiff reports)",
    )
    p.add_argument(
        "--scale", type=float, default=1.0, help="fraction of disentanglement_lib's sample counts (default 1)"
    )
    p.add_argument("--json", help="write the scores to this JSON file")
    p.set_defaults(handler=_cmd_disentanglement)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from factordiff.train import Interrupted

    try:
        return int(args.handler(args) or 0)
    except Interrupted as e:
        print(f"factordiff {args.command}: {e}", file=sys.stderr)
        return 128 + e.signum
    except FactordiffError as e:
        print(f"factordiff {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"factordiff {args.command}: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT


if __name__ == "__main__":
    sys.exit(main())
