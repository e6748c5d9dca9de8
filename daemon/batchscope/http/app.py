"""The HTTP server: metrics, probes, the read API and the Datadog watch-list API.

Handlers only read the tracker or call the daemon's synchronous watch methods; none of
them does upstream I/O.
"""

from __future__ import annotations

import hmac
import re
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from batchscope import __version__
from batchscope.model import Source, State
from batchscope.tracker import TrackedBatch

if TYPE_CHECKING:  # import cycle: the daemon builds this app
    from batchscope.runtime.daemon import Daemon

DAEMON: web.AppKey[Daemon] = web.AppKey("daemon")
BATCH_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

LANDING = """<!doctype html>
<html><head><meta charset="utf-8"><title>batchscope</title></head>
<body><h1>batchscope {version}</h1>
<p>Watches long-running batches and reports their state changes.</p>
<ul>
<li><a href="/metrics">/metrics</a> &mdash; Prometheus metrics</li>
<li><a href="/api/v1/batches">/api/v1/batches</a> &mdash; tracked batches</li>
<li><a href="/api/v1/events">/api/v1/events</a> &mdash; recent events</li>
<li><a href="/healthz">/healthz</a> &middot; <a href="/readyz">/readyz</a></li>
</ul></body></html>
"""


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json"
    )


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


def batch_view(rec: TrackedBatch) -> dict[str, Any]:
    counts: dict[str, Any] = {}
    if rec.jobs is not None:
        j = rec.jobs
        counts = {"total_jobs": j.total, "jobs_created": j.created,
                  "completed_jobs": j.completed, "remaining_jobs": j.remaining,
                  "failed_jobs": j.failed}
    elif rec.result_counts is not None:
        c = rec.result_counts
        counts = {"results_total": c.total, "results_passed": c.passed,
                  "results_failed": c.failed, "results_in_progress": c.in_progress}
    view: dict[str, Any] = {
        "source": rec.source.value, "target": rec.target, "batch_id": rec.batch_id,
        "batch_type": rec.batch_type, "state": rec.state.value,
        "state_since": rec.state_since, "first_seen": rec.first_seen,
        "last_seen": rec.last_seen, "counts": counts,
    }
    if rec.raw_status is not None:
        view["upstream_status"] = rec.raw_status
    return view


async def index(request: web.Request) -> web.Response:
    return web.Response(text=LANDING.format(version=__version__), content_type="text/html")


async def healthz(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    if daemon.healthy():
        return _json({"status": "ok"})
    return _json({"status": "poll loop stuck"}, 503)


async def readyz(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    if daemon.ready:
        return _json({"status": "ready"})
    return _json({"status": "starting: not every target has been polled yet"}, 503)


async def list_batches(request: web.Request) -> web.Response:
    tracker = request.app[DAEMON].tracker
    query = request.query
    source, target, state = query.get("source"), query.get("target"), query.get("state")
    if source is not None and source not in {s.value for s in Source}:
        return _error(400, f"unknown source {source!r}; use engine or datadog")
    if state is not None and state not in {s.value for s in State}:
        return _error(400, f"unknown state {state!r}")
    rows = [
        batch_view(rec) for rec in tracker.records.values()
        if (source is None or rec.source.value == source)
        and (target is None or rec.target == target)
        and (state is None or rec.state.value == state)
    ]
    return _json(rows)


async def list_events(request: web.Request) -> web.Response:
    buffer = request.app[DAEMON].events
    try:
        after = int(request.query.get("after", "0"))
        limit = int(request.query.get("limit", "1000"))
    except ValueError:
        return _error(400, "after and limit must be integers")
    if limit < 1 or limit > 10_000:
        return _error(400, "limit must be between 1 and 10000")
    return _json(buffer.after(after, limit))


def _authorised(request: web.Request) -> web.Response | None:
    """None when the request carries the configured bearer token, else the refusal."""
    token = request.app[DAEMON].settings.http.api_token
    if token is None:
        return _error(403, "write endpoints are disabled: set http.api_token "
                           "(BATCHSCOPE_HTTP__API_TOKEN) to enable them")
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    expected = token.get_secret_value().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
        return web.Response(
            body=orjson.dumps({"error": "missing or wrong bearer token"}), status=401,
            content_type="application/json", headers={"WWW-Authenticate": "Bearer"},
        )
    return None


async def add_datadog_batch(request: web.Request) -> web.Response:
    if (refusal := _authorised(request)) is not None:
        return refusal
    daemon = request.app[DAEMON]
    limit = daemon.settings.http.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        return _error(413, f"body larger than {limit} bytes")
    try:
        raw = await request.read()  # the whole body, however it was split; capped by the app
    except web.HTTPRequestEntityTooLarge:
        return _error(413, f"body larger than {limit} bytes")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _error(400, "body is not valid JSON")
    if not isinstance(body, dict):
        return _error(400, "body must be a JSON object")
    unknown = set(body) - {"batch_id", "target"}
    if unknown:
        return _error(400, f"unknown field(s): {', '.join(sorted(unknown))}")
    batch_id = body.get("batch_id")
    if not isinstance(batch_id, str) or not BATCH_ID.fullmatch(batch_id):
        return _error(400, "batch_id must match [A-Za-z0-9._:-]{1,128}")
    requested = body.get("target")
    if requested is not None and not isinstance(requested, str):
        return _error(400, "target must be a string")
    target = daemon.datadog_target(requested)
    if target is None:
        known = [t.name for t in daemon.settings.datadog]
        if requested is None and len(known) > 1:
            return _error(400, f"several Datadog targets are configured; name one of {known}")
        return _error(400, f"unknown Datadog target {requested!r}; configured: {known}")
    added = daemon.watch(target, batch_id)
    rec = daemon.tracker.get(Source.DATADOG, target, batch_id)
    if rec is None:
        return _error(503, "cannot watch more batches: max_tracked_batches reached")
    if added and not await daemon.persist():
        # A CI job treats 201 as a promise that survives a crash; without a commit, say so.
        # The watch stays in memory and a retry is idempotent.
        return _error(503, "watching, but the state file could not be written yet; retry")
    return _json(batch_view(rec), 201 if added else 200)


async def remove_datadog_batch(request: web.Request) -> web.Response:
    if (refusal := _authorised(request)) is not None:
        return refusal
    daemon = request.app[DAEMON]
    batch_id = request.match_info["batch_id"]
    if not BATCH_ID.fullmatch(batch_id):
        return _error(400, "batch_id must match [A-Za-z0-9._:-]{1,128}")
    requested = request.query.get("target")
    target = daemon.datadog_target(requested)
    if target is None:
        return _error(400, f"unknown or ambiguous Datadog target {requested!r}")
    if not daemon.unwatch(target, batch_id):
        return _error(404, f"batch {batch_id!r} is not watched on target {target!r}")
    return web.Response(status=204)


def build_app(daemon: Daemon) -> web.Application:
    app = web.Application(client_max_size=daemon.settings.http.max_body_bytes)
    app[DAEMON] = daemon
    app.router.add_get("/", index)
    app.router.add_get("/metrics", make_aiohttp_handler(daemon.metrics.registry))
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/api/v1/batches", list_batches)
    app.router.add_get("/api/v1/events", list_events)
    app.router.add_post("/api/v1/datadog/batches", add_datadog_batch)
    app.router.add_delete("/api/v1/datadog/batches/{batch_id}", remove_datadog_batch)
    return app
