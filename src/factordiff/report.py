"""``RUN/report.html``: one self-contained page (images inlined) built from ``RUN/metrics.json``,
which holds every number the page shows, and the PNG figures in ``RUN/figures``."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from factordiff.checkpoint import atomic_write_text, read_json
from factordiff.errors import FactordiffError
from factordiff.train import training_curves

CSS = """
body{font:14px/1.45 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0}\
td,th{padding:.25em .7em;border-bottom:1px solid #eee;text-align:right}
th:first-child,td:first-child{text-align:left}.good{color:#137333}.bad{color:#b3261e}
img{image-rendering:pixelated;max-width:100%}.note{color:#555;font-size:.92em}
"""


def _svg_curve(points: list[list[float]], title: str, width: int = 330, height: int = 180) -> str:
    if len(points) < 2:
        return ""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    lo, hi = min(ys), max(ys)
    span_x, span_y = max(xs) - min(xs) or 1, hi - lo or 1
    pts = " ".join(
        f"{30 + (x - min(xs)) / span_x * (width - 40):.1f},{10 + (hi - y) / span_y * (height - 40):.1f}"
        for x, y in points
    )
    return (
        f'<svg width="{width}" height="{height}" role="img"><title>{html.escape(title)}</title>'
        f'<polyline fill="none" stroke="#1a73e8" stroke-width="1.5" points="{pts}"/>'
        f'<text x="30" y="{height - 12}" font-size="11">step {min(xs)}–{max(xs)}</text>'
        f'<text x="{width - 10}" y="{height - 12}" font-size="11" text-anchor="end">'
        f"{html.escape(title)}</text>"
        f'<text x="2" y="14" font-size="10">{hi:.3g}</text>'
        f'<text x="2" y="{height - 28}" font-size="10">{lo:.3g}</text></svg>'
    )


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return html.escape(str(v))


def _img(path: Path, alt: str) -> str:
    if not path.is_file():
        return f"<p class=note>({html.escape(alt)}: figure missing)</p>"
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _counterfactual_table(cf: dict) -> str:
    kinds = [k for k in ("seen", "heldout") if cf.get(k)]
    if not kinds:
        return "<p>No counterfactuals were evaluated.</p>"
    factors = list(cf[kinds[0]]["effectiveness_by_factor"])
    head = "".join(f"<th>{k} effectiveness</th><th>{k} preservation</th>" for k in kinds)
    rows = []
    for name in factors:
        cells = "".join(
            f"<td>{_fmt(cf[k]['effectiveness_by_factor'].get(name))}</td>"
            f"<td>{_fmt(cf[k]['preservation_by_factor'].get(name))}</td>"
            for k in kinds
        )
        rows.append(f"<tr><td>{html.escape(name)}</td>{cells}</tr>")
    mean = "".join(
        f"<td><b>{_fmt(cf[k]['effectiveness'])}</b></td><td><b>{_fmt(cf[k]['preservation'])}</b></td>"
        for k in kinds
    )
    rows.append(f"<tr><td><b>mean</b></td>{mean}</tr>")
    rows.append(
        "<tr><td><b>all factors right</b></td>"
        + "".join(f"<td colspan=2><b>{_fmt(cf[k].get('all_right'))}</b></td>" for k in kinds)
        + "</tr>"
    )
    counts = {
        "edits": "edits",
        "targets_from_reference": "target code from a reference image (value has no prototype)",
        "skipped": "skipped (no image has the target value)",
    }
    for key, label in counts.items():
        if key == "edits" or any(cf[k].get(key) for k in kinds):
            rows.append(
                f"<tr><td>{label}</td>"
                + "".join(f"<td colspan=2>{cf[k].get(key, 0)}</td>" for k in kinds)
                + "</tr>"
            )
    return f"<table><tr><th>factor</th>{head}</tr>{''.join(rows)}</table>"


def _pairs_section(p: dict | None) -> str:
    """Two-factor edits into held-out combinations, or why there are none."""
    if not p:
        return ""
    parts = ["<h3>Two factors at once, into held-out combinations</h3>"]
    if p.get("absent"):
        return "".join(parts) + f"<p class=note>Not measured: {html.escape(p['absent'])}.</p>"
    names = " and ".join(html.escape(n) for n in p.get("factors", []))
    parts.append(
        f"<p class=note>Each edit changes {names} of a training combination into a held-out value pair (both "
        "code blocks swapped, guidance on both). <i>Effectiveness</i>: share of edits with both changed "
        "factors read as requested; <i>preservation</i>: mean over the other factors of the share still "
        "read as the source's.</p>"
    )
    by = "".join(
        f"<tr><td>{html.escape(n)} read as requested</td><td>{_fmt(v)}</td></tr>"
        for n, v in p.get("effectiveness_by_factor", {}).items()
    )
    parts.append(
        f"<table><tr><td><b>effectiveness</b></td><td><b>{_fmt(p['effectiveness'])}</b></td></tr>{by}"
        f"<tr><td><b>preservation</b></td><td><b>{_fmt(p['preservation'])}</b></td></tr>"
        f"<tr><td><b>all factors right</b></td><td><b>{_fmt(p['all_right'])}</b></td></tr><tr><td>edits</td>"
        f"<td>{p['edits']}</td></tr></table>"
    )
    return "".join(parts)


def _soundness_section(s: dict) -> str:
    """Composition (repeated null edits) and reversibility (A -> B -> A)."""
    rows = [
        (f"null edit applied {n} time{'s' if n != '1' else ''}", v)
        for n, v in s.get("composition", {}).items()
    ]
    rows.append(("A &rarr; B &rarr; A (one factor changed and back)", s.get("reversibility", {})))
    body = "".join(
        f"<tr><td>{label}</td><td>{_fmt(v.get('l1'))}</td><td>{_fmt(v.get('oracle_agreement'))}</td></tr>"
        for label, v in rows
    )
    return (
        "<h2>Counterfactual soundness</h2><p class=note>After Monteiro et al. (ICLR 2023), on "
        f"{s.get('sources', '–')} training-combination sources. <i>Composition</i>: the null edit (invert "
        "and regenerate under the source's own codes) applied repeatedly should leave the image unchanged. "
        "<i>Reversibility</i>: changing a factor and changing it back should return the source. <i>L1</i>: "
        "mean absolute pixel difference to the source, pixels in [0, 1]; <i>oracle agreement</i>: share "
        "of images on which the oracle reads every factor as the source's.</p>"
        f"<table><tr><th>edit</th><th>L1</th><th>oracle agreement</th></tr>{body}</table>"
    )


def _cells_section(c: dict) -> str:
    """Cell Painting figures (evaluate/cells.py), each beside its null."""
    if c.get("absent"):
        return ""
    parts = ["<h2>Cell Painting: virtual experiments</h2>"]
    b = c.get("batch_swap")
    if b:
        parts.append(
            "<p class=note>Training images of a compound regenerated into a batch that "
            "compound was never seen in ("
            + html.escape(", ".join(b["combinations"]))
            + f"; {b['edits']} edits). <i>Target batch</i>: share the oracle reads as the target batch; "
            "<i>biology kept</i>: share whose compound, dose and cell line it still reads as the source's; "
            "<i>compound kept</i>: the compound alone. <i>Autoencoder round trip</i>: the sources through "
            "the latent autoencoder alone, the most an edit can keep; <i>true counterfactual</i> (cellsim): "
            "the same cells rendered in the target plate, what a perfect edit gives. "
            + (
                html.escape(
                    f"Edits: strength {b['edit']['strength']:g}, guidance {b['edit']['guidance']:g}"
                    + (", residual. " if b["edit"]["residual"] else ". ")
                )
                if "edit" in b
                else ""
            )
            + "Distances to the real held-out images "
            "over the oracle's features (per channel: the other channels replaced by their mean).</p>"
            "<table><tr><th>method</th><th>target batch</th><th>biology kept</th><th>compound kept</th>"
            "<th>Frechet, all channels</th><th>KID</th>"
            + "".join(f"<th>Frechet {html.escape(k)}</th>" for k in b["frechet"] if k != "all")
            + "</tr>"
        )
        rows = [("model", b, b), ("copy the source", b["copy_source"], b["copy_source_distances"])]
        rows += (
            [("batch mean shift", b["mean_shift"], b.get("mean_shift_distances"))]
            if "mean_shift" in b
            else []
        )
        rows += (
            [("autoencoder round trip", b["autoencoder_roundtrip"], None)]
            if "autoencoder_roundtrip" in b
            else []
        )
        rows += (
            [("true counterfactual (ceiling)", b["true_counterfactual"], None)]
            if "true_counterfactual" in b
            else []
        )
        for name, rates, dist in rows:
            parts.append(
                f"<tr><td>{name}</td><td>{_fmt(rates['target_batch_rate'])}</td>"
                f"<td>{_fmt(rates['biology_kept_rate'])}</td><td>{_fmt(rates.get('compound_kept_rate'))}</td>"
                + (
                    f"<td>{_fmt(dist['frechet']['all'])}</td><td>{_fmt(dist['kernel']['all'])}</td>"
                    + "".join(f"<td>{_fmt(v)}</td>" for k, v in dist["frechet"].items() if k != "all")
                    if dist
                    else ""
                )
                + "</tr>"
            )
        parts.append("</table>")
    u = c.get("unseen_compound")
    if u:
        ceiling = u.get("structure_ceiling", {})
        parts.append(
            f"<p class=note>Compounds no training image had, generated at {html.escape(str(u.get('dose')))} "
            "from same-batch controls with codes from their structure: share of images closer (oracle "
            "features) to the real compound's mean at that dose than to the controls'. Beside it: the "
            "controls themselves, real images of the nearest training compound by structure, and (cellsim) "
            "whether the true effects of the training compounds predict this one's from structure "
            "at all (the cosine of that prediction with the truth).</p><table><tr><th>compound</th>"
            "<th>model</th><th>copy the control</th><th>nearest training compound</th><th>structure "
            "ceiling (cosine)</th></tr>"
            + "".join(
                f"<tr><td>{html.escape(r['compound'])}</td>"
                f"<td>{_fmt(r['closer_than_control'])}</td><td>{_fmt(r['copy_control_closer'])}</td>"
                f"<td>{html.escape(r['nearest_compound'])}: {_fmt(r['nearest_compound_closer'])}</td>"
                f"<td>{_fmt(ceiling.get(r['compound'], {}).get('cosine'))}</td></tr>"
                for r in u["by_compound"]
            )
            + f"<tr><td><b>all</b></td><td><b>{_fmt(u['closer_than_control'])}</b></td>"
            f"<td>{_fmt(u['copy_control'])}</td><td>{_fmt(u['nearest_compound'])}</td>"
            "<td></td></tr></table>"
            + (
                "<p class=note>The same edit into training compounds, with their own codes: "
                f"{_fmt(u['seen_compounds'])} closer to the compound than to the controls (how much of a "
                "compound the model imposes when its code is right).</p>"
                if u.get("seen_compounds") is not None
                else ""
            )
        )
    mp = c.get("map")
    if mp:
        parts.append(
            "<p class=note>Compound retrieval against controls (copairs mAP over oracle "
            "features): real treated images, controls regenerated into each compound, and the "
            "controls themselves.</p>" + _kv_table(mp)
        )
    return "".join(parts)


def _kv_table(d: dict) -> str:
    return (
        "<table>"
        + "".join(
            f"<tr><td>{html.escape(str(k))}</td><td>{_fmt(v)}</td></tr>"
            for k, v in d.items()
            if not isinstance(v, (dict, list))
        )
        + "</table>"
    )


def _analysis_section(run: Path, a: dict) -> str:
    parts = ["<h2>Latent space</h2>"]
    dis = a.get("disentanglement", {})
    if dis:
        keys = [k for k in dis["raw"] if k != "settings"]
        variants = list(dis)
        parts.append(
            "<p class=note>disentanglement_lib protocols on the codes of "
            f"{a.get('images')} images; <i>first_pc</i>: each code block reduced to its first principal "
            "component (as DisDiff reports).</p>"
        )
        parts.append(
            "<table><tr><th>metric</th>"
            + "".join(f"<th>{v}</th>" for v in variants)
            + "</tr>"
            + "".join(
                f"<tr><td>{k}</td>" + "".join(f"<td>{_fmt(dis[v].get(k))}</td>" for v in variants) + "</tr>"
                for k in keys
            )
            + "</table>"
        )
    pr = a.get("probes", {})
    if pr:
        cols = list(next(iter(pr.values())))
        parts.append(
            "<p class=note>Probes from codes to factors: logistic regression (held-out accuracy) and 5-way "
            "few-shot nearest-centroid accuracy.</p>"
        )
        parts.append(
            "<table><tr><th>factor</th>"
            + "".join(f"<th>{c}</th>" for c in cols)
            + "</tr>"
            + "".join(
                f"<tr><td>{html.escape(n)}</td>" + "".join(f"<td>{_fmt(v[c])}</td>" for c in cols) + "</tr>"
                for n, v in pr.items()
            )
            + "</table>"
        )
    figs = a.get("figures", {})
    if "traversals" in figs:
        parts.append(
            "<h3>Traversals</h3><p class=note>One row per code block ("
            + ", ".join(map(html.escape, figs["traversals"]["rows"]))
            + "), moved from its lowest to its highest value.</p>"
            + _img(run / figs["traversals"]["file"], "traversals")
        )
    if "interpolations" in figs:
        sm = a.get("interpolation_smoothness", {})
        spreads = ", ".join(f"{p['spread']:.3f}" for p in sm.get("paths", []))
        parts.append(
            "<h3>Interpolations</h3><p class=note>Codes interpolated linearly, x_T spherically. Smoothness "
            f"spread per row (std/mean of consecutive feature distances; 0 = constant speed): {spreads}. "
            f"Perceptual path length: {_fmt(a.get('perceptual_path_length'))}.</p>"
            + _img(run / figs["interpolations"]["file"], "interpolations")
        )
    if "projections" in figs:
        parts.append(
            "<h3>Projections</h3><p class=note>Rows: code blocks (first two principal components); "
            "columns: coloured by "
            + ", ".join(map(html.escape, figs["projections"]["columns"]))
            + ".</p>"
            + _img(run / figs["projections"]["file"], "projections")
        )
    return "".join(parts)


def _short(column: str) -> str:
    """A figure's name for a table header: ``read_as_target.Metadata_Batch`` -> ``target Batch``."""
    for long, short in (("read_as_target.", "target "), ("read_as_source.", "source "), ("Metadata_", "")):
        column = column.replace(long, short)
    return column.replace("_", " ")


def _profile_sections(m: dict) -> list[str]:
    """The profile run's figures: cleaning, each held-out task (model beside the baselines), mAP."""
    c = m.get("cleaning", {})
    parts = [
        f"<p class=note>Held out: {html.escape(m.get('split', {}).get('description', '–'))} "
        f"({m['rows']['heldout']} rows; {m['rows']['train']} training rows). Table: "
        f"{c.get('rows')} of {c.get('rows_read')} rows and {c.get('features')} features "
        f"kept; {len(c.get('columns_dropped_missing', []))} feature column(s) with more than "
        f"{c.get('max_missing', 0):.0%} missing values dropped, then {c.get('rows_dropped_missing')} "
        f"row(s) with missing values, {len(c.get('columns_dropped_constant', []))} constant column(s). "
        f"Normalisation: {html.escape(str(m.get('normalization', {}).get('normalize')))}.</p>"
    ]
    parts.append(
        "<h2>Held-out conditions</h2><p class=note><i>mean error</i>: mean over features of |mean(generated) "
        "- mean(real held-out)|, features standardised by the training rows; <i>energy</i>: energy distance "
        "in the same units (0 = same distribution). <i>read_as_target</i>: share of generated rows an "
        "oracle (logistic regression on every real row) reads as the requested value; <i>read_as_source</i>: "
        "share whose biological factor is still read as the source's; <i>moa_hits</i>: share whose nearest "
        "training profile has the true mechanism of action; <i>c2st auc</i>: a classifier two-sample test "
        "against the real held-out rows (ROC AUC, 0.5 = indistinguishable); <i>spread ratio</i>: "
        "the rows' spread over the real rows' (well under 1: mode collapse). Baselines: copy the source, "
        "mean shift, nearest training condition, additive ridge model, and for batch transfers ComBat, "
        "sphering and Harmony; the replicate floor is the real held-out rows, one half against the "
        "other. Oracles reading the rows are fitted on every real row but the held-out condition's.</p>"
    )
    for task in m.get("tasks", []):
        parts.append(f"<h3>{html.escape(task['condition'])} ({html.escape(task['kind'])})</h3>")
        if task["kind"] == "skipped":
            parts.append(f"<p>{html.escape(task['reason'])}</p>")
            continue
        cols = list(next(iter(task["methods"].values())))
        # best: the smallest error and energy, the two-sample AUC nearest 0.5
        best = {
            k: min(
                (r[k] for r in task["methods"].values()), key=lambda v: abs(v - 0.5) if k == "c2st_auc" else v
            )
            for k in ("mean_error", "energy", "c2st_auc")
            if k in cols
        }
        methods = dict(task["methods"])
        if "floor" in task:
            methods["replicate floor"] = task["floor"]
        rows = "".join(
            f"<tr><td>{html.escape(n)}</td>"
            + "".join(
                f"<td class={'good' if best.get(k) == r.get(k) else ''}>{_fmt(r.get(k, float('nan')))}</td>"
                for k in cols
            )
            + "</tr>"
            for n, r in methods.items()
        )
        ceiling = "".join(
            " The same oracle reads the real held-out rows themselves as the target "
            f"{html.escape(k)} on {_fmt(v)}."
            for k, v in task.get("real_heldout_read_as_target", {}).items()
        )
        starts = ""
        if task.get("source_conditions"):
            starts = (
                " Every method but <i>nearest</i> starts from the source rows ("
                + html.escape("; ".join(task["source_conditions"][:6]))
                + (" ..." if len(task["source_conditions"]) > 6 else "")
                + "); <i>nearest</i> draws real rows of "
                + html.escape("; ".join(task.get("nearest_conditions", [])[:6]))
                + "."
            )
        parts.append(
            f"<p class=note>{task['sources']} source rows, {task['truth_rows']} real held-out rows."
            f"{starts}{ceiling}</p>"
            f"<table><tr><th>method</th>{''.join(f'<th>{html.escape(_short(k))}</th>' for k in cols)}</tr>"
            f"{rows}</table>"
        )
    for key, what in (("retrieval", "training"), ("retrieval_heldout", "held-out")):
        r = m.get(key)
        if not r:
            continue
        parts.append(
            f"<h2>Perturbation retrieval, {what} perturbations (copairs mAP)</h2><p class=note>"
            "Positives: wells of the same perturbation and dose; negatives: control wells on the same "
            "plate. <i>model</i> and <i>mean_shift</i>: the perturbation wells regenerated from same-plate "
            "controls; <i>copy_control_null</i>: those controls unchanged.</p>"
        )
        parts.append(
            "<table><tr><th>rows</th><th>mAP</th><th>significant share</th><th>groups</th></tr>"
            + "".join(
                f"<tr><td>{html.escape(n)}</td><td>{_fmt(v['map'])}</td><td>{_fmt(v['significant'])}</td>"
                f"<td>{v['groups']}</td></tr>"
                for n, v in r.items()
            )
            + "</table>"
        )
    parts.append(
        "<p class=note>Oracle cross-validated accuracy on real rows: "
        + html.escape(", ".join(f"{k} {v:.3f}" for k, v in m.get("oracle_accuracy", {}).items()))
        + "</p>"
    )
    return parts


def build_report(run: Path) -> Path:
    """Write ``RUN/report.html`` from ``RUN/metrics.json`` and the figures; returns its path."""
    run = Path(run)
    if not (run / "metrics.json").is_file():
        raise FactordiffError(f"{run}: no metrics.json; run factordiff evaluate {run} first")
    m = read_json(run / "metrics.json")
    if m.get("kind") == "profiles":
        parts = [f"<h1>factordiff report: {html.escape(run.name)} (profiles)</h1>", *_profile_sections(m)]
        curves = training_curves(run / "train_log.jsonl")
        if curves:
            parts.append(
                "<h2>Training</h2>"
                + "".join(_svg_curve(pts, f"{stage} loss") for stage, pts in curves.items())
            )
        return _write_page(run, parts)
    cf = m.get("counterfactual", {})
    parts = [f"<h1>factordiff report: {html.escape(run.name)}</h1>"]
    parts.append(
        f"<p class=note>Held-out split: {html.escape(m.get('split', {}).get('description', '–'))}. "
        f"Edits: inversion up to {cf.get('edit_strength', 1.0):g} of the noise schedule and regeneration, "
        f"{cf.get('steps', '–')} steps each, guidance {cf.get('guidance', '–')} on the changed factor.</p>"
    )
    parts.append("<h2>Counterfactuals, judged by the oracle</h2>")
    parts.append(
        "<p class=note><i>Effectiveness</i>: share of edits of a factor that the oracle reads as the "
        "requested value. <i>Preservation</i>: share of edits of the other factors after which the oracle "
        "still reads this factor as in the source. <i>seen</i>: the edited combination was in the training "
        "data; <i>heldout</i>: it was held out from every learning stage.</p>"
    )
    parts.append(_counterfactual_table(cf))
    parts.append(_pairs_section(cf.get("heldout_pairs")))
    figs = m.get("figures", {})
    if "counterfactuals" in figs:
        f = figs["counterfactuals"]
        parts.append(
            "<h2>Counterfactual grid</h2><p class=note>Rows: source images (seen combinations). Columns: "
            + ", ".join(html.escape(c) for c in f["columns"])
            + " — each factor column shows the source with that factor changed.</p>"
        )
        parts.append(_img(run / f["file"], "counterfactual grid"))
    if "samples" in figs:
        f = figs["samples"]
        parts.append(
            "<h2>Samples</h2><p class=note>Generated from noise under prototype codes: rows "
            f"{html.escape(f['rows'])}, columns {html.escape(f['columns'])}; other factors fixed; held-out "
            "combinations outlined in red.</p>"
        )
        parts.append(_img(run / f["file"], "sample grid"))
    s = m.get("samples", {})
    if s:
        g = m.get("samples_guidance", {"form": "joint", "weight": 1.0})
        parts.append(
            "<h2>Sample accuracy</h2><p class=note>Samples from noise under prototype codes, "
            f"{html.escape(str(g['form']))} guidance, weight {_fmt(g['weight'])} on every factor "
            "(joint at weight 1: no guidance); read by the oracle.</p><table><tr><th>combinations</th>"
            "<th>all factors right</th>"
            + "".join(f"<th>{html.escape(n)}</th>" for n in next(iter(s.values()))["by_factor"])
            + "</tr>"
        )
        for kind, v in s.items():
            parts.append(
                f"<tr><td>{kind}</td><td>{_fmt(v['all_factors'])}</td>"
                + "".join(f"<td>{_fmt(x)}</td>" for x in v["by_factor"].values())
                + "</tr>"
            )
        parts.append("</table>")
    if m.get("soundness"):
        parts.append(_soundness_section(m["soundness"]))
    if any(k in m for k in ("batch_swap", "unseen_compound", "map")):
        parts.append(_cells_section(m))
    parts.append("<h2>Reconstruction and oracle</h2>")
    parts.append(
        "<p class=note>Inversion (at the edits' strength) followed by sampling with nothing changed; "
        "MSE of pixels in [0, 1].</p>" + _kv_table(m.get("reconstruction", {}))
    )
    parts.append(
        "<p class=note>Oracle accuracy per factor on fresh real images.</p>"
        + _kv_table(m.get("oracle_accuracy", {}))
    )
    ro = m.get("distiller_readout", {})
    if ro:
        cols = list(next(iter(ro.values())))
        parts.append(
            "<h2>Held-out read-out of the codes</h2><p class=note>Per factor: the encoder's own accuracy "
            "and the R<sup>2</sup> of a linear read-out of the value index (scaled to [0, 1]) from the whole "
            "code, fitted on training images, on other training-split images (<i>seen</i>) and on held-out "
            "images.</p>"
            "<table><tr><th>factor</th>"
            + "".join(f"<th>{html.escape(c)}</th>" for c in cols)
            + "</tr>"
            + "".join(
                f"<tr><td>{html.escape(n)}</td>"
                + "".join(f"<td>{_fmt(v.get(c))}</td>" for c in cols)
                + "</tr>"
                for n, v in ro.items()
            )
            + "</table>"
        )
    curves = m.get("training", {})
    if curves:
        parts.append(
            "<h2>Training</h2>" + "".join(_svg_curve(pts, f"{stage} loss") for stage, pts in curves.items())
        )
    if "analysis" in m:
        parts.append(_analysis_section(run, m["analysis"]))
    return _write_page(run, parts)


def _write_page(run: Path, parts: list[str]) -> Path:
    page = (
        f"<!doctype html><html><head><meta charset=utf-8><title>factordiff {html.escape(run.name)}</title>"
        f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>"
    )
    out = run / "report.html"
    atomic_write_text(out, page)
    return out
