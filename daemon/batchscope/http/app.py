"""The HTTP app: metrics, probes, the read API and the Datadog watch-list API.

Handlers read through the narrow interfaces of ``ports.py`` and never do upstream I/O.
"""

from __future__ import annotations

import base64
import hmac
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from batchscope import __version__
from batchscope.http.ports import ApiPorts, WatchOutcome
from batchscope.http.views import batch_view
from batchscope.model import BATCH_ID_RULE, Source, State, is_valid_batch_id
from batchscope.settings import HttpSettings
from batchscope.tracker import Key, TrackedBatch

PORTS: web.AppKey[ApiPorts] = web.AppKey("ports")
HTTP: web.AppKey[HttpSettings] = web.AppKey("http_settings")

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


async def index(request: web.Request) -> web.Response:
    return web.Response(text=LANDING.format(version=__version__), content_type="text/html")


async def healthz(request: web.Request) -> web.Response:
    if request.app[PORTS].health.healthy():
        return _json({"status": "ok"})
    return _json({"status": "poll loop stuck"}, 503)


async def readyz(request: web.Request) -> web.Response:
    if request.app[PORTS].health.ready:
        return _json({"status": "ready"})
    return _json({"status": "starting: not every target has been polled yet"}, 503)


DEFAULT_PAGE = 1_000
MAX_PAGE = 10_000


def _encode_cursor(rec: TrackedBatch) -> str:
    raw = orjson.dumps([rec.source.value, rec.target, rec.batch_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> Key:
    """The key a cursor points after; ValueError when it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        source, target, batch_id = orjson.loads(raw)
        return (Source(source), str(target), str(batch_id))
    except (ValueError, TypeError, orjson.JSONDecodeError) as exc:
        raise ValueError("cursor is not one this API handed out") from exc


async def list_batches(request: web.Request) -> web.Response:
    reader = request.app[PORTS].batches
    query = request.query
    source, target, state = query.get("source"), query.get("target"), query.get("state")
    if source is not None and source not in {s.value for s in Source}:
        return _error(400, f"unknown source {source!r}; use engine or datadog")
    if state is not None and state not in {s.value for s in State}:
        return _error(400, f"unknown state {state!r}")
    try:
        limit = int(query.get("limit", DEFAULT_PAGE))
    except ValueError:
        return _error(400, "limit must be an integer")
    if not 1 <= limit <= MAX_PAGE:
        return _error(400, f"limit must be between 1 and {MAX_PAGE}")
    after: Key | None = None
    if "cursor" in query:
        try:
            after = _decode_cursor(query["cursor"])
        except ValueError as exc:
            return _error(400, str(exc))
    rows: list[dict[str, Any]] = []
    last: TrackedBatch | None = None
    more = False
    for rec in reader.batches_after(after):
        if ((source is not None and rec.source.value != source)
                or (target is not None and rec.target != target)
                or (state is not None and rec.state.value != state)):
            continue
        if len(rows) == limit:
            more = True
            break
        rows.append(batch_view(rec))
        last = rec
    headers = {}
    if more and last is not None:
        url = request.rel_url.update_query(cursor=_encode_cursor(last), limit=limit)
        headers["Link"] = f'<{url}>; rel="next"'
    return web.Response(body=orjson.dumps(rows), content_type="application/json",
                        headers=headers)


async def list_events(request: web.Request) -> web.Response:
    buffer = request.app[PORTS].events
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
    token = request.app[HTTP].api_token
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
    ports = request.app[PORTS]
    limit = request.app[HTTP].max_body_bytes
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
    if not is_valid_batch_id(batch_id):
        return _error(400, f"batch_id must {BATCH_ID_RULE}")
    requested = body.get("target")
    if requested is not None and not isinstance(requested, str):
        return _error(400, "target must be a string")
    known = ports.watch_list.datadog_targets()
    target = _datadog_target(known, requested)
    if target is None:
        if requested is None and len(known) > 1:
            return _error(400, f"several Datadog targets are configured; name one of {known}")
        return _error(400, f"unknown Datadog target {requested!r}; configured: {known}")
    outcome = ports.watch_list.watch(target, batch_id)
    rec = ports.batches.get(Source.DATADOG, target, batch_id)
    if outcome is WatchOutcome.REFUSED or rec is None:
        return _error(503, "cannot watch more batches: max_tracked_batches reached")
    added = outcome is WatchOutcome.ADDED
    if added and not await ports.watch_list.commit():
        # A CI job treats 201 as a promise that survives a crash; without a commit, say so.
        # The watch stays in memory and a retry is idempotent.
        return _error(503, "watching, but the state file could not be written yet; retry")
    return _json(batch_view(rec), 201 if added else 200)


async def remove_datadog_batch(request: web.Request) -> web.Response:
    if (refusal := _authorised(request)) is not None:
        return refusal
    watch_list = request.app[PORTS].watch_list
    batch_id = request.match_info["batch_id"]
    if not is_valid_batch_id(batch_id):
        return _error(400, f"batch_id must {BATCH_ID_RULE}")
    requested = request.query.get("target")
    target = _datadog_target(watch_list.datadog_targets(), requested)
    if target is None:
        return _error(400, f"unknown or ambiguous Datadog target {requested!r}")
    if not watch_list.unwatch(target, batch_id):
        return _error(404, f"batch {batch_id!r} is not watched on target {target!r}")
    return web.Response(status=204)


def _datadog_target(known: list[str], requested: str | None) -> str | None:
    """The Datadog target a watch request means, or None if ambiguous/unknown."""
    if requested is None:
        return known[0] if len(known) == 1 else None
    return requested if requested in known else None


def build_app(ports: ApiPorts, registry: CollectorRegistry, http: HttpSettings
              ) -> web.Application:
    app = web.Application(client_max_size=http.max_body_bytes)
    app[PORTS] = ports
    app[HTTP] = http
    app.router.add_get("/", index)
    app.router.add_get("/metrics", make_aiohttp_handler(registry))
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/api/v1/batches", list_batches)
    app.router.add_get("/api/v1/events", list_events)
    app.router.add_post("/api/v1/datadog/batches", add_datadog_batch)
    app.router.add_delete("/api/v1/datadog/batches/{batch_id}", remove_datadog_batch)
    return app
