import json

import pytest

from factordiff import FactordiffError
from factordiff.config import RunConfig, load_config


def test_defaults_and_json_round_trip(tmp_path):
    cfg = load_config()
    assert isinstance(cfg, RunConfig) and cfg.denoiser.prediction_type == "v_prediction"
    cfg.save(tmp_path / "c.json")
    assert load_config(tmp_path / "c.json") == cfg


@pytest.mark.parametrize(
    "suffix,text",
    [
        (".json", '{"train": {"seed": 3}, "split": {"kind": "composition", "factors": ["a", "b"]}}'),
        (".toml", '[train]\nseed = 3\n[split]\nkind = "composition"\nfactors = ["a", "b"]\n'),
        (".yaml", "train:\n  seed: 3\nsplit:\n  kind: composition\n  factors: [a, b]\n"),
    ],
)
def test_formats(tmp_path, suffix, text):
    (tmp_path / f"c{suffix}").write_text(text)
    cfg = load_config(tmp_path / f"c{suffix}")
    assert cfg.train.seed == 3 and cfg.split.factors == ("a", "b")


@pytest.mark.parametrize(
    "data,message",
    [
        ({"train": {"sed": 3}}, r"config.train.sed: unknown field"),
        ({"trian": {}}, r"config.trian: unknown field"),
        (
            {"data": {"\n": None}},
            r"^config.data.'\\n': unknown field",
        ),  # a key that is not printable is shown quoted, on one line
        ({"train": {"seed": "3"}}, r"config.train.seed: expected an integer, got '3'"),
        ({"denoiser": {"lr": "fast"}}, r"config.denoiser.lr: expected a number, got 'fast'"),
        ({"autoencoder": {"enabled": "yes"}}, r"config.autoencoder.enabled: expected true or false"),
        ({"denoiser": {"prediction_type": "x0"}}, r"config.denoiser.prediction_type: expected one of"),
        (
            {"denoiser": {"block_out_channels": [16, "x"]}},
            r"config.denoiser.block_out_channels\[1\]: expected an integer",
        ),
        ({"distill": {"steps": 0}}, r"config.distill.steps: expected a positive number"),
        ({"train": 5}, r"config.train: expected a mapping"),
        ({"split": {"kind": "diagonal"}}, r"config.split.kind: expected one of"),
        (
            {"evaluate": {"edit_strength": 1.5}},
            r"config.evaluate.edit_strength: expected a share of the noise schedule in \(0, 1\], got 1.5",
        ),
        ({"evaluate": {"edit_strength": 0}}, r"config.evaluate.edit_strength: expected a share"),
        ({"evaluate": {"edit_inversion": "exact"}}, r"config.evaluate.edit_inversion: expected one of"),
        (
            {"train": {"compile": True, "precision": "bf16"}, "denoiser": {"adapter": "tokens"}},
            r"config.train.compile: not with train.precision bf16 and the tokens adapter",
        ),
    ],
)
def test_bad_fields_are_named(tmp_path, data, message):
    (tmp_path / "c.json").write_text(json.dumps(data))
    with pytest.raises(FactordiffError, match=message):
        load_config(tmp_path / "c.json")


def test_bad_syntax_names_the_file(tmp_path):
    (tmp_path / "c.json").write_text("{train: ")
    with pytest.raises(FactordiffError, match=r"c.json: not valid JSON"):
        load_config(tmp_path / "c.json")
    (tmp_path / "c.ini").write_text("")
    with pytest.raises(FactordiffError, match=r"expected a .json, .toml, .yaml or .yml file"):
        load_config(tmp_path / "c.ini")


def test_source_defaults_fill_only_unset_fields(tmp_path):
    """cellsim edits invert through the whole schedule, its distiller and oracle train longer unless
    the config says otherwise; other sources keep 0.65 and the distiller's 1,500 steps."""
    assert load_config(None, {"data.source": "cellsim"}).evaluate.edit_strength == 1.0
    assert load_config(None, {"data.source": "cellsim"}).evaluate.oracle_steps == 6000
    assert load_config(None, {"data.source": "cellsim"}).distill.steps == 4000
    assert load_config(None, {"data.source": "cellsim", "distill.steps": 9}).distill.steps == 9
    assert load_config(None, {"data.source": "shapes"}).distill.steps == 1500
    assert (
        load_config(None, {"data.source": "cellsim", "evaluate.edit_strength": 0.5}).evaluate.edit_strength
        == 0.5
    )
    assert load_config(None, {"data.source": "shapes"}).evaluate.edit_strength == 0.65
    (tmp_path / "c.json").write_text(json.dumps({"data": {"source": "cellsim"}, "evaluate": {"steps": 7}}))
    cfg = load_config(tmp_path / "c.json")
    assert (cfg.evaluate.edit_strength, cfg.evaluate.steps) == (1.0, 7)


def test_crop_sources_edit_with_the_inversion_their_figures_were_measured_with(tmp_path):
    """Crop runs (real crops, cropped fields) keep the ODE inversion at 20 steps, by their source's
    kind; a run folder saved before ``edit_inversion`` existed reads back the same; Shapes and other
    file sources take the 10-pass DDPM default; a config's own choice wins."""
    for source in ("crops:/data/crops.npz", "fields:/data/plate"):
        e = load_config(None, {"data.source": source}).evaluate
        assert (e.edit_inversion, e.steps) == ("ode", 20)
        e = load_config(None, {"data.source": source, "evaluate.edit_inversion": "ddpm"}).evaluate
        assert (e.edit_inversion, e.steps) == ("ddpm", 20)
    older = {"data": {"source": "crops:crops.npz"}, "evaluate": {"steps": 20, "edit_strength": 0.65}}
    (tmp_path / "run_config.json").write_text(json.dumps(older))
    assert load_config(tmp_path / "run_config.json").evaluate.edit_inversion == "ode"
    for source in ("shapes", "h5:/data/x.h5", "table:/data/t.csv"):
        e = load_config(None, {"data.source": source}).evaluate
        assert (e.edit_inversion, e.steps) == ("ddpm", 5)
