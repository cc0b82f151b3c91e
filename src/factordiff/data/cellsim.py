"""cellsim: the built-in Cell Painting assay, with the ground truth of every image.

Fields of view of 5 channels (DNA, ER, RNA, AGP, Mito), rendered as 16-bit like a microscope's
and returned as 8-bit by a fixed scale (``uint16 // 64``, clipped: no statistic is fitted on the
data). Factors and their roles:

- biological: ``compound`` (DMSO and sixteen real compounds, each with its SMILES), ``dose`` (0 for
  DMSO; 0.1, 1 or 10 uM for the others), ``cell_line`` (A549, U2OS);
- technical: ``source`` (two labs, each its own microscope: blur and noise), ``batch`` (two per
  source: per-channel gain and offset, background, illumination gradient), ``plate`` (two per
  batch: a smaller gain jitter). Plates are nested in batches, batches in sources. The well's
  position on a 384-well plate (recorded, not a factor) darkens edge wells.

A compound's morphological effect is a fixed linear function of its Morgan fingerprint (RDKit,
radius 2, 1024 bits), squashed by tanh and scaled by log dose: an unseen compound's effect is
predictable from its structure where it has structural neighbours among the training compounds.
The library holds two analogue series, as screening libraries do: caffeine with theobromine and
theophylline (xanthines), camptothecin with 10-hydroxycamptothecin and topotecan. Without a
neighbour nothing structure-based can predict a compound's effect: with the twelve unrelated
compounds alone, kernel ridge regression of the *true* effects on the others' fingerprints gave
caffeine's and camptothecin's with cosines 0.24 and 0.28 (``structure_ceiling``; 0.80 and 0.95
with the analogues).
``biology(...)`` and ``technique(...)`` return the generating
parameters of any factor values, so a test can say whether an edit changed biology or only
technique. Everything is a pure function of the factor values, the image's index and the seed.
"""

from __future__ import annotations

import math

import numpy as np

from factordiff.chem import morgan
from factordiff.data.base import FactorDataset
from factordiff.errors import FactordiffError
from factordiff.factors import Factor, FactorSpec

CHANNELS = ("DNA", "ER", "RNA", "AGP", "Mito")
BRIGHTFIELD = "BF"  # the optional sixth channel (render(..., brightfield=True))
CONTROL = "DMSO"
COMPOUNDS: dict[str, str] = {
    "DMSO": "CS(C)=O",
    "aspirin": "CC(=O)OC1=CC=CC=C1C(=O)O",
    "caffeine": "CN1C=NC2=C1C(=O)N(C(=O)N2C)C",
    "ibuprofen": "CC(C)CC1=CC=C(C=C1)C(C)C(=O)O",
    "nocodazole": "COC(=O)NC1=NC2=C(N1)C=C(C=C2)C(=O)C3=CC=CS3",
    "colchicine": "CC(=O)NC1CCC2=CC(=C(C(=C2C3=CC=C(C(=O)C=C13)OC)OC)OC)OC",
    "camptothecin": "CCC1(C2=C(COC1=O)C(=O)N3CC4=CC5=CC=CC=C5N=C4C3=C2)O",
    "metformin": "CN(C)C(=N)N=C(N)N",
    "cycloheximide": "CC1CC(C(=O)C(C1)C(CC2CC(=O)NC(=O)C2)O)C",
    "brefeldin A": "CC1CCCC=CC2CC(CC2C(C=CC(=O)O1)O)O",
    "rotenone": "CC(=C)C1CC2=C(O1)C=CC3=C2OC4COC5=CC(=C(C=C5C4C3=O)OC)OC",
    "chloroquine": "CCN(CC)CCCC(C)NC1=C2C=CC(=CC2=NC=C1)Cl",
    "staurosporine": "CC12C(C(CC(O1)N3C4=CC=CC=C4C5=C6C(=C7C8=CC=CC=C8N2C7=C53)CNC6=O)NC)OC",
    "theobromine": "CN1C=NC2=C1C(=O)NC(=O)N2C",
    "theophylline": "CN1C2=C(C(=O)N(C1=O)C)NC=N2",
    "10-hydroxycamptothecin": "CCC1(C2=C(COC1=O)C(=O)N3CC4=CC5=C(C=CC(=C5)O)N=C4C3=C2)O",
    "topotecan": "CCC1(C2=C(COC1=O)C(=O)N3CC4=CC5=C(C=CC(=C5CN(C)C)O)N=C4C3=C2)O",
}
DOSES = (0.0, 0.1, 1.0, 10.0)
CELL_LINES = ("A549", "U2OS")
SOURCES = ("source_1", "source_2")
BATCHES = ("batch_1", "batch_2", "batch_3", "batch_4")  # batch_1, _2 in source_1; _3, _4 in source_2
PLATES = tuple(f"plate_{i}" for i in range(1, 9))  # two per batch, in order
BIO_PARAMS = (
    "nucleus_size",
    "cell_size",
    "elongation",
    "dna",
    "er",
    "nucleoli",
    "agp_edge",
    "mito_count",
    "mito",
)
# per cell line: the base value of each biological parameter (sizes in pixels at size 64)
_BASE = {
    "A549": (5.5, 12.0, 1.15, 1.0, 1.0, 3.0, 1.0, 10.0, 1.0),
    "U2OS": (6.5, 14.0, 1.45, 0.85, 1.2, 4.0, 0.8, 14.0, 0.9),
}
EFFECT_SCALE = 0.45  # log-scale change of each parameter at the top dose for a unit effect
FINGERPRINT_BITS = 1024
ASSAY_SEED = 0  # fixes the assay's chemistry and instruments; a dataset's seed only draws fields and cells


def cellsim_spec() -> FactorSpec:
    return FactorSpec(
        (
            Factor("compound", tuple(COMPOUNDS), "categorical", "biological"),
            Factor("dose", DOSES, "ordinal", "biological"),
            Factor("cell_line", CELL_LINES, "categorical", "biological"),
            Factor("source", SOURCES, "categorical", "technical"),
            Factor("batch", BATCHES, "categorical", "technical"),
            Factor("plate", PLATES, "categorical", "technical"),
        )
    )


def _projection(seed: int = 0) -> np.ndarray:
    """The fixed map fingerprint -> effect, (BIO_PARAMS, bits); the assay's chemistry."""
    rng = np.random.default_rng(1_000_003 + seed)
    return rng.normal(0.0, 1.0, (len(BIO_PARAMS), FINGERPRINT_BITS)) * (
        rng.random((len(BIO_PARAMS), FINGERPRINT_BITS)) < 0.15
    )


def compound_effect(smiles: str | list[str], seed: int = 0) -> np.ndarray:
    """The morphological effect at the top dose, (P,) or (N, P) in [-1, 1]: tanh of the projected
    fingerprint (normalised by its bit count). DMSO's is zero by definition."""
    many = [smiles] if isinstance(smiles, str) else list(smiles)
    fp = morgan(many).astype(np.float64)
    e = np.tanh(fp @ _projection(seed).T / np.sqrt(np.maximum(fp.sum(1, keepdims=True), 1.0)))
    e[[s == COMPOUNDS[CONTROL] for s in many]] = 0.0
    return e[0] if isinstance(smiles, str) else e


def biology(
    compound: str, dose: float, cell_line: str, seed: int = 0, smiles: str | None = None
) -> np.ndarray:
    """The biological parameters (BIO_PARAMS) of a compound (by name, or any ``smiles``) at ``dose``
    in ``cell_line``: the line's base values times exp(EFFECT_SCALE * effect * dose fraction),
    the dose fraction log-scaled (0.1 uM -> 1/3, 1 -> 2/3, 10 -> 1)."""
    if cell_line not in _BASE:
        raise FactordiffError(f"cell line {cell_line!r}: expected one of {', '.join(_BASE)}")
    s = smiles or COMPOUNDS.get(compound)
    if s is None:
        raise FactordiffError(f"compound {compound!r}: not in cellsim's library; give its SMILES")
    frac = 0.0 if dose <= 0 else float(np.clip((math.log10(dose) + 2) / 3, 0, 1))
    return np.asarray(_BASE[cell_line]) * np.exp(EFFECT_SCALE * compound_effect(s, seed) * frac)


def technique(source: str, batch: str, plate: str, seed: int = 0) -> dict[str, np.ndarray | float]:
    """The technical parameters of a plate: per-channel ``gain`` and ``offset``, ``background``,
    illumination gradient ``illum_strength`` and ``illum_angle``, ``blur`` (pixels) and ``noise``;
    the brightfield's ``bf_gain`` and ``bf_offset`` (per batch)."""
    for name, value, values in (
        ("source", source, SOURCES),
        ("batch", batch, BATCHES),
        ("plate", plate, PLATES),
    ):
        if value not in values:
            raise FactordiffError(f"{name} {value!r}: expected one of {', '.join(values)}")
    s, b, p = SOURCES.index(source), BATCHES.index(batch), PLATES.index(plate)
    rs, rb, rp = (np.random.default_rng([seed, 17, k, i]) for k, i in ((1, s), (2, b), (3, p)))
    lamp = np.random.default_rng([seed, 17, 4, b])  # the brightfield's, apart from the stains' draws
    return {
        "bf_gain": float(np.exp(lamp.normal(0, 0.15))),
        "bf_offset": float(lamp.uniform(100, 400)),
        "gain": np.exp(rb.normal(0, 0.3, 5)) * np.exp(rp.normal(0, 0.06, 5)),
        "offset": rb.uniform(100, 600, 5),
        "background": float(rb.uniform(0.0, 0.08)),
        "illum_strength": float(rb.uniform(0.1, 0.4)),
        "illum_angle": float(rb.uniform(0, 2 * np.pi)),
        "blur": float(rs.uniform(0.4, 1.4)),
        "noise": float(rs.uniform(0.01, 0.04)),
    }


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    x = gaussian_filter(rng.normal(size=(size, size)), sigma, mode="wrap")
    return x / (x.std() + 1e-8)


def _inside(
    rng: np.random.Generator,
    cy: float,
    cx: float,
    a: float,
    b: float,
    c: float,
    s: float,
    r0: float,
    r1: float,
) -> tuple[float, float]:
    """A random point of the ellipse (semi-axes a, b, rotated by (c, s) = (cos, sin)) between the
    relative radii r0 and r1, as image (y, x)."""
    r, t = rng.uniform(r0, r1), rng.uniform(0, 2 * np.pi)
    u, v = r * a * math.cos(t), r * b * math.sin(t)
    return cy + u * s + v * c, cx + u * c - v * s


def render_field(
    bio: np.ndarray,
    tech: dict,
    size: int,
    rng: np.random.Generator,
    well: tuple[int, int] = (8, 12),
    brightfield: np.random.Generator | None = None,
    hidden: np.random.Generator | None = None,
) -> np.ndarray:
    """One field (5, size, size) uint16 of cells with parameters ``bio`` imaged with ``tech``; with
    a ``brightfield`` generator (its noise), (6, size, size): the same cells' brightfield last
    (``_brightfield``). The stains draw nothing more from ``rng`` either way, so they are the same
    bytes with and without it.

    ``hidden``: the draws of what the brightfield does not show (the stains' textures, the
    mitochondria, the stains' noise) come from this generator instead of ``rng``, so renders with
    the same ``rng`` and other ``hidden`` generators are the same cells (outlines, nuclei, nucleoli,
    brightfield) with other hidden detail: draws from the stains' distribution given the
    brightfield. Each cell's nucleoli then come from a generator of its own (one draw of ``rng``
    per cell), so ``rng`` stays in step whatever the biology: the same seeds render the same cells
    (centres, orientations, nucleoli, textures) under any compound, which makes exact
    control/treated pairs. None (the default) draws everything from ``rng``, the bytes as before."""
    from scipy.ndimage import gaussian_filter

    nuc_r, cell_r, elong, dna, er, nucleoli, agp, mito_n, mito = bio
    k = size / 64.0
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    img = np.zeros((5, size, size))
    path = np.zeros((size, size))  # optical path length through the cells, for the brightfield
    hidden = rng if hidden is None else hidden
    cells = int(rng.integers(2, 5))
    tex = [_smooth_noise(hidden, size, 1.5 * k) for _ in range(3)]
    for _ in range(cells):
        cy, cx = rng.uniform(0.15, 0.85, 2) * size
        th = rng.uniform(0, np.pi)
        own = rng if hidden is rng else np.random.default_rng(int(rng.integers(2**63)))
        c, s = np.cos(th), np.sin(th)
        u, v = (xx - cx) * c + (yy - cy) * s, -(xx - cx) * s + (yy - cy) * c
        a, b = cell_r * k * math.sqrt(elong), cell_r * k / math.sqrt(elong)
        d_cell = np.sqrt((u / a) ** 2 + (v / b) ** 2)
        na, nb = nuc_r * k * elong**0.25, nuc_r * k / elong**0.25
        d_nuc = np.sqrt((u / na) ** 2 + (v / nb) ** 2)
        nucleus, cyto = d_nuc < 1, (d_cell < 1) & (d_nuc >= 1)
        path += np.sqrt(np.clip(1 - d_cell**2, 0, None)) + 0.6 * np.sqrt(np.clip(1 - d_nuc**2, 0, None))
        img[0] += dna * nucleus * (0.85 + 0.15 * tex[0])
        img[1] += er * cyto * np.exp(-1.5 * d_cell) * (0.7 + 0.3 * tex[1])
        img[2] += 0.25 * cyto + 0.15 * nucleus
        for _ in range(int(own.poisson(nucleoli))):
            py, px = _inside(own, cy, cx, na, nb, c, s, 0.0, 0.6)
            spot = np.exp(-((yy - py) ** 2 + (xx - px) ** 2) / (2 * (0.9 * k) ** 2))
            img[2] += 0.9 * spot
            path += 0.5 * spot
        img[3] += agp * (np.abs(d_cell - 0.92) < 0.1) + 0.25 * agp * cyto * (
            0.5 + 0.5 * np.sin(2.5 * v / k) ** 2
        )
        for _ in range(int(hidden.poisson(mito_n))):
            py, px = _inside(hidden, cy, cx, a, b, c, s, 0.4, 0.9)
            img[4] += mito * np.exp(-((yy - py) ** 2 + (xx - px) ** 2) / (2 * (0.8 * k) ** 2))
    # the microscope: blur, illumination gradient, edge wells, gain, offset, background, noise
    img = np.stack([gaussian_filter(ch, tech["blur"] * k) for ch in img])
    gy, gx = math.sin(tech["illum_angle"]), math.cos(tech["illum_angle"])
    illum = 1.0 + tech["illum_strength"] * (((xx / size) - 0.5) * gx + ((yy / size) - 0.5) * gy)
    edge = 0.85 if well[0] in (0, 15) or well[1] in (0, 23) else 1.0
    signal = (img + tech["background"]) * illum * edge
    signal = signal + tech["noise"] * hidden.normal(size=signal.shape)
    raw = signal * 6000.0 * tech["gain"][:, None, None] + tech["offset"][:, None, None]
    stains = np.clip(np.rint(raw), 0, 65535).astype(np.uint16)
    if brightfield is None:
        return stains
    bf = _brightfield(path, tech, k, illum * edge, brightfield)
    return np.concatenate([stains, bf[None]])


def _brightfield(
    path: np.ndarray, tech: dict, k: float, light: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Phase-like brightfield of the cells (size, size) uint16: unit light through the field, the
    cells' optical path (thickness of each cell's dome and nucleus, nucleoli) seen as its
    difference from a wide blur of itself, so cell and nucleus outlines carry a bright halo and a
    dark rim, as in phase contrast; then the stains' microscope (blur, the field's illumination
    and edge-well dimming) with the plate's own ``bf_gain`` and ``bf_offset`` and its own noise."""
    from scipy.ndimage import gaussian_filter

    contrast = gaussian_filter(path, 3.0 * k) - path
    field = gaussian_filter(1.0 + 0.6 * contrast - 0.05 * path, tech["blur"] * k) * light
    field = field + tech["noise"] * rng.normal(size=field.shape)
    raw = field * 6000.0 * tech["bf_gain"] + tech["bf_offset"]
    return np.clip(np.rint(raw), 0, 65535).astype(np.uint16)


def to_uint8(fields: np.ndarray) -> np.ndarray:
    """The fixed 16- to 8-bit map of cellsim: ``// 64``, clipped at 255 (no fitted statistic)."""
    return np.minimum(fields // 64, 255).astype(np.uint8)


def sample_factors(n: int, seed: int = 0) -> np.ndarray:
    """``n`` valid factor rows (value indices): plate uniform (its batch and source follow), compound
    uniform, dose 0 for DMSO and one of the three doses otherwise, cell line uniform."""
    spec = cellsim_spec()
    rng = np.random.default_rng([seed, 99])
    out = np.zeros((n, len(spec)), np.int64)
    out[:, 5] = rng.integers(0, len(PLATES), n)
    out[:, 4] = out[:, 5] // 2
    out[:, 3] = out[:, 4] // 2
    out[:, 0] = rng.integers(0, len(COMPOUNDS), n)
    out[:, 1] = np.where(out[:, 0] == 0, 0, rng.integers(1, len(DOSES), n))
    out[:, 2] = rng.integers(0, len(CELL_LINES), n)
    return out


def render(
    factors: np.ndarray,
    size: int = 64,
    seed: int = 0,
    index_offset: int = 0,
    brightfield: bool = False,
    hidden: int | None = None,
) -> np.ndarray:
    """Fields (N, 5, size, size) uint16 for value-index rows ``factors``; field i's cells and well
    come from (seed, index_offset + i). The assay itself (each compound's effect, each plate's
    technique) is the same for every seed: ASSAY_SEED. ``brightfield``: (N, 6, size, size), the
    same cells' brightfield as channel ``BF`` after the five stains, which stay the same bytes.
    ``hidden``: a seed for what the brightfield does not show (``render_field``): renders with the
    same ``seed`` and other ``hidden`` seeds are the same cells with other textures, mitochondria
    and noise (these cells are not those of ``hidden=None``, whose draws interleave)."""
    spec = cellsim_spec()
    bio_cache: dict[tuple, np.ndarray] = {}
    tech_cache: dict[tuple, dict] = {}
    out = np.empty((len(factors), 6 if brightfield else 5, size, size), np.uint16)
    for i, row in enumerate(np.asarray(factors)):
        comp, dose, line, src, batch, plate = (spec.factors[k].values[row[k]] for k in range(6))
        key = (comp, dose, line)
        if key not in bio_cache:
            bio_cache[key] = biology(comp, float(dose), line, ASSAY_SEED)
        tkey = (src, batch, plate)
        if tkey not in tech_cache:
            tech_cache[tkey] = technique(src, batch, plate, ASSAY_SEED)
        rng = np.random.default_rng([seed, 7, index_offset + i])
        well = (int(rng.integers(0, 16)), int(rng.integers(0, 24)))
        lamp = np.random.default_rng([seed, 11, index_offset + i]) if brightfield else None
        h = None if hidden is None else np.random.default_rng([hidden, 13, index_offset + i])
        out[i] = render_field(bio_cache[key], tech_cache[tkey], size, rng, well, lamp, h)
    return out


def cellsim(
    size: int = 64,
    n: int | None = None,
    seed: int = 0,
    brightfield: bool = False,
    channels: list[str] | tuple[str, ...] | None = None,
) -> FactorDataset:
    """The built-in assay as a FactorDataset of ``n`` fields (default 12,000), channels last, uint8;
    ``brightfield``: a sixth channel, the same cells' brightfield (``render``). ``channels``: the
    channels to keep, by name, in that order (``data.channels``; naming ``BF`` renders the
    brightfield); None: the five stains, or the six with ``brightfield``."""
    if size < 16 or size & (size - 1):
        raise FactordiffError(f"cellsim: size {size}; expected a power of two of at least 16")
    keep = None if channels is None else channel_indices(channels)
    brightfield = brightfield or (keep is not None and len(CHANNELS) in keep)
    factors = sample_factors(n or 12000, seed)
    fields = render(factors, size, seed, brightfield=brightfield)
    if keep is not None:
        fields = fields[:, keep]
    return FactorDataset(
        np.ascontiguousarray(to_uint8(fields).transpose(0, 2, 3, 1)), factors, cellsim_spec(), "cellsim"
    )


def channel_indices(channels: list[str] | tuple[str, ...]) -> list[int]:
    """Indices of named cellsim channels among the five stains and ``BF``; refuses unknown or
    repeated names in one line."""
    names = (*CHANNELS, BRIGHTFIELD)
    unknown = [c for c in channels if c not in names]
    if unknown or len(set(channels)) != len(channels) or not channels:
        raise FactordiffError(
            f"data.channels: cellsim has channels {', '.join(names)} (each at most once), got "
            f"{', '.join(channels) or 'none'}"
        )
    return [names.index(c) for c in channels]


def true_counterfactuals(
    data: FactorDataset, rows: np.ndarray, new: np.ndarray, seed: int
) -> np.ndarray | None:
    """cellsim's ground truth of an edit: fields ``rows`` rendered again, the same cells with the
    factor values ``new`` ((N, K) value indices). None where ``data`` is not cellsim rendered with
    ``seed`` (the first row is rendered to check)."""
    if data.source != "cellsim" or not len(rows):
        return None
    bf = data.images.shape[3] == len(CHANNELS) + 1

    def fields(values, idx):
        x = render(values[None], data.size, seed, index_offset=int(idx), brightfield=bf)
        return to_uint8(x)[0].transpose(1, 2, 0)

    if not np.array_equal(fields(data.factors[rows[0]], rows[0]), data.images[rows[0]]):
        return None
    return np.stack([fields(v, r) for v, r in zip(new, rows)])
