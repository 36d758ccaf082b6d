"""The status page in a real headless browser (Chromium driven by Playwright) over the real pipeline."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from tests.operators.conftest import Ops, chromium

# Output a careless page would turn into markup (and run): it must show up as text.
XSS_OUTPUT = '<img src=x onerror="document.title=\'owned\'"><script>document.title="owned"</script>'
XSS_SCRIPT = f"print({XSS_OUTPUT!r})\nraise SystemExit(5)\n"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium())
        yield browser
        browser.close()


def open_page(browser: Browser, ops: Ops, problems: list[str]) -> Page:
    context = browser.new_context(http_credentials={"username": "ops", "password": ops.status_token},
                                  viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.on("console", lambda message: _console(message, problems))
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("dialog", lambda dialog: problems.append(f"dialog: {dialog.message}"))
    page.goto(ops.pipeline.scheduler_url + "/status/")
    return page


def _console(message: ConsoleMessage, problems: list[str]) -> None:
    if message.type in ("error", "warning"):
        problems.append(f"console {message.type}: {message.text}")


def test_the_page_needs_its_own_password(ops: Ops) -> None:
    url = ops.pipeline.scheduler_url + "/status/"
    anonymous = requests.get(url, timeout=10)
    assert anonymous.status_code == 401 and anonymous.headers["WWW-Authenticate"].startswith("Basic ")
    assert requests.get(url, auth=("ops", "wrong"), timeout=10).status_code == 401
    assert requests.get(url, auth=("ops", ops.pipeline.secret), timeout=10).status_code == 401  # not SeaTable's
    assert requests.get(url + "data", auth=("x", "wrong"), timeout=10).status_code == 401
    page = requests.get(url, auth=("anyone", ops.status_token), timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert "http" not in page.text.replace(ops.pipeline.scheduler_url, "")  # nothing loaded from elsewhere


def test_charts_render_from_real_runs_and_a_new_failure_appears(browser: Browser, ops: Ops, tmp_path: Path) -> None:
    problems: list[str] = []
    page = open_page(browser, ops, problems)
    page.wait_for_selector("#chart-minutes svg rect[data-kind]")
    kinds = set(page.eval_on_selector_all("#chart-minutes rect[data-kind]", "bars => bars.map(b => b.dataset.kind)"))
    assert {"success", "failed", "fetch_failed"} <= kinds
    assert page.locator("#chart-hours rect[data-kind]").count() >= 3
    assert page.locator("#chart-latency circle").count() >= 1
    assert page.locator("#chart-minutes .legend").inner_text().count("success") == 1
    assert int(page.inner_text("#queued")) == 0
    assert "broken.py" in page.inner_text("#failing")
    failures = page.inner_text("#failures")
    assert "broken.py" in failures and "about to fail" in failures and "fetch failed" in failures
    nodes = page.inner_text("#nodes")
    assert ops.pipeline.sandbox is not None and ops.pipeline.sandbox.url in nodes and "ok" in nodes

    # A script fails while the page is open: it shows up without a reload, its output as plain text.
    assert ops.pipeline.stub is not None
    ops.pipeline.stub.seatable.add_script(ops.base_uuid, "xss.py", XSS_SCRIPT)
    final = ops.run("xss.py")
    assert final["success"] is False and XSS_OUTPUT in final["output"]
    expect(page.locator("#failures")).to_contain_text("xss.py", timeout=60_000)
    assert XSS_OUTPUT in page.inner_text("#failures")
    assert page.title() == "SeaTable Python pipeline: status"
    assert page.locator("#failures img").count() == 0 and page.locator("#failures script").count() == 0
    page.screenshot(path=str(Path(os.environ.get("STATUS_SCREENSHOT", tmp_path / "status.png"))), full_page=True)
    assert problems == []
