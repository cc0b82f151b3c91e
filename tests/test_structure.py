"""Structure-coded compounds in an image run (``denoiser.structure``): the compound's code block is
a linear function of its Morgan fingerprint learned with the denoiser, weighted by the distiller's
posterior over the training compounds; a compound no training image had is coded by its
fingerprint in the same space."""

import pytest
import torch
from conftest import tiny_overrides

from factordiff.config import load_config
from factordiff.data.cellsim import COMPOUNDS, CONTROL
from factordiff.encoders.perturbation import perturbation_features
from factordiff.errors import FactordiffError

OVER = {
    "data.source": "cellsim",
    "data.size": 16,
    "data.n": 320,
    "split.kind": "none",
    "split.factors": [],
    "split.where": ["compound=caffeine"],
    "denoiser.structure": "compound",
}


@pytest.fixture(scope="module")
def structure_run(tmp_path_factory):
    from factordiff.fit import fit

    out = tmp_path_factory.mktemp("structure") / "run"
    return fit(load_config(None, tiny_overrides(**OVER)), out, progress=False)


def test_structure_codes_train_with_the_denoiser_and_code_an_unseen_compound(structure_run):
    from factordiff.edit import compound_code
    from factordiff.models.images import FactorModel, to_unit

    model = FactorModel.load(structure_run.run / "model")  # the structure codes are saved with the denoiser
    s, spec = model.structure, model.spec
    names = [str(v) for v in spec.factors[s.factor].values]
    caffeine = names.index("caffeine")
    assert (
        s is not None and not s.seen[caffeine] and s.seen.sum() == len(names) - 1
    )  # the held-out compound is never in a posterior
    weight = s.embedder.net.weight
    assert weight.abs().sum() > 0  # learned from the diffusion loss (it starts at zero)
    trained = perturbation_features(
        "morgan", [n for n in names if n not in (CONTROL, "caffeine")], set(), COMPOUNDS
    ).any(0)
    assert torch.all(
        weight[:, torch.from_numpy(~trained)] == 0
    )  # a bit no training compound has adds nothing
    # codes: the distiller's, with the compound block = posterior over the training compounds x their codes
    images = structure_run.train.images[:6]
    raw = model.encoder(to_unit(images))
    codes = model.codes(images)
    post = s.posterior(model.encoder.logits(raw)[s.factor])
    assert torch.all(post[:, caffeine] == 0) and torch.allclose(post.sum(1), torch.ones(6))
    assert torch.allclose(codes[:, s.factor], post @ s.table(), atol=1e-5)
    others = [k for k in range(len(spec)) if k != s.factor]
    assert torch.allclose(codes[:, others], raw[:, others], atol=1e-5)
    # prototypes: each training compound's own code; the held-out one has none
    assert torch.allclose(
        model.prototype(s.factor, names.index("theobromine")), s.table()[names.index("theobromine")]
    )
    assert not model.has_prototype(s.factor, caffeine)
    # an unseen compound by SMILES: its fingerprint through the same map, not a regression of prototypes
    code = compound_code(model, s.factor, COMPOUNDS["caffeine"], COMPOUNDS, CONTROL)
    fp = torch.from_numpy(perturbation_features("morgan", [COMPOUNDS["caffeine"]], set()))
    assert torch.allclose(code, (fp @ weight.T + s.embedder.net.bias)[0]) and torch.allclose(
        code, s.table()[caffeine], atol=1e-5
    )


def test_structure_needs_a_known_factor_and_the_distiller():
    from factordiff.data.cellsim import cellsim_spec
    from factordiff.models.images import build_structure

    spec = cellsim_spec()
    for over, match in (
        ({"denoiser.structure": "drug"}, "unknown factor 'drug'"),
        ({"denoiser.structure_control": "water"}, "no value 'water'"),
        ({"unsupervised.enabled": True}, "needs the supervised distiller"),
    ):
        cfg = load_config(None, tiny_overrides(**{**OVER, **over}))
        with pytest.raises(FactordiffError, match=match) as e:
            build_structure(cfg, spec)
        assert "\n" not in str(e.value)


def test_a_bad_structure_factor_is_refused_by_the_cli_before_training(tmp_path, capsys):
    from factordiff.cli import main

    out, config = tmp_path / "run", tmp_path / "small.json"
    config.write_text('{"data": {"source": "cellsim", "size": 16, "n": 64}}')
    code = main(["fit", "--config", str(config), "--structure", "drug", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "unknown factor 'drug'" in err[0] and "Traceback" not in err[0]
    assert not (out / "model").exists()
