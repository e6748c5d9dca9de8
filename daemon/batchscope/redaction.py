"""The one place that knows the secrets and hides them in text.

Every text that leaves the process (log lines, error details shown by the HTTP API) goes
through :func:`redact`. It replaces:

- every registered secret, in the forms it can take in transit: as is, JSON-escaped (a
  log line holds quotes, backslashes and control characters escaped) and percent-encoded
  (a URL or a form body);
- ``Basic``/``Bearer`` credentials of an ``Authorization``-looking header echoed back by
  an upstream, registered or not;
- a *fragment* of a secret at the end of the text: an upstream (or our own shortening)
  may have cut the text in the middle of a secret. A text ending with the first
  :data:`MIN_PREFIX` or more characters of a secret loses that tail; a text known to be
  cut (``truncated=True``) loses any tail of :data:`MIN_FRAGMENT` or more characters
  that occurs anywhere in a secret.

Redact first, then shorten: :func:`shorten` does both in that order, so a cut never
leaves part of a secret behind.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from typing import Final
from urllib.parse import quote, quote_plus

import orjson

REDACTED: Final = "**********"
#: Secrets shorter than this are not registered: hiding every "abc" would garble logs.
MIN_SECRET: Final = 4
#: A text ending with this many first characters of a secret loses them.
MIN_PREFIX: Final = 4
#: A cut text ending with this many characters found anywhere in a secret loses them.
MIN_FRAGMENT: Final = 6
ELLIPSIS: Final = "…"

# "Authorization: Basic dXNlcjpwYXNz", "Bearer eyJ...", also inside JSON ("Bearer x\"").
_AUTH_VALUE: Final = re.compile(
    r"(?P<scheme>\b(?:Basic|Bearer))(?P<sep>\s+)(?P<token>[A-Za-z0-9._~+/=-]{4,})",
    re.IGNORECASE,
)
_AUTH_HINT: Final = re.compile(r"basic|bearer", re.IGNORECASE)
# What may follow a cut: an ellipsis, dots or blanks added by whoever cut the text.
_CUT_MARK: Final = re.compile(r"(?:…|\.\.\.|\s)+\Z")


def _may_hold_credentials(text: str) -> bool:
    """Whether "Basic" or "Bearer" occurs in any case (as ``_AUTH_HINT`` finds it).

    A case-insensitive regex search of a long text (a chunk of log lines) costs ten times a
    search in its lowered copy; the two agree exactly on ASCII text only (to the regex, the
    dotless and the dotted I, the long s and the Kelvin sign are letters of these words too),
    and ``isascii`` is known without a scan.
    """
    if len(text) < 4096 or not text.isascii():
        return _AUTH_HINT.search(text) is not None
    lowered = text.lower()
    return "basic" in lowered or "bearer" in lowered


def _looks_like_token(word: str) -> bool:
    """A credential, not prose: "Basic Authentication required" keeps its words."""
    return (any(c.isdigit() or c in "._~+/=-" for c in word)
            or any(c.isupper() for c in word[1:]))


def _hide_token(match: re.Match[str]) -> str:
    if not _looks_like_token(match["token"]):
        return match.group()
    return f"{match['scheme']}{match['sep']}{REDACTED}"


def _forms(secret: str) -> set[str]:
    forms = {secret, orjson.dumps(secret).decode()[1:-1], quote(secret, safe=""),
             quote_plus(secret, safe="")}
    return {f for f in forms if len(f) >= MIN_SECRET}


class _Known:
    """An immutable snapshot of the registered forms and the index of their prefixes."""

    __slots__ = ("forms", "prefixes")

    def __init__(self, forms: Iterable[str]) -> None:
        # Longest first, so a secret containing another is replaced whole.
        self.forms: tuple[str, ...] = tuple(sorted(set(forms), key=lambda f: (-len(f), f)))
        # last character of a prefix -> (prefix length, form), longest first
        index: dict[str, list[tuple[int, str]]] = {}
        for form in self.forms:
            for k in range(MIN_PREFIX, len(form)):
                index.setdefault(form[k - 1], []).append((k, form))
        self.prefixes: dict[str, tuple[tuple[int, str], ...]] = {
            c: tuple(sorted(v, key=lambda e: -e[0])) for c, v in index.items()
        }


class SecretRegistry:
    """A set of secret values and the function that hides them."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._known = _Known(())
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        """Hide these values too (e.g. from reloaded settings)."""
        new = {f for s in secrets if len(s) >= MIN_SECRET for f in _forms(s)}
        with self._lock:
            if not new <= set(self._known.forms):
                self._known = _Known({*self._known.forms, *new})

    def replace(self, secrets: Iterable[str]) -> None:
        """Forget every known value and hide these instead."""
        new = {f for s in secrets if len(s) >= MIN_SECRET for f in _forms(s)}
        with self._lock:
            self._known = _Known(new)

    def __len__(self) -> int:
        return len(self._known.forms)

    def redact(self, text: str, *, truncated: bool = False, tail: bool = True) -> str:
        """``text`` with every secret, credential header and secret tail replaced.

        ``truncated``: the text was cut (by anyone) at its end. ``tail=False`` skips the
        fragment-at-the-end rule, for a text whose end is markup (a rendered JSON line).
        """
        if len(text) < MIN_PREFIX:
            return text
        known = self._known  # one consistent snapshot; add() swaps it atomically
        for form in known.forms:
            if form in text:
                text = text.replace(form, REDACTED)
        if _may_hold_credentials(text):
            text = _AUTH_VALUE.sub(_hide_token, text)
        if tail and known.forms:
            text = _redact_tail(text, known, truncated)
        return text


    def redact_json_lines(self, text: str) -> str:
        """``redact(line, tail=False)`` of every line of ``text``, JSON lines (each starts
        with "{" and holds no raw line break), in one pass over the whole text.

        The same result as line by line: a secret without a line break cannot match across
        two lines, nor can a credential header (its token cannot start with "{"). A secret
        holding a line break could, so such a registry redacts line by line.
        """
        if any("\n" in form for form in self._known.forms):
            return "\n".join(self.redact(line, tail=False) for line in text.split("\n"))
        return self.redact(text, tail=False)

    def redact_tail(self, text: str, *, truncated: bool = False) -> str:
        """Only the fragment-at-the-end rule (the log pipeline runs the rest on the
        rendered line, once)."""
        known = self._known
        if len(text) < MIN_PREFIX or not known.forms:
            return text
        return _redact_tail(text, known, truncated)


def _redact_tail(text: str, known: _Known, truncated: bool) -> str:
    mark = _CUT_MARK.search(text)
    body, suffix = (text[: mark.start()], mark.group()) if mark else (text, "")
    if len(body) < MIN_PREFIX:
        return text
    longest = 0
    for k, form in known.prefixes.get(body[-1], ()):
        if k <= len(body) and body.endswith(form[:k]):
            longest = k
            break
    if truncated:
        for form in known.forms:
            for k in range(min(len(form), len(body)), max(MIN_FRAGMENT, longest + 1) - 1, -1):
                if body[-k:] in form:
                    longest = k
                    break
    if not longest:
        return text
    return body[:-longest] + REDACTED + suffix


def shorten(text: str, limit: int, *, truncated: bool = False,
            registry: SecretRegistry | None = None) -> str:
    """Redact ``text``, then cut it to ``limit`` characters, marking a cut with "…".

    ``truncated``: the text is already a cut piece of something longer (it is marked too).
    """
    text = (registry or _registry).redact(text, truncated=truncated)
    if len(text) > limit:
        return text[:limit].rstrip() + ELLIPSIS
    if truncated:
        return text.rstrip() + ELLIPSIS
    return text


_registry = SecretRegistry()


def register(secrets: Iterable[str]) -> None:
    """Add secret values to what every output hides."""
    _registry.add(secrets)


def reset(secrets: Iterable[str] = ()) -> None:
    """Replace the registered secrets (logging is configured afresh)."""
    _registry.replace(secrets)


def redact(text: str, *, truncated: bool = False, tail: bool = True) -> str:
    """``text`` with every registered secret (and credential header value) hidden."""
    return _registry.redact(text, truncated=truncated, tail=tail)


def redact_tail(text: str, *, truncated: bool = False) -> str:
    """Only a registered secret's fragment at the end of ``text`` hidden."""
    return _registry.redact_tail(text, truncated=truncated)


def registry() -> SecretRegistry:
    """The process-wide registry used by :func:`redact`."""
    return _registry
