"""The HTTP reference (docs/reference/http.md), rendered from the gateway's own OpenAPI document.

    python docs/gen_http.py          # rewrite docs/reference/http.md
    python docs/gen_http.py --check  # exit 1 when the page differs from what the gateway's routes give

Builds the gateway's FastAPI app (serving.gateway.create_app) and renders every route of `app.openapi()`:
method, path, who may call it, parameters, request body, responses, and the request schemas. Building the
app creates the ingest stream's consumer group, so it needs a Redis: CLREG_TEST_REDIS_URL, default
redis://127.0.0.1:6379/15 (the tests' database; the keys it makes, under the prefix `clreg-docs`, are
removed again). Who may call a route comes from its dependencies (the gateway's `admin` and `reader`
checks, a site's token), or from AUTH below for the routes that check a token in their own body.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "reference" / "http.md"
DEFAULT_REDIS = "redis://127.0.0.1:6379/15"
PREFIX = "clreg-docs"
Json = dict[str, Any]

# Dependencies that check a token, by function name (serving/gateway.py, serving/uploads.py).
DEPENDENCY_AUTH = {"admin": "admin", "_admin": "admin", "reader": "ops", "site_token": "site", "approver": "approver"}
# Routes that read the Authorization header themselves: what they accept, as the route's docstring says.
AUTH = {
    ("GET", "/v1/batches/{batch_id}"): "ops, or the token of the site that pushed it",
    ("POST", "/v1/predict"): "none (ops with `CLREG_SERVE__PREDICT_NEEDS_TOKEN=true`)",
    ("POST", "/v1/models/{name}/aliases/production"): "admin (an approval model: admin or approver, answered 202)",
}
# Bodies a route reads raw, which the OpenAPI document therefore does not describe (see the API overview).
RAW_BODIES = {
    ("POST", "/v1/sites/{site}/batches"): "`application/octet-stream`: an npz with `x` and `y`; or "
                                          "`application/zip`: a DICOM study with `labels.csv` (read raw)",
    ("POST", "/v1/artifacts"): "`application/octet-stream`: the checkpoint's bytes (read raw)",
    ("POST", "/v1/predict"): "also `application/octet-stream` (an npz with `x`), `application/dicom` or "
                             "`application/zip` (the ModelServer reads them raw)",
}
AREAS = (  # path prefix -> section, in the page's order
    ("/v1/sites/{site}/batches", "Ingest"), ("/v1/batches", "Ingest"), ("/v1/artifacts", "Models"),
    ("/v1/models", "Models"), ("/v1/sites", "Sites"), ("/v1/predict", "Prediction"),
    ("/v1/alerts", "Monitoring"), ("/v1/events", "Monitoring"), ("/v1/drift", "Monitoring"),
    ("/v1/status", "Monitoring"), ("/v1/webhooks", "Webhooks"), ("/v1/approv", "Approvals"),
    ("/", "Health and metrics"),
)


def build_app(redis_url: str, artifacts: str) -> Any:
    """The gateway's FastAPI app over `redis_url`, with placeholder token digests and an empty artifact root."""
    from clreg.registry.connection import StoreConfig
    from clreg.serving.config import ServingConfig
    from clreg.serving.gateway import create_app

    cfg = ServingConfig(store=StoreConfig(url=redis_url, prefix=PREFIX), artifacts_url=artifacts,
                        admin_token_sha256="0" * 64, ops_token_sha256="1" * 64)
    return create_app(cfg)


def forget(redis_url: str) -> None:
    """Remove the keys building the app made."""
    import redis

    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{PREFIX}:*"))
    if keys:
        client.delete(*keys)


def route_auth(app: Any) -> dict[str, str]:
    """operationId -> who may call it, from each route's dependencies and AUTH."""
    out: dict[str, str] = {}
    for route in _api_routes(app.routes):
        found = {DEPENDENCY_AUTH[d.call.__name__] for d in _dependencies(route.dependant)
                 if getattr(d.call, "__name__", None) in DEPENDENCY_AUTH}
        reads_header = any(p.alias.lower() == "authorization" for p in route.dependant.header_params)
        for method in route.methods:
            key = (method, route.path)
            if key in AUTH:
                out[route.unique_id] = AUTH[key]
            elif len(found) > 1:
                raise SystemExit(f"{method} {route.path}: more than one token check ({sorted(found)}): add it to AUTH")
            elif found:
                out[route.unique_id] = next(iter(found))
            elif reads_header:
                raise SystemExit(f"{method} {route.path} reads the Authorization header itself: add it to AUTH")
            else:
                out[route.unique_id] = "none"
    return out


def _api_routes(routes: Iterable[Any]) -> Iterable[Any]:
    """Every APIRoute in the schema, through included routers (FastAPI >= 0.16x keeps them as branches)."""
    from fastapi.routing import APIRoute

    for route in routes:
        if isinstance(route, APIRoute):
            if route.include_in_schema:
                yield route
        elif hasattr(route, "original_router"):
            if getattr(getattr(route, "include_context", None), "include_in_schema", True):
                yield from _api_routes(route.original_router.routes)


def _dependencies(dependant: Any) -> Iterable[Any]:
    for d in dependant.dependencies:
        yield d
        yield from _dependencies(d)


# --- rendering --------------------------------------------------------------------------------------------

def anchor(method: str, path: str) -> str:
    return f"{method.lower()}-" + re.sub(r"[^a-z0-9]+", "-", path.lower()).strip("-")


def cell(text: str) -> str:
    """Text for one Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def type_of(schema: Json) -> str:
    """A schema as a short type: `string`, `integer`, [Model](#model), `a` or `b`, array of X, X or null."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{name.lower()})"
    if "anyOf" in schema:
        return " or ".join(type_of(s) for s in schema["anyOf"])
    if "enum" in schema:
        return " / ".join(f"`{json.dumps(v)}`" for v in schema["enum"])
    if "const" in schema:
        return f"`{json.dumps(schema['const'])}`"
    kind = schema.get("type")
    if kind == "array":
        return f"array of {type_of(schema.get('items', {}))}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"object of {type_of(schema['additionalProperties'])}"
    return f"`{kind}`" if kind else "any"


CONSTRAINTS = (("minimum", ">= {}"), ("exclusiveMinimum", "> {}"), ("maximum", "<= {}"), ("exclusiveMaximum", "< {}"),
               ("minLength", "at least {} characters"), ("maxLength", "at most {} characters"),
               ("minItems", "at least {} items"), ("maxItems", "at most {} items"), ("pattern", "matches `{}`"))


def constraints(schema: Json) -> str:
    """The schema's bounds and pattern, those of its alternatives included."""
    parts = [text.format(plain(schema[key])) for key, text in CONSTRAINTS if key in schema]
    for alternative in schema.get("anyOf", []):
        parts += [text.format(plain(alternative[key])) for key, text in CONSTRAINTS if key in alternative]
    return ", ".join(parts)


def plain(value: Any) -> Any:
    """1.0 as 1, 1e11 as 100000000000: a bound as a reader writes it."""
    return int(value) if isinstance(value, float) and value.is_integer() and abs(value) < 1e15 else value


def default(schema: Json) -> str:
    return f"`{json.dumps(schema['default'])}`" if "default" in schema else ""


def parameters(op: Json) -> list[str]:
    rows = [[f"`{p['name']}`", p["in"], "yes" if p.get("required") else "", type_of(p.get("schema", {})),
             default(p.get("schema", {})), constraints(p.get("schema", {})),
             p.get("description", p.get("schema", {}).get("description", ""))]
            for p in op.get("parameters", []) if p["name"].lower() != "authorization"]
    return grid(["parameter", "in", "required", "type", "default", "constraints", "description"], rows)


def body(op: Json, raw: str | None) -> list[str]:
    lines = []
    for kind, content in op.get("requestBody", {}).get("content", {}).items():
        lines.append(f"- `{kind}`: {type_of(content.get('schema', {}))}")
    if raw:
        lines.append(f"- {raw}")
    return ["**Request body**", "", *lines, ""] if lines else []


def responses(op: Json) -> list[str]:
    lines = ["**Responses**", ""]
    for status, answer in op.get("responses", {}).items():
        kinds = answer.get("content", {})
        shapes = [f"`{kind}`" + (f" {type_of(c['schema'])}" if c.get("schema") else "") for kind, c in kinds.items()]
        described = answer.get("description", "")
        if status == "422":  # FastAPI's default entry: clreg answers it with its own error JSON
            described, shapes = "invalid parameters or body", ['`application/json` `{"error": "invalid", "detail"}`']
        lines.append(f"- **{status}** {described}" + (f": {', '.join(shapes)}" if shapes else ""))
    return [*lines, ""]


def schema_section(name: str, schema: Json) -> list[str]:
    lines = [f"### {name}", ""]
    if schema.get("description"):
        lines += [schema["description"], ""]
    if "enum" in schema:
        return [*lines, "One of " + ", ".join(f"`{json.dumps(v)}`" for v in schema["enum"]) + ".", ""]
    required = set(schema.get("required", []))
    rows = [[f"`{field}`", "yes" if field in required else "", type_of(prop), default(prop), constraints(prop),
             prop.get("description", "")] for field, prop in schema.get("properties", {}).items()]
    return lines + grid(["field", "required", "type", "default", "constraints", "description"], rows)


def grid(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table of the rows, without the columns (after the first) that are empty in every row."""
    if not rows:
        return []
    keep = [i for i in range(len(header)) if i == 0 or any(row[i] for row in rows)]
    lines = ["| " + " | ".join(header[i] for i in keep) + " |", "|" + "---|" * len(keep)]
    return [*lines, *("| " + " | ".join(cell(row[i]) for i in keep) + " |" for row in rows), ""]


def who(auth: dict[str, str], method: str, path: str, op: Json) -> str:
    if op.get("operationId") not in auth:
        raise SystemExit(f"{method} {path}: no route of the app has operationId {op.get('operationId')!r}")
    return auth[op["operationId"]]


def area(path: str) -> str:
    return next(name for prefix, name in AREAS if path.startswith(prefix))


def render(spec: Json, auth: dict[str, str]) -> str:
    """The reference page for an OpenAPI document, with who may call each route."""
    ops = [(method.upper(), path, op) for path, item in spec["paths"].items() for method, op in item.items()]
    order = [name for _, name in AREAS]
    ops.sort(key=lambda o: order.index(area(o[1])))  # stable: the gateway's own order within an area
    out = [
        "# HTTP reference",
        "",
        "<!-- Generated by `python docs/gen_http.py` from the gateway's OpenAPI document; do not edit by hand. -->",
        "",
        f"{spec['info']['title']} {spec['info']['version']}: every route of the OpenAPI document the gateway serves "
        "at `/openapi.json` (and as a page at `/docs`), rendered by `docs/gen_http.py`; a test fails when this "
        "page and the routes disagree. **Auth** is the token a route needs in `Authorization: Bearer <token>`: "
        "`admin`, `ops` (the ops or the admin token; an approver's token reads too), `site` (that site's token), "
        "`approver` (an approver's token, see [Change control](../guides/change-control.md)) or none; see "
        "[Security](../operations/security.md). Every error is JSON `{\"error\": code, \"detail\": text}` with "
        "the status the [API overview](api.md) lists. `/v1/predict` is answered by the ModelServer application "
        "on the same proxy; the gateway's route only documents it.",
        "",
        "| method | path | auth | summary |",
        "|---|---|---|---|",
    ]
    for method, path, op in ops:
        out.append(f"| {method} | [`{path}`](#{anchor(method, path)}) | {cell(who(auth, method, path, op))} | "
                   f"{cell(op.get('summary', ''))} |")
    current = None
    for method, path, op in ops:
        if area(path) != current:
            current = area(path)
            out += ["", f"## {current}"]
        out += ["", f"### `{method} {path}` {{#{anchor(method, path)}}}", ""]
        out += [f"**{op.get('summary', '')}.** Auth: {who(auth, method, path, op)}.", ""]
        if op.get("description"):
            out += [op["description"].strip(), ""]
        out += parameters(op) + body(op, RAW_BODIES.get((method, path))) + responses(op)
        while out[-1] == "":
            out.pop()
    out += ["", "## Schemas", ""]
    for name, schema in spec.get("components", {}).get("schemas", {}).items():
        if name in ("HTTPValidationError", "ValidationError"):  # FastAPI's; clreg answers 422 with its own JSON
            continue
        out += schema_section(name, schema)
    return "\n".join(out).rstrip() + "\n"


def generate(redis_url: str) -> str:
    with tempfile.TemporaryDirectory() as artifacts:
        app = build_app(redis_url, artifacts)
        try:
            return render(app.openapi(), route_auth(app))
        finally:
            forget(redis_url)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when the page is stale")
    parser.add_argument("--redis", default=os.environ.get("CLREG_TEST_REDIS_URL", DEFAULT_REDIS))
    args = parser.parse_args()
    page = generate(args.redis)
    if args.check:
        if PAGE.exists() and PAGE.read_text() == page:
            return 0
        print(f"{PAGE.relative_to(ROOT)} is stale: run python docs/gen_http.py", file=sys.stderr)
        return 1
    PAGE.parent.mkdir(parents=True, exist_ok=True)
    PAGE.write_text(page)
    print(f"wrote {PAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
