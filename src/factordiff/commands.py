"""The ``factordiff`` commands: each turns parsed arguments into one library call and prints the
result. ``cli.main`` parses first and imports this module only then, so that ``factordiff --help``
and a mistyped flag answer at once (0.2 s) instead of after torch and diffusers load (about 6 s
on a 2-core CPU)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from factordiff.checkpoint import atomic_write_json
from factordiff.config import load_config
from factordiff.data.cells import check_fields, concat_fields, join_metadata, open_fields, write_index
from factordiff.data.fieldcrops import parse_join
from factordiff.data.images import read_image, save_png
from factordiff.data.shards import describe, pack
from factordiff.data.sources import load_data, traits
from factordiff.edit import classifier_edit, edit_image, edit_settings, fit_image
from factordiff.errors import FactordiffError
from factordiff.evaluate.analysis import analyze_run
from factordiff.evaluate.disentanglement import format_table, load_and_score
from factordiff.evaluate.suite import evaluate, summary_lines
from factordiff.factors import parse_settings
from factordiff.fit import fit
from factordiff.models.runs import load_run, with_inversion
from factordiff.probe import probe_edit, probe_for
from factordiff.quickstart import quickstart
from factordiff.regenerate import check_out, regenerate, sidecar_path, write_regenerated
from factordiff.report import build_report
from factordiff.train import Interrupted, leave, process
from factordiff.translate import translate, write_translations

__all__ = ["Interrupted"]  # re-exported: cli.main catches it without importing torch itself


def _csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def dispatch(args: argparse.Namespace) -> int:
    """Run the command the parser chose (``args.handler``); its exit code, and under a launcher the
    clean end of every process (``train.leave``)."""
    return leave(int(globals()[args.handler](args) or 0))


def cmd_quickstart(args: argparse.Namespace) -> None:
    metrics = quickstart(
        Path(args.out), minutes=args.minutes, size=args.size, from_scratch=args.from_scratch, data=args.data
    )
    print("\n".join(summary_lines(metrics)))
    print(f"report: {Path(args.out) / 'report.html'}")


def _fit_overrides(args: argparse.Namespace) -> dict:
    pairs = {
        "data.source": args.data,
        "data.size": args.size,
        "data.factors": _csv_list(args.factors) if args.factors else None,
        "data.continuous": _csv_list(args.continuous) if args.continuous is not None else None,
        "data.channels": _csv_list(args.channels) if args.channels else None,
        "data.index": args.index,
        "data.crop": args.crop,
        "data.tiles": args.tiles,
        "data.illum": args.illum,
        "data.join": args.join,
        "data.plate": args.plate,
        "data.root": args.root,
        "split.kind": args.holdout,
        "split.factors": _csv_list(args.holdout_factors) if args.holdout_factors else None,
        "split.where": args.holdout_where,
        "train.minutes": args.minutes,
        "train.seed": args.seed,
        "profiles.normalize": args.normalize,
        "profiles.controls": args.controls,
        "profiles.moa": args.moa,
        "profiles.max_missing": args.max_missing,
        "profiles.feature_select": _csv_list(args.feature_select) if args.feature_select else None,
        "profiles.perturbation_embedding": args.perturbation_embedding,
        "profiles.smiles": args.smiles,
        "profiles.roles": _csv_list(args.roles) if args.roles else None,
        "denoiser.adapter": args.adapter,
        "denoiser.train_base": {"joint": True, "frozen": False}.get(args.base),
        "denoiser.structure": args.structure,
        "denoiser.head": _csv_list(args.head) if args.head else None,
        "denoiser.label_fraction": args.label_fraction,
        "denoiser.control": _csv_list(args.control) if args.control else None,
        "daed.enabled": {"daed": True, "diffusion": False}.get(args.model),
        "sets.enabled": True if args.model == "set" else None,
        "sets.column": args.set_column,
    }
    over = {k: v for k, v in pairs.items() if v is not None}
    if args.data and not args.data.startswith("shapes"):
        over.setdefault("data.n", None)
    return over


def cmd_fit(args: argparse.Namespace) -> None:
    result = fit(load_config(args.config, _fit_overrides(args)), Path(args.out), resume=args.resume)
    if process()[2]:  # under accelerate launch, one line from the main process
        print("\n".join(result.summary()))


def cmd_evaluate(args: argparse.Namespace) -> None:
    print("\n".join(summary_lines(evaluate(Path(args.run)))))
    print(f"metrics: {Path(args.run) / 'metrics.json'}")


def cmd_info(args: argparse.Namespace) -> None:
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


def cmd_report(args: argparse.Namespace) -> None:
    print(f"report: {build_report(Path(args.run))}")


def cmd_analyze(args: argparse.Namespace) -> None:
    a = analyze_run(Path(args.run), images=args.images, metric_scale=args.metric_scale)
    for variant, scores in a["disentanglement"].items():
        print(variant, " ".join(f"{k}={v:.3f}" for k, v in scores.items() if isinstance(v, float)))
    print(f"report: {build_report(Path(args.run))}")


def cmd_counterfactual(args: argparse.Namespace) -> None:
    if args.method == "probe":
        return _probe_counterfactual(args)
    if args.method == "classifier":
        return _classifier_counterfactual(args)
    if args.amount is not None or args.direction is not None:
        raise FactordiffError(
            f"{'--amount' if args.amount is not None else '--direction'} goes with --method probe"
        )
    if not args.set and not (args.from_ and args.factor):
        raise FactordiffError("expected --set FACTOR=VALUE, or --from REF.png with --factor FACTOR")
    if bool(args.from_) != bool(args.factor):
        raise FactordiffError("--from and --factor go together: --from REF.png --factor FACTOR")
    if Path(args.out).suffix.lower() != ".png":
        raise FactordiffError(f"--out {args.out}: expected a .png path")
    run = with_inversion(load_run(Path(args.run)), args.inversion)
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


def _probe_counterfactual(args: argparse.Namespace) -> None:
    """``counterfactual --method probe``: the code moved along a sparse linear probe (``probe.py``)."""
    if not args.factor or "," in args.factor or args.amount is None:
        raise FactordiffError("--method probe needs one --factor F and --amount A (standard deviations)")
    if args.from_:
        raise FactordiffError("--method probe moves the code along a probe; --from goes with --method swap")
    if Path(args.out).suffix.lower() != ".png":
        raise FactordiffError(f"--out {args.out}: expected a .png path")
    run = with_inversion(load_run(Path(args.run)), args.inversion)
    if run.kind != "images":
        raise FactordiffError(f"{args.run}: a {run.kind} run; probe edits move image codes")
    model = run.model
    k = model.spec.resolve(args.factor)
    settings = parse_settings(model.spec, args.set) if args.set else {}
    if set(settings) - {k}:
        raise FactordiffError(f"--method probe: --set names the value of --factor {args.factor} only")
    image = fit_image(model, read_image(Path(args.image)), args.image)
    probe = probe_for(run, args.factor, settings.get(k), seed=run.config.train.seed)
    strength, guidance, residual = edit_settings(
        run.config.evaluate, model.spec, [k], args.strength, args.guidance, args.residual
    )
    out = probe_edit(
        model,
        image[None],
        probe,
        args.amount,
        args.steps or run.config.evaluate.steps,
        guidance,
        strength,
        residual,
        args.direction or "pattern",
    )[0]
    save_png(out if out.shape[2] != 1 else out[..., 0], Path(args.out), scale=1)
    print(
        f"wrote {args.out} (probe {probe.info.get('kind')}, {probe.info.get('nonzero')} code dimensions, "
        f"along its {args.direction or 'pattern'})"
    )


def cmd_denoise(args: argparse.Namespace) -> None:
    """``factordiff denoise``: noise each image to ``--noise`` and denoise it; one line per image
    with the mean absolute error (0-255 scale) of the noised and the denoised image to it."""
    run = load_run(Path(args.run))
    if run.kind != "images":
        raise FactordiffError(f"{args.run}: a {run.kind} run; denoise takes an image run")
    model = run.model
    images = np.stack([fit_image(model, read_image(Path(p)), p) for p in args.image])
    noised, clean = model.denoise(images, args.noise, args.method, args.steps, args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for path, src, x, y in zip(args.image, images, noised, clean):
        stem = Path(path).stem
        for tag, img in (("noised", x), ("denoised", y)):
            save_png(img if img.shape[2] != 1 else img[..., 0], out / f"{stem}-{tag}.png", scale=1)
        mae = [float(np.abs(a.astype(np.float32) - src).mean()) for a in (x, y)]
        print(f"{stem}: mean absolute error noised {mae[0]:.2f}, denoised ({args.method}) {mae[1]:.2f}")
    print(f"wrote {out}")


def cmd_translate(args: argparse.Namespace) -> None:
    """``factordiff translate``: a controlled run's images predicted from control images alone."""
    run = load_run(Path(args.run))
    wanted = run.config.denoiser.control if run.kind == "images" else []
    if not wanted:
        raise FactordiffError(f"{args.run}: not a controlled image run; fit one with --control CHANNELS")
    out = Path(args.out)
    check_out(run, out)
    model, t = run.model, traits(run.config)
    scale = t.tiff_scale
    images = []
    for p in args.image:
        img = read_image(Path(p), scale16=scale)
        if img.shape[2] != len(wanted):
            raise FactordiffError(
                f"{p}: image has {img.shape[2]} channel(s); this run is controlled by {len(wanted)} "
                f"({', '.join(wanted)})"
            )
        images.append(fit_image(model, img, p, len(wanted)))
    settings = parse_settings(model.spec, args.set) if args.set else {}
    values = {k: model.spec.factors[k].index(v) for k, v in settings.items()}
    predicted = translate(model, np.stack(images), values, args.samples, args.steps, args.seed)
    names = t.channel_names(model.shape.channels)
    write_translations(predicted, [Path(p).stem for p in args.image], names, scale, out)
    print(f"wrote {out} ({len(images)} image(s) x {args.samples} samples; channels {', '.join(names)})")


def _classifier_counterfactual(args: argparse.Namespace) -> None:
    """``counterfactual --method classifier``: Joint Diffusion's visual counterfactual."""
    if not args.set or args.from_ or args.amount is not None:
        raise FactordiffError(
            "--method classifier needs --set F=V (one factor the head reads), without --from or --amount"
        )
    if Path(args.out).suffix.lower() != ".png":
        raise FactordiffError(f"--out {args.out}: expected a .png path")
    run = load_run(Path(args.run))
    if run.kind != "images":
        raise FactordiffError(f"{args.run}: a {run.kind} run; the classifier edit changes images")
    model = run.model
    settings = parse_settings(model.spec, args.set)
    if len(settings) != 1:
        raise FactordiffError("--method classifier: --set one factor (the class to move toward)")
    ((k, value),) = settings.items()
    image = fit_image(model, read_image(Path(args.image)), args.image)
    out = classifier_edit(
        model,
        image[None],
        k,
        model.spec.factors[k].index(value),
        args.steps or run.config.evaluate.steps,
        5.0 if args.guidance is None else args.guidance,
        args.noise,
        run.config.train.seed,
        args.start,
    )[0]
    save_png(out if out.shape[2] != 1 else out[..., 0], Path(args.out), scale=1)
    print(f"wrote {args.out}")


def cmd_regenerate(args: argparse.Namespace) -> None:
    run = with_inversion(load_run(Path(args.run)), args.inversion)
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
        method=args.method,
        noise=args.noise,
        start=args.start,
    )
    for line in result.info.get("notes", []):
        print(f"note: {line}", file=sys.stderr)
    r = write_regenerated(result, run, Path(args.out))
    for v in r["unseen_values"]:
        print(
            f"note: {v} has no training row; generated with that factor's code absent "
            "(from the other factors)"
        )
    print(
        f"wrote {r['rows']} regenerated {dict(profiles='rows', sets='cells').get(run.kind, 'images')} "
        + (f"of {result.info['sets']} sets " if run.kind == "sets" else "")
        + f"({r['edit']}) to {r['out']}"
        + (f"; {result.info['units']} (see {sidecar_path(Path(args.out))})" if run.kind != "images" else "")
    )


def cmd_pack(args: argparse.Namespace) -> None:
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


def cmd_fields(args: argparse.Namespace) -> None:
    root = Path(args.root) if args.root else None
    if args.plate and len(args.source) > 1:
        raise FactordiffError("--plate names the plate of one phenix folder; with several, name the folders")
    fields = concat_fields([open_fields(s, args.channels, root, args.plate) for s in args.source])
    for spec in args.join or []:
        fields = join_metadata(fields, *parse_join(spec))
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


def cmd_disentanglement(args: argparse.Namespace) -> None:
    blocks = [int(b) for b in _csv_list(args.blocks)] if args.blocks else None
    scores = load_and_score(
        args.codes, args.factors, blocks=blocks, first_pc=args.first_pc, scale=args.scale, progress=True
    )
    print(format_table(scores))
    if args.json:
        atomic_write_json(Path(args.json), scores)
