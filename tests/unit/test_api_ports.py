"""The HTTP API served with small fakes of its ports: no daemon, no tracker, no upstream."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from batchscope.http.app import build_app
from batchscope.http.ports import ApiPorts, WatchOutcome
from batchscope.model import DATADOG_BATCH_TYPE, Source, State
from batchscope.settings import HttpSettings
from batchscope.tracker import Key, TrackedBatch

TOKEN = "api-token-for-fakes"


def record(batch_id: str, source: Source = Source.DATADOG,
           state: State = State.IN_PROGRESS) -> TrackedBatch:
    return TrackedBatch(source=source, target="ci", batch_id=batch_id,
                        batch_type=DATADOG_BATCH_TYPE, state=state, state_since=1.0,
                        first_seen=1.0, last_seen=1.0)


@dataclass
class FakePorts:
    """One object playing every port, recording what the API asked of it."""

    records: dict[str, TrackedBatch] = field(default_factory=dict)
    targets: list[str] = field(default_factory=lambda: ["ci"])
    full: bool = False
    commits: list[bool] = field(default_factory=list)
    commit_ok: bool = True
    is_healthy: bool = True
    is_ready: bool = False

    def batches(self) -> Iterator[TrackedBatch]:
        return iter(self.records.values())

    def get(self, source: Source, target: str, batch_id: str) -> TrackedBatch | None:
        return self.records.get(batch_id)

    def batches_after(self, after: Key | None) -> Iterator[TrackedBatch]:
        return iter([r for r in sorted(self.records.values(), key=lambda r: r.key)
                     if after is None or r.key > after])

    def after(self, seq: int, limit: int = 1000) -> list[dict[str, Any]]:
        return [{"seq": n} for n in range(seq + 1, min(seq + 1 + limit, 4))]

    def healthy(self) -> bool:
        return self.is_healthy

    @property
    def ready(self) -> bool:
        return self.is_ready

    def datadog_targets(self) -> list[str]:
        return self.targets

    def watch(self, target: str, batch_id: str) -> WatchOutcome:
        if batch_id in self.records:
            return WatchOutcome.ALREADY
        if self.full:
            return WatchOutcome.REFUSED
        self.records[batch_id] = record(batch_id)
        return WatchOutcome.ADDED

    def unwatch(self, target: str, batch_id: str) -> bool:
        return self.records.pop(batch_id, None) is not None

    async def commit(self) -> bool:
        self.commits.append(self.commit_ok)
        return self.commit_ok


async def client(ports: FakePorts) -> TestClient[Any, Any]:
    app = build_app(ApiPorts(batches=ports, events=ports, health=ports, watch_list=ports),
                    CollectorRegistry(), HttpSettings(api_token=TOKEN))
    c: TestClient[Any, Any] = TestClient(TestServer(app))
    await c.start_server()
    return c


AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def test_probes_read_the_health_port() -> None:
    """/healthz and /readyz answer from the health port alone."""
    ports = FakePorts(is_healthy=False, is_ready=False)
    c = await client(ports)
    try:
        assert (await c.get("/healthz")).status == 503
        assert (await c.get("/readyz")).status == 503
        ports.is_healthy = ports.is_ready = True
        assert (await c.get("/healthz")).status == 200
        assert (await c.get("/readyz")).status == 200
    finally:
        await c.close()


async def test_watch_commits_before_answering_201() -> None:
    """A new watch is committed before 201; an existing one is 200 without a commit; a
    failed commit is a 503 the CI job can retry; a full tracker is a 503 naming the cap."""
    ports = FakePorts()
    c = await client(ports)
    try:
        resp = await c.post("/api/v1/datadog/batches", json={"batch_id": "b-1"}, headers=AUTH)
        assert resp.status == 201 and (await resp.json())["batch_id"] == "b-1"
        assert ports.commits == [True]
        resp = await c.post("/api/v1/datadog/batches", json={"batch_id": "b-1"}, headers=AUTH)
        assert resp.status == 200 and ports.commits == [True]
        ports.commit_ok = False
        resp = await c.post("/api/v1/datadog/batches", json={"batch_id": "b-2"}, headers=AUTH)
        assert resp.status == 503 and "retry" in (await resp.json())["error"]
        ports.full = True
        resp = await c.post("/api/v1/datadog/batches", json={"batch_id": "b-3"}, headers=AUTH)
        assert resp.status == 503 and "max_tracked_batches" in (await resp.json())["error"]
        assert "b-3" not in ports.records
    finally:
        await c.close()


async def test_watch_list_target_choice_and_bad_ids() -> None:
    """The target comes from the watch-list port; '..' and unknown targets are refused
    and nothing is watched."""
    ports = FakePorts(targets=["ci", "nightly"])
    c = await client(ports)
    try:
        resp = await c.post("/api/v1/datadog/batches", json={"batch_id": "b-1"}, headers=AUTH)
        assert resp.status == 400 and "name one of" in (await resp.json())["error"]
        resp = await c.post("/api/v1/datadog/batches", json={"batch_id": "..", "target": "ci"},
                            headers=AUTH)
        assert resp.status == 400
        resp = await c.delete("/api/v1/datadog/batches/..?target=ci", headers=AUTH)
        assert resp.status in (400, 404)
        assert ports.records == {}
        resp = await c.post("/api/v1/datadog/batches",
                            json={"batch_id": "b-1", "target": "nightly"}, headers=AUTH)
        assert resp.status == 201
        assert (await c.delete("/api/v1/datadog/batches/b-1?target=nightly",
                               headers=AUTH)).status == 204
        assert ports.records == {}
    finally:
        await c.close()


async def test_batches_and_events_are_read_through_their_ports() -> None:
    """Listing filters what the batch reader yields; events come from the event reader."""
    ports = FakePorts(records={"a": record("a"), "b": record("b", state=State.PASSED)})
    c = await client(ports)
    try:
        rows = await (await c.get("/api/v1/batches?state=passed")).json()
        assert [r["batch_id"] for r in rows] == ["b"]
        assert [e["seq"] for e in await (await c.get("/api/v1/events?after=1")).json()] == [2, 3]
    finally:
        await c.close()


async def test_batches_are_paged_with_a_cursor_and_a_next_link() -> None:
    """limit bounds a page; Link rel=next carries an opaque cursor until the last page;
    a bad limit or a forged cursor is a 400 with an error object."""
    ports = FakePorts(records={f"b{n:02}": record(f"b{n:02}") for n in range(25)})
    c = await client(ports)
    try:
        seen: list[str] = []
        url: str | None = "/api/v1/batches?limit=10&source=datadog"
        pages = 0
        while url is not None:
            resp = await c.get(url)
            assert resp.status == 200
            seen += [r["batch_id"] for r in await resp.json()]
            pages += 1
            link = resp.headers.get("Link")
            url = None if link is None else link.split(">")[0].lstrip("<")
            if url is not None:
                assert 'rel="next"' in link  # type: ignore[operator]
        assert pages == 3 and seen == sorted(ports.records)
        assert len(await (await c.get("/api/v1/batches")).json()) == 25  # default 1000
        for bad in ("limit=0", "limit=10001", "limit=x", "cursor=%%%", "cursor=WzEsMl0"):
            resp = await c.get(f"/api/v1/batches?{bad}")
            assert resp.status == 400 and "error" in await resp.json(), bad
    finally:
        await c.close()
