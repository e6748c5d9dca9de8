"""tracker/links.py: the upstream UIs' own URL formats (Cockpit's batch page; datadog-ci's
batch, result and app URLs), checked against what their sources build."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from batchscope.tracker.links import DatadogLinks, EngineLinks, datadog_app_url

COCKPIT = "https://camunda.example.com/camunda/app/cockpit/default"


def test_cockpit_batch_page_selects_the_batch_by_details_and_type() -> None:
    """Cockpit's hash route /batch with ?details=ID&type=runtime, no "!" after the "#";
    the history view for a finished batch; a trailing slash in the base is harmless."""
    running = EngineLinks(COCKPIT).batch("7a9f-11ef")
    ended = EngineLinks(COCKPIT + "/").batch("7a9f-11ef", finished=True)

    assert running == f"{COCKPIT}/#/batch?details=7a9f-11ef&type=runtime"
    assert ended == f"{COCKPIT}/#/batch?details=7a9f-11ef&type=history"


def test_cockpit_link_encodes_what_it_carries() -> None:
    """An id with characters that mean something in a query stays one parameter."""
    link = EngineLinks(COCKPIT).batch("a&type=history#x")

    fragment = urlsplit(link).fragment
    path, _, query = fragment.partition("?")
    assert path == "/batch"
    assert parse_qs(query) == {"details": ["a&type=history#x"], "type": ["runtime"]}


def test_datadog_batch_page_is_datadog_cis_summary_link() -> None:
    """getBatchUrl: synthetics/explorer/ci?batchResultId=ID under the app URL."""
    link = DatadogLinks("https://app.datadoghq.eu/").batch("f1d2-batch")

    assert link == "https://app.datadoghq.eu/synthetics/explorer/ci?batchResultId=f1d2-batch"


@pytest.mark.parametrize(("test_type", "batch_id", "expected"), [
    ("browser", "b-1", "https://app.datadoghq.com/synthetics/details/abc-def-ghi/result/"
                       "123?batch_id=b-1&from_ci=true"),
    ("api", "b-1", "https://app.datadoghq.com/synthetics/details/abc-def-ghi?resultId=123"
                   "&batch_id=b-1&from_ci=true"),
    ("mobile", "b-1", "https://app.datadoghq.com/synthetics/details/abc-def-ghi?resultId=123"
                      "&batch_id=b-1&from_ci=true"),
    ("api", None, "https://app.datadoghq.com/synthetics/details/abc-def-ghi?resultId=123"),
    (None, None, "https://app.datadoghq.com/synthetics/details/abc-def-ghi/result/123"),
    ("browser", None, "https://app.datadoghq.com/synthetics/details/abc-def-ghi/result/123"),
])
def test_result_pages_follow_get_result_url(
    test_type: str | None, batch_id: str | None, expected: str
) -> None:
    """getResultUrl: a browser result has its own page, any other test's result is
    selected on the test page; the CI batch parameters come with a known batch. A type
    not given keeps the result page form."""
    links = DatadogLinks("https://app.datadoghq.com")

    assert links.result("abc-def-ghi", "123", batch_id=batch_id, test_type=test_type) == expected


def test_no_result_id_no_link() -> None:
    """A result not run yet (or skipped by a selective rerun) has no page."""
    links = DatadogLinks("https://app.datadoghq.com")

    assert links.result("abc-def-ghi", None) is None
    assert links.result("abc-def-ghi", "", test_type="browser") is None


def test_result_link_path_parts_are_encoded() -> None:
    """Ids are put into the path encoded: a hostile id cannot add path segments."""
    link = DatadogLinks("https://app.datadoghq.com").result("a/../b", "1?x", test_type="browser")

    assert link == "https://app.datadoghq.com/synthetics/details/a%2F..%2Fb/result/1%3Fx"


@pytest.mark.parametrize(("site", "subdomain", "expected"), [
    # datadog-ci's own cases (packages/base/src/helpers/__tests__/app.test.ts)
    ("datadoghq.com", "", "https://app.datadoghq.com"),
    ("datadoghq.com", "app", "https://app.datadoghq.com"),
    ("datadoghq.com", "myorg", "https://myorg.datadoghq.com"),
    ("dd.datad0g.com", "", "https://dd.datad0g.com"),
    ("dd.datad0g.com", "dd", "https://dd.datad0g.com"),
    ("dd.datad0g.com", "myorg", "https://myorg.datad0g.com"),
    ("datadoghq.eu", "", "https://app.datadoghq.eu"),
    ("datadoghq.eu", "myorg", "https://myorg.datadoghq.eu"),
    # the regional sites are their own app hosts
    ("us3.datadoghq.com", "", "https://us3.datadoghq.com"),
    ("us5.datadoghq.com", "", "https://us5.datadoghq.com"),
    ("ap1.datadoghq.com", "", "https://ap1.datadoghq.com"),
    ("ddog-gov.com", "", "https://app.ddog-gov.com"),
])
def test_app_url_is_derived_from_the_site_as_datadog_ci_does(
    site: str, subdomain: str, expected: str
) -> None:
    """getCommonAppBaseURL: app.<site> for two-part sites, the site itself for regional
    three-part ones, a custom sub-domain in front of the last two parts."""
    assert datadog_app_url(site, subdomain) == expected
