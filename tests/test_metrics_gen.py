"""The generalisation metrics: all-factors-right shares of edits, two-factor edits into held-out
combinations, samples from noise per guidance form, and counterfactual soundness."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from factordiff.data.shapes import replica
from factordiff.data.splits import SplitConfig, make_split
from factordiff.diffusion.guidance import Guidance
from factordiff.evaluate.counterfactual import TargetCodes, plan_edits, plan_pair_edits, score_edits
from factordiff.evaluate.suite import summary_lines


class FakeOracle:
    """Reads whatever it was told to: ``answers`` (N, K)."""

    def __init__(self, answers: np.ndarray):
        self.answers = answers

    def predict(self, images: np.ndarray) -> np.ndarray:
        assert len(images) == len(self.answers)
        return self.answers


@pytest.fixture(scope="module")
def data():
    return replica(16, n=300, seed=0)


def every_prototype(data):
    return SimpleNamespace(has_prototype=lambda k, v: True, factor_blocks=list(range(len(data.spec))))


def test_all_right_is_one_when_the_oracle_reads_exactly_what_was_requested(data):
    split = make_split(
        data.spec, SplitConfig(kind="composition", factors=("object_hue", "shape"), fraction=0.4)
    )
    edits = plan_edits(data, split, per_factor=5)["seen"]
    src = data.factors[np.asarray(edits.source)]
    requested, changed = edits.requested(src)
    assert (changed.sum(1) == 1).all() and ((requested != src) == changed).all()
    images = np.zeros((len(edits), 1, 1, 3), np.uint8)
    s = score_edits(FakeOracle(requested), data.spec, edits, images, src)
    assert s["all_right"] == s["changed_right"] == s["effectiveness"] == s["preservation"] == 1.0
    # one unchanged factor misread on one edit: preservation and all_right drop, effectiveness does not
    wrong = requested.copy()
    k = int(np.flatnonzero(~changed[0])[0])
    wrong[0, k] = (wrong[0, k] + 1) % data.spec.sizes[k]
    s = score_edits(FakeOracle(wrong), data.spec, edits, images, src)
    assert (
        s["all_right"] == pytest.approx(1 - 1 / len(edits))
        and s["changed_right"] == 1.0
        and s["preservation"] < 1.0
    )
    # the oracle reading the source unchanged: nothing effective, nothing right
    s = score_edits(FakeOracle(src), data.spec, edits, images, src)
    assert s["all_right"] == s["changed_right"] == s["effectiveness"] == 0.0 and s["preservation"] == 1.0


def test_all_right_never_exceeds_the_share_of_edits_whose_changed_factor_is_right(data):
    split = make_split(data.spec, SplitConfig(kind="random", fraction=0.3))
    edits = plan_edits(data, split, per_factor=8)["seen"]
    src = data.factors[np.asarray(edits.source)]
    requested, _ = edits.requested(src)
    rng = np.random.default_rng(0)
    noisy = np.where(rng.random(requested.shape) < 0.2, rng.integers(0, 4, requested.shape), requested)
    s = score_edits(FakeOracle(noisy), data.spec, edits, np.zeros((len(edits), 1, 1, 3), np.uint8), src)
    assert 0 < s["all_right"] <= s["changed_right"] <= 1


def test_pair_edits_go_from_training_combinations_into_the_heldout_block(data):
    split = make_split(
        data.spec, SplitConfig(kind="composition", factors=("object_hue", "shape"), fraction=0.4)
    )
    pairs, reason = plan_pair_edits(data, split, 20, TargetCodes(every_prototype(data), data))
    assert reason is None and len(pairs) == 20
    src = data.factors[np.asarray(pairs.source)]
    requested, changed = pairs.requested(src)
    assert not split.heldout(src).any() and split.heldout(requested).all()
    assert (changed.sum(1) == 2).all() and ((requested != src) == changed).all()
    s = score_edits(FakeOracle(requested), data.spec, pairs, np.zeros((20, 1, 1, 3), np.uint8), src)
    assert s["all_right"] == s["changed_right"] == s["preservation"] == 1.0
    assert set(s["effectiveness_by_factor"]) == {"object_hue", "shape"}
    for kind in ("random", "unseen_value"):
        other = make_split(data.spec, SplitConfig(kind=kind, fraction=0.3))
        none, reason = plan_pair_edits(data, other, 20, TargetCodes(every_prototype(data), data))
        assert none is None and kind in reason


@pytest.fixture(scope="module")
def tiny_metrics(tiny_run):
    from factordiff.evaluate.suite import evaluate_run

    return evaluate_run(tiny_run, progress=False)


def _share(v):
    return v is not None and 0.0 <= v <= 1.0


def test_evaluation_reports_all_right_pairs_samples_and_soundness(tiny_run, tiny_metrics, capsys):
    m = tiny_metrics
    assert json.loads((tiny_run / "metrics.json").read_text())["soundness"] == m["soundness"]
    cf = m["counterfactual"]
    for kind in ("seen", "heldout", "heldout_pairs"):
        c = cf[kind]
        assert c["edits"] > 0, kind
        for key in ("effectiveness", "preservation", "all_right", "changed_right"):
            assert _share(c[key]), (kind, key, c[key])
        assert c["all_right"] <= c["changed_right"]
    p = cf["heldout_pairs"]
    assert p["factors"] == ["object_hue", "shape"] and p["effectiveness"] == p["changed_right"]
    assert p["edits"] == 3  # evaluate.sources of the tiny config
    for kind in ("seen", "heldout"):
        assert _share(m["samples"][kind]["all_factors"]) and all(
            _share(v) for v in m["samples"][kind]["by_factor"].values()
        )
    assert m["samples_guidance"] == {"form": "joint", "weight": 1.0, "steps": 5}
    s = m["soundness"]
    assert s["sources"] == 32 and set(s["composition"]) == {"1", "10"}
    for v in [*s["composition"].values(), s["reversibility"]]:
        assert v["l1"] >= 0 and v["l1"] <= 1 and _share(v["oracle_agreement"])
    assert s["reversibility"]["edits"] == 32
    out = "\n".join(summary_lines(m))
    assert (
        "all_right" in out
        and "heldout pairs (object_hue + shape)" in out
        and "soundness null edit x1" in out
        and "x10" in out
    )

    from factordiff.report import build_report

    page = build_report(tiny_run).read_text()
    assert (
        "all factors right" in page
        and "Two factors at once" in page
        and "Counterfactual soundness" in page
        and "joint guidance" in page
    )


def test_samples_per_guidance_form_on_the_tiny_model(tiny_run):
    from factordiff.data.sources import prepare_data
    from factordiff.data.splits import make_split as split_of
    from factordiff.evaluate.counterfactual import Oracle
    from factordiff.evaluate.suite import conditional_samples
    from factordiff.models.runs import load_model

    cfg, model = load_model(tiny_run)
    data, split, _ = prepare_data(cfg)
    oracle = Oracle(data.spec.sizes, data.channels, data.size).eval()
    args = (model, oracle, data, split_of(data.spec, cfg.split), 4, 2, 0)
    plain = conditional_samples(*args)
    assert conditional_samples(*args, guidance=Guidance()) == plain  # the default: bit-identical
    for form in ("composed", "nested"):
        out = conditional_samples(*args, guidance=Guidance(all=2.0, form=form))
        assert all(_share(out[k]["all_factors"]) for k in ("seen", "heldout"))


def test_heldout_readout_of_the_codes(tiny_run, tiny_metrics):
    """Distiller read-out on seen versus held-out images: accuracy of its own head and linear R^2
    per factor, the read-out fitted on training images only."""
    ro = tiny_metrics["distiller_readout"]
    assert set(ro) == {"floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation"}
    for row in ro.values():
        assert set(row) == {
            "r2_seen",
            "r2_heldout",
            "mae_seen",
            "mae_heldout",
            "accuracy_seen",
            "accuracy_heldout",
        }
        assert _share(row["accuracy_seen"]) and _share(row["accuracy_heldout"])
        assert (
            np.isfinite(row["r2_seen"])
            and row["r2_seen"] <= 1.0
            and (row["r2_heldout"] is None or row["r2_heldout"] <= 1.0)
        )
        assert 0 <= row["mae_seen"] and 0 <= row["mae_heldout"]
    from factordiff.report import build_report

    assert "Held-out read-out of the codes" in build_report(tiny_run).read_text()


def test_heldout_readout_r2_is_none_for_one_held_out_value():
    """An unseen-value split holds out one value: R^2 over it is undefined (None), not -1e27."""
    import torch

    from factordiff.evaluate.latent import heldout_readout

    data = replica(16, n=400, seed=0)
    k = data.spec.position("object_hue")
    held = data.factors[:, k] == 7
    split = SimpleNamespace(heldout=lambda f: f[:, k] == 7)
    model = SimpleNamespace(
        codes=lambda im: torch.from_numpy(
            np.random.default_rng(len(im)).normal(size=(len(im), 6, 2)).astype(np.float32)
        ),
        encoder=object(),
    )
    ro = heldout_readout(model, data, split, n=200)
    assert (
        held.any() and ro["object_hue"]["r2_heldout"] is None and np.isfinite(ro["object_hue"]["mae_heldout"])
    )
    assert ro["scale"]["r2_heldout"] is not None
