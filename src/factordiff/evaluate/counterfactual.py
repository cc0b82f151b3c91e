"""Oracle-judged counterfactuals.

The oracle is a classifier per factor trained on real images of *all* combinations (the one
learner allowed to see the held-out ones). A counterfactual changes factor k of a source image to
value v: DDIM-invert the source under its own codes, swap in the prototype code block of v, decode.
Then

- *effectiveness* of factor k: the share of edits of k that the oracle reads as v;
- *preservation* of factor k: the share of edits of *other* factors after which the oracle still
  reads k as the source's value;

each reported for edits whose target combination was seen in training and for edits whose target
combination was held out, with the mean over factors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from factordiff.data.base import FactorDataset
from factordiff.data.splits import Split
from factordiff.encoders.backbone import ConvEncoder
from factordiff.factors import FactorSpec
from factordiff.model import FactorModel, to_unit
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
        out = map_batches(lambda b: torch.stack([lg.argmax(1) for lg in self(to_unit(b))], 1), torch.from_numpy(images), 512)
        return out.numpy()


class OracleStep(nn.Module):
    def __init__(self, oracle: Oracle):
        super().__init__()
        self.oracle = oracle

    def forward(self, batch, gen):
        logits = self.oracle(to_unit(batch["images"]))
        return sum(F.cross_entropy(lg, batch["factors"][:, k]) for k, lg in enumerate(logits)), {}


def train_oracle(data: FactorDataset, steps: int = 2000, seconds: float | None = None, seed: int = 0, batch_size: int = 128, lr: float = 2e-3, progress: bool = True) -> Oracle:
    """Train the oracle on ``data`` (which should cover every combination, held-out ones included)."""
    torch.manual_seed(seed + 7)
    oracle = Oracle(data.spec.sizes, data.channels, data.size)
    batches = ArrayBatches({"images": torch.from_numpy(data.images), "factors": torch.from_numpy(data.factors)}, batch_size, seed + 7)
    stage = Stage("oracle", OracleStep(oracle), list(oracle.parameters()), batches, steps, lr, seconds, ema_decay=0.999, images_per_step=batch_size)
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


def plan_edits(data: FactorDataset, split: Split, per_factor: int, seed: int = 0, tries: int = 200) -> dict[str, Edits]:
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


def _scores(spec: FactorSpec, edits: Edits, src: np.ndarray, pred: np.ndarray) -> dict:
    k_arr, v_arr = np.asarray(edits.factor), np.asarray(edits.target)
    eff, pres = {}, {}
    for k, f in enumerate(spec.factors):
        mine, others = k_arr == k, k_arr != k
        if mine.any():
            eff[f.name] = float((pred[mine, k] == v_arr[mine]).mean())
        if others.any():
            pres[f.name] = float((pred[others, k] == src[others, k]).mean())
    return {
        "effectiveness": float(np.mean(list(eff.values()))) if eff else None,
        "preservation": float(np.mean(list(pres.values()))) if pres else None,
        "effectiveness_by_factor": eff,
        "preservation_by_factor": pres,
        "edits": len(edits),
    }


def run_edits(model: FactorModel, data: FactorDataset, edits: Edits, steps: int, guidance: float, bar=None) -> np.ndarray:
    """Generate every edit; returns uint8 images in the order of ``edits``.

    ``bar`` (a tqdm bar or None) advances by the number of images after the inversion and after
    each factor's edits."""
    src = data.images[np.asarray(edits.source)]
    codes = model.codes(src)
    x_T = model.invert(src, codes, steps)
    if bar is not None:
        bar.update(len(src))
    out = np.empty_like(src)
    for k in sorted(set(edits.factor)):
        rows = np.flatnonzero(np.asarray(edits.factor) == k)
        blocks = torch.stack([model.prototype(k, edits.target[i]) for i in rows])
        out[rows] = model.counterfactual(src[rows], k, blocks, steps, guidance, x_T=x_T[rows], codes=codes[rows])
        if bar is not None:
            bar.update(len(rows))
    return out


def evaluate_counterfactuals(model: FactorModel, oracle: Oracle, data: FactorDataset, split: Split, per_factor: int = 100, steps: int = 50, guidance: float = 1.0, seed: int = 0, progress: bool = False) -> tuple[dict, dict]:
    """Effectiveness and preservation on seen and held-out targets, and the DDIM reconstruction error.

    Returns (metrics, examples) where examples holds a few sources with their edits for figures.
    The progress bar counts DDIM passes over one image (an inversion or an edit).
    """
    from tqdm.auto import tqdm

    metrics: dict = {}
    examples: dict = {}
    plans = plan_edits(data, split, per_factor, seed)
    bar = tqdm(total=2 * sum(len(e) for e in plans.values()), desc="counterfactuals", unit="img", disable=not progress)
    for kind, edits in plans.items():
        if not len(edits):
            metrics[kind] = None
            continue
        images = run_edits(model, data, edits, steps, guidance, bar)
        src = data.factors[np.asarray(edits.source)]
        metrics[kind] = _scores(data.spec, edits, src, oracle.predict(images))
        examples[kind] = (edits, images)
    bar.close()
    metrics["reconstruction"] = reconstruction(model, oracle, data, split, min(len(data), 4 * per_factor), steps, seed)
    return metrics, examples


@torch.no_grad()
def reconstruction(model: FactorModel, oracle: Oracle, data: FactorDataset, split: Split, n: int, steps: int, seed: int) -> dict:
    """Invert and regenerate with nothing changed: pixel MSE (images in [0, 1]) against the source
    and against the autoencoder's own reconstruction, and how often the oracle reads all factors."""
    rng = np.random.default_rng(seed + 1)
    seen = np.flatnonzero(~split.heldout(data.factors))
    rows = np.sort(rng.choice(seen, min(n, len(seen)), replace=False))
    src = data.images[rows]
    codes = model.codes(src)
    out = model.generate(model.invert(src, codes, steps), codes, steps)
    unit = lambda a: a.astype(np.float64) / 255.0  # noqa: E731
    res = {"mse": float(((unit(out) - unit(src)) ** 2).mean()), "images": len(rows)}
    if model.autoencoder is not None:
        ae = (model.from_latent(model.to_latent(to_unit(src))).clamp(-1, 1).add(1).div(2)).permute(0, 2, 3, 1).numpy()
        res["autoencoder_mse"] = float(((ae - unit(src)) ** 2).mean())
        res["mse_vs_autoencoder"] = float(((unit(out) - ae) ** 2).mean())
    pred = oracle.predict(out)
    res["oracle_all_factors"] = float((pred == data.factors[rows]).all(1).mean())
    return res
