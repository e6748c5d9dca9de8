"""Fixtures for the settings tests: TOML files, secret directories, problem extraction."""

from __future__ import annotations

import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from batchscope.settings import SettingsError, load_settings

SECRET = "s3cr3t-value-123"


@pytest.fixture
def secret() -> str:
    """A distinctive secret value that must never appear in a problem line."""
    return SECRET


@pytest.fixture
def write_toml(tmp_path: Path) -> Callable[[str], Path]:
    """Write TOML text to a fresh file and return its path."""
    counter = iter(range(1_000_000))

    def write(text: str) -> Path:
        path = tmp_path / f"config-{next(counter)}.toml"
        path.write_text(text, encoding="utf-8")
        return path

    return write


@pytest.fixture
def make_secrets(tmp_path: Path) -> Callable[[Mapping[str, str]], Path]:
    """Create a directory holding one file per ``name -> content`` and return it."""
    counter = iter(range(1_000_000))

    def make(files: Mapping[str, str]) -> Path:
        directory = tmp_path / f"secrets-{next(counter)}"
        directory.mkdir()
        for name, content in files.items():
            (directory / name).write_text(content, encoding="utf-8")
        return directory

    return make


@pytest.fixture
def problems() -> Callable[..., list[str]]:
    """Call load_settings(**kwargs), expect SettingsError, check no line leaks the secret."""

    def run(**kwargs: Any) -> list[str]:
        kwargs.setdefault("environ", {})
        with pytest.raises(SettingsError) as info:
            load_settings(**kwargs)
        lines = info.value.problems
        assert lines, "SettingsError without problems"
        for line in lines:
            assert SECRET not in line
        assert SECRET not in str(info.value)
        assert SECRET not in "".join(traceback.format_exception(info.value))
        return lines

    return run
