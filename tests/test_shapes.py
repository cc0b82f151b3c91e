import h5py
import numpy as np
import pytest

from factordiff import FactordiffError
from factordiff.data.shapes import read_h5, render, replica, shapes_spec


def test_spec_matches_3dshapes():
    s = shapes_spec()
    assert s.names == ["floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation"]
    assert s.sizes == [10, 10, 10, 8, 4, 15] and s.grid_size == 480_000
    assert s["scale"].values[0] == 0.75 and s["scale"].values[-1] == 1.25
    assert s["orientation"].values[0] == -30.0 and s["orientation"].values[-1] == 30.0
    # row-major, orientation fastest: row 1 differs from row 0 in orientation only
    g = s.grid()
    assert g[1].tolist() == [0, 0, 0, 0, 0, 1] and g[15].tolist() == [0, 0, 0, 0, 1, 0]


def test_render_is_deterministic_and_factors_change_pixels():
    idx = np.array([[0, 3, 6, 4, 2, 7]])
    a, b = render(idx, 32), render(idx, 32)
    assert a.shape == (1, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    for k in range(6):
        other = idx.copy()
        other[0, k] = (other[0, k] + 1) % shapes_spec().sizes[k]
        assert np.abs(render(other, 32).astype(int) - a).sum() > 0, f"factor {k} does not change the image"


def test_hue_zero_is_red():
    img = render(np.array([[0, 0, 0, 0, 0, 7]]), 32)[0]
    floor = img[-2, 16].astype(int)  # bottom rows are floor
    assert floor[0] > 150 and floor[1] < 100 and floor[2] < 100


def test_replica_samples_distinct_combinations():
    d = replica(16, n=100, seed=1)
    assert len(d) == 100 and len({tuple(r) for r in d.factors}) == 100


def write_h5(path, images, labels):
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=images)
        f.create_dataset("labels", data=labels)


def raw_labels(idx):
    s = shapes_spec()
    cols = [
        np.asarray([float(f.values[i]) if f.kind == "ordinal" else float(i) for i in idx[:, k]])
        for k, f in enumerate(s.factors)
    ]
    return np.stack(cols, 1)


def test_h5_round_trip(tmp_path):
    d = replica(64, n=20, seed=3)
    write_h5(tmp_path / "3dshapes.h5", d.images, raw_labels(d.factors))
    back = read_h5(tmp_path / "3dshapes.h5", size=64)
    assert np.array_equal(back.images, d.images) and np.array_equal(back.factors, d.factors)
    small = read_h5(tmp_path / "3dshapes.h5", size=32)
    assert small.images.shape == (20, 32, 32, 3)


def test_h5_without_keys_is_refused(tmp_path):
    with h5py.File(tmp_path / "bad.h5", "w") as f:
        f.create_dataset("imgs", data=np.zeros((2, 64, 64, 3), np.uint8))
    with pytest.raises(FactordiffError, match=r"bad.h5: missing dataset 'images'"):
        read_h5(tmp_path / "bad.h5")


def test_h5_labels_off_grid_are_refused(tmp_path):
    d = replica(64, n=2)
    labels = raw_labels(d.factors)
    labels[1, 3] = 0.8
    write_h5(tmp_path / "x.h5", d.images, labels)
    with pytest.raises(FactordiffError, match=r"labels\[1, 3\] = 0.8 is not a value of scale"):
        read_h5(tmp_path / "x.h5")


def test_not_an_h5_file(tmp_path):
    (tmp_path / "x.h5").write_bytes(b"not hdf5")
    with pytest.raises(FactordiffError, match="not a readable HDF5 file"):
        read_h5(tmp_path / "x.h5")
