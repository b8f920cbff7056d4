#!/usr/bin/env python3
"""Offline checks of Helix's deployment files: `make deploy-check`.

No cluster, no Docker engine, no network. What it checks:
  - helm/helix, rendered by Helm's own engine (helm-python-sdk) with no values at all
    (the embedded default, `helm install helix helm/helix`) and for every value set in
    helm/helix/ci/*-values.yaml, at each pinned Kubernetes version: helm lint, every
    manifest against the Kubernetes JSON schemas (kubernetes-validate, strict), the
    ServiceMonitor against the prometheus-operator CRD's schema, and the chart's own
    rules for its shape (probes, securityContext, references between objects, that every
    pod has the fleet token at HELIX_GRPC_TOKEN_FILE from a Secret, that the
    NetworkPolicy lets only the release's pods reach gRPC; mode fleet: hooks, that the
    workloads run exactly what deploy/fleet.json says; mode embedded: one `hx up` pod,
    Recreate, on a volume claim, with none of the fleet's stores in its environment);
  - values.schema.json: accepts no values and every value set, rejects each
    helm/helix/ci/invalid file at the value its first line names (with Helm's validator
    and with jsonschema);
  - docker-compose.yml against the Compose specification's JSON schema, and each
    service's command, environment and fleet token mount against deploy/fleet.json;
  - deploy/Dockerfile, .dockerignore, .env.example, and deploy/skeleton.sh (the
    Dockerfile's dependency layer) against the workspace.
Prints a summary and exits 1 on any failure.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import importlib.metadata
import importlib.resources
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import helm_python as helm
import jsonschema
import kubernetes_validate
import yaml
from helm_python import _native

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "helix"
FLEET = json.loads((ROOT / "deploy" / "fleet.json").read_text())

# The chart's minimum (Chart.yaml kubeVersion) and a current release.
KUBE_VERSIONS = ("1.29.0", "1.34.0")
RELEASE, NAMESPACE = "helix", "helix"
FULLNAME = "helix"  # the chart's fullname for release "helix"
MONITORING_API = ["monitoring.coreos.com/v1", "monitoring.coreos.com/v1/ServiceMonitor"]

# Value sets: the values file (ci/<name>-values.yaml; None: no values at all), the API
# versions the "cluster" serves, and the objects that exist outside the chart (the value
# set names them; the chart must not render them).
VALUE_SETS = {
    "embedded": {"file": None, "api_versions": [], "external": {}},
    "embedded-ingress": {"api_versions": MONITORING_API, "external": {}},
    "fleet": {"api_versions": [], "external": {}},
    "external-secret": {
        "api_versions": [],
        "external": {"Secret": {"helix-database", "helix-keys", "helix-grpc-token"},
                     "ServiceAccount": {"helix-workload"}},
    },
    "production": {"api_versions": MONITORING_API, "external": {}},
}

# The seed's environment variables (shared/seed, section "Environment Variables").
SEED_PROVIDER_KEYS = [
    "ANTHROPIC_API_KEY", "OPENAI_API_KEY", "GOOGLE_API_KEY", "XAI_API_KEY", "DEEPSEEK_API_KEY",
    "OPENROUTER_API_KEY", "MISTRAL_API_KEY", "TOGETHER_API_KEY", "FIREWORKS_API_KEY",
    "PERPLEXITY_API_KEY", "CLOUDFLARE_API_KEY", "CLOUDFLARE_ACCOUNT_ID", "VENICE_API_KEY",
    "COHERE_API_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
]
SEED_HELIX_CONFIG = [
    "HELIX_ENV", "HELIX_CORS_ORIGINS", "HELIX_DAILY_BUDGET", "HELIX_BUDGET_ACTION",
    "COMPOSIO_API_KEY", "HELIX_TOOL_MODE",
]
SECRET_KEYS = SEED_PROVIDER_KEYS + ["COMPOSIO_API_KEY"]  # what llm-router and orchestrator read
PROVIDER_CONSUMERS = {"llm-router", "orchestrator"}

# Variables a container may have beyond fleet.json's, by service ("*": every service).
EXTRA_ENV = {
    "*": {"HELIX_MIGRATE", "OTEL_SERVICE_NAME", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_RESOURCE_ATTRIBUTES",
          "HELIX_LOG", "HELIX_ENV", "HELIX_CORS_ORIGINS", "HELIX_DAILY_BUDGET", "HELIX_BUDGET_ACTION",
          "HELIX_TOOL_MODE"},
    "gateway": {"HELIX_ADMIN_KEY"},
    "llm-router": set(SECRET_KEYS),
    "orchestrator": set(SECRET_KEYS),
}
# Where every process reads the fleet token (a file mounted from a Secret or volume).
TOKEN_FILE = FLEET["common_env"]["HELIX_GRPC_TOKEN_FILE"]
TOKEN_DIR, TOKEN_NAME = TOKEN_FILE.rsplit("/", 1)

# mode embedded: `hx up` runs every service in one pod. Its environment: fleet.json's
# home, listeners, token file and log format, and the gateway's address; none of the
# fleet's stores and endpoints, so SQLite, the in-process bus and the embedded index
# in HELIX_HOME are used, and no HELIX_MIGRATE, so each service migrates at start.
CHART_MODE = yaml.safe_load((CHART / "values.yaml").read_text())["mode"]
EMBEDDED_COMMAND = ["up"]
EMBEDDED_ENV = {k: FLEET["common_env"][k] for k in (
    "HELIX_HOME", "HELIX_GRPC_ADDR", "HELIX_METRICS_ADDR", "HELIX_GRPC_TOKEN_FILE", "HELIX_LOG_FORMAT")}
EMBEDDED_ENV.update(FLEET["services"]["gateway"]["env"])
EMBEDDED_ABSENT = {"HELIX_DATABASE_URL", "HELIX_NATS_URL", "HELIX_QDRANT_URL", "HELIX_MIGRATE"} | {
    k for k in FLEET["common_env"] if k.endswith("_URL")}
EMBEDDED_EXTRA_ENV = (EXTRA_ENV["*"] - {"HELIX_MIGRATE"}) | {"HELIX_ADMIN_KEY"} | set(SECRET_KEYS)

# docker-compose: variables passed through from the shell or .env (no value in the file)
COMPOSE_PASSTHROUGH = {"*": {"OTEL_EXPORTER_OTLP_ENDPOINT"},
                       "gateway": {"HELIX_ADMIN_KEY", "HELIX_ENV", "HELIX_CORS_ORIGINS"}}


class Report:
    """Named checks: each passes or fails with a reason; the summary counts them."""

    def __init__(self) -> None:
        self.passed = 0
        self.failures: list[str] = []

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        if ok:
            self.passed += 1
        else:
            self.failures.append(f"{name}: {detail}" if detail else name)
        return ok

    def fail(self, name: str, detail: str) -> None:
        self.check(name, False, detail)


R = Report()


def version(dist: str) -> str:
    return importlib.metadata.version(dist)


# --- Helm -----------------------------------------------------------------------------


def render(chart: helm.Chart, values: dict, kube_version: str, api_versions: list[str]) -> dict[str, str]:
    """Helm's engine, as `helm template --kube-version V --api-versions A`. The Python
    wrapper's Chart.render exposes only name/namespace/revision; the library's render
    options also take kube_version and api_versions, which we need for Capabilities."""
    opts = {"name": RELEASE, "namespace": NAMESPACE, "is_install": True,
            "kube_version": f"v{kube_version}", "api_versions": api_versions}
    out = _native.call_string("helm_render", chart._raw(), json.dumps(values), json.dumps(opts))
    return json.loads(out)


def manifests(rendered: dict[str, str]) -> list[dict]:
    docs = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("__source", path)
                docs.append(doc)
    return docs


def strip(doc: dict) -> dict:
    return {k: v for k, v in doc.items() if k != "__source"}


def servicemonitor_schema() -> tuple[dict | None, str]:
    """The ServiceMonitor CRD's schema, from the prometheus-operator models generated
    from the CRD (cloudcoil), made strict like kubernetes-validate's: no unknown fields."""
    try:
        from cloudcoil.models.prometheus_operator.v1 import ServiceMonitor
    except ImportError:
        return None, "prometheus-operator CRD models not installed"
    schema = ServiceMonitor.model_json_schema(by_alias=True, mode="validation")

    def close(node):
        if isinstance(node, dict):
            if "properties" in node and "additionalProperties" not in node:
                node["additionalProperties"] = False
            for v in node.values():
                close(v)
        elif isinstance(node, list):
            for v in node:
                close(v)

    close(schema)
    dist = "cloudcoil.models.prometheus_operator"
    return schema, f"prometheus-operator CRD v{version(dist).rsplit('.', 1)[0]} (cloudcoil models {version(dist)})"


def validate_kube(doc: dict, kube_version: str, sm_schema: dict | None) -> str | None:
    """None when valid, else the first schema error."""
    body = strip(doc)
    if body.get("kind") == "ServiceMonitor":
        if sm_schema is None:
            return None  # structure is checked by check_servicemonitor
        errors = sorted(jsonschema.Draft202012Validator(sm_schema).iter_errors(body), key=str)
        return "; ".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:3]) or None
    try:
        kubernetes_validate.validate(body, kube_version, strict=True)
    except kubernetes_validate.ValidationError as e:
        return f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
    except kubernetes_validate.SchemaNotFoundError as e:
        return e.message
    return None


def fleet_url_for_helm(value: str) -> str:
    """fleet.json's endpoint http://storage:50051 is http://<fullname>-storage:50051 here."""
    u = urlsplit(value)
    if u.hostname in FLEET["services"]:
        return value.replace(f"//{u.hostname}:", f"//{FULLNAME}-{u.hostname}:", 1)
    return value


def pod_containers(doc: dict) -> list[dict]:
    spec = doc["spec"]["template"]["spec"]
    return list(spec.get("initContainers", [])) + list(spec["containers"])


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def effective_security(pod: dict, container: dict) -> dict:
    merged = dict(pod.get("securityContext") or {})
    merged.update(container.get("securityContext") or {})
    return merged


def value_set(set_name: str, spec: dict) -> dict:
    """The values of a set: its ci/<name>-values.yaml, or none at all."""
    if "file" in spec and spec["file"] is None:
        return {}
    return yaml.safe_load((CHART / "ci" / f"{set_name}-values.yaml").read_text()) or {}


def check_helm_value_set(set_name: str, spec: dict, sm_schema: dict | None) -> dict:
    """Lint, render, validate one value set; returns its summary row."""
    values = value_set(set_name, spec)
    mode = values.get("mode", CHART_MODE)
    row = {"set": set_name, "mode": mode, "manifests": 0, "kinds": {}, "schema_errors": 0, "lint": 0}
    docs: list[dict] = []
    with helm.Chart.load(CHART) as chart:
        for kv in KUBE_VERSIONS:
            lint = helm.lint(CHART, values, strict=True, kube_version=f"v{kv}")
            problems = [m for m in lint["messages"] if m["severity"] >= 2] + [
                {"error": e} for e in lint.get("errors", [])]
            row["lint"] += len(problems)
            R.check(f"helm lint --strict [{set_name}, k8s {kv}]", not problems,
                    "; ".join(p["error"].strip() for p in problems))
            try:
                rendered = render(chart, values, kv, spec["api_versions"])
            except Exception as e:  # noqa: BLE001 - report and go on with the next set
                R.fail(f"helm template [{set_name}, k8s {kv}]", str(e))
                continue
            docs = manifests(rendered)
            for doc in docs:
                err = validate_kube(doc, kv, sm_schema)
                name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
                if err:
                    row["schema_errors"] += 1
                R.check(f"schema [{set_name}, k8s {kv}] {name}", err is None, err or "")
            notes = next((t for p, t in rendered.items() if p.endswith("NOTES.txt")), "")
            R.check(f"NOTES.txt [{set_name}] tells how to reach the gateway and read the admin key",
                    "port-forward svc/helix-gateway 9470:9470" in notes and "HELIX_ADMIN_KEY" in notes, notes)
    row["manifests"] = len(docs)
    for doc in docs:
        row["kinds"][doc["kind"]] = row["kinds"].get(doc["kind"], 0) + 1
    if docs and mode == "fleet":
        check_chart_rules(set_name, values, spec, docs)
    elif docs:
        check_embedded_rules(set_name, values, spec, docs)
    return row


def check_pod(tag: str, wl: dict, by_kind: dict, external: dict, images: set):
    """What every workload's pod must be, in either shape: selector, checksum, no service
    links or account token, non-root and read-only, writable /data and /tmp, every
    ConfigMap and Secret it reads present. Yields each container, its name, environment
    (container_env) and named ports, for the shape's own checks."""
    configmaps = by_kind.get("ConfigMap", {})

    def exists(kind: str, name: str) -> bool:
        return name in by_kind.get(kind, {}) or name in external.get(kind, set())

    wname = f"{wl['kind']}/{wl['metadata']['name']}"
    pod = wl["spec"]["template"]["spec"]
    labels = wl["spec"]["template"]["metadata"].get("labels", {})
    is_job = wl["kind"] == "Job"
    if not is_job:
        R.check(f"{tag} {wname} selector matches its pods",
                selects(wl["spec"]["selector"]["matchLabels"], labels))
        R.check(f"{tag} {wname} has a checksum/config annotation",
                bool(wl["spec"]["template"]["metadata"].get("annotations", {}).get("checksum/config")))
    R.check(f"{tag} {wname} has no service links", pod.get("enableServiceLinks") is False)
    R.check(f"{tag} {wname} mounts no service account token", pod.get("automountServiceAccountToken") is False)
    sa = pod.get("serviceAccountName", "default")
    R.check(f"{tag} {wname} service account exists", sa == "default" or exists("ServiceAccount", sa), sa)
    for ips in pod.get("imagePullSecrets", []):
        R.check(f"{tag} {wname} pull secret {ips['name']} is given", bool(ips.get("name")))
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for vct in wl["spec"].get("volumeClaimTemplates", []):
        volumes[vct["metadata"]["name"]] = {"pvc": vct}

    for c in pod_containers(wl):
        cname = f"{wname}:{c['name']}"
        images.add(c["image"])
        sec = effective_security(pod, c)
        ok = (sec.get("runAsNonRoot") is True and sec.get("runAsUser", 0) != 0
              and sec.get("readOnlyRootFilesystem") is True and sec.get("allowPrivilegeEscalation") is False
              and "ALL" in (sec.get("capabilities") or {}).get("drop", [])
              and not sec.get("privileged", False)
              and (sec.get("seccompProfile") or {}).get("type") == "RuntimeDefault")
        R.check(f"{tag} {cname} is non-root, read-only root, no privilege escalation, drops ALL", ok, str(sec))
        mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
        for path in ("/data", "/tmp"):
            m = mounts.get(path)
            R.check(f"{tag} {cname} has a writable volume at {path}",
                    m is not None and m["name"] in volumes and not m.get("readOnly"), str(mounts))
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        env = container_env(c, configmaps)

        for ref in env_refs(c):
            kind, name, key, optional = ref
            if kind == "ConfigMap":
                R.check(f"{tag} {cname} ConfigMap {name} exists", name in configmaps)
                continue
            rendered_secret = by_kind.get("Secret", {}).get(name)
            if rendered_secret is not None:
                data = {**rendered_secret.get("data", {}), **rendered_secret.get("stringData", {})}
                R.check(f"{tag} {cname} Secret {name} has {key}", key is None or key in data or optional,
                        f"keys: {sorted(data)}")
                if is_job:
                    hooked = "helm.sh/hook" in rendered_secret["metadata"].get("annotations", {})
                    R.check(f"{tag} {cname} reads Secret {name} that exists at pre-install", hooked,
                            "a pre-install hook runs before the release's own Secrets exist")
            else:
                R.check(f"{tag} {cname} Secret {name} is external", name in external.get("Secret", set()),
                        "neither rendered nor declared external")
        yield c, cname, env, ports


def check_chart_rules(set_name: str, values: dict, spec: dict, docs: list[dict]) -> None:
    tag = f"[{set_name}]"
    by_kind: dict[str, dict[str, dict]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    external = spec["external"]

    for kind, names in external.items():
        for name in names:
            R.check(f"{tag} external {kind}/{name} is not rendered", name not in by_kind.get(kind, {}))

    workloads = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    jobs = [d for d in docs if d["kind"] == "Job"]
    images = set()

    # one workload per fleet service, of the right kind
    for svc, fleet_svc in FLEET["services"].items():
        name = f"{FULLNAME}-{svc}"
        kind = "StatefulSet" if fleet_svc.get("local_index") else "Deployment"
        R.check(f"{tag} {svc} runs as a {kind}", name in by_kind.get(kind, {}),
                f"no {kind}/{name}")

    for wl in workloads + jobs:
        is_job = wl["kind"] == "Job"
        for c, cname, env, ports in check_pod(tag, wl, by_kind, external, images):
            if is_job:
                check_migration_job(tag, wl, c, env)
                continue

            svc = c["args"][1] if c.get("args", [None])[0] == "serve" else None
            if not R.check(f"{tag} {cname} runs `hx serve <fleet service>`", svc in FLEET["services"], str(c.get("args"))):
                continue
            check_probes(tag, cname, svc, c, ports)
            check_fleet_env(tag, cname, svc, c, env, values)
            R.check(f"{tag} {cname} args match fleet.json", c["args"] == FLEET["services"][svc]["command"],
                    f"{c['args']} != {FLEET['services'][svc]['command']}")
            expected_ports = {"grpc": FLEET["grpc_port"], "metrics": FLEET["metrics_port"]}
            if svc == "gateway":
                expected_ports["http"] = FLEET["gateway_port"]
            R.check(f"{tag} {cname} ports match fleet.json", ports == expected_ports, f"{ports}")

    R.check(f"{tag} one image for every container", len(images) == 1, str(images))
    check_services(tag, by_kind, workloads)
    check_fleet_token(tag, by_kind, workloads, values, external)
    check_network_policy(tag, by_kind, workloads, values)
    check_pdbs_hpas(tag, by_kind, workloads, values)
    check_ingress(tag, by_kind, values)
    check_servicemonitor(tag, by_kind, spec, [f"{FULLNAME}-{s}" for s in FLEET["services"]])


def check_embedded_rules(set_name: str, values: dict, spec: dict, docs: list[dict]) -> None:
    """mode embedded: one Deployment running `hx up` (replicas 1, Recreate) with /data on a
    volume claim, none of the fleet's stores in its environment, the admin key from a
    Secret, and the gateway's Service name of the fleet; nothing of the fleet besides."""
    tag = f"[{set_name}]"
    by_kind: dict[str, dict[str, dict]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    external = spec["external"]
    embedded = (values.get("embedded") or {})
    persistence = embedded.get("persistence") or {}
    workloads = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    names = sorted(f"{w['kind']}/{w['metadata']['name']}" for w in workloads)
    if not R.check(f"{tag} the one workload is Deployment/{FULLNAME}", names == [f"Deployment/{FULLNAME}"], str(names)):
        return
    for kind in ("Job", "HorizontalPodAutoscaler", "PodDisruptionBudget", "StatefulSet"):
        R.check(f"{tag} renders no {kind} (the fleet's)", kind not in by_kind, str(list(by_kind.get(kind, {}))))
    for name in (f"{FULLNAME}-database", f"{FULLNAME}-migrate"):
        R.check(f"{tag} renders no Secret/{name} (the fleet's database)", name not in by_kind.get("Secret", {}))
    dep = workloads[0]
    R.check(f"{tag} Deployment/{FULLNAME} runs one replica", dep["spec"].get("replicas") == 1, str(dep["spec"].get("replicas")))
    R.check(f"{tag} Deployment/{FULLNAME} is replaced with Recreate (one writer of SQLite and the index)",
            dep["spec"].get("strategy") == {"type": "Recreate"}, str(dep["spec"].get("strategy")))

    images = set()
    containers = list(check_pod(tag, dep, by_kind, external, images))
    if not R.check(f"{tag} Deployment/{FULLNAME} has one container", len(containers) == 1, str(len(containers))):
        return
    c, cname, env, ports = containers[0]
    R.check(f"{tag} {cname} runs `hx up`", c.get("args") == EMBEDDED_COMMAND, str(c.get("args")))
    want_ports = {"grpc": FLEET["grpc_port"], "metrics": FLEET["metrics_port"], "http": FLEET["gateway_port"]}
    R.check(f"{tag} {cname} ports are fleet.json's", ports == want_ports, str(ports))
    for probe, path in (("startupProbe", "/livez"), ("livenessProbe", "/livez"), ("readinessProbe", "/readyz")):
        get = (c.get(probe) or {}).get("httpGet") or {}
        R.check(f"{tag} {cname} {probe} asks GET {path} on {FLEET['metrics_port']}",
                get.get("path") == path and ports.get(get.get("port"), get.get("port")) == FLEET["metrics_port"], str(get))
    for key, want in EMBEDDED_ENV.items():
        R.check(f"{tag} {cname} {key} follows fleet.json", env.get(key) == want, f"{env.get(key)!r} != {want!r}")
    present = sorted(EMBEDDED_ABSENT & set(env))
    R.check(f"{tag} {cname} has none of the fleet's stores, endpoints or HELIX_MIGRATE (SQLite, in-process bus, "
            "embedded index, migrations at start)", not present, str(present))
    R.check(f"{tag} {cname} OTEL_SERVICE_NAME", env.get("OTEL_SERVICE_NAME") == "helix", str(env.get("OTEL_SERVICE_NAME")))
    allowed = set(EMBEDDED_ENV) | EMBEDDED_EXTRA_ENV | {e["name"] for e in embedded.get("extraEnv", [])}
    R.check(f"{tag} {cname} has no variables beyond its role", set(env) <= allowed, f"unexpected: {sorted(set(env) - allowed)}")
    R.check(f"{tag} {cname} gets every provider key", set(SECRET_KEYS) <= set(env),
            f"missing {sorted(set(SECRET_KEYS) - set(env))}")
    admin = env.get("HELIX_ADMIN_KEY")
    secret_name = values.get("existingSecret") or FULLNAME
    R.check(f"{tag} {cname} HELIX_ADMIN_KEY comes from Secret {secret_name}",
            admin == ("secret", secret_name, "HELIX_ADMIN_KEY"), str(admin))
    if not values.get("existingSecret"):
        secret = by_kind.get("Secret", {}).get(FULLNAME)
        key = base64.b64decode((secret or {}).get("data", {}).get("HELIX_ADMIN_KEY", "")).decode()
        want = values.get("adminKey")
        R.check(f"{tag} Secret/{FULLNAME} holds the admin key ({'adminKey' if want else 'generated: hx_ + 64 hex'})",
                key == want if want else re.fullmatch(r"hx_[0-9a-f]{64}", key) is not None)

    # /data: the chart's claim, or persistence.existingClaim
    pod = dep["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    data_mount = next((m for m in c.get("volumeMounts", []) if m["mountPath"] == "/data"), {})
    claim = (volumes.get(data_mount.get("name")) or {}).get("persistentVolumeClaim", {}).get("claimName")
    existing = persistence.get("existingClaim")
    pvcs = by_kind.get("PersistentVolumeClaim", {})
    if existing:
        R.check(f"{tag} /data is the existing claim {existing}", claim == existing, str(claim))
        R.check(f"{tag} renders no PersistentVolumeClaim with existingClaim", not pvcs, str(list(pvcs)))
    else:
        pvc = pvcs.get(f"{FULLNAME}-data")
        R.check(f"{tag} /data is the chart's claim {FULLNAME}-data", claim == f"{FULLNAME}-data" and pvc is not None,
                f"{claim}, rendered: {list(pvcs)}")
        if pvc is not None:
            keep = persistence.get("keep", True)
            R.check(f"{tag} PersistentVolumeClaim kept on uninstall iff persistence.keep",
                    (pvc["metadata"].get("annotations", {}).get("helm.sh/resource-policy") == "keep") == keep)
            if "size" in persistence:
                R.check(f"{tag} PersistentVolumeClaim size is persistence.size",
                        pvc["spec"]["resources"]["requests"]["storage"] == persistence["size"])
            if persistence.get("storageClass"):
                R.check(f"{tag} PersistentVolumeClaim storage class is persistence.storageClass",
                        pvc["spec"].get("storageClassName") == persistence["storageClass"])

    # the fleet's gateway Service name, serving the pod's REST, gRPC and metrics ports
    services = by_kind.get("Service", {})
    R.check(f"{tag} one Service, {FULLNAME}-gateway", list(services) == [f"{FULLNAME}-gateway"], str(list(services)))
    svc = services.get(f"{FULLNAME}-gateway")
    if svc is not None:
        R.check(f"{tag} Service/{FULLNAME}-gateway selects the pod",
                selects(svc["spec"]["selector"], dep["spec"]["template"]["metadata"]["labels"]))
        got = {p["name"]: p["port"] for p in svc["spec"]["ports"]}
        R.check(f"{tag} Service/{FULLNAME}-gateway ports", got == want_ports, str(got))
        for p in svc["spec"]["ports"]:
            R.check(f"{tag} Service/{FULLNAME}-gateway port {p['name']} targets a container port", p["targetPort"] in ports)
        want_type = ((values.get("gateway") or {}).get("service") or {}).get("type", "ClusterIP")
        R.check(f"{tag} Service/{FULLNAME}-gateway type is gateway.service.type", svc["spec"]["type"] == want_type)

    R.check(f"{tag} one image", len(images) == 1, str(images))
    check_fleet_token(tag, by_kind, workloads, values, external)
    check_network_policy(tag, by_kind, workloads, values)
    check_ingress(tag, by_kind, values)
    check_servicemonitor(tag, by_kind, spec, [f"{FULLNAME}-gateway"])


def container_env(c: dict, configmaps: dict) -> dict:
    """name -> literal value or ('secret', name, key)."""
    env: dict = {}
    for src in c.get("envFrom", []):
        if "configMapRef" in src:
            env.update(configmaps.get(src["configMapRef"]["name"], {}).get("data", {}))
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        elif "secretKeyRef" in e.get("valueFrom", {}):
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = ("secret", ref["name"], ref["key"])
        else:
            env[e["name"]] = ("from", json.dumps(e.get("valueFrom")))
    return env


def env_refs(c: dict):
    for src in c.get("envFrom", []):
        if "configMapRef" in src:
            yield ("ConfigMap", src["configMapRef"]["name"], None, src["configMapRef"].get("optional", False))
        if "secretRef" in src:
            yield ("Secret", src["secretRef"]["name"], None, src["secretRef"].get("optional", False))
    for e in c.get("env", []):
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            yield ("Secret", ref["name"], ref["key"], ref.get("optional", False))


def check_probes(tag: str, cname: str, svc: str, c: dict, ports: dict) -> None:
    want = {
        "startupProbe": ("/livez", FLEET["metrics_port"]),
        "livenessProbe": ("/livez", FLEET["metrics_port"]),
        "readinessProbe": ("/ready", FLEET["gateway_port"]) if svc == "gateway" else ("/readyz", FLEET["metrics_port"]),
    }
    for probe, (path, port) in want.items():
        get = (c.get(probe) or {}).get("httpGet")
        if not R.check(f"{tag} {cname} has a {probe}", get is not None, "missing or not httpGet"):
            continue
        actual_port = ports.get(get["port"], get["port"])
        R.check(f"{tag} {cname} {probe} asks GET {path} on {port}",
                get.get("path") == path and actual_port == port, f"{get}")


def check_fleet_env(tag: str, cname: str, svc: str, c: dict, env: dict, values: dict) -> None:
    expected = dict(FLEET["common_env"])
    expected.update(FLEET["services"][svc]["env"])
    for key, want in expected.items():
        have = env.get(key)
        if key == "HELIX_DATABASE_URL":
            R.check(f"{tag} {cname} {key} comes from a Secret", isinstance(have, tuple) and have[0] == "secret", str(have))
        elif key in ("HELIX_NATS_URL", "HELIX_QDRANT_URL"):
            R.check(f"{tag} {cname} {key} is set", isinstance(have, str) and "://" in have, str(have))
        else:
            R.check(f"{tag} {cname} {key} follows fleet.json", have == fleet_url_for_helm(want),
                    f"{have!r} != {fleet_url_for_helm(want)!r}")
    migrations = (values.get("migrations") or {}).get("enabled", True)
    R.check(f"{tag} {cname} HELIX_MIGRATE", env.get("HELIX_MIGRATE") == ("false" if migrations else "true"))
    R.check(f"{tag} {cname} OTEL_SERVICE_NAME", env.get("OTEL_SERVICE_NAME") == f"helix-{svc}", str(env.get("OTEL_SERVICE_NAME")))
    key = {"llm-router": "llmRouter"}.get(svc, svc)
    allowed = set(expected) | EXTRA_ENV["*"] | EXTRA_ENV.get(svc, set()) | {
        e["name"] for e in (values.get(key) or {}).get("extraEnv", [])}
    R.check(f"{tag} {cname} has no variables beyond fleet.json and its role", set(env) <= allowed,
            f"unexpected: {sorted(set(env) - allowed)}")
    if svc in PROVIDER_CONSUMERS:
        R.check(f"{tag} {cname} gets every provider key", set(SECRET_KEYS) <= set(env),
                f"missing {sorted(set(SECRET_KEYS) - set(env))}")


def check_migration_job(tag: str, job: dict, c: dict, env: dict) -> None:
    ann = job["metadata"].get("annotations", {})
    hooks = set(ann.get("helm.sh/hook", "").split(","))
    R.check(f"{tag} migration Job is a pre-install and pre-upgrade hook", {"pre-install", "pre-upgrade"} <= hooks, str(hooks))
    R.check(f"{tag} migration Job runs fleet.json's migrate command", c.get("args") == FLEET["migrate"]["command"], str(c.get("args")))
    R.check(f"{tag} migration Job has the database URL from a Secret",
            isinstance(env.get("HELIX_DATABASE_URL"), tuple), str(env.get("HELIX_DATABASE_URL")))
    R.check(f"{tag} migration Job uses no ConfigMap (none exists at pre-install)", not c.get("envFrom"))
    R.check(f"{tag} migration Job does not restart in place", job["spec"]["template"]["spec"].get("restartPolicy") == "Never")


def check_services(tag: str, by_kind: dict, workloads: list[dict]) -> None:
    services = by_kind.get("Service", {})
    for name, svc in services.items():
        matched = [w for w in workloads if selects(svc["spec"]["selector"], w["spec"]["template"]["metadata"]["labels"])]
        if not R.check(f"{tag} Service/{name} selects exactly one workload", len(matched) == 1, str(len(matched))):
            continue
        port_names = {p["name"] for c in pod_containers(matched[0]) for p in c.get("ports", [])}
        for p in svc["spec"]["ports"]:
            R.check(f"{tag} Service/{name} port {p['name']} targets a container port", p["targetPort"] in port_names,
                    f"{p['targetPort']} not in {port_names}")
    for svc_name in FLEET["services"]:
        svc = services.get(f"{FULLNAME}-{svc_name}")
        if not R.check(f"{tag} Service {FULLNAME}-{svc_name} exists (host of HELIX_{svc_name.upper().replace('-', '_')}_URL)", svc is not None):
            continue
        ports = {p["name"]: p["port"] for p in svc["spec"]["ports"]}
        want = {"grpc": FLEET["grpc_port"], "metrics": FLEET["metrics_port"]}
        if svc_name == "gateway":
            want["http"] = FLEET["gateway_port"]
        R.check(f"{tag} Service {FULLNAME}-{svc_name} ports", ports == want, str(ports))
    for w in workloads:
        if w["kind"] == "StatefulSet":
            gov = services.get(w["spec"]["serviceName"])
            R.check(f"{tag} StatefulSet/{w['metadata']['name']} has its headless Service",
                    gov is not None and gov["spec"].get("clusterIP") == "None")
            R.check(f"{tag} StatefulSet/{w['metadata']['name']} has a volume per replica at /data",
                    any(v["metadata"]["name"] == "data" for v in w["spec"].get("volumeClaimTemplates", [])))


def check_fleet_token(tag: str, by_kind: dict, workloads: list[dict], values: dict, external: dict) -> None:
    """Every service pod reads the fleet token at HELIX_GRPC_TOKEN_FILE from one Secret;
    the chart's Secret holds a token of 48 characters unless one is given."""
    given = values.get("grpcToken") or {}
    secrets = by_kind.get("Secret", {})
    used = set()
    for w in workloads:
        wname = f"{w['kind']}/{w['metadata']['name']}"
        pod = w["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for c in pod["containers"]:
            mounts = [m for m in c.get("volumeMounts", []) if m["mountPath"] == TOKEN_DIR]
            if not R.check(f"{tag} {wname} mounts the fleet token at {TOKEN_DIR}, read-only",
                           len(mounts) == 1 and mounts[0].get("readOnly") is True, str(mounts)):
                continue
            source = (volumes.get(mounts[0]["name"]) or {}).get("secret")
            if not R.check(f"{tag} {wname} fleet token volume is a Secret", source is not None,
                           str(volumes.get(mounts[0]["name"]))):
                continue
            name = source["secretName"]
            used.add(name)
            items = {i["key"]: i["path"] for i in source.get("items", [])}
            R.check(f"{tag} {wname} the token Secret's key lands at {TOKEN_FILE}",
                    list(items.values()) == [TOKEN_NAME], str(items))
            if name in secrets:
                R.check(f"{tag} {wname} Secret {name} holds the token's key",
                        set(items) <= set(secrets[name].get("data", {})))
            else:
                R.check(f"{tag} {wname} Secret {name} is external", name in external.get("Secret", set()))
                R.check(f"{tag} {wname} reads grpcToken.existingSecretKey",
                        list(items) == [given.get("existingSecretKey")], str(items))
    R.check(f"{tag} one fleet token Secret for every pod", len(used) == 1, str(sorted(used)))
    if given.get("existingSecret"):
        R.check(f"{tag} grpcToken.existingSecret is the token's Secret", used == {given["existingSecret"]}, str(used))
        return
    secret = secrets.get(f"{FULLNAME}-grpc-token")
    if not R.check(f"{tag} the chart renders the fleet token Secret",
                   secret is not None and used == {f"{FULLNAME}-grpc-token"}, str(used)):
        return
    token = base64.b64decode(secret["data"]["grpc.token"]).decode()
    if given.get("value"):
        R.check(f"{tag} the fleet token is grpcToken.value", token == given["value"])
    else:
        R.check(f"{tag} the generated fleet token is 48 letters and digits",
                re.fullmatch(r"[A-Za-z0-9]{48}", token) is not None)


def check_network_policy(tag: str, by_kind: dict, workloads: list[dict], values: dict) -> None:
    """Only the release's pods reach gRPC; REST and metrics stay open to every source."""
    policies = list(by_kind.get("NetworkPolicy", {}).values())
    want = (values.get("networkPolicy") or {}).get("enabled", True)
    if not R.check(f"{tag} NetworkPolicy rendered iff networkPolicy.enabled",
                   len(policies) == (1 if want else 0), str(len(policies))) or not want:
        return
    spec = policies[0]["spec"]
    pods = [w["spec"]["template"]["metadata"]["labels"] for w in workloads]
    R.check(f"{tag} NetworkPolicy covers every service's pods",
            all(selects(spec["podSelector"].get("matchLabels"), labels) for labels in pods))
    R.check(f"{tag} NetworkPolicy restricts ingress", spec.get("policyTypes") == ["Ingress"], str(spec.get("policyTypes")))

    def sources(port: int) -> list:
        """The `from` lists of the rules admitting `port` (None: every source)."""
        return [rule.get("from") for rule in spec.get("ingress", [])
                if any(p.get("port") == port and p.get("protocol", "TCP") == "TCP" for p in rule.get("ports", []))]

    def release_pods(src: dict) -> bool:
        selector = src.get("podSelector") or {}
        return (set(src) == {"podSelector"} and not selector.get("matchExpressions")
                and all(selects(selector.get("matchLabels"), labels) for labels in pods))

    grpc = sources(FLEET["grpc_port"])
    R.check(f"{tag} NetworkPolicy: gRPC {FLEET['grpc_port']} only from the release's pods",
            bool(grpc) and all(froms and all(release_pods(src) for src in froms) for froms in grpc), str(grpc))
    for port in (FLEET["metrics_port"], FLEET["gateway_port"]):
        R.check(f"{tag} NetworkPolicy: port {port} stays open to every source", None in sources(port), str(sources(port)))
    opened = {p.get("port") for rule in spec.get("ingress", []) for p in rule.get("ports", [])}
    R.check(f"{tag} NetworkPolicy opens no other port",
            opened <= {FLEET["grpc_port"], FLEET["metrics_port"], FLEET["gateway_port"]}, str(opened))


# The bases the gating checks start from: each shape as the chart's own value sets give it.
GATING_BASES = {"embedded": "embedded", "fleet": "fleet"}


def gating_bases():
    for shape, set_name in GATING_BASES.items():
        yield shape, value_set(set_name, VALUE_SETS[set_name])


def check_network_policy_gating() -> None:
    """Rendered by default; networkPolicy.enabled=false leaves it out (both shapes)."""
    with helm.Chart.load(CHART) as chart:
        for shape, base in gating_bases():
            for enabled in (True, False):
                values = {**copy.deepcopy(base), "networkPolicy": {"enabled": enabled}}
                docs = manifests(render(chart, values, KUBE_VERSIONS[-1], []))
                got = any(d["kind"] == "NetworkPolicy" for d in docs)
                R.check(f"NetworkPolicy gating [{shape}]: enabled={enabled} -> {'rendered' if enabled else 'absent'}",
                        got == enabled)


def check_embedded_claim_gating() -> None:
    """The embedded pod's claim: the chart's (kept on uninstall unless keep=false), or
    persistence.existingClaim and none rendered."""
    cases = [
        ("default", {}, f"{FULLNAME}-data", True),
        ("keep=false", {"keep": False}, f"{FULLNAME}-data", False),
        ("existingClaim", {"existingClaim": "helix-data-restored"}, "helix-data-restored", None),
    ]
    with helm.Chart.load(CHART) as chart:
        for name, persistence, claim, keep in cases:
            docs = manifests(render(chart, {"embedded": {"persistence": persistence}}, KUBE_VERSIONS[-1], []))
            pvcs = [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
            dep = next((d for d in docs if d["kind"] == "Deployment"), None)
            volumes = dep["spec"]["template"]["spec"]["volumes"] if dep else []
            used = next((v.get("persistentVolumeClaim", {}).get("claimName") for v in volumes if v["name"] == "data"), None)
            rendered = [p["metadata"]["name"] for p in pvcs]
            kept = [p["metadata"].get("annotations", {}).get("helm.sh/resource-policy") == "keep" for p in pvcs]
            want = [] if keep is None else [claim]
            R.check(f"embedded claim gating: {name} -> /data on {claim}, claims rendered {want}, kept {keep}",
                    used == claim and rendered == want and (keep is None or kept == [keep]), f"{used}, {rendered}, {kept}")


def check_pdbs_hpas(tag: str, by_kind: dict, workloads: list[dict], values: dict) -> None:
    pdbs = by_kind.get("PodDisruptionBudget", {})
    for w in workloads:
        labels = w["spec"]["template"]["metadata"]["labels"]
        covering = [p for p in pdbs.values() if selects(p["spec"]["selector"]["matchLabels"], labels)]
        R.check(f"{tag} {w['kind']}/{w['metadata']['name']} has one PodDisruptionBudget", len(covering) == 1, str(len(covering)))
    deployments = by_kind.get("Deployment", {})
    hpas = by_kind.get("HorizontalPodAutoscaler", {})
    for name, hpa in hpas.items():
        target = hpa["spec"]["scaleTargetRef"]
        dep = deployments.get(target["name"])
        R.check(f"{tag} HPA/{name} scales a Deployment", target["kind"] == "Deployment" and dep is not None, str(target))
        if dep is not None:
            R.check(f"{tag} HPA/{name}: its Deployment leaves replicas to the HPA", "replicas" not in dep["spec"])
    wanted = sum(1 for k, v in values.items() if isinstance(v, dict) and (v.get("autoscaling") or {}).get("enabled"))
    R.check(f"{tag} one HPA per service with autoscaling.enabled", len(hpas) == wanted, f"{len(hpas)} != {wanted}")


def check_ingress(tag: str, by_kind: dict, values: dict) -> None:
    ingresses = by_kind.get("Ingress", {})
    want = bool((values.get("ingress") or {}).get("enabled"))
    R.check(f"{tag} Ingress rendered iff ingress.enabled", bool(ingresses) == want, str(list(ingresses)))
    services = by_kind.get("Service", {})
    for name, ing in ingresses.items():
        for rule in ing["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                svc = services.get(backend["name"])
                R.check(f"{tag} Ingress/{name} {rule['host']}{path['path']} reaches the gateway's REST port",
                        svc is not None and backend["port"].get("name") in {p["name"] for p in svc["spec"]["ports"]}
                        and backend["name"] == f"{FULLNAME}-gateway", str(backend))


def check_servicemonitor(tag: str, by_kind: dict, spec: dict, want: list[str]) -> None:
    monitors = by_kind.get("ServiceMonitor", {})
    has_api = bool(set(spec["api_versions"]) & set(MONITORING_API))
    if not has_api:
        R.check(f"{tag} no ServiceMonitor without the monitoring.coreos.com/v1 API", not monitors)
        return
    if not R.check(f"{tag} ServiceMonitor rendered", len(monitors) == 1, str(list(monitors))):
        return
    sm = next(iter(monitors.values()))
    sel = sm["spec"]["selector"]
    matched = [s for s in by_kind.get("Service", {}).values()
               if selects(sel.get("matchLabels"), s["metadata"].get("labels", {}))
               and all(e["operator"] != "DoesNotExist" or e["key"] not in s["metadata"].get("labels", {})
                       for e in sel.get("matchExpressions", []))]
    names = sorted(s["metadata"]["name"] for s in matched)
    R.check(f"{tag} ServiceMonitor selects each service's Service once", names == sorted(want), str(names))
    for ep in sm["spec"]["endpoints"]:
        R.check(f"{tag} ServiceMonitor scrapes {ep.get('path')} on port {ep.get('port')}",
                ep.get("path") == "/metrics" and all(ep["port"] in {p["name"] for p in s["spec"]["ports"]} for s in matched))


def check_servicemonitor_gating() -> None:
    """Rendered only when enabled and the cluster has the CRD, or when forced (both shapes)."""
    cases = [
        ("enabled, no CRD", {"serviceMonitor": {"enabled": True}}, [], False),
        ("enabled, CRD present", {"serviceMonitor": {"enabled": True}}, MONITORING_API[1:], True),
        ("enabled, group version present", {"serviceMonitor": {"enabled": True}}, MONITORING_API[:1], True),
        ("enabled + force, no CRD", {"serviceMonitor": {"enabled": True, "force": True}}, [], True),
        ("disabled, CRD present", {"serviceMonitor": {"enabled": False}}, MONITORING_API, False),
    ]
    with helm.Chart.load(CHART) as chart:
        for shape, base in gating_bases():
            for name, extra, apis, want in cases:
                values = {**copy.deepcopy(base), **extra}
                docs = manifests(render(chart, values, KUBE_VERSIONS[-1], apis))
                got = any(d["kind"] == "ServiceMonitor" for d in docs)
                R.check(f"ServiceMonitor gating [{shape}]: {name} -> {'rendered' if want else 'absent'}", got == want)


@contextlib.contextmanager
def quiet_stderr():
    """Silence file descriptor 2 (the native library logs there, not to sys.stderr)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def check_values_schema() -> tuple[int, int]:
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    R.check("the chart's default mode is embedded (no values: the one-pod install)", CHART_MODE == "embedded", CHART_MODE)
    with helm.Chart.load(CHART) as chart:
        sets = [("no values at all", {})] + [
            (f"ci/{path.name}", yaml.safe_load(path.read_text()) or {}) for path in sorted((CHART / "ci").glob("*-values.yaml"))]
        for name, values in sets:
            merged = chart.merge_values(values)
            errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(merged)]
            R.check(f"values.schema.json accepts {name} (jsonschema)", not errors, "; ".join(errors))
            helm_msg = None
            with quiet_stderr():
                try:
                    chart.validate_schema(merged)
                except helm.HelmError as e:
                    helm_msg = str(e)
            R.check(f"values.schema.json accepts {name} (Helm)", helm_msg is None, helm_msg or "")
        bad = sorted((CHART / "ci" / "invalid").glob("*.yaml"))
        rejected = 0
        for path in bad:
            text = path.read_text()
            m = re.match(r"#\s*expect:\s*(\S+)", text)
            if not R.check(f"ci/invalid/{path.name} names the value it breaks", m is not None):
                continue
            expect = m.group(1)
            # Helm's validator words a few errors differently: `# helm: <text>` says how
            helm_words = re.search(r"^#\s*helm:\s*(.+)$", text, re.M)
            helm_expect = helm_words.group(1) if helm_words else f"at '{expect}'"
            values = yaml.safe_load(text) or {}
            helm_msg = None
            with quiet_stderr():  # Helm logs its coalescing warnings on stderr
                merged = chart.merge_values(values)
                try:
                    chart.validate_schema(merged)
                except helm.HelmError as e:
                    helm_msg = str(e)
            ok_helm = helm_msg is not None and helm_expect in helm_msg
            R.check(f"Helm rejects ci/invalid/{path.name} ({helm_expect})", ok_helm, helm_msg or "accepted")
            paths = set()
            for e in validator.iter_errors(merged):
                for err in [e, *e.context]:
                    paths.add("/" + "/".join(map(str, err.absolute_path)))
            ok_py = expect in paths
            R.check(f"jsonschema rejects ci/invalid/{path.name} at {expect}", ok_py, f"errors at {sorted(paths) or 'none'}")
            rejected += ok_helm and ok_py
    return rejected, len(bad)


def check_chart_lists() -> None:
    """The provider key list is written three times: keep them equal to the seed's."""
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    block = re.search(r'define "helix.providerKeyNames" -}}(.*?){{- end', helpers, re.S).group(1)
    chart_keys = re.findall(r"- (\w+)", block)
    R.check("chart's provider keys are the seed's plus COMPOSIO_API_KEY", chart_keys == SECRET_KEYS, str(chart_keys))
    schema = json.loads((CHART / "values.schema.json").read_text())
    enum = schema["properties"]["providerKeys"]["propertyNames"]["enum"]
    R.check("values.schema.json providerKeys names are the chart's", enum == SECRET_KEYS, str(enum))
    services = re.findall(r"- \{name: ([\w-]+), key: (\w+), env: (\w+), localIndex: (\w+)\}", helpers)
    R.check("chart's service list is fleet.json's", [s[0] for s in services] == list(FLEET["services"]), str(services))
    for name, _key, env, local in services:
        if name in FLEET["services"]:
            R.check(f"chart: {name} localIndex follows fleet.json",
                    (local == "true") == bool(FLEET["services"][name].get("local_index")))
            R.check(f"chart: {name} endpoint variable is in fleet.json", f"HELIX_{env}_URL" in FLEET["common_env"])


# --- docker-compose --------------------------------------------------------------------------------


def compose_schema() -> tuple[dict, str]:
    ref = importlib.resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json")
    return json.loads(ref.read_text()), f"Compose specification schema vendored by check-jsonschema {version('check-jsonschema')}"


def normalize_env(env) -> dict:
    if isinstance(env, list):
        out = {}
        for item in env:
            k, sep, v = str(item).partition("=")
            out[k] = v if sep else None
        return out
    return {k: (None if v is None else str(v).lower() if isinstance(v, bool) else str(v)) for k, v in (env or {}).items()}


def check_compose() -> dict:
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    schema, schema_name = compose_schema()
    errors = [f"{e.json_path}: {e.message}" for e in jsonschema.Draft202012Validator(schema).iter_errors(doc)]
    R.check("docker-compose.yml is valid against the Compose specification", not errors, "; ".join(errors[:5]))
    services = doc.get("services", {})
    volumes = doc.get("volumes", {}) or {}

    # every host fleet.json names is a compose service
    for key, value in FLEET["common_env"].items():
        if "://" in value:
            host = urlsplit(value).hostname
            R.check(f"compose: {key} host {host} is a service", host in services)
    db = urlsplit(FLEET["common_env"]["HELIX_DATABASE_URL"])
    pg_env = normalize_env(services.get("postgres", {}).get("environment"))
    R.check("compose: postgres database, user and password match HELIX_DATABASE_URL",
            (pg_env.get("POSTGRES_DB"), pg_env.get("POSTGRES_USER"), pg_env.get("POSTGRES_PASSWORD"))
            == (db.path.lstrip("/"), db.username, db.password), str(pg_env))
    nats_cmd = services.get("nats", {}).get("command", [])
    R.check("compose: NATS runs JetStream with a data volume", "-js" in nats_cmd and "-sd" in nats_cmd
            and any(str(v).startswith("nats-data:") for v in services["nats"].get("volumes", [])))

    for name, svc in services.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            R.check(f"compose: {name} depends on an existing {dep}", dep in services)
            if cond.get("condition") == "service_healthy":
                hc = services.get(dep, {}).get("healthcheck") or {}
                R.check(f"compose: {dep} has a healthcheck ({name} waits for it)", bool(hc.get("test")) and not hc.get("disable"))

    images = set()
    expected_all = dict(FLEET["common_env"])
    for name in [*FLEET["services"], "migrate"]:
        svc = services.get(name)
        if not R.check(f"compose: service {name} exists", svc is not None):
            continue
        images.add(svc.get("image"))
        build = svc.get("build") or {}
        R.check(f"compose: {name} builds deploy/Dockerfile", build.get("dockerfile") == "deploy/Dockerfile"
                and build.get("context") == ".", str(build))
        R.check(f"compose: {name} has a read-only root filesystem", svc.get("read_only") is True)
        mounts = [m if isinstance(m, dict) else {"target": m.split(":")[1], "source": m.split(":")[0], "type": "volume",
                                                 "read_only": m.endswith(":ro")}
                  for m in svc.get("volumes", [])]
        data = [m for m in mounts if m.get("target") == "/data"]
        R.check(f"compose: {name} has a writable /data", len(data) == 1, str(mounts))
        tmp = "/tmp" in (svc.get("tmpfs") or []) or any(m.get("target") == "/tmp" for m in mounts)
        R.check(f"compose: {name} has a writable /tmp", tmp)
        env = normalize_env(svc.get("environment"))
        literal = {k: v for k, v in env.items() if v is not None}
        passthrough = {k for k, v in env.items() if v is None}
        if name == "migrate":
            R.check("compose: migrate runs fleet.json's migrate command", svc.get("command") == FLEET["migrate"]["command"])
            want = {**expected_all, "OTEL_SERVICE_NAME": "helix-migrate"}
            R.check("compose: migrate environment is fleet.json's common_env", literal == want, dict_diff(literal, want))
            R.check("compose: migrate waits for a healthy postgres",
                    (svc.get("depends_on") or {}).get("postgres", {}).get("condition") == "service_healthy")
            R.check("compose: migrate runs once", str(svc.get("restart", "no")) == "no")
            continue
        fleet_svc = FLEET["services"][name]
        R.check(f"compose: {name} command is fleet.json's", svc.get("command") == fleet_svc["command"],
                f"{svc.get('command')} != {fleet_svc['command']}")
        want = {**expected_all, **fleet_svc["env"], "HELIX_MIGRATE": "false", "OTEL_SERVICE_NAME": f"helix-{name}"}
        R.check(f"compose: {name} environment is fleet.json's (+ HELIX_MIGRATE, OTEL_SERVICE_NAME)",
                literal == want, dict_diff(literal, want))
        allowed = COMPOSE_PASSTHROUGH["*"] | COMPOSE_PASSTHROUGH.get(name, set())
        R.check(f"compose: {name} passes through only {sorted(allowed)}", passthrough == allowed, str(sorted(passthrough)))
        deps = {k: v.get("condition") for k, v in (svc.get("depends_on") or {}).items()}
        for dep, cond in [("postgres", "service_healthy"), ("nats", "service_healthy"), ("migrate", "service_completed_successfully")]:
            R.check(f"compose: {name} waits for {dep} ({cond})", deps.get(dep) == cond, str(deps))
        hc = svc.get("healthcheck") or {}
        R.check(f"compose: {name} healthcheck is `hx probe`", hc.get("test") == ["CMD", "hx", "probe"], str(hc.get("test")))
        token = [m for m in mounts if m.get("target") == TOKEN_DIR]
        R.check(f"compose: {name} mounts the fleet-token volume read-only at {TOKEN_DIR}",
                len(token) == 1 and token[0].get("source") == "fleet-token" and token[0].get("read_only"), str(token))
        R.check(f"compose: {name} waits for the fleet token", deps.get("fleet-token") == "service_completed_successfully", str(deps))
        if fleet_svc.get("local_index") or name == "gateway":
            src = data[0].get("source") if data else None
            R.check(f"compose: {name} keeps /data in its own named volume", data and data[0].get("type") == "volume"
                    and src in volumes, str(data))
        env_file = svc.get("env_file")
        if name in PROVIDER_CONSUMERS:
            R.check(f"compose: {name} reads provider keys from an optional .env",
                    env_file == [{"path": ".env", "required": False}], str(env_file))
        else:
            R.check(f"compose: {name} reads no .env file", env_file is None, str(env_file))
    R.check("compose: one image for every Helix container", len(images) == 1, str(images))
    R.check("compose: search waits for a healthy qdrant",
            (services.get("search", {}).get("depends_on") or {}).get("qdrant", {}).get("condition") == "service_healthy")
    gw_ports = [str(p) for p in services.get("gateway", {}).get("ports", [])]
    R.check("compose: the gateway is published on 9470", any(p.endswith(f":{FLEET['gateway_port']}:{FLEET['gateway_port']}")
                                                              or p == f"{FLEET['gateway_port']}:{FLEET['gateway_port']}" for p in gw_ports), str(gw_ports))
    maker = services.get("fleet-token") or {}
    script = " ".join(maker.get("command") or [])
    R.check("compose: fleet-token writes the token file once into its volume, then exits",
            maker.get("volumes") == ["fleet-token:/data"] and f"/data/{TOKEN_NAME}" in script and "test -s" in script
            and "umask 077" in script and str(maker.get("restart")) == "no", str(maker))
    R.check("compose: fleet-token runs the one image as its user", maker.get("image") in images and "user" not in maker)
    # the token volume is the one shared: written by fleet-token, read-only everywhere else
    named = [v.split(":")[0] for s in services.values() for v in s.get("volumes", []) if isinstance(v, str)] + [
        v.get("source") for s in services.values() for v in s.get("volumes", []) if isinstance(v, dict) and v.get("type") == "volume"]
    own = [v for v in named if v != "fleet-token"]
    R.check("compose: named volumes are declared, none shared but the fleet token",
            sorted(set(named)) == sorted(volumes) and len(set(own)) == len(own), f"{sorted(named)} vs {sorted(volumes)}")
    return {"services": len(services), "schema": schema_name, "schema_errors": len(errors)}


def dict_diff(have: dict, want: dict) -> str:
    parts = [f"-{k}" for k in want if k not in have] + [f"+{k}" for k in have if k not in want]
    parts += [f"{k}: {have[k]!r} != {want[k]!r}" for k in want if k in have and have[k] != want[k]]
    return ", ".join(parts)


# --- image and environment files -------------------------------------------------------------


def check_image_files() -> None:
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    lines = [l.strip() for l in re.sub(r"\\\n", " ", text).splitlines() if l.strip() and not l.strip().startswith("#")]
    froms = [l.split()[1] for l in lines if l.upper().startswith("FROM ")]
    builders = [f for f in froms[:-1] if not f.startswith("python:")]
    R.check("Dockerfile: builder on rust:*-bookworm, runtime on debian:bookworm-slim",
            all(f.startswith("rust:") and f.endswith("-bookworm") for f in builders) and froms[-1] == "debian:bookworm-slim", str(froms))
    R.check("Dockerfile: the embedding model is fetched by deploy/fetch_model.py and HELIX_MODEL_DIR points at it",
            any("fetch_model.py" in l and l.startswith("RUN ") for l in lines)
            and any(re.match(r"COPY --from=model /model (\S+)$", l) for l in lines)
            and any(re.search(r"HELIX_MODEL_DIR=(\S+)", l) for l in lines)
            and re.search(r"COPY --from=model /model (\S+)", text).group(1) == re.search(r"HELIX_MODEL_DIR=(\S+)", text).group(1))
    want = {
        "HEALTHCHECK": r'HEALTHCHECK .*CMD \["hx", ?"probe"\]',
        "ENTRYPOINT": r'ENTRYPOINT \["hx"\]',
        "USER 10001": r"USER 10001(:10001)?$",
        "VOLUME /data": r'VOLUME \[?"?/data"?\]?$',
        "ca-certificates": r"apt-get install .*ca-certificates",
        "uid 10001": r"useradd .*--uid 10001",
    }
    for name, pattern in want.items():
        R.check(f"Dockerfile: {name}", any(re.search(pattern, l) for l in lines))
    exposed = {p for l in lines if l.startswith("EXPOSE ") for p in l.split()[1:]}
    R.check("Dockerfile: EXPOSE 50051 9464 9470", {str(FLEET["grpc_port"]), str(FLEET["metrics_port"]), str(FLEET["gateway_port"])} <= exposed, str(exposed))
    builds = [l for l in lines if "cargo build --release" in l and "--bin hx" in l]
    R.check("Dockerfile: builds hx twice (dependency layer, then our crates)", len(builds) == 2, str(builds))
    members = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["members"]
    tops = sorted({m.split("/")[0] for m in members} | {"proto"})
    copied = {l.split()[1] for l in lines if l.startswith("COPY ") and not l.startswith("COPY --")}
    R.check("Dockerfile: copies every workspace member's directory and proto/", set(tops) <= copied,
            f"missing {sorted(set(tops) - copied)}")
    ignore = (ROOT / ".dockerignore").read_text().split()
    R.check(".dockerignore: leaves out target/, .git, .venv and .env", {"target", ".git", ".venv", ".env"} <= set(ignore), str(ignore))

    example = (ROOT / ".env.example").read_text()
    names = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", example, re.M))
    want_names = set(SEED_PROVIDER_KEYS) | set(SEED_HELIX_CONFIG) | {"HELIX_ADMIN_KEY", "OTEL_EXPORTER_OTLP_ENDPOINT"}
    R.check(".env.example lists every variable", want_names <= names, f"missing {sorted(want_names - names)}")


def check_skeleton() -> str:
    """deploy/skeleton.sh must yield a workspace with every member (the Dockerfile's
    dependency layer builds it); cargo reads manifests only, offline."""
    cargo = shutil.which("cargo")
    if not R.check("cargo is available for the skeleton check", cargo is not None):
        return "not run"
    def members(path: Path) -> list[str]:
        out = subprocess.run([cargo, "metadata", "--no-deps", "--offline", "--format-version", "1"],
                             cwd=path, capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(out.stderr.strip())
        return sorted(p["name"] for p in json.loads(out.stdout)["packages"])
    with tempfile.TemporaryDirectory() as tmp:
        run = subprocess.run(["sh", "deploy/skeleton.sh", tmp], cwd=ROOT, capture_output=True, text=True)
        if not R.check("deploy/skeleton.sh runs", run.returncode == 0, run.stderr):
            return "failed"
        try:
            real, skel = members(ROOT), members(Path(tmp))
        except RuntimeError as e:
            R.fail("cargo metadata on the skeleton", str(e))
            return "failed"
        stray = [p for p in Path(tmp).rglob("*.rs") if p.name not in ("lib.rs", "main.rs", "build.rs")]
        R.check("skeleton holds every workspace member", real == skel, f"{real} != {skel}")
        R.check("skeleton holds no source beyond target stubs and build scripts", not stray, str(stray[:5]))
        return f"{len(skel)} crates"


# --- main --------------------------------------------------------------------------------------------


def main() -> int:
    sm_schema, sm_source = servicemonitor_schema()
    print(f"deploy-check: Helm {helm.helm_sdk_version()} (helm-python-sdk {version('helm-python-sdk')}), "
          f"kubernetes-validate {version('kubernetes-validate')} strict, Kubernetes {', '.join(KUBE_VERSIONS)}")
    print(f"  ServiceMonitor schema: {sm_source if sm_schema else 'none offline: structure checked only'}")

    rows = [check_helm_value_set(name, spec, sm_schema) for name, spec in VALUE_SETS.items()]
    check_servicemonitor_gating()
    check_network_policy_gating()
    check_embedded_claim_gating()
    check_chart_lists()
    rejected, bad = check_values_schema()
    compose = check_compose()
    check_image_files()
    skeleton = check_skeleton()

    print()
    print(f"  {'value set':<18} {'mode':<9} {'manifests':>9} {'lint':>5} {'schema errors':>14}  kinds "
          f"(per Kubernetes version; lint findings and schema errors over all {len(KUBE_VERSIONS)})")
    for r in rows:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(r["kinds"].items()))
        print(f"  {r['set']:<18} {r['mode']:<9} {r['manifests']:>9} {r['lint']:>5} {r['schema_errors']:>14}  {kinds}")
    print("  (embedded: no values at all, `helm install helix helm/helix`)")
    print(f"  values.schema.json: {rejected}/{bad} invalid values files rejected by Helm and jsonschema; "
          f"no values and {len(list((CHART / 'ci').glob('*-values.yaml')))} value sets accepted")
    print(f"  docker-compose.yml: {compose['services']} services, schema errors = {compose['schema_errors']} "
          f"({compose['schema']}); commands and environment follow deploy/fleet.json")
    print(f"  Dockerfile dependency skeleton: {skeleton}")
    if R.failures:
        print(f"\nFAILED ({len(R.failures)}):")
        for f in R.failures:
            print(f"  - {f}")
    print(f"\ndeploy-check: {R.passed} passed, {len(R.failures)} failed")
    return 1 if R.failures else 0


if __name__ == "__main__":
    sys.exit(main())
