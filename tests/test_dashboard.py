"""The web dashboard over HTTP (Starlette's TestClient), on fakeredis and on a real Redis:
every page and JSON endpoint, Retry and Skip with their CSRF and read-only refusals, the
access token, and a banner rather than a stack trace when Redis is down."""

from __future__ import annotations

import json
import re
import socket
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass

import dramatiq
import fakeredis
import pytest
from apps.delivery_kit import Delivery, Recorder
from conftest import ACCOUNT_EVENTS, REDIS_URL, Deposited, Opened, real_redis
from httpx2 import Response
from kit import wait_for, write_at_head
from starlette.testclient import TestClient
from typer.testing import CliRunner

from es_workers import RedisStorage, Store, admin
from es_workers.cli import app as cli
from es_workers.dashboard.access import CSRF_COOKIE, is_loopback
from es_workers.dashboard.app import create_app, templates
from es_workers.dashboard.chart import chart, nice_top
from es_workers.dashboard.data import ErrorParts, checkpoint, error_parts
from es_workers.dashboard.sampler import Rate, Sampler

POISON = ("acc-1", 3)


@dataclass
class Parked:
    """A store whose subscriber `fragile` parked acc-1 at event 3; `sturdy` handled all."""

    delivery: Delivery
    poison: set[tuple[str, int]]
    fragile: Recorder

    @property
    def store(self) -> Store:
        return self.delivery.store

    def client(self, **options: object) -> TestClient:
        options.setdefault("sample_every", 0.05)
        return TestClient(create_app(self.store, **options))  # type: ignore[arg-type]


@pytest.fixture
def parked(fast_storage: RedisStorage, broker: dramatiq.Broker) -> Iterator[Parked]:
    delivery = Delivery(fast_storage, broker, events=ACCOUNT_EVENTS)
    poison = {POISON}
    fragile = Recorder(fail=lambda e: (e.entity_id, e.event_number) in poison)
    sturdy = Recorder()
    delivery.store.subscribe("account", "fragile", fragile)
    delivery.store.subscribe("account", "sturdy", sturdy)
    heads = {
        "acc-1": write_at_head(delivery.store, "account", "acc-1", Opened(owner="ann"),
                               *(Deposited(amount=n) for n in (10, 20, 30))),
        "acc-2": write_at_head(delivery.store, "account", "acc-2", Opened(owner="bob"),
                               Deposited(amount=5)),
    }
    delivery.start_store()
    delivery.start_worker()
    try:
        wait_for(lambda: sturdy.has(heads) and fragile.has({"acc-2": 2}), "handled")
        wait_for(lambda: checkpoint(delivery.store, "fragile", "account", "acc-1") == 2
                 and parked_ids(delivery.store) == ["acc-1"], "acc-1 parked for fragile")
        yield Parked(delivery, poison, fragile)
    finally:
        delivery.stop()


def parked_ids(store: Store) -> list[str]:
    return [item.entity_id for item in admin.parked(store, "fragile", "account")]


def csrf_of(client: TestClient) -> str:
    """The CSRF token the dashboard gave this browser (a page was fetched first)."""
    if CSRF_COOKIE not in client.cookies:
        assert client.get("/parked").status_code in (200, 503)
    return str(client.cookies[CSRF_COOKIE])


def action(client: TestClient, name: str, entity_id: str = "acc-1", *,
           csrf: str | None = None, **headers: str) -> Response:
    form = {"subscriber_id": "fragile", "entity_type": "account", "entity_id": entity_id}
    if csrf is not None:
        form["csrf_token"] = csrf
    return client.post(f"/parked/{name}", data=form, headers={"HX-Request": "true", **headers})


# -- Overview ------------------------------------------------------------------------------

def test_overview_shows_the_figures_of_each_entity_type_and_subscriber(parked: Parked) -> None:
    client = parked.client()
    page = client.get("/")
    assert page.status_code == 200
    html = page.text
    assert re.search(r"<td>account</td><td class=\"n\">2</td><td class=\"n\">6</td>", html)
    fragile = row(html, "fragile")
    assert ">caught up<" in fragile  # the words of `es-workers status`
    assert re.search(r'class="n lagging">1<', fragile)  # acc-1
    assert re.search(r'class="n behind warn">2<', fragile)  # events 3 and 4
    assert '<a class="bad" href="/parked">1</a>' in fragile
    assert re.search(r'class="n behind ">0<', row(html, "sturdy"))
    assert 'id="outbox-backlog">0<' in html
    assert 'hx-get="/fragments/overview" hx-trigger="every 0.05s"' in html
    assert '<script src="/static/htmx.min.js">' in html
    assert "no samples yet" in html  # a rate needs two samples

    def fragment() -> str:
        answer = client.get("/fragments/overview", headers={"HX-Request": "true"})
        assert answer.status_code == 200 and "<html" not in answer.text
        return answer.text

    assert row(fragment(), "fragile") == fragile
    wait_for(lambda: fragment().count("<polyline") == 2, "a chart line per subscriber")


def test_overview_shows_memory_what_a_scavenge_would_free_and_missed_events(
        parked: Parked) -> None:
    parked.store.truncate_before("account", "acc-1", 5)  # "fragile" handled 1 and 2 only
    html = parked.client().get("/").text
    account = re.search(r'<tr data-entity-type="account">.*?</tr>', html, re.DOTALL)
    assert account
    assert re.search(r'class="n removable">2 events', account.group(0))  # 3, 4 held back
    assert re.search(r'class="n memory">(\d+ B|unknown)<', account.group(0))
    assert 'class="n removals">0<' in account.group(0)
    assert re.search(r'class="n missed ">0<', row(html, "sturdy"))
    [found] = parked.client().get("/api/status").json()["footprints"]
    assert (found["entity_type"], found["entities"], found["stored_events"]) == (
        "account", 2, 6)


def row(html: str, subscriber_id: str) -> str:
    match = re.search(rf'<tr data-subscriber="{subscriber_id}".*?</tr>', html, re.DOTALL)
    assert match, f"no row for {subscriber_id}"
    return match.group(0)


def test_pages_are_served_with_safe_headers_and_a_csrf_cookie(parked: Parked) -> None:
    client = parked.client()
    page = client.get("/")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    cookie = page.headers["set-cookie"]
    assert cookie.startswith(f"{CSRF_COOKIE}=") and "HttpOnly" in cookie
    assert "SameSite=strict" in cookie or "samesite=strict" in cookie.lower()
    htmx = client.get("/static/htmx.min.js")
    assert htmx.status_code == 200 and "Zero-Clause BSD" in htmx.text[:600]


def test_api_status_is_what_es_workers_status_json_prints(
    parked: Parked, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = types.ModuleType("dashboard_status_app")
    module.store = parked.store
    monkeypatch.setitem(sys.modules, module.__name__, module)
    printed = CliRunner().invoke(cli, ["status", f"{module.__name__}:store", "--json",
                                       "--embedded"])  # on fakeredis too
    assert printed.exit_code == 0, printed.output

    served = parked.client().get("/api/status")

    assert served.status_code == 200
    assert served.json() == json.loads(printed.output)
    assert served.json()["subscribers"][0]["parked"][0]["entity_id"] == "acc-1"


def test_api_overview_has_counts_and_handled_per_second(parked: Parked) -> None:
    client = parked.client()
    client.get("/api/overview")  # the first sample; rates need two
    wait_for(lambda: client.get("/api/overview").json()["handled_per_second"].get("account/sturdy"),
             "a second sample")
    body = client.get("/api/overview").json()
    assert body["entity_types"] == [{"entity_type": "account", "entities": 2, "events": 6}]
    assert body["outbox_backlog"] == 0
    assert set(body["handled_per_second"]) == {"account/fragile", "account/sturdy"}
    assert all(r["per_second"] == 0 for r in body["handled_per_second"]["account/sturdy"])


# -- Parked entities -----------------------------------------------------------------------

def test_parked_page_shows_the_event_the_error_and_the_buttons(parked: Parked) -> None:
    html = parked.client().get("/parked").text
    article = re.search(r'<article class="parked".*?</article>', html, re.DOTALL)
    assert article, html
    text = article.group(0)
    assert 'data-entity-id="acc-1"' in text
    assert '<dd class="event-number">3</dd>' in text
    assert "<code>RuntimeError</code>" in text
    assert '<dd class="message">poison acc-1 #3</dd>' in text
    assert "<dd>5</dd>" in text  # attempts
    assert 'data-action="retry"' in text and 'data-action="skip"' in text
    assert 'hx-confirm="Skip event 3 of account acc-1 for fragile?' in text

    listed = parked.client().get("/api/parked").json()
    assert [(p["subscriber_id"], p["entity_id"], p["event_number"], p["attempts"],
             p["exception_type"], p["message"]) for p in listed] == [
        ("fragile", "acc-1", 3, 5, "RuntimeError", "poison acc-1 #3")]


def test_a_recorded_traceback_is_shown_collapsed() -> None:
    item = types.SimpleNamespace(
        subscriber_id="fragile", entity_type="account", entity_id="acc-1", event_number=3,
        error="KeyError: 'owner'", attempts=5, parked_at="2026-11-30T09:00:00+00:00",
        traceback='Traceback (most recent call last):\n  File "app.py", line 9\nKeyError',
    )
    html = templates().get_template("_parked.html").render(
        parked=[item], read_only=True, csrf_field="csrf_token", csrf_token="t")
    details = re.search(r"<details><summary>traceback</summary><pre>(.*?)</pre></details>",
                        html, re.DOTALL)
    assert details and "File &#34;app.py&#34;, line 9" in details.group(1)
    assert "<code>KeyError</code>" in html and "&#39;owner&#39;" in html


def test_skip_without_the_csrf_token_is_refused(parked: Parked) -> None:
    client = parked.client()
    real = csrf_of(client)
    assert action(client, "skip").status_code == 403
    assert action(client, "skip", csrf="forged").status_code == 403
    other = parked.client()  # another site's form: no cookie of this browser
    assert action(other, "skip", csrf=real).status_code == 403
    assert parked_ids(parked.store) == ["acc-1"]


def test_skip_marks_the_event_handled_and_the_rest_is_delivered(parked: Parked) -> None:
    client = parked.client()
    answer = action(client, "skip", csrf=csrf_of(client))

    assert answer.status_code == 200
    assert "fragile: account &#39;acc-1&#39; skipped event 3" in answer.text
    assert parked_ids(parked.store) == []
    wait_for(lambda: checkpoint(parked.store, "fragile", "account", "acc-1") == 4,
             "event 4 delivered after the skip")
    assert parked.fragile.by_entity()["acc-1"] == [1, 2, 4]
    assert "Nothing parked." in client.get("/fragments/parked").text


def test_retry_delivers_again_from_the_failed_event(parked: Parked) -> None:
    parked.poison.clear()  # the handler was fixed
    client = parked.client()
    answer = action(client, "retry", csrf=csrf_of(client))

    assert answer.status_code == 200
    assert "retrying from event 3" in answer.text
    wait_for(lambda: parked.fragile.has({"acc-1": 4}), "events 3 and 4 handled")
    assert parked.fragile.by_entity()["acc-1"] == [1, 2, 3, 4]
    again = action(client, "retry", csrf=csrf_of(client))
    assert "is not parked for subscriber" in again.text


def test_an_action_without_htmx_redirects_back_to_the_parked_page(parked: Parked) -> None:
    client = parked.client()
    form = {"subscriber_id": "fragile", "entity_type": "account", "entity_id": "acc-1",
            "csrf_token": csrf_of(client)}
    answer = client.post("/parked/skip", data=form, follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/parked"
    assert parked_ids(parked.store) == []


def test_read_only_hides_the_buttons_and_refuses_the_actions(parked: Parked) -> None:
    client = parked.client(read_only=True)
    html = client.get("/parked").text
    assert "data-action" not in html and "read-only" in html
    for name in ("retry", "skip"):
        refused = action(client, name, csrf=csrf_of(client))
        assert refused.status_code == 403
        assert "read-only" in refused.text
    assert parked_ids(parked.store) == ["acc-1"]


# -- Entity browser ------------------------------------------------------------------------

def test_entity_page_shows_events_and_what_each_subscriber_handled(parked: Parked) -> None:
    html = parked.client().get("/entity", params={"entity_type": "account",
                                                  "entity_id": "acc-1"}).text
    assert "acc-1 <small>4 events" in html
    fragile = row(html, "fragile")
    assert 'class="n checkpoint">2<' in fragile and "parked at event 3" in fragile
    assert "up to date" in row(html, "sturdy")
    events = re.findall(r'<tr data-event-number="(\d)">(.*?)</tr>', html, re.DOTALL)
    assert [number for number, _ in events] == ["1", "2", "3", "4"]
    marks = [re.findall(r'title="(handled|parked here|not handled yet)"', cells)
             for _, cells in events]
    # columns: fragile, sturdy
    assert marks == [["handled", "handled"], ["handled", "handled"],
                     ["parked here", "handled"], ["not handled yet", "handled"]]
    assert "Deposited" in events[1][1] and "&#34;amount&#34;: 10" in events[1][1]


def test_entity_api_lists_events_with_who_handled_them(parked: Parked) -> None:
    body = parked.client().get("/api/entity/account/acc-1").json()
    assert body["head"] == 4 and body["next_after"] is None
    assert body["subscribers"] == [
        {"subscriber_id": "fragile", "checkpoint": 2, "parked_at": 3},
        {"subscriber_id": "sturdy", "checkpoint": 4, "parked_at": None},
    ]
    first, second = body["events"][:2]
    assert first["event_name"] == "Opened" and first["content"] == {"owner": "ann"}
    assert second["content"] == {"amount": 10}
    assert [e["handled_by"] for e in body["events"]][2:] == [
        {"fragile": False, "sturdy": True}, {"fragile": False, "sturdy": True}]
    assert first["store_event_id"] and first["store_entity_id"] and first["event_time"]

    page = parked.client().get("/api/entity/account/acc-1", params={"after": 1, "limit": 2})
    assert [e["event_number"] for e in page.json()["events"]] == [2, 3]
    assert page.json()["next_after"] == 3


def test_large_contents_are_cut_short_with_a_link_to_the_full_json(parked: Parked) -> None:
    owner = "x" * 5000
    entity_id = "odd/id+1?&"
    write_at_head(parked.store, "account", entity_id, Opened(owner=owner))
    client = parked.client()
    html = client.get("/entity", params={"entity_type": "account", "entity_id": entity_id}).text
    assert owner not in html and "x" * 1000 in html
    link = re.search(r'<a class="full" href="([^"]+)">full JSON', html)
    assert link, html
    full = client.get(link.group(1).replace("&amp;", "&"))
    assert full.status_code == 200
    assert [e["content"] for e in full.json()["events"]] == [{"owner": owner}]


def test_unknown_entities_and_bad_parameters_are_answered_plainly(parked: Parked) -> None:
    client = parked.client()
    missing = client.get("/entity", params={"entity_type": "account", "entity_id": "nobody"})
    assert missing.status_code == 404 and "has no events" in missing.text
    assert client.get("/api/entity/account/nobody").status_code == 404
    bad = client.get("/api/entity/account/acc-1", params={"after": "-1"})
    assert bad.status_code == 400 and "whole number" in bad.json()["error"]
    invalid = client.get("/api/entity/9bad/acc-1")
    assert invalid.status_code == 400, invalid.text
    assert client.get("/entity").status_code == 200  # the empty lookup form



def fake_store() -> Store:
    """A store on its own fakeredis with a subscriber and one account, nothing delivered."""
    store = Store(RedisStorage(fakeredis.FakeRedis(server=fakeredis.FakeServer(version=(7, 0)))),
                  events=ACCOUNT_EVENTS)
    store.subscribe("account", "balances", lambda event: None)
    write_at_head(store, "account", "acc-1", Opened(owner="ann"))
    return store


def test_an_unknown_entity_type_is_named_unknown_and_not_shown_as_another() -> None:
    client = TestClient(create_app(fake_store(), sample_every=60))
    page = client.get("/entity", params={"entity_type": "acount", "entity_id": "acc-1"})
    assert page.status_code == 404
    assert "unknown entity type &#39;acount&#39;" in page.text, page.text
    assert "account" in page.text  # the known types are named
    # The lookup form keeps what was asked, not the first known type.
    selected = re.findall(r"<option[^>]*selected[^>]*>([^<]*)</option>", page.text)
    assert selected == ["acount (unknown)"]
    api = client.get("/api/entity/acount/acc-1")
    assert api.status_code == 404 and "unknown entity type 'acount'" in api.json()["error"]
    fragment = client.get("/fragments/entity", params={"entity_type": "acount",
                                                        "entity_id": "acc-1"})
    assert "unknown entity type" in fragment.text


def test_the_login_page_offers_no_log_out() -> None:
    client = TestClient(create_app(fake_store(), token="s3cret", sample_every=60))
    login = client.get("/login")
    assert "Log in" in login.text and "Log out" not in login.text
    form = {"token": "s3cret", "next": "/", "csrf_token": str(client.cookies[CSRF_COOKIE])}
    assert "Log out" in client.post("/login", data=form).text  # logged in: now it is offered


# -- Access --------------------------------------------------------------------------------

def test_with_a_token_every_page_and_endpoint_requires_it(parked: Parked) -> None:
    client = parked.client(token="s3cret")
    for path in ("/", "/parked", "/entity", "/fragments/overview"):
        refused = client.get(path, follow_redirects=False)
        assert refused.status_code == 303, path
        assert refused.headers["location"].startswith("/login?next=")
    assert client.get("/fragments/parked", headers={"HX-Request": "true"}).status_code == 401
    for path in ("/api/status", "/api/parked", "/api/overview", "/api/entity/account/acc-1"):
        assert client.get(path).status_code == 401, path
        wrong = client.get(path, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401, path
        assert client.get(path, headers={"Authorization": "Bearer s3cret"}).status_code == 200
    refused = action(client, "skip", csrf=csrf_of(client))
    assert refused.status_code == 401
    assert refused.headers["hx-redirect"].startswith("/login")
    assert client.get("/static/dashboard.css").status_code == 200
    assert parked_ids(parked.store) == ["acc-1"]


def test_login_sets_a_cookie_that_opens_the_pages(parked: Parked) -> None:
    client = parked.client(token="s3cret")
    assert "Log in" in client.get("/").text  # redirected to the form
    csrf = str(client.cookies[CSRF_COOKIE])
    form = {"token": "s3cret", "next": "/parked", "csrf_token": csrf}
    assert client.post("/login", data={**form, "csrf_token": ""}).status_code == 403
    assert client.post("/login", data={**form, "token": "nope"}).status_code == 401
    assert client.get("/", follow_redirects=False).status_code == 303

    logged_in = client.post("/login", data=form, follow_redirects=False)
    assert logged_in.status_code == 303 and logged_in.headers["location"] == "/parked"
    assert "s3cret" not in logged_in.headers["set-cookie"]
    assert client.get("/").status_code == 200
    assert client.get("/api/status").status_code == 200
    assert action(client, "skip", csrf=csrf).status_code == 200

    client.post("/logout", data={"csrf_token": csrf})
    assert client.get("/", follow_redirects=False).status_code == 303


def test_login_goes_back_only_to_a_page_of_the_dashboard(parked: Parked) -> None:
    client = parked.client(token="s3cret")
    client.get("/login")
    form = {"token": "s3cret", "csrf_token": str(client.cookies[CSRF_COOKIE])}
    for target in ("https://evil.example/", "//evil.example/x"):
        answer = client.post("/login", data={**form, "next": target}, follow_redirects=False)
        assert answer.headers["location"] == "/"


def test_bearer_api_clients_may_act_without_a_csrf_token(parked: Parked) -> None:
    client = parked.client(token="s3cret")
    answer = action(client, "skip", Authorization="Bearer s3cret")
    assert answer.status_code == 200, answer.text
    assert parked_ids(parked.store) == []


# -- Errors --------------------------------------------------------------------------------

def test_redis_down_shows_a_banner_not_a_stack_trace() -> None:
    server = fakeredis.FakeServer(version=(7, 0))
    store = Store(RedisStorage(fakeredis.FakeRedis(server=server)), events=ACCOUNT_EVENTS)
    store.subscribe("account", "balances", lambda event: None)
    client = TestClient(create_app(store, sample_every=0.05))
    assert client.get("/").status_code == 200
    server.connected = False

    wait_for(lambda: client.get("/").status_code == 503, "the sampler to notice")
    page = client.get("/")
    assert 'class="banner" role="alert">cannot reach Redis' in page.text
    assert "Traceback" not in page.text
    fragment = client.get("/fragments/overview", headers={"HX-Request": "true"})
    assert fragment.status_code == 503 and fragment.text.startswith('<div class="banner"')
    api = client.get("/api/status")
    assert api.status_code == 503 and api.json()["error"].startswith("cannot reach Redis")
    entity = client.get("/entity", params={"entity_type": "account", "entity_id": "a"})
    assert entity.status_code == 503 and "cannot reach Redis" in entity.text

    server.connected = True
    wait_for(lambda: client.get("/").status_code == 200, "the dashboard to recover")


def test_the_cli_refuses_a_public_address_without_a_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ES_DASHBOARD_TOKEN", raising=False)
    refused = CliRunner().invoke(cli, ["dashboard", "examples.bank:store", "--host", "0.0.0.0"])
    assert refused.exit_code == 2
    assert "without a token" in refused.output and "ES_DASHBOARD_TOKEN" in refused.output

    monkeypatch.setenv("ES_DASHBOARD_TOKEN", "s3cret")
    monkeypatch.delenv("ES_REDIS_URL", raising=False)
    passed = CliRunner().invoke(cli, ["dashboard", "examples.bank:store", "--host", "0.0.0.0"])
    assert passed.exit_code == 2 and "without a token" not in passed.output
    assert "ES_REDIS_URL is not set" in passed.output  # the next check: a shared Redis


def test_the_cli_on_a_port_in_use_exits_1_naming_the_port(
    monkeypatch: pytest.MonkeyPatch, prefix: str
) -> None:
    """Not 3: that is `status --check`'s code for a threshold passed. The app is built under
    a prefix of the test's own (deleted afterwards), never the default one."""
    real_redis()
    monkeypatch.setenv("ES_REDIS_URL", REDIS_URL)
    monkeypatch.setenv("ES_PREFIX", prefix)
    monkeypatch.delitem(sys.modules, "examples.bank", raising=False)  # built anew on it
    monkeypatch.delenv("ES_DASHBOARD_TOKEN", raising=False)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli, ["dashboard", "examples.bank:store", "--port",
                                          str(port)])
    assert result.exit_code == 1, result.output
    assert f"cannot listen on 127.0.0.1:{port}" in result.output and "--port" in result.output


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.8.0.1", True), ("::1", True), ("[::1]", True),
    ("localhost", True), ("0.0.0.0", False), ("::", False), ("192.168.1.5", False),
    ("example.com", False),
])
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


# -- Chart and sampler ---------------------------------------------------------------------

def test_the_sampler_reads_redis_once_per_interval_whatever_the_viewers(parked: Parked) -> None:
    now = [0.0]
    sampler = Sampler(parked.store, every=5.0, clock=lambda: now[0])
    first = sampler.latest()
    assert all(sampler.latest() is first for _ in range(20))
    now[0] = 5.0
    assert sampler.latest() is not first
    assert sampler.refresh() is not first


def test_handled_events_per_second_come_from_consecutive_samples(
    parked: Parked,
) -> None:
    sampler = Sampler(parked.store, every=0.001)
    sampler.latest()
    parked.poison.clear()
    admin.retry_parked(parked.store, "fragile", "account", "acc-1")
    wait_for(lambda: parked.fragile.has({"acc-1": 4}), "acc-1 handled")
    sampler.latest()
    rates = sampler.rates()
    (fragile,) = rates[("account", "fragile")]
    assert fragile.per_second > 0  # two events over the time between the samples
    assert rates[("account", "sturdy")][0].per_second == 0


def test_chart_scales_to_a_round_top_and_draws_one_line_per_subscriber() -> None:
    assert [nice_top(v) for v in (0, 0.5, 1, 1.5, 7, 10, 11, 260)] == [
        1, 1, 1, 2, 10, 10, 20, 500]
    rates = {("account", "a"): [Rate(at=940.0, per_second=3.0), Rate(at=1000.0, per_second=4.0)],
             ("account", "b"): [Rate(at=100.0, per_second=9.0)]}  # out of the window
    drawn = chart(rates, now=1000.0, window=600.0)
    assert drawn.top == 10
    a, b = drawn.lines
    assert a.label == "account / a" and a.points == "576.0,112.0 640.0,96.0" and a.last == 4.0
    assert b.points == "" and b.last == 0.0


def test_error_is_split_into_exception_type_and_message() -> None:
    assert error_parts("RuntimeError: poison acc-1 #3") == ErrorParts("RuntimeError",
                                                                     "poison acc-1 #3")
    parts = error_parts("mod.CustomError: bad: thing")
    assert (parts.exception_type, parts.message) == ("mod.CustomError", "bad: thing")
    assert error_parts("no type here").exception_type == ""
    assert error_parts("two words: x").message == "two words: x"

