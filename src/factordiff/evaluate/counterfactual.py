"""Oracle-judged counterfactuals.

The oracle is a classifier per factor trained on real images of *all* combinations (the one
learner allowed to see the held-out ones). A counterfactual changes factor k of a source image to
value v: DDIM-invert the source under its own codes, swap in the prototype code block of v, decode.
Then

- *effectiveness* of factor k: the share of edits of k that the oracle reads as v;
- *preservation* of factor k: the share of edits of *other* factors after which the oracle still
  reads k as the source's value;
- *all_right*: the share of edits after which the oracle reads every factor as requested (the
  changed one as the target, every other as the source's);

each reported for edits whose target combination was seen in training and for edits whose target
combination was held out, with the mean over factors. ``heldout_pairs`` are edits that change the
two factors of a composition split's held-out block at once, from a training combination into a
held-out one (both blocks swapped, guidance on both). ``soundness`` measures composition and
reversibility after Monteiro et al. (ICLR 2023).

Prototypes come from training images only. A target value that no training image had (unseen_value
and extrapolation splits) has no prototype: its code block is taken from a real image with that
value, as ``factordiff counterfactual --from REF.png`` takes it (``TargetCodes``); the metrics
count these edits (``targets_from_reference``) and the edits whose value no image has at all
(``skipped``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from factordiff.checkpoint import atomic_save_tensors, atomic_write_json, load_tensors, read_json
from factordiff.config import RunConfig
from factordiff.data.base import FactorDataset
from factordiff.data.sources import traits
from factordiff.data.splits import Split
from factordiff.diffusion.guidance import Guidance
from factordiff.encoders.backbone import ConvEncoder
from factordiff.factors import FactorSpec
from factordiff.models.images import FactorModel, to_unit
from factordiff.train import ArrayBatches, LoopOptions, Stage, map_batches, run_stage


class Oracle(nn.Module):
    """Image -> one classifier per factor (evaluation only)."""

    def __init__(self, sizes: list[int], in_channels: int, size: int, width: int = 16):
        super().__init__()
        self.backbone = ConvEncoder(in_channels, size, width, out_dim=256)
        self.heads = nn.ModuleList(nn.Linear(256, n) for n in sizes)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.backbone(x)
        return [head(h) for head in self.heads]

    @torch.no_grad()
    def predict(self, images: np.ndarray) -> np.ndarray:
        """Value index of every factor, (N, K), for uint8 images (N, H, W, C)."""
        self.eval()
        out = map_batches(lambda b: torch.stack([lg.argmax(1) for lg in self(to_unit(b))], 1), images, 512)
        return out.numpy()


class OracleStep(nn.Module):
    def __init__(self, oracle: Oracle):
        super().__init__()
        self.oracle = oracle

    def forward(self, batch, gen):
        logits = self.oracle(to_unit(batch["images"]))
        return sum(F.cross_entropy(lg, batch["factors"][:, k]) for k, lg in enumerate(logits)), {}


def train_oracle(
    data: FactorDataset,
    steps: int = 2000,
    seconds: float | None = None,
    seed: int = 0,
    batch_size: int = 128,
    lr: float = 2e-3,
    progress: bool = True,
) -> Oracle:
    """Train the oracle on ``data`` (which should cover every combination, held-out ones included)."""
    torch.manual_seed(seed + 7)
    oracle = Oracle(data.spec.sizes, data.channels, data.size)
    batches = ArrayBatches(
        {"images": data.images, "factors": torch.from_numpy(data.factors)}, batch_size, seed + 7
    )
    stage = Stage(
        "oracle",
        OracleStep(oracle),
        list(oracle.parameters()),
        batches,
        steps,
        lr,
        seconds,
        ema_decay=0.999,
        images_per_step=batch_size,
    )
    run_stage(stage, LoopOptions(seed=seed, progress=progress))
    return oracle.eval().requires_grad_(False)


def accuracy(oracle: Oracle, data: FactorDataset) -> dict[str, float]:
    pred = oracle.predict(data.images)
    return {f.name: float((pred[:, k] == data.factors[:, k]).mean()) for k, f in enumerate(data.spec.factors)}


@dataclass
class Edits:
    """A list of edits: source row (into the dataset), changed factor and target value."""

    source: list[int] = field(default_factory=list)
    factor: list[int] = field(default_factory=list)
    target: list[int] = field(default_factory=list)

    def add(self, s: int, k: int, v: int) -> None:
        self.source.append(s), self.factor.append(k), self.target.append(v)

    def __len__(self) -> int:
        return len(self.source)

    def keep(self, wanted: Callable[[int, int], bool]) -> "Edits":
        """The edits for which ``wanted(factor, target)`` is true, in order."""
        out = Edits()
        for s, k, v in zip(self.source, self.factor, self.target):
            if wanted(k, v):
                out.add(s, k, v)
        return out

    def requested(self, src: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The combination each edit asks for (N, K), from the sources' value indices ``src``, and
        which factors it changes (N, K) bool."""
        rows = np.arange(len(self))
        requested, changed = src.copy(), np.zeros(src.shape, bool)
        requested[rows, self.factor] = self.target
        changed[rows, self.factor] = True
        return requested, changed


@dataclass
class PairEdits:
    """Edits that change the same two factors at once: source rows and a target value pair each."""

    factors: tuple[int, int]
    source: list[int] = field(default_factory=list)
    targets: list[tuple[int, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.source)

    def requested(self, src: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """As ``Edits.requested``."""
        requested, changed = src.copy(), np.zeros(src.shape, bool)
        for col, k in enumerate(self.factors):
            requested[:, k] = [t[col] for t in self.targets]
            changed[:, k] = True
        return requested, changed


def plan_edits(
    data: FactorDataset, split: Split, per_factor: int, seed: int = 0, tries: int = 200
) -> dict[str, Edits]:
    """Choose ``per_factor`` edits of every factor whose target combination is seen, and as many
    whose target is held out (where the split allows any)."""
    rng = np.random.default_rng(seed)
    held = split.heldout(data.factors)
    plans = {"seen": Edits(), "heldout": Edits()}
    for kind, want_held in (("seen", False), ("heldout", True)):
        for k, f in enumerate(data.spec.factors):
            if f.size < 2:
                continue
            made = 0
            for _ in range(per_factor * tries):
                if made == per_factor:
                    break
                s = int(rng.integers(len(data)))
                if held[s] and not want_held:
                    continue  # seen edits start from seen images
                v = int(rng.integers(f.size - 1))
                v += v >= data.factors[s, k]
                target = data.factors[s].copy()
                target[k] = v
                if bool(split.heldout(target[None])[0]) == want_held:
                    plans[kind].add(s, k, v)
                    made += 1
    return plans


def _scores(spec: FactorSpec, requested: np.ndarray, changed: np.ndarray, pred: np.ndarray) -> dict:
    """Oracle readings ``pred`` (N, K) against the ``requested`` combinations (N, K), ``changed``
    marking the factors each edit changes: effectiveness and preservation per factor and their
    means over factors; ``changed_right``, the share of edits whose every changed factor is read as
    requested; ``all_right``, the share whose every factor is."""
    right = pred == requested
    eff, pres = {}, {}
    for k, f in enumerate(spec.factors):
        if changed[:, k].any():
            eff[f.name] = float(right[changed[:, k], k].mean())
        if (~changed[:, k]).any():
            pres[f.name] = float(right[~changed[:, k], k].mean())
    return {
        "effectiveness": float(np.mean(list(eff.values()))) if eff else None,
        "preservation": float(np.mean(list(pres.values()))) if pres else None,
        "changed_right": float((right | ~changed).all(1).mean()) if len(right) else None,
        "all_right": float(right.all(1).mean()) if len(right) else None,
        "effectiveness_by_factor": eff,
        "preservation_by_factor": pres,
        "edits": len(right),
    }


def score_edits(
    oracle: Oracle, spec: FactorSpec, edits: Edits | PairEdits, images: np.ndarray, src: np.ndarray
) -> dict:
    """``_scores`` of the edited ``images`` as the oracle reads them; ``src`` holds the sources'
    value indices (N, K)."""
    requested, changed = edits.requested(src)
    pred = oracle.predict(images) if len(edits) else src[:0]
    return _scores(spec, requested, changed, pred)


class TargetCodes:
    """The code block that stands for "factor k takes value v" in an evaluation.

    The value's prototype when some training image had it; otherwise the block of one real image of
    ``data`` with that value (drawn with ``seed``), as ``factordiff counterfactual --from REF.png``
    takes it. Such references may be held-out images: they are encoded, nothing is fitted on them.
    ``from_reference`` counts the blocks taken from references.
    """

    def __init__(self, model: FactorModel, data: FactorDataset, seed: int = 0):
        self.model, self.data = model, data
        self.rng = np.random.default_rng(seed + 13)
        self.from_reference = 0
        self.available = [
            np.array(
                [model.has_prototype(k, v) or bool((data.factors[:, k] == v).any()) for v in range(f.size)]
            )
            for k, f in enumerate(data.spec.factors)
        ]  # per factor, the values that have a block

    def possible(self, combos: np.ndarray) -> np.ndarray:
        """True for the combinations (N, K) whose every value has a block."""
        return np.all([self.available[k][combos[:, k]] for k in range(combos.shape[1])], axis=0)

    def block(self, k: int, v: int) -> torch.Tensor:
        if self.model.has_prototype(k, v):
            return self.model.prototype(k, v)
        rows = np.flatnonzero(self.data.factors[:, k] == v)
        if not len(rows):
            return self.model.prototype(k, v)  # raises, naming the value
        ref = int(self.rng.choice(rows))
        self.from_reference += 1
        return self.model.codes(self.data.images[ref : ref + 1])[0, self.model.factor_blocks[k]]


def run_edits(
    model: FactorModel,
    data: FactorDataset,
    edits: Edits,
    steps: int,
    guidance: float,
    bar=None,
    targets: TargetCodes | None = None,
    strength: float = 1.0,
) -> np.ndarray:
    """Generate every edit; returns uint8 images in the order of ``edits``.

    ``bar`` (a tqdm bar or None) advances by the number of images after the inversion and after
    each factor's edits. ``targets`` supplies the target blocks (default: prototypes, falling back
    to reference images of ``data``). ``strength``: how far up the noise schedule edits invert."""
    targets = targets or TargetCodes(model, data)
    src = data.images[np.asarray(edits.source)]
    codes = model.codes(src)
    x_T = model.invert(src, codes, steps, strength)
    if bar is not None:
        bar.update(len(src))
    out = np.empty_like(src)
    for k in sorted(set(edits.factor)):
        rows = np.flatnonzero(np.asarray(edits.factor) == k)
        blocks = torch.stack([targets.block(k, edits.target[i]) for i in rows])
        out[rows] = model.counterfactual(
            src[rows], k, blocks, steps, guidance, x_T=x_T[rows], codes=codes[rows], strength=strength
        )
        if bar is not None:
            bar.update(len(rows))
    return out


def plan_pair_edits(
    data: FactorDataset, split: Split, n: int, targets: TargetCodes, seed: int = 0, tries: int = 200
) -> tuple[PairEdits | None, str | None]:
    """``n`` edits that change both factors of a composition split's held-out block at once: the
    source a training combination, the target value pair in the block (both values different from
    the source's), so that the edited combination is held out. Returns (edits, None), or (None, the
    reason) when the split has no such block."""
    if split.config.kind != "composition" or len(split.held_values) != 2:
        return (
            None,
            f"the {split.config.kind} split holds out no block of two factors' values "
            "(only composition does)",
        )
    (a, va), (b, vb) = ((data.spec.position(name), vals) for name, vals in split.held_values.items())
    block = [(x, y) for x in va for y in vb if targets.available[a][x] and targets.available[b][y]]
    seen = np.flatnonzero(~split.heldout(data.factors))
    if not block or not len(seen):
        return (
            None,
            "no held-out value pair has code blocks" if not block else "no training image to start from",
        )
    rng = np.random.default_rng(seed + 17)
    edits = PairEdits((a, b))
    for _ in range(n * tries):
        if len(edits) == n:
            break
        s = int(rng.choice(seen))
        options = [(x, y) for x, y in block if x != data.factors[s, a] and y != data.factors[s, b]]
        if options:
            edits.source.append(s)
            edits.targets.append(options[int(rng.integers(len(options)))])
    return (
        (edits, None)
        if len(edits)
        else (None, "no training image differs from a held-out pair in both factors")
    )


@torch.no_grad()
def run_pair_edits(
    model: FactorModel,
    data: FactorDataset,
    edits: PairEdits,
    steps: int,
    guidance: float,
    targets: TargetCodes,
    bar=None,
    strength: float = 1.0,
) -> np.ndarray:
    """Generate two-factor edits: invert each source under its codes, swap both blocks, decode with
    guidance ``guidance`` on both changed blocks. Returns uint8 images in the order of ``edits``."""
    src = data.images[np.asarray(edits.source)]
    codes = model.codes(src)
    x_T = model.invert(src, codes, steps, strength)
    if bar is not None:
        bar.update(len(src))
    new = codes.clone()
    for col, k in enumerate(edits.factors):
        new[:, model.factor_blocks[k]] = torch.stack([targets.block(k, t[col]) for t in edits.targets])
    out = model.regenerate(
        src,
        codes,
        new,
        steps,
        Guidance(factors={model.factor_blocks[k]: guidance for k in edits.factors}),
        strength,
        x_T,
    )
    if bar is not None:
        bar.update(len(src))
    return out


def evaluate_counterfactuals(
    model: FactorModel,
    oracle: Oracle,
    data: FactorDataset,
    split: Split,
    per_factor: int = 100,
    steps: int = 50,
    guidance: float = 1.0,
    seed: int = 0,
    progress: bool = False,
    pairs: int | None = None,
    strength: float = 1.0,
) -> tuple[dict, dict]:
    """Effectiveness, preservation and all_right on seen and held-out targets, the same for
    ``pairs`` (default ``per_factor``) two-factor edits into held-out combinations
    (``heldout_pairs``: effectiveness is the share with both changed factors right; without a
    two-factor held-out block it holds ``absent``, the reason), and the DDIM reconstruction error;
    every edit and reconstruction inverts to t = ``strength`` T in ``steps`` steps.

    Returns (metrics, examples) where examples holds a few sources with their edits for figures.
    The progress bar counts DDIM passes over one image (an inversion or an edit).
    """
    from tqdm.auto import tqdm

    metrics: dict = {}
    examples: dict = {}
    targets = TargetCodes(model, data, seed)
    plans, skipped = {}, {}
    for kind, edits in plan_edits(data, split, per_factor, seed).items():
        plans[kind] = edits.keep(lambda k, v: bool(targets.available[k][v]))
        skipped[kind] = len(edits) - len(plans[kind])
    pair_plan, reason = plan_pair_edits(data, split, per_factor if pairs is None else pairs, targets, seed)
    total = sum(len(e) for e in plans.values()) + (len(pair_plan) if pair_plan is not None else 0)
    bar = tqdm(total=2 * total, desc="counterfactuals", unit="img", disable=not progress)
    for kind, edits in plans.items():
        if not len(edits) and not skipped[kind]:
            metrics[kind] = None
            continue
        before = targets.from_reference
        images = (
            run_edits(model, data, edits, steps, guidance, bar, targets, strength)
            if len(edits)
            else data.images[:0]
        )
        scores = score_edits(oracle, data.spec, edits, images, data.factors[np.asarray(edits.source, int)])
        metrics[kind] = {
            **scores,
            "targets_from_reference": targets.from_reference - before,
            "skipped": skipped[kind],
        }
        examples[kind] = (edits, images)
    if pair_plan is not None:
        before = targets.from_reference
        images = run_pair_edits(model, data, pair_plan, steps, guidance, targets, bar, strength)
        scores = score_edits(
            oracle, data.spec, pair_plan, images, data.factors[np.asarray(pair_plan.source, int)]
        )
        names = [data.spec.factors[k].name for k in pair_plan.factors]
        metrics["heldout_pairs"] = {
            **scores,
            "effectiveness": scores["changed_right"],
            "factors": names,
            "targets_from_reference": targets.from_reference - before,
        }
        examples["heldout_pairs"] = (pair_plan, images)
    else:
        metrics["heldout_pairs"] = {
            "effectiveness": None,
            "preservation": None,
            "all_right": None,
            "edits": 0,
            "absent": reason,
        }
    bar.close()
    metrics["reconstruction"] = reconstruction(
        model, oracle, data, split, min(len(data), 4 * per_factor), steps, seed, strength
    )
    return metrics, examples


@torch.no_grad()
def reconstruction(
    model: FactorModel,
    oracle: Oracle,
    data: FactorDataset,
    split: Split,
    n: int,
    steps: int,
    seed: int,
    strength: float = 1.0,
) -> dict:
    """Invert and regenerate with nothing changed: pixel MSE (images in [0, 1]) against the source
    and against the autoencoder's own reconstruction, and how often the oracle reads all factors."""
    rng = np.random.default_rng(seed + 1)
    seen = np.flatnonzero(~split.heldout(data.factors))
    rows = np.sort(rng.choice(seen, min(n, len(seen)), replace=False))
    src = data.images[rows]
    codes = model.codes(src)
    out = model.regenerate(src, codes, codes, steps, strength=strength)
    unit = lambda a: a.astype(np.float64) / 255.0  # noqa: E731
    res = {"mse": float(((unit(out) - unit(src)) ** 2).mean()), "images": len(rows)}
    if model.autoencoder is not None:
        ae = (
            (model.from_latent(model.to_latent(to_unit(src))).clamp(-1, 1).add(1).div(2))
            .permute(0, 2, 3, 1)
            .numpy()
        )
        res["autoencoder_mse"] = float(((ae - unit(src)) ** 2).mean())
        res["mse_vs_autoencoder"] = float(((unit(out) - ae) ** 2).mean())
    pred = oracle.predict(out)
    res["oracle_all_factors"] = float((pred == data.factors[rows]).all(1).mean())
    return res


@torch.no_grad()
def soundness(
    model: FactorModel,
    oracle: Oracle,
    data: FactorDataset,
    split: Split,
    n: int,
    steps: int,
    guidance: float,
    seed: int = 0,
    repeats: tuple[int, ...] = (1, 10),
    strength: float = 1.0,
) -> dict:
    """Counterfactual soundness after Monteiro et al. (ICLR 2023), on ``n`` training-combination
    sources; each measured as the mean pixel L1 to the source (pixels in [0, 1]) and the oracle's
    agreement (the share of images on which it reads every factor as the source's); every
    inversion goes to t = ``strength`` T:

    - ``composition``: the null edit (invert under the source's own codes, regenerate under the same
      codes) applied ``repeats`` times in a row (each time to the previous result); keyed by count.
    - ``reversibility``: A -> B -> A. One random factor per source goes to another value (a seen
      target combination, its prototype block, guidance ``guidance`` on it), then the edited image is
      inverted under the edited codes and the factor goes back to the source's own code block.
    """
    rng = np.random.default_rng(seed + 19)
    seen = np.flatnonzero(~split.heldout(data.factors))
    rows = np.sort(rng.choice(seen, min(n, len(seen)), replace=False))
    src, truth = data.images[rows], data.factors[rows]
    codes = model.codes(src)

    def judge(images: np.ndarray, keep: np.ndarray | None = None) -> dict:
        s, t = (src, truth) if keep is None else (src[keep], truth[keep])
        l1 = np.abs(images.astype(np.float64) - s.astype(np.float64)).mean() / 255.0
        return {"l1": float(l1), "oracle_agreement": float((oracle.predict(images) == t).all(1).mean())}

    composition, x = {}, src
    for i in range(1, max(repeats) + 1):
        x = model.regenerate(x, codes, codes, steps, strength=strength)
        if i in repeats:
            composition[str(i)] = judge(x)
    factor, target = _reversible_targets(model, data, split, truth, rng)
    keep = np.flatnonzero(factor >= 0)
    back = np.empty_like(src[keep])
    for k in sorted(set(factor[keep].tolist())):
        mine = np.flatnonzero(factor[keep] == k)
        r = keep[mine]
        block, mine_codes = model.factor_blocks[k], codes[torch.from_numpy(r)]
        to_b = torch.stack([model.prototype(k, int(v)) for v in target[r]])
        x_b = model.counterfactual(src[r], k, to_b, steps, guidance, codes=mine_codes, strength=strength)
        codes_b = mine_codes.clone()
        codes_b[:, block] = to_b
        back[mine] = model.counterfactual(
            x_b, k, mine_codes[:, block], steps, guidance, codes=codes_b, strength=strength
        )
    reversibility = (
        {**judge(back, keep), "edits": len(keep)}
        if len(keep)
        else {"l1": None, "oracle_agreement": None, "edits": 0}
    )
    return {
        "sources": len(rows),
        "steps": steps,
        "strength": strength,
        "guidance": guidance,
        "composition": composition,
        "reversibility": reversibility,
    }


def _reversible_targets(
    model: FactorModel, data: FactorDataset, split: Split, truth: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Per source (value indices ``truth``), a random factor (uniform over factors) and another value
    of it (uniform) that has a prototype and makes a seen combination; factor -1 where none does."""
    factor, target = np.full(len(truth), -1), np.zeros(len(truth), int)
    for i, combo in enumerate(truth):
        options = {}
        for k, f in enumerate(data.spec.factors):
            others = np.array([v for v in range(f.size) if v != combo[k] and model.has_prototype(k, v)], int)
            if len(others):
                combos = np.repeat(combo[None], len(others), 0)
                combos[:, k] = others
                others = others[~split.heldout(combos)]
            if len(others):
                options[k] = others
        if options:
            k = list(options)[int(rng.integers(len(options)))]
            factor[i], target[i] = k, int(options[k][rng.integers(len(options[k]))])
    return factor, target


def oracle_data(cfg: RunConfig, data: FactorDataset, n: int, seed: int) -> FactorDataset:
    """Real images of every combination for the oracle: fresh renders where the source can render
    them (``Traits.render``: the built-in replica and cellsim), otherwise the whole dataset
    (held-out rows included: the oracle is the one learner that may see them)."""
    render = traits(cfg).render
    return render(data.size, n, seed) if render is not None else data


def get_oracle(
    run: Path, cfg: RunConfig, data: FactorDataset, progress: bool = True, seed: int | None = None
) -> tuple[Oracle, dict]:
    """Load ``RUN/oracle`` or train it; returns the oracle and its accuracy on held-aside real images.
    ``seed`` (None: ``train.seed``): another seed gives another oracle (its own images and
    initialisation), kept in ``RUN/oracle-seedS``, to tell a judge's noise from a model's."""
    folder = Path(run) / ("oracle" if seed is None or seed == cfg.train.seed else f"oracle-seed{seed}")
    cfg = cfg if seed is None else replace(cfg, train=replace(cfg.train, seed=seed))
    oracle = Oracle(data.spec.sizes, data.channels, data.size)
    if (folder / "oracle.safetensors").is_file():
        oracle.load_state_dict(load_tensors(folder / "oracle.safetensors"))
        return oracle.eval().requires_grad_(False), read_json(folder / "accuracy.json")
    e = cfg.evaluate
    train = oracle_data(cfg, data, e.oracle_images, seed=cfg.train.seed + 1000)
    test = oracle_data(cfg, data, 5000, seed=cfg.train.seed + 2000)
    if test is train:  # a dataset from files: hold aside a tenth for the accuracy
        rows = np.random.default_rng(cfg.train.seed).permutation(len(train))
        cut = max(1, len(rows) // 10)
        test, train = train.subset(np.sort(rows[:cut])), train.subset(np.sort(rows[cut:]))
    oracle = train_oracle(train, steps=e.oracle_steps, seed=cfg.train.seed, progress=progress)
    acc = accuracy(oracle, test)
    atomic_save_tensors(oracle.state_dict(), folder / "oracle.safetensors")
    atomic_write_json(folder / "accuracy.json", acc)
    return oracle, acc
