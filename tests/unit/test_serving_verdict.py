"""GET /shadow/verdict and Flagger's confirm-promotion webhook, without Ray.

The ingress is the real class (as in test_serving_ingress.py); the hub is a
stand-in whose ``verdict`` answers what the real hub answers, the verdict
document of a real Comparator's report over tallies that make the gate PASS,
FAIL, REVIEW or stay INCONCLUSIVE (the same tallies test_compare_gate.py
checks the gate on).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlencode

import pytest
from starlette.requests import Request

from shadowd.compare.comparator import Comparator
from shadowd.compare.report import VERDICT_SCHEMA_VERSION, Verdict, combine_verdicts, verdict_document
from shadowd.compare.tally import SliceTally
from shadowd.serving.ingress import ShadowIngress
from tests.unit.test_compare_gate import FLIP, GATING_FLIP, config, flips_tally
from tests.unit.test_serving_ingress import ADMIN_TOKEN, LABELS_TOKEN, Body, ingress

FLAGGER = {"name": "digits", "namespace": "ml", "phase": "Promoting", "checksum": "abc", "metadata": {}}


def report_for(tmp_path, verdict: Verdict, candidate: str = "cand"):
    """A real report whose gate gives ``verdict`` (production 'prod', the candidate named ``candidate``)."""
    checks, tally = {
        Verdict.PASS: ([GATING_FLIP], flips_tally(2000, 10)),
        Verdict.REVIEW: ([FLIP], flips_tally(1000, 200)),
        Verdict.FAIL: ([GATING_FLIP], flips_tally(1000, 200)),
        Verdict.INCONCLUSIVE: ([GATING_FLIP], flips_tally(20, 0)),  # a required check short of its minimum
    }[verdict]
    cfg = config(tmp_path / verdict.value, checks)
    cand = cfg.models.candidate.model_copy(update={"name": candidate})
    comp = Comparator(cfg.model_copy(update={"models": cfg.models.with_candidates([cand])}))
    comp.load_state({**comp.state_dict(), "slices": {"overall": tally.to_dict()}})
    report = comp.report()
    assert report.gate.verdict is verdict, report.gate.reasons
    return report


class _Verdict:
    def __init__(self, hub: VerdictHub):
        self._hub = hub

    def remote(self, candidate: str | None = None) -> Any:
        async def call() -> Any:
            self._hub.calls += 1
            return verdict_document(self._hub.report)

        return call()


class VerdictHub:
    """The hub handle's shape (``verdict.remote()``), answering the real hub's ``verdict_document(report)``."""

    def __init__(self, report):
        self.report, self.calls = report, 0
        self.verdict = _Verdict(self)
        self.add_items = None  # the ingress builds a buffer around it; nothing is sent in these tests


def call(app: ShadowIngress, method: str, path: str, body: Any = None, token: str | None = None, query=(), raw=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
    headers = [(b"content-length", str(len(data)).encode()), (b"content-type", b"application/json")]
    if token is not None:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "headers": headers,
        "query_string": urlencode(list(query)).encode(),
        "root_path": "",
        "scheme": "http",
        "server": ("test", 80),
    }
    resp = asyncio.run(app(Request(scope, Body(data))))
    return resp.status_code, json.loads(bytes(resp.body))


def app_for(tmp_path, verdict: Verdict, candidate: str = "cand") -> tuple[ShadowIngress, VerdictHub]:
    hub = VerdictHub(report_for(tmp_path, verdict, candidate))
    return ingress(tmp_path, hub), hub  # type: ignore[arg-type]


def test_the_verdict_document_is_small_versioned_and_per_candidate(tmp_path):
    app, _ = app_for(tmp_path, Verdict.REVIEW)
    status, body = call(app, "GET", "/shadow/verdict", token=ADMIN_TOKEN)
    assert status == 200
    assert set(body) == {"version", "verdict", "reasons", "candidates", "generated_ts"}
    assert body["version"] == VERDICT_SCHEMA_VERSION == 1 and body["verdict"] == "REVIEW"
    (name,) = body["candidates"]
    cand = body["candidates"][name]
    assert name == "cand" and cand["verdict"] == "REVIEW" and cand["review_slices"] == ["overall"]
    assert cand["evidence"] == {"pairs": 1000, "compared": 1000, "labels": 0}
    assert cand["reasons"][0].startswith("flip_rate on overall: flip rate 0.2")
    assert body["reasons"] == [f"cand: {r}" for r in cand["reasons"]]
    assert isinstance(cand["window_started_ts"], float) and body["generated_ts"] >= cand["window_started_ts"]
    # narrowed to the one candidate: the same answer
    assert call(app, "GET", "/shadow/verdict", token=ADMIN_TOKEN, query=[("candidate", "cand")]) == (200, body)


@pytest.mark.parametrize("verdict", list(Verdict))
def test_the_verdict_route_answers_200_whatever_the_verdict(tmp_path, verdict):
    """Argo Rollouts' web metric counts a non-2xx answer as an error, not as a verdict: always 200 here."""
    app, _ = app_for(tmp_path, verdict)
    status, body = call(app, "GET", "/shadow/verdict", token=ADMIN_TOKEN)
    assert (status, body["verdict"], body["candidates"]["cand"]["verdict"]) == (200, verdict.value, verdict.value)


@pytest.mark.parametrize(
    "query, status, words",
    [
        ([("candidate", "nope")], 404, "no candidate 'nope'; this daemon shadows: cand"),
        ([("candidate", "")], 400, "'candidate' is empty"),
        ([("candidate", "cand"), ("candidate", "cand")], 400, "more than once"),
        ([("candidat", "cand")], 400, "unknown query parameter(s) candidat"),
    ],
)
def test_bad_query_parameters_get_a_4xx_with_a_reason(tmp_path, query, status, words):
    app, _ = app_for(tmp_path, Verdict.PASS)
    got, body = call(app, "GET", "/shadow/verdict", token=ADMIN_TOKEN, query=query)
    assert got == status and words in body["error"]


def test_without_a_candidate_the_verdict_is_inconclusive_and_says_why(tmp_path):
    comp = Comparator(config(tmp_path, [FLIP], candidate=False))
    doc = verdict_document(comp.report())
    assert (doc["verdict"], doc["candidates"]) == ("INCONCLUSIVE", {})
    assert "no candidate" in doc["reasons"][0]


def test_several_candidates_combine_to_the_worst():
    assert combine_verdicts([Verdict.PASS, Verdict.PASS]) is Verdict.PASS
    assert combine_verdicts([Verdict.PASS, Verdict.INCONCLUSIVE]) is Verdict.INCONCLUSIVE
    assert combine_verdicts([Verdict.INCONCLUSIVE, Verdict.REVIEW, Verdict.PASS]) is Verdict.REVIEW
    assert combine_verdicts([Verdict.REVIEW, Verdict.FAIL]) is Verdict.FAIL
    assert combine_verdicts([]) is Verdict.INCONCLUSIVE


@pytest.mark.parametrize("method, path", [("GET", "/shadow/verdict"), ("POST", "/shadow/verdict/flagger")])
def test_both_routes_need_the_read_scope(tmp_path, method, path):
    app, hub = app_for(tmp_path, Verdict.PASS)
    status, body = call(app, method, path, FLAGGER)
    assert status == 401 and f"{method} {path} needs a bearer token with scope read" in body["error"]
    assert call(app, method, path, FLAGGER, token="x" * 40)[0] == 401
    status, body = call(app, method, path, FLAGGER, token=LABELS_TOKEN)
    assert status == 403 and "lacks scope read" in body["error"]
    assert hub.calls == 0  # refused before the hub was asked
    assert call(app, method, path, FLAGGER, token=ADMIN_TOKEN)[0] == 200
    assert hub.calls == 1


def test_flagger_confirm_promotion_is_200_on_pass_only(tmp_path):
    app, _ = app_for(tmp_path, Verdict.PASS)
    status, body = call(app, "POST", "/shadow/verdict/flagger", FLAGGER, token=ADMIN_TOKEN)
    assert status == 200 and body["verdict"] == "PASS" and body["canary"] == "ml/digits"
    assert body["candidates"] == {"cand": "PASS"} and "error" not in body


@pytest.mark.parametrize("verdict", [Verdict.FAIL, Verdict.REVIEW, Verdict.INCONCLUSIVE])
def test_flagger_confirm_promotion_is_412_with_the_reasons_otherwise(tmp_path, verdict):
    app, _ = app_for(tmp_path, verdict)
    status, body = call(app, "POST", "/shadow/verdict/flagger", FLAGGER, token=ADMIN_TOKEN)
    assert status == 412 and body["verdict"] == verdict.value
    assert body["reasons"] and body["reasons"][0].startswith("cand: ")
    assert body["error"] == f"shadow verdict {verdict.value}, not PASS: {body['reasons'][0]}"


def test_flagger_names_a_candidate_in_the_webhook_metadata(tmp_path):
    app, _ = app_for(tmp_path, Verdict.PASS)
    named = {**FLAGGER, "metadata": {"candidate": "cand", "other": "ignored"}}
    assert call(app, "POST", "/shadow/verdict/flagger", named, token=ADMIN_TOKEN)[0] == 200
    status, body = call(
        app, "POST", "/shadow/verdict/flagger", {**FLAGGER, "metadata": {"candidate": "v3"}}, token=ADMIN_TOKEN
    )
    assert status == 404 and "no candidate 'v3'" in body["error"]


@pytest.mark.parametrize(
    "raw, status, words",
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[]", 422, "must be a JSON object"),
        (json.dumps({"namespace": "ml", "phase": "Promoting"}).encode(), 422, "missing 'name'"),
        (json.dumps({**FLAGGER, "phase": 3}).encode(), 422, "'phase' must be a non-empty string"),
        (json.dumps({**FLAGGER, "name": ""}).encode(), 422, "'name' must be a non-empty string"),
        (json.dumps({**FLAGGER, "metadata": {"candidate": 1}}).encode(), 422, "'metadata' must be an object"),
        (json.dumps({**FLAGGER, "metadata": ["candidate"]}).encode(), 422, "'metadata' must be an object"),
        (json.dumps({**FLAGGER, "metadata": {"candidate": ""}}).encode(), 422, "'metadata.candidate' is empty"),
        (b"[" * 5000 + b"]" * 5000, 400, ""),
    ],
)
def test_bad_flagger_bodies_get_400_or_422_never_500(tmp_path, raw, status, words):
    app, hub = app_for(tmp_path, Verdict.PASS)
    got, body = call(app, "POST", "/shadow/verdict/flagger", token=ADMIN_TOKEN, raw=raw)
    assert got == status and words in body["error"]
    assert hub.calls == 0


def test_unknown_payload_fields_and_no_metadata_are_accepted(tmp_path):
    """A field a later Flagger adds must not stall every promotion on a 422."""
    app, _ = app_for(tmp_path, Verdict.PASS)
    payload = {"name": "digits", "namespace": "ml", "phase": "Promoting", "newField": {"x": 1}}
    assert call(app, "POST", "/shadow/verdict/flagger", payload, token=ADMIN_TOKEN)[0] == 200


def test_wrong_methods_are_405(tmp_path):
    app, _ = app_for(tmp_path, Verdict.PASS)
    assert call(app, "POST", "/shadow/verdict", token=ADMIN_TOKEN)[0] == 405
    assert call(app, "GET", "/shadow/verdict/flagger", token=ADMIN_TOKEN)[0] == 405


def test_the_empty_tally_is_inconclusive(tmp_path):
    comp = Comparator(config(tmp_path, [GATING_FLIP]))
    comp.load_state({**comp.state_dict(), "slices": {"overall": SliceTally().to_dict()}})
    assert verdict_document(comp.report())["verdict"] == "INCONCLUSIVE"


def test_the_real_hub_answers_the_verdict_of_its_report_and_sets_the_gauge(tmp_path):
    """ShadowHub.verdict (what the route calls): the document of the hub's own report, counts included, and
    the shadowd_gate_verdict gauge a Prometheus analysis reads, set from the same report."""
    from shadowd.compare.report import ShadowReport
    from shadowd.records import PairBatch
    from shadowd.serving.hub import ShadowHub
    from tests.unit.test_compare_batch import Clock, random_pairs
    from tests.unit.test_serving_hub_batch import _config, _json_safe, _parts

    clock = Clock()
    cfg = _config(tmp_path / "hub")
    parts: list[Any] = []
    hub = ShadowHub(cfg, lambda c, _shard: parts.append(_parts(c, clock)) or parts[0])
    try:
        pairs = _json_safe(random_pairs(5, 300))

        async def feed_then_ask() -> dict[str, Any]:
            assert await hub.add_batch(PairBatch.of(pairs)) == len(pairs)
            return await hub.verdict()

        document = asyncio.run(feed_then_ask())
        report = ShadowReport.from_json(asyncio.run(hub.report()))
        (name,) = document["candidates"]
        entry = document["candidates"][name]
        assert name == "cand" and document["verdict"] == entry["verdict"] == report.gate.verdict.value
        assert entry["reasons"] == report.gate.reasons
        assert entry["evidence"] == {
            "pairs": report.overall.pairs,
            "compared": report.overall.compared,
            "labels": report.overall.labels.used,
        }
        assert entry["evidence"]["pairs"] == len(pairs)
        assert entry["window_started_ts"] == report.window_started_ts
        gauge = parts[0].metrics.registry.get_sample_value("shadowd_gate_verdict", {"candidate": "cand"})
        assert gauge == report.gate.verdict.gauge_value
    finally:
        hub.__del__()  # what Serve calls on shutdown: close the flywheel, save the state
        del hub.__dict__["_flywheel"]
