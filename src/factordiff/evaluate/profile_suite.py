"""``evaluate_profile_run(RUN)``: every figure of a profile run's report (see
``evaluate/profiling.py`` for what each means), for the model and each baseline, into
``RUN/metrics.json``.

Tasks follow from the run's ``--holdout-where`` conditions:
- a condition with a technical factor (``Metadata_Compound=DMSO,Metadata_Batch=Week4``) is a
  *transfer*: training rows matching its other pairs (DMSO of other weeks) are regenerated with the
  technical factors set (Week4) and compared with the real held-out rows;
- a condition on other factors whose remaining pairs match training rows (a compound at a
  held-out dose) is a transfer of those factors;
- a condition on the perturbation alone (a compound held out entirely) is an *unseen*
  perturbation: generated from same-plate controls with its other factors (MoA, dose, batch) and its
  own code absent.

Each task's methods are the model and the baselines of ``evaluate/baselines.py`` (fitted on
training rows only); ``mean_shift_fallback`` is the share of its source rows for which the mean
shift found no training row of the joint target (or source) combination of the changed factors and
took the per-factor sum instead.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from factordiff.checkpoint import atomic_write_json
from factordiff.data.profiles import plate_column
from factordiff.data.splits import where_conditions
from factordiff.errors import FactordiffError
from factordiff.evaluate.baselines import (
    BASELINES,
    BATCH_BASELINES,
    ORDINAL_BASELINES,
    baseline_rows,
    condition_texts,
    fallback_share,
    ordinal_change,
)
from factordiff.evaluate.distances import classifier_two_sample
from factordiff.evaluate.profiling import (
    fit_oracles,
    mean_average_precision,
    moa_hits,
    read_share,
    standardizer,
    truth_distances,
)
from factordiff.factors import parse_pairs
from factordiff.models.profiles import (
    ProfileData,
    ProfileModel,
    control_rows,
    metadata_column,
    prepare_run_profiles,
)
from factordiff.models.runs import load_model


def _plate(data: ProfileData, cfg) -> str | None:
    try:
        return cfg.profiles.plate_column or plate_column(data.table)
    except FactordiffError:
        return None


def _methods(
    model: ProfileModel,
    data: ProfileData,
    src: np.ndarray,
    target: np.ndarray,
    seed: int,
    controls: np.ndarray | None = None,
    batch: bool = False,
    baselines: bool = True,
) -> tuple[dict[str, np.ndarray], dict]:
    """The model's and each baseline's regeneration of rows ``src`` into ``target``, and what the
    baselines recorded (the mean shift's fallback share; with ``batch``, the batch corrections of
    ``evaluate/batch_correction.py`` too, one that cannot be fitted recorded as unavailable).
    ``baselines=False``: the model alone (the guidance sweep)."""
    x, f, spec = data.features, data.table.factors, data.table.spec
    out, info = {"model": model.regenerate(x[src], f[src], target, seed=seed)}, {}
    for b in BASELINES if baselines else ():
        out[b] = baseline_rows(b, spec, x, f, data.train, src, target, seed, info)
    if baselines and ordinal_change(spec, f[src], target) is not None:  # a dose or time set alone
        for b in ORDINAL_BASELINES:
            out[b] = baseline_rows(b, spec, x, f, data.train, src, target, seed, info)
    notes = {
        "mean_shift_fallback": fallback_share(info),
        "mean_shift_matched": info.get("matched_rows"),
        **(
            {"interpolate_fallback_rows": info["interpolate_fallback_rows"]}
            if "interpolate_fallback_rows" in info
            else {}
        ),
        # which rows each method starts from: the sources (every method but nearest) and the
        # conditions nearest draws its real rows from
        "source_conditions": condition_texts(spec, f[src]),
        "nearest_conditions": info.get("nearest_conditions", []),
    }
    for b in BATCH_BASELINES if batch and baselines else ():
        try:
            out[b] = baseline_rows(b, spec, x, f, data.train, src, target, seed, {}, controls=controls)
        except FactordiffError as e:
            notes[f"{b}_unavailable"] = str(e)
    return out, notes


def _judge(rows: np.ndarray, truth: np.ndarray, scale, seed: int) -> dict[str, float]:
    """Rows against the real held-out rows: mean error and energy (``truth_distances``), the
    classifier two-sample test (balanced accuracy, 0.5 = indistinguishable) and the spread ratio
    (mean over features of the generated rows' standard deviation over the real rows'; well under 1
    is mode collapse)."""
    r = truth_distances(rows, truth, scale)
    g, t = scale(rows), scale(truth)
    r["c2st_auc"] = classifier_two_sample(g, t, seed)
    sd = t.std(0)
    r["spread_ratio"] = float(np.mean(g.std(0)[sd > 0] / sd[sd > 0])) if (sd > 0).any() else float("nan")
    return r


def _floor(truth: np.ndarray, scale, seed: int) -> dict[str, float]:
    """The replicate floor: the real held-out rows split at random into two halves, one judged
    against the other (what the same condition's real wells score); NaN for a single well."""
    if len(truth) < 2:
        return dict.fromkeys(("mean_error", "energy", "c2st_auc", "spread_ratio"), float("nan"))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(truth))
    half = len(truth) // 2
    return _judge(truth[order[:half]], truth[order[half:]], scale, seed)


def _task_oracle(x: np.ndarray, y: np.ndarray, fit_rows: np.ndarray, scale):
    """A logistic regression reading one factor, fitted on ``fit_rows`` only (every real row but
    the held-out condition's): generated rows and the real held-out rows are both read by it, so
    neither was seen."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=0.1, max_iter=2000).fit(scale(x[fit_rows]), y[fit_rows])


def _same_plate_sources(
    data: ProfileData, rows: np.ndarray, pool: np.ndarray, plate: str | None, seed: int
) -> np.ndarray:
    """For each row, a pool row of the same plate when there is one, else any pool row."""
    rng = np.random.default_rng(seed)
    plates = data.table.metadata[plate] if plate else None
    out = []
    for r in rows:
        cand = pool[plates[pool] == plates[r]] if plates is not None else pool
        out.append(rng.choice(cand if len(cand) else pool))
    return np.asarray(out)


def _transfer(
    model, data, pairs, set_ids, truth, oracles, scale, seed, controls=None, baselines=True
) -> dict:
    """A held-out condition regenerated from the training rows of its other values, by the model
    and every baseline, each judged against the real held-out rows (``_judge``) and read by
    oracles fitted on every real row but those (``_task_oracle``), which read the real held-out
    rows too: the ceiling. ``oracles`` (fitted on every row) name the factors to read."""
    spec, f = data.table.spec, data.table.factors
    keep = [(k, v) for k, v in pairs if k not in set_ids]
    src = (
        np.flatnonzero(data.train & np.all([f[:, k] == v for k, v in keep], axis=0))
        if keep
        else np.flatnonzero(data.train)
    )
    rng = np.random.default_rng(seed)
    if len(src) > 2000:
        src = np.sort(rng.choice(src, 2000, replace=False))
    target = f[src].copy()
    for k, v in pairs:
        if k in set_ids:
            target[:, k] = v
    batch = all(spec.factors[k].role == "technical" for k in set_ids)
    methods, notes = _methods(model, data, src, target, seed, controls, batch, baselines)
    real = data.features[truth]
    res = {
        "sources": int(len(src)),
        "truth_rows": int(len(truth)),
        "set": [spec.factors[k].name for k in set_ids],
        **notes,
        "floor": _floor(real, scale, seed),
        "methods": {},
    }
    others = np.ones(len(f), bool)
    others[truth] = False
    readers = {}
    for k in oracles:
        if k in set_ids or spec.factors[k].role == "biological":
            readers[k] = _task_oracle(data.features, f[:, k], others, scale)
    for name, rows in methods.items():
        r = _judge(rows, real, scale, seed)
        for k, clf in readers.items():
            fa = spec.factors[k]
            if k in set_ids:
                r[f"read_as_target.{fa.name}"] = read_share(clf, rows, target[:, k], scale)
            else:
                r[f"read_as_source.{fa.name}"] = read_share(clf, rows, f[src, k], scale)
        res["methods"][name] = r
    # the ceiling: the same oracles reading the real held-out rows themselves
    res["real_heldout_read_as_target"] = {
        spec.factors[k].name: read_share(readers[k], real, np.full(len(truth), v), scale)
        for k, v in pairs
        if k in set_ids and k in readers
    }
    return res


def _unseen(model, data, cfg, truth, controls, plate, scale, seed) -> dict:
    f = data.table.factors
    pool = np.flatnonzero(data.train & controls)
    src = _same_plate_sources(data, truth, pool, plate, seed)
    target = f[truth]
    methods, notes = _methods(model, data, src, target, seed)
    res = {
        "sources": int(len(src)),
        "truth_rows": int(len(truth)),
        **notes,
        "methods": {},
    }
    moa = cfg.profiles.moa
    if moa:
        column = metadata_column(data.table, moa, "profiles.moa")
        ref = np.flatnonzero(data.train & ~controls)
        labels = data.table.metadata[column]
        want = labels[truth]
        res["real_heldout_moa_hits"] = moa_hits(
            data.features[truth], want, data.features[ref], labels[ref], scale
        )
    for name, rows in methods.items():
        r = truth_distances(rows, data.features[truth], scale)
        if moa:
            r["moa_hits"] = moa_hits(rows, want, data.features[ref], labels[ref], scale)
        res["methods"][name] = r
    return res


def _retrieval(model, data, cfg, controls, plate, scale, seed, treated: np.ndarray) -> dict:
    """copairs mAP in its standard setup (positives: wells of the same perturbation and dose;
    negatives: training control wells on the same plate) over the perturbation rows ``treated``:
    real, regenerated from same-plate training controls into each row's factors, those controls
    unchanged (the copy-the-control null), and the mean-shift baseline (with ``fallback``, the share
    of its rows that fell back to the per-factor sum)."""
    spec = data.table.spec
    pert = metadata_column(
        data.table, parse_pairs(cfg.profiles.controls, "profiles.controls")[0][0], "profiles.controls"
    )
    doses = [fa.name for fa in spec.factors if fa.kind == "ordinal" and fa.role == "biological"]
    group = [pert, *[d for d in doses if d != pert]]
    meta, f = data.table.metadata, data.table.factors
    pool = np.flatnonzero(data.train & controls)
    src = _same_plate_sources(data, treated, pool, plate, seed)
    regenerated = model.regenerate(data.features[src], f[src], f[treated])
    ctrl = np.flatnonzero(controls & data.train)
    rows = np.concatenate([treated, ctrl])
    sub = {k: v[rows] for k, v in meta.items()}
    is_ctrl = np.r_[np.zeros(len(treated), bool), np.ones(len(ctrl), bool)]
    out, info = {}, {}
    shifted = baseline_rows("mean_shift", spec, data.features, f, data.train, src, f[treated], seed, info)
    for name, x in (
        ("real", data.features[treated]),
        ("model", regenerated),
        ("copy_control_null", data.features[src]),
        ("mean_shift", shifted),
    ):
        x = scale(np.concatenate([x, data.features[ctrl]]))
        out[name] = mean_average_precision(sub, x, group, is_ctrl, plate, seed, standard=True)
    for v in out.values():
        v.pop("by_group", None)
    out["mean_shift"]["fallback"] = fallback_share(info)
    return out


def _unseen_rows(model, data: ProfileData, perturbation: int | None, controls: np.ndarray) -> np.ndarray:
    """Held-out rows of perturbations that no training row has (the unseen tasks' wells)."""
    if perturbation is None:
        return np.zeros(0, np.int64)
    f = data.table.factors[:, perturbation]
    known = (f >= 0) & model.seen[perturbation][np.maximum(f, 0)]
    return np.flatnonzero(~data.train & ~controls & ~known & (data.table.factors >= 0).all(1))


def _oracle_ids(spec, rows: int) -> list[int]:
    """Factors an oracle reads: more than one value, and fewer than half as many values as rows."""
    return [k for k in range(len(spec)) if 1 < spec.factors[k].size < rows // 2]


def _task(
    data: ProfileData, pairs: list[tuple[int, int]], technical: list[int]
) -> tuple[np.ndarray, list[int], bool]:
    """A held-out condition's real rows, the factors a transfer sets (the technical ones, else the
    ordinal ones), and whether training rows match the rest of the condition (a transfer)."""
    spec, f = data.table.spec, data.table.factors
    truth = np.flatnonzero(np.all([f[:, k] == v for k, v in pairs], axis=0))
    set_ids = [k for k, _ in pairs if k in technical] or [
        k for k, _ in pairs if spec.factors[k].kind == "ordinal"
    ]
    keep = [(k, v) for k, v in pairs if k not in set_ids]
    return (
        truth,
        set_ids,
        bool(set_ids) and (not keep or (data.train & np.all([f[:, k] == v for k, v in keep], axis=0)).any()),
    )


def _setup(run: Path) -> tuple:
    """What every profile evaluation of a run starts from: its config and model, its data in the
    run's layout, the standardiser of training rows, the control rows, the technical factors and
    the oracles (fitted on every row) that name the factors to read."""
    cfg, model = load_model(run)
    data = prepare_run_profiles(cfg, model)
    spec, f = data.table.spec, data.table.factors
    scale = standardizer(data.features[data.train])
    controls = control_rows(data.table, cfg.profiles.controls)
    technical = [k for k, fa in enumerate(spec.factors) if fa.role == "technical"]
    oracles = fit_oracles(spec, data.features, f, scale, _oracle_ids(spec, len(f)), cfg.train.seed)
    return cfg, model, data, scale, controls, technical, oracles


def guidance_sweep(run: Path, weights: list[float], progress: bool = True) -> list[dict]:
    """The run's transfer tasks regenerated at each guidance weight on the changed technical factors
    (``profiles.guidance_technical``): how reading as the target trades against the distance to the
    real held-out rows. One dict per (condition, weight) with the model's figures."""
    cfg, model, data, scale, _, technical, oracles = _setup(run)
    spec = data.table.spec
    out = []
    for text, pairs in zip(cfg.split.where, where_conditions(spec, cfg.split.where)):
        truth, set_ids, has_sources = _task(data, pairs, technical)
        if not has_sources or not set(set_ids) <= set(technical):
            continue
        for w in tqdm(weights, desc=f"guidance sweep {text}", disable=not progress):
            model.config.profiles.guidance_technical = w
            out.append(
                {
                    "condition": text,
                    "guidance_technical": w,
                    **_transfer(
                        model, data, pairs, set_ids, truth, oracles, scale, cfg.train.seed, baselines=False
                    )["methods"]["model"],
                }
            )
    return out


def transfer_figures(run: Path, where: list[str], starts: list[str], progress: bool = True) -> dict:
    """The run's transfer tasks among its held-out conditions ``where`` (texts of its
    ``split.where``), the model regenerating from each ``start`` (``profiles.start``) beside every
    baseline, judged as ``evaluate_profile_run`` judges them: ``{start: {condition: task}}``. For
    choosing a setting on validation cells cut from training rows."""
    cfg, model, data, scale, controls, technical, oracles = _setup(run)
    spec, seed = data.table.spec, cfg.train.seed
    texts = dict(zip(cfg.split.where, where_conditions(spec, cfg.split.where)))
    missing = [w for w in where if w not in texts]
    if missing:
        raise FactordiffError(f"{run}: {missing[0]!r} is not one of the run's held-out conditions")
    out: dict = {}
    for i, start in enumerate(starts):
        model.config.profiles.start = start
        for text in tqdm(where, desc=f"transfers, start {start}", disable=not progress):
            truth, set_ids, has_sources = _task(data, texts[text], technical)
            if not has_sources:
                raise FactordiffError(f"{run}: {text!r} has no training rows to regenerate from")
            task = _transfer(
                model, data, texts[text], set_ids, truth, oracles, scale, seed, controls, baselines=i == 0
            )
            if i:  # the baselines do not depend on the model's start: judged once, with the first
                first = out[starts[0]][text]
                task = {**first, "methods": {**first["methods"], "model": task["methods"]["model"]}}
            out.setdefault(start, {})[text] = task
    return out


def evaluate_profile_run(run: Path, progress: bool = True) -> dict:
    """Evaluate a profile run; writes and returns ``RUN/metrics.json``."""
    run = Path(run)
    t0 = time.monotonic()
    cfg, model, data, scale, controls, technical, oracles = _setup(run)
    spec = data.table.spec
    seed = cfg.train.seed
    plate = _plate(data, cfg)
    metrics: dict = {
        "kind": "profiles",
        "split": data.split.to_json(),
        "cleaning": model.table.get("cleaning", {}),
        "normalization": data.normalization,
        "rows": {"train": int(data.train.sum()), "heldout": int((~data.train).sum())},
        "oracle_accuracy": {spec.factors[k].name: acc for k, (_, acc, _) in oracles.items()},
        "tasks": [],
    }
    conditions = where_conditions(spec, cfg.split.where)
    perturbation = None
    if cfg.profiles.controls:
        column = metadata_column(
            data.table, parse_pairs(cfg.profiles.controls, "profiles.controls")[0][0], "profiles.controls"
        )
        perturbation = spec.position(column) if column in spec.names else None
    for text, pairs in tqdm(
        list(zip(cfg.split.where, conditions)), desc="held-out conditions", disable=not progress
    ):
        truth, set_ids, has_sources = _task(data, pairs, technical)
        task = {"condition": text}
        if has_sources:
            task.update(
                kind="transfer",
                **_transfer(model, data, pairs, set_ids, truth, oracles, scale, seed, controls),
            )
        elif controls is not None and perturbation is not None and perturbation in [k for k, _ in pairs]:
            task.update(kind="unseen", **_unseen(model, data, cfg, truth, controls, plate, scale, seed))
        else:
            task.update(
                kind="skipped", reason="no training rows to regenerate from and no controls configured"
            )
        metrics["tasks"].append(task)
    if controls is not None:
        rng = np.random.default_rng(seed)
        treated = np.flatnonzero(data.train & ~controls)
        if len(treated) > 1500:
            treated = np.sort(rng.choice(treated, 1500, replace=False))
        metrics["retrieval"] = _retrieval(model, data, cfg, controls, plate, scale, seed, treated)
        metrics["retrieval_setup"] = (
            "copairs mAP; positives: wells of the same perturbation and dose; negatives: training "
            "control wells on the same plate"
        )
        unseen = _unseen_rows(model, data, perturbation, controls)
        if len(unseen):
            metrics["retrieval_heldout"] = _retrieval(model, data, cfg, controls, plate, scale, seed, unseen)
    metrics["seconds"] = round(time.monotonic() - t0, 1)
    atomic_write_json(run / "metrics.json", metrics)
    return metrics


def summary_lines(metrics: dict) -> list[str]:
    """A few lines for the terminal: each task's distances to the truth, model beside baselines."""
    lines = []
    for task in metrics.get("tasks", []):
        if task.get("kind") == "skipped":
            lines.append(f"{task['condition']}: skipped ({task['reason']})")
            continue
        lines.append(
            f"{task['condition']} ({task['kind']}, {task['sources']} sources, {task['truth_rows']} "
            "real held-out rows):"
        )
        for name, r in task["methods"].items():
            extra = "  ".join(f"{k} {v:.3f}" for k, v in r.items() if k.startswith(("read_as", "moa")))
            c2st = f"  c2st AUC {r['c2st_auc']:.3f}" if "c2st_auc" in r else ""
            lines.append(
                f"  {name:11s} mean error {r['mean_error']:.3f}  energy {r['energy']:.3f}{c2st}  {extra}"
            )
        if "floor" in task:
            f = task["floor"]
            lines.append(
                f"  replicate floor (halves of the real held-out rows): mean error {f['mean_error']:.3f}  "
                f"energy {f['energy']:.3f}  c2st AUC {f['c2st_auc']:.3f}"
            )
        for k, v in task.get("real_heldout_read_as_target", {}).items():
            lines.append(
                f"  the real held-out rows themselves are read as the target {k} on {v:.3f} "
                "(the same oracle, fitted without them)"
            )
    for part, what in (
        ("retrieval", "training perturbations"),
        ("retrieval_heldout", "held-out perturbations"),
    ):
        for name, r in metrics.get(part, {}).items():
            lines.append(
                f"mAP {name:18s} {r['map']:.3f} (significant {r['significant']:.2f} of {r['groups']} {what})"
            )
    return lines
