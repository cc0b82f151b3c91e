"""Cell Painting image readers: a real field of view in the Phenix naming (tests/data, CC0), and
small files in the load_data, RxRx, BBBC021 and .npy layouts that the tests write; crops around
nuclei, illumination correction, per-plate intensity scaling, and every malformed input refused
with one line (exit code 2 through the CLI)."""

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from factordiff import FactordiffError
from factordiff.cli import main
from factordiff.data.cells import (
    CELL_PAINTING,
    PlateScaler,
    bbbc021_fields,
    correct_illumination,
    crop,
    illumination_functions,
    join_metadata,
    load_data_fields,
    npy_fields,
    nucleus_centres,
    open_fields,
    phenix_fields,
    rxrx_fields,
)

FOV = Path(__file__).parent / "data" / "fov-BR00143976-C03-s3"
# the plate's channel map (WayScience pediatric cancer atlas): ch5 DNA, ch2 ER, ch6 RNA, ch3 AGP,
# ch4 Mito (ch1 brightfield)
CHANNEL_MAP = {"DNA": 5, "ER": 2, "RNA": 6, "AGP": 3, "Mito": 4}


def test_real_field_reads_in_the_channel_order_of_the_map_with_its_plate_maps():
    fields = phenix_fields(FOV, CHANNEL_MAP, plate="BR00143976")
    assert len(fields) == 1 and fields.channels == CELL_PAINTING
    field = fields.field(0, bit_depth=16)
    assert field.shape == (5, 96, 96) and field.dtype == np.uint16
    for c, ch in enumerate(CHANNEL_MAP.values()):  # channel c is the file of its ch number, not the c-th file
        assert np.array_equal(field[c], tifffile.imread(FOV / f"r03c03f03p01-ch{ch}sk1fk1fl1.tiff"))
    assert fields.metadata["Metadata_Well"][0] == "C03" and fields.metadata["Metadata_Site"][0] == "3"
    fields = join_metadata(fields, FOV / "Assay_Plate1_platemap.csv", {"Metadata_Well": "well"})
    fields = join_metadata(fields, FOV / "Barcode_platemap_pilot_data.csv", {"Metadata_Plate": "barcode"})
    assert (
        fields.metadata["Metadata_cell_line"][0] == "DAOY"
        and fields.metadata["Metadata_time_point"][0] == "24"
    )
    # the nucleus in the crop is found where the DNA channel is bright
    ((y, x),) = nucleus_centres(field[0])
    assert field[0, y, x] > np.percentile(field[0], 90)


def test_phenix_folder_with_a_missing_channel_is_refused_by_name(tmp_path):
    folder = tmp_path / "plate"
    shutil.copytree(FOV, folder)
    (folder / "r03c03f03p01-ch4sk1fk1fl1.tiff").unlink()
    with pytest.raises(FactordiffError, match=r"well C03 field 3 plane 1: no file for channel Mito \(ch4\)"):
        phenix_fields(folder, CHANNEL_MAP)
    with pytest.raises(FactordiffError, match="Phenix naming"):
        phenix_fields(tmp_path, CHANNEL_MAP)


def _tiff(path: Path, seed: int, dtype=np.uint16, size=(32, 32)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(
        path, np.random.default_rng(seed).integers(0, 4000 if dtype == np.uint16 else 250, size).astype(dtype)
    )


def _load_data(tmp_path: Path, rows: int = 3) -> Path:
    recs = []
    for i in range(rows):
        rec = {
            "Metadata_Source": "source_4",
            "Metadata_Batch": "2021_04_26",
            "Metadata_Plate": f"P{i % 2}",
            "Metadata_Well": f"A0{i + 1}",
            "Metadata_Site": "1",
        }
        for c, name in enumerate(CELL_PAINTING):
            _tiff(tmp_path / "images" / f"f{i}_{name}.tiff", 10 * i + c)
            rec[f"FileName_Orig{name}"] = f"f{i}_{name}.tiff"
            rec[f"PathName_Orig{name}"] = "images"
        recs.append(rec)
    path = tmp_path / "load_data.csv"
    pd.DataFrame(recs).to_csv(path, index=False)
    return path


def test_load_data_table_csv_and_parquet(tmp_path):
    path = _load_data(tmp_path)
    fields = load_data_fields(path)
    assert (
        len(fields) == 3
        and fields.channels == CELL_PAINTING
        and set(fields.metadata) >= {"Metadata_Plate", "Metadata_Well", "Metadata_Site"}
    )
    assert np.array_equal(fields.field(2)[3], tifffile.imread(tmp_path / "images" / "f2_AGP.tiff"))
    pd.read_csv(path).to_parquet(tmp_path / "load_data.parquet")
    assert np.array_equal(load_data_fields(tmp_path / "load_data.parquet").field(1), fields.field(1))
    # the order of --channels is the order of the array
    assert np.array_equal(load_data_fields(path, ["Mito", "DNA"]).field(0)[0], fields.field(0)[4])


@pytest.mark.parametrize(
    "damage, message",
    [
        ("drop_column", "missing column FileName_OrigRNA"),
        ("missing_file", r"f1_ER.tiff: no such file \(channel ER\)"),
        ("eight_bit", r"channel DNA is 8-bit; expected 16-bit"),
        ("corrupt", r"channel Mito holds no pixels \(empty or corrupt file\)"),
        ("truncated", r"channel ER: unreadable or corrupt"),
        ("rgb", r"channel AGP holds an array of shape \(32, 32, 3\)"),
        ("size", r"channel RNA is 16x16 pixels; expected 32x32"),
        ("remote", "remote path; factordiff downloads nothing"),
    ],
)
def test_malformed_load_data_inputs_get_one_line_and_exit_code_2(tmp_path, capsys, damage, message):
    path = _load_data(tmp_path)
    df = pd.read_csv(path)
    img = tmp_path / "images"
    if damage == "drop_column":
        df = df.drop(columns=["FileName_OrigRNA"])
    elif damage == "missing_file":
        (img / "f1_ER.tiff").unlink()
    elif damage == "eight_bit":
        _tiff(img / "f0_DNA.tiff", 0, np.uint8)
    elif damage == "corrupt":
        (img / "f2_Mito.tiff").write_bytes(b"II*\x00garbage")
    elif damage == "truncated":
        data = (img / "f1_ER.tiff").read_bytes()
        (img / "f1_ER.tiff").write_bytes(data[: len(data) // 2])
    elif damage == "rgb":
        tifffile.imwrite(img / "f0_AGP.tiff", np.zeros((32, 32, 3), np.uint16))
    elif damage == "size":
        _tiff(img / "f1_RNA.tiff", 0, size=(16, 16))
    elif damage == "remote":
        df.loc[1, "PathName_OrigDNA"] = "s3://cellpainting-gallery/cpg0016-jump/source_4/images"
    df.to_csv(path, index=False)
    out = tmp_path / "index.csv"
    assert main(["fields", f"load_data:{path}", "--bit-depth", "16", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    assert err[0].startswith("factordiff fields: error:") and re.search(message, err[0]), err[0]
    assert not out.exists()  # nothing half-written


def test_fields_command_writes_an_index_that_reads_back(tmp_path, capsys):
    path = _load_data(tmp_path)
    out = tmp_path / "index.csv"
    assert main(["fields", f"load_data:{path}", "--channels", "DNA,ER,RNA,AGP,Mito", "--out", str(out)]) == 0
    assert "3 fields of 32x32 uint16" in capsys.readouterr().out
    again = load_data_fields(out)
    assert np.array_equal(again.field(2), load_data_fields(path).field(2)) and list(
        again.metadata["Metadata_Well"]
    ) == ["A01", "A02", "A03"]
    assert main(["fields", f"load_data:{path}", "--channels", "DNA=5"]) == 2
    assert main(["fields", f"phenix:{FOV}"]) == 2  # a Phenix folder needs its channel map
    assert "--channels is required" in capsys.readouterr().err


def test_rxrx_layout_reads_8_bit_pngs_by_channel_number(tmp_path):
    root = tmp_path / "rxrx1"
    rows = [
        {
            "site_id": "HEPG2-01_1_B02_1",
            "well_id": "HEPG2-01_1_B02",
            "cell_type": "HEPG2",
            "dataset": "train",
            "experiment": "HEPG2-01",
            "plate": 1,
            "well": "B02",
            "site": 1,
            "well_type": "treatment",
            "sirna": "s21721",
            "sirna_id": 855,
        }
    ]
    root.mkdir()
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    for w in range(1, 7):
        p = root / "images" / "HEPG2-01" / "Plate1" / f"B02_s1_w{w}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((16, 16), 10 * w, np.uint8)).save(p)
    fields = rxrx_fields(root / "metadata.csv")
    f = fields.field(0, bit_depth=8)
    assert f.dtype == np.uint8 and list(f[:, 0, 0]) == [10, 20, 30, 40, 50, 60]
    assert (
        fields.channels == ("DNA", "ER", "Actin", "RNA", "Mito", "Membrane")
        and fields.metadata["Metadata_sirna"][0] == "s21721"
    )
    assert list(rxrx_fields(root / "metadata.csv", {"Mito": 5, "DNA": 1}).field(0)[:, 0, 0]) == [50, 10]
    with pytest.raises(FactordiffError, match="is 8-bit; expected 16-bit"):
        fields.field(0, bit_depth=16)
    (root / "images" / "HEPG2-01" / "Plate1" / "B02_s1_w6.png").unlink()
    with pytest.raises(FactordiffError, match=r"B02_s1_w6.png: no such file \(channel Membrane\)"):
        fields.field(0)


def test_bbbc021_image_table_and_npy_crops(tmp_path):
    rec = {
        "TableNumber": 1,
        "ImageNumber": 1,
        "Image_Metadata_Plate_DAPI": "Week4_27481",
        "Image_Metadata_Well_DAPI": "B02",
        "Replicate": 1,
        "Image_Metadata_Compound": "taxol",
        "Image_Metadata_Concentration": "0.3",
    }
    for k, stain in enumerate(("DAPI", "Tubulin", "Actin")):
        _tiff(tmp_path / "Week4_27481" / f"w_{stain}.tif", k)
        rec[f"Image_FileName_{stain}"], rec[f"Image_PathName_{stain}"] = f"w_{stain}.tif", "Week4_27481"
    pd.DataFrame([rec]).to_csv(tmp_path / "BBBC021_v1_image.csv", index=False)
    pd.DataFrame([{"compound": "taxol", "concentration": "0.3", "moa": "Microtubule stabilizers"}]).to_csv(
        tmp_path / "BBBC021_v1_moa.csv", index=False
    )
    fields = bbbc021_fields(tmp_path / "BBBC021_v1_image.csv")
    fields = join_metadata(
        fields,
        tmp_path / "BBBC021_v1_moa.csv",
        {"Metadata_Compound": "compound", "Metadata_Concentration": "concentration"},
    )
    assert fields.channels == ("DNA", "Tubulin", "Actin") and fields.metadata["Metadata_Batch"][0] == "Week4"
    assert fields.metadata["Metadata_moa"][0] == "Microtubule stabilizers" and fields.field(0).shape == (
        3,
        32,
        32,
    )
    np.save(tmp_path / "crop0.npy", fields.field(0))
    np.save(tmp_path / "crop1.npy", np.zeros((5, 8, 8), np.uint16))
    pd.DataFrame({"path": ["crop0.npy", "crop1.npy"], "compound": ["taxol", "DMSO"]}).to_csv(
        tmp_path / "crops.csv", index=False
    )
    crops = npy_fields(tmp_path / "crops.csv", ["DNA", "Tubulin", "Actin"])
    assert (
        np.array_equal(crops.field(0), fields.field(0)) and crops.metadata["Metadata_compound"][1] == "DMSO"
    )
    with pytest.raises(FactordiffError, match=r"crop1.npy: array of shape \(5, 8, 8\); expected \(3, H, W\)"):
        crops.field(1)
    with pytest.raises(FactordiffError, match="no row for compound=taxol, concentration=0.3"):
        pd.DataFrame([{"compound": "DMSO", "concentration": "0", "moa": "control"}]).to_csv(
            tmp_path / "moa2.csv", index=False
        )
        join_metadata(
            bbbc021_fields(tmp_path / "BBBC021_v1_image.csv"),
            tmp_path / "moa2.csv",
            {"Metadata_Compound": "compound", "Metadata_Concentration": "concentration"},
        )


def test_crops_around_nuclei_illumination_and_plate_scaling(tmp_path):
    yy, xx = np.mgrid[:64, :64]
    dna = (
        300
        + 5000 * (((yy - 10) ** 2 + (xx - 12) ** 2) < 25)
        + 5000 * (((yy - 40) ** 2 + (xx - 50) ** 2) < 36)
    )
    field = np.stack([dna, dna // 2]).astype(np.uint16)
    centres = nucleus_centres(field[0], min_area=20)
    assert sorted(map(tuple, centres)) == [(10, 12), (40, 50)]
    piece, corner = crop(field, (40, 50), 32)
    assert piece.shape == (2, 32, 32) and corner == (24, 32)  # shifted inside the 64x64 field
    assert crop(field, (2, 2), 16)[1] == (0, 0)
    for name, value in (("DNA", 2.0), ("ER", 4.0)):
        np.save(tmp_path / f"P1_Illum{name}.npy", np.full((64, 64), value, np.float32))
    fn = illumination_functions(tmp_path, "P1", ["DNA", "ER"])
    assert np.allclose(correct_illumination(field, fn)[1], field[1] / 4.0)
    with pytest.raises(FactordiffError, match="P2_IllumDNA.npy: no illumination function"):
        illumination_functions(tmp_path, "P2", ["DNA"])
    scaler = PlateScaler(low=0, high=100).fit(["P1"], [field])
    out = scaler("P1", field)
    assert out.dtype == np.uint8 and out[0].min() == 0 and out[0].max() == 255
    with pytest.raises(FactordiffError, match="plate P9: no training field"):
        scaler("P9", field)


def test_open_fields_refuses_unknown_kinds():
    with pytest.raises(FactordiffError, match="expected one of phenix:PATH"):
        open_fields("tiffs:somewhere")
