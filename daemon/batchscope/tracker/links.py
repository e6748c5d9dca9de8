"""Links to a batch (and a CI result) in the upstream's own UI, from the target's base URL.

Pure string building; the formats are the upstream UIs' own (sources cited at each one).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, urlencode


@dataclass(frozen=True, slots=True)
class EngineLinks:
    """Cockpit's batch page, under ``cockpit_url`` (e.g.
    ``https://camunda.example.com/camunda/app/cockpit/default``)."""

    cockpit_url: str

    def batch(self, batch_id: str, *, finished: bool = False) -> str:
        # Cockpit's batch operations page selects a batch with ?details=ID&type=runtime|history
        # (camunda-bpm-platform webapps, cockpit batch plugin: batch/controllers/...).
        kind = "history" if finished else "runtime"
        query = urlencode({"details": batch_id, "type": kind})
        return f"{self.cockpit_url.rstrip('/')}/#/batch?{query}"


@dataclass(frozen=True, slots=True)
class DatadogLinks:
    """Datadog's CI batch and test-result pages, under ``app_url`` (https://app.<site>)."""

    app_url: str

    def batch(self, batch_id: str) -> str:
        # datadog-ci prints the batch summary as {baseUrl}synthetics/explorer/ci?batchResultId=ID
        # (packages/plugin-synthetics, getBatchUrl).
        return (f"{self.app_url.rstrip('/')}/synthetics/explorer/ci?"
                f"{urlencode({'batchResultId': batch_id})}")

    def result(self, test_public_id: str, result_id: str | None) -> str | None:
        # datadog-ci's getResultUrl: {baseUrl}synthetics/details/{public_id}/result/{result_id}
        if not result_id:
            return None
        return (f"{self.app_url.rstrip('/')}/synthetics/details/{quote(test_public_id, safe='')}"
                f"/result/{quote(result_id, safe='')}")


Links = EngineLinks | DatadogLinks
