"""Regeneration throughput, as a user meets it: images per second of ``regenerate`` on the shipped
Shapes model, and profile rows per second of ``regenerate`` on a BBBC021 profile model, into
``benchmarks/results/regen_speed.json``.

    python benchmarks/regen_speed.py [--data ../shared/data/real] [--images 128] [--rows 10000]

- images: ``factordiff.regenerate`` on ``pretrained/shapes32`` (cubes set to object_hue 0.3) at the
  run's edit settings (its inversion, ``evaluate.edit_inversion``, and regeneration, guidance on
  the changed factor, the autoencoder), ``--images`` edits after a warm-up of 8; the UNet passes
  per edit are counted;
- profiles: a profile model of the real BBBC021 table's shape (516 features, the default MLP
  denoiser; trained for 200 steps only, as throughput does not depend on the weights) regenerating
  ``--rows`` rows (the table's DMSO wells repeated) into another week, from each start
  (``source``: inversion and regeneration; ``noise``: regeneration only), at the default 50 steps.

Nothing else should run beside it; rates are wall-clock medians of 3 timed calls.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bbbc021 import bbbc021_table  # noqa: E402
from speed import median_time  # noqa: E402

from factordiff import load_run  # noqa: E402
from factordiff.checkpoint import atomic_write_json  # noqa: E402
from factordiff.config import load_config  # noqa: E402
from factordiff.fit import fit_profiles  # noqa: E402
from factordiff.models.runs import load_model  # noqa: E402
from factordiff.quickstart import pretrained_run  # noqa: E402
from factordiff.regenerate import regenerate  # noqa: E402

OUT = Path(__file__).parent / "results" / "regen_speed.json"


def image_rate(n: int) -> dict:
    run = load_run(pretrained_run(32, "shapes"))
    passes = {"n": 0}
    hook = run.model.denoiser.unet.register_forward_hook(lambda *_: passes.__setitem__("n", passes["n"] + 1))
    regenerate(run, ["shape=cube"], ["object_hue=0.3"], limit=8)  # warm-up
    passes["n"] = 0
    seconds = median_time(lambda: regenerate(run, ["shape=cube"], ["object_hue=0.3"], limit=n), 3, 0)
    hook.remove()
    e = run.config.evaluate
    return {
        "images": n,
        "images_per_s": round(n / seconds, 1),
        "unet_passes_per_batch_of_64": passes["n"] // (3 * -(-n // 64)),
        "settings": f"{e.edit_inversion} inversion, steps {e.steps}, strength {e.edit_strength}, "
        f"guidance {e.guidance}",
    }


def profile_rate(data: Path, rows: int) -> dict:
    table = bbbc021_table(data / "bbbc021-profiles")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bbbc021.csv.gz"
        table.to_csv(path, index=False)
        cfg = load_config(
            None,
            {
                "data.source": f"profiles:{path}",
                "data.factors": ["Metadata_Compound", "Metadata_Concentration", "Metadata_Batch"],
                "profiles.steps": 200,
                "train.threads": torch.get_num_threads(),
            },
        )
        fit_profiles(cfg, Path(tmp) / "run", progress=False)
        _, model = load_model(Path(tmp) / "run")
    spec = model.spec
    dmso = (table["Metadata_Compound"] == "DMSO").to_numpy()
    x = table.loc[dmso, model.feature_names].to_numpy(np.float32)
    idx = np.resize(np.arange(len(x)), rows)
    factors = np.stack(
        [
            [spec.factors[k].index(str(v)) for v in table.loc[dmso, f.name].astype(str)]
            for k, f in enumerate(spec.factors)
        ],
        1,
    )[idx]
    target = factors.copy()
    kb = spec.position("Metadata_Batch")
    target[:, kb] = (target[:, kb] + 1) % spec.factors[kb].size
    out = {"rows": rows, "features": len(model.feature_names), "steps": model.config.profiles.sample_steps}
    for start in ("source", "noise"):
        seconds = median_time(lambda: model.regenerate(x[idx], factors, target, start=start), 3, 0)
        out[f"rows_per_s_{start}"] = round(rows / seconds, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real")
    )
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--rows", type=int, default=10000)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    if not (Path(a.data) / "bbbc021-profiles").is_dir():
        sys.exit(f"{a.data}/bbbc021-profiles: not found; this benchmark needs the real tables of ../shared")
    torch.set_num_threads(a.threads)
    result = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d"),
        "command": "python " + shlex.join(sys.argv),
        "images": image_rate(a.images),
        "profiles": profile_rate(Path(a.data), a.rows),
    }
    atomic_write_json(OUT, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
