"""deploy/k8s: every manifest valid against Kubernetes' schemas and the RayService against KubeRay's API, a wrong
field or type refused, and the manifests agreeing with each other and with clreg (Secrets and keys referenced
exist, policies select the pods, settings parse, Serve's applications are the ones `clreg serve` deploys).

Offline: Kubernetes' schemas come from the kubernetes-validate package (dev extra), the RayService schema is
deploy/k8s/schemas/rayservice.schema.json. Nothing here starts Ray, Redis or a cluster.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import os
import tomllib
from dataclasses import dataclass
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from packaging.requirements import Requirement

from clreg import serve_apps
from clreg.registry.batches import token_sha256
from clreg.serving import deploy
from clreg.settings import Settings
from tests.deploy.k8s_manifests import (
    K8S,
    PLACEHOLDER,
    ROOT,
    container_env,
    documents,
    kustomization,
    of_kind,
    one,
    pods,
    ray_pods,
    secret_data,
    secret_references,
    selects,
    validate_kubernetes,
    validate_rayservice,
)

KUBERNETES_VERSIONS = ("1.31", "1.34")  # an older and a recent release the manifests must both pass
SERVE_PORT = 8000
RAY_PORTS = (6379, 8265, 10001, 52365, 8080)  # GCS, dashboard, Ray Client, dashboard agent, metrics


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No CLREG_ setting of this process's own leaks into Settings() (the test harness's are kept)."""
    for key in os.environ:
        if key.startswith("CLREG_") and not key.startswith("CLREG_TEST_"):
            monkeypatch.delenv(key)
    return monkeypatch


# --- schemas -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_are_valid(version: str) -> None:
    docs = documents()
    assert {d["kind"] for d in docs} == {"Namespace", "ConfigMap", "Secret", "RayService", "Deployment",
                                         "NetworkPolicy"}
    for doc in docs:
        if doc["kind"] == "RayService":
            validate_rayservice(doc, version)
        else:
            validate_kubernetes(doc, version)


DELETE = object()  # a change that removes the field


@dataclass(frozen=True)
class Rename:
    """A change that renames the field (a misspelling)."""

    to: str


def _parts(path: str) -> list[str | int]:
    """A dotted path's steps, list indexes as numbers."""
    return [int(p) if p.isdigit() else p for p in path.split(".")]


def _change(doc: dict[str, Any], path: str, change: Any) -> None:
    """Set the field at `path` to `change`, or delete or rename it."""
    *parents, last = _parts(path)
    node: Any = doc
    for part in parents:
        node = node[part]
    if change is DELETE:
        del node[last]
    elif isinstance(change, Rename):
        node[change.to] = node.pop(last)
    else:
        node[last] = change


HEAD = "spec.rayClusterConfig.headGroupSpec"
GPU = "spec.rayClusterConfig.workerGroupSpecs.1"
DAEMON = "spec.template.spec.containers.0"
WRONG = [
    ("Deployment", "spec.replicas", "2"),  # a type
    ("Deployment", f"{DAEMON}.envFrom", Rename("envFroms")),  # a field
    ("Deployment", f"{DAEMON}.env.0.valueFrom.fieldRef", {"path": "metadata.name"}),
    ("NetworkPolicy", "spec.podSelector", Rename("podSelectors")),
    ("NetworkPolicy", "spec.policyTypes", "Ingress"),
    ("Secret", "stringData", ["not", "a", "map"]),
    ("RayService", f"{HEAD}.rayStartParams.num-cpus", 0),  # KubeRay takes strings only
    ("RayService", "spec.rayClusterConfig.gcsFaultToleranceOptions", Rename("gcsFaultTolerance")),
    ("RayService", "spec.rayClusterConfig.gcsFaultToleranceOptions.redisAddress", 6379),
    ("RayService", "spec.rayClusterConfig.authOptions.mode", "password"),
    ("RayService", f"{GPU}.minReplicas", DELETE),
    ("RayService", f"{GPU}.replicas", -1),
    ("RayService", "spec.serveConfigV2", {"applications": []}),  # a YAML string, not a map
    # inside the pod templates: Kubernetes' own schema, through the RayService schema
    ("RayService", f"{HEAD}.template.spec.containers.0.ports.0.containerPort", "6379"),
    ("RayService", f"{GPU}.template.spec.containers.0.resources", Rename("resource")),
    ("RayService", f"{HEAD}.template.spec.containers", []),
]


@pytest.mark.parametrize(("kind", "path", "change"), WRONG, ids=[f"{k}:{p}" for k, p, _ in WRONG])
def test_a_wrong_field_or_type_fails(kind: str, path: str, change: Any) -> None:
    """Refused, and where the change was made (at the field, or at its parent for a missing or unknown one)."""
    doc = copy.deepcopy(of_kind(documents(), kind)[0])
    _change(doc, path, change)
    check = validate_rayservice if kind == "RayService" else validate_kubernetes
    with pytest.raises((jsonschema.ValidationError, kubernetes_validate.ValidationError)) as refused:
        check(doc, KUBERNETES_VERSIONS[-1])
    where, changed = list(refused.value.absolute_path), _parts(path)
    assert changed[:len(where)] == where and len(where) >= len(changed) - 1, f"refused at {where}"


# --- what the RayService runs --------------------------------------------------------------------------------


def _serve_config() -> dict[str, Any]:
    return yaml.safe_load(one(documents(), "RayService")["spec"]["serveConfigV2"])


def test_serve_config_deploys_what_clreg_serve_deploys() -> None:
    """Ray Serve's own config schema accepts it, and its applications are clreg's, at the code's routes, each
    import path a builder Serve can call (one parameter: the config's args)."""
    from ray.serve.schema import ServeApplicationSchema, ServeDeploySchema

    config = _serve_config()
    ServeDeploySchema.model_validate(config)
    assert set(config) <= set(ServeDeploySchema.model_fields), "a key Serve does not know (it would ignore it)"
    apps = config["applications"]
    for app in apps:
        assert set(app) <= set(ServeApplicationSchema.model_fields)
        module, _, attr = app["import_path"].partition(":")
        builder = getattr(importlib.import_module(module), attr)
        assert inspect.isfunction(builder) and len(inspect.signature(builder).parameters) == 1
        assert builder is getattr(serve_apps, app["name"])
    assert {app["name"]: app["route_prefix"] for app in apps} == deploy.ROUTES
    assert config["http_options"] == {"host": "0.0.0.0", "port": SERVE_PORT}


def test_every_ray_pod_serves_on_the_serve_port_and_is_probed() -> None:
    for pod in ray_pods(documents()):
        ray = pod.containers[0]
        assert {p["name"]: p["containerPort"] for p in ray["ports"]}["serve"] == SERVE_PORT, pod.role
        assert ray["livenessProbe"] and ray["readinessProbe"], pod.role
        assert ray["resources"]["limits"]["memory"] == ray["resources"]["requests"]["memory"], pod.role


def test_cpu_and_gpu_worker_groups() -> None:
    groups = one(documents(), "RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    gpus = {g["groupName"]: g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu")
            for g in groups}
    assert gpus == {"cpu": None, "gpu": 1}


def test_gcs_fault_tolerance_on_the_external_redis() -> None:
    """GCS FT by gcsFaultToleranceOptions only: KubeRay refuses it combined with the older ways."""
    rayservice = one(documents(), "RayService")
    cluster = rayservice["spec"]["rayClusterConfig"]
    options = cluster["gcsFaultToleranceOptions"]
    assert options["redisAddress"] and options["redisPassword"]["valueFrom"]["secretKeyRef"]["name"]
    assert "ray.io/ft-enabled" not in rayservice["metadata"].get("annotations", {})
    head = cluster["headGroupSpec"]
    assert not {"redis-password", "redis-username"} & set(head.get("rayStartParams", {}))
    names = {var["name"] for var in head["template"]["spec"]["containers"][0].get("env", [])}
    assert not {"RAY_REDIS_ADDRESS", "REDIS_PASSWORD", "REDIS_USERNAME", "RAY_external_storage_namespace"} & names


def test_ray_version_is_the_one_clreg_requires() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    ray = next(Requirement(r) for r in project["dependencies"] if Requirement(r).name == "ray")
    version = one(documents(), "RayService")["spec"]["rayClusterConfig"]["rayVersion"]
    assert ray.specifier.contains(version), f"rayVersion {version} is outside pyproject's {ray}"


# --- references between the manifests -----------------------------------------------------------------------


def unresolved_references(docs: list[dict[str, Any]]) -> list[str]:
    """What the manifests name but do not hold: a Secret, a Secret's key, a ConfigMap; and Secrets nothing uses."""
    secrets = {s["metadata"]["name"]: secret_data(s) for s in of_kind(docs, "Secret")}
    refs = secret_references([d for d in docs if d["kind"] != "Secret"])
    problems = [f"no Secret {name}" if name not in secrets else f"Secret {name} has no key {key}"
                for name, key in refs if name not in secrets or (key is not None and key not in secrets[name])]
    problems += [f"Secret {name} is not used" for name in sorted(set(secrets) - {name for name, _ in refs})]
    maps = {m["metadata"]["name"] for m in of_kind(docs, "ConfigMap")}
    for pod in pods(docs):
        for container in pod.containers:
            used = {s["configMapRef"]["name"] for s in container.get("envFrom", []) if "configMapRef" in s}
            problems += [f"{pod.role}: no ConfigMap {name}" for name in sorted(used - maps)]
    return problems


def test_referenced_secrets_and_keys_exist() -> None:
    assert unresolved_references(documents()) == []


BROKEN_REFERENCES = [
    ("Deployment", f"{DAEMON}.env.2.valueFrom.secretKeyRef.key", "uri", "Secret clreg-redis has no key uri"),
    ("Deployment", f"{DAEMON}.env.3.valueFrom.secretKeyRef.name", "ray-auth", "no Secret ray-auth"),
    ("Deployment", f"{DAEMON}.envFrom.0.configMapRef.name", "settings", "clreg-daemon: no ConfigMap settings"),
    ("RayService", "spec.rayClusterConfig.authOptions.secretName", "other", "no Secret other"),
]


@pytest.mark.parametrize(("kind", "path", "change", "problem"), BROKEN_REFERENCES)
def test_a_broken_reference_is_found(kind: str, path: str, change: Any, problem: str) -> None:
    docs = documents()
    _change(of_kind(docs, kind)[0], path, change)
    assert problem in unresolved_references(docs)


def test_secrets_are_templates_with_placeholders_only() -> None:
    for secret in of_kind(documents(), "Secret"):
        for key, value in secret_data(secret).items():
            assert PLACEHOLDER in value, f"Secret {secret['metadata']['name']} key {key}: not a placeholder"


def policy_problems(docs: list[dict[str, Any]]) -> list[str]:
    """Where the NetworkPolicies miss clreg's pods: every pod must be under the default deny and may reach the
    others; Serve's port is opened on the Ray pods only, the dashboard to the operator on the head only."""
    policies = {p["metadata"]["name"]: p["spec"] for p in of_kind(docs, "NetworkPolicy")}
    everyone = pods(docs)
    wanted = {"clreg-deny-ingress": {pod.role for pod in everyone}, "clreg-within": {pod.role for pod in everyone},
              "clreg-serve-http": {pod.role for pod in ray_pods(docs)}, "clreg-kuberay-operator": {"head"}}
    problems = []
    for name, roles in wanted.items():
        selected = {pod.role for pod in everyone if selects(policies[name]["podSelector"], pod.labels)}
        if selected != roles:
            problems.append(f"{name} selects {sorted(selected)}, not {sorted(roles)}")
    peers = [peer["podSelector"] for rule in policies["clreg-within"]["ingress"] for peer in rule["from"]]
    problems += [f"clreg-within: peers {peer} miss a clreg pod" for peer in peers
                 if not all(selects(peer, pod.labels) for pod in everyone)]
    for deployment in of_kind(docs, "Deployment"):  # a Deployment's selector matches its own template
        if not selects(deployment["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"]):
            problems.append(f"Deployment {deployment['metadata']['name']}: selector misses its pods")
    return problems


def test_network_policies_select_the_pods() -> None:
    assert policy_problems(documents()) == []


@pytest.mark.parametrize(("kind", "path", "change", "problem"), [
    ("Deployment", "spec.template.metadata.labels", {"app.kubernetes.io/component": "daemon"},
     "clreg-deny-ingress selects"),
    ("RayService", f"{HEAD}.template.metadata.labels",
     {"app.kubernetes.io/part-of": "clreg", "app.kubernetes.io/component": "head"},
     "clreg-kuberay-operator selects [], not ['head']"),
])
def test_a_pod_outside_the_policies_is_found(kind: str, path: str, change: Any, problem: str) -> None:
    docs = documents()
    _change(of_kind(docs, kind)[0], path, change)
    assert any(found.startswith(problem) for found in policy_problems(docs))


def _open_to(rule: dict[str, Any]) -> str:
    """Whom an ingress rule admits: 'clreg' (only clreg's pods in the namespace), 'operator' or 'anyone'."""
    peers = rule.get("from")
    if not peers:
        return "anyone"
    kinds = set()
    for peer in peers:
        if set(peer) == {"podSelector"} and peer["podSelector"] == {"matchLabels": {"app.kubernetes.io/part-of":
                                                                                      "clreg"}}:
            kinds.add("clreg")
        elif peer.get("podSelector") == {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}}:
            kinds.add("operator")
        else:
            kinds.add("anyone")
    return "anyone" if "anyone" in kinds else "operator" if "operator" in kinds else "clreg"


def test_only_the_serve_port_is_open_beyond_clreg() -> None:
    """Ray's ports are reachable from clreg's pods only (the dashboard also from the KubeRay operator); beyond
    clreg, a rule opens Serve's HTTP port and nothing else."""
    for policy in of_kind(documents(), "NetworkPolicy"):
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        for rule in policy["spec"].get("ingress", []):
            ports = {p["port"] for p in rule.get("ports", [])}
            whom = _open_to(rule)
            if whom == "anyone":
                assert ports == {SERVE_PORT}, f"{policy['metadata']['name']} opens {ports or 'every port'}"
            elif whom == "operator":
                assert ports == {8265}, policy["metadata"]["name"]
            assert whom != "anyone" or not ports & set(RAY_PORTS)


# --- settings the pods get -----------------------------------------------------------------------------------


def test_daemons_are_two_distinct_consumers(clean_environment: pytest.MonkeyPatch) -> None:
    docs = documents()
    deployment = one(docs, "Deployment", "clreg-daemon")
    assert deployment["spec"]["replicas"] == 2
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["clreg", "daemon"]
    names = set()
    for pod_name in ("clreg-daemon-6d5f7c9b8-x2k9p", "clreg-daemon-6d5f7c9b8-q7lzm"):
        for key, value in container_env(docs, container, pod_name).items():
            clean_environment.setenv(key, value)
        settings = Settings()
        names.add(settings.daemon.name)
        head_service = f"{one(docs, 'RayService')['metadata']['name']}-head-svc"
        assert settings.ray.address == f"ray://{head_service}:10001"
        assert settings.serve.host == f"{one(docs, 'RayService')['metadata']['name']}-serve-svc"
    assert names == {"clreg-daemon-6d5f7c9b8-x2k9p", "clreg-daemon-6d5f7c9b8-q7lzm"}


def test_ray_pods_settings_build_the_applications(clean_environment: pytest.MonkeyPatch) -> None:
    """Each Ray pod's environment is valid Settings; with the template's placeholder digests the applications
    refuse to build (fail closed), with real ones they build on the Secret's Redis URL."""
    docs = documents()
    namespace = kustomization()["namespace"]
    for pod in ray_pods(docs):
        env = container_env(docs, pod.containers[0], f"clreg-raycluster-{pod.role}")
        for key, value in env.items():
            clean_environment.setenv(key, value)
        settings = Settings()
        assert f"clreg-serve-svc.{namespace}.svc" in settings.serve.allowed_hosts
        with pytest.raises(ValueError, match="CLREG_SERVE__ADMIN_TOKEN_SHA256"):
            serve_apps.predict({})
        clean_environment.setenv("CLREG_SERVE__ADMIN_TOKEN_SHA256", token_sha256("admin"))
        clean_environment.setenv("CLREG_SERVE__OPS_TOKEN_SHA256", token_sha256("ops"))
        for name in deploy.ROUTES:
            payload = getattr(serve_apps, name)({})._bound_deployment.init_args[0]
            assert payload["store"]["url"] == env["CLREG_REDIS__URL"]
            assert payload["artifacts_url"] == env["CLREG_ARTIFACTS_URL"]


# --- kustomization -------------------------------------------------------------------------------------------


def test_kustomization_lists_every_manifest_and_image() -> None:
    k = kustomization()
    assert set(k) <= {"apiVersion", "kind", "namespace", "resources", "images"}
    assert (k["apiVersion"], k["kind"]) == ("kustomize.config.k8s.io/v1beta1", "Kustomization")
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(k["resources"]) == manifests and len(k["resources"]) == len(manifests)
    docs = documents()
    assert one(docs, "Namespace")["metadata"]["name"] == k["namespace"]
    assert all("namespace" not in d["metadata"] for d in docs), "kustomization.yaml sets every namespace"
    images = {image["name"] for image in k["images"]}
    for pod in pods(docs):
        for container in pod.containers:
            assert container["image"].split(":")[0] in images, f"{pod.role}: image not in kustomization.yaml"
    assert all(doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "clreg" for doc in docs)
