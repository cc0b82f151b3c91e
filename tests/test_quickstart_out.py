"""``factordiff quickstart --out DIR`` replaces only an earlier quickstart's output, never another run."""

import json

import pytest
from conftest import tiny_config

import factordiff.quickstart
from factordiff import FactordiffError
from factordiff.chem import morgan, tanimoto
from factordiff.cli import main
from factordiff.data.cellsim import COMPOUNDS
from factordiff.models.runs import check_run_folder
from factordiff.quickstart import MARKER, _prepare_out, quickstart, quickstart_config


def fit_run(folder):
    """A folder that looks like a finished ``factordiff fit`` run."""
    (folder / "model").mkdir(parents=True)
    (folder / "run_config.json").write_text("{}")
    (folder / "model" / "denoiser.safetensors").write_bytes(b"40 minutes of training")
    return folder


def contents(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def cheap_quickstart(monkeypatch):
    """quickstart with evaluation, report and fit replaced by stubs (the pretrained copy is real)."""
    calls = {}
    monkeypatch.setattr(factordiff.quickstart, "evaluate_run", lambda out, progress=True: {"stub": True})
    monkeypatch.setattr(factordiff.quickstart, "build_report", lambda out: out / "report.html")

    def fake_fit(cfg, out, progress=True, keep=()):
        check_run_folder(cfg, out, False, keep)  # fit's own check: the marker alone must pass
        calls["marker_before_fit"] = (out / MARKER).is_file()
        (out / "run_config.json").write_text("{}")
        if calls.get("crash"):
            raise KeyboardInterrupt

    monkeypatch.setattr(factordiff.quickstart, "fit", fake_fit)
    return calls


def test_cli_refuses_to_delete_a_fit_run(tmp_path, capsys, cheap_quickstart):
    run = fit_run(tmp_path / "run")
    before = contents(run)
    assert main(["quickstart", "--out", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(run) in err[0] and "not a quickstart's output" in err[0]
    assert contents(run) == before


def test_prepare_out_refuses_any_other_folder_and_files(tmp_path):
    other = tmp_path / "notes"
    other.mkdir()
    (other / "a.txt").write_text("mine")
    with pytest.raises(FactordiffError, match="not a quickstart's output"):
        _prepare_out(other)
    assert (other / "a.txt").read_text() == "mine"
    (tmp_path / "file").write_text("x")
    with pytest.raises(FactordiffError, match="not a folder"):
        _prepare_out(tmp_path / "file")


def test_prepare_out_replaces_a_quickstart_output_and_accepts_empty_or_absent(tmp_path):
    old = fit_run(tmp_path / "old")
    (old / MARKER).write_text("{}")
    _prepare_out(old)
    assert old.is_dir() and not any(old.iterdir())
    _prepare_out(old)  # empty
    _prepare_out(tmp_path / "new" / "deep")  # absent
    assert (tmp_path / "new" / "deep").is_dir()


def test_fit_accepts_a_folder_holding_only_the_marker_when_told(tmp_path):
    cfg = tiny_config()
    (tmp_path / MARKER).write_text("{}")
    assert check_run_folder(cfg, tmp_path, False, keep=(MARKER,)) is False
    with pytest.raises(FactordiffError, match="not empty"):
        check_run_folder(cfg, tmp_path, False)


def test_quickstart_marks_its_output_and_replaces_it_next_time(tmp_path, cheap_quickstart):
    out = tmp_path / "qs"
    quickstart(out, progress=False)
    marker = json.loads((out / MARKER).read_text())
    assert marker["start"] == "pretrained" and marker["finished"] is True
    assert (out / "model" / "config.json").is_file()
    (out / "stale.txt").write_text("from the first quickstart")
    cheap_quickstart["crash"] = True
    with pytest.raises(KeyboardInterrupt):  # a from-scratch quickstart interrupted during fit
        quickstart(out, minutes=1.0, progress=False)
    assert cheap_quickstart["marker_before_fit"] and not (out / "stale.txt").exists()
    assert json.loads((out / MARKER).read_text())["finished"] is False
    cheap_quickstart["crash"] = False
    quickstart(out, minutes=1.0, progress=False)  # the interrupted output is still recognised and replaced
    assert json.loads((out / MARKER).read_text()) == {
        **marker,
        "start": "scratch",
        "pretrained": None,
        "minutes": 1.0,
    }
    assert not (out / "model").exists()


def test_cellsim_quickstart_holds_out_unseen_compounds_with_analogues():
    """The shipped cell model's split: three compound x batch combinations and at least four
    compounds held out entirely, analogues of training compounds among them."""
    cfg = quickstart_config(data="cellsim")
    whole = [w.split("=")[1] for w in cfg.split.where if "," not in w]
    assert len(whole) >= 4 and all(w.startswith("compound=") for w in cfg.split.where)
    training = [c for c in COMPOUNDS if c not in whole and c != "DMSO"]
    nearest = tanimoto(morgan([COMPOUNDS[c] for c in whole]), morgan([COMPOUNDS[c] for c in training])).max(1)
    assert (nearest >= 0.5).sum() >= 2  # caffeine (theobromine), camptothecin (its hydroxy analogue)
    with pytest.raises(FactordiffError, match="--data nope"):
        quickstart_config(data="nope")


def test_quickstart_cellsim_starts_from_the_shipped_cell_model(tmp_path, cheap_quickstart):
    out = tmp_path / "qs"
    assert main(["quickstart", "--data", "cellsim", "--out", str(out)]) == 0
    marker = json.loads((out / MARKER).read_text())
    assert marker["data"] == "cellsim" and marker["start"] == "pretrained"
    assert (out / "model" / "config.json").is_file() and (out / "oracle" / "oracle.safetensors").is_file()
    assert json.loads((out / "run_config.json").read_text())["data"]["source"] == "cellsim"
