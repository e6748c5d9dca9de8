"""Check real HTTP answers against the daemon's OpenAPI document: the status must be
documented for that operation, the content type must match, and a JSON body must validate
against the documented schema (JSON Schema 2020-12, references resolved in the document)."""

from __future__ import annotations

import re
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from batchscope.http.openapi import openapi_document

DOC_URI = "urn:batchscope:openapi"


def _pointer(*parts: str) -> str:
    return "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


class OpenApiChecker:
    """Validates answers; remembers which (operation, status) pairs it has seen."""

    def __init__(self, doc: dict[str, Any] | None = None) -> None:
        self.doc = doc if doc is not None else openapi_document()
        resource = Resource.from_contents(self.doc, default_specification=DRAFT202012)
        self.registry: Registry[Any] = Registry().with_resource(DOC_URI, resource)
        self.seen: set[tuple[str, str, str]] = set()
        self._templates = [(re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", p) + "$"), p)
                           for p in self.doc["paths"]]

    def template(self, path: str) -> str:
        """The documented path template a concrete path matches."""
        matches = [t for rx, t in self._templates if rx.match(path)]
        assert matches, f"{path} is not documented"
        return min(matches, key=lambda t: t.count("{"))  # the literal one wins

    def check(self, method: str, path: str, status: int, content_type: str | None,
              body: Any) -> None:
        template = self.template(path.split("?")[0])
        operation = self.doc["paths"][template].get(method.lower())
        assert operation is not None, f"{method} {template} is not documented"
        responses = operation["responses"]
        assert str(status) in responses, (
            f"{method} {template} answered {status}, documented: {sorted(responses)}")
        self.seen.add((method.upper(), template, str(status)))
        documented = responses[str(status)].get("content")
        if documented is None:
            assert body in (None, b"", ""), f"{status} documents no body, got {body!r}"
            return
        mime = (content_type or "").split(";")[0].strip()
        assert mime in documented, f"{method} {template} {status}: {mime} not in {documented}"
        if mime != "application/json":
            return
        pointer = _pointer("paths", template, method.lower(), "responses", str(status),
                           "content", mime, "schema")
        validator = Draft202012Validator({"$ref": f"{DOC_URI}#/{pointer}"},
                                         registry=self.registry)
        errors = sorted(validator.iter_errors(body), key=lambda e: list(e.path))
        assert not errors, (f"{method} {path} {status} does not match its schema: "
                            + "; ".join(f"{list(e.path)}: {e.message}" for e in errors[:5]))
