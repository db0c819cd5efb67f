"""The package layering, checked at run time: every package of shadowd is imported in a
fresh interpreter, and nothing above it may come along.

`lint-imports` (``make lint``) checks the same contracts statically, from the
source; this test runs the imports for real, so an import cycle or an import
made only at run time (a plug-in registry pulling in its user) fails here too.
The layers are read from pyproject.toml, the one place they are written.
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import shadowd

ROOT = Path(__file__).resolve().parents[2]
CONTRACTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
MAIN_LAYERS = [[name.strip() for name in layer.split("|")] for layer in CONTRACTS[0]["layers"]]
# Modules the config tree's registries load: they sit just below shadowd.config.
PLUGIN_ZONE = [name.strip() for layer in CONTRACTS[1]["layers"][1:] for name in layer.split("|")]
CONFIG_RANK = next(i for i, layer in enumerate(MAIN_LAYERS) if "shadowd.config" in layer)
# Heavy dependencies the CLI must not need to start (validate-config, report, --help).
HEAVY = ("numpy", "scipy", "torch", "ray", "kafka", "sklearn", "grafana_client")


def _within(module: str, name: str) -> bool:
    return module == name or module.startswith(name + ".")


def rank(module: str) -> float:
    """Position of a module in the layers (0 is the top); plug-ins rank just below the config tree."""
    if any(_within(module, z) for z in PLUGIN_ZONE):
        return CONFIG_RANK + 0.5
    best, best_len = None, -1
    for i, layer in enumerate(MAIN_LAYERS):
        for name in layer:
            if _within(module, name) and len(name) > best_len:
                best, best_len = i, len(name)
    assert best is not None, f"{module} is in no layer of pyproject.toml's import contract"
    return float(best)


def _probe(package: str) -> list[str]:
    """Import the package and every module under it in a fresh interpreter; the shadowd modules loaded."""
    code = f"""
import importlib, json, pkgutil, sys
root = importlib.import_module({package!r})
for info in pkgutil.walk_packages(getattr(root, "__path__", []), {package!r} + "."):
    importlib.import_module(info.name)
print(json.dumps(sorted(m for m, mod in sys.modules.items()
                        if m.startswith("shadowd.") and not hasattr(mod, "__path__"))))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, f"importing {package} alone failed:\n{out.stderr[-3000:]}"
    return json.loads(out.stdout.splitlines()[-1])


def test_every_module_belongs_to_a_layer():
    for info in pkgutil.walk_packages(shadowd.__path__, "shadowd."):
        if info.name != "shadowd.__main__":
            rank(info.name)


def test_each_package_imported_alone_brings_nothing_from_above():
    packages = [name for layer in MAIN_LAYERS for name in layer]
    with ThreadPoolExecutor(2) as pool:
        loaded = dict(zip(packages, pool.map(_probe, packages), strict=True))
    upward = {pkg: [m for m in mods if rank(m) < rank(pkg) and not _within(m, pkg)] for pkg, mods in loaded.items()}
    assert {pkg: mods for pkg, mods in upward.items() if mods} == {}


@pytest.mark.parametrize("module", ["shadowd.config", "shadowd.cli"])
def test_the_config_tree_and_the_cli_load_without_the_heavy_dependencies(module):
    code = f"import sys, {module}; print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert set(out.stdout.split()) & set(HEAVY) == set()
