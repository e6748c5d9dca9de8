"""The command line as a user runs it: real subprocesses, real simulator on loopback."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
from pathlib import Path

import pytest

from batchscope.simulator.datadog import FakeDatadog
from batchscope.simulator.engine import FakeEngine
from batchscope.simulator.server import RunningSimulator, start_simulator
from helpers import cli_env, wait_until

SECRET = "s3cr3t-api-key-value"



async def batchscope(*args: str, timeout: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "batchscope", *args, env=cli_env(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def write_config(tmp_path: Path, sim: RunningSimulator, extra: str = "") -> Path:
    path = tmp_path / "batchscope.toml"
    path.write_text(f"""
poll_interval = 0.05
state_path = ":memory:"
[[engines]]
name = "prod"
url = "{sim.engine_url}"
[[datadog]]
name = "ci"
url = "{sim.datadog_url}"
api_key = "{SECRET}"
app_key = "app-key-value"
{extra}
""")
    return path


async def test_check_config_prints_redacted_settings(tmp_path: Path) -> None:
    """check-config validates, prints the effective settings, and never prints a secret."""
    async with await start_simulator() as sim:
        code, out, err = await batchscope("check-config", "--config",
                                          str(write_config(tmp_path, sim)))
    assert code == 0, err
    settings = json.loads(out)
    assert settings["engines"][0]["name"] == "prod"
    assert settings["datadog"][0]["api_key"] == "**********"
    assert SECRET not in out and SECRET not in err


@pytest.mark.parametrize(
    ("toml", "setting"),
    [
        ('poll_interval = -1\n', "poll_interval"),
        ('[http]\nprot = 1\n', "http.prot"),
        ('[[engines]]\nname = "x"\nurl = "not a url"\n', "engines.0.url"),
        ('[[datadog]]\nname = "d"\napi_key = "' + SECRET + '"\nsite = "nowhere.example"\n',
         "datadog.0"),
        ('this is not toml', "batchscope.toml"),
    ],
    ids=["negative duration", "unknown key", "bad url", "bad site", "syntax"],
)
async def test_invalid_configuration_exits_78(tmp_path: Path, toml: str, setting: str) -> None:
    """Invalid settings: exit 78, one line naming the setting, the secret never echoed."""
    path = tmp_path / "batchscope.toml"
    path.write_text(toml)
    for command in ("check-config", "run", "once"):
        code, out, err = await batchscope(command, "--config", str(path))
        assert code == 78, (command, err)
        assert setting in err
        assert SECRET not in err and SECRET not in out


async def test_usage_error_exits_2() -> None:
    """An unknown command or option is a usage error."""
    assert (await batchscope("frobnicate"))[0] == 2
    assert (await batchscope("run", "--no-such-flag"))[0] == 2


async def test_once_prints_every_batch(tmp_path: Path) -> None:
    """once polls every target one time and prints the batches (JSON with --json)."""
    engine, datadog = FakeEngine(), FakeDatadog(api_key=SECRET, app_key="app-key-value")
    running = engine.create_batch("instance-migration", total_jobs=4)
    failing = engine.create_batch("instance-deletion", total_jobs=4)
    engine.fail_jobs(failing, 1)
    ci = datadog.create_batch()
    datadog.finish(ci, "passed")
    async with await start_simulator(engine=engine, datadog=datadog) as sim:
        config = write_config(tmp_path, sim, f'batch_ids = ["{ci}"]')
        code, out, err = await batchscope("once", "--json", "--config", str(config))
        assert code == 0, err
        states = {row["batch_id"]: row["state"] for row in json.loads(out)}
        assert states == {running: "in_progress", failing: "failed", ci: "passed"}
        code, table, _ = await batchscope("once", "--config", str(config))
        assert code == 0 and running in table and "SOURCE" in table
        await sim.close()
        code, _, err = await batchscope("once", "--config", str(config))
        assert code == 1  # a target failed
        assert SECRET not in err


async def test_wait_exit_codes(tmp_path: Path) -> None:
    """wait: 0 when the batch passes, 1 when it fails, 3 on timeout, 2 for a bad target."""
    datadog = FakeDatadog(api_key=SECRET, app_key="app-key-value")
    good, bad, slow = datadog.create_batch(), datadog.create_batch(), datadog.create_batch()
    datadog.finish(good, "passed")
    datadog.finish(bad, "failed")
    engine = FakeEngine()
    done = engine.create_batch(total_jobs=1)
    engine.complete_jobs(done, 1)
    engine.finish(done)
    async with await start_simulator(engine=engine, datadog=datadog) as sim:
        config = str(write_config(tmp_path, sim))
        assert (await batchscope("wait", "--config", config, good))[0] == 0
        assert (await batchscope("wait", "--config", config, bad))[0] == 1
        code, _, err = await batchscope("wait", "--config", config, "--timeout", "0.3", slow)
        assert code == 3 and "in_progress" in err
        assert (await batchscope("wait", "--config", config, "--target", "nope", good))[0] == 2
        assert (await batchscope("wait", "--config", config, "--source", "engine", done))[0] == 0
        code, out, _ = await batchscope("wait", "--config", config, "--source", "engine",
                                        "no-such-batch")
        assert code == 1 and "vanished" in out


async def test_interrupted_wait_is_not_success(tmp_path: Path) -> None:
    """Ctrl-C during `wait` exits 130, never 0: `batchscope wait ID && deploy` must stop."""
    datadog = FakeDatadog(api_key=SECRET, app_key="app-key-value")
    slow = datadog.create_batch()
    async with await start_simulator(datadog=datadog) as sim:
        config = str(write_config(tmp_path, sim))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "batchscope", "wait", "--config", config, slow, env=cli_env(),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        await wait_until(lambda: any(slow in r.path_qs for r in datadog.requests),
                         timeout=30, what="first poll")
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 30) == 130


async def test_wait_rejects_a_malformed_batch_id(tmp_path: Path) -> None:
    """A batch id that cannot exist is a usage error at once, not a 60 s wait for vanished."""
    async with await start_simulator() as sim:
        code, _, err = await batchscope("wait", "--config", str(write_config(tmp_path, sim)),
                                        "bad id/..")
    assert code == 2 and "batch id must match" in err


async def test_demo_on_a_busy_port_exits_78() -> None:
    """demo on a port another process holds: one clear line, exit 78, no traceback, and a
    newcomer is told which flag or variable picks another port."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        code, _, err = await batchscope("demo", "--port", str(port), "--duration", "5")
    assert code == 78
    assert f"cannot listen on 127.0.0.1:{port}" in err and "Traceback" not in err
    assert f"--port {port + 1}" in err and "BATCHSCOPE_HTTP__PORT" in err


async def test_demo_reads_the_settings_sources_and_logs_json_on_a_pipe() -> None:
    """BATCHSCOPE_HTTP__PORT moves the demo's listener, as it does run's; with stdout on a
    pipe its log lines are JSON (the same rule as run), so `batchscope demo | jq` works."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "batchscope", "demo", "--duration", "30",
        env={**cli_env(), "BATCHSCOPE_HTTP__PORT": str(port)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    lines: list[dict[str, object]] = []

    async def read() -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            lines.append(json.loads(raw))  # a console line would fail here

    reader = asyncio.create_task(read())
    try:
        await wait_until(lambda: any(e["event"] == "batch.transition" for e in lines),
                         timeout=20)
        started = next(e for e in lines if e["event"] == "daemon.started")
        assert started["http_port"] == port and started["http_host"] == "127.0.0.1"
    finally:
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.wait(), 15)
        reader.cancel()

