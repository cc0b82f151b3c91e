"""Fields of view as training data (``fit --data fields:SOURCE``) through the CLI, on the real
Cell Painting field crop in tests/data (licence beside it) copied under two plate barcodes: index
with ``fields --out``, fit on crops cut from the fields, regenerate into 16-bit TIFFs with a
``load_data`` table that ``fields`` reads back, and every malformed field in one line, exit 2,
nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from conftest import tiny_config_file as _config

from factordiff.cli import main
from factordiff.config import DataConfig
from factordiff.data.cells import open_fields
from factordiff.data.fieldcrops import cut_crops

FIELD = Path(__file__).parent / "data" / "fov-BR00143976-C03-s3"
CHANNELS = "DNA=5,ER=2,RNA=6,AGP=3,Mito=4"
NAMES = "DNA,ER,RNA,AGP,Mito"


def _plates(folder: Path) -> Path:
    """The field copied under plates P1 and P2 and indexed by ``fields --out``."""
    for p in ("P1", "P2"):
        shutil.copytree(FIELD, folder / p)
    index = folder / "index.csv"
    argv = ["fields", f"phenix:{folder / 'P1'}", f"phenix:{folder / 'P2'}", "--channels", CHANNELS]
    assert main([*argv, "--out", str(index)]) == 0
    return index


def _fit(folder: Path, index: Path, *extra: str) -> tuple[int, Path]:
    out = folder / "run"
    argv = ["fit", "--data", f"fields:load_data:{index}", "--channels", NAMES, "--factors", "Metadata_Plate"]
    argv += ["--size", "16", "--config", str(_config(folder)), "--out", str(out), *extra]
    return main(argv), out


@pytest.fixture(scope="module")
def field_run(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("fields")
    index = _plates(folder)
    rc, out = _fit(folder, index, "--tiles", "2")
    assert rc == 0
    return folder, out


def test_fit_cuts_and_keeps_crops(field_run):
    folder, run = field_run
    crops = pd.read_csv(run / "crops" / "crops.csv", dtype=str)
    with np.load(run / "crops" / "crops.npz") as z:
        images = z["images"]
    assert images.shape == (8, 48, 48, 5) and images.dtype == np.uint16  # 2 x 2 tiles of 2 fields
    assert sorted(set(crops["Metadata_Plate"])) == ["P1", "P2"]
    assert {"Metadata_Field", "Metadata_CropY", "Metadata_CropX"} <= set(crops.columns)
    # the DNA channel (ch5 on disk) is channel 0 of the crops, at the tile's position
    dna = tifffile.imread(FIELD / "r03c03f03p01-ch5sk1fk1fl1.tiff")
    row = crops.index[(crops["Metadata_CropY"] == "48") & (crops["Metadata_CropX"] == "0")][0]
    np.testing.assert_array_equal(images[row, ..., 0], dna[48:96, 0:48])
    counts = json.loads((run / "crops" / "source.json").read_text())["counts"]
    assert counts["fields"] == 2 and counts["crops"] == 8


def test_regenerate_writes_tiffs_that_fields_reads_back(field_run, capsys):
    folder, run = field_run
    for p in ("P1", "P2"):  # the run reads its crops, never the fields again
        shutil.rmtree(folder / p)
    out = folder / "regenerated"
    argv = ["regenerate", str(run), "--where", "Metadata_Plate=P1", "--set", "Metadata_Plate=P2"]
    assert main([*argv, "--limit", "3", "--out", str(out)]) == 0
    table = pd.read_csv(out / "regenerated.csv", dtype=str)
    assert len(table) == 3 and set(table["Metadata_Plate"]) == {"P2"}
    assert {"Metadata_source_row", "Metadata_Field", "Metadata_CropY", "Metadata_CropX"} <= set(table.columns)
    pixels = tifffile.imread(out / "images" / table["FileName_OrigMito"][0])
    assert pixels.dtype == np.uint16 and pixels.shape == (48, 48)
    capsys.readouterr()
    assert main(["fields", f"load_data:{out / 'regenerated.csv'}", "--channels", NAMES]) == 0
    assert "3 fields of 48x48 uint16" in capsys.readouterr().out


def test_crops_around_nuclei_drop_those_at_the_border(tmp_path):
    fields = open_fields(f"phenix:{FIELD}", CHANNELS)
    images, meta, counts = cut_crops(fields, DataConfig(crop=48), progress=False)
    assert images.shape == (1, 48, 48, 5) and counts["dropped_at_border"] == 0
    y, x = int(meta["Metadata_CropY"][0]), int(meta["Metadata_CropX"][0])
    dna = tifffile.imread(FIELD / "r03c03f03p01-ch5sk1fk1fl1.tiff")
    np.testing.assert_array_equal(images[0, ..., 0], dna[y : y + 48, x : x + 48])
    illum = tmp_path / "illum"
    illum.mkdir()
    for name in NAMES.split(","):
        np.save(illum / f"fov-BR00143976-C03-s3_Illum{name}.npy", np.full((96, 96), 2.0, np.float32))
    halved, _, _ = cut_crops(fields, DataConfig(crop=48, illum=str(illum)), progress=False)
    np.testing.assert_array_equal(halved, np.rint(images / 2.0).astype(np.uint16))


def _bad(folder: Path, capsys, *extra: str) -> str:
    capsys.readouterr()
    rc, out = _fit(folder, folder / "index.csv", *(extra or ("--tiles", "2")))
    err = capsys.readouterr().err.strip()
    assert rc == 2 and not out.exists(), err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_malformed_fields_one_line_exit_2(tmp_path, capsys):
    _plates(tmp_path)
    mito = tmp_path / "P2" / "r03c03f03p01-ch4sk1fk1fl1.tiff"
    saved = mito.read_bytes()
    mito.unlink()  # a missing channel
    assert "ch4sk1fk1fl1.tiff: no such file (channel Mito)" in _bad(tmp_path, capsys)
    mito.write_bytes(b"not a tiff at all")  # an unreadable file
    assert "channel Mito: unreadable or corrupt" in _bad(tmp_path, capsys)
    tifffile.imwrite(mito, np.zeros((96, 96), np.uint8))  # the wrong bit depth
    assert "8-bit; expected 16-bit" in _bad(tmp_path, capsys)
    mito.write_bytes(saved)
    wells = tmp_path / "platemap.csv"
    pd.DataFrame({"well": ["A01", "B02"], "compound": ["x", "y"]}).to_csv(wells, index=False)
    err = _bad(
        tmp_path, capsys, "--tiles", "2", "--join", f"{wells}:Metadata_Well=well"
    )  # a plate map that does not join
    assert "no row for well=C03" in err
    err = _bad(tmp_path, capsys, "--crop", "90")
    assert "no crop inside any field (2 nuclei too close to the border)" in err
    rc, _ = _fit(tmp_path, tmp_path / "index.csv", "--tiles", "2")
    assert rc == 0  # the same files, repaired, fit


def test_fit_on_a_phenix_folder_names_channels_as_its_map(tmp_path):
    """``fields:phenix:DIR`` straight, channel map as --channels: the crops carry the map's names."""
    shutil.copytree(FIELD, tmp_path / "P1")
    out = tmp_path / "run"
    argv = ["fit", "--data", f"fields:phenix:{tmp_path / 'P1'}", "--channels", CHANNELS, "--tiles", "2"]
    argv += [
        "--factors",
        "Metadata_Site",
        "--size",
        "16",
        "--config",
        str(_config(tmp_path)),
        "--out",
        str(out),
    ]
    rc = main(argv)  # one site: a factor needs two values
    assert rc == 2 and not out.exists()
    shutil.copytree(FIELD, tmp_path / "P2")
    index = tmp_path / "index.csv"
    assert (
        main(
            [
                "fields",
                f"phenix:{tmp_path / 'P1'}",
                f"phenix:{tmp_path / 'P2'}",
                "--channels",
                CHANNELS,
                "--out",
                str(index),
            ]
        )
        == 0
    )
    argv = ["fit", "--data", f"fields:load_data:{index}", "--tiles", "2", "--factors", "Metadata_Plate"]
    argv += ["--size", "16", "--config", str(_config(tmp_path)), "--out", str(out)]
    assert main(argv) == 0  # load_data's default channels: DNA, ER, RNA, AGP, Mito
    source = json.loads((out / "crops" / "source.json").read_text())
    assert source["channels"] == NAMES.split(",")
    regen = tmp_path / "regen"
    assert (
        main(["regenerate", str(out), "--set", "Metadata_Plate=P2", "--limit", "1", "--out", str(regen)]) == 0
    )
    assert "FileName_OrigRNA" in pd.read_csv(regen / "regenerated.csv").columns
