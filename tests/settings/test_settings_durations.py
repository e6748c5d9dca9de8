"""Duration parsing: seconds as numbers or strings with ms/s/m/h units."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from batchscope.settings import Settings, parse_duration


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (10, 10.0),
        (0.05, 0.05),
        ("30", 30.0),
        ("0.5", 0.5),
        ("500ms", 0.5),
        ("30s", 30.0),
        ("1.5s", 1.5),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        (" 2 m ", 120.0),
        ("10S", 10.0),
    ],
)
def test_accepted_durations(value: object, seconds: float) -> None:
    """Ints, floats (sub-second too) and unit strings become float seconds."""
    assert math.isclose(parse_duration(value), seconds)


@pytest.mark.parametrize(
    "value",
    [-1, 0, 0.0, "-1s", "0s", "abc", "5x", "", "1.2.3s", "inf", "nan", True, False, None, [1]],
)
def test_rejected_durations(value: object) -> None:
    """Negatives, zero, infinities, bools, garbage and non-scalars are rejected."""
    with pytest.raises(ValidationError):
        Settings.model_validate({"poll_interval": value})


def test_duration_upper_bound() -> None:
    """Durations beyond a year are rejected (they would overflow event-loop timers)."""
    with pytest.raises(ValidationError):
        Settings.model_validate({"retention": "9000h"})


def test_duration_error_message_is_clear() -> None:
    """The message explains the accepted forms and does not repeat the input."""
    with pytest.raises(ValidationError) as info:
        Settings.model_validate({"poll_interval": "soon-ish"})
    (error,) = info.value.errors(include_url=False, include_input=False)
    assert error["loc"] == ("poll_interval",)
    assert "500ms" in error["msg"]
    assert "soon-ish" not in error["msg"]


def test_negative_duration_message() -> None:
    """A negative duration says it must be greater than 0."""
    with pytest.raises(ValidationError) as info:
        Settings.model_validate({"shutdown_timeout": -1})
    assert "greater than 0" in info.value.errors()[0]["msg"]


def test_target_durations_accept_strings() -> None:
    """Per-target durations (poll_interval, stall_after, timeouts) use the same parser."""
    settings = Settings.model_validate(
        {
            "engines": [
                {
                    "name": "prod",
                    "url": "http://e",
                    "poll_interval": "250ms",
                    "stall_after": "15m",
                    "request_timeout": 2,
                }
            ],
            "datadog": [
                {"api_key": "a", "app_key": "b", "not_found_grace": "1m", "stall_after": "45m"}
            ],
        }
    )
    engine, datadog = settings.engines[0], settings.datadog[0]
    assert (engine.poll_interval, engine.stall_after, engine.request_timeout) == (0.25, 900.0, 2.0)
    assert (datadog.not_found_grace, datadog.stall_after) == (60.0, 2700.0)
