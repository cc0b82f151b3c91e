"""``regenerate(run, ...)``: the run's samples (images or profile rows) matching ``where``, as they
would look with the factors in ``set`` changed; ``write_regenerated`` writes them. One module for
both kinds of run: the selection (``data.splits.select``), the setting of factor values
(``factors.parse_settings``), the model call and the writers.

Every output row records where it came from: the source's factor values (the changed ones with
their new values), ``Metadata_source_row`` (the source's row in the run's data: 0-based in the
profile table's file, or in the image dataset; with ``table``, in that table), ``Metadata_draw`` and
``Metadata_edit`` (the changes as ``F=V, G=W``).

``draws`` > 1 regenerates each source that many times: each draw starts from fresh noise at the
edit's strength (``diffusion.sampling.noise_to``, seeded by ``seed``) instead of the one
deterministic DDIM inversion that a single draw uses; ``start="noise"`` does so for one draw too
(profile runs: ``profiles.start`` by default).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from factordiff.checkpoint import atomic_write_json
from factordiff.data.crops import detail
from factordiff.data.profiles import unknown_values
from factordiff.data.sources import is_crop_source, prepare_crops, read_images_like, traits
from factordiff.data.splits import select
from factordiff.edit import classifier_edit, compound_code, edit_blocks, edit_settings
from factordiff.errors import FactordiffError
from factordiff.factors import parse_settings
from factordiff.models.profiles import prepare_run_profiles
from factordiff.models.runs import Run
from factordiff.models.sets import set_members

SOURCE_ROW = "Metadata_source_row"
DRAW = "Metadata_draw"
EDIT = "Metadata_edit"
TABLE_SUFFIXES = (".csv", ".csv.gz", ".parquet")


@dataclass
class Regenerated:
    """What ``regenerate`` returns.

    Args:
        samples: images (N, H, W, C) uint8 or profile features (N, F) float.
        metadata: one row per sample: the factor values (changed ones set), the provenance columns
            and, for profiles, every other metadata column of the source row.
        features: profile feature names (None for images).
        edit: the changes, ``F=V, G=W``.
        unseen: ``F=V`` of set values that no training row had (profiles generate them with that
            factor's code absent).
        info: profiles: ``units`` (what the numbers are in), ``nested`` (columns left empty because
            they are nested in a set factor, with that factor), ``notes`` (lines for the user) and
            ``table``; crop runs: ``intensity``, ``channels`` and, for residual edits, ``detail``
            (``data.crops.detail`` of each source).
    """

    samples: np.ndarray
    metadata: pd.DataFrame
    features: list[str] | None
    edit: str
    unseen: list[str]
    info: dict

    def raw(self) -> np.ndarray:
        """A crop run's samples as the stack holds crops: its dtype and crop size, in the scale of
        each row's plate after the edit; a residual edit keeps its source's detail at that size."""
        intensity = self.info["intensity"]
        plates = self.metadata[intensity.column].to_numpy(str) if intensity.column else None
        return intensity.raw(self.samples, plates, self.info.get("detail"))


def _rows(
    run: Run, where: Sequence[str], indices, source: str, metadata=None, limit=None, only=None
) -> np.ndarray:
    rows = np.flatnonzero(select(run.spec, indices, where, metadata))
    if only is not None:
        rows = np.intersect1d(rows, np.asarray(only, np.int64))
    if not len(rows):
        raise FactordiffError(f"--where {' / '.join(where)}: no row of {source} matches")
    return rows[:limit] if limit else rows


def _provenance(meta: pd.DataFrame, source_rows: np.ndarray, draws: int, edit: str) -> pd.DataFrame:
    """``meta`` (one row per source) repeated per draw, with the provenance columns."""
    out = meta.loc[meta.index.repeat(draws)].reset_index(drop=True)
    out[SOURCE_ROW] = np.repeat(source_rows, draws)
    if DRAW not in out:
        out[DRAW] = np.tile(np.arange(draws), len(meta))
    out[EDIT] = edit
    return out


def _image_blocks(run: Run, settings: dict[int, str]) -> dict[int, torch.Tensor]:
    """Code block per set factor: the value's prototype, or for the perturbation factor a compound
    no training image had, coded from its SMILES (``edit.compound_code``)."""
    model, spec, t = run.model, run.spec, traits(run.config)
    blocks = {}
    for k, value in settings.items():
        f = spec.factors[k]
        try:
            v = f.index(value)
            if not model.has_prototype(k, v):
                raise FactordiffError(
                    f"--set {f.name}={value}: no training image has this value; "
                    "give a reference image with factordiff counterfactual --from"
                )
            blocks[k] = model.prototype(k, v)
        except FactordiffError:
            if f.name != t.perturbation or not t.smiles:
                raise
            blocks[k] = compound_code(model, k, t.smiles.get(value, value), t.smiles, t.control)
    return blocks


def _classifier_editor(run, settings, noise: float, seed: int, start: str = "noise"):
    """The edit of ``--method classifier``: ``edit(x, steps, guidance, draw)``; ``start`` as
    ``classifier_edit``'s."""
    ((k, value),) = settings.items()
    v = run.spec.factors[k].index(value)

    def edit(x, steps, guidance, draw):
        g = 5.0 if guidance is None else guidance
        return classifier_edit(run.model, x, k, v, steps, g, noise, seed + draw, start)

    return edit


@dataclass(frozen=True)
class _Request:
    """What ``regenerate`` was asked, as the image and profile parts read it (``only``: the row
    indices ``rows``; ``gen``: the draws' seeded generator)."""

    where: list[str]
    settings: dict
    steps: int | None
    guidance: float | None
    strength: float | None
    residual: bool | str | None
    limit: int | None
    draws: int
    gen: torch.Generator
    table: Path | str | None
    only: Sequence[int] | None
    start: str | None


def _regenerate_images(run, q: _Request, editor=None):
    spec, cfg = run.spec, run.config
    where, settings, table, draws = q.where, q.settings, q.table, q.draws
    crops = prepare_crops(cfg, run.path) if is_crop_source(cfg.data.source) and not table else None
    if crops is not None:
        data = crops.data
    else:
        data = read_images_like(table, run.spec, run.model.shape.size) if table else run.data()[0]
    meta_text = crops.stack.metadata if crops is not None else None
    rows = _rows(run, where, data.factors, data.source, meta_text, limit=q.limit, only=q.only)
    blocks = _image_blocks(run, settings) if editor is None else {}
    strength, guidance, residual = q.strength, q.guidance, q.residual
    if editor is None:
        strength, guidance, residual = edit_settings(
            cfg.evaluate, spec, list(blocks), strength, guidance, residual
        )
    steps = q.steps or cfg.evaluate.steps
    images = np.zeros((len(rows), draws, *data.images.shape[1:]), np.uint8)
    bar = tqdm(total=len(rows) * draws, desc="regenerating", unit="img")
    for i in range(0, len(rows), 64):
        x = data.images[rows[i : i + 64]]
        for d in range(draws):
            noise = q.gen if draws > 1 or q.start == "noise" else None
            images[i : i + 64, d] = (
                edit_blocks(run.model, x, blocks, steps, guidance, strength, residual, noise)
                if editor is None
                else editor(x, steps, guidance, d)
            )
            bar.update(len(x))
    bar.close()
    images = images.reshape(len(rows) * draws, *data.images.shape[1:])
    if crops is not None:  # the index table's own columns, as read, the set factors' text from it
        meta = pd.DataFrame({c: v[rows] for c, v in meta_text.items()})
        for k, value in settings.items():
            name, v = spec.factors[k].name, spec.factors[k].index(value)
            having = np.flatnonzero(crops.stack.factors[:, k] == v)
            meta[name] = meta_text[name][having[0]] if len(having) else value
        info = {"intensity": crops.intensity, "channels": crops.stack.channels}
        if editor is None and residual:
            column = crops.intensity.column
            full = crops.intensity.to_uint8(
                crops.stack.images[rows], meta_text[column][rows] if column else None
            )
            info["detail"] = np.repeat(detail(full, data.images.shape[1]), draws, axis=0)
        return images, meta, rows, None, [], info
    meta = pd.DataFrame(
        {
            f"Metadata_{f.name}": [str(f.values[v]) for v in data.factors[rows, q]]
            for q, f in enumerate(spec.factors)
        }
    )
    for k, value in settings.items():
        meta[f"Metadata_{spec.factors[k].name}"] = value
    return images, meta, rows, None, [], {}


def nested_in(cells: np.ndarray, parent: np.ndarray) -> bool:
    """True when ``cells`` (one column's values) is nested in ``parent``: every value of it occurs
    with one value of ``parent`` only, and it has more values (plates in a batch)."""
    pairs = np.unique(np.stack([cells.astype(str), parent.astype(str)], 1), axis=0)
    return len(np.unique(pairs[:, 0])) == len(pairs) and len(pairs) > len(np.unique(pairs[:, 1]))


def _derived(cells: np.ndarray, parent: np.ndarray) -> dict[str, str] | None:
    """``cells`` as a function of ``parent`` (MoA or SMILES of a compound), or None if it is not one
    or is constant."""
    pairs = np.unique(np.stack([parent.astype(str), cells.astype(str)], 1), axis=0)
    if len(np.unique(pairs[:, 0])) != len(pairs) or len(np.unique(pairs[:, 1])) < 2:
        return None
    return dict(zip(pairs[:, 0].tolist(), pairs[:, 1].tolist()))


def _profile_metadata(table, rows, target, settings, train) -> tuple[pd.DataFrame, np.ndarray, dict]:
    """The output rows' metadata as the table writes it, their absent factors and the set
    factors' nested columns. Factor columns take the target's values (the table's text for them,
    else the ``--set`` text); a column nested in a set factor (a plate in a changed batch) is left
    empty and, if it is a factor, generated absent; a column that is a function of a set factor
    (MoA, SMILES) takes the target value's entry, or stays empty where the table has none; other
    columns keep the source's text."""
    spec = table.spec
    meta = pd.DataFrame({c: np.asarray(v)[rows] for c, v in table.metadata.items()})
    absent = np.zeros(target.shape, bool)
    nested: dict[str, str] = {}
    for k, value in settings.items():
        name = spec.factors[k].name
        parent = table.metadata[name]
        text = table.text(k, target[0, k]) if (table.factors[:, k] == target[0, k]).any() else value
        meta[name] = text
        for c, cells in table.metadata.items():
            if c == name or (c in spec.names and spec.position(c) in settings):
                continue
            if nested_in(cells[train], parent[train]):
                meta[c] = ""
                nested[c] = name
                if c in spec.names:
                    absent[:, spec.position(c)] = True
            elif c not in spec.names and (mapping := _derived(cells, parent)) is not None:
                meta[c] = mapping.get(text, "")
    return meta, absent, nested


def _raw_units(plates, table, meta, rows, settings, nested) -> tuple[list[list[int]], str]:
    """Per output row, the plates whose statistics write it back in raw units: the set plate, the
    plates of the target's value of the factor the plate is nested in, or the source's plate."""
    column, spec = plates.column, table.spec
    source = plates.index(table.metadata[column][rows])
    if column in spec.names and spec.position(column) in settings:
        target = plates.index(meta[column].to_numpy(str))
        return [[int(i)] for i in target], f"raw units of plate {meta[column].iloc[0]}"
    if column in nested:
        parent = nested[column]
        value = meta[parent].iloc[0]
        group = [
            int(i) for i in plates.index(np.unique(table.metadata[column][table.metadata[parent] == value]))
        ]
        group = [i for i in group if i >= 0]
        if not group:
            raise FactordiffError(f"--set {parent}={value}: no plate of the table has it, so no raw units")
        shown = ", ".join(plates.plates[i] for i in group)
        return [group] * len(rows), f"raw units: mean of the plates of {parent}={value} ({shown})"
    return [[int(i)] for i in source], "raw units of each source row's plate"


def check_known(table, rows: np.ndarray) -> None:
    """Refuse selected rows with factor values the run never saw (no code), naming them."""
    unknown = unknown_values(table, rows)
    if unknown:
        raise FactordiffError(
            f"{table.source}: selected rows hold value(s) the run never saw and cannot code: "
            f"{', '.join(unknown[:5])}; narrow --where or fit again"
        )


def _targets(model, factors: np.ndarray, settings: dict[int, str]) -> tuple[np.ndarray, list[str]]:
    """The value indices after ``--set`` and the set values that no training row had (``F=V``)."""
    spec = model.spec
    target = factors.copy()
    for k, value in settings.items():
        try:
            target[:, k] = spec.factors[k].index(value)
        except FactordiffError as e:
            raise FactordiffError(f"--set {spec.factors[k].name}={value}: {e}") from None
    unseen = [
        f"{spec.factors[k].name}={spec.factors[k].values[target[0, k]]}"
        for k in settings
        if spec.factors[k].kind != "ordinal" and not model.seen[k][target[0, k]]
    ]
    return target, unseen


def _regenerate_profiles(run, q: _Request):
    model, settings, draws = run.model, q.settings, q.draws
    data = prepare_run_profiles(run.config, model, q.table)
    table = data.table
    rows = _rows(run, q.where, table.factors, table.source, table.metadata, q.limit, q.only)
    check_known(table, rows)
    factors = table.factors[rows]
    target, unseen = _targets(model, factors, settings)
    meta, absent, nested = _profile_metadata(table, rows, target, settings, data.train)
    steps = q.steps or run.config.profiles.sample_steps
    strength = 1.0 if q.strength is None else q.strength
    x = data.features[rows]
    begin = "noise" if draws > 1 else q.start or run.config.profiles.start
    out = [
        model.regenerate(
            x,
            factors,
            target,
            steps,
            "regenerating",
            strength,
            q.guidance,
            bool(q.residual),
            None if begin == "source" else model.noised(x, factors, steps, strength, q.gen),
            absent if absent.any() else None,
            start=begin,
        )
        for _ in range(draws)
    ]
    units = "normalised units (no per-plate normalisation was fitted)"
    if model.plates is not None:
        groups, units = _raw_units(data.plates, table, meta, rows, settings, nested)
        out = [data.plates.raw(z, groups) for z in out]
    samples = np.stack(out, 1).reshape(len(rows) * draws, -1)  # source-major, draw-minor
    info = {"units": units, "nested": nested, "notes": data.notes, "table": table.source, "start": begin}
    return samples, meta, table.rows[rows], list(model.feature_names), unseen, info


def _regenerate_sets(run, q: _Request):
    """A new population per selected set (``models/sets.py``): the set's cells (those ``--where``
    selects) become tokens, DDIM-inverted under the set's codes (``--start source``, the default)
    or fresh noise (``--start noise`` or several draws), and come back under the target's codes as
    as many cells as went in. ``--limit`` counts sets."""
    model, spec, settings, s = run.model, run.spec, q.settings, run.config.sets
    data = prepare_run_profiles(run.config, model, q.table)
    table = data.table
    rows = _rows(run, q.where, table.factors, table.source, table.metadata, None, q.only)
    check_known(table, rows)
    members = set_members(table, s.column, rows)
    names = list(members)[: q.limit] if q.limit else list(members)
    groups = [members[n] for n in names]
    first = np.asarray([g[0] for g in groups])
    factors = table.factors[first]
    target, unseen = _targets(model, factors, settings)
    meta, absent, nested = _profile_metadata(table, first, target, settings, data.train)
    for c in meta.columns:  # a cell's own columns (its number, position) say nothing of a new cell
        cells = np.asarray(table.metadata[c])
        if c not in spec.names and any(len(set(cells[g].tolist())) > 1 for g in groups):
            meta[c] = ""
    begin = "noise" if q.draws > 1 else q.start or "source"
    strength = 1.0 if q.strength is None else q.strength
    sizes = [len(g) for g in groups]
    out, parts = [], []
    for d in range(q.draws):
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=q.gen))
        source = ([data.features[g] for g in groups], factors) if begin == "source" else None
        pops = model.populations(
            target,
            sizes,
            seed,
            q.steps,
            q.guidance,
            sorted(settings) if source is None else None,
            source,
            strength,
            absent if absent.any() else None,
        )
        for i, cells in enumerate(pops):
            out.append(cells)
            part = meta.iloc[[i] * len(cells)].copy()
            part[s.column] = names[i] if q.draws == 1 else f"{names[i]}#{d}"
            part["Metadata_source_set"] = names[i]
            part[DRAW] = d
            parts.append(part)
    samples = np.concatenate(out).astype(np.float32)
    if model.plates is not None:
        groups_raw, units = _raw_units(data.plates, table, meta, first, settings, nested)
        per_cell = [groups_raw[i] for _ in range(q.draws) for i, n in enumerate(sizes) for _ in range(n)]
        samples = data.plates.raw(samples, per_cell)
    else:
        units = "normalised units (no per-plate normalisation was fitted)"
    source_rows = np.concatenate(
        [np.repeat(table.rows[first[i]], n) for _ in range(q.draws) for i, n in enumerate(sizes)]
    )
    info = {
        "units": units,
        "nested": nested,
        "notes": data.notes,
        "table": table.source,
        "start": begin,
        "sets": len(groups),
    }
    return samples, pd.concat(parts, ignore_index=True), source_rows, list(model.feature_names), unseen, info


@torch.no_grad()
def regenerate(
    run: Run,
    where: Sequence[str] = (),
    set: Sequence[str] = (),
    steps: int | None = None,
    guidance: float | None = None,
    strength: float | None = None,
    residual: bool | str | None = None,
    limit: int | None = None,
    draws: int = 1,
    seed: int = 0,
    table: Path | str | None = None,
    rows: Sequence[int] | None = None,
    method: str = "swap",
    noise: float = 0.1,
    start: str | None = None,
) -> Regenerated:
    """The run's samples matching ``where`` (``"F=V,G=W"`` conditions, any one of which selects a
    row; none: every row), regenerated with the factors of ``set`` (``"F=V,G=W"``, repeatable)
    changed.

    Args:
        steps: solver steps (None: the run's ``evaluate.steps`` or ``profiles.sample_steps``).
        guidance: one classifier-free guidance weight on the set factors (None: the run's, per role).
        strength: how far up the noise schedule the sources go, in (0, 1] (None: the run's).
        residual: the source plus the model's change instead of the regeneration itself (None: the
            run's; profiles: off).
        limit: regenerate at most this many of the matching sources.
        draws, seed: regenerations per source; more than one starts each from fresh seeded noise.
        start: ``source`` (one draw: the deterministic inversion of the source) or ``noise`` (fresh
            seeded noise at the strength, one draw too); None: the run's (profiles.start; images:
            source; ``--method classifier``: noise, as Joint Diffusion's counterfactual starts).
        table: regenerate the rows of this table instead of the run's data: rows the fit never saw,
            in the layout of the run's (profiles: its factor and feature columns; images: an image
            table with its factor columns), with factor values the run knows.
        rows: only these rows of the run's data (indices), of those ``where`` selects.
        method: ``swap`` (the code blocks of the set factors set to their values' codes) or, for an
            image run fitted with a classification head, ``classifier`` (``edit.classifier_edit``:
            noise to ``noise`` of the schedule, reconstruct under the head's guidance toward the one
            set value, weight ``guidance``, default 5; each draw with its own seeded noise).
    """
    if draws < 1:
        raise FactordiffError(f"--draws {draws}: expected a positive number")
    if start not in (None, "source", "noise"):
        raise FactordiffError(f"--start {start}: expected source or noise")
    if method not in ("swap", "classifier"):
        raise FactordiffError(f"--method {method}: expected swap or classifier")
    settings = parse_settings(run.spec, set, "--set")
    if method == "classifier" and (run.kind != "images" or len(settings) != 1):
        raise FactordiffError("--method classifier: an image run fitted with --head, and --set of one factor")
    gen = torch.Generator().manual_seed(seed)
    part = {"profiles": _regenerate_profiles, "sets": _regenerate_sets}.get(run.kind, _regenerate_images)
    q = _Request(
        list(where), settings, steps, guidance, strength, residual, limit, draws, gen, table, rows, start
    )
    if method == "classifier":
        samples, meta, source_rows, features, unseen, info = _regenerate_images(
            run,
            q,
            editor=_classifier_editor(
                run, settings, noise, seed, "source" if start == "source" and draws == 1 else "noise"
            ),
        )
    else:
        samples, meta, source_rows, features, unseen, info = part(run, q)
    edit = ", ".join(f"{run.spec.factors[k].name}={v}" for k, v in settings.items())
    once = run.kind == "sets"  # one row per new cell already, with its draw
    return Regenerated(
        samples, _provenance(meta, source_rows, 1 if once else draws, edit), features, edit, unseen, info
    )


def write_table(frame: pd.DataFrame, out: Path) -> None:
    """``frame`` to ``out`` (.csv, .csv.gz or .parquet), written whole or not at all."""
    name = out.name.lower()
    tmp = out.with_name(out.name + ".partial")
    out.parent.mkdir(parents=True, exist_ok=True)
    if name.endswith(".parquet"):
        frame.to_parquet(tmp, index=False)
    else:
        frame.to_csv(tmp, index=False, compression="gzip" if name.endswith(".gz") else None)
    tmp.replace(out)


def write_rows(
    meta: pd.DataFrame, values: np.ndarray, names: list[str], out: Path, chunk: int = 8192
) -> None:
    """Metadata and feature rows to ``out`` (.csv, .csv.gz or .parquet) in chunks of ``chunk`` rows
    (a parquet row group each), so a large output is never one frame in memory; written whole or
    not at all."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    name = out.name.lower()
    tmp = out.with_name(out.name + ".partial")
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = None
    try:
        for i in range(0, max(len(values), 1), chunk):
            part = pd.concat(
                [
                    meta.iloc[i : i + chunk].reset_index(drop=True),
                    pd.DataFrame(values[i : i + chunk], columns=names),
                ],
                axis=1,
            )
            if name.endswith(".parquet"):
                batch = pa.Table.from_pandas(part, preserve_index=False)
                writer = writer or pq.ParquetWriter(tmp, batch.schema)
                writer.write_table(batch)
            else:
                part.to_csv(
                    tmp,
                    index=False,
                    mode="w" if i == 0 else "a",
                    header=i == 0,
                    compression="gzip" if name.endswith(".gz") else None,
                )
    except BaseException:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
        raise
    if writer is not None:
        writer.close()
    tmp.replace(out)


def _write_images(result: Regenerated, run: Run, folder: Path) -> None:
    """One TIFF per channel or one PNG per image, in ``folder/images``, and ``folder/regenerated.csv``
    in JUMP's load_data style (``FileName_Orig<Ch>``, ``PathName_Orig<Ch>`` beside the metadata),
    which ``factordiff fields load_data:`` reads back. TIFFs for crop runs (crops or fields: the
    source's bit depth and crop size, in the intensity scale of each row's plate after the edit)
    and for sources whose ``tiff_scale`` says they were 16-bit; PNGs otherwise."""
    import tifffile
    from PIL import Image

    t = traits(run.config)
    channels = result.info.get("channels") or t.channel_names(result.samples.shape[3])
    (folder / "images").mkdir(parents=True)
    meta = result.metadata.copy()
    intensity = result.info.get("intensity")
    if intensity is not None:
        raw = result.raw()
    elif t.tiff_scale:
        raw = result.samples.astype(np.uint16) * t.tiff_scale + t.tiff_scale // 2
    for i, img in enumerate(result.samples):
        stem = f"{i:06d}"
        if intensity is not None or t.tiff_scale:
            for c, name in enumerate(channels):
                fname = f"{stem}_{name}.tiff"
                tifffile.imwrite(folder / "images" / fname, np.ascontiguousarray(raw[i, ..., c]))
                meta.loc[i, f"FileName_Orig{name}"], meta.loc[i, f"PathName_Orig{name}"] = fname, "images"
        else:
            Image.fromarray(img if img.shape[2] != 1 else img[..., 0]).save(folder / "images" / f"{stem}.png")
            meta.loc[i, "FileName_Image"], meta.loc[i, "PathName_Image"] = f"{stem}.png", "images"
    write_table(meta, folder / "regenerated.csv")


def _write_stack(result: Regenerated, out: Path) -> None:
    """A crop-stack run's regenerated crops as ``out`` (.npz, key ``images``: the source's dtype,
    crop size and intensity scale, of each row's plate after the edit) and ``OUT.csv`` beside it."""
    stack = result.raw()
    tmp = out.with_name(out.name + ".partial.npz")
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(tmp, images=stack)
    write_table(result.metadata, out.with_suffix(".csv"))
    tmp.replace(out)


def check_out(run: Run, out: Path) -> None:
    """Refuse an ``--out`` that the run's kind cannot write, before any work."""
    if out.name.lower().endswith(".npz"):
        if not is_crop_source(run.config.data.source):
            raise FactordiffError(
                f"--out {out}: a .npz stack is written for crop runs (crops:STACK.npz, fields:SOURCE) only"
            )
        return
    if run.kind in ("profiles", "sets"):
        if not out.name.lower().endswith(TABLE_SUFFIXES):
            raise FactordiffError(
                f"--out {out}: expected a {', '.join(TABLE_SUFFIXES)} path for a {run.kind[:-1]} run"
            )
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FactordiffError(f"--out {out}: exists and is not an empty folder; choose another")


def sidecar_path(out: Path) -> Path:
    """``OUT.json`` beside a regenerated table ``OUT.csv`` (``.csv.gz``, ``.parquet``)."""
    name = out.name
    for suffix in TABLE_SUFFIXES:
        if name.lower().endswith(suffix):
            return out.with_name(name[: -len(suffix)] + ".json")
    return out.with_name(name + ".json")


def write_regenerated(result: Regenerated, run: Run, out: Path) -> dict:
    """Profiles: one table (``out`` .csv, .csv.gz or .parquet: metadata as read, provenance,
    features in the units ``OUT.json`` states) and ``OUT.json`` (the run, the edit, the units, the rows).
    Images: the folder ``out`` (``_write_images``). Nothing is left half-written."""
    out = Path(out)
    check_out(run, out)
    if run.kind in ("profiles", "sets"):
        write_rows(result.metadata, result.samples, result.features, out)
        sidecar = {
            "run": str(run.path),
            "edit": result.edit,
            "start": result.info["start"],
            "units": result.info["units"],
            "rows": len(result.samples),
            "table": result.info["table"],
            "nested_left_empty": result.info["nested"],
            "unseen_values": result.unseen,
            **({"sets": result.info["sets"]} if "sets" in result.info else {}),
        }
        atomic_write_json(sidecar_path(out), sidecar)
    elif out.name.lower().endswith(".npz"):
        _write_stack(result, out)
    else:
        tmp = out.with_name(out.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        _write_images(result, run, tmp)
        if out.exists():
            out.rmdir()
        tmp.replace(out)
    return {"rows": len(result.samples), "out": str(out), "edit": result.edit, "unseen_values": result.unseen}
