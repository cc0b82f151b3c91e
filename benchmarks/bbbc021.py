"""BBBC021 per-well mean profiles joined with their compounds, concentrations, weeks and MoAs into
one profile table with ``Metadata_*`` columns (what ``factordiff fit --data profiles:`` reads).

    python benchmarks/bbbc021.py FOLDER --out bbbc021.csv.gz

FOLDER holds ``ljosa_jbiomolscreen_2013_per_well_mean.csv.gz``, ``BBBC021_v1_image.csv.gz`` and
``BBBC021_v1_moa.csv`` (cytominergallery's ``inst/extdata``). The week (the plate name's prefix,
``Week4_27481`` -> ``Week4``) is the batch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd


def bbbc021_table(folder: Path) -> pd.DataFrame:
    folder = Path(folder)
    prof = pd.read_csv(folder / "ljosa_jbiomolscreen_2013_per_well_mean.csv.gz")
    img = pd.read_csv(folder / "BBBC021_v1_image.csv.gz")
    moa = pd.read_csv(folder / "BBBC021_v1_moa.csv")
    wells = (
        img.groupby(["Image_Metadata_Plate_DAPI", "Image_Metadata_Well_DAPI"])
        .agg(
            Metadata_Compound=("Image_Metadata_Compound", "first"),
            Metadata_Concentration=("Image_Metadata_Concentration", "first"),
        )
        .reset_index()
        .rename(
            columns={
                "Image_Metadata_Plate_DAPI": "Metadata_Plate",
                "Image_Metadata_Well_DAPI": "Metadata_Well",
            }
        )
    )
    prof = prof.rename(
        columns={"Image_Metadata_Plate": "Metadata_Plate", "Image_Metadata_Well": "Metadata_Well"}
    )
    table = wells.merge(prof, on=["Metadata_Plate", "Metadata_Well"], how="inner")
    table.insert(2, "Metadata_Batch", table["Metadata_Plate"].str.split("_").str[0])
    moa = moa.rename(
        columns={
            "compound": "Metadata_Compound",
            "concentration": "Metadata_Concentration",
            "moa": "Metadata_MoA",
        }
    )
    table = table.merge(moa, on=["Metadata_Compound", "Metadata_Concentration"], how="left")
    table["Metadata_MoA"] = table["Metadata_MoA"].fillna("unknown")
    meta = [c for c in table.columns if c.startswith("Metadata_")]
    return table[meta + [c for c in table.columns if c not in meta]]


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    t = bbbc021_table(Path(a.folder))
    t.to_csv(a.out, index=False)
    print(f"wrote {a.out}: {len(t)} wells, {t.shape[1]} columns")
