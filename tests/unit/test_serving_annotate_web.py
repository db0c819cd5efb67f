"""The labelling page's HTTP server on a real local socket and the real spool: token and scope on every
/api route, sessions bound to the token that opened them, bad input 4xx with a reason, the page's own
security headers, DNS rebinding refused. (The browser side is tests/integration/test_annotate_page.py.)"""

import json

import pytest
import requests

from shadowd.config import parse_config
from shadowd.flywheel.annotate import WorkQueue
from shadowd.serving.annotate_web import MAX_BODY_BYTES, AnnotateServer, serve_page
from shadowd.serving.auth import write_generated_token
from tests.unit.test_flywheel_annotate import item, spool_items

ANA = "a" * 40
READER = "r" * 40
BO = "b" * 40


def raw_config(tmp_path, **annotations):
    return {
        "task": "classification",
        "data_dir": str(tmp_path),
        "models": {"production": {"name": "p", "kind": "python", "target": "m:f", "input_shape": [64]}},
        "annotations": {"web": {"port": 0}, **annotations},
    }


@pytest.fixture
def page(tmp_path):
    tmp_path = tmp_path / "generated"
    spool_items(tmp_path, [item(i) for i in range(3)])
    cfg = parse_config(raw_config(tmp_path))
    server = serve_page(cfg)
    token = (tmp_path / "auth" / "token").read_text().strip()
    yield server, {"Authorization": f"Bearer {token}"}
    server.close()
    server.queue.close()


@pytest.fixture
def configured(tmp_path):
    tmp_path = tmp_path / "configured"
    tmp_path.mkdir()
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(
        f"- {{name: ana, token: {ANA}, scopes: [labels]}}\n"
        f"- {{name: bo, token: {BO}, scopes: [labels]}}\n"
        f"- {{name: ci, token: {READER}, scopes: [read]}}\n"
    )
    spool_items(tmp_path, [item(i) for i in range(3)])
    cfg = parse_config({**raw_config(tmp_path), "auth": {"tokens_file": str(tokens)}})
    server = AnnotateServer(cfg, WorkQueue(cfg), port=0).start()
    yield server
    server.close()
    server.queue.close()


def session(server, headers):
    got = requests.post(server.url + "api/session", headers=headers, timeout=5)
    assert got.status_code == 200, got.text
    return {**headers, "X-Shadowd-Session": got.json()["session"]}, got.json()


def test_the_page_is_static_and_strict(page):
    server, _ = page
    for path, ctype in (("", "text/html"), ("app.js", "text/javascript"), ("app.css", "text/css")):
        r = requests.get(server.url + path, timeout=5)
        assert r.status_code == 200 and r.headers["Content-Type"].startswith(ctype)
        csp = r.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
        assert r.headers["X-Content-Type-Options"] == "nosniff"
    html = requests.get(server.url, timeout=5).text
    assert "http://" not in html and "https://" not in html  # nothing from elsewhere: works offline
    js = requests.get(server.url + "app.js", timeout=5).text
    assert "innerHTML" not in js and "insertAdjacentHTML" not in js and "eval(" not in js


def test_every_api_route_needs_a_labels_token(page, configured):
    server, _ = page
    for method, path in (("POST", "session"), ("GET", "status"), ("POST", "next"), ("POST", "label")):
        r = requests.request(method, server.url + "api/" + path, timeout=5)
        assert r.status_code == 401 and "scope labels" in r.json()["error"], (path, r.text)
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
    r = requests.post(server.url + "api/session", headers={"Authorization": "Bearer " + "x" * 40}, timeout=5)
    assert r.status_code == 401 and "not recognised" in r.json()["error"]
    r = requests.post(configured.url + "api/session", headers={"Authorization": f"Bearer {READER}"}, timeout=5)
    assert r.status_code == 403 and "'ci' lacks scope labels" in r.json()["error"]
    assert READER not in r.text


def test_with_configured_tokens_the_token_names_the_annotator_and_owns_its_session(configured):
    ana, info = session(configured, {"Authorization": f"Bearer {ANA}"})
    assert info["annotator"] == "ana"
    got = requests.post(configured.url + "api/next", headers=ana, timeout=5).json()["item"]
    stolen = {**ana, "Authorization": f"Bearer {BO}"}
    r = requests.post(configured.url + "api/label", headers=stolen, json={"request_id": got["request_id"], "answer": 1})
    assert r.status_code == 403 and "another token" in r.json()["error"]
    r = requests.post(configured.url + "api/label", headers=ana, json={"request_id": got["request_id"], "answer": 1})
    assert r.status_code == 200 and r.json()["label"]["annotator"] == "ana"


def test_bad_input_gets_a_4xx_with_a_reason(page):
    server, auth = page
    h, _ = session(server, auth)
    rid = requests.post(server.url + "api/next", headers=h, timeout=5).json()["item"]["request_id"]
    cases = [
        (b"{not json", 400, "not valid JSON"),
        (b"[1]", 400, "JSON object"),
        (json.dumps({"answer": 1}).encode(), 422, "request_id"),
        (json.dumps({"request_id": rid}).encode(), 422, "answer"),
        (json.dumps({"request_id": rid, "answer": 3}).encode(), 422, "not a class index in 0..2"),
        (json.dumps({"request_id": rid, "answer": "[/x]<b>"}).encode(), 422, "not a class index"),
        (json.dumps({"request_id": "r2", "answer": 1}).encode(), 409, "no longer holds item 'r2'"),
        (b"x" * (MAX_BODY_BYTES + 1), 413, "bytes"),
    ]
    for body, status, reason in cases:
        r = requests.post(server.url + "api/label", headers={**h, "Content-Type": "application/json"}, data=body)
        assert r.status_code == status and reason in r.json()["error"], (body[:40], r.status_code, r.text)
    r = requests.post(server.url + "api/next", headers={**auth, "X-Shadowd-Session": "nope"}, timeout=5)
    assert r.status_code == 409 and "unknown session" in r.json()["error"]
    assert requests.put(server.url + "api/next", headers=h, timeout=5).status_code == 405
    assert requests.get(server.url + "nope", timeout=5).status_code == 404
    # nothing above was labelled: the item is still this session's
    r = requests.post(server.url + "api/label", headers=h, json={"request_id": rid, "answer": 2}, timeout=5)
    assert r.status_code == 200


def test_a_host_that_is_not_loopback_is_refused(page):
    """DNS rebinding: a site that points its name at 127.0.0.1 gets nothing, not even the page."""
    server, _ = page
    r = requests.get(server.url, headers={"Host": "evil.example"}, timeout=5)
    assert r.status_code == 421
    assert requests.get(server.url, headers={"Host": f"localhost:{server.port}"}, timeout=5).status_code == 200


def test_a_daemon_restart_that_replaces_the_generated_token_is_followed(page, tmp_path):
    server, old = page
    assert requests.post(server.url + "api/session", headers=old, timeout=5).status_code == 200
    new = write_generated_token(tmp_path / "generated", fresh=True)
    assert requests.post(server.url + "api/session", headers=old, timeout=5).status_code == 401
    r = requests.post(server.url + "api/session", headers={"Authorization": f"Bearer {new}"}, timeout=5)
    assert r.status_code == 200


def test_the_item_view_keeps_hostile_values_as_strings(tmp_path):
    hostile = item(0).model_copy(
        update={
            "features": {"note": "<img src=x onerror=alert(1)>", "n": {"a": [1, "</script>"]}},
            "detail": "<b>x</b>",
        }
    )
    spool_items(tmp_path, [hostile])
    cfg = parse_config(raw_config(tmp_path, class_names=["zero", "one", "two"]))
    server = serve_page(cfg)
    try:
        h, _ = session(server, {"Authorization": "Bearer " + (tmp_path / "auth" / "token").read_text().strip()})
        view = requests.post(server.url + "api/next", headers=h, timeout=5).json()["item"]
    finally:
        server.close()
        server.queue.close()
    assert view["features"] == [["note", "<img src=x onerror=alert(1)>"], ["n", '{"a": [1, "</script>"]}']]
    assert view["detail"] == "<b>x</b>"
    assert view["inputs"]["kind"] == "image" and view["inputs"]["shape"] == [8, 8, 1]
    assert view["classes"] == ["zero", "one", "two"]
    assert view["models"][0]["probabilities"][0] == [1, "one", 0.7]
