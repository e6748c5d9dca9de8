"""deploy/kubernetes: kustomize renders, the output is schema-valid and hardened as promised."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "kubernetes"
RULES_FILE = REPO / "deploy" / "prometheus" / "batchscope-rules.yml"

# The Kubernetes version whose bundled schemas the output is checked against (offline).
K8S_VERSION = "1.32"
MONITORING_API = "monitoring.coreos.com/v1"
CRD_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}

PORT = 9847
STATE_MOUNT = "/var/lib/batchscope"
CONFIG_MOUNT = "/etc/batchscope"
SECRETS_MOUNT = "/run/secrets/batchscope"
IMAGE = "ghcr.io/batchscope/batchscope:0.1.0"

Docs = list[dict[str, Any]]
Render = Callable[[Path], str]


def _combo(tmp: Path, components: list[str]) -> Path:
    """A throw-away kustomization: base plus the given components.

    kustomize refuses absolute paths, so they are relative to *tmp*.
    """
    rel = Path(os.path.relpath(K8S, tmp))
    (tmp / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [str(rel / "base")],
                "components": [str(rel / "components" / c) for c in components],
            }
        )
    )
    return tmp


# name -> (directory or component list, CRD kinds expected in the output)
VARIANTS: dict[str, tuple[str | list[str], set[str]]] = {
    "base": ("base", set()),
    "overlays/example": ("overlays/example", {"ServiceMonitor", "PrometheusRule"}),
    "overlays/podmonitor": ("overlays/podmonitor", {"PodMonitor", "PrometheusRule"}),
    "base+servicemonitor": (["servicemonitor"], {"ServiceMonitor"}),
    "base+podmonitor": (["podmonitor"], {"PodMonitor"}),
    "base+prometheusrule": (["prometheusrule"], {"PrometheusRule"}),
    "base+all": (["servicemonitor", "podmonitor", "prometheusrule"], CRD_KINDS),
}


@pytest.fixture(scope="module")
def rendered(kustomize: Render, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Docs]:
    """Every variant rendered once per module."""
    out: dict[str, Docs] = {}
    for name, (spec, _) in VARIANTS.items():
        if isinstance(spec, str):
            directory = K8S / spec
        else:
            directory = _combo(tmp_path_factory.mktemp("kustomize"), spec)
        out[name] = [d for d in yaml.safe_load_all(kustomize(directory)) if d]
    return out


def _kind(docs: Docs, kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def _only(docs: Docs, kind: str) -> dict[str, Any]:
    found = _kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def _container(docs: Docs) -> dict[str, Any]:
    containers = _only(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


# ------------------------------------------------------------------ rendering and schemas


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_renders_and_validates_against_kubernetes_schemas(
    variant: str, rendered: dict[str, Docs], kubernetes_validate: ModuleType
) -> None:
    """Every core object is valid (strict) for Kubernetes 1.32; CRD kinds are as expected."""
    docs = rendered[variant]
    crds = set()
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            assert doc["apiVersion"] == MONITORING_API
            crds.add(doc["kind"])
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message}")
    assert crds == VARIANTS[variant][1]
    kinds = {d["kind"] for d in docs}
    assert kinds >= {
        "Deployment",
        "Service",
        "PersistentVolumeClaim",
        "NetworkPolicy",
        "ServiceAccount",
        "ConfigMap",
        "Secret",
    }


def test_strict_validation_really_rejects_mistakes(
    rendered: dict[str, Docs], kubernetes_validate: ModuleType
) -> None:
    """Sanity check of the validator: a misspelt field in the Deployment is rejected."""
    deployment = yaml.safe_load(yaml.safe_dump(_only(rendered["base"], "Deployment")))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


# ------------------------------------------------------------------ the Deployment


@pytest.mark.parametrize("variant", ["base", "overlays/example", "overlays/podmonitor"])
def test_deployment_single_replica_recreate(variant: str, rendered: dict[str, Docs]) -> None:
    """One replica with the Recreate strategy: two pods would double-count transitions."""
    spec = _only(rendered[variant], "Deployment")["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}


def test_deployment_image_args_port_env(rendered: dict[str, Docs]) -> None:
    """Placeholder image, `run --config`, named port http/9847, Python env, secrets dir."""
    container = _container(rendered["base"])
    assert container["image"] == IMAGE
    assert container["args"] == ["run", "--config", f"{CONFIG_MOUNT}/batchscope.toml"]
    assert container["ports"] == [{"name": "http", "containerPort": PORT, "protocol": "TCP"}]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env == {
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "BATCHSCOPE_SECRETS_DIR": SECRETS_MOUNT,
    }


def test_deployment_probes(rendered: dict[str, Docs]) -> None:
    """Liveness and startup on /healthz, readiness on /readyz, all on the named port."""
    container = _container(rendered["base"])
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60


@pytest.mark.parametrize("variant", ["base", "overlays/example"])
def test_deployment_security_context_is_restricted(variant: str, rendered: dict[str, Docs]) -> None:
    """Pod and container security contexts meet the "restricted" Pod Security Standard."""
    pod = _only(rendered[variant], "Deployment")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == "batchscope"
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True
    assert psc["runAsUser"] == 10001
    assert psc["runAsGroup"] == 10001
    assert psc["fsGroup"] == 10001
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "hostNetwork" not in pod
    assert "hostPID" not in pod
    csc = _container(rendered[variant])["securityContext"]
    assert csc["allowPrivilegeEscalation"] is False
    assert csc["readOnlyRootFilesystem"] is True
    assert csc["runAsNonRoot"] is True
    assert csc["capabilities"] == {"drop": ["ALL"]}
    assert csc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert csc.get("privileged", False) is False


def test_deployment_resources(rendered: dict[str, Docs]) -> None:
    """Requests 50m/96Mi, limits 500m/256Mi."""
    resources = _container(rendered["base"])["resources"]
    assert resources == {
        "requests": {"cpu": "50m", "memory": "96Mi"},
        "limits": {"cpu": "500m", "memory": "256Mi"},
    }


@pytest.mark.parametrize("variant", ["base", "overlays/example"])
def test_deployment_volumes(variant: str, rendered: dict[str, Docs]) -> None:
    """State PVC, /tmp emptyDir, config from the generated ConfigMap, Secret read-only."""
    docs = rendered[variant]
    pod = _only(docs, "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in _container(docs)["volumeMounts"]}
    assert set(mounts) == {STATE_MOUNT, "/tmp", CONFIG_MOUNT, SECRETS_MOUNT}

    state = volumes[mounts[STATE_MOUNT]["name"]]
    assert state["persistentVolumeClaim"]["claimName"] == "batchscope-state"
    assert not mounts[STATE_MOUNT].get("readOnly", False)
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]

    config = volumes[mounts[CONFIG_MOUNT]["name"]]
    assert mounts[CONFIG_MOUNT]["readOnly"] is True
    assert config["configMap"]["name"] == _only(docs, "ConfigMap")["metadata"]["name"]

    secret = volumes[mounts[SECRETS_MOUNT]["name"]]
    assert mounts[SECRETS_MOUNT]["readOnly"] is True
    assert secret["secret"]["secretName"] == _only(docs, "Secret")["metadata"]["name"]
    assert secret["secret"]["defaultMode"] == 0o440


def test_generated_names_are_hashed(rendered: dict[str, Docs]) -> None:
    """ConfigMap and Secret come from generators (hash suffix: a change rolls the pod)."""
    docs = rendered["base"]
    assert _only(docs, "ConfigMap")["metadata"]["name"].startswith("batchscope-config-")
    assert _only(docs, "Secret")["metadata"]["name"].startswith("batchscope-secrets-")


# ------------------------------------------------------------------ the other objects


def test_pvc(rendered: dict[str, Docs]) -> None:
    """batchscope-state: 1Gi, ReadWriteOnce."""
    pvc = _only(rendered["base"], "PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == "batchscope-state"
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert pvc["spec"]["resources"]["requests"]["storage"] == "1Gi"


def test_service_selects_the_pod_by_named_port(rendered: dict[str, Docs]) -> None:
    """The Service's port is named http and targets the container port by name."""
    docs = rendered["base"]
    service = _only(docs, "Service")
    assert service["spec"]["ports"] == [
        {"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"}
    ]
    pod_labels = _only(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_service_account_has_no_token(rendered: dict[str, Docs]) -> None:
    """The ServiceAccount does not mount an API token (the daemon never uses the API)."""
    assert _only(rendered["base"], "ServiceAccount")["automountServiceAccountToken"] is False


def test_network_policy(rendered: dict[str, Docs]) -> None:
    """Ingress only to 9847; egress only DNS and TCP 443/8080."""
    docs = rendered["base"]
    policy = _only(docs, "NetworkPolicy")["spec"]
    pod_labels = _only(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    ingress_ports = [p for rule in policy["ingress"] for p in rule["ports"]]
    assert ingress_ports == [{"protocol": "TCP", "port": PORT}]
    egress = {(p["protocol"], p["port"]) for rule in policy["egress"] for p in rule["ports"]}
    assert egress == {("UDP", 53), ("TCP", 53), ("TCP", 443), ("TCP", 8080)}


def _secret_files(docs: Docs) -> dict[str, str]:
    data = _only(docs, "Secret")["data"]
    return {k: base64.b64decode(v).decode() for k, v in data.items()}


@pytest.mark.parametrize("variant", ["base", "overlays/example"])
def test_secrets_are_placeholders_only(variant: str, rendered: dict[str, Docs]) -> None:
    """The example Secrets contain placeholders, never anything that looks like a key."""
    files = _secret_files(rendered[variant])
    assert files
    for name, value in files.items():
        assert value.startswith("REPLACE_ME"), name


def test_base_leaves_the_write_api_disabled(rendered: dict[str, Docs]) -> None:
    """The base has no http.api_token placeholder: a known token would open the write API."""
    assert "http.api_token" not in _secret_files(rendered["base"])
    config = tomllib.loads(_only(rendered["base"], "ConfigMap")["data"]["batchscope.toml"])
    assert "api_token" not in config.get("http", {})


@pytest.mark.parametrize("variant", ["base", "overlays/example"])
def test_config_matches_the_deployment(variant: str, rendered: dict[str, Docs]) -> None:
    """batchscope.toml keeps state on the PVC, listens on 9847, and holds no secrets."""
    text = _only(rendered[variant], "ConfigMap")["data"]["batchscope.toml"]
    config = tomllib.loads(text)
    assert config["state_path"].startswith(STATE_MOUNT + "/")
    assert config["http"]["port"] == PORT
    assert config["http"]["host"] == "0.0.0.0"

    def keys(node: Any) -> set[str]:
        if isinstance(node, dict):
            return set(node) | {k for v in node.values() for k in keys(v)}
        if isinstance(node, list):
            return {k for v in node for k in keys(v)}
        return set()

    secret_keys = {"password", "bearer_token", "api_key", "app_key", "api_token"}
    assert keys(config).isdisjoint(secret_keys)
    # every secret file names a configured target (the daemon rejects strays)
    targets = {
        "engines": {t["name"] for t in config.get("engines", [])},
        "datadog": {t["name"] for t in config.get("datadog", [])},
    }
    for name in _secret_files(rendered[variant]):
        section, _, rest = name.partition(".")
        if section in targets:
            assert rest.rpartition(".")[0] in targets[section], name


@pytest.mark.parametrize("variant", ["base", "overlays/example", "overlays/podmonitor"])
def test_config_and_secrets_pass_the_daemons_check_config(
    variant: str, rendered: dict[str, Docs], tmp_path: Path
) -> None:
    """`batchscope check-config` accepts the rendered ConfigMap + Secret, secrets redacted."""
    docs = rendered[variant]
    config = tmp_path / "batchscope.toml"
    config.write_text(_only(docs, "ConfigMap")["data"]["batchscope.toml"])
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    files = _secret_files(docs)
    for name, value in files.items():
        (secrets / name).write_text(value)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BATCHSCOPE_", "DD_")) and k not in ("CREDENTIALS_DIRECTORY",)
    }
    env["BATCHSCOPE_SECRETS_DIR"] = str(secrets)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO / "daemon"), os.environ.get("PYTHONPATH")) if p
    )
    result = subprocess.run(
        [sys.executable, "-m", "batchscope", "check-config", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "REPLACE_ME" not in result.stdout + result.stderr


# ------------------------------------------------------------------ prometheus-operator CRDs


def test_servicemonitor(rendered: dict[str, Docs]) -> None:
    """The ServiceMonitor selects the Service and scrapes its named port http at /metrics."""
    docs = rendered["overlays/example"]
    monitor = _only(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == MONITORING_API
    assert monitor["metadata"]["name"]
    service = _only(docs, "Service")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    endpoints = monitor["spec"]["endpoints"]
    assert len(endpoints) == 1
    endpoint = endpoints[0]
    assert endpoint["port"] == "http"  # a string: the operator rejects numbers
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    assert endpoint["interval"] == "15s"


def test_podmonitor(rendered: dict[str, Docs]) -> None:
    """The PodMonitor selects the pod and scrapes its named container port http."""
    docs = rendered["overlays/podmonitor"]
    monitor = _only(docs, "PodMonitor")
    assert monitor["apiVersion"] == MONITORING_API
    pod_labels = _only(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    endpoint = monitor["spec"]["podMetricsEndpoints"][0]
    assert endpoint["port"] == "http"
    assert endpoint["port"] in {p["name"] for p in _container(docs)["ports"]}
    assert endpoint["path"] == "/metrics"


@pytest.mark.parametrize("variant", ["overlays/example", "base+prometheusrule"])
def test_prometheusrule_carries_the_plain_rules(variant: str, rendered: dict[str, Docs]) -> None:
    """The PrometheusRule's groups equal deploy/prometheus/batchscope-rules.yml's groups."""
    rule = _only(rendered[variant], "PrometheusRule")
    assert rule["apiVersion"] == MONITORING_API
    assert rule["metadata"]["name"]
    groups = rule["spec"]["groups"]
    assert groups == yaml.safe_load(RULES_FILE.read_text())["groups"]
    for group in groups:
        assert group["name"]
        for item in group["rules"]:
            assert ("alert" in item) != ("record" in item)
            assert item["expr"]


def test_example_overlay_labels_for_kube_prometheus_stack(rendered: dict[str, Docs]) -> None:
    """The example overlay labels monitors/rules with `release` and namespaces everything."""
    docs = rendered["overlays/example"]
    for kind in ("ServiceMonitor", "PrometheusRule"):
        assert _only(docs, kind)["metadata"]["labels"]["release"] == "prometheus"
    namespace = _only(docs, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == namespace["metadata"]["name"], doc["kind"]


def test_prometheusrule_component_is_regenerated() -> None:
    """The component file is exactly what render_prometheusrule.py produces from the rules."""
    script = REPO / "deploy" / "prometheus" / "render_prometheusrule.py"
    result = subprocess.run(
        [sys.executable, str(script), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
