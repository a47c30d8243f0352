"""The dashboard's web app: pages, htmx fragments, JSON endpoints and the two repairs.

`create_app(store)` returns a Starlette app; `es-workers dashboard APP` serves it with
uvicorn. Pages render the sampler's latest overview (one read of Redis per few seconds,
whatever the number of viewers); `/api/status` reads afresh, as `es-workers status --json`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import redis
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from es_workers import (
    EsError,
    InvalidNameError,
    NotParkedError,
    StorageUnavailableError,
)
from es_workers.admin import ParkedEntity, retry_parked, skip_parked, status
from es_workers.names import check_entity_type
from es_workers.store import Store

from .access import (
    CSRF_FIELD,
    SESSION_COOKIE,
    AccessMiddleware,
    csrf_ok,
    csrf_token,
    safe_next,
    session_value,
    token_matches,
)
from .chart import chart
from .data import all_parked, entity_dict, entity_view, error_parts, parked_dict
from .sampler import Sampler

HERE = Path(__file__).resolve().parent
CONTENT_SHOWN = 2000  # characters of an event's JSON content shown before "full JSON"
ACTIONS: dict[str, Callable[[Store, str, str, str], ParkedEntity]] = {
    "retry": retry_parked,
    "skip": skip_parked,
}


def ago(moment: str | float) -> str:
    """'3 min ago' for an ISO time or seconds since the epoch."""
    when = (datetime.fromisoformat(moment) if isinstance(moment, str)
            else datetime.fromtimestamp(moment, UTC))
    seconds = max(0, int((datetime.now(UTC) - when).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


def unknown_type(entity_type: str, known: list[str]) -> str:
    return (f"unknown entity type {entity_type!r}: this store has "
            f"{', '.join(known) or 'no entity types'}")


class BadRequest(Exception):
    """A query parameter the dashboard cannot use (answered with 400)."""


def number(request: Request, name: str, default: int) -> int:
    value = request.query_params.get(name) or str(default)
    if not value.isdigit():
        raise BadRequest(f"{name} must be a whole number, not {value!r}")
    return int(value)


def form_fields(body: bytes) -> dict[str, str]:
    """An HTML form's fields (application/x-www-form-urlencoded), the first of each name."""
    return {name: values[0] for name, values in parse_qs(body.decode(errors="replace")).items()}


def content_json(content: Any) -> str:
    return json.dumps(content, indent=2, ensure_ascii=False)


def templates() -> Jinja2Templates:
    """The dashboard's Jinja2 templates with their filters."""
    made = Jinja2Templates(directory=HERE / "templates")
    made.env.filters["ago"] = ago
    made.env.filters["content_json"] = content_json
    made.env.globals["error_parts"] = error_parts
    made.env.globals["content_shown"] = CONTENT_SHOWN
    return made


class Dashboard:
    """The endpoints, sharing the store, the sampler and the access options.

    Endpoints that read Redis are plain functions, which Starlette runs in its thread
    pool: a slow read (a large store) never stalls the event loop.
    """

    def __init__(self, store: Store, sampler: Sampler, *, token: str | None,
                 read_only: bool) -> None:
        self.store = store
        self.sampler = sampler
        self.token = token
        self.read_only = read_only
        self.templates = templates()

    def render(self, request: Request, name: str, status_code: int = 200,
               **context: Any) -> Response:
        context.update(
            csrf_token=csrf_token(request), csrf_field=CSRF_FIELD, read_only=self.read_only,
            login_required=self.token is not None, refresh=self.sampler.every,
        )
        return self.templates.TemplateResponse(request, name, context, status_code=status_code)

    # -- Overview ----------------------------------------------------------------------

    def overview_context(self) -> dict[str, Any]:
        overview = self.sampler.latest()
        drawn = chart(self.sampler.rates(), now=overview.taken_at, window=self.sampler.window)
        return {"overview": overview, "chart": drawn, "sample_every": self.sampler.every}

    def overview_page(self, request: Request) -> Response:
        return self.render(request, "overview.html", **self.overview_context())

    def overview_fragment(self, request: Request) -> Response:
        return self.render(request, "_overview.html", **self.overview_context())

    # -- Parked entities and their repair ----------------------------------------------

    def parked_page(self, request: Request) -> Response:
        return self.render(request, "parked.html", parked=self.sampler.latest().parked())

    def parked_fragment(self, request: Request) -> Response:
        return self.render(request, "_parked.html", parked=self.sampler.latest().parked())

    async def parked_action(self, request: Request) -> Response:
        action = ACTIONS[request.url.path.rsplit("/", 1)[1]]
        form = form_fields(await request.body())
        if not csrf_ok(request, form.get(CSRF_FIELD), self.token):
            return self.refusal(request, "missing or wrong CSRF token: reload the page")
        if self.read_only:
            return self.refusal(request, "this dashboard is read-only (--read-only)")
        try:
            names = form["subscriber_id"], form["entity_type"], form["entity_id"]
        except KeyError as missing:
            return self.refusal(request, f"missing form field {missing}", 400)
        try:
            item = await run_in_threadpool(action, self.store, *names)
        except NotParkedError as error:
            message, ok = str(error), False
        else:
            verb = "retrying from" if action is retry_parked else "skipped"
            message, ok = (f"{item.subscriber_id}: {item.entity_type} {item.entity_id!r} "
                           f"{verb} event {item.event_number}"), True
        if not request.headers.get("hx-request"):
            return RedirectResponse("/parked", status_code=303)
        overview = await run_in_threadpool(self.sampler.refresh)
        return self.render(request, "_parked.html", parked=overview.parked(), message=message,
                           ok=ok)

    def refusal(self, request: Request, message: str, status_code: int = 403) -> Response:
        if request.headers.get("hx-request"):
            return self.render(request, "_banner.html", status_code, error=message)
        return self.render(request, "error.html", status_code, error=message)

    # -- Entity browser ----------------------------------------------------------------

    def entity_context(self, request: Request) -> tuple[dict[str, Any], int]:
        entity_type = request.query_params.get("entity_type", "")
        entity_id = request.query_params.get("entity_id", "")
        known = self.store.entity_types()
        context: dict[str, Any] = {"entity_type": entity_type, "entity_id": entity_id,
                                   "entity_types": known, "view": None, "unknown": None}
        if entity_type and check_entity_type(entity_type) not in known:
            context["unknown"] = unknown_type(entity_type, known)
            return context, 404
        if not entity_type or not entity_id:
            return context, 200
        after = number(request, "after", 0)
        context["view"] = view = entity_view(self.store, entity_type, entity_id, after=after)
        return context, 200 if view.head else 404

    def entity_page(self, request: Request) -> Response:
        context, code = self.entity_context(request)
        return self.render(request, "entity.html", code, **context)

    def entity_fragment(self, request: Request) -> Response:
        context, _ = self.entity_context(request)
        return self.render(request, "_entity.html", **context)

    # -- JSON --------------------------------------------------------------------------

    def api_status(self, request: Request) -> Response:
        # The same function and the same dict as `es-workers status --json`.
        return JSONResponse(status(self.store).to_dict())

    def api_overview(self, request: Request) -> Response:
        overview = self.sampler.latest()
        rates = {
            f"{entity_type}/{subscriber_id}": [
                {"at": rate.at, "per_second": rate.per_second} for rate in series
            ]
            for (entity_type, subscriber_id), series in self.sampler.rates().items()
        }
        return JSONResponse({**overview.to_dict(), "handled_per_second": rates})

    def api_parked(self, request: Request) -> Response:
        return JSONResponse([parked_dict(item) for item in all_parked(self.store)])

    def api_entity(self, request: Request) -> Response:
        after = number(request, "after", 0)
        limit = max(1, min(1000, number(request, "limit", 100)))
        params = request.path_params
        known = self.store.entity_types()
        if check_entity_type(params["entity_type"]) not in known:
            return JSONResponse({"error": unknown_type(params["entity_type"], known)},
                                status_code=404)
        view = entity_view(self.store, params["entity_type"], params["entity_id"],
                           after=after, limit=limit)
        if not view.head:
            return JSONResponse({"error": f"{view.entity_type} {view.entity_id!r} has no "
                                 "events"}, status_code=404)
        return JSONResponse(entity_dict(view))

    # -- Login -------------------------------------------------------------------------

    async def login_page(self, request: Request) -> Response:
        if self.token is None:
            return RedirectResponse("/", status_code=303)
        return self.render(request, "login.html", next=safe_next(request.query_params.get("next")))

    async def login(self, request: Request) -> Response:
        form = form_fields(await request.body())
        target = safe_next(form.get("next"))
        if self.token is None:
            return RedirectResponse("/", status_code=303)
        if not csrf_ok(request, form.get(CSRF_FIELD), self.token):
            return self.render(request, "login.html", 403, next=target,
                               error="the form expired: try again")
        if not token_matches(form.get("token", ""), self.token):
            return self.render(request, "login.html", 401, next=target, error="wrong token")
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(SESSION_COOKIE, session_value(self.token), httponly=True,
                            samesite="strict", secure=request.url.scheme == "https")
        return response

    async def logout(self, request: Request) -> Response:
        form = form_fields(await request.body())
        if not csrf_ok(request, form.get(CSRF_FIELD), self.token):
            return self.refusal(request, "missing or wrong CSRF token: reload the page")
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE)
        return response

    # -- Errors ------------------------------------------------------------------------

    async def unavailable(self, request: Request, error: Exception) -> Response:
        """Redis down or a store error: a banner (or a JSON error), never a stack trace."""
        code = 400 if isinstance(error, BadRequest | InvalidNameError) else 503
        if isinstance(error, redis.ConnectionError | redis.TimeoutError
                      | StorageUnavailableError):
            message = f"cannot reach Redis: {error}"
        elif isinstance(error, redis.RedisError):
            message = f"Redis: {type(error).__name__}: {error}"
        else:
            message = str(error)
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": message}, status_code=code)
        if request.headers.get("hx-request"):
            return self.render(request, "_banner.html", code, error=message)
        return self.render(request, "error.html", code, error=message)

    def routes(self) -> list[Route | Mount]:
        return [
            Route("/", self.overview_page),
            Route("/fragments/overview", self.overview_fragment),
            Route("/parked", self.parked_page),
            Route("/fragments/parked", self.parked_fragment),
            *(Route(f"/parked/{action}", self.parked_action, methods=["POST"])
              for action in ACTIONS),
            Route("/entity", self.entity_page),
            Route("/fragments/entity", self.entity_fragment),
            Route("/api/status", self.api_status),
            Route("/api/overview", self.api_overview),
            Route("/api/parked", self.api_parked),
            Route("/api/entity/{entity_type:str}/{entity_id:path}", self.api_entity),
            Route("/login", self.login_page),
            Route("/login", self.login, methods=["POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ]


def create_app(
    store: Store,
    *,
    token: str | None = None,
    read_only: bool = False,
    sample_every: float = 3.0,
    window: float = 600.0,
) -> Starlette:
    """The dashboard of `store`: figures, parked entities (with Retry and Skip unless
    `read_only`), the entity browser and their JSON. With `token`, every request needs it.

    While the app runs (its lifespan) a thread samples the store every `sample_every`
    seconds for the chart of the last `window` seconds.
    """
    sampler = Sampler(store, every=sample_every, window=window)
    dashboard = Dashboard(store, sampler, token=token or None, read_only=read_only)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        stop = threading.Event()
        thread = threading.Thread(target=sampler.run, args=(stop,), name="es-dashboard-sampler",
                                  daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=10)

    return Starlette(
        routes=dashboard.routes(),
        middleware=[Middleware(AccessMiddleware, token=dashboard.token)],
        exception_handlers={
            redis.RedisError: dashboard.unavailable,
            EsError: dashboard.unavailable,
            BadRequest: dashboard.unavailable,
        },
        lifespan=lifespan,
    )
