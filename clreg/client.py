"""A small HTTP client for clreg's API: what the CLI and the demo speak."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from typing import Any, cast

import httpx
import numpy as np

FINAL_STATES = frozenset({"promoted", "rejected", "failed", "locked"})
# A batch that has its update's verdict and now waits on something else: a later update (rejected this time,
# it joins the model's next one) or the model's approvers. Waiting for a batch stops there too.
SETTLED_STATES = FINAL_STATES | {"waiting", "awaiting_approval"}


class ApiError(Exception):
    """An error answer from the API: status plus the server's code and detail."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status, self.code, self.detail = status, code, detail


class Client:
    """`admin_token` for admin actions; `token` (the ops token, a site's token for its own batches, or the admin
    token when none is given) for reads and predictions."""

    def __init__(self, url: str, admin_token: str | None = None, timeout_s: float = 30.0,
                 token: str | None = None) -> None:
        self.http = httpx.Client(base_url=url, timeout=timeout_s)
        self.admin_token = admin_token
        self.token = token or admin_token

    def _call(self, method: str, path: str, token: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = kwargs.pop("headers", {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        response = self.http.request(method, path, headers=headers, **kwargs)
        if response.status_code >= 400:
            try:
                body = response.json()
                raise ApiError(response.status_code, body.get("error", "?"), body.get("detail", response.text))
            except ValueError:
                raise ApiError(response.status_code, "http", response.text) from None
        return response

    def get(self, path: str, **params: Any) -> Any:
        return self._call("GET", path, self.token, params={k: v for k, v in params.items() if v is not None}).json()

    def text(self, path: str, **params: Any) -> str:
        """A read that answers a page (an HTML report) rather than JSON."""
        return self._call("GET", path, self.token, params={k: v for k, v in params.items() if v is not None}).text

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self._call("GET", "/readyz")
                return
            except (httpx.HTTPError, ApiError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.25)

    def create_model(self, name: str, factory: str, spec: tuple[int, int, int], classes: int,
                     readiness: dict[str, Any] | None = None, shadow: dict[str, Any] | None = None,
                     weights: str | None = None, normalisation: dict[str, list[float]] | None = None,
                     metric: str | None = None, costs: dict[str, float] | None = None,
                     approval: dict[str, Any] | None = None, canary: dict[str, Any] | None = None) -> dict[str, Any]:
        """Register a model; `readiness` (accuracy_floor, ece_limit, policy) decides where it is validated,
        `shadow` (share, min_requests, min_agreement) mirrors each candidate on live traffic before promotion,
        `weights` (the sha256 `upload` answered) are its initial weights, `normalisation` ({"mean", "std"} per
        channel) is applied to its input everywhere (ImageNet's by default when weights are given), `approval`
        ({"mode": "approval", "approvers": 2}) makes every move of production wait for approvers."""
        body = {"name": name, "factory": factory, "input": dict(zip(("channels", "height", "width"), spec, strict=True),
                                                                   classes=classes),
                **({"readiness": readiness} if readiness else {}), **({"shadow": shadow} if shadow else {}),
                **({"weights": weights} if weights else {}),
                **({"normalisation": normalisation} if normalisation else {}),
                **({"metric": metric} if metric else {}), **({"costs": costs} if costs else {}),
                **({"approval": approval} if approval else {}), **({"canary": canary} if canary else {})}
        return cast(dict[str, Any], self._call("POST", "/v1/models", self.admin_token, json=body).json())

    def upload(self, data: bytes) -> dict[str, Any]:
        """Store a checkpoint (safetensors or torch .pth bytes) in the artifact store: {"sha256", "bytes"}."""
        return cast(dict[str, Any], self._call("POST", "/v1/artifacts", self.admin_token, content=data,
                                               headers={"Content-Type": "application/octet-stream"}).json())

    def add_site(self, name: str, threshold: float | None = None, models: list[str] | None = None,
                 batches_per_day: int | None = None, max_bytes: int | None = None, replay: bool = True
                 ) -> dict[str, Any]:
        """Register a site; `models` limits where its token may push, the quotas default to the server's,
        `replay` is its data policy (may its training samples be replayed in later updates)."""
        body = {"name": name, "threshold": threshold, "models": models, "batches_per_day": batches_per_day,
                "max_bytes": max_bytes, "replay": replay}
        return cast(dict[str, Any], self._call("POST", "/v1/sites", self.admin_token, json=body).json())

    def set_threshold(self, site: str, threshold: float | None) -> dict[str, Any]:
        return cast(dict[str, Any], self._call("PUT", f"/v1/sites/{site}/threshold", self.admin_token,
                                               json={"threshold": threshold}).json())

    def push(self, site: str, token: str, data: bytes, model: str,
             content_type: str = "application/octet-stream", locked: bool = False) -> dict[str, Any]:
        """Push npz bytes, or (content_type application/zip) a zip of DICOM files with labels.csv; `locked`: a
        locked test set (never learnt, scored for every version)."""
        params = {"model": model, **({"locked": "true"} if locked else {})}
        return cast(dict[str, Any], self._call("POST", f"/v1/sites/{site}/batches", token, params=params, content=data,
                                               headers={"Content-Type": content_type}).json())

    def wait_batch(self, batch_id: str, timeout_s: float = 300.0,
                   on_state: Callable[[dict[str, Any]], None] | None = None, served: bool = True) -> dict[str, Any]:
        """Poll a batch until it is settled (rejected, failed, waiting for a later update or for approvers, or
        promoted and, with `served`, answered by every live replica) or the time is up; on_state sees every state
        polled (the CLI's progress bar)."""
        deadline = time.monotonic() + timeout_s
        while True:
            state = self.get(f"/v1/batches/{batch_id}")
            if on_state is not None:
                on_state(state)
            done = state["status"] in SETTLED_STATES and (state["status"] != "promoted" or not served
                                                        or state.get("served"))
            if done or time.monotonic() > deadline:
                return cast(dict[str, Any], state)
            time.sleep(0.2)

    def promote(self, model: str, version: int, reason: str, force: bool = False) -> dict[str, Any]:
        body = {"version": version, "reason": reason, "force": force}
        return cast(dict[str, Any], self._call("POST", f"/v1/models/{model}/aliases/production", self.admin_token,
                                               json=body).json())

    def add_approver(self, name: str) -> dict[str, Any]:
        """Create an approver; the answer carries its token, shown this once."""
        return cast(dict[str, Any], self._call("POST", "/v1/approvers", self.admin_token, json={"name": name}).json())

    def change_protocol(self, model: str, reason: str, approval: dict[str, Any] | None = None,
                        readiness: dict[str, Any] | None = None) -> dict[str, Any]:
        """A new revision of the model's protocol with its approval policy or readiness rules changed."""
        body = {"reason": reason, **({"approval": approval} if approval else {}),
                **({"readiness": readiness} if readiness else {})}
        return cast(dict[str, Any], self._call("PUT", f"/v1/models/{model}/protocol", self.admin_token,
                                               json=body).json())

    def write_note(self, model: str, version: int, text: str) -> dict[str, Any]:
        return cast(dict[str, Any], self._call("PUT", f"/v1/models/{model}/versions/{version}/note", self.admin_token,
                                               json={"text": text}).json())

    def remove_approver(self, name: str) -> dict[str, Any]:
        return cast(dict[str, Any], self._call("DELETE", f"/v1/approvers/{name}", self.admin_token).json())

    def decide(self, model: str, version: int, verdict: str, reason: str, token: str) -> dict[str, Any]:
        """Approve or decline (`verdict`) the request waiting for a version, with an approver's token."""
        return cast(dict[str, Any], self._call("POST", f"/v1/models/{model}/versions/{version}/{verdict}", token,
                                               json={"reason": reason}).json())

    def withdraw(self, batch_id: str, reason: str) -> dict[str, Any]:
        return cast(dict[str, Any], self._call("POST", f"/v1/batches/{batch_id}/withdraw", self.admin_token,
                                               json={"reason": reason}).json())

    def subscribe(self, url: str, events: list[str], model: str | None = None, description: str = "") -> dict[str, Any]:
        """A webhook subscription; the answer carries its signing secret, shown this once."""
        body = {"url": url, "events": events, "model": model, "description": description}
        return cast(dict[str, Any], self._call("POST", "/v1/webhooks", self.admin_token, json=body).json())

    def unsubscribe(self, sub_id: str) -> dict[str, Any]:
        return cast(dict[str, Any], self._call("DELETE", f"/v1/webhooks/{sub_id}", self.admin_token).json())

    def ping_webhook(self, sub_id: str) -> dict[str, Any]:
        return cast(dict[str, Any], self._call("POST", f"/v1/webhooks/{sub_id}/test", self.admin_token).json())

    def predict(self, x: np.ndarray, model: str | None = None, site: str | None = None) -> tuple[dict[str, Any], int]:
        """Predict over JSON; returns the answer and the X-Model-Version header."""
        body: dict[str, Any] = {"inputs": x.tolist()}
        if site:
            body["site"] = site
        response = self._call("POST", "/v1/predict", self.token, params={"model": model} if model else {},
                              json=body, headers=self._routed(model))
        return response.json(), int(response.headers["X-Model-Version"])

    def predict_bytes(self, data: bytes, content_type: str, model: str | None = None,
                      site: str | None = None) -> tuple[dict[str, Any], int]:
        """Predict an npz (application/octet-stream), a DICOM file (application/dicom) or a DICOM study zip
        (application/zip) as sent; returns the answer and the X-Model-Version header."""
        params = {k: v for k, v in (("model", model), ("site", site)) if v}
        response = self._call("POST", "/v1/predict", self.token, params=params, content=data,
                              headers={"Content-Type": content_type, **self._routed(model)})
        return response.json(), int(response.headers["X-Model-Version"])

    @staticmethod
    def _routed(model: str | None) -> dict[str, str]:
        """Serve routes a request naming its model to a replica holding it (when replicas load models on demand)."""
        return {"serve_multiplexed_model_id": model} if model else {}

def npz_bytes(x: np.ndarray, y: np.ndarray | None = None) -> bytes:
    """An npz of x and y (a prediction's npz: x alone)."""
    buf = io.BytesIO()
    if y is None:
        np.savez_compressed(buf, x=x)
    else:
        np.savez_compressed(buf, x=x, y=y)
    return buf.getvalue()
