"""batchscope.redaction: the one helper every output uses to hide secrets (issue 9, item 8)."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator

import orjson
import pytest

from batchscope import redaction
from batchscope.redaction import ELLIPSIS, REDACTED, SecretRegistry, shorten

KEY = "0123456789abcdef0123456789ABCDEF"
PASSWORD = 'pa"ss\\wörd/+ 1'


@pytest.fixture
def registry() -> SecretRegistry:
    return SecretRegistry([KEY, PASSWORD])


@pytest.fixture
def global_registry() -> Iterator[None]:
    redaction.reset([KEY])
    yield
    redaction.reset()


def test_every_transit_form_of_a_secret_is_hidden(registry: SecretRegistry) -> None:
    """The secret as is, JSON-escaped and percent-encoded (both ways) is replaced."""
    from urllib.parse import quote, quote_plus

    for form in (PASSWORD, orjson.dumps(PASSWORD).decode()[1:-1], quote(PASSWORD, safe=""),
                 quote_plus(PASSWORD, safe="")):
        out = registry.redact(f"before {form} after")
        assert out == f"before {REDACTED} after", form


def test_short_values_are_not_registered() -> None:
    """Values under 4 characters are ignored: hiding every "abc" would garble logs."""
    reg = SecretRegistry(["abc", ""])
    assert len(reg) == 0
    assert reg.redact("abc abc") == "abc abc"


def test_a_prefix_of_a_secret_at_the_end_is_hidden(registry: SecretRegistry) -> None:
    """A text ending with the first 4+ characters of a secret (an upstream cut its echo)
    loses them, also before a cut mark; 3 characters are left alone."""
    assert registry.redact(f"key: {KEY[:4]}") == f"key: {REDACTED}"
    assert registry.redact(f"key: {KEY[:20]}…") == f"key: {REDACTED}…"
    assert registry.redact(f"key: {KEY[:20]}...  ") == f"key: {REDACTED}...  "
    assert registry.redact(f"key: {KEY[:3]}") == f"key: {KEY[:3]}"
    assert registry.redact(f"{KEY[:10]} in the middle") == f"{KEY[:10]} in the middle"


def test_a_cut_text_loses_any_secret_fragment_at_the_cut(registry: SecretRegistry) -> None:
    """When the text is known to be cut, a tail of 6+ characters found anywhere in a
    secret goes too (not only a prefix); without ``truncated`` it stays."""
    text = f"echo {KEY[5:17]}"
    assert registry.redact(text) == text
    assert registry.redact(text, truncated=True) == f"echo {REDACTED}"


def test_tail_rule_can_be_switched_off(registry: SecretRegistry) -> None:
    """tail=False (a rendered line whose end is markup) still hides whole secrets."""
    assert registry.redact(f"{KEY} {KEY[:8]}", tail=False) == f"{REDACTED} {KEY[:8]}"


@pytest.mark.parametrize("header", [
    "Authorization: Basic " + base64.b64encode(b"monitor:hunter2-hunter2").decode(),
    "authorization: bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJtIn0.c2ln",
    '{"Authorization": "Basic bW9uaXRvcjpzM2NyM3Q="}',
    "Authorization: Bearer ABCDEFGHIJ",
])
def test_authorization_values_are_hidden_unregistered(header: str) -> None:
    """Basic/Bearer credentials are hidden by shape, with no secret registered."""
    out = SecretRegistry().redact(header)
    assert REDACTED in out
    token = header.split()[-1].strip('"}')
    assert token not in out


def test_prose_after_basic_or_bearer_is_kept() -> None:
    """Words are not credentials: "Basic authentication required" stays readable."""
    reg = SecretRegistry()
    for text in ("Basic authentication required", "Bearer token missing",
                 "basic realm", "Authorization: Bearer <http.api_token>"):
        assert reg.redact(text) == text


def test_longest_secret_is_replaced_whole() -> None:
    """A secret containing another is replaced as one, leaving no piece of the longer."""
    reg = SecretRegistry(["secret", "secret-and-more"])
    assert reg.redact("x secret-and-more y") == f"x {REDACTED} y"


def test_shorten_redacts_before_it_cuts(global_registry: None) -> None:
    """shorten() never cuts a secret in two: the secret is hidden first, then the text is
    cut and marked with an ellipsis."""
    text = "x" * 190 + KEY + "y" * 50
    out = shorten(text, 200)
    assert out.endswith(ELLIPSIS) and len(out) <= 201
    assert not any(KEY[i:i + 4] in out for i in range(len(KEY) - 3))
    assert shorten("short", 200) == "short"
    assert shorten("short", 200, truncated=True) == "short" + ELLIPSIS


def test_replace_forgets_and_add_accumulates() -> None:
    """add() keeps what was known; replace() starts over."""
    reg = SecretRegistry(["first-secret"])
    reg.add(["second-secret"])
    assert reg.redact("first-secret second-secret") == f"{REDACTED} {REDACTED}"
    reg.replace(["third-secret"])
    assert reg.redact("first-secret third-secret") == f"first-secret {REDACTED}"


def test_redaction_is_cheap_enough_for_every_log_line(registry: SecretRegistry) -> None:
    """A typical 400-character line with a dozen registered forms takes well under a
    millisecond (the log pipeline runs it on each string value)."""
    reg = SecretRegistry([KEY, PASSWORD, "s3cr3t-app-key", "s3cr3t-token",
                          base64.b64encode(b"monitor:pw-pw-pw").decode()])
    line = ("engine prod batch 4f1c-9a2b in_progress -> failed: 3 failed jobs; "
            "message: Unknown property used in expression ${x.y}. ") * 4
    started = time.perf_counter()
    for _ in range(1000):
        reg.redact(line)
    per_call = (time.perf_counter() - started) / 1000
    assert per_call < 0.0005, per_call
