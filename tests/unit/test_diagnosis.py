"""SPEC.md's diagnosis rules as tables: stall reasons and their precedence, failure
summaries (grouping, ordering, truncation, ids), end reasons, Datadog failures."""

from __future__ import annotations

import pytest

from batchscope.model import CiResult, FailedJob, JobCounts, Reason, State
from batchscope.tracker.diagnosis import (
    MAX_IDS,
    MAX_MESSAGE,
    MAX_RESULTS,
    Findings,
    datadog_diagnosis,
    engine_diagnosis,
    engine_end_reason,
    engine_stall_reason,
    failure_summary,
)
from tracker_builders import hist


def jobs(total: int = 10, created: int = 10, completed: int = 0, failed: int = 0) -> JobCounts:
    return JobCounts(total=total, created=created, completed=completed,
                     remaining=created - completed, failed=failed)


def job(n: int, message: str | None = "boom", activity: str | None = "Task_A") -> FailedJob:
    return FailedJob(job_id=f"j{n}", message=message, process_instance_id=f"pi{n}",
                     activity_id=activity, job_definition_id="jd")


SEED = FailedJob(job_id="seed", message="seed broke")
MONITOR = FailedJob(job_id="mon", message="monitor broke")


@pytest.mark.parametrize(("counts", "findings", "expected"), [
    (jobs(created=0), Findings(seed_failure=SEED, monitor_failure=MONITOR),
     Reason.SEED_JOB_FAILED),
    (jobs(created=0), Findings(monitor_failure=MONITOR), Reason.MONITOR_JOB_FAILED),
    (jobs(created=0), Findings(), Reason.NOT_STARTED),
    (jobs(created=0), None, Reason.NOT_STARTED),
    (jobs(created=4, completed=4), Findings(), Reason.SEEDING_STOPPED),
    (jobs(created=10, completed=10), Findings(), Reason.AWAITING_MONITOR),
    (jobs(created=10, completed=3), Findings(), Reason.JOBS_NOT_EXECUTING),
    (jobs(created=10, completed=3), Findings(monitor_failure=MONITOR),
     Reason.MONITOR_JOB_FAILED),
    (None, Findings(), Reason.JOBS_NOT_EXECUTING),
], ids=["seed beats monitor", "monitor beats counts", "not started", "not started, no lookup",
        "seeding stopped", "awaiting monitor", "jobs not executing",
        "monitor beats jobs not executing", "no counts"])
def test_stall_reasons_first_match_wins(counts: JobCounts | None, findings: Findings | None,
                                        expected: Reason) -> None:
    """Each stall rule, and that an earlier rule wins over a later one."""
    assert engine_stall_reason(counts, findings) is expected


def test_failure_summary_groups_orders_and_caps() -> None:
    """Distinct messages, most frequent first (ties in first-seen order), counts, at most
    3 distinct ids of each kind per message, messages cut at 500 characters."""
    long = "x" * 2_000
    sample = [job(1, "rare"), *[job(n, long) for n in range(2, 7)],
              job(7, "two"), job(8, "two", activity="Task_B"), job(9, None)]
    summary = failure_summary(12, sample)
    assert summary["failed_jobs"] == 12 and summary["sampled"] == 9
    messages = summary["messages"]
    assert [m["count"] for m in messages] == [5, 2, 1, 1]
    assert len(messages[0]["message"]) <= MAX_MESSAGE and messages[0]["message"].endswith("…")
    assert messages[0]["job_ids"] == ["j2", "j3", "j4"] and len(messages[0]["job_ids"]) == MAX_IDS
    assert messages[1] == {"message": "two", "count": 2, "job_ids": ["j7", "j8"],
                           "process_instance_ids": ["pi7", "pi8"],
                           "activity_ids": ["Task_A", "Task_B"]}
    assert [m["message"] for m in messages[2:]] == ["rare", None]


def test_engine_failed_without_findings_keeps_the_reason_and_no_evidence() -> None:
    """A failed lookup (or none yet) says failed_jobs with failure null, never guesses."""
    assert engine_diagnosis(State.FAILED, jobs(failed=3), None) == (Reason.FAILED_JOBS, None)
    assert engine_diagnosis(State.FAILED, jobs(failed=3), Findings(error="timeout")) == (
        Reason.FAILED_JOBS, None)
    reason, failure = engine_diagnosis(State.FAILED, jobs(failed=3), Findings(failed_jobs=[job(1)]))
    assert reason is Reason.FAILED_JOBS and failure is not None and failure["failed_jobs"] == 3


def test_a_failed_seed_job_is_the_evidence_of_its_stall() -> None:
    """seed_job_failed carries the seed job's message in the failure summary shape."""
    reason, failure = engine_diagnosis(State.STALLED, jobs(created=0),
                                       Findings(seed_failure=SEED))
    assert reason is Reason.SEED_JOB_FAILED
    assert failure is not None and failure["messages"][0]["message"] == "seed broke"
    assert engine_diagnosis(State.IN_PROGRESS, jobs(), None) == (None, None)


def test_end_reasons() -> None:
    """cancelled says whether a delete or a suspended batch ending was the evidence;
    vanished says no_history; passed needs no reason."""
    assert engine_end_reason(State.CANCELLED, hist(deleted=True)) is Reason.DELETED
    assert engine_end_reason(State.CANCELLED, hist()) is Reason.SUSPENDED_WHEN_ENDED
    assert engine_end_reason(State.VANISHED, None) is Reason.NO_HISTORY
    assert engine_end_reason(State.PASSED, hist()) is None


def result(n: int, *, rule: str = "blocking", timed_out: bool | None = False) -> CiResult:
    return CiResult(test_public_id=f"t-{n}", status="failed", location="aws:eu-west-1",
                    device="chrome", test_name=f"Test {n}", execution_rule=rule,
                    result_id=f"r{n}", retries=1, timed_out=timed_out)


def test_datadog_failures_list_blocking_results_with_links() -> None:
    """Failing blocking results are the evidence (at most 20), with result links;
    non-blocking failures are not; a timed-out one makes the reason timed_out."""
    failing = [("failed", result(n)) for n in range(25)]
    nb = ("failed", result(99, rule="non_blocking"))
    reason, failure = datadog_diagnosis(State.FAILED, [*failing, nb, ("passed", result(50))],
                                        lambda r: f"https://app/{r.test_public_id}/{r.result_id}")
    assert reason is Reason.BLOCKING_RESULTS_FAILED
    assert failure is not None and failure["results_failed"] == 25
    assert len(failure["results"]) == MAX_RESULTS
    assert failure["results"][0]["link"] == "https://app/t-0/r0"
    assert "t-99" not in {r["test_public_id"] for r in failure["results"]}
    reason, _ = datadog_diagnosis(State.FAILED, [("failed", result(1, timed_out=True))])
    assert reason is Reason.TIMED_OUT


def test_a_stalled_ci_batch_lists_what_does_not_finish() -> None:
    """results_not_finishing with the results still in progress."""
    running = CiResult(test_public_id="slow", status="in_progress", result_id="r1")
    reason, failure = datadog_diagnosis(State.STALLED, [("in_progress", running)])
    assert reason is Reason.RESULTS_NOT_FINISHING
    assert failure is not None and failure["results"][0]["test_public_id"] == "slow"


def test_a_message_echoing_one_of_our_secrets_is_redacted() -> None:
    """Exception messages are upstream text: a credential of ours in one is hidden before
    it reaches the event, the API or the log line."""
    from batchscope import redaction

    redaction.register(["s3cr3t-monitor-password"])
    summary = failure_summary(1, [job(1, "connect failed for monitor:s3cr3t-monitor-password")])
    assert "s3cr3t" not in summary["messages"][0]["message"]


def test_messages_of_one_cause_group_across_instance_ids() -> None:
    """ENGINE-23004 names each job's own process instance: those messages are one group,
    shown by the first of them; a different cause is another group."""
    def migration(n: int) -> FailedJob:
        return job(n, f"ENGINE-23004 Cannot migrate process instance "
                      f"'{n:08d}-aaaa-bbbb-cccc-0123456789ab': no instruction for 'Task_A'")

    summary = failure_summary(4, [migration(1), migration(2), migration(3), job(4, "other")])
    first, second = summary["messages"]
    assert first["count"] == 3 and first["message"] == migration(1).message
    assert second == {**second, "message": "other", "count": 1}
