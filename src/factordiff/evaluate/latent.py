"""The latent space that conditions the generator: traversals, interpolations and their smoothness,
probes from codes to factors, and 2-D projections of each block.

- *traversal*: one source image, one block moved along its principal axis (from the lowest to the
  highest value's prototype for a supervised block), every frame decoded from the source's x_T;
- *interpolation* between two images: codes interpolated linearly and x_T spherically (DiffSiam,
  Algorithm 2), decoded frame by frame;
- *smoothness* of a path of frames: the distances between consecutive frames in the feature space of
  a network trained in factordiff (the oracle's backbone); ``spread`` is their coefficient of
  variation (0 for a path that moves at constant speed) and ``ppl`` a perceptual-path-length style
  estimate, E[d(f(x(u)), f(x(u + eps))) / eps^2] over random u (Karras et al. 2019);
- *probes*: logistic-regression accuracy from codes to each factor, and 5-way 1/5/10-shot
  nearest-centroid accuracy (as the DiffSiam thesis's few-shot tables);
- *projections*: each block's first two principal components, coloured by each factor.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from factordiff.data.shapes import hue_to_rgb
from factordiff.models.images import FactorModel, to_unit


def slerp(a: torch.Tensor, b: torch.Tensor, u: float) -> torch.Tensor:
    """Spherical interpolation between two noise tensors (per batch row)."""
    fa, fb = a.flatten(1), b.flatten(1)
    cos = (fa * fb).sum(1) / (fa.norm(dim=1) * fb.norm(dim=1))
    theta = torch.arccos(cos.clamp(-1 + 1e-7, 1 - 1e-7)).view(-1, *[1] * (a.ndim - 1))
    return (torch.sin((1 - u) * theta) * a + torch.sin(u * theta) * b) / torch.sin(theta)


@torch.no_grad()
def interpolation(
    model: FactorModel, image_a: np.ndarray, image_b: np.ndarray, frames: int = 8, steps: int = 50
) -> np.ndarray:
    """Frames (frames, H, W, C) from image_a to image_b: lerp of codes, slerp of x_T."""
    pair = np.stack([image_a, image_b])
    codes = model.codes(pair)
    x_T = model.invert(pair, codes, steps, method="ode")
    us = np.linspace(0.0, 1.0, frames)
    path_codes = torch.stack([(1 - u) * codes[0] + u * codes[1] for u in us])
    path_noise = torch.cat([slerp(x_T[:1], x_T[1:], float(u)) for u in us])
    return model.generate(path_noise, path_codes, steps)


def block_axis(model: FactorModel, codes: torch.Tensor, k: int, frames: int) -> torch.Tensor:
    """Points along block k: between the prototypes of the first and last value of the factor that
    block k carries (supervised blocks), else along the block's first principal axis (mean +- 2 std)."""
    if (
        model.prototypes
        and model.factor_blocks[k : k + 1] == [k]
        and not torch.isnan(model.prototypes[k][[0, -1]]).any()
    ):
        lo, hi = model.prototypes[k][0], model.prototypes[k][-1]
        return torch.stack([lo + (hi - lo) * u for u in np.linspace(0, 1, frames)])
    block = codes[:, k].numpy()
    pca = PCA(1).fit(block)
    s = np.sqrt(pca.explained_variance_[0])
    pts = pca.mean_ + np.outer(np.linspace(-2 * s, 2 * s, frames), pca.components_[0])
    return torch.from_numpy(pts).float()


@torch.no_grad()
def traversal(
    model: FactorModel, image: np.ndarray, k: int, axis: torch.Tensor, steps: int = 50
) -> np.ndarray:
    """Frames of ``image`` with block k set to each row of ``axis``, decoded from the image's x_T."""
    codes = model.codes(image[None])
    x_T = model.invert(image[None], codes, steps, method="ode")
    path = codes.repeat(len(axis), 1, 1)
    path[:, k] = axis
    return model.generate(x_T.repeat(len(axis), 1, 1, 1), path, steps)


@torch.no_grad()
def features(extractor: torch.nn.Module, images: np.ndarray) -> torch.Tensor:
    """Feature vectors of uint8 images under ``extractor`` (image in [-1, 1] -> vector)."""
    return torch.cat([extractor(to_unit(images[i : i + 256])) for i in range(0, len(images), 256)])


def path_smoothness(extractor: torch.nn.Module, frames: np.ndarray) -> dict[str, float]:
    """Distances between consecutive frames in feature space: mean, and spread (std / mean)."""
    f = features(extractor, frames)
    d = (f[1:] - f[:-1]).norm(dim=1).numpy()
    return {"mean_step": float(d.mean()), "spread": float(d.std() / max(d.mean(), 1e-12))}


@torch.no_grad()
def perceptual_path_length(
    model: FactorModel,
    extractor: torch.nn.Module,
    images: np.ndarray,
    pairs: int = 16,
    eps: float = 1e-2,
    steps: int = 20,
    seed: int = 0,
) -> float:
    """E[ |f(x(u)) - f(x(u + eps))|^2 / eps^2 ] over random image pairs and u, x(u) the interpolation path."""
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(images), (pairs, 2))
    a, b = images[idx[:, 0]], images[idx[:, 1]]
    ca, cb = model.codes(a), model.codes(b)
    na, nb = model.invert(a, ca, steps, method="ode"), model.invert(b, cb, steps, method="ode")
    u = torch.from_numpy(rng.uniform(0, 1 - eps, pairs)).float()

    def at(v):
        codes = ca + (cb - ca) * v.view(-1, 1, 1)
        noise = torch.cat([slerp(na[i : i + 1], nb[i : i + 1], float(v[i])) for i in range(pairs)])
        return model.generate(noise, codes, steps)

    d = (features(extractor, at(u)) - features(extractor, at(u + eps))).pow(2).sum(1) / eps**2
    return float(d.mean())


def linear_probe(
    codes: np.ndarray, factors: np.ndarray, seed: int = 0, test_fraction: float = 0.3
) -> list[float]:
    """Held-out accuracy of a logistic-regression probe from all codes to each factor."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(codes))
    cut = int(len(codes) * (1 - test_fraction))
    tr, te = perm[:cut], perm[cut:]
    scaler = StandardScaler().fit(codes[tr])
    xtr, xte = scaler.transform(codes[tr]), scaler.transform(codes[te])
    out = []
    for k in range(factors.shape[1]):
        if len(np.unique(factors[tr, k])) < 2:
            out.append(float("nan"))
            continue
        clf = LogisticRegression(max_iter=1000).fit(xtr, factors[tr, k])
        out.append(float(clf.score(xte, factors[te, k])))
    return out


def few_shot(
    codes: np.ndarray,
    labels: np.ndarray,
    shots: int,
    ways: int = 5,
    episodes: int = 200,
    queries: int = 10,
    seed: int = 0,
) -> float:
    """Mean accuracy of N-way K-shot nearest-centroid classification over random episodes."""
    rng = np.random.default_rng(seed)
    classes = [c for c in np.unique(labels) if (labels == c).sum() >= shots + queries]
    if len(classes) < 2:
        return float("nan")
    ways = min(ways, len(classes))
    accs = []
    for _ in range(episodes):
        chosen = rng.choice(classes, ways, replace=False)
        support, query = [], []
        for c in chosen:
            rows = rng.choice(np.flatnonzero(labels == c), shots + queries, replace=False)
            support.append(codes[rows[:shots]].mean(0))
            query.append(codes[rows[shots:]])
        centroids = np.stack(support)
        q = np.concatenate(query)
        truth = np.repeat(np.arange(ways), queries)
        pred = ((q[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
        accs.append((pred == truth).mean())
    return float(np.mean(accs))


def projection_plot(points: np.ndarray, labels: np.ndarray, size: int = 160) -> np.ndarray:
    """A scatter plot (size x size RGB) of 2-D points coloured by label (hue around the circle)."""
    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    lo, hi = points.min(0), points.max(0)
    span = np.where(hi - lo > 1e-12, hi - lo, 1.0)
    xy = 6 + (points - lo) / span * (size - 12)
    n = max(int(labels.max()) + 1, 1)
    colours = (hue_to_rgb(np.arange(n) / n * 0.85, 0.9) * 220).astype(int)
    for (x, y), c in zip(xy, labels):
        draw.point((float(x), float(size - y)), fill=tuple(int(v) for v in colours[int(c)]))
    return np.asarray(img)


def block_projections(codes: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Grid of scatter plots: row = code block (first two PCs), column = the factor colouring it."""
    k_blocks, k_factors = codes.shape[1], factors.shape[1]
    cells = []
    for b in range(k_blocks):
        block = codes[:, b]
        pts = (
            PCA(2).fit_transform(block)
            if block.shape[1] >= 2
            else np.concatenate([block, np.zeros_like(block)], 1)
        )
        cells += [projection_plot(pts, factors[:, f]) for f in range(k_factors)]
    h, w = cells[0].shape[:2]
    grid = np.full((k_blocks * (h + 2), k_factors * (w + 2), 3), 200, np.uint8)
    for i, c in enumerate(cells):
        r, col = divmod(i, k_factors)
        grid[r * (h + 2) : r * (h + 2) + h, col * (w + 2) : col * (w + 2) + w] = c
    return grid


def heldout_readout(model: FactorModel, data, split, n: int = 2000, seed: int = 0) -> dict:
    """How the codes read out factors on seen versus held-out images (Schott et al. 2022).

    Per factor: the encoder's own accuracy (the distiller's class head; absent for the
    unsupervised encoder) and the R^2 of a linear read-out of the factor's value index scaled to
    [0, 1] from the whole code, the read-out fitted on training images only and scored on other
    training-split images (``seen``) and on held-out images (``heldout``).
    """
    from sklearn.linear_model import Ridge
    from sklearn.metrics import r2_score

    rng = np.random.default_rng(seed)
    held = split.heldout(data.factors)
    seen_rows, held_rows = np.flatnonzero(~held), np.flatnonzero(held)
    if not len(held_rows):
        return {}
    fit_rows = rng.choice(seen_rows, min(n, len(seen_rows) // 2), replace=False)
    test_seen = rng.choice(
        np.setdiff1d(seen_rows, fit_rows), min(n, len(seen_rows) - len(fit_rows)), replace=False
    )
    test_held = rng.choice(held_rows, min(n, len(held_rows)), replace=False)
    codes = {
        name: model.codes(data.images[rows])
        for name, rows in (("fit", fit_rows), ("seen", test_seen), ("heldout", test_held))
    }
    flat = {k: v.reshape(len(v), -1).numpy() for k, v in codes.items()}
    heads = model.encoder.logits if hasattr(model.encoder, "logits") else None
    out = {}
    for k, f in enumerate(data.spec.factors):
        target = {
            name: data.factors[rows, k] / max(1, f.size - 1)
            for name, rows in (("fit", fit_rows), ("seen", test_seen), ("heldout", test_held))
        }
        probe = Ridge(alpha=1e-3).fit(flat["fit"], target["fit"])
        row = {}
        for name in ("seen", "heldout"):
            pred = probe.predict(flat[name])
            row[f"r2_{name}"] = (
                float(r2_score(target[name], pred)) if len(np.unique(target[name])) > 1 else None
            )
            row[f"mae_{name}"] = float(np.abs(pred - target[name]).mean())
        if heads is not None:
            for name, rows in (("seen", test_seen), ("heldout", test_held)):
                row[f"accuracy_{name}"] = float(
                    (heads(codes[name])[k].argmax(1).numpy() == data.factors[rows, k]).mean()
                )
        out[f.name] = row
    return out
