"""Cell Painting figures of an image run whose factors include ``compound`` and ``batch`` (cellsim,
or a table with those factors), each beside the copy-the-source (or copy-the-control) null:

- ``batch_swap``: training images of a compound at the top dose (where compounds are visible: at
  0.1 uM cellsim's barely change a cell) regenerated into a batch that compound was never seen in
  (the held-out compound x batch combinations), with the batch's plate and source set to one of
  that batch's (plates nest in batches, batches in sources). ``target_batch_rate``: share the
  oracle reads as the target batch; ``biology_kept_rate``: share whose compound, dose and cell line
  the oracle still reads as the source's (the source's ground truth); ``compound_kept_rate``: the
  same for the compound alone. Beside them: copy the source, ``mean_shift`` (each channel moved
  from the source batch's training mean and spread to the target batch's: ``batch_mean_shift``),
  ``autoencoder_roundtrip``, the sources through the latent autoencoder alone (no diffusion),
  the most that any edit of a latent model can keep, and on cellsim ``true_counterfactual``: the
  same cells rendered again in the target plate, what a perfect edit would give (the oracle's
  ceiling). ``feature_baselines``: the profile runs' baselines (``evaluate/baselines.py``) over
  the oracle's backbone features (256 per image) of the training images, for the same sources and
  targets (``mean_shift`` by the difference of the training means of the target's and the
  source's joint batch, plate and source; ``nearest`` training condition; additive ``linear``),
  read by the oracle's own linear heads into the same three rates, with ``mean_shift_fallback``,
  the share of sources whose joint combination had no training image.
  ``edit``: the settings of the swaps (``evaluate.technical_*``);
- ``frechet.<channel>`` and ``frechet.all``, ``kernel.all``: Frechet and kernel (KID) distances
  (``evaluate/distances.py``) between the regenerated images and the real held-out images of the
  same combinations, over the oracle's features (an encoder trained in factordiff on the assay); a
  channel's distance reads images in which every other channel is replaced by its mean over the
  real images;
- ``unseen_compound``: a compound no training image has, generated from same-batch control images
  with its code from its structure (``edit.compound_code``) at the top dose (where the assay's
  compounds are told apart); ``closer_than_control``: share of the generated images whose features
  are closer to the mean of the real compound's images at that dose than to the controls' mean.
  Nulls: the control images themselves (``copy_control``) and real images of the nearest training
  compound by Tanimoto similarity (``nearest_compound``); on cellsim, ``structure_ceiling``: how
  well the true effects of the training compounds predict the unseen one's from structure;
  ``seen_compounds``: the same edit into training compounds with their own prototype codes (how
  much of a compound the model imposes when the code is right);
- ``map``: copairs mAP of compound retrieval against controls, over oracle features, for real
  treated images, for controls regenerated into each of those compounds, and for the controls
  themselves (``copy_control``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from factordiff.chem import tanimoto
from factordiff.config import EvaluateConfig
from factordiff.data.base import FactorDataset
from factordiff.data.cellsim import COMPOUNDS, compound_effect, true_counterfactuals
from factordiff.data.splits import Split
from factordiff.edit import compound_code, edit_blocks, edit_settings
from factordiff.encoders.perturbation import CodeRegression, perturbation_features
from factordiff.errors import FactordiffError
from factordiff.evaluate.baselines import baseline_rows, fallback_share
from factordiff.evaluate.distances import frechet, kernel_distance
from factordiff.evaluate.profiling import mean_average_precision
from factordiff.models.images import FactorModel, to_uint8, to_unit
from factordiff.train import map_batches

CONTROL = "DMSO"  # cellsim's, and the default control of other data
CELL_ROLES = ("compound", "batch", "plate", "source", "dose", "cell_line")


@dataclass(frozen=True)
class CellFactors:
    """The factors the cell figures read, found by what they are rather than by their names.

    Args:
        pos: role (one of ``CELL_ROLES``: the perturbation ``compound``, ``batch``, and ``plate``,
            ``source``, ``dose``, ``cell_line`` where the data has them) -> factor position.
        control: the perturbation's negative-control value.
    """

    pos: dict[str, int]
    control: str = CONTROL

    @classmethod
    def of(cls, spec, names: Mapping[str, str] | None = None, control: str | None = None) -> "CellFactors":
        """Each role's factor: ``names[role]`` where given (e.g. the perturbation that ``--controls``
        names), else the factor named after the role; with or without ``Metadata_``, any case."""
        pos = {}
        for role in CELL_ROLES:
            try:
                pos[role] = spec.resolve((names or {}).get(role, role))
            except FactordiffError:
                continue
        return cls(pos, control or CONTROL)


def oracle_features(oracle, images: np.ndarray) -> np.ndarray:
    """The oracle backbone's 256 features of uint8 images (N, H, W, C)."""
    with torch.no_grad():
        return map_batches(lambda b: oracle.backbone(to_unit(b)), images, 256).numpy().astype(np.float64)


def _distances(
    oracle, generated: np.ndarray, real: np.ndarray, names: tuple[str, ...], fill: np.ndarray
) -> dict:
    g, r = oracle_features(oracle, generated), oracle_features(oracle, real)
    out, out_k = {"all": frechet(g, r)}, kernel_distance(g, r)
    for c, name in enumerate(names):

        def keep(x, c=c):
            return np.where(np.arange(x.shape[-1]) == c, x, fill).astype(np.uint8)

        out[name] = frechet(oracle_features(oracle, keep(generated)), oracle_features(oracle, keep(real)))
    return {"frechet": out, "kernel": {"all": out_k}}


@torch.no_grad()
def autoencoder_roundtrip(model: FactorModel, images: np.ndarray) -> np.ndarray | None:
    """uint8 images through the latent autoencoder and back (None in pixel space): the most that an
    edit of a latent model can keep of them."""
    return None if model.autoencoder is None else to_uint8(model.from_latent(model.latents(images)))


def _same_batch(
    rng: np.random.Generator, pool: np.ndarray, rows: np.ndarray, batch: np.ndarray
) -> np.ndarray:
    """For each of ``rows``, a random row of ``pool`` in the same batch (any row of ``pool`` where
    the batch has none)."""
    return np.asarray(
        [
            rng.choice(pool[batch[pool] == batch[r]]) if (batch[pool] == batch[r]).any() else rng.choice(pool)
            for r in rows
        ]
    )


def batch_mean_shift(
    data: FactorDataset, train: np.ndarray, src: np.ndarray, target_batch: np.ndarray, kb: int
) -> np.ndarray:
    """The baseline a user tries first: each source image's channels standardised with its batch's
    per-channel mean and spread and given the target batch's, over training images only."""
    x = data.images.reshape(len(data), -1, data.channels)
    stats = {}
    for b in np.unique(np.r_[data.factors[src, kb], target_batch]):
        rows = np.flatnonzero(train & (data.factors[:, kb] == b))
        pix = x[rows[:2000]].reshape(-1, data.channels).astype(np.float64)
        stats[b] = (pix.mean(0), pix.std(0) + 1e-6)
    out = np.empty((len(src), *data.images.shape[1:]), np.uint8)
    for i, (s, t) in enumerate(zip(src, target_batch)):
        (ms, ss), (mt, st) = stats[data.factors[s, kb]], stats[t]
        out[i] = np.clip(np.rint((data.images[s] - ms) / ss * st + mt), 0, 255).astype(np.uint8)
    return out


def _edit(
    model: FactorModel, images: np.ndarray, blocks: dict[int, torch.Tensor], e: EvaluateConfig
) -> np.ndarray:
    """``edit_blocks`` with the settings of the changed factors' role (``edit_settings``)."""
    strength, guidance, residual = edit_settings(e, model.spec, list(blocks))
    return edit_blocks(model, images, blocks, e.steps, guidance, strength, residual)


def _closer(oracle, images: np.ndarray, true_mean: np.ndarray, control_mean: np.ndarray) -> np.ndarray:
    """Per image, whether its oracle features lie closer to ``true_mean`` than to ``control_mean``."""
    feats = oracle_features(oracle, images)
    return np.linalg.norm(feats - true_mean, axis=1) < np.linalg.norm(feats - control_mean, axis=1)


def _regenerate_into(
    model: FactorModel,
    data: FactorDataset,
    src: np.ndarray,
    target_rows: np.ndarray,
    factors: list[int],
    e: EvaluateConfig,
) -> np.ndarray:
    """Images ``src`` regenerated with the ``factors`` of the rows ``target_rows`` (their prototype
    blocks), batched by identical targets, with the edit settings of those factors' role."""
    f = data.factors
    out = np.empty((len(src), *data.images.shape[1:]), np.uint8)
    keys = [tuple(int(f[r, k]) for k in factors) for r in target_rows]
    for key in sorted(set(keys)):
        idx = np.flatnonzero([k == key for k in keys])
        blocks = {k: model.prototype(k, v) for k, v in zip(factors, key) if model.has_prototype(k, v)}
        out[idx] = _edit(model, data.images[src[idx]], blocks, e)
    return out


def _oracle_reads(oracle, features: np.ndarray) -> np.ndarray:
    """The oracle's reading of backbone features (N, 256): each factor's value index (N, K), the
    argmax of its linear head (what ``oracle.predict`` gives for the images of those features)."""
    with torch.no_grad():
        z = torch.from_numpy(np.asarray(features, np.float32))
        return torch.stack([head(z).argmax(1) for head in oracle.heads], 1).numpy()


def feature_baselines(
    oracle,
    data: FactorDataset,
    train: np.ndarray,
    src: np.ndarray,
    target: np.ndarray,
    seed: int,
    names: tuple[str, ...] = ("mean_shift", "nearest", "linear"),
    chunk: int = 4096,
) -> tuple[dict[str, np.ndarray], dict]:
    """The baselines ``names`` of ``evaluate/baselines.py`` over oracle features: the training images'
    backbone features (256 per image; held-out images are never read) are the feature matrix,
    training images ``src`` are regenerated into ``target`` (len(src), K) value indices, and the
    oracle's heads read the result. Per name, the readings (len(src), K), and the ``info`` of
    ``baseline_rows`` (the mean shift's fallbacks)."""
    if not train[src].all():
        raise ValueError("feature baselines regenerate training images only")
    tr = np.flatnonzero(train)
    x = np.concatenate(
        [oracle_features(oracle, data.images[tr[i : i + chunk]]) for i in range(0, len(tr), chunk)]
    )
    local, info = np.searchsorted(tr, src), {}
    everything = np.ones(len(tr), bool)
    reads = {
        name: _oracle_reads(
            oracle, baseline_rows(name, data.spec, x, data.factors[tr], everything, local, target, seed, info)
        )
        for name in names
    }
    return reads, info


def _swap(
    model: FactorModel,
    oracle,
    data: FactorDataset,
    train: np.ndarray,
    src: np.ndarray,
    target_rows: np.ndarray,
    e: EvaluateConfig,
    seed: int,
    pos: dict[str, int],
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Fields ``src`` regenerated into the plate (and batch, source) of ``target_rows``; the
    regenerated images, the batch mean shift's, and the oracle's rates for them, the nulls and the
    baselines over oracle features (``feature_baselines``), all through one ``rates``."""
    f, kc, kb = data.factors, pos["compound"], pos["batch"]
    technical = [pos[k] for k in ("batch", "plate", "source") if k in pos]
    biology = [pos[k] for k in ("compound", "dose", "cell_line") if k in pos]
    generated = _regenerate_into(model, data, src, target_rows, technical, e)

    def rates(p: np.ndarray) -> dict:
        """Shares of the swaps whose oracle readings ``p`` (len(src), K) are the target batch, the
        source's biology, the source's compound."""
        return {
            "target_batch_rate": float((p[:, kb] == f[target_rows, kb]).mean()),
            "biology_kept_rate": float(np.all(p[:, biology] == f[src][:, biology], axis=1).mean()),
            "compound_kept_rate": float((p[:, kc] == f[src, kc]).mean()),
        }

    def read(images: np.ndarray) -> dict:
        return rates(oracle.predict(images))

    moved = f[src].copy()
    moved[:, technical] = f[target_rows][:, technical]
    true_cf = true_counterfactuals(data, src, moved, seed)
    trip = autoencoder_roundtrip(model, data.images[src])
    shifted = batch_mean_shift(data, train, src, f[target_rows, kb], kb)
    reads, info = feature_baselines(oracle, data, train, src, moved, seed)
    return (
        generated,
        shifted,
        {
            **read(generated),
            "copy_source": read(data.images[src]),
            "mean_shift": read(shifted),
            **({"autoencoder_roundtrip": read(trip)} if trip is not None else {}),
            **({"true_counterfactual": read(true_cf)} if true_cf is not None else {}),
            "feature_baselines": {
                **{name: rates(p) for name, p in reads.items()},
                "mean_shift_fallback": fallback_share(info),
            },
            "edit": dict(zip(("strength", "guidance", "residual"), edit_settings(e, data.spec, technical))),
        },
    )


def seen_batch_swaps(
    model: FactorModel,
    oracle,
    data: FactorDataset,
    split: Split,
    e: EvaluateConfig,
    n: int = 100,
    seed: int = 0,
    cells: CellFactors | None = None,
) -> dict:
    """Batch swaps of top-dose training fields into another batch in which their compound was
    seen in training: the figures of ``batch_swap`` on combinations that are not held out, where
    edit settings may be chosen without looking at the held-out ones."""
    f = data.factors
    pos = (cells or CellFactors.of(data.spec)).pos
    train = ~split.heldout(f)
    kc, kb = pos["compound"], pos["batch"]
    at_top = (f[:, pos["dose"]] == f[:, pos["dose"]].max()) if "dose" in pos else np.ones(len(f), bool)
    rng = np.random.default_rng(seed + 12)
    src, target_rows = [], []
    for s in rng.permutation(np.flatnonzero(train & at_top)):
        targets = np.flatnonzero(train & at_top & (f[:, kc] == f[s, kc]) & (f[:, kb] != f[s, kb]))
        if len(targets):
            src.append(s)
            target_rows.append(rng.choice(targets))
        if len(src) == n:
            break
    return {
        "edits": len(src),
        **_swap(model, oracle, data, train, np.asarray(src, int), np.asarray(target_rows, int), e, seed, pos)[
            2
        ],
    }


def seen_compound_edits(
    model: FactorModel,
    oracle,
    data: FactorDataset,
    split: Split,
    e: EvaluateConfig,
    seed: int = 0,
    compounds: list[int] | None = None,
    per_compound: int = 8,
    leave_one_out: dict[str, str] | None = None,
    cells: CellFactors | None = None,
) -> float | None:
    """Same-batch training controls regenerated into training compounds (their prototype codes) at
    the top dose: the share closer to the compound's real fields than to the controls' (the
    ``unseen_compound`` criterion with the right code: how much of a compound the model imposes,
    the limit of codes from structure). ``compounds``: value indices (default: every treated one).
    With ``leave_one_out`` (a library, name -> SMILES) each compound's code comes instead from its
    structure and the *other* training compounds (``edit.compound_code``): the unseen-compound test
    on training compounds, where nothing held out is looked at; None for a run whose compound
    codes are learned from structure (``denoiser.structure``: each training compound's code was
    learned from its own images, so none can be left out without training again)."""
    if leave_one_out is not None and model.structure is not None:
        return None
    cells = cells or CellFactors.of(data.spec)
    kc = cells.pos["compound"]
    names = [str(v) for v in data.spec.factors[kc].values]
    code = (
        None
        if leave_one_out is None
        else lambda c: (
            compound_code(
                model,
                kc,
                leave_one_out[names[c]],
                {k: v for k, v in leave_one_out.items() if k != names[c]},
                cells.control,
            )
            if names[c] in leave_one_out
            else None
        )
    )
    if cells.control not in names:
        return None
    hits = [
        _closer(oracle, edited, true_mean, control_mean)
        for _, edited, true_mean, control_mean in compound_edits(
            model,
            oracle,
            data,
            split,
            e,
            np.random.default_rng(seed + 13),
            compounds,
            per_compound,
            code,
            cells,
        )
    ]
    return float(np.concatenate(hits).mean()) if hits else None


def compound_edits(
    model: FactorModel,
    oracle,
    data: FactorDataset,
    split: Split,
    e: EvaluateConfig,
    rng: np.random.Generator,
    compounds: list[int] | None = None,
    per_compound: int = 8,
    code: Callable[[int], torch.Tensor | None] | None = None,
    cells: CellFactors | None = None,
) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """The edits of ``seen_compound_edits``, per training compound ``c`` (``compounds`` or every
    treated one) with top-dose training fields: ``(c, edited, true_mean, control_mean)``, where
    ``edited`` are ``per_compound`` same-batch training controls (drawn with ``rng``) regenerated
    into it at the top dose with ``code(c)`` (default its prototype; None skips it), and the means
    are the oracle features' of its real fields and of the controls'. The data's perturbation
    factor must have the control value (``cells``)."""
    spec, f = data.spec, data.factors
    cells = cells or CellFactors.of(spec)
    kc, kb, kd = cells.pos["compound"], cells.pos["batch"], cells.pos.get("dose")
    names = [str(v) for v in spec.factors[kc].values]
    train, ctrl = ~split.heldout(f), names.index(cells.control)
    top = int(np.max(f[:, kd])) if kd is not None else None
    at_top = (f[:, kd] == top) if kd is not None else np.ones(len(f), bool)
    pool = np.flatnonzero(train & (f[:, kc] == ctrl))
    control_mean = oracle_features(oracle, data.images[np.flatnonzero(f[:, kc] == ctrl)[:500]]).mean(0)
    code = code or (lambda c: model.prototype(kc, c))
    for c in compounds if compounds is not None else [c for c in range(len(names)) if c != ctrl]:
        real = np.flatnonzero(train & (f[:, kc] == c) & at_top)
        if not len(real) or not model.has_prototype(kc, c):
            continue
        chosen = rng.choice(real, min(len(real), per_compound), replace=False)
        block = code(c)
        if block is None:
            continue
        blocks = {kc: block, **({kd: model.prototype(kd, top)} if kd is not None else {})}
        edited = _edit(model, data.images[_same_batch(rng, pool, chosen, f[:, kb])], blocks, e)
        yield c, edited, oracle_features(oracle, data.images[real]).mean(0), control_mean


def evaluate_cells(
    model: FactorModel,
    oracle,
    data: FactorDataset,
    split: Split,
    channels: tuple[str, ...],
    e: EvaluateConfig,
    n: int = 100,
    seed: int = 0,
    library: dict[str, str] | None = None,
    parts: tuple[str, ...] = ("batch_swap", "unseen_compound", "map"),
    cells: CellFactors | None = None,
) -> dict:
    """The figures above; factors are found by role (``cells``; default: by their names, compound,
    batch, and plate, source, dose, cell_line where the data has them, control DMSO). Edits take
    the settings ``e`` of their factors' role (``edit_settings``: batch swaps the technical ones).
    ``seed`` is the run's (cellsim's fields are rendered with it, so that the batch swaps' true
    counterfactuals can be rendered).
    ``parts``: the figures to compute."""
    spec, f = data.spec, data.factors
    cells = cells or CellFactors.of(spec)
    pos, control = cells.pos, cells.control
    if "compound" not in pos or "batch" not in pos:
        return {"absent": "the data has no compound and batch factors"}
    rng = np.random.default_rng(seed + 11)
    held = split.heldout(f)
    train = ~held
    kc, kb = pos["compound"], pos["batch"]
    biology = [pos[k] for k in ("compound", "dose", "cell_line") if k in pos]
    fill = np.rint(
        data.images[rng.choice(len(data), min(2000, len(data)), replace=False)]
        .reshape(-1, data.channels)
        .mean(0)
    ).astype(np.uint8)
    out: dict = {}

    # batch swap into held-out compound x batch combinations
    combos = sorted({(int(c), int(b)) for c, b in f[held][:, [kc, kb]]})
    combos = [
        (c, b) for c, b in combos if (train & (f[:, kc] == c)).any() and (train & (f[:, kb] == b)).any()
    ]
    if combos and "batch_swap" in parts:
        src, target_rows, truth = [], [], []
        at_top = (f[:, pos["dose"]] == f[:, pos["dose"]].max()) if "dose" in pos else np.ones(len(f), bool)
        for c, b in combos:
            pool = np.flatnonzero(train & at_top & (f[:, kc] == c) & (f[:, kb] != b))
            real = np.flatnonzero(held & at_top & (f[:, kc] == c) & (f[:, kb] == b))
            if not len(pool) or not len(real):
                continue
            truth.extend(real)
            for s in rng.choice(pool, max(1, n // len(combos)), replace=len(pool) < n // len(combos)):
                r = rng.choice(real)
                src.append(s)
                target_rows.append(r)
        src, target_rows = np.asarray(src, int), np.asarray(target_rows, int)
    if combos and "batch_swap" in parts and len(src):
        generated, shifted, swap = _swap(model, oracle, data, train, src, target_rows, e, seed, pos)
        real_imgs = data.images[
            np.asarray(truth)
        ]  # every real image of the held-out combinations at the top dose
        out["batch_swap"] = {
            "edits": int(len(src)),
            "combinations": [
                f"{spec.factors[kc].values[c]} x {spec.factors[kb].values[b]}" for c, b in combos
            ],
            **swap,
            **_distances(oracle, generated, real_imgs, channels, fill),
            "copy_source_distances": _distances(oracle, data.images[src], real_imgs, channels, fill),
            "mean_shift_distances": _distances(oracle, shifted, real_imgs, channels, fill),
        }
        out["frechet"] = out["batch_swap"]["frechet"]

    # an unseen compound, by its structure
    compounds = [str(v) for v in spec.factors[kc].values]
    unseen = [
        c for c in range(len(compounds)) if not (train & (f[:, kc] == c)).any() and (f[:, kc] == c).any()
    ]
    if unseen and library and control in compounds and "unseen_compound" in parts:
        ctrl = compounds.index(control)
        known = [
            c
            for c in range(len(compounds))
            if c != ctrl and c not in unseen and (train & (f[:, kc] == c)).any() and compounds[c] in library
        ]
        fps_known = perturbation_features("morgan", [library[compounds[c]] for c in known], set())
        feats_ctrl = oracle_features(oracle, data.images[np.flatnonzero(f[:, kc] == ctrl)[:500]]).mean(0)
        kd = pos.get("dose")
        top = int(np.max(f[:, kd])) if kd is not None else None
        res, hits = [], {"generated": [], "copy_control": [], "nearest_compound": []}
        pool = np.flatnonzero(train & (f[:, kc] == ctrl))
        for c in unseen:
            real = np.flatnonzero((f[:, kc] == c) & ((f[:, kd] == top) if kd is not None else True))
            if not len(real) or not known:
                continue
            chosen = rng.choice(real, min(len(real), max(8, n // len(unseen))), replace=False)
            sources = _same_batch(rng, pool, chosen, f[:, kb])
            blocks = {
                kc: compound_code(model, kc, library[compounds[c]], library, control),
                **({kd: model.prototype(kd, top)} if kd is not None else {}),
            }
            # the nearest training compound by structure, its real images at the same dose (and batch)
            nearest = known[
                int(
                    np.argmax(
                        tanimoto(perturbation_features("morgan", [library[compounds[c]]], set()), fps_known)[
                            0
                        ]
                    )
                )
            ]
            near_pool = np.flatnonzero(
                train & (f[:, kc] == nearest) & ((f[:, kd] == top) if kd is not None else True)
            )
            near_pool = near_pool if len(near_pool) else np.flatnonzero(train & (f[:, kc] == nearest))
            near = _same_batch(rng, near_pool, chosen, f[:, kb])
            true_mean = oracle_features(oracle, data.images[real]).mean(0)
            row = {
                name: _closer(oracle, x, true_mean, feats_ctrl)
                for name, x in (
                    ("generated", _edit(model, data.images[sources], blocks, e)),
                    ("copy_control", data.images[sources]),
                    ("nearest_compound", data.images[near]),
                )
            }
            for k, v in row.items():
                hits[k].append(v)
            res.append(
                {
                    "compound": compounds[c],
                    "images": int(len(chosen)),
                    "closer_than_control": float(row["generated"].mean()),
                    "copy_control_closer": float(row["copy_control"].mean()),
                    "nearest_compound": compounds[nearest],
                    "nearest_compound_closer": float(row["nearest_compound"].mean()),
                }
            )
        if res:
            out["unseen_compound"] = {
                "dose": str(spec.factors[kd].values[top]) if kd is not None else None,
                "seen_compounds": seen_compound_edits(
                    model, oracle, data, split, e, seed, known, cells=cells
                ),
                "edit": dict(zip(("strength", "guidance", "residual"), edit_settings(e, spec, biology))),
                "closer_than_control": float(np.concatenate(hits["generated"]).mean()),
                "copy_control": float(np.concatenate(hits["copy_control"]).mean()),
                "nearest_compound": float(np.concatenate(hits["nearest_compound"]).mean()),
                "by_compound": res,
            }
            if library is COMPOUNDS:  # cellsim's ground truth: how far structure alone can go
                out["unseen_compound"]["structure_ceiling"] = structure_ceiling(
                    [compounds[c] for c in unseen], [compounds[c] for c in known]
                )

    # compound retrieval (mAP) against controls
    if control in compounds and "map" in parts:
        ctrl = compounds.index(control)
        treated = np.flatnonzero(train & (f[:, kc] != ctrl))
        treated = rng.choice(treated, min(len(treated), 2 * n), replace=False)
        pool = np.flatnonzero(train & (f[:, kc] == ctrl))
        sources = _same_batch(rng, pool, treated, f[:, kb])
        generated = _regenerate_into(model, data, sources, treated, biology, e)
        controls = rng.choice(pool, min(len(pool), n), replace=False)
        meta = {
            "Metadata_compound": np.r_[f[treated, kc], f[controls, kc]].astype(str),
            "Metadata_plate": np.r_[
                f[treated, pos.get("plate", kb)], f[controls, pos.get("plate", kb)]
            ].astype(str),
        }
        is_ctrl = np.r_[np.zeros(len(treated), bool), np.ones(len(controls), bool)]
        feats_c = oracle_features(oracle, data.images[controls])
        out["map"] = {
            name: mean_average_precision(
                meta,
                np.concatenate([oracle_features(oracle, x), feats_c]),
                "Metadata_compound",
                is_ctrl,
                "Metadata_plate",
                seed,
            )["map"]
            for name, x in (
                ("real", data.images[treated]),
                ("generated", generated),
                ("copy_control", data.images[sources]),
            )
        }
    return out


def structure_ceiling(unseen: list[str], known: list[str], seed: int = 0) -> dict[str, dict[str, float]]:
    """How far structure alone can take a prediction of an unseen compound's effect in cellsim:
    the Morgan ``CodeRegression`` fitted on the *true* effects of the ``known`` compounds (names),
    applied to each ``unseen`` one. Per compound: the cosine between predicted and true effect,
    whether the prediction is closer to the truth than the control's (zero) effect is, and the
    Tanimoto similarity of its nearest known compound. No model of images can beat this."""
    known = [c for c in known if c != CONTROL]
    fk = perturbation_features("morgan", [COMPOUNDS[c] for c in known], set())
    fit = CodeRegression("morgan", fk, compound_effect([COMPOUNDS[c] for c in known], seed))
    out = {}
    for c in unseen:
        fu = perturbation_features("morgan", [COMPOUNDS[c]], set())
        pred, true = fit.predict(fu)[0], compound_effect(COMPOUNDS[c], seed)
        out[c] = {
            "cosine": float(pred @ true / max(np.linalg.norm(pred) * np.linalg.norm(true), 1e-12)),
            "closer_than_control": bool(np.linalg.norm(pred - true) < np.linalg.norm(true)),
            "nearest_known_tanimoto": float(tanimoto(fu, fk).max()),
        }
    return out
