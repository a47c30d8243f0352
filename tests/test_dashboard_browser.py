"""The dashboard in a real browser (headless Chromium from Debian, driven by Selenium), on a
real Redis with a publisher and a Dramatiq worker running: the overview shows the lag, the
parked page the entity a subscriber gave up on; Skip (confirmed) repairs it, and the open
entity page shows it handled without being reloaded; with an archive (the real PostgreSQL:
archive_kit.py), the overview shows the archive lag fall once the archiver ran.

Screenshots of the three pages go to tests/artifacts/. Without Chromium the test is skipped,
unless ES_REQUIRE_BROWSER=1 (then it fails). Install it with
`apt-get install -y chromium chromium-driver`.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from apps.delivery_kit import FAST_PUBLISHER, Delivery, Recorder, redis_broker
from archive_kit import archive_url  # noqa: F401  (a fixture)
from conftest import ACCOUNT_EVENTS, REDIS_URL, Deposited, Opened, delete_prefix, real_redis
from kit import write_at_head

from es_workers import RedisStorage
from es_workers.dashboard.app import create_app

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
WAIT = 30.0


@pytest.fixture
def browser() -> Iterator[Any]:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(path)]
    if missing:
        message = (f"no {', '.join(missing)}: apt-get install -y chromium chromium-driver")
        if os.environ.get("ES_REQUIRE_BROWSER") == "1":
            pytest.fail(f"ES_REQUIRE_BROWSER=1 but {message}")
        pytest.skip(f"{message}; set ES_REQUIRE_BROWSER=1 to fail instead")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-background-networking", "--disable-component-update",
                     "--disable-sync", "--no-first-run", "--window-size=1280,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def delivery() -> Iterator[Delivery]:
    client = real_redis()
    prefix = f"t-dash-{uuid.uuid4().hex[:10]}"
    storage = RedisStorage(client, prefix=prefix, publisher=FAST_PUBLISHER)
    with redis_broker(client, "redis", REDIS_URL) as broker:
        made = Delivery(storage, broker, events=ACCOUNT_EVENTS)
        try:
            yield made
        finally:
            made.stop()
            delete_prefix(client, prefix)
            client.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def serve() -> Iterator[Callable[[Any], str]]:
    """Serves an app with uvicorn in a thread; returns its base URL."""
    servers: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(app: Any) -> str:
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                               log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        servers.append((server, thread))
        wait(lambda: server.started, "uvicorn to start")
        return f"http://127.0.0.1:{port}"

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=10)


def wait(condition: Callable[[], object], what: str, timeout: float = WAIT) -> None:
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
    from selenium.webdriver.support.wait import WebDriverWait

    WebDriverWait(None, timeout, poll_frequency=0.1,
                  ignored_exceptions=(StaleElementReferenceException, WebDriverException)
                  ).until(lambda _: condition(), f"timed out waiting for {what}")


def text_of(driver: Any, selector: str) -> str:
    from selenium.webdriver.common.by import By

    elements = driver.find_elements(By.CSS_SELECTOR, selector)
    return str(elements[0].text) if elements else ""


def screenshot(driver: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    assert driver.save_screenshot(str(ARTIFACTS / f"dashboard-{name}.png"))


def test_skip_a_parked_entity_in_the_browser_and_see_it_handled(
    browser: Any, delivery: Delivery, serve: Callable[[Any], str]
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions

    poison = {("acc-1", 2)}
    store = delivery.store
    store.subscribe("account", "fragile",
                    Recorder(fail=lambda e: (e.entity_id, e.event_number) in poison))
    store.subscribe("account", "sturdy", Recorder())
    for number, owner in enumerate(("ann", "bob", "cy"), start=1):
        write_at_head(store, "account", f"acc-{number}", Opened(owner=owner),
                      *(Deposited(amount=10 * n) for n in range(1, 4 - number + 1)))
    base = serve(create_app(store, sample_every=0.5, window=120))
    fragile = 'tr[data-subscriber="fragile"]'

    # Relayed, no worker yet: every event is behind.
    delivery.start_store()
    browser.get(base + "/")
    wait(lambda: text_of(browser, f"{fragile} .behind") == "9"
         and "caught up" in text_of(browser, fragile), "the overview to show the lag")
    screenshot(browser, "overview-lag")

    # Workers start; fragile parks acc-1 at event 2. The entity page stays open.
    delivery.start_worker()
    browser.get(f"{base}/entity?entity_type=account&entity_id=acc-1")
    wait(lambda: "parked at event 2" in text_of(browser, f"#progress {fragile}"),
         "the entity page to show acc-1 parked")
    browser.execute_script("window.notReloaded = true")
    entity_tab = browser.current_window_handle

    browser.switch_to.new_window("tab")
    browser.get(base + "/parked")
    article = 'article[data-entity-id="acc-1"][data-subscriber="fragile"]'
    wait(lambda: browser.find_elements(By.CSS_SELECTOR, article), "acc-1 on the parked page")
    assert "RuntimeError" in text_of(browser, article)
    assert "poison acc-1 #2" in text_of(browser, article)
    screenshot(browser, "parked")

    def click_skip() -> bool:
        browser.find_element(By.CSS_SELECTOR, f'{article} button[data-action="skip"]').click()
        return True

    wait(click_skip, "the Skip button")  # the list refreshes: retried if it went stale
    from selenium.webdriver.support.wait import WebDriverWait

    alert = WebDriverWait(browser, 10).until(expected_conditions.alert_is_present())
    assert "Skip event 2 of account acc-1 for fragile?" in alert.text
    alert.accept()
    wait(lambda: "skipped event 2" in text_of(browser, "#flash"), "the Skip to be confirmed")
    wait(lambda: "Nothing parked." in text_of(browser, "#parked"), "the parked list to empty")

    # Back on the entity page, never reloaded: acc-1 now handled by fragile.
    browser.switch_to.window(entity_tab)
    wait(lambda: "up to date" in text_of(browser, f"#progress {fragile}"),
         "the entity page to show acc-1 handled by fragile")
    assert text_of(browser, f"#progress {fragile} .checkpoint") == "4"
    assert browser.execute_script("return window.notReloaded") is True
    screenshot(browser, "entity")

    browser.get(base + "/")
    wait(lambda: text_of(browser, f"{fragile} .behind") == "0"
         and text_of(browser, 'tr[data-subscriber="sturdy"] .behind') == "0",
         "the overview to show no lag")
    wait(lambda: len(browser.find_elements(By.CSS_SELECTOR, ".chart polyline")) == 2,
         "a line per subscriber in the chart")
    screenshot(browser, "overview")


def test_the_open_overview_shows_a_banner_while_redis_is_down(
    browser: Any, serve: Callable[[Any], str]
) -> None:
    import fakeredis

    from es_workers import Store

    server = fakeredis.FakeServer(version=(7, 0))
    store = Store(RedisStorage(fakeredis.FakeRedis(server=server)), events=ACCOUNT_EVENTS)
    store.subscribe("account", "balances", lambda event: None)
    browser.get(serve(create_app(store, sample_every=0.3)) + "/")
    wait(lambda: "balances" in text_of(browser, "#subscribers"), "the overview")
    browser.execute_script("window.notReloaded = true")

    server.connected = False
    wait(lambda: "cannot reach Redis" in text_of(browser, "#overview .banner"), "the banner")
    server.connected = True
    wait(lambda: "balances" in text_of(browser, "#subscribers"), "the overview again")
    assert browser.execute_script("return window.notReloaded") is True


def overflowing(driver: Any) -> list[str]:
    """What runs past the window's right edge or out of its own box (text that does not wrap;
    a form field scrolls its own text): the page would scroll sideways."""
    return list(driver.execute_script("""
        const page = document.documentElement;
        const found = page.scrollWidth > page.clientWidth ? ['the page scrolls sideways'] : [];
        for (const e of document.querySelectorAll('body *')) {
          if (e.getBoundingClientRect().right > page.clientWidth + 1
              || (e.clientWidth && e.scrollWidth > e.clientWidth + 1
                  && !['INPUT', 'SELECT', 'TEXTAREA'].includes(e.tagName))) {
            found.push(e.tagName + '.' + e.className + ': ' + e.textContent.slice(0, 40));
          }
        }
        return found;
    """))


@pytest.mark.parametrize("top_rate", [0.5, 40.0, 700.0, 45_000.0])
def test_every_chart_label_is_inside_the_chart(
    browser: Any, tmp_path: Path, top_rate: float
) -> None:
    from es_workers.dashboard.app import templates
    from es_workers.dashboard.chart import chart
    from es_workers.dashboard.sampler import Rate

    rates = {("account", "balances"): [Rate(at=900.0, per_second=top_rate / 3),
                                       Rate(at=1000.0, per_second=top_rate)]}
    drawn = chart(rates, now=1000.0, window=600.0)
    fragment = templates().get_template("_chart.html").render(chart=drawn, sample_every=3)
    css = Path(__file__).resolve().parent.parent / "es_workers/dashboard/static/dashboard.css"
    page = tmp_path / "chart.html"
    page.write_text(f'<!doctype html><html><head><meta charset="utf-8"><link rel="stylesheet" '
                    f'href="{css.as_uri()}"></head><body><main>{fragment}</main></body></html>')
    browser.get(page.as_uri())

    outside = browser.execute_script("""
        const svg = document.querySelector('.chart svg').getBoundingClientRect();
        return [...document.querySelectorAll('.chart svg text')]
          .filter(t => { const r = t.getBoundingClientRect();
                         return r.left < svg.left || r.right > svg.right
                                || r.top < svg.top || r.bottom > svg.bottom; })
          .map(t => t.textContent);
    """)
    screenshot(browser, f"chart-{top_rate:g}")
    assert outside == [], f"labels clipped by the chart's edge: {outside}"


def test_a_long_field_wraps_on_the_entity_page_and_can_be_seen_whole(
    browser: Any, serve: Callable[[Any], str]
) -> None:
    import json
    import urllib.request

    import fakeredis
    from selenium.webdriver.common.by import By

    from es_workers import Store

    store = Store(RedisStorage(fakeredis.FakeRedis(server=fakeredis.FakeServer(version=(7, 0)))),
                  events=ACCOUNT_EVENTS)
    store.subscribe("account", "balances", lambda event: None)
    owner, entity_id = "o" * 5000, "i" * 200
    with store.open("account", entity_id) as stream:
        stream.write(Opened(owner=owner), metadata={"note": "m" * 2000})
    base = serve(create_app(store, sample_every=60))
    browser.get(f"{base}/entity?entity_type=account&entity_id={entity_id}")
    wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#events pre"), "the events table")
    screenshot(browser, "entity-long-field")

    assert overflowing(browser) == []
    link = browser.find_element(By.CSS_SELECTOR, "#events a.full")
    assert link.is_displayed()
    with urllib.request.urlopen(link.get_attribute("href")) as answer:
        assert json.load(answer)["events"][0]["content"] == {"owner": owner}


def test_the_open_overview_shows_the_archive_lag_fall_once_the_archiver_ran(
    browser: Any, serve: Callable[[Any], str], archive_url: str  # noqa: F811
) -> None:
    import re

    import fakeredis

    from es_workers import HotWindow, Store
    from es_workers.postgres import PostgresArchive

    prefix = f"t-dash-{uuid.uuid4().hex[:10]}"
    archive = PostgresArchive(archive_url, prefix=prefix)
    archive.init()
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer(version=(7, 0)))
    store = Store(RedisStorage(client, prefix=prefix, archive=archive), events=ACCOUNT_EVENTS,
                  archive={"account": HotWindow(events=10)})
    write_at_head(store, "account", "a1", Opened(owner="ann"),
                  *(Deposited(amount=n) for n in range(29)))
    try:
        base = serve(create_app(store, sample_every=0.2))
        browser.get(base)
        row = '#archive tr[data-entity-type="account"]'
        wait(lambda: text_of(browser, f"{row} .lag") == "20", "the archive lag")
        assert re.fullmatch(r"\d+\.\d s", text_of(browser, f"{row} .lag-age"))
        assert text_of(browser, f"{row} .stored") == "0"
        screenshot(browser, "archive-lag")

        storage = store.storage
        assert isinstance(storage, RedisStorage)
        archiver = storage.archiver(store.hot_windows, storage.hot_window)
        archiver.run_once()
        archiver.release()
        wait(lambda: text_of(browser, f"{row} .lag") == "0", "the lag to fall, unreloaded")
        assert text_of(browser, f"{row} .lag-age") == "-"
        assert text_of(browser, f"{row} .stored") == "20"
    finally:
        archive.close()
