"""Fixtures of the browser tests: one headless chromium per test module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from browser_kit import Browser, require_chromium


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Debian chromium (skipped without it outside CI; a failure in CI)."""
    require_chromium()
    b = Browser()
    try:
        yield b
    finally:
        b.close()
