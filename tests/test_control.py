"""Image-to-image control (``denoiser.control``): a ControlNet branch reads conditioning channels
(cellsim's brightfield here) and conditions the frozen denoiser through zero convolutions."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from conftest import tiny_config

from factordiff.checkpoint import load_tensors
from factordiff.cli import main
from factordiff.data.cellsim import CHANNELS, cellsim
from factordiff.data.images import save_png
from factordiff.data.sources import prepare_data, traits
from factordiff.diffusion.adapters import TimeEmbeddingAdapter
from factordiff.diffusion.condition import Condition
from factordiff.diffusion.control import ControlBranch, Controlled
from factordiff.diffusion.denoiser import Denoiser, build_unet
from factordiff.diffusion.guidance import Guidance, guided_prediction
from factordiff.errors import FactordiffError
from factordiff.fit import fit, start_from
from factordiff.models.images import FactorModel

BF_CHANNELS = [*CHANNELS, "BF"]


def _controlled(cfg, downsample: int = 1) -> Controlled:
    torch.manual_seed(0)
    unet = build_unet(cfg.denoiser, 4, 8)
    base = Denoiser(unet, TimeEmbeddingAdapter(3, 2, cfg.denoiser.block_out_channels[0] * 4, 16)).eval()
    return Controlled(base, ControlBranch(unet, 1, downsample)).eval()


def _control_config(**extra):
    return tiny_config(
        **{
            "data.source": "cellsim",
            "data.channels": BF_CHANNELS,
            "data.n": 96,
            "split.factors": ["compound", "batch"],
            "autoencoder.enabled": False,
            "denoiser.control": ["BF"],
            "denoiser.control_steps": 6,
            **extra,
        }
    )


def test_a_controlled_denoiser_is_its_base_at_initialisation_and_reads_the_control_after_training():
    cfg = tiny_config()
    d = _controlled(cfg, downsample=2)
    x, t = torch.randn(3, 4, 8, 8), torch.tensor([10, 500, 990])
    cond = Condition.full(torch.randn(3, 3, 2), control=torch.rand(3, 1, 16, 16) * 2 - 1)
    with torch.no_grad():
        torch.testing.assert_close(d(x, t, cond), d.base(x, t, cond), rtol=0, atol=0)
    # the zero convolutions' gradients are not zero, so the control can come to matter
    d.train()
    d(x, t, cond).pow(2).mean().backward()
    assert (
        d.branch.zero_convs[0].weight.grad.abs().sum() > 0 and d.branch.zero_mid.weight.grad.abs().sum() > 0
    )
    with torch.no_grad():
        for p in d.branch.parameters():
            p.add_(0.05 * torch.randn_like(p))
        other = Condition.full(cond.codes, control=-cond.control)
        assert (d(x, t, cond) - d(x, t, other)).abs().max() > 1e-4  # the control image changes the prediction
        assert (d.base(x, t, cond) - d.base(x, t, other)).abs().max() == 0  # the base alone ignores it


def test_the_control_image_stays_in_every_guidance_term_and_is_required():
    cfg = tiny_config()
    d = _controlled(cfg)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([100, 700])
    control = torch.rand(2, 1, 8, 8)
    cond = Condition.full(torch.randn(2, 3, 2), control=control)
    for form in ("joint", "composed", "nested"):
        with torch.no_grad():
            out = guided_prediction(d, x, t, cond, Guidance(all=2.0, factors={1: 3.0}, form=form))
        assert out.shape == x.shape and torch.isfinite(out).all()
    assert torch.equal(cond.without(0).absent().index(slice(0, 1)).control, control[:1])
    with pytest.raises(ValueError, match="controlled"):
        d(x, t, Condition.full(cond.codes))
    with pytest.raises(ValueError, match="one condition has control images"):
        cond.cat(Condition.full(cond.codes))


def test_cellsim_channels_pick_the_brightfield_and_a_control_run_takes_it_out_of_the_images():
    both = cellsim(16, 6, seed=2, channels=BF_CHANNELS)
    plain = cellsim(16, 6, seed=2)
    assert both.channels == 6 and np.array_equal(both.images[..., :5], plain.images)
    assert np.array_equal(cellsim(16, 6, seed=2, channels=["BF", "DNA"]).images, both.images[..., [5, 0]])
    cfg = _control_config()
    data, _, train = prepare_data(cfg)
    assert data.channels == 5 and data.control.shape == (96, 16, 16, 1)
    assert np.array_equal(data.images, cellsim(16, 96, 0).images)
    assert len(train.control) == len(train) and traits(cfg).channels == CHANNELS
    with pytest.raises(FactordiffError, match="denoiser.control: Phase"):
        prepare_data(_control_config(**{"denoiser.control": ["Phase"]}))
    with pytest.raises(FactordiffError, match="data.channels: cellsim has channels"):
        cellsim(16, 2, channels=["DNA", "GFP"])
    with pytest.raises(FactordiffError, match="not with head"):
        tiny_config(**{"denoiser.control": ["BF"], "denoiser.head": ["shape"]})


@pytest.fixture(scope="module")
def control_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("control") / "run"
    return fit(_control_config(), out, progress=False), out


def test_a_control_run_trains_its_branch_on_the_frozen_denoiser_and_translates(control_run, tmp_path):
    result, _ = control_run
    # the same run without the control: the same denoiser, bit for bit (the control stage froze it)
    fit(
        _control_config(**{"data.channels": list(CHANNELS), "denoiser.control": []}),
        tmp_path / "plain",
        progress=False,
    )
    plain = load_tensors(tmp_path / "plain" / "model" / "denoiser.safetensors")
    assert all(torch.equal(plain[k], v) for k, v in result.model.denoiser.base.state_dict().items())
    branch = load_tensors(result.run / "model" / "control.safetensors")
    assert branch["zero_mid.weight"].abs().sum() > 0  # the branch trained
    model = FactorModel.load(result.run / "model")
    assert isinstance(model.denoiser, Controlled)
    data = result.dataset
    codes = model.codes(data.images[:4])
    x_T = torch.randn(4, 5, 16, 16, generator=torch.Generator().manual_seed(0))
    out = model.generate(x_T, codes, steps=3, control=data.control[:4])
    assert out.shape == (4, 16, 16, 5) and out.dtype == np.uint8
    with pytest.raises(FactordiffError, match="controlled by BF: pass its control images"):
        model.generate(x_T, codes, steps=3)
    with pytest.raises(FactordiffError, match=r"control images: expected \(4, 16, 16, 1\)"):
        model.generate(x_T, codes, steps=3, control=data.images[:4])


def test_translate_writes_the_predicted_stains_of_a_brightfield_file(control_run, tmp_path, capsys):
    result, run = control_run
    field = cellsim(16, 2, seed=5, channels=["BF"]).images[0, ..., 0].astype(np.uint16) * 64 + 10
    bf = tmp_path / "bf.tiff"
    tifffile.imwrite(bf, field)  # a 16-bit brightfield as the microscope writes it
    out = tmp_path / "cp"
    argv = ["translate", str(run), "--image", str(bf), "--samples", "2", "--steps", "2"]
    assert main([*argv, "--set", "compound=DMSO", "--out", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        [f"bf_{c}.tiff" for c in CHANNELS] + [f"bf_s{k}_{c}.tiff" for k in (0, 1) for c in CHANNELS]
    )
    mean, draws = (
        tifffile.imread(out / "bf_DNA.tiff"),
        [tifffile.imread(out / f"bf_s{k}_DNA.tiff") for k in (0, 1)],
    )
    assert mean.dtype == np.uint16 and mean.shape == (16, 16)  # cellsim is 16-bit: value * 64 + 32
    assert np.abs(mean.astype(float) - (draws[0].astype(float) + draws[1]) / 2).max() <= 32
    capsys.readouterr()
    rgb = tmp_path / "rgb.png"
    save_png(np.zeros((16, 16, 3), np.uint8), rgb, scale=1)
    for argv2, words in [
        ([*argv, "--out", str(out)], "exists and is not an empty folder"),
        (["translate", str(run), "--image", str(rgb), "--out", str(tmp_path / "o2")], "controlled by 1 (BF)"),
        ([*argv, "--set", "compound=aspirin2", "--out", str(tmp_path / "o3")], "aspirin2"),
    ]:
        assert main(argv2) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err, err
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()


def test_a_run_started_from_a_finished_one_trains_only_its_missing_stages(control_run, tmp_path):
    """``start_from`` (how a shipped model takes a control branch): the copied stages stay as they were."""
    result, run = control_run
    cfg = _control_config(**{"denoiser.control_steps": 3})
    start_from(run, tmp_path / "new", cfg, ("distiller", "denoiser"))
    assert (tmp_path / "new" / "logs" / "denoiser.jsonl").is_file()
    fit(cfg, tmp_path / "new", resume=True, progress=False)
    for part in ("distiller", "denoiser"):
        old, new = (load_tensors(r / "model" / f"{part}.safetensors") for r in (run, tmp_path / "new"))
        assert old.keys() == new.keys() and all(torch.equal(old[k], new[k]) for k in old)
    steps = [
        line
        for line in (tmp_path / "new" / "train_log.jsonl").read_text().splitlines()
        if '"control"' in line
    ]
    assert len(steps) == 3  # the control stage trained anew, for its own steps
