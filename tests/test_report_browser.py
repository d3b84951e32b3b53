"""The report in a real headless browser: Debian's chromium driven by Playwright (from PyPI,
launched with `executable_path`; no browser download). Opens the index from file://, follows a
layer link and a unit link, and checks that every <img> loaded, that the console stayed free of
errors, and that the hostile file name is shown as text (no dialog fires).

Skipped, with the reason, where chromium or playwright is missing; `.ci/install_browser.sh VENV`
installs both.
"""
import os
import shutil

import pytest

from test_report_html import HOSTILE, make_run

CHROMIUM = os.environ.get("CNNVIZ_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"

# CI installs the browser and sets CNNVIZ_REQUIRE_BROWSER=1: there a missing browser fails, never skips.
if os.environ.get("CNNVIZ_REQUIRE_BROWSER") == "1":
    assert os.path.exists(CHROMIUM), f"CNNVIZ_REQUIRE_BROWSER=1 but no chromium at {CHROMIUM}"
    import playwright.sync_api as sync_api
else:
    pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no chromium at {CHROMIUM} "
                                    "(apt-get install chromium, or run .ci/install_browser.sh VENV)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed "
                                   "(pip install playwright, or run .ci/install_browser.sh VENV)")


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        # --no-sandbox: CI runs as root, where chromium's sandbox refuses to start.
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("browser"))


def _all_images_loaded(page):
    """Force lazy images to load (they would as the user scrolls), then report any that did not."""
    page.evaluate("document.querySelectorAll('img').forEach(i => { i.loading = 'eager'; })")
    page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    page.wait_for_function("Array.from(document.images).every(i => i.complete)", timeout=15000)
    return page.evaluate("Array.from(document.images).filter(i => !(i.naturalWidth > 0))"
                         ".map(i => i.getAttribute('src'))"), page.evaluate("document.images.length")


def test_index_layer_unit_in_chromium(browser, run_dir):
    page = browser.new_page()
    problems, dialogs = [], []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"failed request: {r.url}"))
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))

    page.goto((run_dir / "report" / "index.html").resolve().as_uri())
    assert "demo" in page.title()
    broken, count = _all_images_loaded(page)
    assert count >= 3 and broken == []

    page.click("text=all 32 units of conv2")
    page.wait_for_load_state("load")
    assert page.url.endswith("/layers/conv2.html")
    broken, count = _all_images_loaded(page)
    assert count == 64 and broken == []

    page.click("#u5 header a")
    page.wait_for_load_state("load")
    assert page.url.endswith("/units/conv2/unit_0005.html")
    broken, count = _all_images_loaded(page)
    assert count == 2 + 9 and broken == []
    assert HOSTILE in page.inner_text("body")           # shown as text ...
    assert page.locator("img[src='x']").count() == 0    # ... and never parsed as an element
    page.wait_for_timeout(200)
    assert dialogs == [], f"a dialog fired: {dialogs}"
    assert problems == [], problems
    page.close()
