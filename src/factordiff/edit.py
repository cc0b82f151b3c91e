"""Counterfactual edits of single images, as the ``factordiff counterfactual`` command makes them."""

from __future__ import annotations

import numpy as np
import torch

from factordiff.data.shapes import resize_images
from factordiff.errors import FactordiffError
from factordiff.model import FactorModel


def fit_image(model: FactorModel, image: np.ndarray, where: str) -> np.ndarray:
    """Bring one (H, W, C) uint8 image to the model's size and channels, or say why it cannot be."""
    size, channels = model.shape.size, model.shape.channels
    if image.shape[0] != image.shape[1]:
        raise FactordiffError(f"{where}: image is {image.shape[1]}x{image.shape[0]}; expected a square image")
    if image.shape[2] == 4 and channels == 3:
        image = image[..., :3]  # drop alpha
    if image.shape[2] != channels:
        raise FactordiffError(
            f"{where}: image has {image.shape[2]} channel(s); this model expects {channels}"
        )
    if image.shape[0] != size:
        if image.shape[0] % size:
            raise FactordiffError(
                f"{where}: image is {image.shape[0]}x{image.shape[0]}; expected {size}x{size} or a multiple of it"
            )
        image = resize_images(image[None], size)[0]
    return image


def parse_sets(model: FactorModel, sets: list[str]) -> dict[int, int]:
    """``["object_hue=0.3", ...]`` -> {factor position: value index}, naming any unknown factor or value."""
    out = {}
    for item in sets:
        name, eq, value = item.partition("=")
        if not eq or not name or not value:
            raise FactordiffError(
                f"--set {item!r}: expected FACTOR=VALUE, e.g. {model.spec.names[0]}={model.spec.factors[0].values[0]}"
            )
        k = model.spec.position(name.strip())
        out[k] = model.spec.factors[k].index(value.strip())
    return out


def edit_settings(
    e,
    spec,
    factors,
    strength: float | None = None,
    guidance: float | None = None,
    residual: bool | None = None,
) -> tuple[float, float, bool]:
    """(strength, guidance, residual) of an edit changing ``factors`` (positions in ``spec``) under
    the ``EvaluateConfig`` ``e``: its ``technical_*`` settings where every changed factor is
    technical and they are set, its general ones otherwise; a setting passed here (not None)
    overrides the run's."""
    technical = bool(factors) and all(spec.factors[k].role == "technical" for k in factors)
    pick = lambda given, tech, general: (
        given if given is not None else general if tech is None or not technical else tech
    )
    return (
        pick(strength, e.technical_strength, e.edit_strength),
        pick(guidance, e.technical_guidance, e.guidance),
        pick(residual, e.technical_residual, e.edit_residual),
    )


@torch.no_grad()
def edit_image(
    model: FactorModel,
    image: np.ndarray,
    sets: dict[int, int] | None = None,
    reference: np.ndarray | None = None,
    factors: list[int] | None = None,
    steps: int = 50,
    guidance: float = 1.0,
    strength: float = 1.0,
    residual: bool | None = None,
) -> np.ndarray:
    """The image with some factors changed: to given values (their prototype codes) or to the values
    a reference image has (its code blocks), inverting it to t = ``strength`` T (``residual``:
    ``FactorModel.edit``). Returns the edited (H, W, C) uint8 image."""
    codes = model.codes(image[None])
    new = codes.clone()
    blocks = model.factor_blocks
    for k, v in (sets or {}).items():
        new[0, blocks[k]] = model.prototype(k, v)
    if reference is not None:
        ref = model.codes(reference[None])
        for k in factors or []:
            new[0, blocks[k]] = ref[0, blocks[k]]
    changed = sorted({blocks[k] for k in set(sets or {}) | set(factors or [])})
    if not changed:
        raise FactordiffError("nothing to change: pass --set FACTOR=VALUE or --from REF.png --factor FACTOR")
    from factordiff.diffusion.guidance import Guidance

    return model.edit(
        image[None],
        codes,
        new,
        steps,
        Guidance(factors={k: guidance for k in changed}),
        strength,
        residual=residual,
    )[0]


@torch.no_grad()
def edit_blocks(
    model: FactorModel,
    images: np.ndarray,
    blocks: dict[int, torch.Tensor],
    steps: int = 50,
    guidance: float = 2.0,
    strength: float = 1.0,
    residual: bool | None = None,
) -> np.ndarray:
    """Images (N, H, W, C) uint8 with the code block of each factor in ``blocks`` (factor -> (D,)
    block) replaced: inversion under their own codes (to t = ``strength`` T), regeneration under
    the new ones with guidance on the changed blocks (``residual``: ``FactorModel.edit``), in
    chunks of 64."""
    from factordiff.diffusion.guidance import Guidance

    out = []
    for i in range(0, len(images), 64):
        x = images[i : i + 64]
        codes = model.codes(x)
        new = codes.clone()
        for k, b in blocks.items():
            new[:, model.factor_blocks[k]] = b
        out.append(
            model.edit(
                x,
                codes,
                new,
                steps,
                Guidance(factors={model.factor_blocks[k]: guidance for k in blocks}),
                strength,
                residual=residual,
            )
        )
    return np.concatenate(out) if out else images[:0]


def channel_names(model: FactorModel) -> tuple[str, ...]:
    if model.config.data.source == "cellsim":
        from factordiff.data.cellsim import CHANNELS

        return CHANNELS
    return {1: ("gray",), 3: ("R", "G", "B")}.get(
        model.shape.channels, tuple(f"ch{c + 1}" for c in range(model.shape.channels))
    )


def compound_code(model: FactorModel, k: int, smiles: str, library: dict[str, str]) -> torch.Tensor:
    """A code block for a compound no training image had, from its structure: the Morgan
    ``CodeRegression`` (Tanimoto kernel ridge offset from the control's prototype, or a
    Tanimoto-weighted mean, whichever has the lower leave-one-out error) of the training compounds'
    prototype blocks on their fingerprints. Only prototypes (training images) are used. A run
    with ``denoiser.structure`` on this factor instead codes it as it codes every compound: its
    ``StructureCodes`` of the fingerprint, learned with the denoiser."""
    from factordiff.data.cellsim import CONTROL
    from factordiff.encoders.perturbation import CodeRegression, perturbation_features

    f = model.spec.factors[k]
    s = model.structure
    if s is not None and s.factor == k:
        return s.embedder.embed(torch.from_numpy(perturbation_features("morgan", [smiles], set())))[0]
    known = [
        v
        for v in range(f.size)
        if model.has_prototype(k, v) and str(f.values[v]) in library and str(f.values[v]) != CONTROL
    ]
    if len(known) < 3:
        raise FactordiffError(
            f"--set {f.name}={smiles}: fewer than three training compounds with structures to learn codes from"
        )
    fps = perturbation_features("morgan", [library[str(f.values[v])] for v in known] + [smiles], set())
    control = (
        model.prototype(k, f.index(CONTROL)).numpy()
        if CONTROL in map(str, f.values) and model.has_prototype(k, f.index(CONTROL))
        else None
    )
    regression = CodeRegression(
        "morgan", fps[:-1], torch.stack([model.prototype(k, v) for v in known]).numpy(), control
    )
    return torch.from_numpy(regression.predict(fps[-1:])[0]).float()


@torch.no_grad()
def regenerate_images(
    run,
    where: list[str],
    sets: list[str],
    out,
    steps: int | None = None,
    guidance: float | None = None,
    limit: int | None = None,
    strength: float | None = None,
    residual: bool | None = None,
) -> dict:
    """``factordiff regenerate`` for an image run: the run's images matching ``where`` (factor values),
    inverted and regenerated with the ``sets`` factors changed, written to the folder ``out``: one
    16-bit TIFF per channel for cellsim (its 8-bit scale undone: x 64) or one PNG per image, and
    ``regenerated.csv`` (load_data style: ``FileName_Orig<Ch>``, ``PathName_Orig<Ch>``, the new
    factor values as ``Metadata_<factor>``, ``Metadata_source_index`` and ``Metadata_edit``).
    A compound of cellsim may be set by SMILES (``compound_code``). ``steps``: solver steps (None:
    the run's ``evaluate.steps``); ``strength``: how far up the noise schedule the sources are
    inverted, ``guidance`` the weight on the changed factors and ``residual`` whether the edit is
    residual (``FactorModel.edit``); None takes the run's (``edit_settings``: its technical ones
    when only technical factors change). Nothing is left half-written."""
    import shutil
    from pathlib import Path

    import pandas as pd
    from tqdm.auto import tqdm

    from factordiff.data.splits import match_where, where_conditions
    from factordiff.evaluate.suite import load_run
    from factordiff.factors import parse_pairs
    from factordiff.fit import prepare_data

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FactordiffError(f"--out {out}: exists and is not an empty folder; choose another")
    cfg, model = load_run(Path(run))
    steps = steps or cfg.evaluate.steps
    data, _, _ = prepare_data(cfg)
    spec = model.spec
    rows = (
        np.flatnonzero(match_where(data.factors, where_conditions(spec, where, "--where")))
        if where
        else np.arange(len(data))
    )
    if not len(rows):
        raise FactordiffError(f"--where {' / '.join(where)}: no image of {data.source} matches")
    rows = rows[:limit] if limit else rows
    new_blocks, target_text = {}, {}
    for text in sets:
        for name, value in parse_pairs(text, "--set"):
            k = spec.resolve(name)
            try:
                v = spec.factors[k].index(value)
                if not model.has_prototype(k, v):
                    raise FactordiffError(
                        f"--set {name}={value}: no training image has this value; give a reference image with factordiff counterfactual --from"
                    )
                new_blocks[k] = model.prototype(k, v)
            except FactordiffError:
                if cfg.data.source != "cellsim" or spec.factors[k].name != "compound":
                    raise
                from factordiff.data.cellsim import COMPOUNDS

                new_blocks[k] = compound_code(model, k, value, COMPOUNDS)  # an unseen compound, by its SMILES
            target_text[spec.factors[k].name] = value
    if not new_blocks:
        raise FactordiffError("--set: expected at least one FACTOR=VALUE")
    strength, guidance, residual = edit_settings(
        cfg.evaluate, spec, list(new_blocks), strength, guidance, residual
    )
    channels = channel_names(model)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    records = []
    bar = tqdm(total=len(rows), desc="regenerating", unit="img")
    for i in range(0, len(rows), 64):
        chunk = rows[i : i + 64]
        edited = edit_blocks(model, data.images[chunk], new_blocks, steps, guidance, strength, residual)
        for j, (src, img) in enumerate(zip(chunk, edited)):
            rec = {
                f"Metadata_{f.name}": str(f.values[data.factors[src, q]]) for q, f in enumerate(spec.factors)
            }
            rec.update({f"Metadata_{n}": v for n, v in target_text.items()})
            rec.update(
                Metadata_source_index=int(src),
                Metadata_edit=", ".join(f"{n}={v}" for n, v in target_text.items()),
            )
            stem = f"{i + j:06d}"
            if cfg.data.source == "cellsim":
                import tifffile

                for c, name in enumerate(channels):
                    fname = f"{stem}_{name}.tiff"
                    tifffile.imwrite(
                        tmp / "images" / fname, (img[..., c].astype(np.uint16) * 64 + 32).astype(np.uint16)
                    )
                    rec[f"FileName_Orig{name}"], rec[f"PathName_Orig{name}"] = fname, "images"
            else:
                from PIL import Image

                Image.fromarray(img if img.shape[2] != 1 else img[..., 0]).save(
                    tmp / "images" / f"{stem}.png"
                )
                rec["FileName_Image"], rec["PathName_Image"] = f"{stem}.png", "images"
            records.append(rec)
        bar.update(len(chunk))
    bar.close()
    pd.DataFrame(records).to_csv(tmp / "regenerated.csv", index=False)
    if out.exists():
        out.rmdir()
    tmp.replace(out)
    return {"images": len(records), "out": str(out), "edit": records[0]["Metadata_edit"]}
