"""The built-in data: a procedural replica of DeepMind's 3D Shapes, and a reader for ``3dshapes.h5``.

The replica has the same six factors, value grids and row-major order as ``3dshapes.h5``
(Burgess & Kim, 2018): floor_hue, wall_hue, object_hue (10 values in [0, 0.9], hue 0 = red),
scale (8 values in [0.75, 1.25]), shape (cube, cylinder, sphere, capsule) and orientation
(15 values in [-30, 30] degrees), 480,000 combinations with orientation fastest.

Each image is ray-cast analytically in numpy: a floor, a back wall and one object resting on the
floor, Lambert-shaded by one directional light with the object's cast shadow, seen by a perspective
camera that orbits the scene by ``orientation`` degrees. Rendering is a pure function of the factor
indices, so any subset can be drawn again exactly.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from factordiff.data.base import FactorDataset
from factordiff.errors import FactordiffError
from factordiff.factors import Factor, FactorSpec

SHAPE_NAMES = ("cube", "cylinder", "sphere", "capsule")

# Scene constants (world units; y is up, the object stands at the origin).
CAMERA_DISTANCE = 4.0
CAMERA_HEIGHT = 1.9
LOOK_AT = np.array([0.0, 0.45, 0.0])
FIELD_OF_VIEW_DEG = 42.0
WALL_Z = -2.2
LIGHT = np.array([-0.45, 1.0, 0.75]) / np.linalg.norm([-0.45, 1.0, 0.75])
AMBIENT, DIFFUSE = 0.35, 0.65
SATURATION = 0.8


def shapes_spec() -> FactorSpec:
    """The six factors of 3D Shapes with the dataset's exact value grids."""
    hues = tuple(round(0.1 * i, 1) for i in range(10))
    return FactorSpec(
        (
            Factor("floor_hue", hues, "ordinal"),
            Factor("wall_hue", hues, "ordinal"),
            Factor("object_hue", hues, "ordinal"),
            Factor("scale", tuple(float(v) for v in np.linspace(0.75, 1.25, 8)), "ordinal"),
            Factor("shape", SHAPE_NAMES, "categorical"),
            Factor("orientation", tuple(float(v) for v in np.linspace(-30.0, 30.0, 15)), "ordinal"),
        )
    )


def hue_to_rgb(hue: np.ndarray, saturation: float = SATURATION) -> np.ndarray:
    """HSV (hue in [0, 1), value 1) to RGB in [0, 1]; returns (..., 3)."""
    k = (np.asarray(hue)[..., None] * 6.0 + np.array([5.0, 3.0, 1.0])) % 6.0
    return 1.0 - saturation * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("...i,...i->...", a, b)


def _normalize(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _hit_sphere(o, d, r):
    """Ray/sphere of radius r resting on the floor. Returns distance (inf on miss) and normal."""
    c = np.stack([np.zeros_like(r), r, np.zeros_like(r)], -1)
    oc = o - c
    b = _dot(oc, d)
    h = b * b - (_dot(oc, oc) - r * r)
    t = -b - np.sqrt(np.maximum(h, 0.0))
    t = np.where((h > 0) & (t > 1e-4), t, np.inf)
    p = o + np.where(np.isfinite(t), t, 0.0)[:, None] * d
    return t, (p - c) / r[:, None]


def _hit_box(o, d, s):
    """Ray/axis-aligned cube of half-size s resting on the floor (slab method)."""
    lo = np.stack([-s, np.zeros_like(s), -s], -1)
    hi = np.stack([s, 2 * s, s], -1)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / d
        t1, t2 = (lo - o) * inv, (hi - o) * inv
    tn, tf = np.nan_to_num(np.minimum(t1, t2), nan=-np.inf), np.nan_to_num(np.maximum(t1, t2), nan=np.inf)
    t_near, t_far = tn.max(-1), tf.min(-1)
    t = np.where((t_far >= t_near) & (t_near > 1e-4), t_near, np.inf)
    axis = tn.argmax(-1)
    n = np.zeros_like(o)
    n[np.arange(len(o)), axis] = -np.sign(d[np.arange(len(o)), axis])
    return t, n


def _hit_cylinder(o, d, r):
    """Ray/vertical cylinder of radius r and height 2r standing on the floor (side and top cap)."""
    a = d[:, 0] ** 2 + d[:, 2] ** 2
    b = o[:, 0] * d[:, 0] + o[:, 2] * d[:, 2]
    c = o[:, 0] ** 2 + o[:, 2] ** 2 - r * r
    h = b * b - a * c
    with np.errstate(divide="ignore", invalid="ignore"):
        ts = (-b - np.sqrt(np.maximum(h, 0.0))) / a
        ys = o[:, 1] + ts * d[:, 1]
        ts = np.where((h > 0) & (a > 1e-12) & (ts > 1e-4) & (ys >= 0) & (ys <= 2 * r), ts, np.inf)
        tc = (2 * r - o[:, 1]) / d[:, 1]
    pc = o + np.nan_to_num(tc, posinf=0.0, neginf=0.0)[:, None] * d
    tc = np.where((tc > 1e-4) & (pc[:, 0] ** 2 + pc[:, 2] ** 2 <= r * r), tc, np.inf)
    t = np.minimum(ts, tc)
    p = o + np.where(np.isfinite(t), t, 0.0)[:, None] * d
    side = np.stack([p[:, 0], np.zeros_like(r), p[:, 2]], -1) / r[:, None]
    n = np.where((ts <= tc)[:, None], side, np.array([0.0, 1.0, 0.0]))
    return t, n


def _hit_capsule(o, d, r):
    """Ray/capsule lying along x: radius 0.7r, segment half-length 0.9r (after I. Quilez's formula)."""
    rad, half = 0.7 * r, 0.9 * r
    pa = np.stack([-half, rad, np.zeros_like(r)], -1)
    ba = np.stack([2 * half, np.zeros_like(r), np.zeros_like(r)], -1)
    oa = o - pa
    baba, bard, baoa = _dot(ba, ba), _dot(ba, d), _dot(ba, oa)
    rdoa, oaoa = _dot(d, oa), _dot(oa, oa)
    a = baba - bard * bard
    b = baba * rdoa - baoa * bard
    c = baba * oaoa - baoa * baoa - rad * rad * baba
    h = b * b - a * c
    with np.errstate(divide="ignore", invalid="ignore"):
        t_body = (-b - np.sqrt(np.maximum(h, 0.0))) / a
    y = baoa + t_body * bard
    body = (h >= 0) & (a > 1e-12) & (y > 0) & (y < baba) & (t_body > 1e-4)
    oc = np.where((y <= 0)[:, None], oa, o - (pa + ba))
    bc = _dot(d, oc)
    hc = bc * bc - (_dot(oc, oc) - rad * rad)
    t_cap = -bc - np.sqrt(np.maximum(hc, 0.0))
    cap = (h >= 0) & (hc > 0) & (t_cap > 1e-4)
    t = np.where(body, t_body, np.where(cap, t_cap, np.inf))
    p = o + np.where(np.isfinite(t), t, 0.0)[:, None] * d
    u = np.clip(_dot(p - pa, ba) / baba, 0.0, 1.0)
    n = (p - (pa + u[:, None] * ba)) / rad[:, None]
    return t, n


_HITS = (lambda o, d, r: _hit_box(o, d, 0.8 * r), _hit_cylinder, _hit_sphere, _hit_capsule)
OBJECT_RADIUS = 0.62  # world size of the object at scale 1


def _camera_rays(yaw_deg: float, res: int) -> tuple[np.ndarray, np.ndarray]:
    """Ray origin (3,) and unit directions (res*res, 3) of the camera orbiting by ``yaw_deg``."""
    yaw = np.deg2rad(yaw_deg)
    eye = np.array([CAMERA_DISTANCE * np.sin(yaw), CAMERA_HEIGHT, CAMERA_DISTANCE * np.cos(yaw)])
    fwd = _normalize(LOOK_AT - eye)
    right = _normalize(np.cross(fwd, np.array([0.0, 1.0, 0.0])))
    up = np.cross(right, fwd)
    s = np.tan(np.deg2rad(FIELD_OF_VIEW_DEG) / 2)
    px = ((np.arange(res) + 0.5) / res * 2 - 1) * s
    xs, ys = np.meshgrid(px, -px)  # row 0 is the top of the image
    d = fwd + xs.reshape(-1, 1) * right + ys.reshape(-1, 1) * up
    return eye, _normalize(d)


def _shading_maps(yaw_deg: float, shape: int, radii: np.ndarray, res: int) -> np.ndarray:
    """Per-ray light reaching the eye from floor, wall and object, (len(radii), 3, res*res).

    An image is linear in its three colours: pixel = sum over regions of colour * map. So the
    geometry (shape, scale, orientation: 480 cases) is ray-cast once and every hue combination is
    a weighted sum of these maps.
    """
    eye, d1 = _camera_rays(yaw_deg, res)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_floor = np.where(d1[:, 1] < 0, -eye[1] / d1[:, 1], np.inf)
        t_wall = np.where(d1[:, 2] < 0, (WALL_Z - eye[2]) / d1[:, 2], np.inf)
    on_floor = t_floor <= t_wall
    t_bg = np.minimum(t_floor, t_wall)
    bg_n = np.where(on_floor[:, None], np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, 1.0]))
    bg_p = eye + t_bg[:, None] * d1 + 1e-3 * bg_n
    k, p = len(radii), len(d1)
    r = np.repeat(radii, p)
    d = np.tile(d1, (k, 1))
    t_obj, n_obj = _HITS[shape](np.broadcast_to(eye, d.shape), d, r)
    # Cast shadow: does the ray from the background point towards the light meet the object?
    lit = np.isinf(_HITS[shape](np.tile(bg_p, (k, 1)), np.broadcast_to(LIGHT, d.shape), r)[0])
    is_obj = (t_obj < np.tile(t_bg, k)).reshape(k, p)
    bg_shade = (AMBIENT + DIFFUSE * np.tile(bg_n @ LIGHT, k) * lit).reshape(k, p)
    obj_shade = (AMBIENT + DIFFUSE * np.maximum(_dot(n_obj, LIGHT), 0.0)).reshape(k, p)
    floor = np.where(is_obj, 0.0, bg_shade * on_floor)
    wall = np.where(is_obj, 0.0, bg_shade * ~on_floor)
    return np.stack([floor, wall, np.where(is_obj, obj_shade, 0.0)], 1)


@lru_cache(maxsize=4)
def geometry_maps(size: int, supersample: int = 2) -> np.ndarray:
    """Box-filtered shading maps of every geometry, (4 shapes, 8 scales, 15 orientations, 3, size, size)."""
    spec = shapes_spec()
    res = size * supersample
    scales = np.asarray(spec["scale"].values, dtype=float)
    out = np.empty((4, len(scales), 15, 3, size, size), np.float32)
    for j, yaw in enumerate(spec["orientation"].values):
        for shape in range(4):
            m = _shading_maps(float(yaw), shape, OBJECT_RADIUS * scales, res)
            m = m.reshape(len(scales), 3, size, supersample, size, supersample).mean((3, 5))
            out[shape, :, j] = m
    out.setflags(write=False)
    return out


def render(indices: np.ndarray, size: int = 64, supersample: int = 2, batch: int = 4096) -> np.ndarray:
    """Render replica images for value indices ``indices`` (N, 6); returns (N, size, size, 3) uint8.

    Args:
        indices: value index of each factor of ``shapes_spec()``, one row per image.
        size: output height and width in pixels.
        supersample: rays per pixel along each axis, box-filtered (anti-aliasing).
        batch: images composed at once (bounds memory).
    """
    spec = shapes_spec()
    idx = spec.check_indices(indices, where="render indices")
    maps = geometry_maps(size, supersample)
    hues = np.asarray(spec["floor_hue"].values, dtype=float)
    out = np.empty((len(idx), size, size, 3), np.uint8)
    for i in range(0, len(idx), batch):
        b = idx[i : i + batch]
        m = maps[b[:, 4], b[:, 3], b[:, 5]]  # (B, 3 regions, H, W)
        rgb = np.stack([hue_to_rgb(hues[b[:, k]]) for k in range(3)], 1).astype(
            np.float32
        )  # (B, 3 regions, 3)
        img = np.einsum("brhw,brc->bhwc", m, rgb)
        out[i : i + batch] = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
    return out


def replica(
    size: int = 64, n: int | None = None, seed: int = 0, indices: np.ndarray | None = None
) -> FactorDataset:
    """The replica as a FactorDataset: the given ``indices``, ``n`` random combinations, or all 480,000."""
    spec = shapes_spec()
    if indices is None:
        grid = spec.grid_size
        flat = (
            np.arange(grid)
            if n is None or n >= grid
            else np.sort(np.random.default_rng(seed).choice(grid, n, replace=False))
        )
        indices = np.stack(np.unravel_index(flat, spec.sizes), axis=1)
    return FactorDataset(render(indices, size), np.asarray(indices, np.int64), spec, "shapes")


def labels_to_indices(labels: np.ndarray, spec: FactorSpec, where: str) -> np.ndarray:
    """Map raw 3dshapes label values (N, 6) to value indices, rejecting values off the grid."""
    out = np.empty(labels.shape, np.int64)
    for k, f in enumerate(spec.factors):
        grid = (
            np.arange(f.size, dtype=float) if f.kind == "categorical" else np.asarray(f.values, dtype=float)
        )
        j = np.abs(labels[:, k, None] - grid[None]).argmin(1)
        bad = np.abs(grid[j] - labels[:, k]) > 1e-3 * max(1.0, float(np.abs(grid).max()))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise FactordiffError(
                f"{where}: labels[{row}, {k}] = {float(labels[row, k])!r} is not a value of {f.name}"
            )
        out[:, k] = j
    return out


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Area-downsample square uint8 images (N, H, H, C) to ``size`` (H must be a multiple of size)."""
    h = images.shape[1]
    if h == size:
        return images
    if h % size:
        raise FactordiffError(
            f"cannot resize {h}x{h} images to {size}x{size}: {h} is not a multiple of {size}"
        )
    f = h // size
    x = images.reshape(len(images), size, f, size, f, images.shape[3]).astype(np.float32).mean((2, 4))
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def read_h5(path: Path, size: int | None = None, n: int | None = None, seed: int = 0) -> FactorDataset:
    """Read DeepMind's ``3dshapes.h5``: ``images`` (N, 64, 64, 3) uint8 and ``labels`` (N, 6) raw values."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise FactordiffError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise FactordiffError(f"{path}: not a readable HDF5 file ({e})") from None
    with f:
        for key in ("images", "labels"):
            if key not in f:
                raise FactordiffError(
                    f"{path}: missing dataset {key!r}; expected 'images' (N,64,64,3) uint8 and 'labels' (N,6)"
                )
        images, labels = f["images"], f["labels"]
        if (
            images.ndim != 4
            or images.shape[3] != 3
            or images.shape[1] != images.shape[2]
            or images.dtype != np.uint8
        ):
            raise FactordiffError(
                f"{path}: 'images' must be (N, H, H, 3) uint8, got {images.dtype} {images.shape}"
            )
        if labels.ndim != 2 or labels.shape != (images.shape[0], 6):
            raise FactordiffError(f"{path}: 'labels' must be ({images.shape[0]}, 6), got {labels.shape}")
        rows = np.arange(images.shape[0])
        if n is not None and n < len(rows):
            rows = np.sort(np.random.default_rng(seed).choice(len(rows), n, replace=False))
        imgs, labs = images[rows], np.asarray(labels[rows], dtype=np.float64)
    spec = shapes_spec()
    return FactorDataset(
        resize_images(imgs, size or imgs.shape[1]), labels_to_indices(labs, spec, str(path)), spec, str(path)
    )
