"""A corpus of hostile requests, each with the exact answer clreg must give (status and error code).

Built from the kinds found when clreg was probed as an attacker would: names that fail the pattern in every
place a name goes, unusable numbers, npz and DICOM bombs, hostile JSON, missing or wrong tokens, a foreign
Host header, unknown routes and methods, bodies past their limit.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import numpy as np
import pydicom

from clreg.registry.dicom import dicom_file
from tests.registry.dicomdata import dcm, study

MODEL, SITE = "hx", "hx-site"
BATCH = "0" * 64
BAD_NAMES = ["../etc", "ü", "a\x00b", "x" * 10_000, "*", "a:b", "UPPER", "-lead", "sp ace"]


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    path: str
    status: int
    code: str
    auth: str = "ops"  # ops | admin | site | none | a literal token
    params: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes | None = None
    json: Any = None


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _declared(shape: tuple[int, ...], with_y: bool = True) -> bytes:
    x = io.BytesIO()
    np.lib.format.write_array_header_1_0(x, {"descr": "|u1", "fortran_order": False, "shape": shape})
    x.write(bytes(64))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("x.npy", x.getvalue())
        if with_y:
            y = io.BytesIO()
            np.save(y, np.zeros(shape[0] if shape[0] < 100 else 4, int))
            archive.writestr("y.npy", y.getvalue())
    return out.getvalue()


def _rewritten(data: bytes, method: int | None = None, encrypted: bool = False) -> bytes:
    """The zip with each member's compression method field and/or encryption flag rewritten."""
    raw = bytearray(data)
    for signature, flag_at, method_at in ((b"PK\x03\x04", 6, 8), (b"PK\x01\x02", 8, 10)):
        at = raw.find(signature)
        while at >= 0:
            if encrypted:
                raw[at + flag_at] |= 0x1
            if method is not None:
                raw[at + method_at:at + method_at + 2] = method.to_bytes(2, "little")
            at = raw.find(signature, at + 4)
    return bytes(raw)


def _good_x(n: int = 4) -> np.ndarray:
    return np.zeros((n, 8, 8), np.uint8)


def _path_status(name: str) -> tuple[int, str]:
    """A name with '/' in a path segment routes nowhere (404); any other bad name fails validation (422)."""
    return (404, "not_found") if "/" in name else (422, "invalid")


def names() -> list[Case]:
    """Every place a model, site, batch or report name goes, with every name that fails the pattern."""
    cases = []
    for i, bad in enumerate(BAD_NAMES):
        q = quote(bad, safe="")
        ps, pc = _path_status(bad)
        cases += [
            Case(f"push-model-{i}", "POST", f"/v1/sites/{SITE}/batches", 422, "invalid", auth="site",
                 params={"model": bad}, headers={"Content-Type": "application/octet-stream"},
                 content=_npz(x=_good_x(), y=np.zeros(4, int))),
            Case(f"push-site-{i}", "POST", f"/v1/sites/{q}/batches", ps, pc, auth="site", params={"model": MODEL},
                 headers={"Content-Type": "application/octet-stream"}, content=b"x"),
            Case(f"versions-{i}", "GET", f"/v1/models/{q}/versions", ps, pc),
            Case(f"version-{i}", "GET", f"/v1/models/{q}/versions/1", ps, pc),
            Case(f"aliases-{i}", "GET", f"/v1/models/{q}/aliases", ps, pc),
            Case(f"events-{i}", "GET", "/v1/events", 422, "invalid", params={"model": bad}),
            Case(f"alerts-model-{i}", "GET", "/v1/alerts", 422, "invalid", params={"model": bad}),
            Case(f"alerts-site-{i}", "GET", "/v1/alerts", 422, "invalid", params={"site": bad}),
            Case(f"batch-{i}", "GET", f"/v1/batches/{q}", ps, pc),
            Case(f"drift-{i}", "GET", f"/v1/drift/{q}", ps, pc),
            Case(f"op-site-{i}", "GET", f"/v1/sites/{q}/operating-point", ps, pc, params={"model": MODEL}),
            Case(f"op-model-{i}", "GET", f"/v1/sites/{SITE}/operating-point", 422, "invalid", params={"model": bad}),
            Case(f"predict-model-{i}", "POST", "/v1/predict", 422, "invalid", auth="none", params={"model": bad},
                 json={"inputs": _good_x(1).tolist()}),
        ]
    return cases


def numbers() -> list[Case]:
    return [Case(f"{route}-since-{v}", "GET", f"/v1/{route}", 422, "invalid", params={"model": MODEL, "since": v})
            for route in ("alerts", "events") for v in ("inf", "nan", "-1", "1e300", "abc", "", "-inf")]


def push_bodies() -> list[Case]:
    octet = {"Content-Type": "application/octet-stream"}
    good = _npz(x=_good_x(), y=np.zeros(4, int))
    bodies = [
        ("not-a-zip", b"not an npz at all", 400, "malformed_batch"),
        ("empty", b"", 400, "malformed_batch"),
        ("no-y", _npz(x=_good_x()), 400, "malformed_batch"),
        ("object-dtype", _npz(x=np.array([object()] * 4, dtype=object), y=np.zeros(4, int)), 400, "malformed_batch"),
        ("structured", _npz(x=np.zeros(4, dtype=[("a", "u1", (8, 8))]), y=np.zeros(4, int)), 400, "malformed_batch"),
        ("gigantic-shape", _declared((10**9, 8, 8), with_y=True), 413, "payload_too_large"),
        ("gigantic-dim", _declared((4, 8, 8, 10**12)), 422, "batch_mismatch"),
        ("truncated", _declared((50, 8, 8)), 400, "malformed_batch"),
        ("encrypted", _rewritten(good, encrypted=True), 400, "malformed_batch"),
        ("deflate64", _rewritten(good, method=9), 400, "malformed_batch"),
        ("bzip2", _rewritten(good, method=12), 400, "malformed_batch"),
        ("float64", _npz(x=np.zeros((4, 8, 8)), y=np.zeros(4, int)), 422, "batch_mismatch"),
        ("nan", _npz(x=np.full((4, 8, 8), np.nan, np.float32), y=np.zeros(4, int)), 422, "batch_mismatch"),
        ("labels", _npz(x=_good_x(), y=np.array([0, 1, 2, 9])), 422, "batch_mismatch"),
        ("y-float", _npz(x=_good_x(), y=np.zeros(4)), 422, "batch_mismatch"),
        ("shape", _npz(x=np.zeros((4, 9, 8), np.uint8), y=np.zeros(4, int)), 422, "batch_mismatch"),
    ]
    cases = [Case(f"push-{n}", "POST", f"/v1/sites/{SITE}/batches", s, c, auth="site", params={"model": MODEL},
                  headers=octet, content=b) for n, b, s, c in bodies]
    cases += [
        Case("push-text", "POST", f"/v1/sites/{SITE}/batches", 415, "unsupported_media_type", auth="site",
             params={"model": MODEL}, headers={"Content-Type": "text/plain"}, content=good),
        Case("push-unknown-model", "POST", f"/v1/sites/{SITE}/batches", 404, "not_found", auth="site",
             params={"model": "nobody"}, headers=octet, content=good),
        Case("push-no-model", "POST", f"/v1/sites/{SITE}/batches", 422, "invalid", auth="site", headers=octet,
             content=good),
    ]
    return cases


def _dcm_syntax(uid: str) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(dicom_file(np.zeros((8, 8)))))
    ds.file_meta.TransferSyntaxUID = uid
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=False)
    return buf.getvalue()


def _dcm(**tags: object) -> bytes:
    return dicom_file(np.zeros((8, 8)), **tags)


def dicom_bodies() -> list[Case]:
    one = {"a.dcm": _dcm()}
    big = dicom_file(np.zeros((8, 8)))
    ds = pydicom.dcmread(io.BytesIO(big))
    ds.Rows, ds.Columns = 60_000, 60_000  # declares 3.6 billion pixels over 128 bytes of data
    huge = io.BytesIO()
    ds.save_as(huge, enforce_file_format=True)
    studies = [
        ("label-superscript", study(one, "file,label\na.dcm,²\n"), 400, "malformed_batch"),
        ("label-double-minus", study(one, "file,label\na.dcm,--1\n"), 400, "malformed_batch"),
        ("label-huge", study(one, "file,label\na.dcm,1000000000000000000000000000000\n"), 400, "malformed_batch"),
        ("label-range", study(one, "file,label\na.dcm,7\n"), 422, "batch_mismatch"),
        ("no-labels", study(one, None), 400, "malformed_batch"),
        ("unknown-syntax", study({"a.dcm": _dcm_syntax("1.2.3.4.5")}, "file,label\na.dcm,0\n"), 422, "batch_mismatch"),
        ("deflated-syntax", study({"a.dcm": _dcm_syntax("1.2.840.10008.1.2.1.99")}, "file,label\na.dcm,0\n"),
         422, "batch_mismatch"),
        ("encrypted-member", _rewritten(study(one, "file,label\na.dcm,0\n"), encrypted=True), 400, "malformed_batch"),
        ("deflate64-member", _rewritten(study(one, "file,label\na.dcm,0\n"), method=9), 400, "malformed_batch"),
        ("not-dicom", study({"a.dcm": b"hello"}, "file,label\na.dcm,0\n"), 400, "malformed_batch"),
        ("huge-rows", study({"a.dcm": huge.getvalue()}, "file,label\na.dcm,0\n"), 422, "batch_mismatch"),
        ("multiframe", study({"a.dcm": _dcm(NumberOfFrames=3)}, "file,label\na.dcm,0\n"), 422, "batch_mismatch"),
        ("unlabelled", study({"a.dcm": _dcm(), "b.dcm": _dcm()}, "file,label\na.dcm,0\n"), 422, "batch_mismatch"),
        ("not-a-zip", b"PK\x03\x04 nope", 400, "malformed_batch"),
    ]
    return [Case(f"dicom-{n}", "POST", f"/v1/sites/{SITE}/batches", s, c, auth="site", params={"model": MODEL},
                 headers={"Content-Type": "application/zip"}, content=b) for n, b, s, c in studies]


def predictions() -> list[Case]:
    def p(name: str, status: int, code: str, **kw: Any) -> Case:
        return Case(f"predict-{name}", "POST", "/v1/predict", status, code, auth="none",
                    **{"params": {"model": MODEL}, **kw})

    deep = ("[" * 100_000 + "]" * 100_000).encode()
    octet = {"Content-Type": "application/octet-stream"}
    jsonh = {"Content-Type": "application/json"}
    return [
        p("int-past-float", 400, "bad_request", content=b'{"inputs": [[' + b"1" * 400 + b"]]}", headers=jsonh),
        p("past-float32", 400, "bad_request", json={"inputs": [[[1e39] * 8] * 8]}),
        p("deep-nesting", 400, "bad_request", content=b'{"inputs": ' + deep + b"}", headers=jsonh),
        p("gigantic-npz", 413, "payload_too_large", content=_declared((10**9, 8, 8), with_y=False), headers=octet),
        p("structured-npz", 400, "bad_request", content=_npz(x=np.zeros(2, dtype=[("a", "f4", (8, 8))])),
          headers=octet),
        p("object-npz", 400, "bad_request", content=_npz(x=np.array([object()], dtype=object)), headers=octet),
        p("20000-images", 413, "payload_too_large", json={"inputs": np.zeros((20_000, 1, 1), np.uint8).tolist()}),
        p("text", 415, "unsupported_media_type", content=b"x", headers={"Content-Type": "text/plain"}),
        p("bad-json", 400, "bad_request", content=b"{nope", headers=jsonh),
        p("inputs-not-list", 400, "bad_request", json={"inputs": "x"}),
        p("no-inputs", 400, "bad_request", json={"x": []}),
        p("site-not-string", 400, "bad_request", json={"inputs": _good_x(1).tolist(), "site": 3}),
        p("site-path", 400, "bad_request", json={"inputs": _good_x(1).tolist(), "site": "../../etc"}),
        p("site-key", 400, "bad_request", json={"inputs": _good_x(1).tolist(), "site": "a:confidence:b"}),
        p("site-long", 400, "bad_request", json={"inputs": _good_x(1).tolist(), "site": "s" * 64}),
        p("strings", 400, "bad_request", json={"inputs": [["a"] * 8] * 8}),
        p("ragged", 400, "bad_request", json={"inputs": [[[0] * 8] * 8, [[0] * 7]]}),
        p("wrong-shape", 400, "bad_request", json={"inputs": np.zeros((1, 9, 8)).tolist()}),
        p("empty", 400, "bad_request", json={"inputs": []}),
        p("nan-npz", 400, "bad_request", content=_npz(x=np.full((1, 8, 8), np.nan, np.float32)), headers=octet),
        p("unknown-model", 404, "not_found", json={"inputs": _good_x(1).tolist()}, params={"model": "nobody"}),
        Case("predict-get", "GET", "/v1/predict", 405, "method_not_allowed", auth="none", params={"model": MODEL}),
    ]


def _inflating(data: bytes, size: int = 2**31 - 1) -> bytes:
    """The zip with every member's declared (central directory) inflated size rewritten to `size`."""
    raw = bytearray(data)
    at = raw.find(b"PK\x01\x02")
    while at >= 0:
        raw[at + 24:at + 28] = size.to_bytes(4, "little")
        at = raw.find(b"PK\x01\x02", at + 4)
    return bytes(raw)


def _without_pixels() -> bytes:
    ds = pydicom.dcmread(io.BytesIO(_dcm()))
    del ds.PixelData
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _ybr() -> bytes:
    ds = pydicom.dcmread(io.BytesIO(dicom_file(np.zeros((8, 8, 3)), "RGB")))
    ds.PhotometricInterpretation = "YBR_FULL"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def predict_dicom(predict_limit: int = 16 * 1024 * 1024) -> list[Case]:
    """DICOM bodies for /v1/predict (one file as application/dicom, a study as application/zip): each a 422
    naming what is wrong, before anything is answered or recorded; 413 past the body limit, 415 a wrong type."""
    one = {"a.dcm": _dcm()}
    huge = pydicom.dcmread(io.BytesIO(_dcm()))
    huge.Rows, huge.Columns = 60_000, 60_000
    declared = io.BytesIO()
    huge.save_as(declared, enforce_file_format=True)
    files = [
        ("not-dicom", b"hello"), ("empty", b""), ("zeros", bytes(200)), ("truncated", _dcm()[:-40]),
        ("compressed", dcm(np.zeros((8, 8)), compressed=True)), ("multiframe", _dcm(NumberOfFrames=3)),
        ("deflated-syntax", _dcm_syntax("1.2.840.10008.1.2.1.99")), ("unknown-syntax", _dcm_syntax("1.2.3.4.5")),
        ("huge-rows", declared.getvalue()), ("no-pixels", _without_pixels()), ("ybr", _ybr()),
        ("a-study", study(one, None)),
    ]
    studies = [
        ("not-a-zip", b"PK\x03\x04 nope"), ("empty", study({}, None)), ("labels-only", study({}, "file,label\n")),
        ("not-dicom", study({"a.dcm": b"hello"}, None)), ("npz", _npz(x=_good_x())),
        ("compressed", study({"a.dcm": dcm(np.zeros((8, 8)), compressed=True)}, None)),
        ("nested-zip", study({"inner.zip": study(one, None)}, None)),
        ("encrypted", _rewritten(study(one, None), encrypted=True)), ("deflate64", _rewritten(study(one, None), 9)),
        ("1025-files", study({f"{i:04d}.dcm": b"x" for i in range(1025)}, None)),
        ("inflates-2gib", _inflating(study(one, None))), ("one-bad-of-two", study({**one, "b.dcm": b"\0"}, None)),
    ]

    def p(name: str, status: int, code: str, kind: str, body: bytes, **params: str) -> Case:
        return Case(f"predict-{name}", "POST", "/v1/predict", status, code, auth="none",
                    params={"model": MODEL, **params}, headers={"Content-Type": kind}, content=body)

    cases = [p(f"dicom-{n}", 422, "unprocessable", "application/dicom", b) for n, b in files]
    cases += [p(f"study-{n}", 422, "unprocessable", "application/zip", b) for n, b in studies]
    return [*cases,
            p("dicom-site", 400, "bad_request", "application/dicom", _dcm(), site="../etc"),
            p("dicom-json-type", 415, "unsupported_media_type", "application/dicom+json", _dcm()),
            p("dicom-past-limit", 413, "payload_too_large", "application/dicom", bytes(predict_limit + 1))]


READ_ROUTES = ["/v1/models", f"/v1/models/{MODEL}/versions", f"/v1/models/{MODEL}/versions/1",
               f"/v1/models/{MODEL}/aliases", "/v1/sites", f"/v1/sites/{SITE}/operating-point?model={MODEL}",
               "/v1/alerts", f"/v1/events?model={MODEL}", "/v1/drift/d-x", "/v1/status", "/metrics",
               f"/v1/batches/{BATCH}", "/v1/webhooks", "/v1/webhooks/deliveries", "/v1/webhooks/wh-000000000000"]


def access() -> list[Case]:
    cases = [Case(f"read-no-token-{i}", "GET", r, 401, "unauthorized", auth="none") for i, r in enumerate(READ_ROUTES)]
    cases += [Case(f"read-bad-token-{i}", "GET", r, 401 if "batches" not in r else 404,
                   "unauthorized" if "batches" not in r else "not_found", auth="not-a-token")
              for i, r in enumerate(READ_ROUTES)]
    admin = [("POST", "/v1/models", {"name": "zz", "input": {"channels": 1, "height": 8, "width": 8, "classes": 2}}),
             ("POST", "/v1/sites", {"name": "zz"}), ("PUT", f"/v1/sites/{SITE}/threshold", {"threshold": 0.5}),
             ("POST", f"/v1/models/{MODEL}/aliases/production", {"version": 1, "reason": "x"}),
             ("POST", "/v1/webhooks", {"url": "http://127.0.0.1:9/x", "events": ["*"]}),
             ("DELETE", "/v1/webhooks/wh-000000000000", None), ("POST", "/v1/webhooks/wh-000000000000/test", None)]
    for i, (method, path, body) in enumerate(admin):
        cases += [Case(f"admin-as-ops-{i}", method, path, 403, "forbidden", json=body),
                  Case(f"admin-as-site-{i}", method, path, 403, "forbidden", auth="site", json=body),
                  Case(f"admin-no-token-{i}", method, path, 401, "unauthorized", auth="none", json=body)]
    cases.append(Case("push-no-token", "POST", f"/v1/sites/{SITE}/batches", 401, "unauthorized", auth="none",
                      params={"model": MODEL}, headers={"Content-Type": "application/octet-stream"}, content=b"x"))
    return cases


def edges() -> list[Case]:
    evil = {"Host": "evil.example"}
    cases = [Case(f"host-{i}", m, p, 400, "bad_host", auth=a, headers=evil, json=j)
             for i, (m, p, a, j) in enumerate([("GET", "/v1/models", "ops", None), ("GET", "/healthz", "none", None),
                                               ("GET", "/docs", "none", None), ("GET", "/openapi.json", "none", None),
                                               ("POST", "/v1/predict?model=hx", "none", {"inputs": [[[0] * 8] * 8]}),
                                               ("GET", "/v1/status", "admin", None)])]
    cases += [
        Case("host-rebound", "GET", "/v1/models", 400, "bad_host", headers={"Host": "127.0.0.1.evil.example:8000"}),
        Case("route-404", "GET", "/nope", 404, "not_found", auth="none"),
        Case("route-404-v1", "GET", "/v1/nope", 404, "not_found"),
        Case("method-405", "DELETE", "/v1/models", 405, "method_not_allowed"),
        Case("model-factory-module", "POST", "/v1/models", 422, "unprocessable", auth="admin",
             json={"name": "zz", "factory": "os:system", "input": {"channels": 1, "height": 8, "width": 8,
                                                                   "classes": 2}}),
        Case("model-factory-missing", "POST", "/v1/models", 422, "unprocessable", auth="admin",
             json={"name": "zz", "factory": "clreg.learner.models:nope",
                   "input": {"channels": 1, "height": 8, "width": 8, "classes": 2}}),
        Case("model-factory-kwargs", "POST", "/v1/models", 422, "unprocessable", auth="admin",
             json={"name": "zz", "factory_kwargs": {"depth": 99}, "input": {"channels": 1, "height": 8, "width": 8,
                                                                            "classes": 2}}),
        Case("model-channels", "POST", "/v1/models", 422, "invalid", auth="admin",
             json={"name": "zz", "input": {"channels": 0, "height": 8, "width": 8, "classes": 2}}),
        Case("model-bad-json", "POST", "/v1/models", 422, "invalid", auth="admin", content=b"{",
             headers={"Content-Type": "application/json"}),
        Case("artifact-no-token", "POST", "/v1/artifacts", 401, "unauthorized", auth="none", content=b"x" * 64,
             headers={"Content-Type": "application/octet-stream"}),
        Case("artifact-as-ops", "POST", "/v1/artifacts", 403, "forbidden", content=b"x" * 64,
             headers={"Content-Type": "application/octet-stream"}),
        Case("artifact-text", "POST", "/v1/artifacts", 415, "unsupported_media_type", auth="admin", content=b"x",
             headers={"Content-Type": "text/plain"}),
        Case("model-weights-unknown", "POST", "/v1/models", 404, "not_found", auth="admin",
             json={"name": "zz", "weights": "f" * 64, "input": {"channels": 1, "height": 8, "width": 8, "classes": 2}}),
        Case("model-weights-malformed", "POST", "/v1/models", 422, "invalid", auth="admin",
             json={"name": "zz", "weights": "../x", "input": {"channels": 1, "height": 8, "width": 8, "classes": 2}}),
        Case("model-metric", "POST", "/v1/models", 422, "invalid", auth="admin",
             json={"name": "zz", "metric": "f1", "input": {"channels": 1, "height": 8, "width": 8, "classes": 2}}),
        Case("model-normalisation", "POST", "/v1/models", 422, "invalid", auth="admin",
             json={"name": "zz", "normalisation": {"mean": [0.5], "std": [0]},
                   "input": {"channels": 1, "height": 8, "width": 8, "classes": 2}}),
        Case("site-threshold", "POST", "/v1/sites", 422, "invalid", auth="admin", json={"name": "zz", "threshold": 2}),
        Case("site-models", "POST", "/v1/sites", 422, "invalid", auth="admin", json={"name": "zz", "models": ["../x"]}),
        Case("alias-zero", "POST", f"/v1/models/{MODEL}/aliases/production", 422, "invalid", auth="admin",
             json={"version": 0, "reason": "x"}),
        Case("alias-no-reason", "POST", f"/v1/models/{MODEL}/aliases/production", 422, "invalid", auth="admin",
             json={"version": 1, "reason": ""}),
        Case("alias-missing", "POST", f"/v1/models/{MODEL}/aliases/production", 404, "not_found", auth="admin",
             json={"version": 999, "reason": "x"}),
        Case("threshold-range", "PUT", f"/v1/sites/{SITE}/threshold", 422, "invalid", auth="admin",
             json={"threshold": -1}),
        Case("version-huge", "GET", f"/v1/models/{MODEL}/versions/{10**30}", 422, "invalid"),
        Case("drift-format", "GET", "/v1/drift/d-x", 422, "invalid", params={"format": "pdf"}),
        Case("alerts-kind", "GET", "/v1/alerts", 422, "invalid", params={"kind": "x" * 100}),
    ]
    return cases


def corpus() -> list[Case]:
    return [*names(), *numbers(), *push_bodies(), *dicom_bodies(), *predictions(), *predict_dicom(), *access(),
            *edges()]


def as_json(case: Case) -> str:
    return json.dumps({"name": case.name, "status": case.status, "code": case.code})
