"""``factordiff fit --data table:factors.csv`` on a folder of PNGs that factordiff did not make."""

import json

import numpy as np
from conftest import tiny_overrides
from PIL import Image, ImageDraw

from factordiff.cli import main


def draw_dataset(folder, n=96, size=16, seed=0):
    """Coloured squares or discs on grey or blue backgrounds, drawn with PIL, and a user-style CSV."""
    rng = np.random.default_rng(seed)
    (folder / "pngs").mkdir(parents=True)
    colours = {"red": (220, 40, 40), "green": (40, 200, 60), "yellow": (230, 220, 40)}
    backgrounds = {"grey": (128, 128, 128), "blue": (30, 40, 160)}
    lines = ["well,form,colour,background"]
    for i in range(n):
        form, colour, bg = (
            rng.choice(["square", "disc"]),
            rng.choice(list(colours)),
            rng.choice(list(backgrounds)),
        )
        img = Image.new("RGB", (size, size), backgrounds[bg])
        box = (3, 3, size - 4, size - 4)
        (ImageDraw.Draw(img).rectangle if form == "square" else ImageDraw.Draw(img).ellipse)(
            box, fill=colours[colour]
        )
        img.save(folder / "pngs" / f"w{i:03d}.png")
        lines.append(f"pngs/w{i:03d}.png,{form},{colour},{bg}")
    (folder / "factors.csv").write_text("\n".join(lines) + "\n")
    return folder / "factors.csv"


def config_file(path):
    over = tiny_overrides(**{"split.kind": "none"})
    data = {}
    for key, value in over.items():
        section, name = key.split(".")
        if section != "data":
            data.setdefault(section, {})[name] = value
    path.write_text(json.dumps(data))
    return path


def test_fit_evaluate_and_edit_a_user_table(tmp_path, capsys):
    csv = draw_dataset(tmp_path / "assay")
    cfg = config_file(tmp_path / "tiny.json")
    run = tmp_path / "run"
    assert main(["fit", "--data", f"table:{csv}", "--config", str(cfg), "--out", str(run)]) == 0, (
        capsys.readouterr().err
    )
    meta = json.loads((run / "model" / "config.json").read_text())
    assert [f["name"] for f in meta["factors"]] == ["form", "colour", "background"]
    assert meta["shape"]["size"] == 16 and meta["train_images"] == 96
    out = tmp_path / "edit.png"
    assert (
        main(
            [
                "counterfactual",
                str(run),
                "--image",
                str(tmp_path / "assay" / "pngs" / "w000.png"),
                "--set",
                "colour=yellow",
                "--out",
                str(out),
                "--steps",
                "3",
            ]
        )
        == 0
    )
    assert np.asarray(Image.open(out)).shape == (16, 16, 3)
    assert main(["evaluate", str(run)]) == 0, capsys.readouterr().err
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["counterfactual"]["heldout"] is None  # nothing held out
    assert set(metrics["counterfactual"]["seen"]["effectiveness_by_factor"]) == {
        "form",
        "colour",
        "background",
    }
    assert main(["report", str(run)]) == 0
    assert "Counterfactuals" in (run / "report.html").read_text()
