"""cellsim, the built-in Cell Painting assay: deterministic, valid nesting of plates in batches in
sources, ground truth that separates biology from technique, and compound effects that follow
from structure (an unseen compound's SMILES gives its effect)."""

import numpy as np
import pytest

from factordiff import FactordiffError
from factordiff.data.cellsim import (
    COMPOUNDS,
    CONTROL,
    biology,
    cellsim,
    cellsim_spec,
    compound_effect,
    morgan,
    render,
    render_field,
    sample_factors,
    technique,
    to_uint8,
)
from factordiff.data.sources import load_data


def test_cellsim_is_deterministic_multichannel_and_validly_nested():
    a, b = cellsim(32, n=40, seed=3), load_data("cellsim", size=32, n=40, seed=3)
    assert a.images.shape == (40, 32, 32, 5) and a.images.dtype == np.uint8
    assert np.array_equal(a.images, b.images) and np.array_equal(a.factors, b.factors)
    assert not np.array_equal(a.images, cellsim(32, n=40, seed=4).images)
    # another seed draws other cells of the same assay: 30 fields of one condition have (nearly) the
    # same mean intensity per channel under either seed, and not under another batch's instrument
    rows = np.repeat(sample_factors(1, 0), 30, 0)
    other = rows.copy()
    other[:, 5] = (other[:, 5] + 2) % 8
    other[:, 4], other[:, 3] = other[:, 5] // 2, other[:, 5] // 4
    x, y, z = (
        render(r, 32, seed=s).astype(float).mean((0, 2, 3)) for r, s in ((rows, 3), (rows, 4), (other, 3))
    )
    assert np.allclose(x, y, rtol=0.08) and not np.allclose(x, z, rtol=0.08)
    f = sample_factors(2000, seed=0)
    assert np.array_equal(f[:, 4], f[:, 5] // 2) and np.array_equal(
        f[:, 3], f[:, 4] // 2
    )  # plate -> batch -> source
    assert ((f[:, 0] == 0) == (f[:, 1] == 0)).all()  # DMSO, and only DMSO, at dose 0
    roles = {fa.name: fa.role for fa in cellsim_spec().factors}
    assert roles == {
        "compound": "biological",
        "dose": "biological",
        "cell_line": "biological",
        "source": "technical",
        "batch": "technical",
        "plate": "technical",
    }
    with pytest.raises(FactordiffError, match="power of two"):
        cellsim(48, n=2)


def test_ground_truth_separates_biology_from_technique():
    base = biology("nocodazole", 10.0, "A549")
    assert np.allclose(biology(CONTROL, 0.0, "A549"), biology(CONTROL, 0.0, "A549"))
    assert not np.allclose(base, biology(CONTROL, 0.0, "A549"))  # a compound changes morphology
    assert not np.allclose(base, biology("nocodazole", 0.1, "A549"))  # and its dose does
    assert np.allclose(
        biology("nocodazole", 0.0, "A549"), biology(CONTROL, 0.0, "A549")
    )  # no dose, no effect
    t1, t2 = technique("source_1", "batch_1", "plate_1"), technique("source_1", "batch_2", "plate_3")
    assert (
        not np.allclose(t1["gain"], t2["gain"]) and t1["blur"] == t2["blur"]
    )  # the batch changes gains, the source's microscope stays
    # the same cells (same seed and index) imaged in two batches: every channel's intensity changes,
    # the mask of the cells does not
    spec = cellsim_spec()
    row = np.array([[spec["compound"].index("colchicine"), 3, 0, 0, 0, 0]])
    other = row.copy()
    other[0, 4:] = [1, 2]
    x, y = render(row, 64, seed=0)[0].astype(float), render(other, 64, seed=0)[0].astype(float)
    assert np.corrcoef(x[0].ravel(), y[0].ravel())[0, 1] > 0.9 and not np.allclose(
        x.mean((1, 2)), y.mean((1, 2)), rtol=0.05
    )


def test_compound_effects_follow_structure_and_unseen_smiles_work():
    names = [n for n in COMPOUNDS if n != CONTROL]
    eff = compound_effect([COMPOUNDS[n] for n in names])
    assert eff.shape == (len(names), 9) and np.abs(eff).max() <= 1 and np.abs(eff).max() > 0.3
    assert len({tuple(np.round(e, 6)) for e in eff}) == len(names)  # every compound has its own effect
    fp = morgan([COMPOUNDS[n] for n in names])
    assert fp.shape == (len(names), 1024) and (fp.sum(1) > 0).all()
    # the same fingerprint, the same effect: an effect is a function of structure, not of the name
    assert np.allclose(compound_effect(COMPOUNDS["caffeine"]), eff[names.index("caffeine")])
    new = biology("ethanol", 10.0, "A549", smiles="CCO")  # a compound outside the library, by its SMILES
    assert new.shape == (9,) and not np.allclose(new, biology(CONTROL, 0.0, "A549"))
    with pytest.raises(FactordiffError, match="not a valid molecule"):
        morgan(["C1CC"])
    with pytest.raises(FactordiffError, match="not in cellsim's library"):
        biology("unknownol", 1.0, "A549")


def test_fixed_8_bit_scale():
    x = np.array([0, 63, 64, 16383, 16384, 65535], np.uint16)
    assert list(to_uint8(x)) == [0, 0, 1, 255, 255, 255]


def test_brightfield_is_a_sixth_channel_that_leaves_the_stains_byte_identical():
    """``brightfield=True`` adds the same cells' brightfield after the five stains and changes none
    of their bytes, so models trained on the five channels and their figures do not move."""
    rows = sample_factors(6, seed=5)
    five, six = render(rows, 32, seed=5), render(rows, 32, seed=5, brightfield=True)
    assert six.shape == (6, 6, 32, 32) and np.array_equal(six[:, :5], five)
    data = cellsim(32, n=6, seed=5, brightfield=True)
    assert data.images.shape == (6, 32, 32, 6)
    assert np.array_equal(data.images[..., :5], cellsim(32, n=6, seed=5).images)


def test_brightfield_shows_the_cells_and_not_their_stains():
    """Phase-like contrast: away from the cells the brightfield is smooth light (the illumination
    gradient and noise); on them (where the membrane or nuclear stain is above its background) it
    departs from that light several times more. It follows the cells' shape, not their staining:
    dimming a stain without moving the cells leaves it as it was."""
    from scipy.ndimage import distance_transform_edt, gaussian_filter

    rows = np.repeat(sample_factors(1, seed=0), 20, 0)
    x = render(rows, 64, seed=1, brightfield=True).astype(float)
    bf, stains = x[:, 5], x[:, [0, 3]]
    background = np.median(stains, axis=(2, 3), keepdims=True)
    on_cells = (stains > background + 0.3 * (stains.max(axis=(2, 3), keepdims=True) - background)).any(1)
    far = np.stack([distance_transform_edt(~m) > 8 for m in on_cells])
    detail = np.abs(bf - np.stack([gaussian_filter(f, 12) for f in bf]))
    assert far.sum() > 1000 and detail[on_cells].mean() > 2.5 * detail[far].mean()
    bio = biology("DMSO", 0.0, "A549")
    tech = technique("source_1", "batch_1", "plate_1")
    dim = bio.copy()
    dim[3] *= 0.5  # the DNA stain at half its intensity, the same cells

    def field(params):
        return render_field(params, tech, 64, np.random.default_rng(0), brightfield=np.random.default_rng(1))

    a, b = field(bio), field(dim)
    assert not np.array_equal(a[0], b[0]) and np.array_equal(a[5], b[5])


def test_hidden_draws_keep_the_cells_and_pair_treated_with_untreated():
    """``hidden``: renders with other hidden seeds are the same cells (brightfield byte-identical)
    with other textures, mitochondria and noise; and with the same seeds a treated render and its
    untreated twin are the same cells (the brightfield's outlines agree far better than with the
    default draws, whose streams drift apart once a compound changes a count)."""
    rows = sample_factors(40, seed=2)
    a, b = (
        render(rows, 32, seed=2, brightfield=True, hidden=0),
        render(rows, 32, seed=2, brightfield=True, hidden=1),
    )
    assert np.array_equal(a[:, 5], b[:, 5]) and not np.array_equal(a[:, 4], b[:, 4])
    assert np.array_equal(a, render(rows, 32, seed=2, brightfield=True, hidden=0))
    treated = rows[rows[:, 0] != list(COMPOUNDS).index(CONTROL)]
    untreated = treated.copy()
    untreated[:, :2] = (list(COMPOUNDS).index(CONTROL), 0)

    def bf_corr(hidden):
        t, u = (
            render(r, 32, seed=2, brightfield=True, hidden=hidden)[:, 5].astype(float)
            for r in (treated, untreated)
        )
        t, u = (x.reshape(len(x), -1) - x.reshape(len(x), -1).mean(1, keepdims=True) for x in (t, u))
        return (t * u).sum(1) / np.sqrt((t * t).sum(1) * (u * u).sum(1))

    paired, drifting = bf_corr(0), bf_corr(None)
    assert paired.min() > 0.5 and paired.mean() > drifting.mean() + 0.1
