"""The Helm chart, rendered by real Helm (helm-python-sdk, Helm's Go SDK).

No cluster runs here, so every rendered object is checked the way an API
server would check it: built-in kinds against the Kubernetes schemas that
kubernetes-validate ships (strict: unknown fields fail), custom resources
against the schemas in tests/data/crds/ (see its README), pods against the
Pod Security Standards "restricted" rules, the shadowd config against
shadowd's own parser, Ray Serve's config against Ray Serve's schema and the
PrometheusRule against promtool.
"""

from __future__ import annotations

import copy
import importlib
import json
import re
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import referencing
import yaml

from shadowd.config import parse_config
from shadowd.errors import ConfigError
from tests.fixtures.k8s import K8S_VERSION, k8s_definitions

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "shadowd"
CRDS = ROOT / "tests" / "data" / "crds"
RELEASE = "shadow"
NAMESPACE = "ml"

KAFKA_CONFIG = {
    "type": "kafka",
    "bootstrap_servers": ["kafka-0.kafka:9093"],
    "security_protocol": "SASL_SSL",
    "sasl_mechanism": "SCRAM-SHA-512",
}
SECRETS = {
    "config": {"annotations": {"sink": KAFKA_CONFIG}},
    "kafka": {
        "sasl": {"existingSecret": "kafka-user", "usernameKey": "user", "passwordKey": "pass"},
        "tls": {"existingSecret": "kafka-ca", "caKey": "ca.pem"},
    },
    "grafana": {"token": {"existingSecret": "grafana-api", "key": "token"}},
}
# Every install names the API tokens Secret (the chart refuses to render without it).
REQUIRED = {"auth": {"existingSecret": "shadowd-api-tokens"}}
MONITORING = {
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "kps"}}, "prometheusRule": {"enabled": True}}
}

# Every switch of values.yaml, in both modes where it matters.
SWITCHES: dict[str, dict[str, Any]] = {
    "default": {},
    "deployment": {"mode": "deployment"},
    "autoscaling": {"rayService": {"enableInTreeAutoscaling": True, "upgradeStrategy": "None"}},
    "monitoring": MONITORING,
    "monitoring-deployment": {"mode": "deployment", **MONITORING},
    "no-persistence": {"persistence": {"enabled": False}},
    "existing-claims": {"persistence": {"existingClaim": "shadowd-data"}, "models": {"existingClaim": "models"}},
    "secrets": SECRETS,
    "secrets-deployment": {"mode": "deployment", **SECRETS},
    "config-secret": {"existingConfigSecret": "shadowd-config", "kafka": SECRETS["kafka"]},
    "minimal": {
        # The chart must overrule ports, hosts and data_dir that disagree with its pods.
        "config": {"data_dir": "/somewhere", "metrics": {"port": 9200}, "serving": {"port": 8081, "host": "127.0.0.1"}},
        "grafana": {"dashboards": {"enabled": False}},
        "serviceAccount": {"create": False},
        "imagePullSecrets": [{"name": "registry"}],
        "extraEnv": [{"name": "RAY_LOG_TO_STDERR", "value": "1"}],
        "nodeSelector": {"pool": "cpu"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
    },
}


# --- rendering --------------------------------------------------------------


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as c:
        yield c


def render(chart: helm.Chart, values: dict[str, Any] | None = None, release: str = RELEASE) -> list[dict[str, Any]]:
    out = chart.render(_merge(REQUIRED, values or {}), name=release, namespace=NAMESPACE, is_install=True)
    docs = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in by_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


@pytest.fixture(scope="module", params=sorted(SWITCHES), ids=sorted(SWITCHES))
def rendered(request, chart) -> tuple[str, dict[str, Any], list[dict[str, Any]]]:
    values = _merge(REQUIRED, SWITCHES[request.param])
    return request.param, chart.merge_values(values), render(chart, values)


# --- schemas for custom resources ------------------------------------------


@pytest.fixture(scope="module")
def crd_validators() -> dict[tuple[str, str], jsonschema.Draft202012Validator]:
    registry = k8s_definitions() @ referencing.Registry()
    out = {}
    for path in CRDS.glob("*.json"):
        schema = json.loads(path.read_text())
        api, kind = schema["properties"]["apiVersion"]["const"], schema["properties"]["kind"]["const"]
        out[(api, kind)] = jsonschema.Draft202012Validator(schema, registry=registry)
    return out


def validate_object(doc: dict[str, Any], crd_validators) -> None:
    key = (doc["apiVersion"], doc["kind"])
    if key in crd_validators:
        errors = sorted(crd_validators[key].iter_errors(doc), key=lambda e: list(e.absolute_path))
        assert not errors, "\n".join(
            f"{doc['kind']}: {'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors
        )
    else:
        # Raises SchemaNotFoundError for a kind it does not know: no object goes unchecked.
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


# --- pods ---------------------------------------------------------------------


def pod_specs(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(where, pod template metadata, pod spec) of every pod the release will run."""
    pods = []
    for d in by_kind(docs, "Deployment"):
        pods.append(
            (f"Deployment/{d['metadata']['name']}", d["spec"]["template"]["metadata"], d["spec"]["template"]["spec"])
        )
    for d in by_kind(docs, "RayService"):
        cluster = d["spec"]["rayClusterConfig"]
        head = cluster["headGroupSpec"]["template"]
        pods.append((f"RayService/{d['metadata']['name']}/head", head["metadata"], head["spec"]))
        for group in cluster.get("workerGroupSpecs", []):
            t = group["template"]
            pods.append((f"RayService/{d['metadata']['name']}/{group['groupName']}", t["metadata"], t["spec"]))
    return pods


_RESTRICTED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
_SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}
_SELINUX_TYPES = {None, "", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}


def restricted_violations(spec: dict[str, Any], extra_containers: Sequence[dict[str, Any]] = ()) -> list[str]:
    """Pod Security Standards "restricted" (which includes "baseline"), as the
    Kubernetes docs list the rules; returns one line per violation."""
    bad = []
    psc = spec.get("securityContext") or {}
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            bad.append(f"{key} is set")
    for vol in spec.get("volumes", []):
        kinds = set(vol) - {"name"}
        if not kinds <= _RESTRICTED_VOLUME_TYPES:
            bad.append(f"volume {vol['name']}: type {sorted(kinds - _RESTRICTED_VOLUME_TYPES)} not allowed")
    for sysctl in psc.get("sysctls", []):
        if sysctl["name"] not in _SAFE_SYSCTLS:
            bad.append(f"sysctl {sysctl['name']} not allowed")
    if (psc.get("seLinuxOptions") or {}).get("type") not in _SELINUX_TYPES:
        bad.append("pod seLinuxOptions.type not allowed")
    if (psc.get("appArmorProfile") or {}).get("type") == "Unconfined":
        bad.append("pod appArmorProfile Unconfined")
    if psc.get("runAsUser") == 0:
        bad.append("pod runAsUser 0")
    if (psc.get("windowsOptions") or {}).get("hostProcess"):
        bad.append("pod hostProcess")
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    if pod_seccomp == "Unconfined":
        bad.append("pod seccompProfile Unconfined")
    containers = (
        spec.get("containers", [])
        + spec.get("initContainers", [])
        + spec.get("ephemeralContainers", [])
        + list(extra_containers)
    )
    for c in containers:
        name = c.get("name", "<autoscaler>")
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            bad.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            bad.append(f"{name}: allowPrivilegeEscalation must be false")
        if sc.get("runAsNonRoot") is False or not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
            bad.append(f"{name}: runAsNonRoot must be true (pod or container)")
        if sc.get("runAsUser") == 0:
            bad.append(f"{name}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type") or pod_seccomp
        if seccomp not in ("RuntimeDefault", "Localhost"):
            bad.append(f"{name}: seccompProfile must be RuntimeDefault or Localhost, got {seccomp}")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            bad.append(f"{name}: capabilities must drop ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            bad.append(f"{name}: capabilities add {caps['add']}")
        if sc.get("procMount", "Default") != "Default":
            bad.append(f"{name}: procMount {sc['procMount']}")
        if (sc.get("seLinuxOptions") or {}).get("type") not in _SELINUX_TYPES:
            bad.append(f"{name}: seLinuxOptions.type not allowed")
        if (sc.get("appArmorProfile") or {}).get("type") == "Unconfined":
            bad.append(f"{name}: appArmorProfile Unconfined")
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            bad.append(f"{name}: hostProcess")
        for port in c.get("ports", []):
            if port.get("hostPort"):
                bad.append(f"{name}: hostPort {port['hostPort']}")
    return bad


def _autoscaler(docs) -> list[dict[str, Any]]:
    out = []
    for d in by_kind(docs, "RayService"):
        opts = d["spec"]["rayClusterConfig"].get("autoscalerOptions")
        if d["spec"]["rayClusterConfig"].get("enableInTreeAutoscaling"):
            assert opts and opts.get("securityContext"), (
                "KubeRay injects an autoscaler sidecar; it needs a securityContext"
            )
            out.append(opts)
    return out


# The API server parses quantities with this grammar; the JSON schemas only say "string or number".
_QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?(\d+(\.\d*)?|\.\d+)))?$")


def quantities(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every resource quantity in a rendered object: requests/limits, storage, sizeLimit."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k in ("requests", "limits") and isinstance(v, dict):
                yield from ((f"{path}.{k}.{r}", q) for r, q in v.items())
            elif k == "sizeLimit":
                yield f"{path}.{k}", v
            else:
                yield from quantities(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from quantities(v, f"{path}[{i}]")


# --- tests: lint and schemas ------------------------------------------------


@pytest.mark.parametrize("switch", sorted(SWITCHES))
def test_helm_lint_is_clean(switch):
    values = _merge(REQUIRED, SWITCHES[switch])
    report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE, kube_version=f"v{K8S_VERSION}.0")
    findings = [m for m in report["messages"] if m["severity"] >= 2]  # 1 = info ("icon is recommended")
    assert report["errors"] == [] and findings == [], (report["errors"], findings)


def test_every_object_validates_against_its_schema(rendered, crd_validators):
    switch, values, docs = rendered
    workload = {"rayservice": "RayService", "deployment": "Deployment"}
    assert [d["kind"] for d in docs if d["kind"] in workload.values()] == [workload[values["mode"]]], switch
    for doc in docs:
        validate_object(doc, crd_validators)
        for where, q in quantities(doc):
            assert isinstance(q, (int, float)) or _QUANTITY.match(q), f"{doc['kind']}{where}: {q!r} is not a quantity"


def test_crd_schemas_reject_what_the_api_server_would(crd_validators, chart):
    """The vendored-by-hand CRD schemas must catch real mistakes, or the test above proves nothing."""
    docs = render(chart, MONITORING)
    rs, sm, rule = one(docs, "RayService"), one(docs, "ServiceMonitor"), one(docs, "PrometheusRule")
    cases = []
    bad = copy.deepcopy(rs)
    bad["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 2  # must be a string
    cases.append(bad)
    bad = copy.deepcopy(rs)
    bad["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replicas"] = "2"
    cases.append(bad)
    bad = copy.deepcopy(rs)
    bad["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = 3
    cases.append(bad)
    bad = copy.deepcopy(rs)
    bad["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replica"] = 2  # typo
    cases.append(bad)
    bad = copy.deepcopy(sm)
    bad["spec"]["endpoints"][0]["interval"] = "30 seconds"
    cases.append(bad)
    bad = copy.deepcopy(rule)
    bad["spec"]["groups"][0]["rules"][0].pop("alert")  # neither alert nor record
    cases.append(bad)
    for doc in cases:
        with pytest.raises(AssertionError):
            validate_object(doc, crd_validators)


def test_rendered_pods_meet_the_restricted_profile(rendered):
    switch, _values, docs = rendered
    pods = pod_specs(docs)
    assert pods, f"{switch}: no pods rendered"
    for where, _meta, spec in pods:
        assert restricted_violations(spec, _autoscaler(docs) if "head" in where else []) == [], where


def test_restricted_check_catches_violations(chart):
    """The checker itself: each breach of the profile must be reported."""
    _, _, spec = pod_specs(render(chart, {"mode": "deployment"}))[0]
    assert restricted_violations(spec) == []
    breaches = [
        lambda s: s.__setitem__("hostNetwork", True),
        lambda s: s["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
        lambda s: s["containers"][0]["securityContext"].__setitem__("allowPrivilegeEscalation", True),
        lambda s: s["containers"][0]["securityContext"].__setitem__("privileged", True),
        lambda s: s["containers"][0]["securityContext"]["capabilities"].__setitem__("drop", ["NET_RAW"]),
        lambda s: s["containers"][0]["securityContext"]["capabilities"].__setitem__("add", ["SYS_ADMIN"]),
        lambda s: (
            s["securityContext"].pop("seccompProfile"),
            s["containers"][0]["securityContext"].pop("seccompProfile"),
        ),
        lambda s: s["containers"][0]["securityContext"].__setitem__("runAsNonRoot", False),
        lambda s: s["containers"][0]["ports"][0].__setitem__("hostPort", 8000),
    ]
    for breach in breaches:
        broken = copy.deepcopy(spec)
        breach(broken)
        assert restricted_violations(broken), breach


def test_only_the_autoscaling_head_gets_an_api_token(rendered):
    _, values, docs = rendered
    for where, _, spec in pod_specs(docs):
        wanted = where.endswith("/head") and values["rayService"]["enableInTreeAutoscaling"]
        assert spec["automountServiceAccountToken"] is wanted, where
        assert spec["serviceAccountName"] == (f"{RELEASE}-shadowd" if values["serviceAccount"]["create"] else "default")


def test_pods_write_only_to_their_volumes_and_have_probes_and_resources(rendered):
    _, values, docs = rendered
    writable = {"/tmp", "/dev/shm", values["persistence"]["mountPath"]}
    for where, _, spec in pod_specs(docs):
        volumes = {v["name"]: v for v in spec["volumes"]}
        for c in spec["containers"]:
            assert c["securityContext"]["readOnlyRootFilesystem"] is True, where
            for m in c["volumeMounts"]:
                assert m["name"] in volumes, f"{where}: mount {m['name']} has no volume"
                if not m.get("readOnly"):
                    assert m["mountPath"] in writable, f"{where}: {m['mountPath']} is writable"
            assert {"/tmp", "/dev/shm", values["persistence"]["mountPath"]} <= {
                m["mountPath"] for m in c["volumeMounts"]
            }
            assert c["livenessProbe"] and c["readinessProbe"], where
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                port = c.get(probe, {}).get("httpGet", {}).get("port")
                if isinstance(port, str):
                    assert port in {p["name"] for p in c["ports"]}, f"{where}: {probe} names unknown port {port}"
            assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"], where
            assert c["resources"]["limits"]["memory"], where
            assert not any(
                k in e for e in c.get("env", []) for k in ("value",) if "PASSWORD" in e["name"] or "TOKEN" in e["name"]
            )


# --- tests: what the pods read ------------------------------------------------


def _config_text(docs) -> str:
    return one(docs, "ConfigMap", f"{RELEASE}-shadowd-config")["data"]["config.yaml"]


def _volume_paths(spec, volume: str, container: dict[str, Any]) -> str:
    return next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == volume)


def test_config_map_holds_a_config_shadowd_accepts(rendered):
    _switch, values, docs = rendered
    if values["existingConfigSecret"]:
        assert not [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-config")]
        for _, _, spec in pod_specs(docs):
            vol = next(v for v in spec["volumes"] if v["name"] == "config")
            assert vol["secret"]["secretName"] == values["existingConfigSecret"]
        return
    cfg = parse_config(yaml.safe_load(_config_text(docs)), "configmap config.yaml")
    assert str(cfg.data_dir) == values["persistence"]["mountPath"]
    assert (cfg.serving.host, cfg.serving.port, cfg.metrics.host, cfg.metrics.port) == (
        "0.0.0.0",
        8000,
        "0.0.0.0",
        9100,
    )
    assert cfg.models.production.name == values["config"]["models"]["production"]["name"]
    for where, _, spec in pod_specs(docs):
        c = spec["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports["metrics"] == cfg.metrics.port and cfg.serving.port in ports.values(), where
        assert _volume_paths(spec, "data", c) == str(cfg.data_dir), where
        assert _volume_paths(spec, "config", c) == "/etc/shadowd", where
    if values.get("mode") == "rayservice":
        # The hub (state) needs a resource only the head, which mounts the data volume, advertises.
        rs = one(docs, "RayService")
        head = json.loads(json.loads(rs["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]["resources"]))
        need = cfg.serving.hub_resources
        assert need and all(head.get(k, 0) >= v for k, v in need.items())
        for group in rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
            assert "shadowd_state" not in group.get("rayStartParams", {}).get("resources", "")
    else:
        assert cfg.serving.hub_resources == {}


def test_large_numbers_survive_helm(chart):
    """Helm's values pass through JSON floats; 1e+06 would not parse as an int in shadowd."""
    values = {"config": {"serving": {"max_body_bytes": 20_000_000}, "shadow": {"max_in_flight": 1_000_000}}}
    cfg = parse_config(yaml.safe_load(_config_text(render(chart, values))), "configmap")
    assert (cfg.serving.max_body_bytes, cfg.shadow.max_in_flight) == (20_000_000, 1_000_000)


@pytest.mark.parametrize("mode", ["rayservice", "deployment"])
def test_secrets_arrive_by_reference_under_the_names_the_config_uses(chart, mode):
    docs = render(chart, {"mode": mode, **SECRETS})
    assert by_kind(docs, "Secret") == []  # existing Secrets only: the chart never holds a credential
    kafka = parse_config(yaml.safe_load(_config_text(docs)), "configmap").annotations.sink
    for where, _, spec in pod_specs(docs):
        c = spec["containers"][0]
        env = {e["name"]: e.get("valueFrom", {}).get("secretKeyRef") for e in c["env"]}
        assert env[kafka.sasl_username_env] == {"name": "kafka-user", "key": "user"}, where
        assert env[kafka.sasl_password_env] == {"name": "kafka-user", "key": "pass"}, where
        assert env["GRAFANA_TOKEN"] == {"name": "grafana-api", "key": "token"}, where
        tls = next(v for v in spec["volumes"] if v["name"] == "kafka-tls")["secret"]
        assert tls["secretName"] == "kafka-ca"
        mount = _volume_paths(spec, "kafka-tls", c)
        assert str(kafka.ssl_cafile) == f"{mount}/{tls['items'][0]['path']}", where


@pytest.mark.parametrize("mode", ["rayservice", "deployment"])
def test_remote_model_credentials_come_from_a_secret_through_extra_env(chart, mode):
    """deploy/README.md's recipe: a remote model's header from an existing Secret, by reference, in every pod
    that runs a replica; the config names the variable and holds no credential."""
    # path: null drops the default torchscript candidate's file: Helm merges values over the defaults
    remote = {"name": "digits", "kind": "http", "url": "http://digits.models.svc:8080", "path": None}
    values = {
        "mode": mode,
        "config": {"models": {"candidate": {**remote, "headers_env": {"Authorization": "DIGITS_AUTH"}}}},
        "extraEnv": [{"name": "DIGITS_AUTH", "valueFrom": {"secretKeyRef": {"name": "digits-auth", "key": "header"}}}],
    }
    docs = render(chart, values)
    assert by_kind(docs, "Secret") == []
    cfg = parse_config(yaml.safe_load(_config_text(docs)), "configmap")
    assert cfg.models.candidate is not None and cfg.models.candidate.headers_env == {"Authorization": "DIGITS_AUTH"}
    specs = pod_specs(docs)
    assert len(specs) == (2 if mode == "rayservice" else 1)  # Ray head and workers, or the one pod
    for where, _, spec in specs:
        env = {e["name"]: e.get("valueFrom", {}).get("secretKeyRef") for e in spec["containers"][0]["env"]}
        assert env["DIGITS_AUTH"] == {"name": "digits-auth", "key": "header"}, where


def test_promotion_rollback_and_finish_are_values_changes(chart):
    """deploy/README.md's GitOps table: each operation is a change of config.models that renders to the
    lineup the runtime command would make."""
    from shadowd.serving.lineup import apply_change, parse_change

    base = parse_config(yaml.safe_load(_config_text(render(chart, {}))), "configmap").models
    assert base.candidate is not None
    steps = {
        "promote": ({"live": "candidate"}, {"action": "promote", "candidate": base.candidate.name}),
        "rollback": ({"live": "production"}, {"action": "rollback"}),
        "finish": (
            {"live": "production", "production": base.candidate.model_dump(mode="json"), "candidate": None},
            {"action": "finish"},
        ),
    }
    promoted = apply_change(base, parse_change(steps["promote"][1]))
    for name, (models, change) in steps.items():
        docs = render(chart, {"config": {"models": models}})
        cfg = parse_config(yaml.safe_load(_config_text(docs)), f"configmap after {name}")
        before = base if name == "promote" else promoted
        assert cfg.models == apply_change(before, parse_change(change)), name
    docs = render(chart, {"config": {"models": {"candidate": None, "live": "candidate"}}})
    with pytest.raises(ConfigError, match=r"live is 'candidate' \(a promotion\) but no candidate is configured"):
        parse_config(yaml.safe_load(_config_text(docs)), "configmap")


@pytest.mark.parametrize("mode", ["rayservice", "deployment"])
def test_api_tokens_come_from_the_auth_secret_which_is_required(chart, mode):
    with pytest.raises(helm.HelmRenderError, match=r"auth\.existingSecret is required"):
        chart.render({"mode": mode}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs = render(chart, {"mode": mode, "config": {"auth": {"predict_requires_token": True}}})
    cfg = parse_config(yaml.safe_load(_config_text(docs)), "configmap")
    assert cfg.auth.predict_requires_token  # the chart adds tokens_file, keeps the rest of config.auth
    for where, _, spec in pod_specs(docs):
        c = spec["containers"][0]
        vol = next(v for v in spec["volumes"] if v["name"] == "auth-tokens")["secret"]
        assert vol["secretName"] == "shadowd-api-tokens" and vol["defaultMode"] == 0o440, where
        mount = next(m for m in c["volumeMounts"] if m["name"] == "auth-tokens")
        assert mount["readOnly"] and str(cfg.auth.tokens_file) == f"{mount['mountPath']}/{vol['items'][0]['path']}"


def test_kafka_secret_without_kafka_config_fails_clearly(chart):
    with pytest.raises(helm.HelmRenderError, match=r"config\.annotations\.sink is not type kafka"):
        render(chart, {"kafka": {"sasl": {"existingSecret": "kafka-user"}}})


def test_serve_config_is_valid_for_ray_serve_and_uses_the_app_builder(rendered):
    from ray.serve.schema import ServeDeploySchema

    _, _values, docs = rendered
    for rs in by_kind(docs, "RayService"):
        serve = ServeDeploySchema.model_validate(yaml.safe_load(rs["spec"]["serveConfigV2"]))
        (app,) = serve.applications
        module, _, attr = app.import_path.partition(":")
        assert callable(getattr(importlib.import_module(module), attr))
        assert (module, attr) == ("shadowd.app", "app_builder")
        head = rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
        config_dir = _volume_paths(head, "config", head["containers"][0])
        assert app.args == {"config_path": f"{config_dir}/config.yaml"}
        assert serve.http_options.port == 8000 and serve.http_options.host == "0.0.0.0"
        assert rs["spec"]["rayClusterConfig"]["rayVersion"] == importlib.import_module("ray").__version__


def test_serve_config_is_the_one_in_deploy(chart):
    """One Serve config for `serve deploy` and the RayService."""
    rs = one(render(chart, {}), "RayService")
    assert yaml.safe_load(rs["spec"]["serveConfigV2"]) == yaml.safe_load(
        (ROOT / "deploy/serve/serve-config.yaml").read_text()
    )


def test_deployment_runs_shadowd_with_the_mounted_config(chart):
    docs = render(chart, {"mode": "deployment"})
    assert by_kind(docs, "RayService") == []
    spec = one(docs, "Deployment")["spec"]["template"]["spec"]
    c = spec["containers"][0]
    assert c["args"] == ["run", "-c", f"{_volume_paths(spec, 'config', c)}/config.yaml"]
    assert "command" not in c  # the image's ENTRYPOINT is `shadowd`


def test_worker_replica_bounds_are_checked(chart):
    with pytest.raises(helm.HelmRenderError, match="minReplicas <= replicas <= maxReplicas"):
        render(chart, {"rayService": {"workers": {"replicas": 5, "maxReplicas": 4}}})
    rs = one(
        render(chart, {"rayService": {"workers": {"replicas": 3, "minReplicas": 2, "maxReplicas": 8}}}), "RayService"
    )
    group = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    assert (group["minReplicas"], group["replicas"], group["maxReplicas"]) == (2, 3, 8)


def test_long_release_names_fit_kuberay(chart, crd_validators):
    docs = render(chart, {}, release="a-very-long-release-name-for-a-shadow-test-of-models")
    rs = one(docs, "RayService")
    assert len(rs["metadata"]["name"]) <= 47
    validate_object(rs, crd_validators)


# --- tests: who may reach the pods, probes, disruptions -------------------------

_OPEN_PORTS = {8000, 9100, 8080, 8265}  # serving, metrics, Ray's metrics, dashboard (the operator)


def _selector(values) -> dict[str, str]:
    return {"app.kubernetes.io/name": "shadowd", "app.kubernetes.io/instance": RELEASE}


def test_network_policy_admits_ray_ports_only_from_the_release(rendered):
    _, values, docs = rendered
    policy = one(docs, "NetworkPolicy")
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    for where, meta, _ in pod_specs(docs):
        assert _selects(spec["podSelector"]["matchLabels"], meta["labels"]), where
    own = [r for r in spec["ingress"] if "ports" not in r]
    assert own == [{"from": [{"podSelector": {"matchLabels": _selector(values)}}]}]
    by_port: dict[int, list] = {}
    for rule in spec["ingress"]:
        assert rule.get("from"), "a rule without peers admits everyone"
        for port in rule.get("ports", []):
            by_port.setdefault(port["port"], []).extend(rule["from"])
    assert set(by_port) <= _OPEN_PORTS  # GCS 6379, client 10001, agent 52365: the release's pods only
    np = values["networkPolicy"]
    assert by_port[8000][: len(np["servingFrom"])] == np["servingFrom"]
    assert by_port[9100] == np["metricsFrom"]
    if values["mode"] == "rayservice":
        assert by_port[8265] == np["kubeRayOperatorFrom"] and by_port[8080] == np["metricsFrom"]
    else:
        assert 8265 not in by_port and 8080 not in by_port  # no dashboard; no Ray metrics port


def test_network_policy_peers_are_configurable_and_an_empty_list_admits_no_one(chart):
    peers = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}]
    docs = render(chart, {"networkPolicy": {"servingFrom": peers, "metricsFrom": []}})
    rules = one(docs, "NetworkPolicy")["spec"]["ingress"]
    serving = [r["from"] for r in rules if {"port": 8000, "protocol": "TCP"} in r.get("ports", [])]
    assert serving == [peers, chart.merge_values({})["networkPolicy"]["kubeRayOperatorFrom"]]
    assert not [r for r in rules if {"port": 9100, "protocol": "TCP"} in r.get("ports", [])]
    assert by_kind(render(chart, {"networkPolicy": {"enabled": False}}), "NetworkPolicy") == []


def test_metrics_are_not_exposed_outside_the_cluster_by_default(rendered):
    _, values, docs = rendered
    metrics = one(docs, "Service", f"{RELEASE}-shadowd-metrics")
    assert metrics["spec"].get("type", "ClusterIP") == "ClusterIP" and metrics["spec"]["clusterIP"] == "None"
    assert not any("ipBlock" in peer for peer in values["networkPolicy"]["metricsFrom"])


_HEALTH_WITHOUT_THE_APP = {"/-/healthz", "/api/local_raylet_healthz", "/api/gcs_healthz"}


def test_liveness_and_readiness_never_go_through_the_app_or_a_model(rendered):
    """An overloaded model must not restart the pod: liveness and readiness ask Serve's proxy or
    Ray itself, never a route of the shadowd app (the ingress, whose queue the model fills)."""
    _, _values, docs = rendered
    for where, _, spec in pod_specs(docs):
        for c in spec["containers"]:
            for probe in ("livenessProbe", "readinessProbe"):
                assert c[probe]["httpGet"]["path"] in _HEALTH_WITHOUT_THE_APP, (where, probe)


def test_termination_grace_outlasts_serves_graceful_shutdown_and_a_pdb_covers_the_pods(rendered):
    from ray.serve._private.constants import DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_S  # no public accessor

    _, values, docs = rendered
    # Serve gives each replica up to graceful_shutdown_timeout_s to stop: the hub flushes the
    # annotation queue and saves its state inside it; Ray's own stop comes after.
    serve_grace_s = DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_S
    for where, _, spec in pod_specs(docs):
        assert spec["terminationGracePeriodSeconds"] >= 2 * serve_grace_s, where
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == values["podDisruptionBudget"]["maxUnavailable"]
    for where, meta, _ in pod_specs(docs):
        assert _selects(pdb["spec"]["selector"]["matchLabels"], meta["labels"]), where


def test_ray_token_auth_is_on_by_default(chart):
    cluster = one(render(chart, {}), "RayService")["spec"]["rayClusterConfig"]
    assert cluster["authOptions"] == {"mode": "token"}
    off = one(render(chart, {"rayService": {"rayAuth": "disabled"}}), "RayService")["spec"]["rayClusterConfig"]
    assert "authOptions" not in off


def test_kafka_client_certificates_are_mounted_and_configured(chart):
    tls = {"existingSecret": "kafka-client", "caKey": "ca.crt", "certKey": "tls.crt", "keyKey": "tls.key"}
    docs = render(chart, _merge(SECRETS, {"kafka": {"tls": tls}}))
    kafka = parse_config(yaml.safe_load(_config_text(docs)), "configmap").annotations.sink
    for where, _, spec in pod_specs(docs):
        vol = next(v for v in spec["volumes"] if v["name"] == "kafka-tls")["secret"]
        assert [i["key"] for i in vol["items"]] == ["ca.crt", "tls.crt", "tls.key"], where
        mount = _volume_paths(spec, "kafka-tls", spec["containers"][0])
        assert (str(kafka.ssl_certfile), str(kafka.ssl_keyfile)) == (f"{mount}/tls.crt", f"{mount}/tls.key")


# --- tests: services and monitoring -------------------------------------------


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_services_select_the_pods_and_ports(rendered):
    _, values, docs = rendered
    pods = pod_specs(docs)
    http = one(docs, "Service", f"{RELEASE}-shadowd")
    metrics = one(docs, "Service", f"{RELEASE}-shadowd-metrics")
    for where, meta, spec in pods:
        labels = dict(meta["labels"])
        if where.startswith("RayService"):
            labels["ray.io/serve"] = "true"  # KubeRay sets it on pods whose Serve proxy is healthy
        assert _selects(metrics["spec"]["selector"], meta["labels"]), where
        assert _selects(http["spec"]["selector"], labels), where
        container_ports = {p["containerPort"] for p in spec["containers"][0]["ports"]}
        for svc in (http, metrics):
            for port in svc["spec"]["ports"]:
                assert port["targetPort"] in container_ports, f"{where}: {svc['metadata']['name']} port {port['name']}"
    assert http["spec"]["ports"][0]["port"] == values["service"]["httpPort"]
    # Only pods a Service selects get traffic: a Deployment's selector must match its own pods.
    for d in by_kind(docs, "Deployment"):
        assert _selects(d["spec"]["selector"]["matchLabels"], d["spec"]["template"]["metadata"]["labels"])


@pytest.mark.parametrize("mode", ["rayservice", "deployment"])
def test_service_monitor_scrapes_the_metrics_service_under_the_rules_job_names(chart, mode):
    docs = render(chart, {"mode": mode, **MONITORING})
    sm = one(docs, "ServiceMonitor")
    metrics = one(docs, "Service", f"{RELEASE}-shadowd-metrics")
    assert _selects(sm["spec"]["selector"]["matchLabels"], metrics["metadata"]["labels"])
    assert sm["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE]
    assert sm["metadata"]["labels"]["release"] == "kps"
    port_names = {p["name"] for p in metrics["spec"]["ports"]}
    jobs = {}
    for ep in sm["spec"]["endpoints"]:
        assert ep["port"] in port_names
        jobs[ep["port"]] = next(r["replacement"] for r in ep["relabelings"] if r["targetLabel"] == "job")
    # The alert rules and dashboards select job="shadowd" (and Ray's job="ray"), as in deploy/prometheus/prometheus.yml.
    scrape = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    assert jobs["metrics"] == "shadowd" and "shadowd" in {j["job_name"] for j in scrape["scrape_configs"]}
    if mode == "rayservice":
        assert jobs["ray-metrics"] == "ray" and "ray" in {j["job_name"] for j in scrape["scrape_configs"]}
    else:
        assert "ray-metrics" not in jobs


def test_monitors_are_optional(chart):
    docs = render(chart, {})
    assert by_kind(docs, "ServiceMonitor") == [] and by_kind(docs, "PrometheusRule") == []


def test_prometheus_rule_carries_the_deploy_rules_and_promtool_accepts_them(chart, tmp_path):
    rule = one(render(chart, MONITORING), "PrometheusRule")
    expected = []
    for path in sorted((ROOT / "deploy/prometheus/rules").glob("*.yml")):
        expected.extend(yaml.safe_load(path.read_text())["groups"])
    assert expected, "deploy/prometheus/rules/*.yml holds no rule groups"
    assert rule["spec"]["groups"] == expected
    rules_file = tmp_path / "rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    result = subprocess.run(["promtool", "check", "rules", str(rules_file)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboards_become_sidecar_config_maps(chart):
    docs = render(chart, {})
    maps = [d for d in by_kind(docs, "ConfigMap") if d["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
    sources = sorted((ROOT / "dashboards").glob("*.json"))
    assert sources, "dashboards/*.json is empty"
    assert sorted(k for m in maps for k in m["data"]) == [p.name for p in sources]
    for m in maps:
        ((name, text),) = m["data"].items()
        assert json.loads(text) == json.loads((ROOT / "dashboards" / name).read_text())
        assert m["metadata"]["annotations"]["grafana_folder"] == "shadowd"
        assert len(m["metadata"]["name"]) <= 63
    assert [
        d
        for d in by_kind(render(chart, {"grafana": {"dashboards": {"enabled": False}}}), "ConfigMap")
        if "dashboard" in d["metadata"]["name"]
    ] == []


def test_chart_files_are_the_deploy_files(chart):
    """files/prometheus-rules and files/dashboards link to deploy/prometheus/rules
    and dashboards/; whatever Helm packages must be exactly those files."""
    chart_files = {f["name"]: f["data"] for f in chart.files}
    for folder, source, pattern in (
        ("files/prometheus-rules", "deploy/prometheus/rules", "*.yml"),
        ("files/dashboards", "dashboards", "*.json"),
    ):
        packaged = {n.rsplit("/", 1)[1]: d for n, d in chart_files.items() if n.startswith(folder + "/")}
        on_disk = {p.name: p.read_text() for p in (ROOT / source).glob(pattern)}
        assert packaged.keys() == on_disk.keys(), f"{folder} vs {source}"
        for name, text in on_disk.items():
            assert packaged[name] == text, f"{folder}/{name} differs from {source}/{name}"
