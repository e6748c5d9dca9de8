"""deploy/docker/Dockerfile: lints clean and keeps the promised shape (no engine needed)."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"
DOCKERIGNORE = REPO / "deploy" / "docker" / "Dockerfile.dockerignore"

Runner = Callable[..., subprocess.CompletedProcess[str]]


@dataclass
class Stage:
    image: str
    alias: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, name: str) -> list[str]:
        return [rest for op, rest in self.instructions if op == name]


def _logical_lines(text: str) -> Iterator[str]:
    """Instructions with continuation lines joined and comments dropped."""
    buffer = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or not stripped:
            continue
        if stripped.endswith("\\"):
            buffer += stripped[:-1] + " "
            continue
        yield buffer + stripped
        buffer = ""
    if buffer:
        yield buffer


def _parse() -> tuple[dict[str, str], list[Stage]]:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in _logical_lines(DOCKERFILE.read_text()):
        op, _, rest = line.partition(" ")
        op = op.upper()
        rest = rest.strip()
        if op == "FROM":
            parts = rest.split()
            parts = [p for p in parts if not p.startswith("--platform")]
            alias = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(parts[0], alias))
        elif not stages:
            if op == "ARG":
                name, _, default = rest.partition("=")
                global_args[name] = default
        else:
            stages[-1].instructions.append((op, rest))
    return global_args, stages


def _resolve(image: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), image)


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return _parse()[1]


@pytest.fixture(scope="module")
def final(stages: list[Stage]) -> Stage:
    return stages[-1]


def test_hadolint_reports_nothing(hadolint: str, runner: Runner) -> None:
    """hadolint (all rules, default severity threshold) finds no issue at all."""
    result = runner([hadolint, "--no-color", "--format", "json", str(DOCKERFILE)])
    findings = json.loads(result.stdout or "[]")
    assert findings == [], json.dumps(findings, indent=2)
    assert result.returncode == 0, result.stderr


def test_multi_stage_from_a_pinned_python_slim_base(stages: list[Stage]) -> None:
    """Two stages, both python:3.12-slim*, with an explicit tag (never latest)."""
    global_args, _ = _parse()
    assert len(stages) >= 2
    assert stages[0].alias == "builder"
    for stage in stages:
        image = _resolve(stage.image, global_args)
        name, _, tag = image.partition(":")
        assert name == "python", image
        assert tag.startswith("3.12-slim"), image
        assert tag != "latest"


def test_final_stage_runs_as_non_root(final: Stage) -> None:
    """The last USER of the final stage is uid 10001, not root."""
    users = final.args("USER")
    assert users, "final stage has no USER"
    user = users[-1].split(":")[0]
    assert user == "10001"


def test_final_stage_has_no_build_tools(final: Stage) -> None:
    """No package manager, compiler or pip install in the final stage: it only copies the venv."""
    forbidden = re.compile(
        r"\b(apt-get|apt|apk|dnf|yum|gcc|g\+\+|cc|make|build-essential|pip3?|uv)\b"
    )
    for command in final.args("RUN"):
        assert not forbidden.search(command), command
    copies = final.args("COPY")
    assert any(c.startswith("--from=builder") and "/opt/batchscope" in c for c in copies), copies
    assert not [c for c in copies if not c.startswith("--from=")], "final stage copies sources"


def test_builder_installs_the_project_into_a_venv(stages: list[Stage]) -> None:
    """The builder creates /opt/batchscope and installs the repository into it."""
    runs = " ".join(stages[0].args("RUN"))
    assert "python -m venv /opt/batchscope" in runs
    assert re.search(r"/opt/batchscope/bin/pip install [^&]*\s\.(\s|$)", runs), runs
    copied = " ".join(stages[0].args("COPY"))
    for needed in ("pyproject.toml", "README.md", "daemon"):
        assert needed in copied


def test_entrypoint_cmd_expose_env_labels(final: Stage) -> None:
    """ENTRYPOINT batchscope, CMD run --config, EXPOSE 9847, Python env, OCI labels."""
    assert [json.loads(e) for e in final.args("ENTRYPOINT")] == [["batchscope"]]
    assert [json.loads(c) for c in final.args("CMD")] == [
        ["run", "--config", "/etc/batchscope/batchscope.toml"]
    ]
    assert final.args("EXPOSE") == ["9847"]
    env = " ".join(final.args("ENV"))
    assert "PYTHONUNBUFFERED=1" in env
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "PATH=/opt/batchscope/bin:" in env
    labels = dict(
        item.split("=", 1) for label in final.args("LABEL") for item in shlex.split(label)
    )
    for key in ("title", "description", "version", "source", "licenses"):
        assert f"org.opencontainers.image.{key}" in labels, key
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"


def _healthcheck_argv(final: Stage) -> list[str]:
    checks = final.args("HEALTHCHECK")
    assert len(checks) == 1
    options, _, command = checks[0].partition("CMD")
    assert "--interval=" in options
    assert "--timeout=" in options
    argv = json.loads(command.strip())
    assert isinstance(argv, list)
    return [str(a) for a in argv]


class _Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        code = self.status if self.path == "/healthz" else 404
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.mark.parametrize(("status", "exit_code"), [(200, 0), (503, 1)])
def test_healthcheck_command_uses_stdlib_and_reflects_healthz(
    final: Stage, status: int, exit_code: int
) -> None:
    """The HEALTHCHECK is a stdlib-only python one-liner: 0 for a 200 /healthz, else non-zero.

    The exact command from the Dockerfile runs against a loopback server standing in for
    the daemon (only the port is changed, 9847 may be taken here).
    """
    argv = _healthcheck_argv(final)
    assert argv[:2] == ["python", "-c"]
    code = argv[2]
    assert "urllib.request" in code
    assert "http://127.0.0.1:9847/healthz" in code
    imported = set(re.findall(r"import ([\w., ]+?)(?:;|$)", code))
    modules = {m.strip() for group in imported for m in group.split(",")}
    assert modules <= {"sys", "urllib.request", "urllib"}, modules

    handler = type("Handler", (_Health,), {"status": status})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        local = code.replace("127.0.0.1:9847", f"127.0.0.1:{port}")
        result = subprocess.run(
            [sys.executable, "-c", local], capture_output=True, text=True, timeout=30, check=False
        )
    finally:
        server.shutdown()
        server.server_close()
    assert (result.returncode == 0) == (exit_code == 0), result.stderr


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.rstrip("/")
        candidates = [path] + [str(p) for p in Path(path).parents if str(p) != "."]
        if any(
            fnmatch.fnmatch(c, pat) or fnmatch.fnmatch(c, pat.replace("**/", ""))
            for c in candidates
        ):
            ignored = not negate
    return ignored


def test_dockerignore_sends_only_what_the_build_copies(stages: list[Stage]) -> None:
    """Dockerfile.dockerignore (BuildKit) keeps every COPY source and drops the rest."""
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for copy in stages[0].args("COPY"):
        if copy.startswith("--from="):
            continue
        sources = copy.split()[:-1]
        for source in sources:
            assert not _ignored(source.rstrip("/"), patterns), source
    assert not _ignored("daemon/batchscope/cli.py", patterns)
    for unwanted in (".git", "tests/unit/test_sdnotify.py", "deploy/docker/Dockerfile", ".ci/run"):
        assert _ignored(unwanted, patterns), unwanted
    assert _ignored("daemon/batchscope/__pycache__", patterns)
