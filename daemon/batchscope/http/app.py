"""The HTTP app: metrics, probes, the status page, the read API and the Datadog watch-list
API, with its own OpenAPI document.

Handlers read through the narrow interfaces of ``ports.py`` and never do upstream I/O.
Every answer under ``/api/`` that is an error is a JSON ``{"error": ...}``, whatever raised
it (a handler, the router's 404/405, an unforeseen exception).
"""

from __future__ import annotations

import base64
import hmac
import re
from typing import Any, Final

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry

from batchscope.http.openapi import openapi_document
from batchscope.http.page import Asset, load_assets
from batchscope.http.ports import ApiPorts, TargetStatus, WatchOutcome
from batchscope.http.stream import (
    DEFAULT_HEARTBEAT,
    DEFAULT_MAX_STREAMS,
    BadStreamRequest,
    StreamHub,
    serve_stream,
    start_position,
    stream_timeout,
)
from batchscope.http.views import batch_detail, batch_view
from batchscope.model import BATCH_ID_RULE, Source, State, is_valid_batch_id
from batchscope.settings import HttpSettings
from batchscope.sinks.logs import get_logger
from batchscope.sinks.metrics import metrics_handler
from batchscope.tracker import Key, TrackedBatch

PORTS: web.AppKey[ApiPorts] = web.AppKey("ports")
HTTP: web.AppKey[HttpSettings] = web.AppKey("http_settings")
ASSETS: web.AppKey[dict[str, Asset]] = web.AppKey("assets")
STREAMS: web.AppKey[StreamHub] = web.AppKey("streams")
OPENAPI: web.AppKey[bytes] = web.AppKey("openapi")

#: The page may run only its own script and style, talk only to this daemon, and be framed
#: by nobody; no inline script or style, no plugin, no <base> rewrite.
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

log = get_logger()


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json"
    )


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


_INTEGER = re.compile(r"-?[0-9]+")


def _int(raw: str) -> int:
    """An integer parameter, strictly: digits with an optional minus (Python's int() would
    also take spaces, underscores and a plus). ValueError otherwise."""
    if _INTEGER.fullmatch(raw) is None:
        raise ValueError(raw)
    return int(raw)


async def index(request: web.Request) -> web.Response:
    return request.app[ASSETS]["index.html"].response(request)


async def static_asset(request: web.Request) -> web.Response:
    asset = request.app[ASSETS].get(request.match_info["name"])
    if asset is None or request.match_info["name"] == "index.html":
        raise web.HTTPNotFound()
    return asset.response(request)


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """On every answer, error pages and streams included (``on_response_prepare``)."""
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")


@web.middleware
async def api_errors(request: web.Request,
                     handler: Any) -> web.StreamResponse:
    """Under /api/: the router's 404 and 405 and any unforeseen failure as JSON errors."""
    if not request.path.startswith("/api/"):
        return await handler(request)  # type: ignore[no-any-return]
    try:
        return await handler(request)  # type: ignore[no-any-return]
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items()
                   if k.lower() in ("allow", "www-authenticate", "retry-after")}
        message = exc.reason if exc.status != 405 else (
            f"method {request.method} not allowed; use {exc.headers.get('Allow', '')}")
        if exc.status == 404:
            message = f"no such endpoint: {request.path}"
        return web.Response(body=orjson.dumps({"error": message}), status=exc.status,
                            content_type="application/json", headers=headers)
    except Exception:
        log.exception("http.handler_failed", method=request.method, path=request.path)
        return _error(500, "internal error (logged)")


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
        limit = _int(query.get("limit", str(DEFAULT_PAGE)))
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
        after = _int(request.query.get("after", "0"))
        limit = _int(request.query.get("limit", "1000"))
        last = _int(request.query["last"]) if "last" in request.query else None
    except ValueError:
        return _error(400, "after, limit and last must be integers")
    if limit < 1 or limit > 10_000:
        return _error(400, "limit must be between 1 and 10000")
    if last is not None:
        if last < 1 or last > 10_000:
            return _error(400, "last must be between 1 and 10000")
        # The newest events (what a page shows first), oldest first like every answer.
        return _json([e for e in buffer.tail(min(last, limit)) if e["seq"] > after])
    return _json(buffer.after(after, limit))


async def event_stream(request: web.Request) -> web.StreamResponse:
    hub = request.app[STREAMS]
    try:
        after = start_position(request)
        timeout = stream_timeout(request)
    except BadStreamRequest as exc:
        return _error(400, str(exc))
    if hub.closed:
        return _error(503, "shutting down")
    if hub.open >= hub.max_streams:
        resp = _error(503, f"too many event streams open (at most {hub.max_streams}); "
                           "retry later or poll /api/v1/events")
        resp.headers["Retry-After"] = "10"
        return resp
    return await serve_stream(request, request.app[PORTS].events, hub, after, timeout)


def _target_view(t: TargetStatus) -> dict[str, Any]:
    return {
        "source": t.source.value, "target": t.target, "up": t.up,
        "poll_interval": t.poll_interval, "last_poll": t.last_poll,
        "last_success": t.last_success,
        "last_error": None if t.last_error is None else {
            "reason": t.last_error.reason, "detail": t.last_error.detail},
        "tracked": {state.value: n for state, n in t.tracked.items()},
    }


async def list_targets(request: web.Request) -> web.Response:
    return _json([_target_view(t) for t in request.app[PORTS].targets.targets()])


async def get_batch(request: web.Request) -> web.Response:
    ports = request.app[PORTS]
    info = request.match_info
    raw_source, target, batch_id = info["source"], info["target"], info["batch_id"]
    if raw_source not in {s.value for s in Source}:
        return _error(400, f"unknown source {raw_source!r}; use engine or datadog")
    source = Source(raw_source)
    if not is_valid_batch_id(batch_id):
        return _error(400, f"batch_id must {BATCH_ID_RULE}")
    rec = ports.batches.get(source, target, batch_id)
    if rec is None:
        known = [t.target for t in ports.targets.targets() if t.source is source]
        if target not in known:
            return _error(404, f"no {source.value} target {target!r} is configured "
                               f"(configured: {known})")
        return _error(404, f"batch {batch_id!r} is not tracked on {source.value} target "
                           f"{target!r}")
    links = ports.targets.result_links(target) if source is Source.DATADOG else None
    return _json(batch_detail(rec, links))


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type="application/json")


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
    known = watch_list.datadog_targets()
    target = _datadog_target(known, requested)
    if target is None:
        if requested is None:
            return _error(400, f"several Datadog targets are configured; name one of {known} "
                               "with ?target=")
        # Nothing by that name can be watched: as for any batch not watched, 404.
        return _error(404, f"no Datadog target {requested!r} is configured "
                           f"(configured: {known})")
    if not watch_list.unwatch(target, batch_id):
        return _error(404, f"batch {batch_id!r} is not watched on target {target!r}")
    return web.Response(status=204)


def _datadog_target(known: list[str], requested: str | None) -> str | None:
    """The Datadog target a watch request means, or None if ambiguous/unknown."""
    if requested is None:
        return known[0] if len(known) == 1 else None
    return requested if requested in known else None


def build_app(ports: ApiPorts, registry: CollectorRegistry, http: HttpSettings, *,
              stream_heartbeat: float = DEFAULT_HEARTBEAT,
              max_streams: int = DEFAULT_MAX_STREAMS) -> web.Application:
    app = web.Application(client_max_size=http.max_body_bytes, middlewares=[api_errors])
    app[PORTS] = ports
    app[HTTP] = http
    app[ASSETS] = load_assets()
    app[OPENAPI] = orjson.dumps(openapi_document(), option=orjson.OPT_INDENT_2)
    hub = StreamHub(heartbeat=stream_heartbeat, max_streams=max_streams)
    app[STREAMS] = hub
    app.on_shutdown.append(hub.close)
    app.on_response_prepare.append(security_headers)
    app.router.add_get("/", index)
    app.router.add_get("/static/{name}", static_asset)
    app.router.add_get("/metrics", metrics_handler(registry))
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/api/v1/batches", list_batches)
    app.router.add_get("/api/v1/batches/{source}/{target}/{batch_id}", get_batch)
    app.router.add_get("/api/v1/events", list_events)
    app.router.add_get("/api/v1/events/stream", event_stream)
    app.router.add_get("/api/v1/targets", list_targets)
    app.router.add_get("/api/v1/openapi.json", openapi)
    app.router.add_post("/api/v1/datadog/batches", add_datadog_batch)
    app.router.add_delete("/api/v1/datadog/batches/{batch_id}", remove_datadog_batch)
    return app
