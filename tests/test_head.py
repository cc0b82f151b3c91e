"""Joint Diffusion: a classification head on the denoiser's UNet (``fit --head``), trained with
the diffusion loss on a share of the labels, guiding samples and making visual counterfactuals
(``counterfactual --method classifier``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tiny_config

from factordiff.checkpoint import load_tensors
from factordiff.cli import main
from factordiff.config import load_config
from factordiff.data.images import save_png
from factordiff.diffusion import objective
from factordiff.diffusion.adapters import TimeEmbeddingAdapter, token_channels
from factordiff.diffusion.denoiser import Denoiser, build_unet
from factordiff.diffusion.head import (
    ClassifierGuidance,
    ClassifierHead,
    absent_condition,
    augment,
    classifier_gradient,
    classify,
    guided_classifier,
    head_loss,
)
from factordiff.diffusion.sampling import sample, timesteps
from factordiff.edit import classifier_edit
from factordiff.encoders.distill import FactorDistiller
from factordiff.errors import FactordiffError
from factordiff.fit import fit, known_factors, labelled_rows
from factordiff.models.images import FactorModel


def _denoiser(cfg) -> Denoiser:
    torch.manual_seed(0)
    unet = build_unet(cfg.denoiser, 4, 8)
    d = Denoiser(unet, TimeEmbeddingAdapter(6, 2, cfg.denoiser.block_out_channels[0] * 4, 16))
    d.add_head(ClassifierHead(token_channels(unet), [3], [4], 16))
    return d


def test_head_gradient_reaches_the_shared_unet_and_reads_no_codes():
    cfg = tiny_config(**{"denoiser.head": ["shape"]})
    d = _denoiser(cfg)
    x, t = torch.randn(6, 4, 8, 8), torch.randint(0, 1000, (6,))
    head_loss(d, x, t, torch.tensor([[0], [1], [2], [0], [1], [2]])).backward()
    conv = d.unet.down_blocks[0].resnets[0].conv1.weight
    assert conv.grad is not None and conv.grad.abs().sum() > 0  # the head trains the UNet's features
    assert d.adapter.w1.grad is None or d.adapter.w1.grad.abs().sum() == 0  # no code reaches the head
    with torch.no_grad():
        a = classify(d, x, t)[0]
        assert a.shape == (6, 3) and d.head._features is None  # nothing kept after reading


def test_label_fraction_draws_the_labelled_images_once():
    a, b = labelled_rows(20, 0.25, seed=0), labelled_rows(20, 0.25, seed=0)
    assert int(a.sum()) == 5 and (a == b).all() and not (a == labelled_rows(20, 0.25, seed=1)).all()


@pytest.fixture(scope="module")
def head_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("head") / "run"
    cfg = tiny_config(**{"denoiser.head": ["shape"], "denoiser.label_fraction": 0.5, "denoiser.steps": 20})
    return fit(cfg, out, progress=False), out


def test_the_head_reads_a_labelled_batch_of_its_own_each_step(monkeypatch):
    cfg = tiny_config(**{"denoiser.head": ["shape"], "denoiser.head_batch": 5, "denoiser.head_max_t": 0.1})
    d = _denoiser(cfg)
    seen, times = [], []
    real = objective.head_loss

    def spy(denoiser, x_t, t, labels, mix=None):
        seen.append(labels.clone())
        times.append(t.clone())
        return real(denoiser, x_t, t, labels, mix)

    monkeypatch.setattr(objective, "head_loss", spy)
    labelled = {"x": torch.randn(3, 4, 8, 8), "labels": torch.tensor([[2], [2], [2]])}
    step = objective.DiffusionStep(d, cfg.denoiser, labelled=labelled)
    batch = {"x": torch.randn(7, 4, 8, 8), "codes": torch.randn(7, 6, 2)}
    loss, info = step(batch, torch.Generator().manual_seed(0))
    loss.backward()
    assert seen and seen[0].shape == (5, 1) and (seen[0] == 2).all()  # only labelled images, a full batch
    assert (times[0] < 100).all()  # head_max_t 0.1 of 1000 steps: nearly clean images
    assert info["head_ce"] > 0 and d.head.outs[0].weight.grad.abs().sum() > 0
    plain = objective.DiffusionStep(d, cfg.denoiser)  # no labelled share: the diffusion loss alone
    assert "head_ce" not in plain(batch, torch.Generator().manual_seed(0))[1]


def test_head_augment_turns_mirrors_and_mixes_the_labelled_batch(monkeypatch):
    x, labels = torch.randn(64, 2, 5, 5), torch.randint(0, 3, (64, 1))
    turned, mix = augment(x, labels, ["dihedral"], torch.Generator().manual_seed(0))
    assert mix is None
    found = set()
    for a, b in zip(x, turned):  # each row is one of the square's eight symmetries of its own image
        views = [v.rot90(k, (-2, -1)) for v in (a, a.flip(-1)) for k in range(4)]
        match = [i for i, v in enumerate(views) if torch.equal(v, b)]
        assert len(match) == 1
        found.add(match[0])
    assert found == set(range(8))
    mixed, (partner, lam) = augment(x, labels, ["mixup"], torch.Generator().manual_seed(1))
    assert ((lam >= 0) & (lam <= 1)).all() and 0 < int((lam < 1).sum()) < 64  # about half the rows
    kept = lam == 1
    assert torch.equal(mixed[kept], x[kept])
    # every mixed row is its weight's blend of itself and the row whose label it takes as partner
    blend = lam.view(-1, 1, 1, 1) * x + (1 - lam.view(-1, 1, 1, 1)) * x[_partners(x, mixed, lam)]
    assert torch.allclose(mixed, blend, atol=1e-5)
    assert torch.equal(partner[~kept], labels[_partners(x, mixed, lam)][~kept])  # (weight 0 elsewhere)
    # the loss blends the two cross-entropies with the same weights
    cfg = tiny_config(**{"denoiser.head": ["shape"]})
    d = _denoiser(cfg)
    xt, t = torch.randn(4, 4, 8, 8), torch.zeros(4, dtype=torch.long)
    own, other, w = torch.tensor([[0], [1], [2], [0]]), torch.tensor([[2], [2], [0], [0]]), torch.rand(4)
    with torch.no_grad():
        logits = classify(d, xt, t)[0]
        ce = torch.nn.functional.cross_entropy
        a, b = ce(logits, own[:, 0], reduction="none"), ce(logits, other[:, 0], reduction="none")
        want = w * a + (1 - w) * b
        assert torch.allclose(head_loss(d, xt, t, own, (other, w)), want.mean(), atol=1e-6)
    # through the denoiser's step: the head's batch is augmented, the diffusion batch is not
    got = []
    real = objective.augment
    monkeypatch.setattr(objective, "augment", lambda *a: got.append(a[2]) or real(*a))
    pixel = {"autoencoder.enabled": False, "denoiser.head_augment": ["dihedral", "mixup"]}
    aug = tiny_config(**{"denoiser.head": ["shape"], **pixel})
    labelled = {"x": torch.randn(3, 4, 8, 8), "labels": torch.tensor([[0], [1], [2]])}
    step = objective.DiffusionStep(d, aug.denoiser, labelled=labelled)
    loss, info = step({"x": torch.randn(7, 4, 8, 8), "codes": torch.randn(7, 6, 2)}, torch.Generator())
    assert got == [["dihedral", "mixup"]] and torch.isfinite(loss) and info["head_ce"] > 0
    with pytest.raises(FactordiffError, match="head_augment: dihedral needs pixel space"):
        load_config(None, {"denoiser.head_augment": ["dihedral"], "autoencoder.enabled": True})
    with pytest.raises(FactordiffError, match="head_augment"):
        load_config(None, {"denoiser.head_augment": ["rotate"]})


def _partners(x, mixed, lam) -> torch.Tensor:
    """The row each mixed row was blended with (itself where nothing was mixed)."""
    rows = torch.arange(len(x))
    for i in torch.nonzero(lam < 1).flatten().tolist():
        err = (mixed[i] - lam[i] * x[i] - (1 - lam[i]) * x).flatten(1).abs().amax(1)
        rows[i] = int(err.argmin())
    return rows


def test_head_conditioned_false_keeps_the_head_factors_codes_from_the_unet(monkeypatch):
    d = _denoiser(tiny_config(**{"denoiser.head": ["shape"]}))  # the head reads factor 4
    seen = []
    real = d.forward
    monkeypatch.setattr(d, "forward", lambda x, t, cond=None, **k: seen.append(cond) or real(x, t, cond, **k))
    batch = {"x": torch.randn(64, 4, 8, 8), "codes": torch.randn(64, 6, 2)}
    for conditioned in (True, False):
        cfg = tiny_config(**{"denoiser.head": ["shape"], "denoiser.head_conditioned": conditioned})
        seen.clear()
        objective.DiffusionStep(d, cfg.denoiser)(batch, torch.Generator().manual_seed(0))
        present = seen[0].present
        assert present[:, 4].any() == conditioned  # 90% of rows keep it when conditioned
        assert present[:, [0, 1, 2, 3, 5]].float().mean() > 0.7  # the other factors as before


def test_hidden_labels_reach_neither_the_distiller_nor_the_prototypes(head_run):
    result, _ = head_run
    cfg, train, k = result.model.config, result.train, result.train.spec.resolve("shape")
    known = known_factors(cfg, train)
    labelled = labelled_rows(len(train), cfg.denoiser.label_fraction, cfg.train.seed)
    assert (known[~labelled, k] == -1).all() and (known[labelled, k] == train.factors[labelled, k]).all()
    others = [j for j in range(len(train.spec)) if j != k]
    assert (known[:, others] == train.factors[:, others]).all()
    # the prototypes of the head factor are the mean codes of its labelled images only
    codes = result.model.codes(train.images)
    block = result.model.factor_blocks[k]
    for v in range(train.spec.factors[k].size):
        rows = torch.from_numpy(labelled & (train.factors[:, k] == v))
        assert torch.allclose(result.model.prototypes[k][v], codes[rows, block].mean(0), atol=1e-5)
    # a batch whose labels of a factor are all hidden trains nothing on that factor, and stays finite
    torch.manual_seed(0)
    d = FactorDistiller([3, 4], [False, True], 3, 16, 2, width=8)
    y = torch.tensor([[-1, 0], [-1, 3], [-1, 1], [-1, 2]])
    loss, parts = d.loss(torch.randn(4, 3, 16, 16), y)
    loss.backward()
    assert torch.isfinite(loss) and all(np.isfinite(v) for v in parts.values())
    assert d.classifiers[0].weight.grad.abs().sum() == 0 and d.classifiers[1].weight.grad.abs().sum() > 0


def test_fit_trains_and_saves_the_head(head_run):
    result, out = head_run
    logs = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    ce = [r["head_ce"] for r in logs if r["stage"] == "denoiser" and "head_ce" in r]
    assert len(ce) >= 10 and all(np.isfinite(ce))
    loaded = FactorModel.load(out / "model")
    assert loaded.denoiser.head is not None and loaded.denoiser.head.factors == [4]
    saved = load_tensors(out / "model" / "denoiser.safetensors")
    assert any(k.startswith("head.") for k in saved)


def test_frozen_base_stays_frozen_with_a_head(tmp_path):
    cfg = tiny_config(**{"denoiser.head": ["shape"], "denoiser.train_base": False})
    result = fit(cfg, tmp_path / "run", progress=False)
    base = load_tensors(tmp_path / "run" / "model" / "base.safetensors")
    unet = result.model.denoiser.unet.state_dict()
    assert all(torch.equal(base[f"unet.{k}"], v) for k, v in unet.items())
    trained = load_tensors(tmp_path / "run" / "model" / "denoiser.safetensors")
    assert any(trained[k].abs().sum() > 0 for k in trained if k.startswith("head."))


def test_classifier_guidance_steps_along_the_heads_gradient():
    """One guided DDIM step moves x along grad log p(y | x_t) (per row, positive inner product), and
    the v-prediction form equals guidance of epsilon, eps - w sigma grad."""
    cfg = tiny_config(**{"denoiser.head": ["shape"]})
    d = _denoiser(cfg).eval()
    x = torch.randn(5, 4, 8, 8)
    g = ClassifierGuidance(0, torch.tensor([0, 1, 2, 0, 1]), 200.0)
    sched, ts = timesteps(cfg.denoiser, 1, 0.5)
    cond = absent_condition(d, x)
    with torch.no_grad():
        plain = sample(d, x, cond, cfg.denoiser, 1, strength=0.5)
        guided = sample(d, x, cond, cfg.denoiser, 1, strength=0.5, classifier=g)
    grad = classifier_gradient(d, x, ts[0], g)
    assert ((guided - plain) * grad).flatten(1).sum(1).min() > 0
    a = sched.alphas_cumprod[ts[0]]
    alpha, sigma = a.sqrt(), (1 - a).sqrt()
    v = torch.randn_like(x)
    eps = sigma * x + alpha * v
    v_guided = guided_classifier(v, grad, ts[0], sched.alphas_cumprod, 3.0, "v_prediction")
    eps_guided = guided_classifier(eps, grad, ts[0], sched.alphas_cumprod, 3.0, "epsilon")
    torch.testing.assert_close(sigma * x + alpha * v_guided, eps_guided, rtol=1e-4, atol=1e-5)


def test_cli_classifier_edit_and_refusals(head_run, tiny_run, tmp_path, capsys):
    result, out = head_run
    image = tmp_path / "src.png"
    save_png(result.train.images[0], image, scale=1)
    edit = tmp_path / "edit.png"
    argv = ["counterfactual", str(out), "--image", str(image), "--method", "classifier", "--steps", "3"]
    assert main([*argv, "--set", "shape=sphere", "--out", str(edit)]) == 0 and edit.is_file()
    folder = tmp_path / "regen"
    regen = [
        "regenerate",
        str(out),
        "--where",
        "shape=cube",
        "--set",
        "shape=sphere",
        "--method",
        "classifier",
    ]
    assert main([*regen, "--limit", "3", "--draws", "2", "--steps", "2", "--out", str(folder)]) == 0
    assert len(list((folder / "images").glob("*.png"))) == 6
    capsys.readouterr()
    for argv2, words in [
        ([*argv, "--set", "scale=0.75", "--out", str(edit)], "the head reads shape"),
        (
            [
                "counterfactual",
                str(tiny_run),
                "--image",
                str(image),
                "--method",
                "classifier",
                "--set",
                "shape=sphere",
                "--out",
                str(edit),
            ],
            "no classification head",
        ),
    ]:
        assert main(argv2) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err, err
    assert main([*regen, "--set", "scale=0.75", "--out", str(tmp_path / "r2")]) == 2  # two factors set


def test_classifier_edit_takes_one_target_per_image(head_run):
    """A target per row gives each row the edit that a batch-wide target of the same value gives it."""
    result, _ = head_run
    model, images = result.model, result.train.images[:3]
    shape = model.spec.resolve("shape")
    rows = classifier_edit(model, images, shape, np.array([0, 1, 2]), steps=2, guidance=50.0, noise=0.5)
    for v in range(3):
        same = classifier_edit(model, images, shape, v, steps=2, guidance=50.0, noise=0.5)
        np.testing.assert_array_equal(rows[v], same[v])
    assert not np.array_equal(rows[0], classifier_edit(model, images, shape, 1, 2, 50.0, 0.5)[0])


def test_classifier_edit_from_the_source_inversion(head_run, tmp_path):
    """``start="source"`` starts from the images' DDIM inversion: deterministic whatever the seed,
    and not the fresh-noise start; the CLI takes it as --start source."""
    result, out = head_run
    model, images = result.model, result.train.images[:2]
    shape = model.spec.resolve("shape")
    a = classifier_edit(model, images, shape, 1, 3, 5.0, 0.5, seed=0, start="source")
    b = classifier_edit(model, images, shape, 1, 3, 5.0, 0.5, seed=1, start="source")
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, classifier_edit(model, images, shape, 1, 3, 5.0, 0.5, seed=0))
    image, edit = tmp_path / "src.png", tmp_path / "edit.png"
    save_png(images[0], image, scale=1)
    argv = [
        "counterfactual",
        str(out),
        "--image",
        str(image),
        "--method",
        "classifier",
        "--set",
        "shape=sphere",
    ]
    assert main([*argv, "--start", "source", "--steps", "3", "--out", str(edit)]) == 0 and edit.is_file()
