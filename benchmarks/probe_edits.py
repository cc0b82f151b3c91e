"""Probe-direction edits (``factordiff counterfactual --method probe``, the DiffSiam thesis'
Algorithm 3) beside code-swap edits and the copy, on the shipped quickstart model; into
``benchmarks/results/probe_edits.json``.

    python benchmarks/probe_edits.py [--per-factor 100] [--gains 0.5,1,1.5,2,3] [--oracle-seeds 0,1,2]
        [--directions pattern,weight]

The same oracle-judged edits as the quickstart's evaluation (``evaluate/counterfactual.py``:
``--per-factor`` edits of each factor into seen combinations and as many into held-out ones, from
the same sources for every method), made three ways:

- *probe*: per factor, an L1 linear probe on the whole flattened code of 4,000 training images
  (``probe.probe_from_codes``, as ``counterfactual --method probe`` fits it): the value's position
  for an ordinal factor (the hues, scale, orientation), one value against the rest for a
  categorical one (shape, toward the edit's target value). Each source's code moves along the
  probe's direction until its score reaches ``gain`` times the way to the mean score of the
  training codes that have the target value (``Probe.amounts_to``: an amount in standard deviations
  per image, what a user would pass as ``--amount``), then the image is regenerated at the run's
  edit settings with guidance on the blocks the probe uses. The code moves along the probe's
  activation pattern (``probe``; ``--direction pattern``, the default) or along its weight vector,
  the shortest move (``probe_weight``; ``--direction weight``, Algorithm 3 read literally): see
  ``probe.py``. No block is set to a prototype.
- *swap*: ``factordiff counterfactual``'s default, the factor's block set to the target value's
  prototype (the quickstart's edits).
- *copy*: the source unchanged (effectiveness 0, preservation as the oracle reads the sources).

``gain`` is chosen per direction on a second, disjoint draw of seen edits (largest share with every
factor right); held-out edits play no part in it. The probes, the target scores and the prototypes
read training codes only (held-out combinations never reach them). Rates are the mean over the oracles
(``--oracle-seeds``, the quickstart's oracles of ``benchmarks/nfe.py``, kept in the work folder),
each oracle's beside it.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from factordiff.checkpoint import atomic_write_json
from factordiff.data.sources import prepare_data
from factordiff.data.splits import make_split
from factordiff.evaluate.counterfactual import Edits, get_oracle, plan_edits, run_edits, score_edits
from factordiff.models.runs import load_model
from factordiff.probe import Probe, probe_edit, probe_from_codes, training_codes
from factordiff.quickstart import pretrained_run

RESULTS = Path(__file__).parent / "results" / "probe_edits.json"


class Probes:
    """Every probe an edit plan needs, fitted on the codes of ``probe.MAX_CODES`` training images, and the
    mean probe score of each target value over those codes."""

    def __init__(self, model, train, seed: int = 0):
        self.codes, self.values = training_codes(model, train, seed)
        self.spec, self.seed = train.spec, seed
        self.cache: dict[tuple[int, int | None], Probe] = {}

    def get(self, k: int, v: int) -> tuple[Probe, float]:
        """The probe for an edit of factor ``k`` to value ``v`` and the score it moves to."""
        f = self.spec.factors[k]
        key = (k, None if f.kind == "ordinal" else v)
        if key not in self.cache:
            flat = self.codes.flatten(1).numpy()
            self.cache[key] = probe_from_codes(flat, self.values[:, k], f, key[1], self.seed)
        probe = self.cache[key]
        return probe, float(probe.score(self.codes[torch.from_numpy(self.values[:, k] == v)]).mean())


def probe_edits(model, data, edits: Edits, probes: Probes, gain: float, direction: str) -> np.ndarray:
    """Every edit of ``edits`` by the probe's direction (module docstring), uint8 images in order."""
    e = model.config.evaluate
    src = data.images[np.asarray(edits.source)]
    out = np.empty_like(src)
    pairs = np.stack([edits.factor, edits.target], 1)
    for k, v in sorted({(int(k), int(v)) for k, v in pairs}):
        rows = np.flatnonzero((pairs[:, 0] == k) & (pairs[:, 1] == v))
        probe, target = probes.get(k, v)
        amounts = gain * probe.amounts_to(model.codes(src[rows]), target)
        out[rows] = probe_edit(
            model, src[rows], probe, amounts, e.steps, e.guidance, e.edit_strength, None, direction
        )
    return out


def judged(oracles: dict, spec, edits: Edits, images: np.ndarray, truth: np.ndarray) -> dict:
    """The oracles' mean scores of ``images`` and each oracle's."""
    each = {s: score_edits(o, spec, edits, images, truth) for s, o in oracles.items()}
    first = next(iter(each.values()))
    mean = {
        key: float(np.mean([sc[key] for sc in each.values()]))
        for key in ("effectiveness", "preservation", "all_right")
    }
    by = lambda name: {  # noqa: E731
        f: float(np.mean([sc[name][f] for sc in each.values()])) for f in first[name]
    }
    return {
        **mean,
        "effectiveness_by_factor": by("effectiveness_by_factor"),
        "preservation_by_factor": by("preservation_by_factor"),
        "edits": first["edits"],
        "by_oracle": {
            str(s): {k: sc[k] for k in ("effectiveness", "preservation", "all_right")}
            for s, sc in each.items()
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-factor", type=int, default=100, help="edits per factor, seen and held-out each")
    ap.add_argument("--gains", default="0.5,1,1.5,2,3", help="probe gains tried on the choice draw")
    ap.add_argument("--oracle-seeds", default="0,1,2")
    ap.add_argument("--directions", default="pattern,weight", help="probe directions measured")
    ap.add_argument("--work", default="runs/bench-nfe", help="folder of the model's copy and its oracles")
    a = ap.parse_args()
    torch.set_num_threads(2)
    shipped = pretrained_run(32)
    if shipped is None:
        sys.exit("the shipped 32x32 quickstart model is missing from the package")
    run = Path(a.work) / "quickstart"
    # the shipped model and its config, fresh each call (a copy left by an older release would edit
    # at that release's settings); the oracles kept beside them are not touched
    shutil.copytree(shipped, run, dirs_exist_ok=True)
    cfg, model = load_model(run)
    data, _, _ = prepare_data(cfg)
    split = make_split(data.spec, cfg.split)
    oracles = {
        s: get_oracle(run, cfg, data, progress=True, seed=s)[0] for s in map(int, a.oracle_seeds.split(","))
    }
    train = data.subset(np.flatnonzero(~split.heldout(data.factors)))
    t0 = time.monotonic()
    probes = Probes(model, train, cfg.train.seed)
    truth = lambda edits: data.factors[np.asarray(edits.source, int)]  # noqa: E731
    choice = plan_edits(data, split, max(1, a.per_factor // 4), cfg.train.seed + 1)["seen"]
    directions = a.directions.split(",")
    grid, chosen = [], {}
    for direction in directions:
        for gain in map(float, a.gains.split(",")):
            images = probe_edits(model, data, choice, probes, gain, direction)
            sc = judged(oracles, data.spec, choice, images, truth(choice))
            keep = ("effectiveness", "preservation", "all_right")
            grid.append({"direction": direction, "gain": gain, **{k: sc[k] for k in keep}})
            print(json.dumps(grid[-1]), flush=True)
        mine = [r for r in grid if r["direction"] == direction]
        chosen[direction] = max(mine, key=lambda r: (r["all_right"], r["effectiveness"], -r["gain"]))["gain"]
    e = cfg.evaluate
    out: dict = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d"),
        "model": "the shipped quickstart model (pretrained/shapes32)",
        "edit_settings": {
            "steps": e.steps,
            "strength": e.edit_strength,
            "guidance": e.guidance,
            "inversion": e.edit_inversion,
            "residual": e.edit_residual,
        },
        "oracle_seeds": sorted(oracles),
        "choice_edits": len(choice),
        "grid": grid,
        "chosen_gain": chosen,
    }
    for kind, edits in plan_edits(data, split, a.per_factor, cfg.train.seed).items():
        made = {
            "probe" if d == "pattern" else f"probe_{d}": probe_edits(model, data, edits, probes, chosen[d], d)
            for d in directions
        }
        made |= {
            "swap": run_edits(model, data, edits, e.steps, e.guidance, strength=e.edit_strength),
            "copy": data.images[np.asarray(edits.source)],
        }
        out[kind] = {m: judged(oracles, data.spec, edits, images, truth(edits)) for m, images in made.items()}
        print(kind, json.dumps({m: (b["effectiveness"], b["preservation"]) for m, b in out[kind].items()}))
    out["probes"] = {
        f"{data.spec.factors[k].name}" + ("" if v is None else f"={data.spec.factors[k].values[v]}"): {
            key: p.info[key] for key in ("kind", "nonzero", "dims", "sd") if key in p.info
        }
        | {key: p.info[key] for key in ("r2_3fold", "roc_auc_3fold") if key in p.info}
        for (k, v), p in probes.cache.items()
    }
    out["seconds"] = round(time.monotonic() - t0, 1)
    out["command"] = "python " + shlex.join(sys.argv)
    atomic_write_json(RESULTS, out)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
