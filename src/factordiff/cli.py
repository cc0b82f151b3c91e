"""``factordiff`` command line: the parser, a thin layer over the Python API.

``main`` parses, then calls one function of ``factordiff.commands``.
A FactordiffError (bad input, impossible request) becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Sequence

from factordiff.errors import FactordiffError


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
        "--inversion",
        choices=["ode", "ddpm"],
        help="images: how the source is inverted: ode (the solver's DDIM-style inversion) or ddpm "
        "(edit-friendly: exact, fewer steps) (default: the run's evaluate.edit_inversion)",
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
        help="train (or load the shipped model), evaluate and report on built-in data (the 3D Shapes "
        "replica, or the cellsim Cell Painting assay)",
    )
    p.add_argument(
        "--data",
        choices=["shapes", "cellsim"],
        default="shapes",
        help="shapes (default) or cellsim: which built-in data and shipped model",
    )
    p.add_argument(
        "--minutes",
        type=float,
        help="train from scratch for this many minutes (default: start from the shipped pretrained model)",
    )
    p.add_argument("--size", type=_positive_int, default=32, help="image size in pixels (default 32)")
    p.add_argument("--out", default="runs/quickstart", help="run folder (default runs/quickstart)")
    p.add_argument("--from-scratch", action="store_true", help="ignore the shipped pretrained model")
    p.set_defaults(handler="cmd_quickstart")

    # no abbreviations: a mistyped --set must not pass for --set-column
    p = sub.add_parser("fit", help="train a model on a dataset", allow_abbrev=False)
    p.add_argument(
        "--data",
        help="shapes | cellsim | h5:FILE | table:FACTORS.csv | shards:DIR | crops:STACK.npz | "
        "fields:SOURCE (any source of factordiff fields, or its --out index as load_data:INDEX.csv) | "
        "profiles:TABLE (.csv, .csv.gz, .parquet)",
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
        "--continuous",
        metavar="F,G",
        help="the factors that are continuous (ordered numbers whose codes extend to values no training "
        "row had, e.g. a dose); every other factor categorical (default: as the data says)",
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
        "--feature-select",
        metavar="OP,...",
        help="profiles: pycytominer feature_select operations on the training rows: variance_threshold, "
        "correlation_threshold, blocklist (default none)",
    )
    p.add_argument(
        "--roles",
        metavar="F=ROLE,...",
        help="profiles: biological or technical per factor (default from the name: batch, plate, "
        "well, ... are technical)",
    )
    p.add_argument("--size", type=_positive_int, help="image size the models work at")
    p.add_argument(
        "--channels",
        metavar="NAME,...",
        help="crops: the stack's channel names, one per channel (e.g. DAPI,Tubulin,Actin); fields: as "
        "factordiff fields (names, or NAME=NUMBER for phenix and rxrx)",
    )
    p.add_argument("--index", metavar="TABLE", help="crops: the stack's index table (default STACK.csv)")
    p.add_argument(
        "--crop", type=_positive_int, help="fields: crop size in pixels around each nucleus (default 96)"
    )
    p.add_argument(
        "--tiles", type=_positive_int, help="fields: cut each field into an N x N grid of tiles instead"
    )
    p.add_argument(
        "--illum", metavar="DIR", help="fields: CellProfiler illumination functions <plate>_Illum<Ch>.npy"
    )
    p.add_argument(
        "--join",
        action="append",
        metavar="TABLE:COL=COL",
        help="fields: add a plate map's columns, matched on field column = table column (repeatable)",
    )
    p.add_argument("--plate", help="fields: the plate of a phenix folder (default: the folder's name)")
    p.add_argument("--root", help="fields: folder that relative image paths resolve against")
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
    p.add_argument(
        "--head",
        metavar="FACTOR,...",
        help="image runs: a classification head on the UNet's features for these factors, trained "
        "jointly (Joint Diffusion; denoiser.head)",
    )
    p.add_argument(
        "--label-fraction",
        type=float,
        help="with --head: the share of training images whose labels the head sees (default 1)",
    )
    p.add_argument(
        "--control",
        metavar="CHANNEL,...",
        help="image runs: these channels (names of --channels, e.g. BF) condition the denoiser as an "
        "image through a ControlNet branch instead of being generated (denoiser.control; factordiff "
        "translate)",
    )
    p.add_argument(
        "--model",
        choices=["diffusion", "daed", "set"],
        help="image runs: daed adds DAED's denoising autoencoder, which finishes every chain below "
        "daed.split of the schedule in one pass (factordiff denoise; default diffusion); set: a "
        "single-cell profiles:TABLE as populations, one per --set-column value (scLDM)",
    )
    p.add_argument(
        "--set-column",
        help="--model set: the metadata column naming each cell's set (a field or well, e.g. Metadata_Well)",
    )
    p.add_argument("--minutes", type=float, help="wall-clock budget of the whole fit")
    p.add_argument("--seed", type=int)
    p.add_argument("--config", help="config file (.json, .toml, .yaml); flags override it")
    p.add_argument("--out", default="runs/fit", help="run folder")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.set_defaults(handler="cmd_fit")

    p = sub.add_parser("counterfactual", help="change factors of one image")
    p.add_argument("run", help="run folder")
    p.add_argument("--image", required=True, help="source image")
    p.add_argument("--set", action="append", metavar="F=V,G=W", help=SET_HELP)
    p.add_argument(
        "--from", dest="from_", metavar="REF.png", help="take factor codes from this reference image"
    )
    p.add_argument(
        "--factor", help="factor(s) to take from --from, comma-separated; --method probe: the factor"
    )
    p.add_argument(
        "--method",
        choices=["swap", "probe", "classifier"],
        default="swap",
        help="swap: set code blocks to values' prototypes or a reference's (default); probe: move the "
        "code along a sparse linear probe for --factor by --amount (toward the value --set names); "
        "classifier: noise to --noise of the schedule and reconstruct under the classification "
        "head's guidance toward --set F=V (runs fitted with --head)",
    )
    p.add_argument(
        "--noise",
        type=_strength,
        default=0.1,
        help="--method classifier: how far up the schedule the image is noised (default 0.1)",
    )
    p.add_argument(
        "--start",
        choices=["noise", "source"],
        default="noise",
        help="--method classifier: fresh seeded noise at --noise (default) or the image's DDIM inversion",
    )
    p.add_argument(
        "--amount",
        type=float,
        help="--method probe: how far to move, in standard deviations of the probe's score over "
        "training codes",
    )
    p.add_argument(
        "--direction",
        choices=["pattern", "weight"],
        help="--method probe: move along the probe's activation pattern, where the codes vary with the "
        "factor (default), or along its weight vector, the shortest move",
    )
    p.add_argument("--out", required=True, help="output .png")
    _edit_options(p)
    p.set_defaults(handler="cmd_counterfactual")

    p = sub.add_parser(
        "denoise", help="noise images to --noise of the schedule and denoise them (DAED or the chain)"
    )
    p.add_argument("run", help="run folder (an image run; --method daed: fitted with --model daed)")
    p.add_argument("--image", required=True, action="append", help="image to denoise (repeatable)")
    p.add_argument(
        "--noise",
        type=_strength,
        default=0.1,
        help="how far up the schedule the images are noised (default 0.1)",
    )
    p.add_argument(
        "--method",
        choices=["daed", "diffusion"],
        default="daed",
        help="daed: the denoising autoencoder in one pass (default); diffusion: the denoiser's chain",
    )
    p.add_argument(
        "--steps", type=int, default=10, help="--method diffusion: steps of the chain (default 10)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the noise")
    p.add_argument("--out", required=True, help="output folder: NAME-noised.png and NAME-denoised.png")
    p.set_defaults(handler="cmd_denoise")

    p = sub.add_parser(
        "translate",
        help="predict a controlled run's images from its control channels (e.g. the stains from a "
        "brightfield image)",
    )
    p.add_argument("run", help="run folder fitted with --control")
    p.add_argument(
        "--image", required=True, action="append", help="control image, its --control channels (repeatable)"
    )
    p.add_argument("--set", action="append", metavar="F=V,G=W", help="known metadata; other factors absent")
    p.add_argument("--samples", type=_positive_int, default=8, help="samples per image (default 8)")
    p.add_argument("--steps", type=_positive_int, default=20, help="sampling steps (default 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise")
    p.add_argument(
        "--out",
        required=True,
        help="a new folder: per image and channel the mean of the samples (NAME_CHANNEL.tiff, 16-bit "
        "for 16-bit sources) and every sample (NAME_sK_CHANNEL.tiff)",
    )
    p.set_defaults(handler="cmd_translate")

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
        "--start",
        choices=["source", "noise"],
        help="where each chain starts: source (its DDIM inversion; one draw is deterministic) or noise "
        "(fresh seeded noise at the strength, also for one draw); default: the run's (profiles.start)",
    )
    p.add_argument(
        "--method",
        choices=["swap", "classifier"],
        default="swap",
        help="swap: set the factors' codes (default); classifier: image runs fitted with --head, noise "
        "to --noise of the schedule and reconstruct under the head's guidance toward the one --set value",
    )
    p.add_argument(
        "--noise",
        type=_strength,
        default=0.1,
        help="--method classifier: how far up the schedule the images are noised (default 0.1)",
    )
    p.add_argument(
        "--table",
        metavar="NEW.csv",
        help="regenerate the rows of this table instead of the run's data (rows the fit never saw, "
        "in the run's layout: profiles: its factor and feature columns; images: an image table with "
        "its factor columns; factor values the run knows)",
    )
    _edit_options(p)
    p.set_defaults(handler="cmd_regenerate")

    p = sub.add_parser("evaluate", help="oracle-judged counterfactuals and samples; writes RUN/metrics.json")
    p.add_argument("run")
    p.set_defaults(handler="cmd_evaluate")

    p = sub.add_parser(
        "info", help="what a run folder holds: kind, factors with values and roles, split, version"
    )
    p.add_argument("run")
    p.set_defaults(handler="cmd_info")

    p = sub.add_parser("report", help="write RUN/report.html from RUN/metrics.json")
    p.add_argument("run")
    p.set_defaults(handler="cmd_report")

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
    p.set_defaults(handler="cmd_analyze")

    p = sub.add_parser(
        "fields",
        help="read and check every field of a Cell Painting image set (phenix:DIR, load_data:TABLE, "
        "rxrx:CSV, bbbc021:CSV, npy:CSV)",
    )
    p.add_argument(
        "source",
        nargs="+",
        help="phenix:DIR | load_data:TABLE | rxrx:metadata.csv | bbbc021:BBBC021_v1_image.csv "
        "| npy:INDEX.csv; several of one kind and channels are read as one set (plates in folders)",
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
    p.set_defaults(handler="cmd_fields")

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
    p.set_defaults(handler="cmd_pack")

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
    p.set_defaults(handler="cmd_disentanglement")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from factordiff import commands  # the one deferred import: the commands load torch (module doc)

    try:
        return commands.dispatch(args)
    except commands.Interrupted as e:
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
