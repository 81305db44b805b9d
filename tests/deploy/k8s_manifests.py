"""Reading deploy/k8s for its tests: the documents kustomization.yaml lists, their pod templates, the environment
a container gets from its Secrets and ConfigMaps, label selectors, and the validators (Kubernetes' schemas from
the kubernetes-validate package, KubeRay's RayService from deploy/k8s/schemas) — all offline."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml
from referencing import Registry, Resource

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
RAYSERVICE_SCHEMA = K8S / "schemas" / "rayservice.schema.json"
K8S_DEFINITIONS_ID = "https://kubernetes.io/api/_definitions.json"
PLACEHOLDER = "REPLACE-ME"


def kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def documents() -> list[dict[str, Any]]:
    """Every resource of every file kustomization.yaml lists, in order (fresh copies: tests may mutate them)."""
    out = []
    for name in kustomization()["resources"]:
        out.extend(doc for doc in yaml.safe_load_all((K8S / name).read_text()) if doc)
    return out


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in of_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


@dataclass(frozen=True)
class Pod:
    """A pod template and where it comes from: 'head', a worker group's name, or the Deployment's name."""

    role: str
    template: dict[str, Any]

    @property
    def labels(self) -> dict[str, str]:
        return self.template.get("metadata", {}).get("labels", {})

    @property
    def containers(self) -> list[dict[str, Any]]:
        return self.template["spec"]["containers"]


def ray_pods(docs: list[dict[str, Any]]) -> list[Pod]:
    cluster = one(docs, "RayService")["spec"]["rayClusterConfig"]
    return [Pod("head", cluster["headGroupSpec"]["template"]),
            *(Pod(group["groupName"], group["template"]) for group in cluster.get("workerGroupSpecs", []))]


def pods(docs: list[dict[str, Any]]) -> list[Pod]:
    """Every pod template: the Ray head and worker groups, and each Deployment's."""
    return ray_pods(docs) + [Pod(d["metadata"]["name"], d["spec"]["template"]) for d in of_kind(docs, "Deployment")]


def secret_data(secret: dict[str, Any]) -> dict[str, str]:
    """A Secret's values as text (stringData as written; data is base64, not used by the templates)."""
    assert "data" not in secret, f"Secret {secret['metadata']['name']}: templates use stringData"
    return dict(secret.get("stringData", {}))


def container_env(docs: list[dict[str, Any]], container: dict[str, Any], pod_name: str) -> dict[str, str]:
    """The environment Kubernetes gives a container: envFrom first, then env (which wins), every reference
    resolved against the manifests' Secrets and ConfigMaps; metadata.name is `pod_name`."""
    secrets = {s["metadata"]["name"]: secret_data(s) for s in of_kind(docs, "Secret")}
    maps = {m["metadata"]["name"]: m.get("data", {}) for m in of_kind(docs, "ConfigMap")}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(maps[source["configMapRef"]["name"]])
        if "secretRef" in source:
            env.update(secrets[source["secretRef"]["name"]])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
            continue
        ref = var["valueFrom"]
        if "secretKeyRef" in ref:
            env[var["name"]] = secrets[ref["secretKeyRef"]["name"]][ref["secretKeyRef"]["key"]]
        elif "configMapKeyRef" in ref:
            env[var["name"]] = maps[ref["configMapKeyRef"]["name"]][ref["configMapKeyRef"]["key"]]
        else:
            assert ref["fieldRef"]["fieldPath"] == "metadata.name", f"{var['name']}: unexpected {ref}"
            env[var["name"]] = pod_name
    return env


def secret_references(node: Any) -> list[tuple[str, str | None]]:
    """Every (Secret name, key or None for the whole Secret) a document refers to: secretKeyRef, envFrom's
    secretRef, a secret volume, and KubeRay's authOptions.secretName (key auth_token)."""
    found: list[tuple[str, str | None]] = []
    if isinstance(node, list):
        for item in node:
            found.extend(secret_references(item))
    elif isinstance(node, dict):
        if "secretKeyRef" in node:
            found.append((node["secretKeyRef"]["name"], node["secretKeyRef"]["key"]))
        if "secretRef" in node:
            found.append((node["secretRef"]["name"], None))
        if "secret" in node and isinstance(node["secret"], dict):
            found.append((node["secret"]["secretName"], None))
        if node.get("mode") == "token" and "secretName" in node:
            found.append((node["secretName"], "auth_token"))
        for value in node.values():
            found.extend(secret_references(value))
    return found


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a Kubernetes label selector (matchLabels and matchExpressions) selects these labels."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, op, values = expression["key"], expression["operator"], expression.get("values", [])
        held = {"In": labels.get(key) in values, "NotIn": labels.get(key) not in values,
                "Exists": key in labels, "DoesNotExist": key not in labels}[op]
        if not held:
            return False
    return True


def validate_kubernetes(doc: dict[str, Any], version: str) -> None:
    """Kubernetes' own schema for the resource's kind, strict (unknown fields refused)."""
    kubernetes_validate.validate(copy.deepcopy(doc), version, strict=True)


@cache
def _rayservice_validator(version: str) -> jsonschema.Draft202012Validator:
    folder = resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"v{version}.0-local-strict"
    definitions_file = folder / "_definitions.json"
    assert definitions_file.is_file(), f"kubernetes-validate has no schemas for Kubernetes {version}"
    definitions = json.loads(definitions_file.read_text())
    assert definitions["$id"] == K8S_DEFINITIONS_ID
    schema = json.loads(RAYSERVICE_SCHEMA.read_text())
    registry = Registry().with_resource(K8S_DEFINITIONS_ID, Resource.from_contents(definitions))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, registry=registry)


def validate_rayservice(doc: dict[str, Any], version: str) -> None:
    """clreg's RayService schema, with pod templates and Services checked by Kubernetes' strict schemas."""
    _rayservice_validator(version).validate(doc)
