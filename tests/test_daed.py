"""DAED: the denoising autoencoder that finishes the chain below the split, and ``factordiff denoise``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tiny_config
from diffusers import DDIMScheduler
from torch.nn import functional as F

from factordiff.checkpoint import load_tensors
from factordiff.cli import main
from factordiff.config import load_config, saved_before
from factordiff.data.images import read_image, save_png
from factordiff.diffusion.daed import DaedStep, build_daed, split_timestep
from factordiff.diffusion.objective import noise_schedule
from factordiff.diffusion.sampling import daed_chain, sample
from factordiff.errors import FactordiffError
from factordiff.fit import fit
from factordiff.models.images import FactorModel, to_unit


@pytest.fixture(scope="module")
def daed_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("daed") / "run"
    cfg = tiny_config(**{"daed.enabled": True, "daed.steps": 12, "daed.batch_size": 16})
    return fit(cfg, out, progress=False), out


def smooth_images(n: int, gen: torch.Generator) -> torch.Tensor:
    """Random 2x2 images upsampled to 8x8: images with structure a denoiser can learn."""
    low = torch.rand(n, 3, 2, 2, generator=gen) * 2 - 1
    return F.interpolate(low, size=8, mode="bilinear", align_corners=True)


def errors_after_training(draw, steps: int, parameterization: str) -> tuple[float, float]:
    """A DAE trained ``steps`` steps on batches ``draw(gen)``, then judged on 16 fresh smooth images
    noised to t = split T: (mean absolute error of its one pass, of the noised input)."""
    cfg = tiny_config(**{"denoiser.block_out_channels": [16, 32], "daed.parameterization": parameterization})
    torch.manual_seed(0)
    dae = build_daed(cfg.daed, cfg.denoiser, 3, 8)
    step = DaedStep(dae, cfg.denoiser)
    opt = torch.optim.Adam(dae.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        loss, _ = step({"x": draw(gen)}, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x0 = smooth_images(16, torch.Generator().manual_seed(5))
    t = torch.full((16,), dae.split_t)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    x_t = noise_schedule(cfg.denoiser).add_noise(x0, noise, t)
    with torch.no_grad():
        out = dae(x_t, t)
    return float((out - x0).abs().mean()), float((x_t - x0).abs().mean())


@pytest.mark.parametrize("parameterization", ["v", "edm"])
def test_the_one_step_denoiser_learns_to_round_trip_at_low_noise(parameterization):
    """Trained on smooth images, the DAE's one pass from t = split T brings fresh ones (none of its
    training images) far closer to x_0 than the noised input is, in either output form."""
    dae, noised = errors_after_training(lambda gen: smooth_images(32, gen), 300, parameterization)
    assert dae < 0.5 * noised


@pytest.mark.parametrize("parameterization", ["v", "edm"])
def test_the_one_step_denoiser_carries_over_to_images_unlike_its_training_ones(parameterization):
    """Trained on flat images only, the DAE still brings smooth but unflat images at t = split T
    closer to their x_0 than the noised input is: either form is the identity plus a correction at
    low noise and keeps what it has not learned (the same UNet asked for x_0 outright lands at 0.167
    against the noise's 0.137)."""

    def flat(gen):
        return (torch.rand(32, 3, 1, 1, generator=gen) * 2 - 1).expand(32, 3, 8, 8).contiguous()

    dae, noised = errors_after_training(flat, 200, parameterization)
    assert dae < noised


def test_the_chain_stops_at_the_split_and_the_dae_finishes_it():
    cfg = tiny_config()
    split_t = split_timestep(cfg.daed, cfg.denoiser)
    assert split_t == 99  # 0.1 of 1,000 steps
    seen, finished = [], []

    def denoiser(x, t, cond=None):
        seen.append(int(t))
        return 0.1 * x

    class Dae:
        def __init__(self):
            self.split_t = split_t

        def __call__(self, x, t):
            finished.append(int(t))
            return torch.zeros_like(x)

    for steps in (3, 5, 20):
        seen.clear(), finished.clear()
        out = sample(denoiser, torch.randn(2, 3, 4, 4), None, cfg.denoiser, steps, finish=Dae())
        assert len(seen) == steps and min(seen) > split_t and finished == [split_t]
        assert torch.equal(out, torch.zeros(2, 3, 4, 4))
    seen.clear(), finished.clear()
    sample(denoiser, torch.randn(2, 3, 4, 4), None, cfg.denoiser, 4, strength=0.1, finish=Dae())
    assert not seen and finished == [99]  # a start at the split: the DAE alone


def test_the_ddim_chain_to_the_split_is_ddims_update():
    """diffusers' DDIM scheduler takes no custom time steps; DPM-Solver++ of order 1 on the same
    grid gives DDIM's update."""
    cfg = tiny_config(**{"denoiser.sampler": "ddim"})
    sched, ts, landing = daed_chain(cfg.denoiser, 9, 1.0, 99)
    assert [int(t) for t in ts] == list(range(999, 100, -100)) and landing == 99
    ddim = DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule=cfg.denoiser.beta_schedule,
        prediction_type="v_prediction",
        clip_sample=False,
        set_alpha_to_one=True,
    )
    ddim.set_timesteps(10)  # a stride of 100, as the grid's
    x = y = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    for t in ts:
        x = sched.step(0.3 * x + 0.1, t, x).prev_sample
        y = ddim.step(0.3 * y + 0.1, t, y).prev_sample
    torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)


def test_fit_model_daed_trains_saves_and_denoises(daed_run, tiny_run, tmp_path, capsys):
    result, out = daed_run
    assert (out / "model" / "daed.safetensors").is_file()
    assert any(v.abs().sum() > 0 for v in load_tensors(out / "model" / "daed.safetensors").values())
    model = FactorModel.load(out / "model")
    assert model.dae is not None and model.dae.split_t == 99
    image = tmp_path / "src.png"
    save_png(result.train.images[0], image, scale=1)
    folder = tmp_path / "den"
    assert main(["denoise", str(out), "--image", str(image), "--out", str(folder)]) == 0
    printed = capsys.readouterr().out
    assert "denoised (daed)" in printed
    noised, denoised = read_image(folder / "src-noised.png"), read_image(folder / "src-denoised.png")
    assert noised.shape == denoised.shape == result.train.images[0].shape
    assert not np.array_equal(noised, denoised)
    argv = ["denoise", str(out), "--image", str(image), "--method", "diffusion", "--steps", "3"]
    assert main([*argv, "--out", str(tmp_path / "chain")]) == 0
    # samples from noise end in the DAE: a different DAE gives different samples from the same x_T
    shape = model.to_latent(to_unit(result.train.images[:2])).shape
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    codes = model.codes(result.train.images[:2])
    with_dae = model.generate(x_T, codes, 3)
    assert np.array_equal(with_dae, model.generate(x_T, codes, 3))
    assert not np.array_equal(with_dae, model.generate(x_T, codes, 3, finish=False))
    capsys.readouterr()
    bad = ["denoise", str(tiny_run), "--image", str(image), "--out", str(tmp_path / "no")]
    assert main(bad) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--model daed" in err
    assert not (tmp_path / "no").exists()


def test_daed_is_refused_where_it_has_no_meaning(tmp_path):
    cfg = tiny_config(**{"daed.enabled": True, "unsupervised.enabled": True})
    with pytest.raises(FactordiffError, match="supervised image runs"):
        fit(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_dae_saved_before_the_v_form_existed_reads_back_in_its_own_form(daed_run):
    """A model folder whose saved config has every daed field but ``parameterization`` was written
    when the DAE had EDM's form only: it loads as ``edm``; a user config naming some daed fields
    takes the default, ``v``."""
    _, run = daed_run
    meta = json.loads((run / "model" / "config.json").read_text())
    assert meta["run"]["daed"]["parameterization"] == "v"
    del meta["run"]["daed"]["parameterization"]
    assert saved_before(meta["run"])["daed"]["parameterization"] == "edm"
    assert "parameterization" not in saved_before({"daed": {"enabled": True, "split": 0.2}})["daed"]
    no_dae = {**meta["run"], "daed": {**meta["run"]["daed"], "enabled": False}}
    assert saved_before(no_dae) == no_dae  # a run without a DAE resumes under today's defaults
    assert load_config(None, {"daed.enabled": True}).daed.parameterization == "v"
