"""The report in a real headless browser: Debian's chromium driven by Playwright (from PyPI,
launched with `executable_path`; no browser download). Opens the index from file://, follows a
layer link and a unit link, and checks that every <img> loaded, that the console stayed free of
errors, and that the hostile file name is shown as text (no dialog fires); a montage tile opens
its unit page; a layer page sorts by max, mean and firing rate and filters dead units (its plain
JavaScript, from file://); previous/next layer links resolve.

Skipped, with the reason, where chromium or playwright is missing; `.ci/install_browser.sh VENV`
installs both.
"""
import os
import shutil
import sqlite3

import pytest

from cnnviz_fast.reporting import report
from _support.report import HOSTILE, make_run

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


def _watch(page):
    problems = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    # Lazy images still loading when a click leaves the page are aborted (ERR_ABORTED): not a fault.
    page.on("requestfailed", lambda r: None if "ABORTED" in (r.failure or "") else
            problems.append(f"failed request: {r.url} {r.failure}"))
    return problems


DEAD = (2, 7, 30)


@pytest.fixture(scope="module")
def dead_run(run_dir, tmp_path_factory):
    """The run with conv2 units 2, 7 and 30 made dead (never fired) in results.db, reported again."""
    out = tmp_path_factory.mktemp("dead") / "out"
    shutil.copytree(run_dir, out)
    con = sqlite3.connect(out / "results.db")
    con.executemany("UPDATE unit_stats SET firing_rate = 0, mean_max = 0, max = 0 WHERE layer = 'conv2' AND unit = ?",
                    [(u,) for u in DEAD])
    con.commit()
    con.close()
    report(out)
    return out


def test_montage_tile_opens_its_unit_page(browser, run_dir):
    page = browser.new_page()
    problems = _watch(page)
    page.goto((run_dir / "report" / "index.html").resolve().as_uri())
    tiles = page.locator("#conv2 ~ .figure a.mtile")
    assert tiles.count() == 16
    tile = tiles.nth(5)
    label = tile.locator(".lbl").inner_text()
    unit = int(label.split()[1])
    with page.expect_navigation():
        tile.click()
    assert page.url.endswith(f"/units/conv2/unit_{unit:04d}.html")
    assert page.locator("h1").inner_text().startswith(f"conv2 · unit {unit}")
    broken, _ = _all_images_loaded(page)
    assert broken == [] and problems == []
    page.close()


def _visible_cards(page):
    return page.evaluate("""Array.from(document.querySelectorAll('.units .unit')).filter(c => !c.hidden)
        .map(c => ({unit: +c.dataset.unit, max: c.dataset.max === '' ? null : +c.dataset.max,
                    mean: c.dataset.mean === '' ? null : +c.dataset.mean,
                    rate: c.dataset.rate === '' ? null : +c.dataset.rate, dead: c.dataset.dead === '1',
                    shown: c.offsetParent !== null}))""")


@pytest.mark.parametrize("key", ["max", "mean", "rate"])
def test_layer_page_sorts_by_a_statistic(browser, dead_run, key):
    page = browser.new_page()
    problems = _watch(page)
    page.goto((dead_run / "report" / "layers" / "conv2.html").resolve().as_uri())
    assert [c["unit"] for c in _visible_cards(page)] == list(range(32))
    page.select_option("#sort", key)
    cards = _visible_cards(page)
    assert len(cards) == 32 and all(c["shown"] for c in cards)
    # Highest first, ties by unit number (the dead units, all 0, come last in unit order).
    want = sorted(cards, key=lambda c: (-c[key], c["unit"]))
    assert [c["unit"] for c in cards] == [c["unit"] for c in want]
    assert [c["unit"] for c in cards][-3:] == list(DEAD)
    page.select_option("#sort", "unit")
    assert [c["unit"] for c in _visible_cards(page)] == list(range(32))
    assert problems == []
    page.close()


def test_layer_page_filters_dead_and_alive_units(browser, dead_run):
    page = browser.new_page()
    problems = _watch(page)
    page.goto((dead_run / "report" / "layers" / "conv2.html").resolve().as_uri())
    page.select_option("#show", "dead")
    cards = _visible_cards(page)
    assert [c["unit"] for c in cards] == list(DEAD) and all(c["dead"] and c["shown"] for c in cards)
    assert page.locator("#shown").inner_text() == "3 of 32 units shown"
    assert all(not page.locator(f"#u{u}").is_visible() for u in (0, 1, 3))
    page.select_option("#show", "alive")
    alive = [c["unit"] for c in _visible_cards(page)]
    assert alive == [u for u in range(32) if u not in DEAD]
    page.select_option("#sort", "max")            # sorting keeps the filter
    assert sorted(c["unit"] for c in _visible_cards(page)) == alive
    page.select_option("#show", "all")
    assert len(_visible_cards(page)) == 32
    assert problems == []
    page.close()


def test_previous_and_next_layer_links(browser, run_dir):
    page = browser.new_page()
    problems = _watch(page)
    page.goto((run_dir / "report" / "layers" / "conv1.html").resolve().as_uri())
    assert page.locator("a[rel=prev]").count() == 0
    with page.expect_navigation():
        page.click("a[rel=next]")
    assert page.url.endswith("/layers/conv2.html") and page.locator("h1").inner_text() == "conv2"
    assert page.locator("a[rel=next]").count() == 0
    with page.expect_navigation():
        page.click("a[rel=prev]")
    assert page.url.endswith("/layers/conv1.html")
    broken, count = _all_images_loaded(page)
    assert count == 2 * page.locator(".units .unit").count() > 0 and broken == [] and problems == []
    page.close()
