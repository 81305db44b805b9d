"""A site's validation report under a model's production version, as JSON or as one HTML page.

No `from __future__ import annotations` here: FastAPI must see the real dependency types of the routes.

What ops need to decide whether a model may be used at a site: what the site pushed, its latest drift
check, the model's task metric, held-out accuracy and per-class sensitivity with 95% intervals, calibration
before and after (reliability diagram), the readiness verdict with its reasons and, for binary models, what the
site's threshold means at its own prevalence and at others (PPV and NPV move with prevalence, sensitivity does
not), with the intervals of its sensitivity, specificity and expected cost and the positives and negatives behind.
"""

import html
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Query
from starlette.responses import HTMLResponse

from clreg.learner.operating import Costs, expected_cost, operating_point, point_interval
from clreg.registry.artifacts import ArtifactStore, version_calibration
from clreg.registry.findings import SiteCalibration
from clreg.registry.inputs import InputLog
from clreg.registry.locked import LockedSets, overlaid
from clreg.registry.readiness import assess
from clreg.registry.records import Name
from clreg.registry.store import RedisRegistry
from clreg.serving.charts import line_chart
from clreg.serving.errors import NotReady
from clreg.serving.services import Reader, Svc

PREVALENCES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)


def ppv_npv(sensitivity: float, specificity: float, prevalence: float) -> tuple[float | None, float | None]:
    """PPV and NPV of a rule at a prevalence, by Bayes' rule from its sensitivity and specificity."""
    flagged = sensitivity * prevalence + (1 - specificity) * (1 - prevalence)
    cleared = (1 - sensitivity) * prevalence + specificity * (1 - prevalence)
    ppv = sensitivity * prevalence / flagged if flagged else None
    npv = specificity * (1 - prevalence) / cleared if cleared else None
    return ppv, npv


def _binary(fit: SiteCalibration, threshold: float | None, site_prevalence: float | None,
            costs: Costs) -> dict[str, Any]:
    """The site's threshold (0.5 when it has none) on its held-out scores, its expected cost per case at the
    site's prevalence, and PPV, NPV and expected cost across prevalences."""
    if fit.scores is None or fit.labels is None:
        return {}
    used = 0.5 if threshold is None else threshold
    scores, labels = np.array(fit.scores), np.array(fit.labels)
    point = operating_point(scores, labels, used)
    curve = []
    if point.sensitivity is not None and point.specificity is not None:
        for p in sorted({*PREVALENCES, *([site_prevalence] if site_prevalence else [])}):
            ppv, npv = ppv_npv(point.sensitivity, point.specificity, p)
            curve.append({"prevalence": p, "ppv": ppv, "npv": npv, "expected_cost": expected_cost(point, costs, p)})
    cost = expected_cost(point, costs, site_prevalence)
    spread = point_interval(scores, labels, used, costs, site_prevalence)
    return {"threshold": {"value": used, "site_threshold": threshold, **point.as_dict(), **spread.as_dict(),
                          "expected_cost": cost,
                          "costs": {"false_positive": costs.false_positive, "false_negative": costs.false_negative}},
            "ppv_npv_curve": curve}


def report(reg: RedisRegistry, artifacts: ArtifactStore, model: str, site: str, costs: Costs | None = None,
           inputs: InputLog | None = None) -> dict[str, Any]:
    """The validation report of `site` under `model`'s production version (binary models: the threshold priced
    at `costs`, 1 and 1 by default); with `inputs`, how the site is served now, estimated without labels."""
    record, served = reg.get_site(site), reg.get_model(model)
    rules = served.readiness
    version = reg.version_by_alias(model)
    if version is None:
        raise NotReady(f"model {model!r} has no production version")
    calibration = version_calibration(artifacts, version)
    locked = LockedSets(reg, model).of_version(version.number).get(site)
    ready = assess(site, overlaid(reg, calibration, model, version.number), rules, served.task_metric)
    reasons = [r.replace("held-out", "locked-set") for r in ready.reasons] if locked else ready.reasons
    counts = reg.batches.site_counts(model, [site]).get(site)
    drift = [r for r in reg.reports.drift(model, limit=200) if r.site == site]
    fit = calibration.sites.get(site) if calibration else None
    out: dict[str, Any] = {
        "model": model, "version": version.number, "site": site, "validated": ready.validated,
        "reasons": reasons, "rules": rules.model_dump(), "metric": served.task_metric,
        "data": {**counts.model_dump(), "prevalence": counts.prevalence} if counts else None,
        "drift": {"report": drift[-1].id, "drift": drift[-1].drift, "drifted_share": drift[-1].drifted_share,
                  "reference_version": drift[-1].reference_version, "at": drift[-1].created_at} if drift else None,
        "heldout": fit.model_dump(exclude={"scores", "labels"}) if fit else None,
        # the site's locked test set under this version: what readiness judged when there is one
        "locked": {**locked.figures.model_dump(exclude={"scores", "labels"}), "digest": locked.digest,
                   "batches": locked.batch_ids} if locked else None,
        "judged_on": "locked" if locked else "heldout",
        "served": _served(inputs, model, site) if inputs is not None else None,
    }
    if fit is not None:
        prevalence = counts.prevalence[1] if counts and len(counts.prevalence) == 2 else None
        out.update(_binary(fit, record.threshold, prevalence, costs or Costs(false_positive=1.0, false_negative=1.0)))
    return out


def _served(inputs: InputLog, model: str, site: str) -> dict[str, Any] | None:
    """The replicas' estimate of the site's recent answers and the watch's checked one (None: no answers yet)."""
    estimate, checked = inputs.estimates(model).get(site), inputs.checked(model).get(site)
    if estimate is None and checked is None:
        return None
    return {"estimate": estimate[0] if estimate else None, "answers": estimate[1] if estimate else 0,
            "checked": checked.model_dump() if checked else None}


def _rows(pairs: list[tuple[str, Any]]) -> str:
    return "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in pairs)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else "-" if v is None else str(v)


def _reliability(held: dict[str, Any]) -> list[str]:
    """The reliability diagram (accuracy against mean confidence per bin; on the diagonal is calibrated) and its
    bins as a table."""
    series = {f"{name.split('_')[1]} calibration": [(c, a) for c, a, _ in held[name]]
              for name in ("reliability_before", "reliability_after") if held.get(name)}
    if not series:
        return []
    out = ["<h2>Reliability</h2>", line_chart("accuracy against confidence per bin", "mean confidence",
                                              "accuracy", series, diagonal=True, dots=True)]
    for name in ("reliability_before", "reliability_after"):
        if held.get(name):
            out.append(f"<h3>{name.split('_')[1]} calibration</h3>"
                       + _table(["mean confidence", "accuracy", "samples"], held[name]))
    return out


def _span(pair: Any) -> str:
    """A 95% interval as "low - high" ("-" where there is none)."""
    return "-" if not pair else f"{pair[0]:.3f} - {pair[1]:.3f}"


def _threshold(point: dict[str, Any], curve: list[dict[str, Any]]) -> list[str]:
    costs = point["costs"]
    return [f"<h2>Threshold {point['value']:g}</h2><table>" + _rows([
                ("held-out positives, negatives", f"{point.get('positives', '-')}, {point.get('negatives', '-')}"),
                ("sensitivity (95% interval)",
                 f"{_fmt(point.get('sensitivity'))} ({_span(point.get('sensitivity_interval'))})"),
                ("specificity (95% interval)",
                 f"{_fmt(point.get('specificity'))} ({_span(point.get('specificity_interval'))})"),
                ("expected cost per case at the site's prevalence (95% interval)",
                 f"{_fmt(point.get('expected_cost'))} ({_span(point.get('expected_cost_interval'))})"),
                ("costs (false positive, false negative)", f"{costs['false_positive']:g}, {costs['false_negative']:g}"),
            ]) + "</table>",
            line_chart("PPV and NPV by prevalence", "prevalence", "predictive value",
                       {"PPV": [(c["prevalence"], c["ppv"]) for c in curve if c["ppv"] is not None],
                        "NPV": [(c["prevalence"], c["npv"]) for c in curve if c["npv"] is not None]}),
            _table(["prevalence", "PPV", "NPV", "expected cost"],
                   [[c["prevalence"], c["ppv"], c["npv"], c["expected_cost"]] for c in curve])]


def _served_html(served: dict[str, Any]) -> str:
    checked = served.get("checked") or {}
    return "<h2>Served now, without labels</h2><table>" + _rows([
        ("estimated accuracy of the recent answers", _fmt(served.get("estimate"))),
        ("answers it rests on", served.get("answers")),
        ("checked estimate (answers also run under the inputs' own BatchNorm statistics)",
         _fmt(checked.get("estimate"))),
        ("share of answers unchanged there", _fmt(checked.get("stable"))),
        ("inputs it rests on, version", f"{checked.get('answers', '-')}, v{checked.get('version', '-')}")]) + "</table>"


def _locked_html(locked: dict[str, Any], metric: str) -> str:
    """The locked test set's figures: what readiness judged (registry/locked.py)."""
    return (f"<h2>Locked test set (readiness judges these; digest <code>{html.escape(locked['digest'])}</code>)</h2>"
            "<table>" + _rows([
                ("samples", locked.get("samples")), ("samples per class", locked.get("class_counts") or "-"),
                (f"{metric} (95% interval)",
                 f"{_fmt(locked.get('metric_value'))} ({_span(locked.get('metric_interval'))})"),
                ("accuracy (95% interval)", f"{_fmt(locked.get('accuracy'))} ({locked.get('accuracy_interval')})"),
                ("ECE at the served temperature", _fmt(locked.get("ece_calibrated")))]) + "</table>")


def render_html(r: dict[str, Any]) -> str:
    """The report as one self-contained page (no script, no external asset)."""
    held = r["heldout"] or {}
    verdict = "validated" if r["validated"] else "NOT validated: " + "; ".join(r["reasons"])
    parts = [f"<h1>{html.escape(r['site'])} under {html.escape(r['model'])} v{r['version']}</h1>",
             f"<p><b>{html.escape(verdict)}</b> (rules: {html.escape(str(r['rules']))})</p>",
             "<h2>Held-out figures</h2><table>" + _rows([
                 ("samples", held.get("samples")), ("samples per class", held.get("class_counts") or "-"),
                 (f"{r.get('metric', 'task metric')} (the model's task metric; 95% interval)",
                  f"{_fmt(held.get('metric_value'))} ({_span(held.get('metric_interval'))})"
                  if held.get("metric") else "- (not recorded by this version)"),
                 ("the same, answering every image the same class", _fmt(held.get("metric_baseline"))),
                 ("accuracy", _fmt(held.get("accuracy"))),
                 ("95% interval", held.get("accuracy_interval")), ("temperature", _fmt(held.get("temperature"))),
                 ("ECE before / after", f"{_fmt(held.get('ece'))} / {_fmt(held.get('ece_calibrated'))}"),
                 ("ECE of a perfectly calibrated model on these samples", _fmt(held.get("ece_floor"))),
                 ("calibration error after (debiased)", _fmt(held.get("error_calibrated")))]) + "</table>"]
    if r.get("locked"):
        parts.append(_locked_html(r["locked"], r.get("metric", "task metric")))
    if held.get("sensitivity"):
        parts.append("<h2>Sensitivity per class</h2>" + _table(
            ["class", "found", "95% low", "95% high"], [[k, *v] for k, v in held["sensitivity"].items()]))
    parts += _reliability(held)
    if r.get("served"):
        parts.append(_served_html(r["served"]))
    if r.get("ppv_npv_curve"):
        parts += _threshold(r["threshold"], r["ppv_npv_curve"])
    return ("<!doctype html><html><head><meta charset='utf-8'><title>clreg site validation</title>"
            "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px;text-align:right}</style>"
            "</head><body>" + "".join(parts) + "</body></html>")


router = APIRouter()


@router.get("/v1/sites/{site}/validation", response_model=None)
def site_validation(site: Name, model: Name, svc: Svc, _: Reader, format: Literal["json", "html"] = "json",  # noqa: A002
                    cost_fp: Annotated[float, Query(gt=0, le=1e6)] = 1.0,
                    cost_fn: Annotated[float, Query(gt=0, le=1e6)] = 1.0) -> dict[str, Any] | HTMLResponse:
    """Whether the production version is fit for use at the site, and the figures that say so; binary models
    price the site's threshold at the given costs of a false positive and a false negative."""
    out = report(svc.registry, svc.artifacts, model, site, Costs(false_positive=cost_fp, false_negative=cost_fn),
                 svc.inputs)
    return HTMLResponse(render_html(out)) if format == "html" else out
