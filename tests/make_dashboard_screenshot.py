"""Makes docs/img/dashboard.png, the README's picture of the dashboard's overview, from the
dashboard as it is: three subscribers handling a steady stream of deposits on the real Redis
at ES_REDIS_URL (under prefixes of their own, deleted afterwards), one of them parking an
account, seen through headless Chromium after about a minute.

    ES_REDIS_URL=redis://127.0.0.1:6379/0 python tests/make_dashboard_screenshot.py

Needs what the browser tests need (`chromium`, `chromium-driver`, the `test` extra).
"""

from __future__ import annotations

import sys
import threading
import time
import uuid
from pathlib import Path

import uvicorn
from apps.delivery_kit import FAST_PUBLISHER, Delivery, Recorder, redis_broker
from conftest import ACCOUNT_EVENTS, REDIS_URL, Deposited, Opened, delete_prefix, real_redis
from kit import write_at_head
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from test_dashboard_browser import CHROMEDRIVER, CHROMIUM, free_port

from es_workers import RedisStorage, Store
from es_workers.dashboard.app import create_app

OUT = Path(__file__).resolve().parent.parent / "docs" / "img" / "dashboard.png"
ACCOUNTS = 40
SECONDS = 75.0


def deposits(store: Store, stop: threading.Event) -> None:
    """About 35 deposits a second, spread over the accounts, rising and falling."""
    number = 0
    while not stop.is_set():
        number += 1
        write_at_head(store, "account", f"acc-{number % ACCOUNTS}", Deposited(amount=number))
        stop.wait(1 / (25 + 10 * ((number // 200) % 2)))


def main() -> int:
    client = real_redis()
    prefix = f"shot-{uuid.uuid4().hex[:8]}"
    storage = RedisStorage(client, prefix=prefix, publisher=FAST_PUBLISHER)
    with redis_broker(client, "redis", REDIS_URL) as broker:
        delivery = Delivery(storage, broker, events=ACCOUNT_EVENTS)
        store = delivery.store
        store.subscribe("account", "balances", Recorder())
        store.subscribe("account", "statements", Recorder())
        store.subscribe("account", "fraud-checks",
                        Recorder(fail=lambda e: (e.entity_id, e.event_number) == ("acc-7", 3)))
        for n in range(ACCOUNTS):
            write_at_head(store, "account", f"acc-{n}", Opened(owner=f"owner {n}"))
        stop = threading.Event()
        writer = threading.Thread(target=deposits, args=(store, stop), daemon=True)
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(create_app(store, sample_every=2, window=120),
                                               host="127.0.0.1", port=port,
                                               log_level="warning"))
        threading.Thread(target=server.run, daemon=True).start()
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                         "--window-size=1100,820", "--hide-scrollbars"):
            options.add_argument(argument)
        browser = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
        try:
            delivery.start_store()
            delivery.start_worker()
            writer.start()
            time.sleep(3)
            browser.get(f"http://127.0.0.1:{port}/")
            time.sleep(SECONDS)
            assert browser.save_screenshot(str(OUT))
            print(f"wrote {OUT}")
            return 0
        finally:
            browser.quit()
            stop.set()
            writer.join(timeout=10)
            server.should_exit = True
            delivery.stop()
            delete_prefix(client, prefix)
            client.close()


if __name__ == "__main__":
    sys.exit(main())
