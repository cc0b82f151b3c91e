"""Bad input gets one clear line on stderr and exit code 2, with nothing half-written."""

import subprocess
import sys

import h5py
import numpy as np
import pytest
from PIL import Image

from factordiff.cli import main
from factordiff.data.shapes import replica


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *fragments):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for f in fragments:
        assert f in lines[0], (f, lines[0])


@pytest.fixture(scope="module")
def source_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "src.png"
    Image.fromarray(replica(16, n=1, seed=4).images[0]).save(path)
    return path


def test_counterfactual_set_and_from(tiny_run, source_png, tmp_path, capsys):
    out = tmp_path / "cf.png"
    code, _, err = run_cli(
        capsys,
        "counterfactual",
        str(tiny_run),
        "--image",
        str(source_png),
        "--set",
        "object_hue=0.3",
        "--out",
        str(out),
        "--steps",
        "3",
    )
    assert code == 0, err
    assert np.asarray(Image.open(out)).shape == (16, 16, 3)
    code, _, err = run_cli(
        capsys,
        "counterfactual",
        str(tiny_run),
        "--image",
        str(source_png),
        "--from",
        str(source_png),
        "--factor",
        "shape",
        "--out",
        str(tmp_path / "cf2.png"),
        "--steps",
        "3",
    )
    assert code == 0, err


def test_counterfactual_strength_reaches_the_edit(tiny_run, source_png, tmp_path, capsys):
    """--strength changes how far the source is inverted: another image at 0.3 than at 1; out of
    (0, 1] it is refused with one line."""
    outs = {}
    for s in ("0.3", "1"):
        outs[s] = tmp_path / f"s{s}.png"
        code, _, err = run_cli(
            capsys,
            "counterfactual",
            str(tiny_run),
            "--image",
            str(source_png),
            "--set",
            "object_hue=0.3",
            "--out",
            str(outs[s]),
            "--steps",
            "3",
            "--strength",
            s,
        )
        assert code == 0, err
    assert not np.array_equal(np.asarray(Image.open(outs["0.3"])), np.asarray(Image.open(outs["1"])))
    for bad in ("0", "1.5", "nan"):
        with pytest.raises(SystemExit) as exit_:
            run_cli(
                capsys,
                "counterfactual",
                str(tiny_run),
                "--image",
                str(source_png),
                "--set",
                "object_hue=0.3",
                "--out",
                str(tmp_path / "x.png"),
                "--strength",
                bad,
            )
        assert_one_line_error(exit_.value.code, capsys.readouterr().err, "--strength", "(0, 1]")
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize(
    "setting,fragments",
    [
        ("colour=0.3", ["unknown factor 'colour'", "object_hue"]),
        ("object_hue=0.35", ["factor object_hue: unknown value '0.35'", "0.0, 0.1"]),
        ("object_hue", ["expected FACTOR=VALUE"]),
    ],
)
def test_bad_set_values(tiny_run, source_png, tmp_path, capsys, setting, fragments):
    out = tmp_path / "x.png"
    code, _, err = run_cli(
        capsys,
        "counterfactual",
        str(tiny_run),
        "--image",
        str(source_png),
        "--set",
        setting,
        "--out",
        str(out),
    )
    assert_one_line_error(code, err, *fragments)
    assert not out.exists()


def test_missing_and_corrupt_images(tiny_run, tmp_path, capsys):
    code, _, err = run_cli(
        capsys,
        "counterfactual",
        str(tiny_run),
        "--image",
        str(tmp_path / "nope.png"),
        "--set",
        "shape=cube",
        "--out",
        str(tmp_path / "o.png"),
    )
    assert_one_line_error(code, err, "nope.png", "no such image file")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    code, _, err = run_cli(
        capsys,
        "counterfactual",
        str(tiny_run),
        "--image",
        str(bad),
        "--set",
        "shape=cube",
        "--out",
        str(tmp_path / "o.png"),
    )
    assert_one_line_error(code, err, "bad.png")
    rgba = tmp_path / "gray.png"
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(rgba)
    code, _, err = run_cli(
        capsys,
        "counterfactual",
        str(tiny_run),
        "--image",
        str(rgba),
        "--set",
        "shape=cube",
        "--out",
        str(tmp_path / "o.png"),
    )
    assert_one_line_error(code, err, "gray.png", "1 channel(s); this model expects 3")


def test_run_folder_without_model(tmp_path, source_png, capsys):
    code, _, err = run_cli(
        capsys,
        "counterfactual",
        str(tmp_path),
        "--image",
        str(source_png),
        "--set",
        "shape=cube",
        "--out",
        str(tmp_path / "o.png"),
    )
    assert_one_line_error(code, err, "not a run folder")
    code, _, err = run_cli(capsys, "evaluate", str(tmp_path))
    assert_one_line_error(code, err, "not a run folder")


def write_table(folder, sizes=None, channels=3):
    (folder / "img").mkdir(parents=True)
    rows = ["file,colour,size"]
    for i in range(6):
        s = sizes[i] if sizes else 16
        img = np.full((s, s, channels), 40 * i, np.uint8)
        Image.fromarray(img if channels == 3 else img[..., 0]).save(folder / "img" / f"{i}.png")
        rows.append(f"img/{i}.png,{'red' if i % 2 else 'blue'},{i % 3}")
    (folder / "factors.csv").write_text("\n".join(rows) + "\n")
    return folder / "factors.csv"


def test_fit_table_missing_column(tmp_path, capsys):
    csv = write_table(tmp_path / "t")
    out = tmp_path / "run"
    code, _, err = run_cli(
        capsys, "fit", "--data", f"table:{csv}", "--factors", "colour,weight", "--out", str(out)
    )
    assert_one_line_error(code, err, "factors.csv", "no factor column 'weight'")
    assert not out.exists()


def test_fit_table_mixed_sizes(tmp_path, capsys):
    csv = write_table(tmp_path / "t", sizes=[16, 16, 16, 8, 16, 16])
    code, _, err = run_cli(capsys, "fit", "--data", f"table:{csv}", "--out", str(tmp_path / "run"))
    assert_one_line_error(code, err, "3.png", "8x8", "expected 16x16")
    assert not (tmp_path / "run").exists()


def test_fit_h5_without_keys(tmp_path, capsys):
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f.create_dataset("labels", data=np.zeros((2, 6)))
    code, _, err = run_cli(capsys, "fit", "--data", f"h5:{tmp_path / 's.h5'}", "--out", str(tmp_path / "run"))
    assert_one_line_error(code, err, "s.h5", "missing dataset 'images'")
    assert not (tmp_path / "run").exists()


def test_unknown_config_field_names_it(tmp_path, capsys):
    (tmp_path / "c.json").write_text('{"denoiser": {"learning_rate": 1}}')
    code, _, err = run_cli(
        capsys, "fit", "--config", str(tmp_path / "c.json"), "--out", str(tmp_path / "run")
    )
    assert_one_line_error(code, err, "config.denoiser.learning_rate: unknown field")


def test_entry_point_prints_no_traceback(tmp_path):
    p = subprocess.run(
        [sys.executable, "-m", "factordiff", "report", str(tmp_path)], capture_output=True, text=True
    )
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    assert "no metrics.json" in p.stderr


def test_run_folder_with_config_but_no_trained_model(tiny_run, tmp_path, source_png, capsys):
    import shutil

    shutil.copy(tiny_run / "run_config.json", tmp_path / "run_config.json")
    for argv in (
        ["evaluate", str(tmp_path)],
        [
            "counterfactual",
            str(tmp_path),
            "--image",
            str(source_png),
            "--set",
            "shape=cube",
            "--out",
            str(tmp_path / "o.png"),
        ],
    ):
        code, _, err = run_cli(capsys, *argv)
        assert_one_line_error(code, err, "no trained model", "--resume")
