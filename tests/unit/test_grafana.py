"""``shadowd dashboards push`` and gate-verdict annotations, over real HTTP.

No Grafana server can run here. These tests run against the stand-in in
``tests/fixtures/grafana.py`` (a small ``http.server`` that implements the
four Grafana API calls shadowd makes, checks the bearer token and records
every request). It is a fake: it proves what shadowd sends, not that a real
Grafana accepts it.
"""

from __future__ import annotations

import json
from enum import Enum

import pytest
from typer.testing import CliRunner

from shadowd.cli import app
from shadowd.errors import GrafanaError
from shadowd.observe.dashboards import build_dashboards
from shadowd.observe.grafana import (
    VerdictAnnotator,
    annotate_verdict_change,
    connect,
    push_dashboards,
)
from tests.fixtures.grafana import TOKEN


def test_push_creates_the_folder_then_every_dashboard(grafana):
    result = push_dashboards(connect(grafana.url, TOKEN))

    expected = build_dashboards()
    assert grafana.calls() == [
        ("GET", "/api/folders/shadowd"),
        ("POST", "/api/folders"),
        *[("POST", "/api/dashboards/db")] * len(expected),
    ]
    assert all(r.auth == f"Bearer {TOKEN}" for r in grafana.requests)
    assert grafana.requests[1].body == {"title": "shadowd", "uid": "shadowd"}
    for seen, dashboard in zip(grafana.requests[2:], expected.values(), strict=True):
        assert seen.body["folderUid"] == "shadowd" and seen.body["overwrite"] is True
        assert seen.body["dashboard"] == {**dashboard, "id": None}
    assert result.folder_created and [d.uid for d in result.dashboards] == [d["uid"] for d in expected.values()]
    assert [d.version for d in result.dashboards] == [1] * len(expected)


def test_second_push_reuses_the_folder_and_updates_in_place(grafana):
    client = connect(grafana.url, TOKEN)
    push_dashboards(client)
    grafana.requests.clear()
    result = push_dashboards(client)
    assert ("POST", "/api/folders") not in grafana.calls()
    assert not result.folder_created
    assert [d.version for d in result.dashboards] == [2] * len(build_dashboards())
    assert len(grafana.dashboards) == len(build_dashboards())


def test_wrong_token_is_a_clear_error(grafana):
    with pytest.raises(GrafanaError, match=r"read folder 'shadowd'.*Unauthorized"):
        push_dashboards(connect(grafana.url, "wrong"))
    assert grafana.requests[0].auth == "Bearer wrong"
    assert grafana.dashboards == {}


def test_unreachable_grafana_is_a_clear_error():
    with pytest.raises(GrafanaError, match="could not reach Grafana"):
        push_dashboards(connect("http://127.0.0.1:9", TOKEN, timeout_s=2))


class Verdict(Enum):
    PASS = "pass"
    FAIL = "fail"


def test_annotation_written_only_when_the_verdict_changes(grafana):
    client = connect(grafana.url, TOKEN)
    assert annotate_verdict_change(client, "pass", Verdict.PASS, "no change") is None
    assert grafana.requests == []

    annotation_id = annotate_verdict_change(
        client, "pass", Verdict.FAIL, "flip_rate fails on mobile", time_ms=1_700_000_000_000
    )
    assert annotation_id == 101
    [seen] = grafana.requests
    assert (seen.method, seen.path, seen.auth) == ("POST", "/api/annotations", f"Bearer {TOKEN}")
    assert seen.body["time"] == 1_700_000_000_000
    assert seen.body["tags"] == ["shadowd", "gate", "fail"]
    assert seen.body["text"] == "gate verdict: PASS -> FAIL. flip_rate fails on mobile"
    assert "dashboardUID" not in seen.body  # organisation-wide: shown on every dashboard by tag


def test_dashboards_show_the_annotations_by_their_tags():
    for dashboard in build_dashboards().values():
        queries = [a for a in dashboard["annotations"]["list"] if a.get("target", {}).get("type") == "tags"]
        assert [q["target"]["tags"] for q in queries] == [["shadowd", "gate"]]


def test_verdict_annotator_annotates_start_and_changes_and_survives_grafana_outage(grafana):
    now = [1_700_000_000.0]
    annotator = VerdictAnnotator(connect(grafana.url, TOKEN), clock=lambda: now[0])
    written = []
    for verdict in ["inconclusive", "inconclusive", "fail", "fail"]:
        written.append(annotator.observe(verdict, "report"))
        now[0] += 60
    assert written == [101, None, 102, None]
    assert [a["tags"][-1] for a in grafana.annotations] == ["inconclusive", "fail"]
    assert [a["time"] for a in grafana.annotations] == [1_700_000_000_000, 1_700_000_120_000]

    grafana.fail_with = 500
    assert annotator.observe("pass") is None  # logged, not raised
    assert annotator.last_verdict == "fail"  # so the change is retried
    grafana.fail_with = None
    assert annotator.observe("pass") == 103
    assert grafana.annotations[-1]["text"] == "gate verdict: FAIL -> PASS."


def test_annotator_from_settings_needs_the_token_variable():
    with pytest.raises(GrafanaError, match=r"GRAFANA_TOKEN.*not set"):
        VerdictAnnotator.from_settings("http://127.0.0.1:3000", env={})


def test_cli_push(grafana):
    out = CliRunner().invoke(app, ["dashboards", "push", "--grafana-url", grafana.url, "--token", TOKEN])
    assert out.exit_code == 0, out.output
    assert "folder shadowd (created)" in out.output
    assert f"shadowd-overview: version 1 {grafana.url}/d/shadowd-overview/slug" in out.output
    assert set(grafana.dashboards) == {"shadowd-overview", "shadowd-flywheel"}


def test_cli_push_with_a_bad_token_exits_1(grafana):
    out = CliRunner().invoke(app, ["dashboards", "push", "--grafana-url", grafana.url], env={"GRAFANA_TOKEN": "bad"})
    assert out.exit_code == 1
    assert "Unauthorized" in out.output and grafana.dashboards == {}


def test_cli_push_from_dir(grafana, tmp_path):
    dash = {"uid": "custom", "title": "custom", "panels": []}
    (tmp_path / "custom.json").write_text(json.dumps(dash))
    out = CliRunner().invoke(
        app, ["dashboards", "push", "--grafana-url", grafana.url, "--token", TOKEN, "--from-dir", str(tmp_path)]
    )
    assert out.exit_code == 0, out.output
    assert grafana.dashboards["custom"]["dashboard"] == {**dash, "id": None}


def test_grafana_config_section_fails_fast_naming_the_key():
    from shadowd.config import parse_config
    from shadowd.errors import ConfigError

    base = {
        "task": "classification",
        "models": {"production": {"name": "p", "kind": "python", "target": "m:f", "input_shape": [2]}},
    }
    cfg = parse_config({**base, "grafana": {"url": "http://grafana:3000"}}, "shadowd.yaml")
    assert cfg.grafana.token_env == "GRAFANA_TOKEN" and cfg.grafana.annotate_verdicts
    with pytest.raises(ConfigError, match=r"shadowd.yaml.*grafana\.url"):
        parse_config({**base, "grafana": {"url": "grafana:3000"}}, "shadowd.yaml")
    with pytest.raises(ConfigError, match=r"grafana\.token"):
        parse_config({**base, "grafana": {"url": "http://g", "token": "secret"}}, "shadowd.yaml")


@pytest.mark.usefixtures("without_foundation_sdk")
def test_without_the_sdk_annotations_and_push_from_dir_work(grafana, tmp_path):
    """The daemon's hub imports the annotator; neither it nor pushing committed JSON needs the [grafana] extra."""
    import sys

    annotator = VerdictAnnotator(connect(grafana.url, TOKEN))
    assert annotator.observe("fail") == 101
    (tmp_path / "custom.json").write_text(json.dumps({"uid": "custom", "title": "custom", "panels": []}))
    out = CliRunner().invoke(
        app, ["dashboards", "push", "--grafana-url", grafana.url, "--token", TOKEN, "--from-dir", str(tmp_path)]
    )
    assert out.exit_code == 0, out.output
    assert "shadowd.observe.dashboards" not in sys.modules


@pytest.mark.usefixtures("without_foundation_sdk")
def test_cli_push_of_the_built_in_dashboards_without_the_sdk_says_what_to_do(grafana):
    out = CliRunner().invoke(app, ["dashboards", "push", "--grafana-url", grafana.url, "--token", TOKEN])
    assert out.exit_code == 2
    assert "pip install 'shadowd[grafana]'" in out.output and "--from-dir dashboards/" in out.output
    assert grafana.requests == []  # refused before any call to Grafana


def test_each_candidates_verdict_is_annotated_on_its_own(grafana):
    """Several candidates: a change of one test's verdict is annotated with its name and tag; another's steady
    verdict writes nothing."""
    annotator = VerdictAnnotator(connect(grafana.url, TOKEN))
    assert annotator.observe("fail", "accuracy", candidate="a") == 101
    assert annotator.observe("pass", "", candidate="b") == 102
    assert annotator.observe("fail", "accuracy", candidate="a") is None  # a unchanged
    assert annotator.observe("fail", "flip_rate", candidate="b") == 103  # b changed
    assert [a["tags"] for a in grafana.annotations] == [
        ["shadowd", "gate", "candidate:a", "fail"],
        ["shadowd", "gate", "candidate:b", "pass"],
        ["shadowd", "gate", "candidate:b", "fail"],
    ]
    assert grafana.annotations[-1]["text"] == "gate verdict of b: PASS -> FAIL. flip_rate"
    annotator.forget({"a"})  # b removed: added again, its first verdict is annotated afresh
    assert annotator.last_of("b") is None and annotator.observe("fail", candidate="b") == 104
