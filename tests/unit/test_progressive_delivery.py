"""deploy/argo-rollouts and deploy/flagger: each manifest against its CRD schema, and each gate against the
real route.

The schemas (tests/data/crds/, see its README) were written for these tests
from Argo Rollouts' and Flagger's published API types; pod templates and
label selectors point at the Kubernetes definitions kubernetes-validate
ships. The Argo web metric is then played as Argo Rollouts plays it
(``metricproviders/webmetric``: GET the URL with its headers, a non-2xx
answer is an error, the value at ``jsonPath``, then ``successCondition`` /
``failureCondition`` as in ``utils/evaluate``) against the real ingress route
over real gate verdicts; the Flagger webhook's command is parsed and its
request sent the same way. No Ray, no cluster.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import jsonschema
import pytest
import referencing
import yaml

from shadowd.compare.report import Verdict
from shadowd.observe.metrics import ShadowdMetrics
from shadowd.serving.hub import publish_gate
from tests.fixtures.k8s import k8s_definitions
from tests.unit.test_serving_ingress import ADMIN_TOKEN
from tests.unit.test_serving_verdict import app_for, call, report_for

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "tests" / "data" / "crds"
ARGO = ROOT / "deploy" / "argo-rollouts"
FLAGGER = ROOT / "deploy" / "flagger"


@pytest.fixture(scope="module")
def validators() -> dict[tuple[str, str], jsonschema.Draft202012Validator]:
    registry = k8s_definitions() @ referencing.Registry()
    out = {}
    for path in [*CRDS.glob("*.argoproj.io_*.json"), *CRDS.glob("*.flagger.app_*.json")]:
        schema = json.loads(path.read_text())
        jsonschema.Draft202012Validator.check_schema(schema)  # a schema with a typo of its own checks nothing
        api, kind = schema["properties"]["apiVersion"]["const"], schema["properties"]["kind"]["const"]
        out[(api, kind)] = jsonschema.Draft202012Validator(schema, registry=registry)
    return out


def errors(doc: dict[str, Any], validators) -> list[str]:
    validator = validators[(doc["apiVersion"], doc["kind"])]  # KeyError: a kind without a schema
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def manifests() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for folder in (ARGO, FLAGGER):
        for path in sorted(folder.glob("*.yaml")):
            out += [(f"{folder.name}/{path.name}", doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return out


def one(kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for _, d in manifests() if d["kind"] == kind and d["metadata"]["name"] == name]
    return copy.deepcopy(doc)


def test_the_examples_are_the_kinds_the_issue_asks_for():
    kinds = sorted((where.split("/")[0], d["kind"], d["metadata"]["name"]) for where, d in manifests())
    assert kinds == [
        ("argo-rollouts", "AnalysisTemplate", "shadowd-verdict"),
        ("argo-rollouts", "AnalysisTemplate", "shadowd-verdict-prometheus"),
        ("argo-rollouts", "Rollout", "digits"),
        ("flagger", "Canary", "digits"),
        ("flagger", "MetricTemplate", "shadowd-gate-fails"),
    ]


@pytest.mark.parametrize("where, doc", manifests(), ids=[w for w, _ in manifests()])
def test_every_example_validates_against_its_crd_schema(where, doc, validators):
    assert errors(doc, validators) == []


def _set(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    node: Any = doc
    for p in parents:
        node = node[p]
    node[last] = value
    return doc


def _rename(doc: dict[str, Any], path: str, new: str) -> dict[str, Any]:
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    node: Any = doc
    for p in parents:
        node = node[p]
    node[new] = node.pop(last)
    return doc


AT, PROM_AT = ("AnalysisTemplate", "shadowd-verdict"), ("AnalysisTemplate", "shadowd-verdict-prometheus")
RO, CANARY, MT = ("Rollout", "digits"), ("Canary", "digits"), ("MetricTemplate", "shadowd-gate-fails")


@pytest.mark.parametrize(
    "which, edit, words",
    [
        (AT, lambda d: _rename(d, "spec.metrics.0.successCondition", "successCondtion"), "successCondtion"),
        (AT, lambda d: _rename(d, "spec.metrics.0.provider.web.jsonPath", "jsonpath"), "jsonpath"),
        (AT, lambda d: _set(d, "spec.metrics.0.count", "twenty"), "count"),
        (AT, lambda d: _set(d, "spec.metrics.0.provider.web.timeoutSeconds", "10"), "timeoutSeconds"),
        (AT, lambda d: d["spec"]["metrics"][0]["provider"]["web"].pop("url") and d, "'url' is a required property"),
        (AT, lambda d: _set(d, "spec.metrics.0.provider.web.headers.0", {"name": "Authorization"}), "headers"),
        (AT, lambda d: _set(d, "spec.metrics.0.interval", "5 minutes"), "interval"),
        (PROM_AT, lambda d: _set(d, "spec.metrics.0.provider.prometheus.timeout", "30s"), "timeout"),
        (RO, lambda d: _set(d, "spec.strategy.canary.steps.3.setWeight", "20"), "setWeight"),
        (RO, lambda d: _set(d, "spec.strategy.canary.steps.1.analysis.templates.0", {"template": "x"}), "templates"),
        (RO, lambda d: _set(d, "spec.strategy.canary.steps.0", {"setWeight": 0, "pause": {}}), "steps.0"),
        (RO, lambda d: _set(d, "spec.template.spec.containers.0.ports.0.containerPort", "8080"), "containerPort"),
        (CANARY, lambda d: _set(d, "spec.analysis.webhooks.0.type", "confirm-promote"), "confirm-promote"),
        (CANARY, lambda d: _set(d, "spec.analysis.metrics.0.thresholdRange.max", "0"), "max"),
        (CANARY, lambda d: _set(d, "spec.analysis.webhooks.0.metadata.retries", 3), "metadata"),
        (CANARY, lambda d: _rename(d, "spec.analysis.webhooks.0.timeout", "timout"), "timout"),
        (CANARY, lambda d: _set(d, "spec.targetRef.kind", "Rollout"), "kind"),
        (MT, lambda d: _set(d, "spec.provider.type", "prom"), "prom"),
        (MT, lambda d: d["spec"].pop("query") and d, "'query' is a required property"),
    ],
)
def test_the_schemas_reject_typos_and_wrong_types(which, edit, words, validators):
    """A schema that accepted anything would make the test above prove nothing."""
    found = errors(edit(one(*which)), validators)
    assert found and any(words in e for e in found), found


# --- Argo Rollouts' web metric, played against the real route --------------------------------


def k8s_jsonpath(expression: str, data: Any) -> Any:
    """The subset of Kubernetes JSONPath (k8s.io/client-go/util/jsonpath) the templates use: ``{$.a.b}`` or
    ``{.a.b}``, plain field names. Anything else fails the test rather than being guessed at."""
    m = re.fullmatch(r"\{\$?((?:\.[A-Za-z_][A-Za-z0-9_-]*)+)\}", expression)
    assert m, f"jsonPath {expression!r} is outside the subset this test evaluates"
    for name in m.group(1).split(".")[1:]:
        if not isinstance(data, dict) or name not in data:
            raise LookupError(f"{name} is not found")  # Argo: "Could not find JSONPath in body"
        data = data[name]
    return data


def condition(expression: str, result: Any) -> bool:
    """The two condition forms the templates use: ``result == "WORD"`` and ``result[0] == N``."""
    if m := re.fullmatch(r'result == "([A-Z]+)"', expression):
        return bool(result == m.group(1))
    if m := re.fullmatch(r"result\[0\] == (\d+)", expression):
        return bool(result[0] == int(m.group(1)))
    raise AssertionError(f"condition {expression!r} is outside the subset this test evaluates")


def phase(metric: dict[str, Any], result: Any) -> str:
    """Argo Rollouts' EvaluateResult with both conditions set."""
    success, failure = metric.get("successCondition"), metric.get("failureCondition")
    assert success and failure, "both conditions: REVIEW / INCONCLUSIVE must be neither success nor failure"
    if condition(failure, result):
        return "Failed"
    return "Successful" if condition(success, result) else "Inconclusive"


def substitute(text: str, args: dict[str, str]) -> str:
    out = re.sub(r"\{\{args\.([A-Za-z0-9_-]+)\}\}", lambda m: args[m.group(1)], text)
    assert "{{" not in out, out
    return out


def web_measurement(app, metric: dict[str, Any], args: dict[str, str]) -> str:
    web = metric["provider"]["web"]
    assert web.get("method", "GET") == "GET"
    url = urlsplit(substitute(web["url"], args))
    (auth,) = [h for h in web["headers"] if h["key"] == "Authorization"]
    scheme, _, token = substitute(auth["value"], args).partition(" ")
    assert scheme == "Bearer"
    status, body = call(app, "GET", url.path, token=token, query=parse_qsl(url.query))
    if not 200 <= status < 300:
        return "Error"  # Argo: "received non 2xx response code"
    return phase(metric, k8s_jsonpath(web["jsonPath"], body))


def rollout_args(template: dict[str, Any]) -> dict[str, str]:
    """The template's own defaults, the Rollout step's values, and the Secret's token."""
    args = {a["name"]: a["value"] for a in template["spec"]["args"] if "value" in a}
    (step,) = [s["analysis"] for s in one(*RO)["spec"]["strategy"]["canary"]["steps"] if "analysis" in s]
    assert [t["templateName"] for t in step["templates"]] == [template["metadata"]["name"]]
    args.update({a["name"]: a["value"] for a in step["args"]})
    (secret,) = [a for a in template["spec"]["args"] if "valueFrom" in a]
    assert secret["valueFrom"]["secretKeyRef"] == {"name": "shadowd-gate-token", "key": "token"}
    args[secret["name"]] = ADMIN_TOKEN  # what the Secret would hold: a token with the read scope
    missing = {a["name"] for a in template["spec"]["args"]} - set(args)
    assert not missing, f"arguments without a value: {missing}"
    return args


@pytest.mark.parametrize(
    "verdict, expected",
    [
        (Verdict.PASS, "Successful"),
        (Verdict.FAIL, "Failed"),
        (Verdict.REVIEW, "Inconclusive"),
        (Verdict.INCONCLUSIVE, "Inconclusive"),
    ],
)
def test_the_argo_web_metric_reads_the_verdict_route(tmp_path, verdict, expected):
    template = one(*AT)
    (metric,) = template["spec"]["metrics"]
    args = rollout_args(template)
    app, hub = app_for(tmp_path, verdict, candidate=args["candidate"])
    assert web_measurement(app, metric, args) == expected
    assert hub.calls == 1


def test_the_argo_web_metric_errors_for_a_candidate_shadowd_does_not_have(tmp_path):
    """A Rollout naming another candidate gets a 404: an Error measurement (not a silent PASS)."""
    template = one(*AT)
    (metric,) = template["spec"]["metrics"]
    args = rollout_args(template)
    app, _ = app_for(tmp_path, Verdict.PASS, candidate="someone-else")
    assert web_measurement(app, metric, args) == "Error"


def test_the_argo_analysis_waits_through_review_and_stops_at_the_first_pass_or_fail():
    (metric,) = one(*AT)["spec"]["metrics"]
    assert metric["failureLimit"] == 0 and metric["consecutiveSuccessLimit"] == 1
    assert metric["inconclusiveLimit"] >= metric["count"], "an open verdict must not end the analysis early"


def gauge_selector(query: str) -> dict[str, str]:
    """The label matchers of the query's ``shadowd_gate_verdict{...}``: equality matchers only, or the test fails."""
    (inside,) = re.findall(r"shadowd_gate_verdict\{([^}]*)\}", query)
    matchers = [m.strip() for m in inside.split(",") if m.strip()]
    pairs = [re.fullmatch(r'([a-z_]+)="([^"{}]*)"', m) for m in matchers]
    assert all(pairs), f"matchers outside the subset this test evaluates: {inside}"
    return {m.group(1): m.group(2) for m in pairs if m}


def prometheus_template_args(template: dict[str, Any]) -> dict[str, str]:
    """The Prometheus variant's defaults and the Rollout's analysis step's args (it takes the same ones)."""
    args = {a["name"]: a["value"] for a in template["spec"]["args"] if "value" in a}
    (step,) = [s["analysis"] for s in one(*RO)["spec"]["strategy"]["canary"]["steps"] if "analysis" in s]
    args.update({a["name"]: a["value"] for a in step["args"]})
    missing = {a["name"] for a in template["spec"]["args"]} - set(args)
    assert not missing, f"arguments without a value: {missing}"
    return args


def flagger_query(metric: dict[str, Any]) -> str:
    """The MetricTemplate's query with the Canary metric's templateVariables put in, as Flagger renders it."""
    variables = metric.get("templateVariables", {})
    out = re.sub(
        r"\{\{\s*variables\.([A-Za-z0-9_]+)\s*\}\}", lambda m: variables[m.group(1)], one(*MT)["spec"]["query"]
    )
    assert "{{" not in out, out
    return out


@pytest.mark.parametrize("verdict", list(Verdict))
def test_the_prometheus_variants_read_the_gate_gauge(tmp_path, verdict):
    """The gauge the queries name is the one the hub sets, with the codes the conditions expect, and each
    query selects its own candidate's series: another candidate's opposite verdict does not leak in."""
    from prometheus_client import CollectorRegistry

    (argo,) = one(*PROM_AT)["spec"]["metrics"]
    argo_selector = gauge_selector(
        substitute(argo["provider"]["prometheus"]["query"], prometheus_template_args(one(*PROM_AT)))
    )
    (check,) = one(*CANARY)["spec"]["analysis"]["metrics"]
    flagger_selector = gauge_selector(flagger_query(check))
    _method, _url, _headers, body = webhook_request()
    for selector in (argo_selector, flagger_selector):
        assert set(selector) == {"job", "namespace", "candidate"} and selector["job"] == "shadowd", selector
        # the candidate the Rollout's web metric and the Canary's webhook ask shadowd about
        assert selector["candidate"] == body["metadata"]["candidate"] == rollout_args(one(*AT))["candidate"]
    candidate = argo_selector["candidate"]

    registry = CollectorRegistry()
    metrics = ShadowdMetrics(registry)
    other = Verdict.PASS if verdict is Verdict.FAIL else Verdict.FAIL
    for name, gate in (("someone-else", other), (candidate, verdict)):
        report = report_for(tmp_path / name, gate)
        publish_gate(metrics, report.model_copy(update={"models": {**report.models, "candidate": name}}))
    # job and namespace are the scrape's target labels; the candidate label is the hub's
    value = registry.get_sample_value("shadowd_gate_verdict", {"candidate": candidate})
    assert value == verdict.gauge_value
    assert registry.get_sample_value("shadowd_gate_verdict", {"candidate": "someone-else"}) == other.gauge_value
    expected = {Verdict.PASS: "Successful", Verdict.FAIL: "Failed"}.get(verdict, "Inconclusive")
    assert phase(argo, [value]) == expected
    # Flagger: `max(shadowd_gate_verdict{...} == bool 1)` is 1 on FAIL only; thresholdRange max 0 fails then.
    query = one(*MT)["spec"]["query"]
    assert query.strip().startswith("max(shadowd_gate_verdict{") and query.strip().endswith("} == bool 1)"), query
    assert check["templateRef"]["name"] == one(*MT)["metadata"]["name"]
    flagger_value = float(value == 1)
    assert (flagger_value > check["thresholdRange"]["max"]) == (verdict is Verdict.FAIL)


# --- Flagger's confirm-promotion webhook -------------------------------------------------------


def webhook_request() -> tuple[str, str, dict[str, str], dict[str, Any]]:
    """The curl the loadtester runs for the webhook, parsed: (method, url, headers, body)."""
    (hook,) = one(*CANARY)["spec"]["analysis"]["webhooks"]
    assert hook["type"] == "confirm-promotion" and hook["metadata"]["type"] == "bash"
    argv = shlex.split(hook["metadata"]["cmd"])
    assert argv[0] == "curl" and "--fail-with-body" in argv, "a 412 must fail the command, so Flagger waits"
    method = argv[argv.index("-X") + 1]
    (url,) = [a for a in argv if a.startswith("http")]
    headers = dict(argv[i + 1].split(": ", 1) for i, a in enumerate(argv) if a == "-H")
    body = json.loads(argv[argv.index("-d") + 1])
    return method, url, headers, body


@pytest.mark.parametrize("verdict", list(Verdict))
def test_the_flagger_webhook_passes_only_on_pass(tmp_path, verdict):
    method, url, headers, body = webhook_request()
    assert headers["Authorization"] == "Bearer $SHADOWD_TOKEN"  # from the loadtester's env, never the Canary
    assert headers["Content-Type"] == "application/json"
    app, _ = app_for(tmp_path, verdict, candidate=body["metadata"]["candidate"])
    status, answer = call(app, method, urlsplit(url).path, body, token=ADMIN_TOKEN)
    assert status == (200 if verdict is Verdict.PASS else 412)
    assert answer["verdict"] == verdict.value and answer["canary"] == f"{body['namespace']}/{body['name']}"


def test_no_example_holds_a_token():
    for where, doc in manifests():
        text = json.dumps(doc)
        assert not re.search(r"Bearer [A-Za-z0-9_-]{16,}", text), where
