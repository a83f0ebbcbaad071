"""Open a page in headless Chromium (Debian's ``chromium`` and ``chromedriver``, installed by
``make chromium``, which ``make test`` and ``.ci/run`` run) and return what it rendered and
what it logged."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@dataclass(frozen=True)
class Rendered:
    title: str
    text: str  # the page's visible text
    console: list[dict[str, object]]  # every console entry (level, message)
    alerts: bool  # a script raised an alert (an escaping failure)

    @property
    def console_errors(self) -> list[dict[str, object]]:
        return [e for e in self.console if e.get("level") == "SEVERE"]


def render(path: Path) -> tuple[Rendered, dict[str, str]]:
    """Load ``path`` (file://) and return the rendering plus the text of every element with
    an id."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
    ):
        options.add_argument(flag)
    with tempfile.TemporaryDirectory() as profile:
        options.add_argument(f"--user-data-dir={profile}")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
        try:
            driver.get(path.resolve().as_uri())
            alerts = True
            try:
                driver.switch_to.alert.dismiss()
            except NoAlertPresentException:
                alerts = False
            ids = {
                str(el.get_attribute("id")): el.text
                for el in driver.find_elements(By.CSS_SELECTOR, "[id]")
            }
            rendered = Rendered(
                driver.title,
                driver.find_element(By.TAG_NAME, "body").text,
                list(driver.get_log("browser")),
                alerts,
            )
        finally:
            driver.quit()
    return rendered, ids
