"""The exception raised for invalid configuration, and the matching exit code."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["EX_CONFIG", "SettingsError"]

EX_CONFIG = 78
"""Exit status for invalid configuration (``EX_CONFIG`` from sysexits.h, ``os.EX_CONFIG``)."""


class SettingsError(Exception):
    """The configuration is invalid.

    ``problems`` holds one line per problem, ``"<dotted.path>: <message>"`` (e.g.
    ``"engines.0.url: URL must start with http:// or https://"``); file and environment
    problems name the file or variable instead. No line ever contains a secret value.
    """

    exit_code = EX_CONFIG

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems: list[str] = list(problems) or ["invalid configuration"]
        super().__init__(
            "invalid configuration:\n" + "\n".join(f"  {line}" for line in self.problems)
        )
