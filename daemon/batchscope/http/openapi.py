"""The OpenAPI 3.1 document of ``/api/v1`` (served at ``/api/v1/openapi.json``).

Written by hand next to the handlers and kept true by tests: every real answer of the
integration tests is validated against it (``tests/unit/test_openapi.py``,
``tests/integration/test_status_api.py``) and schemathesis fuzzes the daemon with it.
Schemas are closed (``additionalProperties: false``) so a field added to a view without a
word here fails those tests instead of drifting silently.
"""

from __future__ import annotations

from typing import Any

from batchscope import __version__
from batchscope.model import STATES, Reason, ResultState, Source, State

Schema = dict[str, Any]

BATCH_ID_REGEX = r"^[A-Za-z0-9._:-]{1,128}$"
TARGET_REGEX = r"^[A-Za-z0-9_.-]{1,64}$"


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def _closed(properties: dict[str, Schema], required: list[str] | None = None,
            description: str | None = None) -> Schema:
    out: Schema = {"type": "object", "properties": properties,
                   "required": list(properties) if required is None else required,
                   "additionalProperties": False}
    if description:
        out["description"] = description
    return out


_INT: Schema = {"type": "integer"}
_STR: Schema = {"type": "string"}
_EPOCH: Schema = {"type": "number", "description": "Unix time, seconds"}
_SOURCE: Schema = {"type": "string", "enum": [s.value for s in Source]}
_STATE: Schema = {"type": "string", "enum": [s.value for s in STATES]}
_ANY_STATE: Schema = {"type": "string", "enum": [s.value for s in State],
                      "description": "A batch state; `none`: a watched Datadog batch not "
                                     "seen yet, or the origin of a first sighting"}
_RESULT_STATE: Schema = {"type": "string", "enum": [s.value for s in ResultState]}
_REASON: Schema = {"type": ["string", "null"], "enum": [*(r.value for r in Reason), None],
           "description": "Why the batch is in its state (SPEC.md, Diagnosis); null when "
                          "the state needs no reason"}
_URL: Schema = {"type": "string", "format": "uri"}
_IDS: Schema = {"type": "array", "items": _STR, "maxItems": 3}

_ENGINE_COUNTS: dict[str, Schema] = dict.fromkeys(
    ("total_jobs", "jobs_created", "completed_jobs", "remaining_jobs", "failed_jobs"), _INT)
_CI_COUNTS: dict[str, Schema] = dict.fromkeys(
    ("results_total", "results_passed", "results_failed", "results_in_progress"), _INT)


def _schemas() -> dict[str, Schema]:
    batch_row: dict[str, Schema] = {
        "source": _SOURCE,
        "target": _STR,
        "batch_id": _STR,
        "batch_type": {"type": "string",
                       "description": "The engine's batch type, `synthetics-ci` for Datadog"},
        "state": _ANY_STATE,
        "state_since": _EPOCH,
        "first_seen": _EPOCH,
        "last_seen": _EPOCH,
        "counts": {
            "description": "Engine job counts, Datadog result counts, or empty before the "
                           "first full sighting",
            "anyOf": [
                _closed({}, []),
                _closed(_ENGINE_COUNTS),
                _closed(_CI_COUNTS),
            ],
        },
        "reason": _REASON,
        "message": {"type": ["string", "null"],
                    "description": "The first failure message (engine) or failing test "
                                   "(Datadog), for one-line views"},
        "link": _nullable({**_URL, "description": "The batch in the upstream's own UI"}),
        "upstream_status": {"type": "string",
                            "description": "Datadog: the status string as the API sent it"},
    }
    row_required = [k for k in batch_row if k != "upstream_status"]
    ci_result = _closed({
        "test_public_id": {"type": ["string", "null"]},
        "test_name": {"type": ["string", "null"]},
        "location": {"type": ["string", "null"]},
        "device": {"type": ["string", "null"]},
        "execution_rule": {"type": ["string", "null"],
                           "description": "`blocking`, `non_blocking` or `skipped`"},
        "state": _RESULT_STATE,
        "retries": {"type": ["integer", "null"]},
        "result_id": {"type": ["string", "null"]},
        "duration_ms": {"type": ["number", "null"]},
        "timed_out": {"type": ["boolean", "null"]},
        "link": _nullable(_URL),
    }, description="One CI result lineage (its latest attempt)")
    failed_result = _closed({
        "test_public_id": _STR,
        "test_name": {"type": ["string", "null"]},
        "location": {"type": ["string", "null"]},
        "device": {"type": ["string", "null"]},
        "execution_rule": {"type": ["string", "null"]},
        "timed_out": {"type": ["boolean", "null"]},
        "retries": {"type": ["integer", "null"]},
        "result_id": {"type": ["string", "null"]},
        "link": _nullable(_URL),
    })
    engine_failure = _closed({
        "failed_jobs": _INT,
        "messages": {"type": "array", "items": _closed({
            "message": {"type": ["string", "null"]},
            "count": _INT,
            "job_ids": _IDS,
            "process_instance_ids": _IDS,
            "activity_ids": _IDS,
        })},
        "sampled": {"type": "integer", "description": "Failed jobs read"},
    }, description="Engine: the distinct exception messages among a sample of failed jobs")
    ci_failure = _closed({
        "results_failed": _INT,
        "results_in_progress": _INT,
        "results": {"type": "array", "items": failed_result, "maxItems": 20},
    }, ["results"], description="Datadog: the failing (or unfinished) results")
    detail = dict(batch_row)
    detail["failure"] = {"anyOf": [_ref("EngineFailure"), _ref("CiFailure"), {"type": "null"}]}
    detail["results"] = {"type": "array", "items": _ref("CiResult"),
                         "description": "Datadog batches only: every result"}
    detail_required = [*row_required, "failure"]

    common_event: dict[str, Schema] = {
        "timestamp": {"type": "string", "format": "date-time"},
        "level": {"type": "string", "enum": ["info", "warning"]},
        "seq": {"type": "integer", "minimum": 1},
        "source": _SOURCE,
        "target": _STR,
        "batch_id": _STR,
        "from_state": {},  # narrowed per kind below
        "to_state": {},
    }
    batch_event: dict[str, Schema] = {
        **common_event,
        "event": {"const": "batch.transition"},
        "batch_type": _STR,
        "from_state": _ANY_STATE,
        "to_state": _STATE,
        **dict.fromkeys(("total_jobs", "completed_jobs", "remaining_jobs", "failed_jobs"), _INT),
        **_CI_COUNTS,
        "pipeline_url": _STR,
        "git_branch": _STR,
        "git_commit": _STR,
        "duration_seconds": {"type": ["number", "null"]},
        "reason": _REASON,
        "failure": {"anyOf": [_ref("EngineFailure"), _ref("CiFailure"), {"type": "null"}]},
        "link": _nullable(_URL),
    }
    result_event: dict[str, Schema] = {
        **common_event,
        "event": {"const": "ci_result.transition"},
        "test_public_id": _STR,
        "test_name": {"type": ["string", "null"]},
        "test_type": {"type": ["string", "null"]},
        "location": _STR,
        "device": _STR,
        "execution_rule": {"type": ["string", "null"]},
        "result_id": {"type": ["string", "null"]},
        "retries": {"type": ["integer", "null"]},
        "duration_ms": {"type": ["number", "null"]},
        "from_state": _RESULT_STATE,
        "to_state": _RESULT_STATE,
    }
    base_required = ["timestamp", "level", "event", "seq", "source", "target", "batch_id",
                     "from_state", "to_state"]

    target = _closed({
        "source": _SOURCE,
        "target": _STR,
        "up": {"type": ["boolean", "null"],
               "description": "Whether the last poll succeeded; null before the first"},
        "poll_interval": {"type": "number", "description": "Seconds between polls"},
        "last_poll": _nullable(_EPOCH),
        "last_success": _nullable(_EPOCH),
        "last_error": _nullable(_closed({
            "reason": {"type": "string", "enum": ["timeout", "connection", "http_4xx",
                                                  "http_5xx", "rate_limited", "auth",
                                                  "invalid_response"]},
            "detail": _STR,
        }, description="The last poll's error; null when it succeeded")),
        "tracked": {"type": "object", "description": "Tracked batches per state (every "
                                                     "state the source has, 0 when none)",
                    "propertyNames": _ANY_STATE, "additionalProperties": {"type": "integer",
                                                                      "minimum": 0}},
    })
    return {
        "Error": _closed({"error": {"type": "string", "minLength": 1}},
                         description="Every error answer of the API"),
        "BatchRow": _closed(batch_row, row_required, "A tracked batch (list row)"),
        "BatchDetail": _closed(detail, detail_required,
                               "A tracked batch in full: the row, its failure evidence and "
                               "(Datadog) every CI result"),
        "CiResult": ci_result,
        "EngineFailure": engine_failure,
        "CiFailure": ci_failure,
        "BatchTransitionEvent": _closed(batch_event, [*base_required, "batch_type",
                                                      "duration_seconds"],
                                        "A batch.transition log line"),
        "ResultTransitionEvent": _closed(result_event, [*base_required, "test_public_id"],
                                         "A ci_result.transition log line"),
        "Event": {"oneOf": [_ref("BatchTransitionEvent"), _ref("ResultTransitionEvent")],
                  "discriminator": {"propertyName": "event", "mapping": {
                      "batch.transition": "#/components/schemas/BatchTransitionEvent",
                      "ci_result.transition": "#/components/schemas/ResultTransitionEvent",
                  }}},
        "Target": target,
        "StreamEvent": _closed({
            "event": {"const": "message"},
            "id": {"type": "string", "pattern": r"^[0-9]+$", "description": "The seq"},
            "data": {"type": "string", "contentMediaType": "application/json",
                     "contentSchema": _ref("Event"),
                     "description": "One Event object as JSON, on one line"},
            "retry": {"type": "integer"},
        }, ["event", "id", "data"], "One Server-Sent Event of the stream"),
        "WatchRequest": _closed({
            "batch_id": {"type": "string", "pattern": BATCH_ID_REGEX,
                         "not": {"enum": [".", ".."]}},
            "target": {"type": ["string", "null"],
                       "description": "A configured [[datadog]] target; may be left out (or "
                                      "null) when there is only one"},
        }, ["batch_id"]),
    }


def _error(description: str, headers: dict[str, Any] | None = None) -> Schema:
    out: Schema = {"description": description,
                   "content": {"application/json": {"schema": _ref("Error")}}}
    if headers:
        out["headers"] = headers
    return out


def _ok(description: str, schema: Schema, headers: dict[str, Any] | None = None) -> Schema:
    out: Schema = {"description": description, "content": {"application/json": {
        "schema": schema}}}
    if headers:
        out["headers"] = headers
    return out


def _query(name: str, schema: Schema, description: str) -> Schema:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


def _path(name: str, schema: Schema, description: str) -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": schema,
            "description": description}


_BAD = _error("Bad input: the message says which")
_AUTH = {
    "401": _error("Missing or wrong bearer token", {
        "WWW-Authenticate": {"schema": _STR, "description": "`Bearer`"}}),
    "403": _error("Write endpoints are disabled: no http.api_token is configured"),
}


def _paths() -> dict[str, Schema]:
    batch_id_path = _path("batch_id", {"type": "string", "pattern": BATCH_ID_REGEX,
                                       "not": {"enum": [".", ".."]}}, "The batch's id")
    return {
        "/api/v1/batches": {"get": {
            "operationId": "listBatches",
            "summary": "Tracked batches, in key order (source, target, batch id), paged",
            "parameters": [
                _query("source", _SOURCE, "Only this source"),
                _query("target", _STR, "Only this target (an unknown one matches nothing)"),
                _query("state", _ANY_STATE, "Only batches in this state"),
                _query("limit", {"type": "integer", "minimum": 1, "maximum": 10000,
                                 "default": 1000}, "Rows per page"),
                _query("cursor", _STR, "Opaque: the rel=next link's, to read the next page"),
            ],
            "responses": {
                "200": _ok("One page of batches", {"type": "array", "items": _ref("BatchRow")},
                           {"Link": {"schema": _STR, "description":
                                     '`<URL>; rel="next"` when more rows remain'}}),
                "400": _BAD,
            },
        }},
        "/api/v1/batches/{source}/{target}/{batch_id}": {"get": {
            "operationId": "getBatch",
            "summary": "One tracked batch in full",
            "parameters": [
                _path("source", _SOURCE, "engine or datadog"),
                _path("target", {"type": "string", "pattern": TARGET_REGEX},
                      "A configured target of that source"),
                batch_id_path,
            ],
            "responses": {
                "200": _ok("The batch", _ref("BatchDetail")),
                "400": _error("An unknown source, or an id that cannot be one"),
                "404": _error("The batch is not tracked (or no such target is configured)"),
            },
        }},
        "/api/v1/events": {"get": {
            "operationId": "listEvents",
            "summary": "Recent events (a bounded buffer), oldest first; the log lines' fields",
            "parameters": [
                _query("after", _INT, "Only events with a greater seq (default 0)"),
                _query("limit", {"type": "integer", "minimum": 1, "maximum": 10000,
                                 "default": 1000}, "Events at most"),
                _query("last", {"type": "integer", "minimum": 1, "maximum": 10000},
                       "Only the newest N events (still oldest first)"),
            ],
            "responses": {
                "200": _ok("Events", {"type": "array", "items": _ref("Event")}),
                "400": _BAD,
            },
        }},
        "/api/v1/events/stream": {"get": {
            "operationId": "streamEvents",
            "summary": "The events as Server-Sent Events",
            "description": (
                "One message per event: `id:` is its seq, `data:` one JSON object with the "
                "same fields as /api/v1/events (the Event schema). Starts after "
                "`Last-Event-ID` (sent by a reconnecting EventSource), else after `?after=`. "
                "Comment lines (`: keep-alive`) every 15 s keep idle connections open. "
                "The stream ends after `timeout` seconds when given, and when the daemon "
                "stops."),
            "parameters": [
                _query("after", _INT, "Start after this seq (default 0: every event held)"),
                _query("timeout", {"type": "number", "exclusiveMinimum": 0,
                                   "maximum": 86400},
                       "End the stream after this many seconds"),
                {"name": "Last-Event-ID", "in": "header", "required": False,
                 "schema": {"type": "string", "pattern": r"^(-?[0-9]+)?$"},
                 "description": "The last seq received; wins over `after` (empty: as if "
                                "absent)"},
            ],
            "responses": {
                "200": {"description": "An endless event stream",
                        "content": {"text/event-stream": {
                            # As OpenAPI 3.1 tools read it, the schema of an event stream
                            # describes each event (3.2 names this itemSchema).
                            "schema": _ref("StreamEvent"),
                        }}},
                "400": _BAD,
                "503": _error("Too many streams open, or the daemon is stopping", {
                    "Retry-After": {"schema": _STR}}),
            },
        }},
        "/api/v1/targets": {"get": {
            "operationId": "listTargets",
            "summary": "Every configured target: health, last poll, tracked batches",
            "responses": {"200": _ok("Targets, engines first",
                                     {"type": "array", "items": _ref("Target")})},
        }},
        "/api/v1/openapi.json": {"get": {
            "operationId": "openapi",
            "summary": "This document",
            "responses": {"200": _ok("OpenAPI 3.1", {"type": "object"})},
        }},
        "/api/v1/datadog/batches": {"post": {
            "operationId": "watchDatadogBatch",
            "summary": "Start watching a Datadog CI batch",
            "security": [{"bearer": []}],
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": _ref("WatchRequest")}}},
            "responses": {
                "201": _ok("Now watched (and saved)", _ref("BatchRow")),
                "200": _ok("Already watched", _ref("BatchRow")),
                "400": _error("Malformed JSON, an unknown field or target, or a bad id; "
                              "nothing is added"),
                **_AUTH,
                "413": _error("Body larger than http.max_body_bytes"),
                "503": _error("max_tracked_batches reached, or the watch could not be saved "
                              "yet (retry)"),
            },
        }},
        "/api/v1/datadog/batches/{batch_id}": {"delete": {
            "operationId": "unwatchDatadogBatch",
            "summary": "Stop watching a Datadog CI batch",
            "security": [{"bearer": []}],
            "parameters": [
                batch_id_path,
                _query("target", {"type": "string", "pattern": TARGET_REGEX},
                       "The [[datadog]] target; may be left out when there is only one"),
            ],
            "responses": {
                "204": {"description": "No longer watched"},
                "400": _error("A bad id, or no target named while several are configured"),
                **_AUTH,
                "404": _error("The batch is not watched on that target (or no such target "
                              "is configured)"),
            },
        }},
    }


def openapi_document() -> dict[str, Any]:
    """The whole document (a fresh dict each call)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "batchscope API",
            "version": __version__,
            "description": (
                "Tracked batches of Camunda 7 engines and Datadog CI, their events, and the "
                "Datadog watch list. Every error is a JSON object `{\"error\": \"...\"}`."),
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "paths": _paths(),
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {"bearer": {
                "type": "http", "scheme": "bearer",
                "description": "`http.api_token`; without one the write endpoints answer 403",
            }},
        },
    }
