"""Links to a batch (and a CI result) in the upstream's own UI, from the target's base URL.

Pure string building. The formats are the upstream UIs' own, read in their source:

- Cockpit: camunda/camunda-bpm-platform at 3dd653fe66 (the 7.24 line; Operaton and CIB seven
  ship the same webapp), ``webapps/frontend/ui/cockpit/...``.
- Datadog: DataDog/datadog-ci at eb982c96, ``packages/plugin-synthetics/src/utils/public.ts``
  and ``packages/base/src/helpers/app.ts``: the links ``datadog-ci synthetics run-tests``
  prints and writes into its JUnit report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final
from urllib.parse import quote, urlencode

#: datadog-ci's DEFAULT_DATADOG_SUBDOMAIN (packages/base/src/helpers/app.ts).
DEFAULT_DATADOG_SUBDOMAIN: Final = "app"


def datadog_app_url(site: str, subdomain: str = "") -> str:
    """The Datadog web app of a site, as datadog-ci derives it (``getCommonAppBaseURL`` in
    packages/base/src/helpers/app.ts; ``subdomain`` is its ``subdomain`` option, the
    ``DATADOG_SUBDOMAIN`` variable, for organisations with a custom sub-domain).

    A two-part site gets the sub-domain in front (``datadoghq.com`` ->
    ``https://app.datadoghq.com``, ``datadoghq.eu`` with ``myorg`` ->
    ``https://myorg.datadoghq.eu``); a three-part site is its own app host with the default
    sub-domain (``us3.datadoghq.com`` -> ``https://us3.datadoghq.com``), and a custom one
    replaces its first part (``us5.datadoghq.com`` with ``myorg`` ->
    ``https://myorg.datadoghq.com``). No trailing slash (datadog-ci keeps one).
    """
    sub = subdomain or DEFAULT_DATADOG_SUBDOMAIN
    parts = site.split(".")
    if len(parts) == 3:
        if sub == DEFAULT_DATADOG_SUBDOMAIN:
            return f"https://{site}"
        return f"https://{sub}.{parts[1]}.{parts[2]}"
    return f"https://{sub}.{site}"


@dataclass(frozen=True, slots=True)
class EngineLinks:
    """Cockpit's batch page, under ``cockpit_url``: Cockpit's own base, the part before
    ``#/``, e.g. ``https://camunda.example.com/camunda/app/cockpit/default`` (``default`` is
    the process engine's name; Operaton's webapp lives under ``/operaton/app/cockpit/...``)."""

    cockpit_url: str

    def batch(self, batch_id: str, *, finished: bool = False) -> str:
        """``{cockpit_url}/#/batch?details={id}&type=runtime|history``.

        The route is ``/batch`` (cockpit ``scripts/batches/config/routes.js``); Cockpit's
        router has no ``!`` in its hash (``$locationProvider.hashPrefix('')`` in
        ``scripts/camunda-cockpit-ui.js``); the page opens a batch from the search
        parameters ``details`` (its id) and ``type`` (``runtime`` or ``history``)
        (``batches/controllers/view-ctrl.js``, ``openDetails`` and the ``$location.search()``
        watch). Cockpit links its batch page the same way itself (the locale string
        ``PLGN_MOD_ASYNC_INSTANCES_NOTIFICATION_SUCCESS``: ``#/batch?details={{batchId}}
        &type=runtime``). A ``runtime`` link stays good after the batch ends: when the
        runtime batch is gone, the page loads its history instead
        (``batches/components/batch.js``, ``loadDetails`` -> ``details:switchToHistory``).
        ``finished`` links the history view directly (it exists at history level FULL).
        """
        kind = "history" if finished else "runtime"
        query = urlencode({"details": batch_id, "type": kind})
        return f"{self.cockpit_url.rstrip('/')}/#/batch?{query}"


@dataclass(frozen=True, slots=True)
class DatadogLinks:
    """Datadog's CI batch and test-result pages, under ``app_url`` (the web app, see
    :func:`datadog_app_url`)."""

    app_url: str

    def batch(self, batch_id: str) -> str:
        """``{app_url}/synthetics/explorer/ci?batchResultId={id}`` (datadog-ci's
        ``getBatchUrl``, the "View full summary in Datadog" link and the JUnit report's
        ``batch_url``)."""
        return (f"{self.app_url.rstrip('/')}/synthetics/explorer/ci?"
                f"{urlencode({'batchResultId': batch_id})}")

    def result(
        self,
        test_public_id: str,
        result_id: str | None,
        *,
        batch_id: str | None = None,
        test_type: str | None = None,
    ) -> str | None:
        """A CI result's page, as datadog-ci's ``getResultUrl`` builds it, or None without a
        ``result_id`` (a result still queued, or skipped by a selective rerun).

        A browser test's result has a page of its own:
        ``{app_url}/synthetics/details/{public_id}/result/{result_id}``; any other test's
        (``api``, ``mobile``...) is its test page with the result selected:
        ``{app_url}/synthetics/details/{public_id}?resultId={result_id}``. With the batch
        known, datadog-ci adds ``batch_id={batch_id}&from_ci=true`` (the page then shows the
        result in its CI batch). Callers should pass both: without ``test_type`` the result
        page form is used (right for browser tests only).
        """
        if not result_id:
            return None
        test = f"{self.app_url.rstrip('/')}/synthetics/details/{quote(test_public_id, safe='')}"
        ci = {} if batch_id is None else {"batch_id": batch_id, "from_ci": "true"}
        if test_type is None or test_type == "browser":
            page = f"{test}/result/{quote(result_id, safe='')}"
            return f"{page}?{urlencode(ci)}" if ci else page
        return f"{test}?{urlencode({'resultId': result_id, **ci})}"


Links = EngineLinks | DatadogLinks
