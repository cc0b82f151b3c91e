"""read_table / write_table and the strict image reader; every fixture is made here in tmp_path."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from factordiff.data.base import FactorDataset
from factordiff.data.images import read_image, read_images
from factordiff.data.sources import load_data
from factordiff.data.table import read_table, write_table
from factordiff.errors import FactordiffError
from factordiff.factors import Factor, FactorSpec

RNG = np.random.default_rng(0)


def rgb(size: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def write_csv(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


def user_table(tmp_path: Path, n: int = 4, size: int = 8) -> Path:
    """A table as a user would write it: filename,compound,dose,batch with paths into imgs/."""
    (tmp_path / "imgs").mkdir()
    rows = [["filename", "compound", "dose", "batch"]]
    for i in range(n):
        Image.fromarray(rgb(size, i)).save(tmp_path / "imgs" / f"w{i}.png")
        rows.append(
            [f"imgs/w{i}.png", ["taxol", "DMSO"][i % 2], ["10", "2", "0.5", "2.0"][i % 4], f"b{i // 2 + 1}"]
        )
    return write_csv(tmp_path / "plate.csv", rows)


def edit_table(csv_path: Path, row: int, col: int, value: str) -> Path:
    """Set one cell (0-based row including the header) of a CSV file."""
    rows = list(csv.reader(csv_path.open(newline="")))
    rows[row][col] = value
    return write_csv(csv_path, rows)


def fails(fn, *args, contains: list[str], **kwargs) -> str:
    """Assert ``fn`` raises one FactordiffError line containing every string; return the message."""
    with pytest.raises(FactordiffError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg
    for part in contains:
        assert part in msg, f"{part!r} not in {msg!r}"
    return msg


# --- round trip and the user's table ---------------------------------------------------------


def test_round_trip(tmp_path: Path) -> None:
    spec = FactorSpec(
        (
            Factor("compound", ("DMSO", "nocodazole", "taxol, 1uM"), "categorical"),
            Factor("dose", (0.0, 0.1, 1.5, 1e-7), "ordinal"),
            Factor("plate", (1.0, 2.0), "ordinal"),
        )
    )
    idx = np.stack([RNG.integers(0, s, 20) for s in spec.sizes], axis=1)
    ds = FactorDataset(RNG.integers(0, 256, (20, 16, 16, 3), dtype=np.uint8), idx, spec, "test")
    csv_path = write_table(ds, tmp_path / "out")
    assert csv_path == tmp_path / "out" / "factors.csv"
    assert (tmp_path / "out" / "images" / "00019.png").is_file()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["factors.csv", "images"]  # no temp left
    back = read_table(csv_path)
    assert back.source == str(csv_path)
    np.testing.assert_array_equal(back.images, ds.images)
    assert back.spec.names == spec.names
    assert [f.kind for f in back.spec.factors] == ["categorical", "ordinal", "ordinal"]
    for k, (f, g) in enumerate(zip(spec.factors, back.spec.factors)):
        assert [f.values[i] for i in ds.factors[:, k]] == [g.values[i] for i in back.factors[:, k]]


def test_round_trip_grayscale_and_rgba(tmp_path: Path) -> None:
    spec = FactorSpec((Factor("a", ("x", "y")),))
    for c in (1, 4):
        ds = FactorDataset(
            RNG.integers(0, 256, (3, 8, 8, c), dtype=np.uint8), np.array([[0], [1], [0]]), spec
        )
        back = read_table(write_table(ds, tmp_path / f"c{c}", image_column="file"))
        np.testing.assert_array_equal(back.images, ds.images)


def test_user_table_picks_requested_factors(tmp_path: Path) -> None:
    ds = read_table(user_table(tmp_path), factors=["compound", "batch"])
    assert ds.spec.names == ["compound", "batch"]
    assert ds.spec["compound"] == Factor("compound", ("DMSO", "taxol"), "categorical")
    assert ds.spec["batch"].values == ("b1", "b2")
    np.testing.assert_array_equal(ds.factors, [[1, 0], [0, 0], [1, 1], [0, 1]])
    np.testing.assert_array_equal(ds.images[2], rgb(8, 2))
    assert ds.images.shape == (4, 8, 8, 3)


def test_numeric_column_is_ordinal_sorted_numerically(tmp_path: Path) -> None:
    ds = read_table(user_table(tmp_path))
    assert ds.spec.names == ["compound", "dose", "batch"]
    dose = ds.spec["dose"]
    assert dose.kind == "ordinal" and dose.values == (0.5, 2.0, 10.0)  # "2" and "2.0" are one value
    np.testing.assert_array_equal(ds.factors[:, 1], [2, 1, 0, 1])


def test_load_data_table(tmp_path: Path) -> None:
    ds = load_data(f"table:{user_table(tmp_path)}", factors=["dose"])
    assert ds.spec.names == ["dose"] and len(ds) == 4


def test_image_column_found_by_suffix_or_name_and_absolute_paths(tmp_path: Path) -> None:
    img = tmp_path / "a.tif"
    tifffile.imwrite(img, rgb(8))
    csv_path = write_csv(tmp_path / "t.csv", [["cond", "where"], ["x", str(img)], ["y", "a.tif"]])
    ds = read_table(csv_path)
    assert ds.spec.names == ["cond"]
    np.testing.assert_array_equal(ds.images[0], rgb(8))
    ds = read_table(csv_path, image_column="where", factors=["cond"])
    assert len(ds) == 2


def test_whitespace_blank_rows_and_bom(tmp_path: Path) -> None:
    Image.fromarray(rgb(8)).save(tmp_path / "a.png")
    text = "\ufeffImage , dose\n\n a.png , 1 \n\na.png,2\n"
    (tmp_path / "t.csv").write_text(text, encoding="utf-8")
    ds = read_table(tmp_path / "t.csv")
    assert ds.spec.names == ["dose"] and ds.spec["dose"].values == (1.0, 2.0)


# --- table errors ----------------------------------------------------------------------------


def test_missing_csv(tmp_path: Path) -> None:
    fails(read_table, tmp_path / "nope.csv", contains=["nope.csv", "no such file"])


def test_empty_csv(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_bytes(b"")
    fails(read_table, tmp_path / "t.csv", contains=["t.csv", "empty file"])


def test_header_only(tmp_path: Path) -> None:
    write_csv(tmp_path / "t.csv", [["filename", "dose"]])
    fails(read_table, tmp_path / "t.csv", contains=["t.csv", "no data rows"])


def test_no_header(tmp_path: Path) -> None:
    write_csv(tmp_path / "t.csv", [["a.png", "1"], ["b.png", "2"]])
    fails(read_table, tmp_path / "t.csv", contains=["t.csv", "no header", "'a.png'"])


def test_unnamed_column(tmp_path: Path) -> None:
    write_csv(tmp_path / "t.csv", [["", "filename", "dose"], ["0", "a.png", "1"]])
    fails(read_table, tmp_path / "t.csv", contains=["t.csv", "column 1 has no name"])


def test_duplicate_columns(tmp_path: Path) -> None:
    write_csv(tmp_path / "t.csv", [["filename", "dose", "dose"], ["a.png", "1", "2"]])
    fails(read_table, tmp_path / "t.csv", contains=["t.csv", "duplicate column name 'dose'"])


def test_missing_factor_column(tmp_path: Path) -> None:
    p = user_table(tmp_path)
    fails(
        read_table,
        p,
        factors=["compound", "weight"],
        contains=["plate.csv", "'weight'", "columns: filename, compound, dose, batch"],
    )


def test_image_column_as_factor(tmp_path: Path) -> None:
    fails(
        read_table,
        user_table(tmp_path),
        factors=["filename"],
        contains=["plate.csv", "'filename'", "image paths"],
    )


def test_missing_image_column(tmp_path: Path) -> None:
    p = write_csv(tmp_path / "t.csv", [["cond", "dose"], ["x", "1"]])
    fails(read_table, p, contains=["t.csv", "no image column", "columns: cond, dose"])
    fails(
        read_table, user_table(tmp_path), image_column="img", contains=["plate.csv", "no image column 'img'"]
    )


def test_wrong_number_of_fields(tmp_path: Path) -> None:
    p = user_table(tmp_path)
    lines = p.read_text().splitlines()
    lines[2] += ",extra"
    p.write_text("\n".join(lines) + "\n")
    fails(read_table, p, contains=["plate.csv row 3", "5 fields", "expected 4"])


def test_empty_image_cell(tmp_path: Path) -> None:
    fails(
        read_table, edit_table(user_table(tmp_path), 2, 0, ""), contains=["plate.csv row 3", "no image path"]
    )


def test_empty_factor_cell(tmp_path: Path) -> None:
    fails(read_table, edit_table(user_table(tmp_path), 3, 2, " "), contains=["plate.csv row 4", "'dose'"])


@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-Infinity"])
def test_non_finite_in_numeric_column(tmp_path: Path, text: str) -> None:
    fails(
        read_table,
        edit_table(user_table(tmp_path), 2, 2, text),
        contains=["plate.csv row 3", repr(text), "'dose'", "finite"],
    )


def test_missing_image_file(tmp_path: Path) -> None:
    p = user_table(tmp_path)
    (tmp_path / "imgs" / "w1.png").unlink()
    (tmp_path / "imgs" / "w3.png").unlink()
    fails(read_table, p, contains=["plate.csv row 3", "w1.png", "not found", "1 more row"])


def test_unreadable_image_names_row(tmp_path: Path) -> None:
    p = user_table(tmp_path)
    (tmp_path / "imgs" / "w2.png").write_bytes(b"")
    fails(read_table, p, contains=["plate.csv row 4", "w2.png", "empty file"])


def test_mixed_sizes(tmp_path: Path) -> None:
    p = user_table(tmp_path)
    Image.fromarray(rgb(12)).save(tmp_path / "imgs" / "w2.png")
    fails(read_table, p, contains=["plate.csv row 4", "w2.png", "12x12", "expected 8x8", "w0.png"])


def test_mixed_channels(tmp_path: Path) -> None:
    p = user_table(tmp_path)
    Image.fromarray(rgb(8)[:, :, 0]).save(tmp_path / "imgs" / "w1.png")
    fails(read_table, p, contains=["row 3", "w1.png", "1 channel", "expected 3"])


def test_non_square(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((8, 10, 3), np.uint8)).save(tmp_path / "a.png")
    p = write_csv(tmp_path / "t.csv", [["path", "dose"], ["a.png", "1"]])
    fails(read_table, p, contains=["t.csv", "10x8", "square"])


# --- the image reader ------------------------------------------------------------------------


def test_image_modes(tmp_path: Path) -> None:
    Image.fromarray(rgb(8)[:, :, 0]).save(tmp_path / "g.png")
    assert read_image(tmp_path / "g.png").shape == (8, 8, 1)
    rgba = RNG.integers(0, 256, (8, 8, 4), dtype=np.uint8)
    Image.fromarray(rgba).save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), rgba)
    Image.fromarray(rgb(8)).convert("P").save(tmp_path / "p.png")
    assert read_image(tmp_path / "p.png").shape == (8, 8, 3)
    Image.fromarray(rgb(8)).save(tmp_path / "b.bmp")
    np.testing.assert_array_equal(read_image(tmp_path / "b.bmp"), rgb(8))
    Image.fromarray(rgb(8)).save(tmp_path / "j.jpg")
    assert read_image(tmp_path / "j.jpg").dtype == np.uint8
    tifffile.imwrite(tmp_path / "s.tif", np.moveaxis(rgb(8), -1, 0), planarconfig="separate")
    np.testing.assert_array_equal(read_image(tmp_path / "s.tif"), rgb(8))


def test_16bit_png_scaled(tmp_path: Path) -> None:
    a = np.array([[0, 257 * 100], [300, 65535]], np.uint16)
    Image.fromarray(a).save(tmp_path / "d.png")
    assert Image.open(tmp_path / "d.png").mode == "I;16"
    np.testing.assert_array_equal(read_image(tmp_path / "d.png")[:, :, 0], [[0, 100], [1, 255]])


def test_16bit_tiff_scaled(tmp_path: Path) -> None:
    a = np.full((4, 4, 3), 257 * 200, np.uint16)
    a[0, 0] = 65535
    tifffile.imwrite(tmp_path / "d.tiff", a)
    out = read_image(tmp_path / "d.tiff")
    assert out.dtype == np.uint8 and out[1, 1, 0] == 200 and out[0, 0, 2] == 255


def test_empty_image(tmp_path: Path) -> None:
    (tmp_path / "e.png").write_bytes(b"")
    fails(read_image, tmp_path / "e.png", contains=["e.png", "empty file (0 bytes)"])


def test_missing_image(tmp_path: Path) -> None:
    fails(read_image, tmp_path / "m.png", contains=["m.png", "no such image file"])


def test_truncated_png(tmp_path: Path) -> None:
    p = tmp_path / "t.png"
    Image.fromarray(RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(p)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    fails(read_image, p, contains=["t.png", "truncated"])


def test_truncated_tiff(tmp_path: Path) -> None:
    p = tmp_path / "t.tif"
    tifffile.imwrite(p, rgb(32))
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    fails(read_image, p, contains=["t.tif", "truncated or corrupt TIFF"])


def test_corrupt_and_unsupported(tmp_path: Path) -> None:
    (tmp_path / "c.png").write_bytes(b"this is not an image")
    fails(read_image, tmp_path / "c.png", contains=["c.png", "not a PNG, JPEG or BMP"])
    Image.fromarray(rgb(8)).save(tmp_path / "g.gif")
    fails(read_image, tmp_path / "g.gif", contains=["g.gif", "unsupported image format '.gif'"])


def test_one_bit_image(tmp_path: Path) -> None:
    Image.fromarray(rgb(8)[:, :, 0] > 128).save(tmp_path / "b.png")
    fails(read_image, tmp_path / "b.png", contains=["b.png", "1-bit", "expected 8- or 16-bit"])
    tifffile.imwrite(tmp_path / "b.tif", rgb(8)[:, :, 0] > 128)
    fails(read_image, tmp_path / "b.tif", contains=["b.tif", "1-bit"])


def test_float_tiff(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "f.tif", np.zeros((8, 8), np.float32))
    fails(read_image, tmp_path / "f.tif", contains=["f.tif", "32-bit float", "expected 8- or 16-bit"])
    tifffile.imwrite(tmp_path / "i.tif", np.zeros((8, 8), np.int32))
    fails(read_image, tmp_path / "i.tif", contains=["i.tif", "32-bit signed integer"])


def test_bad_channel_count_and_stack(tmp_path: Path) -> None:
    tifffile.imwrite(
        tmp_path / "two.tif", np.zeros((8, 8, 2), np.uint8), photometric="minisblack", planarconfig="contig"
    )
    fails(read_image, tmp_path / "two.tif", contains=["two.tif"])
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((5, 8, 8), np.uint8), photometric="minisblack")
    fails(read_image, tmp_path / "stack.tif", contains=["stack.tif", "expected one 2-D image"])


def test_read_images_mismatches(tmp_path: Path) -> None:
    Image.fromarray(rgb(8)).save(tmp_path / "a.png")
    Image.fromarray(rgb(8)[:, :, :1].repeat(4, 2)).save(tmp_path / "b.png")
    Image.fromarray(rgb(9)).save(tmp_path / "c.png")
    assert read_images([tmp_path / "a.png"] * 3).shape == (3, 8, 8, 3)
    fails(
        read_images,
        [tmp_path / "a.png", tmp_path / "b.png"],
        contains=["b.png", "4 channel(s)", "expected 3", "a.png"],
    )
    fails(read_images, [tmp_path / "a.png", tmp_path / "c.png"], contains=["c.png", "9x9", "expected 8x8"])
    fails(read_images, [], contains=["no image files"])


def test_csv_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_bytes("path,compound\na.png,caf\xe9\n".encode("latin-1"))
    fails(read_table, tmp_path / "t.csv", contains=["t.csv", "not UTF-8"])


def test_write_table_rejects_clashing_image_column(tmp_path: Path) -> None:
    ds = FactorDataset(
        np.zeros((1, 4, 4, 3), np.uint8), np.zeros((1, 1), np.int64), FactorSpec((Factor("path", ("a",)),))
    )
    fails(write_table, ds, tmp_path, contains=["'path'", "factor name"])
