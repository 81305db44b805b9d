"""The drift alert payload: the verdict, its evidence and the link (webhooks: tests/clreg/test_dispatch.py)."""

from __future__ import annotations

from clreg.monitoring import alert_payload
from clreg.registry.findings import ColumnDrift, DriftReport


def report() -> DriftReport:
    cols = [
        ColumnDrift(column="img_mean", method="ks", score=1e-9, threshold=4e-4, drifted=True),
        ColumnDrift(column="emb_0", method="ks", score=1e-12, threshold=4e-4, drifted=True),
        ColumnDrift(column="img_std", method="ks", score=0.5, threshold=4e-4, drifted=False),
    ]
    return DriftReport(
        id="r-9", model="cnn", site="site-a", batch_id="cd" * 32, reference_version=2, samples=200,
        columns=cols, drifted_share=2 / 3, feature_drift=True,
        label_drift=ColumnDrift(column="label", method="chisquare_2sample", score=0.4, threshold=0.01, drifted=False),
        embedding_mmd=None, drift=True, created_at=100.0,
    )


def test_alert_payload_names_the_evidence_and_links_the_report() -> None:
    assert alert_payload(report(), "http://x/v1/drift/r-9?format=html") == {
        "kind": "drift",
        "model": "cnn",
        "site": "site-a",
        "batch_id": "cd" * 32,
        "report_id": "r-9",
        "reference_version": 2,
        "samples": 200,
        "verdict": "drift",
        "signals": ["features"],
        "feature_drift": True,
        "top_features": ["emb_0", "img_mean"],
        "drifted_share": 2 / 3,
        "label_drift": {"method": "chisquare_2sample", "score": 0.4, "threshold": 0.01, "drifted": False},
        "embedding_mmd": None,
        "link": "http://x/v1/drift/r-9?format=html",
        "created_at": 100.0,
    }
