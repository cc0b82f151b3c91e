"""Property-based: random tables and configs either load or fail with FactordiffError, never anything else."""

import json
import string

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from factordiff import FactordiffError
from factordiff.config import load_config
from factordiff.data.table import read_table

SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

cell = st.one_of(
    st.text(alphabet=string.ascii_letters + string.digits + " ._-/,\"'", max_size=8),
    st.sampled_from(
        ["nan", "inf", "-1", "0.5", "img0.png", "img1.png", "missing.png", "bad.png", "", "1e400"]
    ),
)
table = st.lists(st.lists(cell, min_size=0, max_size=5), min_size=0, max_size=6)


@SETTINGS
@given(
    rows=table,
    header=st.lists(st.sampled_from(["path", "image", "dose", "batch", "dose", "", "compound"]), max_size=5),
)
def test_random_tables_load_or_fail_cleanly(tmp_path_factory, rows, header):
    folder = tmp_path_factory.mktemp("t")
    for i in range(2):
        Image.fromarray(np.full((8, 8, 3), 50 * i, np.uint8)).save(folder / f"img{i}.png")
    (folder / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    text = "\n".join(",".join(r) for r in [header] + rows)
    (folder / "t.csv").write_text(text)
    try:
        data = read_table(folder / "t.csv")
    except FactordiffError as e:
        assert "\n" not in str(e)
    else:
        assert len(data) == len(data.factors) > 0


value = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(-3, 10**6), st.floats(allow_nan=True), st.text(max_size=6)
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
sections = st.sampled_from(
    ["data", "split", "distill", "autoencoder", "denoiser", "unsupervised", "train", "evaluate", "bogus"]
)
fields = st.sampled_from(
    [
        "size",
        "n",
        "kind",
        "factors",
        "fraction",
        "steps",
        "lr",
        "block_out_channels",
        "enabled",
        "minutes",
        "seed",
        "guidance",
        "x",
    ]
)


@SETTINGS
@given(
    config=st.dictionaries(
        sections, st.one_of(value, st.dictionaries(fields, value, max_size=4)), max_size=4
    ),
    fmt=st.sampled_from([".json", ".yaml", ".toml"]),
)
def test_random_configs_load_or_fail_cleanly(tmp_path_factory, config, fmt):
    path = tmp_path_factory.mktemp("c") / f"c{fmt}"
    if fmt == ".json":
        path.write_text(json.dumps(config, default=str))
    elif fmt == ".yaml":
        import yaml

        path.write_text(yaml.safe_dump(config))
    else:
        path.write_text("\n".join(f"{k} = {json.dumps(v, default=str)}" for k, v in config.items()))
    try:
        load_config(path)
    except FactordiffError as e:
        assert "\n" not in str(e)


@SETTINGS
@given(data=st.binary(max_size=64))
def test_random_bytes_as_config_fail_cleanly(tmp_path_factory, data):
    for fmt in (".json", ".yaml", ".toml"):
        path = tmp_path_factory.mktemp("b") / f"c{fmt}"
        path.write_bytes(data)
        try:
            load_config(path)
        except FactordiffError:
            pass
