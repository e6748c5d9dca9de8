"""Headless Debian chromium for the status-page tests, driven by selenium through Debian's
chromedriver (never a downloaded browser or driver: both paths are given, so Selenium
Manager never runs).

Selenium is blocking; the daemon under test runs on the test's event loop. Every browser
call therefore goes through :func:`asyncio.to_thread`, and waits are conditions with a
deadline (WebDriverWait), never sleeps.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

# Should anything ever reach Selenium Manager, it must not download a browser or a driver.
os.environ.setdefault("SE_OFFLINE", "true")

CHROMIUM = os.environ.get("BATCHSCOPE_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("BATCHSCOPE_CHROMEDRIVER", "/usr/bin/chromedriver")
ARTIFACTS = Path(os.environ.get("BATCHSCOPE_ARTIFACTS",
                                Path(__file__).resolve().parents[1] / "artifacts"))

T = TypeVar("T")


def require_chromium() -> None:
    """Skip without Debian's chromium and chromedriver, except in CI (CI=true), where a
    missing browser is a failure: .ci/run installs them."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not (os.path.isfile(p)
                                                           and os.access(p, os.X_OK))]
    if not missing:
        return
    message = (f"missing {', '.join(missing)}: apt-get install chromium chromium-driver "
               "(.ci/run does)")
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


def new_driver(profile: str, width: int = 1400, height: int = 1000) -> WebDriver:
    """Headless chromium with its profile in ``profile`` (a fresh directory)."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--no-first-run", "--disable-extensions", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                f"--window-size={width},{height}", "--lang=en-US",
                f"--user-data-dir={profile}"):
        options.add_argument(arg)
    # Console messages (a CSP violation, an uncaught error) are read by the tests.
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


class Browser:
    """An async face on one WebDriver."""

    def __init__(self) -> None:
        self.profile = tempfile.mkdtemp(prefix="batchscope-chromium-")
        self.driver = new_driver(self.profile)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(fn, *args)

    async def get(self, url: str) -> None:
        await self.call(self.driver.get, url)

    async def js(self, script: str, *args: Any) -> Any:
        return await self.call(self.driver.execute_script, script, *args)

    async def until(self, condition: Callable[[WebDriver], T], timeout: float = 15.0,
                    what: str = "condition") -> T:
        def wait() -> T:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.05).until(
                condition, message=f"timed out after {timeout}s waiting for {what}")
        return await self.call(wait)

    async def screenshot(self, name: str) -> Path:
        path = ARTIFACTS / name

        def save() -> None:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            if not self.driver.save_screenshot(str(path)):
                raise AssertionError(f"chromium could not write {path}")
        await self.call(save)
        print(f"screenshot: {path}")
        return path

    async def console(self) -> list[dict[str, Any]]:
        return list(await self.call(self.driver.get_log, "browser"))

    def close(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)

