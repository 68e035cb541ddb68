"""The page in a real headless browser (Debian's chromium and chromium-driver, driven by
selenium) against a real daemon (docs/operations.md): it loads with no console errors, shows a
dropped photo's before/after within seconds of its output, shows a quarantined file with
its reason in plain words, and retry works with the token and is refused without it. The
screenshots are saved under ``build/page/`` (the CI's artefacts)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT
from daemon_harness import Daemon, outputs, quarantined, wait_for
from page_client import TOKEN, drop_photo

from core.reasons import DESCRIPTIONS, Reason

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SHOTS = ROOT / "build" / "page"

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(
        not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
        reason="needs Debian's chromium and chromium-driver (.ci/run installs them)",
    ),
]


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.add_argument("--window-size=1280,1400")
    options.add_argument("--disable-extensions")
    options.add_argument("--no-first-run")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def severe(driver: webdriver.Chrome) -> list[dict]:
    return [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]


def loaded_images(card) -> int:
    images = card.find_elements(By.TAG_NAME, "img")
    return sum(1 for img in images if img.get_property("naturalWidth") > 0)


def test_the_page_in_a_real_browser(tmp_path: Path, browser: webdriver.Chrome) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    root = tmp_path / "root"
    # The shipped model at a real size, so that the screenshot shows what artists see.
    model = ROOT / "core" / "assets" / "default.safetensors"
    with Daemon(root, model, page_token=TOKEN, size=256) as daemon:
        url = f"http://127.0.0.1:{daemon.port}/"
        drop_photo(root / "inbox", "coffee")
        wait_for(lambda: len(outputs(root)) == 1, 60, "the first output")
        browser.get(url)
        wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, ".result"), 10, "the gallery")
        assert browser.find_element(By.ID, "state").text == "working"
        assert severe(browser) == [], "console errors on load"

        # A photo dropped now shows before/after within a few seconds of its output.
        drop_photo(root / "inbox", "astronaut")
        drop_photo(root / "inbox", "chelsea")
        (root / "inbox" / "holiday.jpg").write_bytes(b"this is a text file named .jpg")
        wait_for(lambda: "astronaut.jpg.png" in outputs(root), 60, "the astronaut's output")
        out_at = time.monotonic()
        selector = '.result[data-output="astronaut.jpg.png"]'

        def shown() -> bool:
            cards = browser.find_elements(By.CSS_SELECTOR, selector)
            return bool(cards) and loaded_images(cards[0]) == 2

        wait_for(shown, 8, "the astronaut's before and after on the page")
        shown_after = time.monotonic() - out_at
        card = browser.find_element(By.CSS_SELECTOR, selector)
        captions = [c.text for c in card.find_elements(By.TAG_NAME, "figcaption")]
        assert captions == ["before", "after"]
        assert "model" in card.text

        # The quarantined file with its reason in plain words.
        wait_for(lambda: quarantined(root) == ["holiday.jpg"], 30, "the quarantine")
        item = '.quarantine li[data-file="holiday.jpg"]'
        wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, item), 8, "the quarantine item")
        held = browser.find_element(By.CSS_SELECTOR, item)
        assert DESCRIPTIONS[Reason.NOT_AN_IMAGE] in held.text
        wait_for(lambda: len(outputs(root)) == 3, 60, "every output")
        time.sleep(2.5)  # one more poll: every thumbnail on the page
        assert severe(browser) == [], "console errors while updating"
        browser.save_screenshot(str(SHOTS / "page-desktop.png"))

        # Retry without the token: refused, the file stays.
        held.find_element(By.CSS_SELECTOR, "button.retry").click()
        result = browser.find_element(By.ID, "retry-result")
        wait_for(lambda: "refused" in result.text, 8, "the refusal")
        assert "X-Artd-Token" in result.text
        assert (root / "quarantine" / "holiday.jpg").exists()

        # With the token: back in the inbox (and quarantined again: it is still not a photo).
        browser.find_element(By.ID, "token").send_keys(TOKEN)
        held = browser.find_element(By.CSS_SELECTOR, item)
        held.find_element(By.CSS_SELECTOR, "button.retry").click()
        wait_for(lambda: "back in the inbox" in result.text, 8, "the retry")
        browser.save_screenshot(str(SHOTS / "page-retried.png"))

        # A phone-sized window: one column, nothing wider than the screen.
        browser.set_window_size(390, 844)
        time.sleep(0.5)
        width = browser.execute_script("return document.documentElement.scrollWidth")
        inner = browser.execute_script("return window.innerWidth")
        assert width <= inner, (width, inner)
        browser.save_screenshot(str(SHOTS / "page-phone.png"))
    print(f"before/after shown {shown_after:.2f}s after the output was written")
