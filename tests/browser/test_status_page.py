"""The status page in a real (headless Debian) chromium against a daemon and the simulator:
batches appear and change state without a reload, filters live in the URL, hostile
upstream strings stay text, the page fits a phone, and a screenshot is kept."""

from __future__ import annotations

from typing import Any

import pytest
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from browser_kit import Browser
from harness import Stack, running_stack
from helpers import LogLines

COCKPIT = "https://camunda.example.com/camunda/app/cockpit/default"
HOSTILE_TYPE = "<img src=x onerror=alert(1)>"
HOSTILE_MESSAGE = "<script>alert(2)</script><b>bold</b> ${jndi:ldap://x}"

ROW_STATE = """
const tr = document.querySelector('tr[data-key="' + CSS.escape(arguments[0]) + '"]');
return tr ? tr.dataset.state : null;
"""


def row_state(key: str, state: str) -> Any:
    def condition(driver: WebDriver) -> bool:
        return bool(driver.execute_script(ROW_STATE, key) == state)
    return condition


def engine_key(batch_id: str) -> str:
    return f"engine/prod/{batch_id}"


def stack_with_links(**overrides: Any) -> Any:
    return running_stack(engine_target={"cockpit_url": COCKPIT}, **overrides)


async def visible_keys(browser: Browser) -> list[str]:
    return list(await browser.js(
        "return Array.from(document.querySelectorAll('#batch-rows tr'))"
        ".map(tr => tr.dataset.key)"))


async def populate(stack: Stack) -> dict[str, str]:
    """A few batches in several states, as an operator would meet them."""
    engine = stack.engine
    ids = {
        "running": engine.create_batch(total_jobs=400),
        "failing": engine.create_batch(type="instance-modification", total_jobs=120),
        "deleting": engine.create_batch(type="instance-deletion", total_jobs=50),
        "suspended": engine.create_batch(type="set-variables", total_jobs=30),
    }
    engine.complete_jobs(ids["running"], 260)
    engine.complete_jobs(ids["failing"], 40)
    engine.fail_jobs(ids["failing"], 3)
    engine.complete_jobs(ids["deleting"], 50)
    engine.suspend(ids["suspended"])
    ci = stack.datadog.create_batch()
    await stack.watch(ci)
    ids["ci"] = ci
    return ids


async def test_batches_appear_and_change_state_without_a_reload(
        browser: Browser, logs: LogLines) -> None:
    """A batch created after the page loaded appears, then turns failed, in the same
    document (no reload); its row shows the failed jobs and the upstream link; the
    transition shows in the recent events; a screenshot of the page is saved."""
    async with stack_with_links() as stack:
        ids = await populate(stack)
        await browser.get(stack.base + "/")
        await browser.until(row_state(engine_key(ids["failing"]), "failed"),
                            what="the failed batch's row")
        await browser.js("window.sameDocument = 'yes'")

        late = stack.engine.create_batch(type="instance-migration", total_jobs=10)
        await browser.until(row_state(engine_key(late), "in_progress"),
                            what="a batch created after the page loaded")
        stack.engine.fail_jobs(late, 2)
        await browser.until(row_state(engine_key(late), "failed"),
                            what="the new batch turning failed")
        assert await browser.js("return window.sameDocument") == "yes", "the page reloaded"

        row = await browser.js(
            "const tr = document.querySelector('tr[data-key=\"' + CSS.escape(arguments[0]) "
            "+ '\"]'); return {failed: tr.querySelector('.c-failed').textContent, "
            "state: tr.querySelector('.c-state').textContent, "
            "link: tr.querySelector('a.upstream') && tr.querySelector('a.upstream').href, "
            "progress: tr.querySelector('.ptext').textContent}", engine_key(late))
        assert row["failed"] == "2"
        assert "failed" in row["state"] and "✗" in row["state"]  # a word and a symbol
        assert row["link"] is not None and row["link"].startswith(COCKPIT)
        assert row["progress"] == "0 / 10 jobs"
        # Failed batches come first: what needs action is at the top.
        keys = await visible_keys(browser)
        assert {keys[0], keys[1]} == {engine_key(late), engine_key(ids["failing"])}
        await browser.until(lambda d: d.execute_script(
            "return Array.from(document.querySelectorAll('#events .event')).some(li => "
            "li.textContent.includes(arguments[0]) && li.textContent.includes('failed'))",
            late), what="the transition in the recent events")
        # The targets are shown up, with their last poll.
        targets = await browser.js(
            "return Array.from(document.querySelectorAll('#targets .target'))"
            ".map(li => [li.dataset.target, li.dataset.status])")
        assert sorted(map(tuple, targets)) == [("ci", "up"), ("prod", "up")]
        await browser.until(lambda d: d.find_element(By.ID, "live").get_attribute(
            "data-live") == "live", what="the live indicator")
        await browser.screenshot("status-page.png")


async def test_details_show_failure_messages_and_ci_results(browser: Browser,
                                                            logs: LogLines) -> None:
    """'details' under a failed engine batch lists its distinct failure messages with
    counts; under a CI batch, one line per result; a screenshot is saved."""
    async with stack_with_links() as stack:
        ids = await populate(stack)
        await browser.get(stack.base + "/")
        failing = engine_key(ids["failing"])
        await browser.until(row_state(failing, "failed"))
        await browser.until(lambda d: d.execute_script(
            "const tr = document.querySelector('tr[data-key=\"' + CSS.escape(arguments[0]) "
            "+ '\"]'); return tr.querySelector('.message').textContent", failing),
            what="the first failure message in the row")
        await open_details(browser, failing)
        detail = await browser.until(lambda d: d.execute_script(
            "const row = document.querySelector('tr.detail[data-for=\"' + "
            "CSS.escape(arguments[0]) + '\"]'); const li = row && row.querySelector("
            "'.messages li'); return li && [li.querySelector('.count').textContent, "
            "li.querySelector('.msg').textContent]", failing), what="the failure messages")
        assert detail[0] == "\u00d73" and "Unknown property" in detail[1]

        ci = f"datadog/ci/{ids['ci']}"
        await open_details(browser, ci)
        results = await browser.until(lambda d: d.execute_script(
            "const row = document.querySelector('tr.detail[data-for=\"' + "
            "CSS.escape(arguments[0]) + '\"]'); return row && row.querySelectorAll("
            "'.results tbody tr').length", ci), what="the CI results")
        assert results == len(stack.datadog.batch(ids["ci"]).results)
        await browser.screenshot("status-page-details.png")


async def open_details(browser: Browser, key: str) -> None:
    await browser.js(
        "document.querySelector('tr[data-key=\"' + CSS.escape(arguments[0]) + '\"] "
        ".details-toggle').click()", key)


async def test_progress_updates_without_a_transition(browser: Browser,
                                                     logs: LogLines) -> None:
    """Job progress is not an event: the page re-reads the visible rows and the bar moves."""
    async with running_stack() as stack:
        batch = stack.engine.create_batch(total_jobs=10)
        await browser.get(stack.base + "/")
        await browser.until(row_state(engine_key(batch), "in_progress"))
        stack.engine.complete_jobs(batch, 7)
        await browser.until(lambda d: d.execute_script(
            "const tr = document.querySelector('tr[data-key=\"' + CSS.escape(arguments[0]) "
            "+ '\"]'); return tr.querySelector('.ptext').textContent === '7 / 10 jobs' "
            "&& tr.querySelector('progress').value === 70", engine_key(batch)),
            timeout=20, what="the progress bar at 70%")


async def test_filters_are_kept_in_the_url(browser: Browser, logs: LogLines) -> None:
    """Choosing a state filters the rows and writes ?state= into the URL; opening that URL
    anew shows the same filtered view (a link can be shared); clearing shows everything."""
    async with running_stack() as stack:
        ok = stack.engine.create_batch(total_jobs=5)
        bad = stack.engine.create_batch(total_jobs=5)
        stack.engine.fail_jobs(bad, 1)
        await browser.get(stack.base + "/")
        await browser.until(row_state(engine_key(bad), "failed"))
        await browser.until(row_state(engine_key(ok), "in_progress"))

        await browser.call(lambda: Select(browser.driver.find_element(By.ID, "f-state"))
                           .select_by_value("failed"))
        await browser.until(lambda d: "state=failed" in d.current_url, what="?state= in URL")
        await browser.until(lambda d: d.execute_script(
            "return document.querySelectorAll('#batch-rows tr').length") == 1,
            what="only the failed row")
        assert await visible_keys(browser) == [engine_key(bad)]

        shared = browser.driver.current_url
        await browser.get("about:blank")
        await browser.get(shared)
        await browser.until(row_state(engine_key(bad), "failed"), what="the shared view")
        assert await visible_keys(browser) == [engine_key(bad)]
        assert await browser.js("return document.getElementById('f-state').value") == "failed"

        await browser.call(lambda: browser.driver.find_element(By.ID, "f-source").click())
        await browser.call(lambda: Select(browser.driver.find_element(By.ID, "f-source"))
                           .select_by_value("engine"))
        await browser.until(lambda d: "source=engine" in d.current_url
                            and "state=failed" in d.current_url, what="both filters")
        await browser.call(lambda: browser.driver.find_element(By.ID, "f-clear").click())
        await browser.until(lambda d: "?" not in d.current_url, what="filters cleared")
        await browser.until(lambda d: len(d.execute_script(
            "return Array.from(document.querySelectorAll('#batch-rows tr'))")) == 2,
            what="every row back")


async def test_hostile_upstream_strings_render_as_text(browser: Browser,
                                                       logs: LogLines) -> None:
    """An engine batch whose type is HTML (and whose failure message is a script) shows the
    characters themselves: no element is made from them and no alert fires."""
    async with running_stack() as stack:
        batch = stack.engine.create_batch(type=HOSTILE_TYPE, total_jobs=3)
        stack.engine.fail_jobs(batch, 1, HOSTILE_MESSAGE)
        await browser.get(stack.base + "/")
        await browser.until(row_state(engine_key(batch), "failed"))
        shown = await browser.js(
            "const tr = document.querySelector('tr[data-key=\"' + CSS.escape(arguments[0]) "
            "+ '\"]'); return tr.querySelector('.batch-type').textContent", engine_key(batch))
        assert shown == HOSTILE_TYPE
        await browser.until(lambda d: d.execute_script(
            "return Array.from(document.querySelectorAll('#events .e-what'))"
            ".some(e => e.textContent === arguments[0])", HOSTILE_TYPE),
            what="the hostile type in the events list, as text")
        await open_details(browser, engine_key(batch))
        message = await browser.until(lambda d: d.execute_script(
            "const m = document.querySelector('tr.detail .msg'); return m && m.textContent"),
            what="the hostile message in the details")
        assert message.startswith(HOSTILE_MESSAGE)
        made = await browser.js(
            "return document.querySelectorAll('main img, main script, main b').length")
        assert made == 0, "an element was built from upstream text"
        with pytest.raises(NoAlertPresentException):
            await browser.call(lambda: browser.driver.switch_to.alert.text)
        messages = [m for m in await browser.console() if m.get("level") == "SEVERE"]
        assert messages == [], messages  # no CSP violation, no script error


async def test_readable_on_a_phone(browser: Browser, logs: LogLines) -> None:
    """At a phone's width the page has no horizontal scroll and each batch is a card with
    its state, progress and reason; a screenshot is saved."""
    async with stack_with_links() as stack:
        ids = await populate(stack)
        await browser.call(browser.driver.set_window_size, 390, 844)
        try:
            await browser.get(stack.base + "/")
            await browser.until(row_state(engine_key(ids["failing"]), "failed"))
            width = await browser.js(
                "return [document.documentElement.scrollWidth, window.innerWidth]")
            assert width[0] <= width[1], f"horizontal overflow: {width}"
            header_hidden = await browser.js(
                "return getComputedStyle(document.querySelector('#batches thead')).display")
            assert header_hidden == "none"  # rows are cards, no table header
            await browser.screenshot("status-page-phone.png")
        finally:
            await browser.call(browser.driver.set_window_size, 1400, 1000)
