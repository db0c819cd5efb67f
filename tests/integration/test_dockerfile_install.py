"""The Dockerfile's install steps, run in a fresh virtual environment.

No Docker engine runs here, so this does what the builder stage does, in a
venv made with plain ``python -m venv`` (never ``--system-site-packages``,
which would let the project venv's packages hide a missing dependency), from
a build context holding only what the Dockerfile COPYs under .dockerignore.

What it proves, and why not the whole install: a full install (torch, Ray,
scipy, ...) takes over a minute and 1.6 GB here, so it is split in two:

1. Resolution of everything, for real: ``pip install --dry-run --report`` of
   the Dockerfile's torch step plus its project step, in the fresh venv.
   This fails on any unsatisfiable or conflicting pin, and shows that the
   torch it resolves is the CPU build (no ``nvidia-*`` packages).
2. Installation, for real: the project itself as the Dockerfile installs it
   (a wheel built from the context), plus the packages the command line
   needs at start-up, pinned to the versions step 1 resolved; then the
   console script runs: ``shadowd --help`` and ``shadowd validate-config``.
   That proves the entry point, the packaged modules and the lazy imports
   (no torch or Ray needed to start the CLI).

The torch step's ``--index-url`` (download.pytorch.org) is not reachable
here; pip's configured index serves the same CPU wheel, so the test drops
that one flag and checks the resolved build instead.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.unit.test_dockerfile import dockerignore_context, parse_dockerfile

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

# What `shadowd --help` and `validate-config` import at start-up; their own
# requirements are followed from the package metadata.
CLI_STARTUP_ROOTS = ("typer", "pydantic", "pyyaml")


def _canon(name: str) -> str:
    return name.lower().replace("_", "-")


def _builder_pip_steps() -> list[list[str]]:
    """The builder stage's `pip install` commands, ARG defaults substituted."""
    instructions = parse_dockerfile((ROOT / "Dockerfile").read_text())
    args = {}
    steps = []
    for i in instructions:
        if i.stage != 0:
            continue
        if i.keyword == "ARG" and "=" in i.args:
            k, v = i.args.split("=", 1)
            args[k] = v
        if i.keyword == "RUN":
            for part in i.args.split("&&"):
                text = part.strip()
                for k, v in args.items():
                    text = text.replace("${" + k + "}", v)
                argv = shlex.split(text)
                if argv[:2] == ["pip", "install"]:
                    steps.append(argv[2:])
    return steps


def _run(argv: list[str], cwd: Path, timeout_s: float) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"))}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s)
    assert result.returncode == 0, f"{shlex.join(argv)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def requirement_closure(roots: tuple[str, ...], lookup) -> dict[str, str]:
    """name -> version of ``roots`` and everything they require (markers evaluated
    for this interpreter, no extras); ``lookup(name)`` gives (version, requires)."""
    out: dict[str, str] = {}
    todo = list(roots)
    while todo:
        name = _canon(todo.pop())
        if name in out:
            continue
        version, requires = lookup(name)
        out[name] = version
        for line in requires:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return out


def _installed(name: str) -> tuple[str, list[str]]:
    dist = importlib.metadata.distribution(name)
    return dist.version, dist.requires or []


def _context(tmp_path: Path) -> Path:
    """The build context, as `COPY` sees it, at WORKDIR /src."""
    src = tmp_path / "src"
    for rel in dockerignore_context(ROOT):
        if rel in ("pyproject.toml", "README.md") or rel.startswith("shadowd/"):
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    return src


def _fresh_venv(tmp_path: Path) -> list[str]:
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path, 120)
    return [str(venv / "bin" / "python"), "-m", "pip"]


@pytest.fixture(scope="module")
def steps() -> tuple[list[str], list[str]]:
    found = _builder_pip_steps()
    assert len(found) == 2, f"expected the torch step and the project step, got {found}"
    torch_step, project_step = found
    assert any(a.startswith("torch==") for a in torch_step) and project_step[-1] == "."
    return torch_step, project_step


@pytest.mark.timeout(300)
def test_the_image_s_project_install_gives_a_working_cli(tmp_path, steps):
    """Part 2 of the module docstring."""
    _, project_step = steps
    src = _context(tmp_path)
    pip = _fresh_venv(tmp_path)
    _run([*pip, "install", "--quiet", "--no-deps", *project_step[:-1], "."], src, 300)
    startup = requirement_closure(CLI_STARTUP_ROOTS, _installed)
    _run([*pip, "install", "--quiet", "--no-deps", *sorted(f"{n}=={v}" for n, v in startup.items())], src, 300)

    venv_bin = Path(pip[0]).parent
    assert "validate-config" in _run([str(venv_bin / "shadowd"), "--help"], tmp_path, 60).stdout
    ok = _run([str(venv_bin / "shadowd"), "validate-config", str(ROOT / "deploy/serve/shadowd.yaml")], tmp_path, 60)
    assert "ok (classification" in ok.stdout
    # The venv's shadowd is the installed copy, not the project tree.
    where = _run([pip[0], "-c", "import shadowd; print(shadowd.__file__)"], tmp_path, 60).stdout
    assert str(venv_bin.parent) in where


@pytest.mark.timeout(400)
def test_the_image_s_dependencies_resolve_with_cpu_torch(tmp_path, steps):
    """Part 1 of the module docstring. Marked integration: it moves about 1 GB of
    wheels through pip and takes a minute or more on this machine."""
    torch_step, project_step = steps
    src = _context(tmp_path)
    pip = _fresh_venv(tmp_path)
    torch_args = [a for a in torch_step if a != "--index-url" and not a.startswith("http")]
    report_path = tmp_path / "report.json"
    _run([*pip, "install", "--dry-run", "--quiet", "--report", str(report_path), *torch_args, *project_step], src, 400)
    resolved = {
        _canon(p["metadata"]["name"]): p["metadata"]["version"] for p in json.loads(report_path.read_text())["install"]
    }
    pinned = next(a for a in torch_args if a.startswith("torch==")).split("==")[1]
    assert resolved["torch"].split("+")[0] == pinned
    assert resolved["torch"].partition("+")[2] in ("", "cpu")
    assert not [n for n in resolved if n.startswith("nvidia-")], "a CUDA torch build was resolved"
    # Every requirement of the project (and theirs) is in the resolution.
    report = {_canon(p["metadata"]["name"]): p["metadata"] for p in json.loads(report_path.read_text())["install"]}
    closure = requirement_closure(("shadowd",), lambda n: (report[n]["version"], report[n].get("requires_dist", [])))
    assert closure.keys() <= resolved.keys()
    assert {"ray", "torch", "scipy", "kafka-python", "prometheus-client"} <= closure.keys()
