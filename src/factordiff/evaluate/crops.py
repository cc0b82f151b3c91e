"""``evaluate_crop_run(RUN)``: the figures of a crop run (``crops:STACK.npz`` or ``fields:SOURCE``),
where crops become profiles (``evaluate/morphology.py``: nucleus shape, per-channel intensity and
texture, in raw units) and go through the profile toolkit, into ``RUN/metrics.json``.

Tasks follow from the run's ``--holdout-where`` conditions, with the perturbation and its control
from ``--controls F=V`` where given:

- *treatment*: a condition with a perturbation other than the control and technical values (a
  compound on a plate) is regenerated from the training controls of the same technical values (the
  plate's DMSO crops), with the condition's other factors set (compound, dose);
- *transfer*: otherwise, the technical factors of the condition are set (a plate swap: DMSO of one
  plate regenerated from DMSO of the others; the ordinal ones where no factor is technical), from
  the training crops that match the rest of the condition and differ in the set factors.

Each task's methods: the model; *copy* the sources; *mean shift* (per channel, the sources' pixels
plus the training crops' channel-mean difference between the target's and the source's values, on
crops matching the source's other factors where there are some: ``baselines.mean_shift`` on
channel means); *nearest* condition (real training crops of the condition a scientist would pick,
``baselines.nearest_rows`` relaxing the condition's technical factors first: the same treatment
on other plates, at the nearest dose). Each is judged against the real held-out crops: the z-scored
mean-feature distance (mean over features of |mean difference|, features z-scored by training
crops), the energy distance, the classifier two-sample test (ROC AUC, 0.5 = indistinguishable) and
the spread ratio; the Frechet and kernel (KID) distances over the evaluation oracle's features; and
the *replicate floor*: the real held-out crops split into two halves by field of view, averaged
over the splits (``floor``).
``gap_share`` = (model - floor) / (copy - floor) of the distance: the share of the copy's gap to
the truth the model leaves.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from factordiff.checkpoint import atomic_write_json
from factordiff.data.crops import resize
from factordiff.data.sources import Crops, prepare_crops
from factordiff.data.splits import where_conditions
from factordiff.evaluate.baselines import condition_texts, mean_shift, nearest_rows
from factordiff.evaluate.cells import oracle_features
from factordiff.evaluate.counterfactual import get_oracle
from factordiff.evaluate.distances import classifier_two_sample, energy_distance, frechet, kernel_distance
from factordiff.evaluate.morphology import crop_features, feature_names
from factordiff.evaluate.profiling import standardizer
from factordiff.factors import parse_pairs
from factordiff.models.runs import load_run, with_inversion
from factordiff.regenerate import regenerate

FIELD_COLUMNS = ("Metadata_Field",)  # a fields: run's field of view
FIELD_PARTS = ("plate", "well", "site")  # else: plate, well and site columns together


def field_keys(metadata: dict[str, np.ndarray]) -> np.ndarray | None:
    """Each crop's field of view: ``Metadata_Field`` (a fields: run), else its plate, well and site
    columns joined; None when the metadata cannot tell."""
    for c in FIELD_COLUMNS:
        if c in metadata:
            return np.asarray(metadata[c], str)
    cols = [next((c for c in metadata if c.lower().endswith(part)), None) for part in FIELD_PARTS]
    if any(c is None for c in cols):
        return None
    keys = np.asarray(metadata[cols[0]], str)
    for c in cols[1:]:
        keys = np.char.add(np.char.add(keys, "/"), np.asarray(metadata[c], str))
    return keys


def judge(rows: np.ndarray, truth: np.ndarray, scale, seed: int) -> dict[str, float]:
    """Feature rows against the real held-out crops' (module docstring)."""
    g, t = scale(rows), scale(truth)
    sd = t.std(0)
    return {
        "distance": float(np.abs(g.mean(0) - t.mean(0)).mean()),
        "energy": energy_distance(g, t),
        "c2st_auc": classifier_two_sample(g, t, seed),
        "spread_ratio": float(np.mean(g.std(0)[sd > 0] / sd[sd > 0])) if (sd > 0).any() else float("nan"),
    }


def floor(
    truth_rows: np.ndarray, fields: np.ndarray | None, features, scale, seed: int, splits: int = 8
) -> dict:
    """The replicate floor: the held-out crops in two halves by field, one judged against the
    other, averaged over every such split (up to ``splits`` of them, drawn at random beyond that);
    ``splits`` random halves where fields are unknown or fewer than two. One split is not enough:
    BBBC021 images four sites of one well per condition, and sites 1-2 against 3-4 give twice the
    distance of the other pairings (docs/design.md). ``distance_range`` is the splits' min and max."""
    rng = np.random.default_rng(seed)
    names = np.unique(fields[truth_rows]) if fields is not None else np.zeros(0)
    halves = []
    if len(names) >= 2:
        rest = names[1:]  # names[0] always in the first half: a split and its mirror are one split
        k = len(names) // 2 - 1
        every = list(itertools.combinations(range(len(rest)), k))
        chosen = every if len(every) <= splits else [every[i] for i in rng.choice(len(every), splits, False)]
        for combo in chosen:
            half = {names[0], *rest[list(combo)].tolist()}
            halves.append(np.asarray([fields[i] in half for i in truth_rows]))
        split = f"by field ({len(names)} fields, mean of {len(halves)} splits)"
    else:
        for _ in range(splits):
            first = np.zeros(len(truth_rows), bool)
            first[rng.permutation(len(truth_rows))[: len(truth_rows) // 2]] = True
            halves.append(first)
        split = f"at random (fields unknown; mean of {splits} splits)"
    each = [judge(features(truth_rows[h]), features(truth_rows[~h]), scale, seed) for h in halves]
    out = {m: float(np.mean([j[m] for j in each])) for m in each[0]}
    d = [j["distance"] for j in each]
    return {**out, "distance_range": [float(min(d)), float(max(d))], "splits": len(each), "split": split}


def _controls(cfg, spec) -> tuple[int, int] | None:
    if not cfg.profiles.controls:
        return None
    name, value = parse_pairs(cfg.profiles.controls, "--controls")[0]
    k = spec.resolve(name)
    return k, spec.factors[k].index(value)


def crop_task(crops: Crops, pairs: list[tuple[int, int]], controls: tuple[int, int] | None) -> dict:
    """A held-out condition's real crops, the pool of training crops it is regenerated from, the
    factors set, those the nearest condition relaxes first and the kind (module docstring);
    ``pool`` empty when nothing can source it."""
    spec, f, train = crops.stack.spec, crops.stack.factors, crops.train
    truth = np.flatnonzero(np.all([f[:, k] == v for k, v in pairs], axis=0))
    technical = [k for k, _ in pairs if spec.factors[k].role == "technical"]
    if controls is not None and technical:
        kp, control = controls
        value = dict(pairs).get(kp)
        if value is not None and value != control:
            pool = (
                train & (f[:, kp] == control) & np.all([f[:, k] == v for k, v in pairs if k in technical], 0)
            )
            return {
                "kind": "treatment",
                "truth": truth,
                "pool": np.flatnonzero(pool),
                "set": [(k, v) for k, v in pairs if k not in technical],
                "relax": technical,
            }
    set_ids = technical or [k for k, _ in pairs if spec.factors[k].kind == "ordinal"]
    keep = [(k, v) for k, v in pairs if k not in set_ids]
    pool = train.copy()
    for k, v in keep:
        pool &= f[:, k] == v
    for k, v in pairs:
        if k in set_ids:
            pool &= f[:, k] != v
    return {
        "kind": "transfer",
        "truth": truth,
        "pool": np.flatnonzero(pool) if set_ids else np.zeros(0, int),
        "set": [(k, v) for k, v in pairs if k in set_ids],
        "relax": set_ids,
    }


EDIT_OPTIONS = (  # (strength, guidance, residual) that ``evaluate_crop_run(choose=True)`` compares
    (0.65, 2.0, False),
    (1.0, 1.0, False),
    (1.0, 2.0, False),
    (1.0, 1.0, True),
    (0.55, 2.0, True),
    (0.35, 1.0, True),
    (0.2, 1.0, True),
)


def seen_analogues(crops: Crops, pairs: list[tuple[int, int]], task: dict, controls, limit: int = 2) -> list:
    """Seen stand-ins for a held-out task, cut from training crops only: the same condition with
    other values of the factors the task relaxes (its technical ones: the same treatment on another
    plate, or DMSO of another plate), each as ``crop_task`` builds it with its truth restricted to
    training crops; those with crops to regenerate from and to compare with, the largest first."""
    spec, f, train = crops.stack.spec, crops.stack.factors, crops.train
    relax = [k for k in task["relax"] if spec.factors[k].role == "technical"] or list(task["relax"])
    fixed = [(k, v) for k, v in pairs if k not in relax]
    held = dict(pairs)
    match = train & np.all([f[:, k] == v for k, v in fixed], axis=0) if fixed else train.copy()
    out = []
    for alt in sorted({tuple(r) for r in f[match][:, relax].tolist()}):
        if any(held[k] == v for k, v in zip(relax, alt)):
            continue
        cand = fixed + list(zip(relax, alt))
        t = crop_task(crops, cand, controls)
        t["truth"] = t["truth"][train[t["truth"]]]
        if len(t["truth"]) >= 2 and len(t["pool"]) and t["set"]:
            t["condition"] = ",".join(f"{spec.factors[k].name}={spec.factors[k].values[v]}" for k, v in cand)
            out.append(t)
    return sorted(out, key=lambda t: -len(t["truth"]))[:limit]


def evaluate_crop_run(
    run: Path,
    sources: int = 200,
    truth_max: int = 400,
    steps: int | None = None,
    progress: bool = True,
    choose: bool = False,
    inversion: str | None = None,
) -> dict:
    """Every crop task of the run (module docstring); writes and returns ``RUN/metrics.json``.
    ``sources``: training crops regenerated per task (at most); ``truth_max``: real held-out crops
    featurised per task (at most); the perturbation and its control are the run's ``--controls``.
    ``choose``: each task's edit (strength, guidance, residual) is the
    one of ``EDIT_OPTIONS`` whose regenerations of its seen stand-ins (``seen_analogues``, half as
    many sources each) land nearest their real training crops (the z-scored mean-feature
    distance); else the run's settings. ``inversion`` (``ode``, ``ddpm``; None: the run's
    ``evaluate.edit_inversion``) and ``steps`` (None: the run's) say how every edit inverts."""
    run = Path(run)
    t0 = time.monotonic()
    r = with_inversion(load_run(run), inversion)
    cfg = r.config
    seed = cfg.train.seed
    crops = prepare_crops(cfg, run, progress)
    st, spec, f = crops.stack, crops.stack.spec, crops.stack.factors
    rng = np.random.default_rng(seed)
    train_rows = np.flatnonzero(crops.train)
    sample = np.sort(rng.choice(train_rows, min(1500, len(train_rows)), replace=False))
    dna = next((i for i, c in enumerate(st.channels) if c.lower() in ("dna", "dapi", "hoechst")), 0)

    def features(images: np.ndarray) -> np.ndarray:
        return crop_features(images, nucleus=dna)

    cache: dict[int, np.ndarray] = {}

    def oracle_view(images: np.ndarray, plates: np.ndarray | None) -> np.ndarray:
        """The oracle reads crops as the model does: uint8 by the given plates' scale, model size."""
        return oracle_features(oracle, resize(crops.intensity.to_uint8(images, plates), crops.data.size))

    def real(rows: np.ndarray) -> np.ndarray:
        todo = [i for i in rows.tolist() if i not in cache]
        if todo:
            for i, x in zip(todo, features(st.images[todo])):
                cache[i] = x
        return np.stack([cache[i] for i in rows.tolist()])

    scale = standardizer(real(sample))
    oracle, oracle_acc = get_oracle(run, cfg, crops.data, progress)
    means = st.images.reshape(len(st.images), -1, st.images.shape[3]).mean(1, dtype=np.float64)
    fields = field_keys(st.metadata)
    controls = _controls(cfg, spec)
    info = np.iinfo(st.images.dtype) if np.issubdtype(st.images.dtype, np.integer) else None
    tasks = []
    for text, pairs in tqdm(
        list(zip(cfg.split.where, where_conditions(spec, cfg.split.where))),
        desc="held-out conditions",
        disable=not progress,
    ):
        task = crop_task(crops, pairs, controls)
        truth, pool = task["truth"], task["pool"]
        entry: dict = {"condition": text, "kind": task["kind"], "truth_crops": int(len(truth))}
        if not len(pool) or not task["set"]:
            tasks.append({**entry, "kind": "skipped", "reason": "no training crops to regenerate it from"})
            continue
        edit: dict = {}
        if choose:
            entry["edit_selection"] = _choose_edit(
                r, crops, pairs, task, controls, sources // 2, steps, seed, real, features, scale
            )
            chosen = entry["edit_selection"]["chosen"]
            edit = dict(zip(("strength", "guidance", "residual"), chosen)) if chosen else {}
        src = np.sort(rng.choice(pool, min(sources, len(pool)), replace=False))
        set_text = ",".join(f"{spec.factors[k].name}={spec.factors[k].values[v]}" for k, v in task["set"])
        t1 = time.monotonic()
        result = regenerate(r, [], [set_text], steps=steps, seed=seed, rows=src, **edit)
        plates = result.metadata[crops.intensity.column].to_numpy(str) if crops.intensity.column else None
        generated = result.raw()
        seconds = time.monotonic() - t1
        target = f[src].copy()
        for k, v in task["set"]:
            target[:, k] = v
        shifted, _ = mean_shift(means, f, crops.train, src, target)
        moved = st.images[src].astype(np.float32) + (shifted - means[src])[:, None, None, :].astype(
            np.float32
        )
        pixel_shift = (np.clip(moved, info.min, info.max) if info else moved).astype(st.images.dtype)
        full = f[src].copy()  # the held-out condition itself, which nearest approaches
        for k, v in pairs:
            full[:, k] = v
        nearest = nearest_rows(spec, f, crops.train, full, np.asarray(task["relax"]), seed)
        truth_rows = (
            truth if len(truth) <= truth_max else np.sort(rng.choice(truth, truth_max, replace=False))
        )
        real_x = real(truth_rows)
        methods = {
            "model": features(generated),
            "copy": real(src),
            "mean_shift": features(pixel_shift),
            "nearest": real(nearest),
        }
        pictures = {
            "model": generated,
            "copy": st.images[src],
            "mean_shift": pixel_shift,
            "nearest": st.images[nearest],
        }
        column = crops.intensity.column
        o_truth = oracle_view(st.images[truth_rows], st.metadata[column][truth_rows] if column else None)
        entry.update(
            set=set_text,
            sources=int(len(src)),
            source_conditions=sorted(set(condition_texts(spec, f[src]))),
            nearest_conditions=sorted(set(condition_texts(spec, f[nearest]))),
            regenerate_seconds=round(seconds, 1),
            methods={},
        )
        for name, x in methods.items():
            m = judge(x, real_x, scale, seed)
            o = oracle_view(pictures[name], plates)  # every method in the target plates' scale
            m["frechet_oracle"] = frechet(o, o_truth)
            m["kid_oracle"] = kernel_distance(o, o_truth)
            entry["methods"][name] = m
        entry["floor"] = floor(truth_rows, fields, real, scale, seed)
        fl, cp = entry["floor"]["distance"], entry["methods"]["copy"]["distance"]
        entry["gap_share"] = (entry["methods"]["model"]["distance"] - fl) / (cp - fl) if cp != fl else None
        tasks.append(entry)
    metrics = {
        "kind": "crops",
        "crops": {"train": int(crops.train.sum()), "heldout": int((~crops.train).sum())},
        "features": len(feature_names(st.channels)),
        "oracle_accuracy": oracle_acc,
        "split": crops.split.to_json(),
        "tasks": tasks,
        "seconds": round(time.monotonic() - t0, 1),
    }
    if not tasks:
        metrics["note"] = "no --holdout-where condition: nothing held out to compare with"
    atomic_write_json(run / "metrics.json", metrics)
    return metrics


def _choose_edit(r, crops, pairs, task, controls, n, steps, seed, real, features, scale) -> dict:
    """``evaluate_crop_run(choose=True)``: each option of ``EDIT_OPTIONS`` regenerates up to ``n``
    crops into each seen stand-in of the task; the lowest mean distance to the stand-ins' real
    training crops wins (the held-out crops play no part)."""
    spec = crops.stack.spec
    rng = np.random.default_rng(seed + 1)
    analogues = seen_analogues(crops, pairs, task, controls)
    if not analogues:
        return {"analogues": [], "chosen": None, "note": "no seen stand-in: the run's settings"}
    picks = [
        (
            np.sort(rng.choice(a["truth"], min(400, len(a["truth"])), replace=False)),
            np.sort(rng.choice(a["pool"], min(n, len(a["pool"])), replace=False)),
            ",".join(f"{spec.factors[k].name}={spec.factors[k].values[v]}" for k, v in a["set"]),
        )
        for a in analogues
    ]
    distances = {}
    for option in EDIT_OPTIONS:
        strength, guidance, residual = option
        d = []
        for truth, src, text in picks:
            res = regenerate(
                r,
                [],
                [text],
                steps=steps,
                seed=seed,
                rows=src,
                strength=strength,
                guidance=guidance,
                residual=residual,
            )
            made = features(res.raw())
            d.append(judge(made, real(truth), scale, seed)["distance"])
        distances[f"{strength:g}:{guidance:g}:{'residual' if residual else 'plain'}"] = float(np.mean(d))
    best = min(distances, key=distances.get)
    copy = float(np.mean([judge(real(src), real(truth), scale, seed)["distance"] for truth, src, _ in picks]))
    return {
        "analogues": [a["condition"] for a in analogues],
        "sources_each": int(n),
        "distances": distances,
        "copy_distance": copy,
        "chosen": list(EDIT_OPTIONS[list(distances).index(best)]),
    }


def summary_lines(metrics: dict) -> list[str]:
    """A few lines for the terminal: per task, each method's distance and two-sample AUC."""
    lines = []
    for t in metrics.get("tasks", []):
        if t["kind"] == "skipped":
            lines.append(f"{t['condition']}: skipped ({t['reason']})")
            continue
        m = t["methods"]
        parts = "  ".join(f"{k} {v['distance']:.3f}/{v['c2st_auc']:.3f}" for k, v in m.items())
        gap = "" if t["gap_share"] is None else f"  gap share {t['gap_share']:.2f}"
        lines.append(
            f"{t['condition']} ({t['kind']}, set {t['set']}): distance/AUC {parts}  floor "
            f"{t['floor']['distance']:.3f}/{t['floor']['c2st_auc']:.3f}{gap}"
        )
        sel = t.get("edit_selection")
        if sel and sel.get("chosen"):
            tried = ", ".join(f"{k} {v:.3f}" for k, v in sel["distances"].items())
            lines.append(f"  edit chosen on {'; '.join(sel['analogues'])}: {sel['chosen']} ({tried})")
    if not lines:
        lines.append(metrics.get("note", "no tasks"))
    return lines
