"""Rendering the report and the `shadowd report` command on a persisted window (no daemon)."""

import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from shadowd.cli import app
from shadowd.compare.comparator import Comparator
from shadowd.compare.render import render_report
from shadowd.compare.report import CheckStatus, ShadowReport, Verdict
from shadowd.config import parse_config
from shadowd.errors import ShadowdError
from shadowd.records import ModelOutput, Pair

RAW = {
    "task": "classification",
    "models": {
        "production": {"name": "prod-v1", "kind": "python", "target": "m:p", "input_shape": [3]},
        "candidate": {"name": "cand-v2", "kind": "python", "target": "m:c", "input_shape": [3]},
    },
    "slices": [{"name": "dark", "where": {"field": "brightness", "op": "lt", "value": 0.3}}],
}


def window(tmp_path, n, same_share, seed=0):
    """A saved window where the candidate copies production on `same_share` of pairs."""
    cfg = parse_config({**RAW, "data_dir": str(tmp_path)})
    comp = Comparator(cfg)
    rng = np.random.default_rng(seed)
    for i in range(n):
        p = rng.dirichlet(np.ones(3))
        q = p if rng.random() < same_share else rng.dirichlet(np.ones(3))
        comp.add(
            Pair(
                request_id=str(i),
                ts=0.0,
                features={"brightness": float(rng.random())},
                production=ModelOutput(role="production", model="p", values=p.tolist(), latency_s=0.004),
                candidate=ModelOutput(role="candidate", model="c", values=q.tolist(), latency_s=0.004),
            )
        )
    comp.save()
    return comp.report()


def test_json_format_is_the_report(tmp_path):
    rep = window(tmp_path, 300, 0.5)
    assert json.loads(render_report(rep, "json")) == rep.to_json()
    assert ShadowReport.from_json(json.loads(render_report(rep, "json"))).to_json() == rep.to_json()


def test_table_and_markdown_show_verdict_slices_and_checks(tmp_path):
    rep = window(tmp_path, 600, 0.5)
    dark = rep.slices["dark"]
    flips = dark.flips / dark.compared
    for fmt in ("table", "markdown"):
        text = render_report(rep, fmt)
        assert f"gate: {rep.gate.verdict.value}" in text
        assert f"{100 * flips:.2f}%" in text
        for c in rep.checks:
            assert c.check in text
        assert "holm" in text
    md = render_report(rep, "markdown")
    check_rows = [
        line
        for line in md.splitlines()
        if line.startswith("| ") and (" pairs |" in line or " labels |" in line) and not line.startswith("| slice")
    ]
    assert len(check_rows) == len(rep.checks)
    with pytest.raises(ValueError, match="unknown report format"):
        render_report(rep, "html")


def test_verdict_and_status_codes_in_one_place():
    assert [Verdict(v).exit_code for v in ("PASS", "FAIL", "INCONCLUSIVE")] == [0, 1, 3]
    assert [Verdict(v).gauge_value for v in ("PASS", "FAIL", "INCONCLUSIVE")] == [0, 1, 2]
    assert [CheckStatus(v).gauge_value for v in ("pass", "fail", "inconclusive")] == [0, 1, 2]


def test_a_report_of_another_schema_version_or_shape_is_refused(tmp_path):
    data = window(tmp_path, 50, 1.0).to_json()
    with pytest.raises(ShadowdError, match="schema_version 1; this shadowd reads 2"):
        ShadowReport.from_json({**data, "schema_version": 1})
    with pytest.raises(ShadowdError, match="not a shadowd report: gate"):
        ShadowReport.from_json({k: v for k, v in data.items() if k != "gate"})


@pytest.mark.parametrize(
    "n,same_share,verdict,code",
    [
        (3000, 1.0, "PASS", 0),
        (800, 0.0, "FAIL", 1),  # a flip rate no retrain produces: operationally broken
        (800, 0.3, "REVIEW", 3),  # different beyond the floor, no labels yet: not decided
        (50, 1.0, "INCONCLUSIVE", 3),
    ],
)
def test_cli_gate_exit_code_from_data_dir(tmp_path, n, same_share, verdict, code):
    rep = window(tmp_path, n, same_share)
    assert rep.gate.verdict == verdict
    result = CliRunner().invoke(app, ["report", "--data-dir", str(tmp_path), "--gate", "--format", "json"])
    assert result.exit_code == code, result.output
    assert json.loads(result.stdout)["gate"]["verdict"] == verdict


def test_cli_gate_for_a_named_candidate_refuses_another_ones_verdict(tmp_path):
    rep = window(tmp_path, 3000, 1.0)
    assert rep.gate.verdict == "PASS"
    mine = rep.models["candidate"]
    args = ["report", "--data-dir", str(tmp_path), "--gate", "-f", "json"]
    assert CliRunner().invoke(app, [*args, "--candidate", mine]).exit_code == 0
    other = CliRunner().invoke(app, [*args, "--candidate", "digits-v3"])
    assert other.exit_code == 2 and other.stdout == ""  # a PASS about another model is no verdict for this one
    assert f"holds no test of candidate 'digits-v3'; it holds {mine}" in other.stderr


def test_cli_runs_another_configs_checks(tmp_path):
    window(tmp_path, 800, 0.3)
    cfg_path = tmp_path / "strict.yaml"
    lenient = {**RAW, "checks": [{"type": "candidate_failure_rate", "name": "errors", "slices": ["overall"]}]}
    cfg_path.write_text(yaml.safe_dump(lenient))
    result = CliRunner().invoke(
        app, ["report", "--data-dir", str(tmp_path), "-c", str(cfg_path), "-f", "json", "--gate"]
    )
    out = json.loads(result.stdout)
    assert {c["check"] for c in out["checks"]} == {"errors"}
    assert result.exit_code == 0


def test_cli_errors_exit_2(tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["report", "--data-dir", str(tmp_path)])
    assert r.exit_code == 2 and "no comparator state" in r.output
    window(tmp_path, 10, 1.0)
    r = runner.invoke(app, ["report", "--data-dir", str(tmp_path), "--format", "html"])
    assert r.exit_code == 2 and "--format" in r.output
    r = runner.invoke(app, ["report", "--data-dir", str(tmp_path), "--reset"])
    assert r.exit_code == 2 and "--url" in r.output


# --- `shadowd report --url` with API tokens (issue 12) ---

READ = "read-" + "r" * 40
ADMIN = "admin-" + "a" * 40


class _TokenCheckingDaemon:
    """A local HTTP server standing in for a daemon's /shadow/* routes: it checks the bearer
    token like the ingress (read for the report, admin for reset) and records what it got."""

    def __init__(self, report: dict):
        import http.server
        import threading

        seen = self.seen = []
        readers = self.readers = {READ, ADMIN}
        admins = self.admins = {ADMIN}

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self, scope_tokens: set[str], body: dict) -> None:
                auth = self.headers.get("Authorization", "")
                seen.append((self.command, self.path, auth))
                token = auth.removeprefix("Bearer ")
                if not auth:
                    status, body = 401, {"error": f"missing token: {self.command} {self.path} needs scope read"}
                elif token not in scope_tokens:
                    status, body = 403, {"error": "token 'reader' lacks scope admin: POST /shadow/reset"}
                else:
                    status = 200
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._answer(readers, report)

            def do_POST(self) -> None:
                self._answer(admins, {"status": "reset"})

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def daemon(tmp_path):
    d = _TokenCheckingDaemon(window(tmp_path / "state", 50, 1.0).to_json())
    yield d
    d.server.shutdown()


def test_cli_report_sends_the_token_from_env_file_or_the_generated_one(tmp_path, daemon, monkeypatch):
    runner = CliRunner()
    monkeypatch.delenv("SHADOWD_TOKEN", raising=False)
    monkeypatch.delenv("SHADOWD_TOKEN_FILE", raising=False)
    r = runner.invoke(app, ["report", "--url", daemon.url])
    assert r.exit_code == 2 and "HTTP 401: missing token" in r.output and "--token-file" in r.output

    r = runner.invoke(app, ["report", "--url", daemon.url, "-f", "json"], env={"SHADOWD_TOKEN": READ})
    assert r.exit_code == 0 and json.loads(r.stdout)["gate"]["verdict"]
    (tmp_path / "token").write_text(ADMIN + "\n")
    r = runner.invoke(app, ["report", "--url", daemon.url, "--token-file", str(tmp_path / "token"), "--reset"])
    assert r.exit_code == 0 and "new test window started" in r.output
    assert daemon.seen[-1] == ("POST", "/shadow/reset", f"Bearer {ADMIN}")

    # A loopback daemon without configured tokens: -c CONFIG finds its generated token.
    from shadowd.serving.auth import write_generated_token

    cfg_path = tmp_path / "shadowd.yaml"
    cfg_path.write_text(yaml.safe_dump({**RAW, "data_dir": "data"}))
    generated = write_generated_token(tmp_path / "data", fresh=True)
    daemon.readers.add(generated)
    r = runner.invoke(app, ["report", "--url", daemon.url, "-c", str(cfg_path)])
    assert r.exit_code == 0 and daemon.seen[-1][2] == f"Bearer {generated}"
    assert generated not in r.output


def test_cli_report_reset_with_a_read_token_is_refused_with_the_daemons_reason(daemon):
    r = CliRunner().invoke(app, ["report", "--url", daemon.url, "--reset"], env={"SHADOWD_TOKEN": READ})
    assert r.exit_code == 2 and "HTTP 403" in r.output and "lacks scope admin" in r.output
    assert READ not in r.output
