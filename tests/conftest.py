"""Shared fixtures: tiny configs and one tiny trained run, seeded, at the scale of a 2-core CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from factordiff.config import RunConfig, load_config
from factordiff.fit import fit

torch.set_num_threads(int(os.environ.get("FACTORDIFF_TEST_THREADS", "2")))  # 2 cores; fewer beside a long fit


def tiny_overrides(**extra) -> dict:
    """A config small enough to train every stage in seconds (16x16 images, 8x8 latents)."""
    base = {
        "data.source": "shapes",
        "data.size": 16,
        "data.n": 384,
        "split.kind": "composition",
        "split.factors": ["object_hue", "shape"],
        "split.fraction": 0.4,
        "distill.steps": 12,
        "distill.width": 8,
        "distill.batch_size": 32,
        "distill.code_dims": 2,
        "autoencoder.block_out_channels": [8, 16],
        "autoencoder.steps": 12,
        "autoencoder.batch_size": 16,
        "denoiser.block_out_channels": [16, 32],
        "denoiser.layers_per_block": 1,
        "denoiser.steps": 12,
        "denoiser.batch_size": 16,
        "denoiser.adapter_hidden": 32,
        "train.checkpoint_every": 5,
        "evaluate.sources": 3,
        "evaluate.steps": 4,
        "evaluate.oracle_steps": 10,
        "evaluate.oracle_images": 256,
    }
    base.update(extra)
    return base


def tiny_config_file(folder: Path) -> Path:
    """The tiny config's model and training sections as ``folder/tiny.json`` (for ``fit --config``
    with a data source of the test's own)."""
    import json

    over = {k: v for k, v in tiny_overrides().items() if not k.startswith(("data.", "split."))}
    nested: dict = {}
    for key, value in over.items():
        section, name = key.split(".", 1)
        nested.setdefault(section, {})[name] = value
    path = folder / "tiny.json"
    path.write_text(json.dumps(nested))
    return path


def tiny_config(**extra) -> RunConfig:
    return load_config(None, tiny_overrides(**extra))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A trained tiny run folder (fit once per test session)."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    fit(tiny_config(), out, progress=False)
    return out
