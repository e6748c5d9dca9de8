"""The parsers over what the real engine and the real datadog-ci send: every real engine body
in both JVM time zones, the date formats installations configure, unreadable dates, foreign
404 bodies, delete evidence, and Datadog results and metadata as the CLI reads them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from batchscope.model import EngineHistoryRecord
from batchscope.sources.datadog import parse_batch, parse_metadata, parse_result, says_not_found
from batchscope.sources.engine_json import (
    JOB_DELETION_WINDOW,
    BadRow,
    DateProblem,
    _parse_date,
    parse_engine_date,
    parse_history_row,
    parse_statistics_row,
    says_does_not_exist,
    shows_delete,
    shows_job_deletion,
)

FIXTURES = Path(__file__).parents[1] / "fixtures"
ZONES = ["camunda7-dto-utc.json", "camunda7-dto-europe-berlin.json"]

# The instants in the real bodies (the same in both files, written in two zones).
START = 1720524822.165  # 2024-07-09T11:33:42.165Z
EXECUTION_START = 1720524840.001  # 2024-07-09T11:34:00.001Z
END = 1720526465.999  # 2024-07-09T12:01:05.999Z
REMOVAL = END + 7 * 86400


def real(name: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads((FIXTURES / "real_bodies" / name).read_text())
    return body


def datadog(name: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads((FIXTURES / "datadog" / name).read_text())
    return body


@pytest.fixture(params=ZONES)
def bodies(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The real bodies of one JVM time zone."""
    return real(request.param)


def test_both_zones_hold_the_same_keys() -> None:
    """The two files are the same bodies: every test below covers every key of both."""
    utc, berlin = (real(name) for name in ZONES)
    assert utc.keys() == berlin.keys()
    assert utc["statistics_row_seeding"][0]["startTime"] != (
        berlin["statistics_row_seeding"][0]["startTime"])


# --------------------------------------------------------------------------- engine rows


def test_statistics_row_while_seeding(bodies: dict[str, Any]) -> None:
    """A seeding batch: counts, no execution start yet, its job definition, no problems."""
    problems: list[DateProblem] = []
    [raw] = bodies["statistics_row_seeding"]
    row = parse_statistics_row(raw, problems)
    assert (row.batch_id, row.batch_type) == ("d2bd4a2e-3e1b-11ef-9a1b-0242ac120002",
                                              "instance-migration")
    assert (row.jobs.total, row.jobs.created, row.jobs.remaining, row.jobs.completed,
            row.jobs.failed) == (1000, 100, 1000, 0, 0)
    assert row.suspended is False and row.tenant_id is None
    assert row.start_time == pytest.approx(START)
    assert row.execution_start_time is None
    assert row.batch_job_definition_id == "job-1"
    assert problems == []


def test_statistics_row_suspended_with_failures(bodies: dict[str, Any]) -> None:
    """A suspended batch with failed jobs and a tenant, execution started."""
    [raw] = bodies["statistics_row_suspended_failed"]
    row = parse_statistics_row(raw)
    assert row.suspended is True and row.tenant_id == "tenant-a"
    assert (row.jobs.remaining, row.jobs.completed, row.jobs.failed) == (40, 960, 12)
    assert row.execution_start_time == pytest.approx(EXECUTION_START)


def test_batch_dto_is_not_a_statistics_row(bodies: dict[str, Any]) -> None:
    """GET /batch/{id} answers a BatchDto without the statistics counts: as a statistics
    row it is malformed, and the error names the missing count."""
    with pytest.raises(BadRow, match="completedJobs"):
        parse_statistics_row(bodies["batch_by_id"])


def test_history_row_completed(bodies: dict[str, Any]) -> None:
    """A completed historic batch has ended at its endTime; nothing was deleted yet."""
    record = parse_history_row(bodies["history_row_completed"])
    assert record.ended and not record.end_time_unreadable and not record.deleted
    assert record.end_time == pytest.approx(END)
    assert record.start_time == pytest.approx(START)
    assert record.execution_start_time == pytest.approx(EXECUTION_START)
    assert record.removal_time is None
    assert (record.total_jobs, record.batch_job_definition_id) == (1000, "job-1")


def test_history_row_unfinished(bodies: dict[str, Any]) -> None:
    """A running batch's historic row (endTime null) has not ended."""
    record = parse_history_row(bodies["history_row_unfinished"])
    assert record.end_time is None and not record.ended


def test_history_list_with_removal_time(bodies: dict[str, Any]) -> None:
    """The removal time a TTL sets is read like the other dates."""
    [raw] = bodies["history_list_completed_with_removal"]
    record = parse_history_row(raw)
    assert record.removal_time == pytest.approx(REMOVAL)
    assert record.end_time == pytest.approx(END)


def test_user_operation_log_bodies(bodies: dict[str, Any]) -> None:
    """A Delete entry proves a delete; an empty log does not."""
    assert shows_delete(bodies["user_operation_delete"]) is True
    assert shows_delete(bodies["user_operation_empty"]) is False


@pytest.mark.parametrize(
    ("key", "kind", "gone"),
    [
        ("error_404_batch", "batch", True),
        ("error_404_history", "history", True),
        ("error_404_batch", "history", False),  # the other endpoint's words
        ("error_404_history", "batch", False),
        ("error_400_max_results", "history", False),
        ("error_400_unbound", "batch", False),
        ("error_400_sortBy", "history", False),
    ],
)
def test_error_bodies(bodies: dict[str, Any], key: str, kind: str, gone: bool) -> None:
    """Only the engine's own "does not exist" for the asked endpoint and id means gone."""
    assert says_does_not_exist(bodies[key], kind, "nope") is gone
    assert says_does_not_exist(bodies[key], kind, "other-id") is False


def test_engine_filter_404_is_not_an_answer_about_the_batch(bodies: dict[str, Any]) -> None:
    """The authentication filter's 404 for a wrong engine name means a wrong URL."""
    body = json.loads(bodies["error_404_engine_filter_raw"])
    assert body["message"] == "Process engine nope not available"
    assert says_does_not_exist(body, "history", "nope") is False
    assert says_does_not_exist(body, "batch", "nope") is False


@pytest.mark.parametrize(
    "body",
    [None, "", "<html><body>404 Not Found</body></html>", {"detail": "Not Found"},
     {"message": None}, [], {"errors": ["Not found"]}],
)
def test_foreign_404_bodies(body: object) -> None:
    """Proxies', gateways' and empty 404 bodies are never the engine's not-found answer."""
    assert says_does_not_exist(body, "history", "nope") is False


# --------------------------------------------------------------------------- dates


@pytest.mark.parametrize(
    ("text", "epoch"),
    [
        ("2024-07-09T13:33:42.165+0200", START),  # the default ...SSSZ
        ("2024-07-09T11:33:42.165+0000", START),
        ("2024-07-09T13:33:42.165+02:00", START),  # ...SSSXXX
        ("2024-07-09T11:33:42.165Z", START),
        ("2024-07-09T13:33:42.165+02", START),
        ("2024-07-09T13:33:42.165CEST", START),  # ...SSSz
        ("2024-07-09T12:33:42.165CET", START),
        ("2024-07-09T11:33:42.165UTC", START),
        ("2024-07-09T11:33:42.165GMT", START),
        ("2024-07-09T07:33:42.165EDT", START),
        ("2024-07-09T06:33:42.165EST", START),
        ("2024-07-09T04:33:42.165PDT", START),
        ("2024-07-09T20:33:42.165JST", START),
        ("2024-07-09T13:33:42.165 CEST", START),
        ("2024-07-09T13:33:42.165GMT+02:00", START),
        ("2024-07-09T13:33:42.165 Europe/Berlin", START),
        ("2024-07-09T13:33:42+0200", START - 0.165),  # no milliseconds
        ("2024-07-09T11:33:42Z", START - 0.165),
        ("2024-07-09T13:33+0200", START - 42.165),  # no seconds
        ("2024-07-09 13:33:42.165+0200", START),  # space for T
        ("2024-07-09T11:33:42,165Z", START),
        ("2024-07-09T11:33:42.165123Z", START + 0.000123),
        ("09.07.2024 11:33", START - 42.165),  # dd.MM.yyyy HH:mm, taken as UTC
        ("9.7.2024 11:33:42", START - 0.165),
        ("09.07.2024 13:33 CEST", START - 42.165),
    ],
)
def test_date_variants(text: str, epoch: float) -> None:
    """The default pattern and the variants installations configure all parse."""
    assert parse_engine_date(text) == pytest.approx(epoch, abs=1e-6)


@pytest.mark.parametrize(
    "text",
    ["yesterday", "Tue Jul 09 13:33:42 CEST 2024", "2024-13-09T13:33:42Z",
     "2024-07-09T13:33:42.165XYZ", "2024-07-09T13:33:42+2500", "2024-07-09T25:33:42Z",
     "2024/07/09 13:33", "2024-07-09T13:33:42.165 Mars/Olympus", ""],
)
def test_dates_that_are_not(text: str) -> None:
    """Anything else is a ValueError that quotes it."""
    with pytest.raises(ValueError, match="unrecognised date"):
        parse_engine_date(text)


@pytest.mark.parametrize("offset", ["+1800", "-1859", "+0059", "+1900", "-2300", "+0060",
                                    "+0099"])
def test_default_pattern_offsets_read_as_the_general_path_reads_them(offset: str) -> None:
    """The default pattern's fast path (fromisoformat) takes only offsets up to 18:59, as
    the general path does: beyond that both refuse, whichever path the value takes."""
    text = f"2024-07-09T13:33:42.165{offset}"
    try:
        expected: float | None = _parse_date(text)
    except ValueError:
        expected = None
    if expected is None:
        with pytest.raises(ValueError, match="unrecognised date"):
            parse_engine_date(text)
    else:
        assert parse_engine_date(text) == expected


def test_epoch_milliseconds_are_read() -> None:
    """A mapper writing timestamps (numbers, epoch milliseconds) is understood too."""
    row = parse_history_row({"id": "b", "type": "t", "startTime": 1720524822165,
                             "endTime": 1720526465999})
    assert row.start_time == pytest.approx(START) and row.end_time == pytest.approx(END)


def test_unreadable_optional_dates_keep_the_row(bodies: dict[str, Any]) -> None:
    """startTime and executionStartTime that cannot be read become None, the row is kept,
    and each problem is named once with its raw value."""
    [raw] = bodies["statistics_row_suspended_failed"]
    garbled = {**raw, "startTime": "Tue Jul 09 13:33:42 CEST 2024", "executionStartTime": True}
    problems: list[DateProblem] = []
    row = parse_statistics_row(garbled, problems)
    assert row.batch_id == "f00d" and row.jobs.failed == 12
    assert row.start_time is None and row.execution_start_time is None
    assert problems == [DateProblem("startTime", "Tue Jul 09 13:33:42 CEST 2024"),
                        DateProblem("executionStartTime", "True")]


def test_unreadable_history_dates(bodies: dict[str, Any]) -> None:
    """An unreadable endTime still means ended; unreadable startTime, removalTime and
    executionStartTime are None; all four are named."""
    [raw] = bodies["history_list_completed_with_removal"]
    garbled = {**raw, "startTime": "soon", "endTime": "09/07/2024 14:01",
               "removalTime": "later", "executionStartTime": "whenever"}
    problems: list[DateProblem] = []
    record = parse_history_row(garbled, problems=problems)
    assert record.ended and record.end_time is None and record.end_time_unreadable
    assert (record.start_time, record.removal_time, record.execution_start_time) == (
        None, None, None)
    assert [p.field for p in problems] == [
        "startTime", "endTime", "executionStartTime", "removalTime"]


def test_unfinished_row_is_not_ended_by_unreadable_start() -> None:
    """An unreadable startTime does not make a running batch look ended."""
    record = parse_history_row({"id": "b", "type": "t", "startTime": "??", "endTime": None})
    assert not record.ended and not record.end_time_unreadable


def test_ended_property() -> None:
    """ended is true for a readable or an unreadable end time, false for none."""
    base: dict[str, Any] = {"batch_id": "b", "batch_type": "t", "total_jobs": 1,
                            "start_time": None}
    assert EngineHistoryRecord(**base, end_time=1.0).ended
    assert EngineHistoryRecord(**base, end_time=None, end_time_unreadable=True).ended
    assert not EngineHistoryRecord(**base, end_time=None).ended


def test_malformed_required_fields_still_skip_the_row(bodies: dict[str, Any]) -> None:
    """Only optional dates are tolerated: a missing id or count still makes a bad row."""
    [raw] = bodies["statistics_row_seeding"]
    with pytest.raises(BadRow, match="'id'"):
        parse_statistics_row({**raw, "id": None})
    with pytest.raises(BadRow, match="failedJobs"):
        parse_statistics_row({**raw, "failedJobs": "many"})


# --------------------------------------------------------------------------- job log evidence


def job_log_entry(timestamp: str, deletion: bool = True) -> dict[str, Any]:
    return {"id": "log", "timestamp": timestamp, "jobDefinitionId": "job-1",
            "deletionLog": deletion, "successLog": not deletion}


def test_deletion_at_the_end_is_evidence() -> None:
    """A deletion entry written when the batch ended proves a delete."""
    assert shows_job_deletion([job_log_entry("2024-07-09T14:01:05.999+0200")], END)
    assert shows_job_deletion([job_log_entry("2024-07-09T14:01:05.000+0200")], END)


def test_earlier_deletion_is_not_evidence() -> None:
    """A failed job deleted by hand before the end (the monitor job completes the batch
    later) is no delete of the batch; the window is inclusive."""
    assert JOB_DELETION_WINDOW == 2.0
    assert not shows_job_deletion([job_log_entry("2024-07-09T14:00:35.999+0200")], END)
    assert not shows_job_deletion([job_log_entry("2024-07-09T14:01:03.998+0200")], END)
    assert shows_job_deletion([job_log_entry("2024-07-09T14:01:03.999+0200")], END)


def test_job_deletion_without_times_or_entries() -> None:
    """Without an end time or a readable timestamp any deletion entry counts; an empty
    page or non-deletion entries never do; a body that is not a list is malformed."""
    assert shows_job_deletion([job_log_entry("garbled")], END)
    assert shows_job_deletion([job_log_entry("2024-07-09T13:00:00.000+0200")], None)
    assert not shows_job_deletion([], END)
    assert not shows_job_deletion([job_log_entry("2024-07-09T14:01:05.999+0200", False)], END)
    with pytest.raises(BadRow):
        shows_job_deletion({"count": 1}, END)


# --------------------------------------------------------------------------- datadog


def test_datadog_in_progress_batch_with_fast_retry() -> None:
    """duration 0 while running is unknown; a failed first attempt awaiting its retry keeps
    its id with retries 0; selective-rerun and rule skips parse without location or id."""
    parsed = parse_batch("b-1", datadog("batch_in_progress_fast_retry.json"))
    running, retrying, rerun_skip, rule_skip = parsed.snapshot.results
    assert parsed.skipped_results == []
    assert running.duration_ms is None and running.retries is None
    assert (running.max_retries, running.timed_out) == (None, None)
    assert retrying.duration_ms == 1000.0 and retrying.retries == 0
    assert (retrying.max_retries, retrying.timed_out) == (1, False)
    assert retrying.result_id == "7702893461200937611" and retrying.initial_result_id is None
    assert (rerun_skip.status, rerun_skip.location, rerun_skip.result_id) == (
        "skipped", "", None)
    assert (rerun_skip.selective_rerun, rerun_skip.linked_result_id) == ("skip", "123")
    assert rule_skip.selective_rerun is None and rule_skip.duration_ms is None
    assert rule_skip.device == "" and rule_skip.execution_rule == "skipped"


def test_datadog_batch_after_retry() -> None:
    """The final attempt carries initial_result_id; timed_out and max_retries are read."""
    parsed = parse_batch("b-2", datadog("batch_passed_after_retry.json"))
    browser, retried, timed_out = parsed.snapshot.results
    assert browser.device == "chrome.laptop_large" and browser.test_name == "Checkout"
    assert browser.max_retries is None and browser.duration_ms == 31000.0
    assert (retried.retries, retried.initial_result_id) == (1, "7702893461200937611")
    assert (timed_out.status, timed_out.timed_out, timed_out.max_retries) == ("failed", True, 2)
    assert timed_out.execution_rule == "non_blocking"


def test_metadata_as_datadog_ci_sends_it() -> None:
    """git.commit.sha, ci.job.name and ci.provider.name as the CLI nests them."""
    meta = parse_batch("b-1", datadog("batch_in_progress_fast_retry.json")).snapshot.metadata
    assert meta.git_commit == "3f0c1b2a9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a"
    assert meta.git_branch == "main"
    assert meta.pipeline_url == "https://github.com/acme/shop/actions/runs/42"
    assert (meta.job_name, meta.provider_name) == ("e2e", "github")


def test_metadata_as_the_published_model_names_it() -> None:
    """The published model's git.commitSha is read too; the nested spelling wins."""
    meta = parse_batch("b-2", datadog("batch_passed_after_retry.json")).snapshot.metadata
    assert (meta.git_commit, meta.git_branch, meta.provider_name) == (
        "abc123", "release", "gitlab")
    assert meta.job_name is None
    both = parse_metadata({"git": {"commitSha": "old", "commit": {"sha": "new"}}})
    assert both.git_commit == "new"
    assert parse_metadata(None).git_commit is None


def test_duration_zero_means_unknown_only_while_in_progress() -> None:
    """A finished result may really take 0 ms; only an in-progress 0 is unknown."""
    base = {"test_public_id": "a", "duration": 0}
    assert parse_result({**base, "status": "in_progress"}).duration_ms is None
    assert parse_result({**base, "status": "passed"}).duration_ms == 0.0


def test_nullable_and_odd_result_fields() -> None:
    """Nulls and wrong types are read as unknown, not as errors."""
    result = parse_result({"test_public_id": "a", "status": "failed", "retries": None,
                           "max_retries": "2", "timed_out": "yes", "selective_rerun": "skip",
                           "initial_result_id": 5})
    assert (result.retries, result.max_retries, result.timed_out) == (None, None, None)
    assert (result.selective_rerun, result.initial_result_id) == (None, None)


@pytest.mark.parametrize(
    ("body", "answer"),
    [({"errors": ["Batch does not exist."]}, True), ({"errors": []}, True),
     ({"detail": "Not Found"}, False), (None, False), ("<html>404</html>", False),
     ({"errors": "nope"}, False), ([], False)],
)
def test_datadog_not_found_bodies(body: object, answer: bool) -> None:
    """Only Datadog's own error list is its 404; anything else is a wrong URL."""
    assert says_not_found(body) is answer
