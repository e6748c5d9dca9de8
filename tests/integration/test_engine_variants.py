"""Engine deployments as they exist: auth, named engines, tenants, old versions, TLS."""

from __future__ import annotations

import ssl
import time
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web

from batchscope.model import Source
from batchscope.runtime.daemon import Daemon
from batchscope.settings import load_settings
from batchscope.simulator.engine import FakeEngine
from batchscope.simulator.server import start_simulator
from batchscope.sources.engine_json import parse_engine_date
from harness import free_port, running_stack
from helpers import LogLines, wait_until


def lifecycle_states(logs: LogLines, batch_id: str) -> list[str]:
    return [line["to_state"] for line in logs.events("batch.transition", batch_id=batch_id)]


@pytest.mark.parametrize(
    ("engine_kwargs", "target"),
    [
        ({"username": "monitor", "password": "s3cr3t-password"},
         {"username": "monitor", "password": "s3cr3t-password"}),
        ({"bearer_token": "s3cr3t-token"}, {"bearer_token": "s3cr3t-token"}),
    ],
    ids=["basic auth", "bearer token"],
)
async def test_authenticated_engine(logs: LogLines, engine_kwargs: dict[str, Any],
                                    target: dict[str, Any]) -> None:
    """With the right credentials batches are seen; the secret never reaches a log line."""
    engine = FakeEngine(**engine_kwargs)
    batch = engine.create_batch(total_jobs=3)
    async with running_stack(engine=engine, engine_target=target) as stack:
        await wait_until(lambda: lifecycle_states(logs, batch) == ["in_progress"])
        assert await stack.sample("batchscope_target_up", source="engine", target="prod") == 1
    assert "s3cr3t" not in logs.raw


async def test_wrong_credentials_are_an_auth_error(logs: LogLines) -> None:
    """A 401 with an empty body (the engine's way) is reason=auth, logged once."""
    engine = FakeEngine(username="monitor", password="right-password")
    async with running_stack(engine=engine, engine_target={
            "username": "monitor", "password": "s3cr3t-password"}) as stack:
        await wait_until(lambda: logs.events("target.down", target="prod"))
        down = logs.events("target.down", target="prod")
        assert len(down) == 1 and down[0]["reason"] == "auth"
        assert await stack.sample("batchscope_poll_errors_total", source="engine",
                                  target="prod", reason="auth") >= 1
        assert await stack.sample("batchscope_target_up", source="engine", target="prod") == 0
    assert "s3cr3t-password" not in logs.raw


async def test_named_engine_and_tenants(logs: LogLines) -> None:
    """A base URL ending in /engine/{name} works, and tenant_ids filter the batches."""
    engine = FakeEngine(engine_name="payments")
    mine = engine.create_batch(total_jobs=2, tenant_id="acme")
    engine.create_batch(total_jobs=2, tenant_id="other")
    async with await start_simulator(engine=engine) as sim:
        settings = load_settings(None, environ={}, overrides={
            "state_path": ":memory:", "http.host": "127.0.0.1", "http.port": free_port(),
            "engines": [{"name": "payments", "url": f"{sim.engine_url}/engine/payments",
                         "poll_interval": 0.05, "tenant_ids": ["acme"]}],
        })
        daemon = Daemon(settings)
        await daemon.start()
        try:
            await wait_until(lambda: daemon.ready)
            await wait_until(lambda: logs.events("batch.transition"))
            assert [line["batch_id"] for line in logs.events("batch.transition")] == [mine]
            assert any("tenantIdIn=acme" in r.path_qs and "/engine/payments/" in r.path_qs
                       for r in engine.requests)
        finally:
            await daemon.stop()


async def test_engine_before_7_18_without_start_time(logs: LogLines) -> None:
    """Older engines send no startTime: durations count from the first sighting."""
    engine = FakeEngine(legacy=True)
    batch = engine.create_batch(total_jobs=2)
    async with running_stack(engine=engine):
        await wait_until(lambda: lifecycle_states(logs, batch) == ["in_progress"])
        engine.complete_jobs(batch, 2)
        engine.finish(batch)
        await wait_until(lambda: lifecycle_states(logs, batch) == ["in_progress", "passed"])
        final = logs.events("batch.transition", batch_id=batch)[-1]
        assert 0 <= final["duration_seconds"] < 30


async def test_every_request_sends_max_results(logs: LogLines) -> None:
    """An engine with queryMaxResultsLimit refuses unbounded lists from an authenticated
    user (the only ones it checks); batchscope always pages."""
    engine = FakeEngine(query_max_results_limit=50, username="monitor", password="pw")
    ids = engine.create_many(120)
    async with running_stack(engine=engine,
                             engine_target={"username": "monitor", "password": "pw"}) as stack:
        await wait_until(lambda: len(logs.events("batch.transition")) == 120)
        assert {line["batch_id"] for line in logs.events("batch.transition")} == set(ids)
        lists = [r.path_qs for r in engine.requests
                 if "/batch/statistics" in r.path_qs or "/history/batch?" in r.path_qs]
        assert lists and all("maxResults=" in q for q in lists)
        assert await stack.sample("batchscope_batches", source="engine", target="prod",
                                  state="in_progress") == 120


@pytest.mark.parametrize(
    ("text", "epoch"),
    [
        ("2016-01-25T13:33:42.165+0100", 1453725222.165),
        ("2016-01-25T13:33:42.165+01:00", 1453725222.165),
        ("2016-01-25T12:33:42Z", 1453725222.0),
        ("2016-01-25T12:33:42.165000", 1453725222.165),
        ("2016-01-25T12:33", 1453725180.0),
        ("2016-01-25T07:33:42.165-0500", 1453725222.165),
    ],
)
def test_engine_date_variants(text: str, epoch: float) -> None:
    """The engine's default date format and the variants operators configure all parse."""
    assert parse_engine_date(text) == pytest.approx(epoch)


def test_engine_date_garbage_is_rejected() -> None:
    """A date that is not one is an error (the row is skipped, not the page)."""
    with pytest.raises(ValueError, match="unrecognised date"):
        parse_engine_date("yesterday")


async def test_private_ca_tls(logs: LogLines, tmp_path: Path) -> None:
    """verify_tls with ca_file trusts a private CA; without it the TLS error is a connection
    failure, not a crash."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    engine = FakeEngine()
    batch = engine.create_batch(total_jobs=1)
    root = web.Application()
    root.add_subapp("/engine-rest", engine.make_app())
    runner = web.AppRunner(root)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    port = runner.addresses[0][1]
    try:
        for name, extra in (("trusted", {"ca_file": str(ca_file)}), ("untrusted", {})):
            settings = load_settings(None, environ={}, overrides={
                "state_path": ":memory:", "http.host": "127.0.0.1", "http.port": free_port(),
                "engines": [{"name": name, "url": f"https://127.0.0.1:{port}/engine-rest",
                             "poll_interval": 0.05, **extra}],
            })
            daemon = Daemon(settings)
            await daemon.start()
            try:
                await wait_until(lambda d=daemon: d.ready)
                rec = daemon.tracker.get(Source.ENGINE, name, batch)
                if name == "trusted":
                    assert rec is not None
                else:
                    assert rec is None
                    down = logs.events("target.down", target=name)
                    assert down and down[0]["reason"] == "connection"
            finally:
                await daemon.stop()
    finally:
        await runner.cleanup()


async def test_engine_clock_skew_does_not_hide_short_batches(logs: LogLines) -> None:
    """An engine whose clock runs 10 minutes behind the daemon: a batch created and ended
    between two polls is still reported (the start watermark follows the engine's clock,
    taken from its HTTP Date header), and one that ended before the start is not."""
    skew = [-603.0]
    engine = FakeEngine(clock=lambda: time.time() + skew[0])
    old = engine.create_batch(total_jobs=1)
    engine.complete_jobs(old, 1)
    engine.finish(old)
    skew[0] = -600.0  # it ended three engine-seconds before the daemon starts
    async with running_stack(engine=engine) as stack:
        await wait_until(lambda: stack.daemon.ready)
        await wait_until(lambda: stack.daemon.tracker.get(Source.ENGINE, "prod", old))
        skew[0] += 2.0  # the engine's time moves on past the (whole-second) start watermark
        quick = engine.create_batch(total_jobs=1)
        engine.complete_jobs(quick, 1)
        engine.finish(quick)  # no await in between: only the history sweep can see it
        await wait_until(lambda: lifecycle_states(logs, quick) == ["passed"])
        assert lifecycle_states(logs, old) == []
