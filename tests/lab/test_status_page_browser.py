# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The status page in a real browser (Debian's chromium, headless, through chromedriver and Selenium).

Renders a page with twelve rows on two nodes (mixed statuses, alerts, hostile strings, the pending watcher's
next checks), opens it from a file:// URL and drives it: nothing is fetched, nothing is logged, nothing
injected runs; filters, the counter and the date sorts work; on a phone the rows are cards and nothing overflows. Screenshots
(desktop and phone) and the page go to $LINKCERT_ARTIFACTS, else tests/output/artifacts/.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import typing as t
from pathlib import Path

import pytest

from ansible_collections.mailops.linkcert.plugins.module_utils import _statuspage

pytestmark = [pytest.mark.lab, pytest.mark.integration]

# Debian's paths (scripts/bootstrap.sh installs chromium and chromium-driver); overridable for other systems.
CHROMIUM = os.environ.get("LINKCERT_CHROMIUM") or "/usr/bin/chromium"
CHROMEDRIVER = os.environ.get("LINKCERT_CHROMEDRIVER") or "/usr/bin/chromedriver"
REPO = Path(__file__).resolve().parents[2]
GENERATED_AT = "2026-12-01T02:00:00Z"

HOSTILE_DOMAIN = '"><img src=x onerror="window.pwned=1">.evil.example'
HOSTILE_TEXT = "</script><script>window.pwned=2</script><img src=x onerror=window.pwned=3>"


def row(node: str, domain: str, status: str, reason: str, message: str = "", remediation: t.Optional[str] = None,
        not_after: t.Optional[str] = None, renew_after: t.Optional[str] = None, alerts: t.Sequence[str] = (),
        **extra: t.Any) -> t.Dict[str, t.Any]:
    entry = {"node": node, "domain": domain, "ssl_status": status, "label": _statuspage.LABELS[status], "reason": reason,
             "message": message, "remediation": remediation, "not_after": not_after, "renew_after": renew_after,
             "alerts": list(alerts)}
    entry.update(extra)
    return entry


CNAME_FIX = "go.delta.example. CNAME edge.mailops.example."
ROWS = [
    row("edge-a", "links.alpha.example", "issued", "issued", "Certificate issued.", not_after="2027-02-20T10:00:00Z",
        renew_after="2027-01-21T10:00:00Z", serial="0a1b", served_serial="0a1b"),
    row("edge-a", "click.bravo.example", "issued", "issued", "Certificate issued.", not_after="2026-12-05T08:00:00Z",
        renew_after="2026-11-05T08:00:00Z", alerts=["the certificate expires in 4 day(s) (2026-12-05T08:00:00Z), in the last "
                                                    "tenth of its lifetime, and has not been renewed"]),
    row("edge-a", "t.charlie.example", "pending", "awaiting_issuance", "DNS routes t.charlie.example to the edge."),
    row("edge-a", "go.delta.example", "unknown", "dns_not_ready", "go.delta.example has no CNAME.", CNAME_FIX,
        watch={"since": "2026-12-01T01:40:00Z", "attempts": 4, "last_check": "2026-12-01T01:58:00Z", "next_check": "2026-12-01T02:08:00Z",
               "stopped": None}),
    row("edge-a", "email.echo.example", "pending", "dns_drift", "DNS changed after the certificate was issued: "
        "the CNAME of email.echo.example points to " + HOSTILE_TEXT, "email.echo.example. CNAME edge.mailops.example.\n"
        'echo.example. CAA 0 issue "letsencrypt.org"', not_after="2027-01-15T00:00:00Z", renew_after="2026-12-16T00:00:00Z"),
    row("edge-a", HOSTILE_DOMAIN, "unknown", "watch_stopped", HOSTILE_TEXT, 'evil.example. CAA 0 issue "' + HOSTILE_TEXT + '"',
        watch={"since": HOSTILE_TEXT, "attempts": 151, "last_check": "2026-11-29T06:00:00Z", "next_check": None,
               "stopped": "2026-11-29T06:00:00Z"}),
    row("edge-b", "links.alpha.example", "issued", "issued", "Certificate issued.", not_after="2027-03-01T00:00:00Z",
        renew_after="2027-01-30T00:00:00Z"),
    row("edge-b", "click.bravo.example", "issued", "issued", "Certificate issued.", not_after="2027-01-10T12:00:00Z",
        renew_after="2026-12-11T12:00:00Z"),
    row("edge-b", "t.charlie.example", "pending", "awaiting_issuance", "Not issued yet.",
        watch={"since": "2026-11-30T08:00:00Z", "attempts": 20, "last_check": "2026-12-01T01:00:00Z", "next_check": "2026-12-01T07:00:00Z",
               "stopped": None}),
    row("edge-b", "go.delta.example", "unknown", "dns_not_ready", "go.delta.example has no CNAME.", CNAME_FIX),
    row("edge-b", "news.foxtrot.example", "issued", "issued", "Certificate issued.", not_after="2026-12-25T00:00:00Z",
        renew_after="2026-11-25T00:00:00Z"),
    row("edge-b", "email.echo.example", "pending", "served_mismatch", "edge-b serves another certificate for email.echo.example.",
        not_after="2027-01-15T00:00:00Z", renew_after="2026-12-16T00:00:00Z", serial="0c0c", served_serial="0d0d",
        alerts=["edge-b serves serial 0d0d, not 0c0c"]),
]
KEYS = [(r["domain"], r["node"]) for r in ROWS]


def artifacts_dir() -> Path:
    path = Path(os.environ.get("LINKCERT_ARTIFACTS") or REPO / "tests" / "output" / "artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def browser() -> t.Iterator[t.Any]:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not (os.path.isfile(path) and os.access(path, os.X_OK))]
    if missing:
        pytest.fail("the status page browser test needs Debian's chromium and chromium-driver (%s missing; "
                    "apt-get install chromium chromium-driver, as scripts/bootstrap.sh does)" % ", ".join(missing))
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    saved = os.environ.get("SE_OFFLINE")
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never try to download a browser or driver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900",
                     "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--lang=en-US"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        if saved is None:
            os.environ.pop("SE_OFFLINE", None)
        else:
            os.environ["SE_OFFLINE"] = saved


@pytest.fixture(scope="module")
def page_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("statuspage") / "linkcert-status.html"
    path.write_text(_statuspage.render(ROWS, GENERATED_AT, title="linkcert status (browser test)"), encoding="ascii")
    shutil.copyfile(str(path), str(artifacts_dir() / "status-page.html"))
    return path


def visible_keys(driver: t.Any) -> t.List[t.Tuple[str, str]]:
    """(domain, node) of the rows shown, in the order shown."""
    return [tuple(pair) for pair in driver.execute_script(
        "return Array.from(document.querySelectorAll('#rows tr[data-i]')).filter(function (tr) { return !tr.hidden; })"
        ".map(function (tr) { return [tr.querySelector('.c-domain').textContent, tr.querySelector('.c-node').textContent]; });")]


def counter(driver: t.Any) -> str:
    return driver.find_element("id", "counter").text


def full_screenshot(driver: t.Any, name: str) -> Path:
    """A screenshot of the whole page (beyond the viewport) into the artifacts directory."""
    metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    size = metrics.get("cssContentSize") or metrics["contentSize"]
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}})
    path = artifacts_dir() / name
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


@pytest.fixture
def opened(browser: t.Any, page_path: Path) -> t.Any:
    """The page freshly loaded (CSP violations recorded from the first byte), the logs drained before."""
    browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    browser.set_window_size(1280, 900)
    browser.get_log("browser")
    browser.get_log("performance")
    script = browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": (
        "window.__csp = []; document.addEventListener('securitypolicyviolation', function (e) {"
        " window.__csp.push(e.violatedDirective + ' ' + e.blockedURI); });")})
    browser.get(page_path.as_uri())
    browser.execute_cdp_cmd("Page.removeScriptToEvaluateOnNewDocument", {"identifier": script["identifier"]})
    return browser


def test_loads_clean_and_offline(opened, page_path):
    driver = opened
    assert driver.title == "linkcert status (browser test)"
    console = driver.get_log("browser")
    assert [entry for entry in console if entry["level"] == "SEVERE"] == []
    assert [entry for entry in console if entry["level"] == "WARNING"] == []
    assert driver.execute_script("return window.__csp;") == []
    requests = [json.loads(entry["message"])["message"] for entry in driver.get_log("performance")]
    urls = {event["params"]["request"]["url"] for event in requests if event["method"] == "Network.requestWillBeSent"}
    assert urls == {page_path.as_uri()}, urls  # the page itself, and nothing else
    # Nothing injected ran or was created: no image, no extra script, the hostile strings are text.
    assert driver.execute_script("return [window.pwned === undefined, document.images.length, document.scripts.length];") == [True, 0, 2]
    assert driver.execute_script("return document.querySelector('tr[data-i=\"5\"] .c-domain').textContent;") == HOSTILE_DOMAIN
    assert driver.find_element("id", "controls").is_displayed()
    assert visible_keys(driver) == KEYS
    assert counter(driver) == "12 of 12 domains"
    summary = driver.find_element("css selector", ".summary").text
    for text in ("SSL Issued 5", "SSL Pending 4", "SSL Unknown 3", "Alerts 2"):
        assert text in summary.replace("\n", " ")
    assert set(driver.execute_script("return Array.from(document.querySelectorAll('tr.has-alerts')).map(function (tr) "
                                     "{ return Number(tr.dataset.i); });")) == {1, 11}
    full_screenshot(driver, "status-page-desktop.png")


def test_message_on_demand(opened):
    details = opened.find_element("css selector", 'tr[data-i="4"] details')
    message = details.find_element("css selector", ".msg")
    assert not message.is_displayed()
    details.find_element("tag name", "summary").click()
    assert message.is_displayed() and message.text.endswith(HOSTILE_TEXT)


def type_filter(driver: t.Any, text: str) -> None:
    box = driver.find_element("id", "filter")
    box.clear()
    if text:
        box.send_keys(text)
    else:  # clear() sends no input event
        driver.execute_script("arguments[0].dispatchEvent(new Event('input'));", box)


def test_filters_and_counter(opened):
    driver = opened
    type_filter(driver, "BRAVO")
    assert visible_keys(driver) == [("click.bravo.example", "edge-a"), ("click.bravo.example", "edge-b")]
    assert counter(driver) == "2 of 12 domains"
    type_filter(driver, "edge-b")
    assert visible_keys(driver) == [k for k in KEYS if k[1] == "edge-b"] and counter(driver) == "6 of 12 domains"
    type_filter(driver, "dns_not_ready")  # the reason
    assert visible_keys(driver) == [("go.delta.example", "edge-a"), ("go.delta.example", "edge-b")]
    type_filter(driver, '"><img')  # the hostile domain, found as text; Enter submits nothing
    assert visible_keys(driver) == [(HOSTILE_DOMAIN, "edge-a")] and counter(driver) == "1 of 12 domains"
    from selenium.webdriver.common.keys import Keys
    url = driver.current_url
    driver.find_element("id", "filter").send_keys(Keys.ENTER)
    assert driver.current_url == url and counter(driver) == "1 of 12 domains"
    type_filter(driver, "no-such-thing")
    assert visible_keys(driver) == [] and counter(driver) == "0 of 12 domains"
    assert driver.find_element("id", "no-match").is_displayed()
    type_filter(driver, "")
    assert visible_keys(driver) == KEYS and counter(driver) == "12 of 12 domains"

    from selenium.webdriver.support.ui import Select
    status = Select(driver.find_element("id", "status-filter"))
    status.select_by_visible_text("SSL Pending")
    assert visible_keys(driver) == [(r["domain"], r["node"]) for r in ROWS if r["ssl_status"] == "pending"]
    assert counter(driver) == "4 of 12 domains"
    assert set(driver.execute_script("return Array.from(document.querySelectorAll('#rows tr:not([hidden]) .badge'))"
                                     ".map(function (b) { return b.textContent; });")) == {"SSL Pending"}
    type_filter(driver, "edge-a")  # the filters combine
    assert visible_keys(driver) == [("t.charlie.example", "edge-a"), ("email.echo.example", "edge-a")]
    type_filter(driver, "")
    status.select_by_value("")

    driver.find_element("id", "alerts-only").click()
    assert visible_keys(driver) == [("click.bravo.example", "edge-a"), ("email.echo.example", "edge-b")]
    assert counter(driver) == "2 of 12 domains"
    driver.find_element("id", "alerts-only").click()
    assert counter(driver) == "12 of 12 domains"
    assert driver.execute_script("return [window.pwned === undefined, document.images.length];") == [True, 0]
    assert [entry for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")] == []


def test_sort_by_expiry(opened):
    driver = opened
    header = driver.find_element("css selector", 'th[data-key="not_after"]')
    dated = sorted((r for r in ROWS if r["not_after"]), key=lambda r: r["not_after"])
    undated = [(r["domain"], r["node"]) for r in ROWS if not r["not_after"]]
    header.find_element("tag name", "button").click()
    assert header.get_attribute("aria-sort") == "ascending"
    # Ties keep the input order; rows without an expiry come last either way.
    assert visible_keys(driver) == [(r["domain"], r["node"]) for r in dated] + undated
    header.find_element("tag name", "button").click()
    assert header.get_attribute("aria-sort") == "descending"
    # Python's sort keeps ties in input order with reverse=True too, as the page does.
    assert visible_keys(driver) == [(r["domain"], r["node"]) for r in sorted(dated, key=lambda r: r["not_after"], reverse=True)] + undated
    # By the domain column: text, case-insensitive.
    driver.find_element("css selector", 'th[data-key="domain"] button').click()
    domains = [k[0] for k in visible_keys(driver)]
    assert domains == sorted(domains, key=str.lower)


def test_next_check_shown_and_sorted(opened):
    driver = opened
    cells = driver.execute_script("return Array.from(document.querySelectorAll('#rows tr[data-i]')).map(function (tr) {"
                                  " return tr.querySelector('.c-next_check').innerText; });")
    assert cells[3] == "2026-12-01 02:08 UTC\n(in less than an hour)\n4 checks so far"
    assert cells[5] == "stopped since 2026-11-29 06:00 UTC\nafter 151 checks"
    assert cells[8] == "2026-12-01 07:00 UTC\n(in 5 hours)\n20 checks so far"
    assert [i for i, cell in enumerate(cells) if cell != "-"] == [3, 5, 8]
    header = driver.find_element("css selector", 'th[data-key="next_check"]')
    header.find_element("tag name", "button").click()
    assert header.get_attribute("aria-sort") == "ascending"
    # The next checks soonest first; the stopped watch and the rows without one after them, in input order.
    assert visible_keys(driver) == [KEYS[3], KEYS[8]] + [k for i, k in enumerate(KEYS) if i not in (3, 8)]
    header.find_element("tag name", "button").click()
    assert visible_keys(driver) == [KEYS[8], KEYS[3]] + [k for i, k in enumerate(KEYS) if i not in (3, 8)]
    assert driver.execute_script("return window.pwned === undefined;")


def test_phone_layout(opened):
    driver = opened
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True})
    try:
        assert driver.execute_script("return window.innerWidth;") == 390
        style = driver.execute_script(
            "var td = document.querySelector('tr[data-i=\"3\"] td.c-domain');"
            "return {thead: getComputedStyle(document.querySelector('thead')).display,"
            " tr: getComputedStyle(td.parentNode).display, td: getComputedStyle(td).display,"
            " label: getComputedStyle(td, '::before').content,"
            " scroll: document.documentElement.scrollWidth, inner: window.innerWidth,"
            " widest: Math.max.apply(null, Array.from(document.querySelectorAll('body *')).map(function (e) {"
            "   return e.getBoundingClientRect().right; }))};")
        assert style["thead"] == "none" and style["tr"] == "block" and style["td"] == "grid"
        assert style["label"] == '"Domain"'
        assert style["scroll"] <= style["inner"], style
        assert style["widest"] <= style["inner"] + 0.5, style
        # Cards stack: each row sits below the previous one, at the same left edge.
        boxes = driver.execute_script("return Array.from(document.querySelectorAll('#rows tr')).slice(0, 3).map(function (tr) {"
                                      " var r = tr.getBoundingClientRect(); return [r.left, r.top, r.bottom]; });")
        assert boxes[0][0] == boxes[1][0] == boxes[2][0] and boxes[0][2] <= boxes[1][1] and boxes[1][2] <= boxes[2][1]
        # The headers are hidden, so a select sorts instead.
        from selenium.webdriver.support.ui import Select
        Select(driver.find_element("id", "sort-select")).select_by_value("not_after:asc")
        dated = sorted((r for r in ROWS if r["not_after"]), key=lambda r: r["not_after"])
        assert visible_keys(driver)[:len(dated)] == [(r["domain"], r["node"]) for r in dated]
        Select(driver.find_element("id", "sort-select")).select_by_value("next_check:asc")
        assert visible_keys(driver)[:2] == [KEYS[3], KEYS[8]]
        Select(driver.find_element("id", "sort-select")).select_by_value("i:asc")
        assert visible_keys(driver) == KEYS
        driver.get_screenshot_as_file(str(artifacts_dir() / "status-page-phone.png"))  # the first screen
        full_screenshot(driver, "status-page-phone-full.png")
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_print_layout(opened):
    driver = opened
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "print"})
    try:
        assert driver.execute_script("return getComputedStyle(document.getElementById('controls')).display;") == "none"
        assert driver.execute_script("return getComputedStyle(document.querySelector('thead')).display;") == "table-header-group"
        pdf = driver.execute_cdp_cmd("Page.printToPDF", {"printBackground": True})
        (artifacts_dir() / "status-page.pdf").write_bytes(base64.b64decode(pdf["data"]))
    finally:
        driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": ""})
    assert [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"] == []
