"""Alert sinks for drift: the JSON payload every sink sends, and a webhook that retries and never raises.

A failed webhook must not fail the batch: the drift report is already stored and the alert is on the
stream, so delivery problems are logged and reported as False instead of raised.
"""

from __future__ import annotations

import logging
import time
from typing import Annotated, Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from registry.records import ColumnDrift, DriftReport

log = logging.getLogger(__name__)


HTTP_URL = r"^https?://\S+$"


class WebhookConfig(BaseModel):
    """Where drift alerts are posted: a default url and per-model overrides; no url means no webhook.

    Overrides live here rather than on the Model record so that routing alerts (an ops concern, often a
    secret URL) needs no schema change and no API write: CLREG_WEBHOOK__PER_MODEL='{"cnn": "https://..."}'.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    url: str | None = Field(default=None, pattern=HTTP_URL)
    per_model: dict[str, Annotated[str, StringConstraints(pattern=HTTP_URL)]] = Field(default_factory=dict)
    timeout_s: float = Field(default=2.0, gt=0.0)
    retries: int = Field(default=3, ge=0)  # attempts after the first
    backoff_s: float = Field(default=0.2, ge=0.0)  # doubled after every failed attempt

    def url_for(self, model: str) -> str | None:
        """The model's own webhook, else the default one."""
        return self.per_model.get(model, self.url)


def _test(drift: ColumnDrift | None) -> dict[str, Any] | None:
    """One test's outcome for the payload."""
    if drift is None:
        return None
    return {"method": drift.method, "score": drift.score, "threshold": drift.threshold, "drifted": drift.drifted}


def _signals(report: DriftReport) -> list[str]:
    """Which tests found drift: "features" (per-column), "label" (prior shift), "embedding" (MMD)."""
    flags = {"features": report.feature_drift,
             "label": report.label_drift is not None and report.label_drift.drifted,
             "embedding": report.embedding_mmd is not None and report.embedding_mmd.drifted}
    return [name for name, flagged in flags.items() if flagged]


def alert_payload(report: DriftReport, report_url: str) -> dict[str, Any]:
    """The JSON body of a drift alert: the verdict, its strongest evidence, and a link to the full report."""
    return {
        "kind": "drift",
        "model": report.model,
        "site": report.site,
        "batch_id": report.batch_id,
        "report_id": report.id,
        "reference_version": report.reference_version,
        "samples": report.samples,
        "verdict": "drift" if report.drift else "no_drift",
        "signals": _signals(report),
        "feature_drift": report.feature_drift,
        "top_features": report.top_columns(),
        "drifted_share": report.drifted_share,
        "label_drift": _test(report.label_drift),
        "embedding_mmd": _test(report.embedding_mmd),
        "link": report_url,
        "created_at": report.created_at,
    }


def _retryable(status: int) -> bool:
    """Server errors and rate limits may pass on a later try; other 4xx answers will not."""
    return status >= 500 or status == 429


def post_webhook(cfg: WebhookConfig, payload: dict[str, Any], url: str | None = None) -> bool:
    """POST the payload as JSON to url (default cfg.url), retrying network errors and 5xx/429 with backoff.

    True when a 2xx came back; False without a url or after the last failed attempt.
    """
    url = url or cfg.url
    if url is None:
        return False
    with httpx.Client(timeout=cfg.timeout_s) as client:
        for attempt in range(cfg.retries + 1):
            if attempt:
                time.sleep(cfg.backoff_s * 2 ** (attempt - 1))
            try:
                response = client.post(url, json=payload)
            except httpx.HTTPError as e:  # connect/read errors and timeouts: worth another try
                log.warning("webhook %s attempt %d failed: %s", url, attempt + 1, e)
                continue
            if response.is_success:
                return True
            log.warning("webhook %s attempt %d answered %d", url, attempt + 1, response.status_code)
            if not _retryable(response.status_code):
                return False
    log.error("webhook %s not delivered after %d attempts", url, cfg.retries + 1)
    return False
