"""``evaluate_set_run(RUN)``: the figures of a set run (``fit --model set``), into ``RUN/metrics.json``.

For each ``--holdout-where`` condition, the model generates one population from noise per held-out
set under the condition's codes (as many cells as the real set) and the pooled cells are judged
against the real held-out cells by the energy distance over the cell features, z-scored by the
training cells, beside:

- *nearest*: real training cells of the nearest condition (``baselines.nearest_rows``, relaxing
  the condition's technical factors first: the same treatment on another plate);
- *per-set mean model*: the additive model of the cells' mean (ridge on one-hot factors, fitted on
  training cells) repeated once per cell: the population that a per-well profile model gives;
- *floor*: the real held-out sets in two halves, one against the other, averaged over the ways of
  halving them (up to 8); one set alone has no floor.

Every population is drawn to the real held-out cell count (seeded).
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import numpy as np
import torch

from factordiff.checkpoint import atomic_write_json
from factordiff.data.splits import select
from factordiff.encoders.metadata import fit_additive, one_hot
from factordiff.evaluate.baselines import condition_texts, nearest_rows
from factordiff.evaluate.distances import energy_distance
from factordiff.factors import parse_pairs
from factordiff.models.runs import load_run
from factordiff.models.sets import set_members


def _draw(x: np.ndarray, n: int, rng) -> np.ndarray:
    return x[rng.choice(len(x), n, replace=len(x) < n)]


def _floor(z: np.ndarray, groups: list[np.ndarray], seed: int, splits: int = 8) -> float | None:
    """Energy distance between halves of the held-out sets, averaged over the halvings."""
    if len(groups) < 2:
        return None
    rng = np.random.default_rng(seed)
    rest = list(range(1, len(groups)))
    every = list(itertools.combinations(rest, len(groups) // 2 - 1))
    chosen = every if len(every) <= splits else [every[i] for i in rng.choice(len(every), splits, False)]
    out = []
    for combo in chosen:
        first = {0, *combo}
        a = np.concatenate([groups[i] for i in first])
        b = np.concatenate([groups[i] for i in range(len(groups)) if i not in first])
        out.append(energy_distance(z[a], z[b]))
    return float(np.mean(out))


def evaluate_set_run(run: Path, seed: int = 0, progress: bool = True) -> dict:
    """Every held-out condition of the set run at ``run`` (module docstring); writes and returns
    ``RUN/metrics.json``."""
    start = time.monotonic()
    r = load_run(run)
    model, cfg, spec = r.model, r.config, r.spec
    data = r.data()
    table, train = data.table, data.train
    z = model.standardize(data.features).numpy()
    f = table.factors
    additive = fit_additive(spec, f[train], z[train])
    rng = np.random.default_rng(seed)
    tasks = []
    for text in cfg.split.where:
        held = np.flatnonzero(select(spec, f, [text], table.metadata) & ~train)
        if not len(held):
            continue
        groups = list(set_members(table, cfg.sets.column, held).values())
        target = np.stack([f[g[0]] for g in groups])
        sizes = [len(g) for g in groups]
        pops = model.populations(target, sizes, seed)
        generated = model.standardize(np.concatenate(pops)).numpy()
        truth = z[np.concatenate(groups)]
        n = len(truth)
        named = {spec.position(name) for name, _ in parse_pairs(text, "--holdout-where")}
        technical = np.asarray([k for k in sorted(named) if spec.factors[k].role == "technical"], np.int64)
        near = nearest_rows(spec, f, train, f[np.concatenate(groups)], technical, seed)
        w, b = additive
        mean = (torch.from_numpy(one_hot(spec, target[:1])) @ w + b).numpy()
        methods = {
            "model": generated,
            "nearest": z[near],
            "per_set_mean_model": np.repeat(mean, n, 0),
        }
        tasks.append(
            {
                "condition": text,
                "heldout_sets": len(groups),
                "heldout_cells": n,
                "nearest_conditions": sorted(set(condition_texts(spec, f[near]))),
                "energy": {name: energy_distance(_draw(x, n, rng), truth) for name, x in methods.items()},
                "floor": _floor(z, groups, seed),
            }
        )
    metrics = {
        "kind": "sets",
        "train_sets": model.train_sets,
        "features": len(model.feature_names),
        "tasks": tasks,
        "seconds": round(time.monotonic() - start, 1),
    }
    atomic_write_json(Path(run) / "metrics.json", metrics)
    return metrics


def set_summary_lines(metrics: dict) -> list[str]:
    """The terminal summary of a set run's evaluation."""
    out = [f"set run: {metrics['train_sets']} training sets, {metrics['features']} features per cell"]
    for t in metrics["tasks"]:
        e = t["energy"]
        floor = "-" if t["floor"] is None else f"{t['floor']:.3f}"
        out.append(
            f"{t['condition']} ({t['heldout_sets']} sets, {t['heldout_cells']} cells): energy distance "
            f"model {e['model']:.3f}, nearest {e['nearest']:.3f}, per-set mean model "
            f"{e['per_set_mean_model']:.3f}, floor {floor}"
        )
    return out
