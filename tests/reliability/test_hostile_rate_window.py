"""Issue 9 item 2, the 200 case: X-RateLimit-Remaining 0 with X-RateLimit-Reset 1e9 on a
successful answer. The wait is capped, said once, and /healthz stays honest."""

from __future__ import annotations

from batchscope.sources.fetch import MAX_UPSTREAM_WAIT
from harness import DATADOG
from helpers import LogLines, eventually, wait_until
from reliability_kit import running_stack

CI_BATCH = "/api/v1/synthetics/ci/batch/"


async def test_a_spent_window_with_an_absurd_reset_is_capped_and_said_once(
        logs: LogLines) -> None:
    """Every answer says the budget is spent until a reset a billion seconds away: polling
    pauses at most MAX_UPSTREAM_WAIT (not forever), one target.waiting line says so, the
    target stays up (nothing failed) and /healthz stays 200 while the loop waits."""
    async with running_stack(logs) as stack:
        stack.datadog.inject(CI_BATCH, times=None, headers={
            "X-RateLimit-Remaining": "0", "X-RateLimit-Limit": "100",
            "X-RateLimit-Reset": "1000000000"})
        for _ in range(3):
            await stack.watch(stack.datadog.create_batch())
        waiting = await wait_until(lambda: logs.events("target.waiting", source="datadog"),
                                   what="the wait said")
        assert len(waiting) == 1 and waiting[0]["reason"] == "rate_limited"
        assert 0 < waiting[0]["seconds"] <= MAX_UPSTREAM_WAIT
        assert await stack.up("datadog", DATADOG) == 1

        async def healthy() -> bool:
            async with stack.http.get(stack.base + "/healthz") as resp:
                return resp.status == 200

        assert await eventually(healthy, what="/healthz 200 while waiting")
        assert len(logs.events("target.waiting", source="datadog")) == 1
