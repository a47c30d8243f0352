"""Who may see the dashboard and act on it: the access token, CSRF tokens, safe headers.

- With a token (`ES_DASHBOARD_TOKEN`) every page and endpoint needs it: a browser logs in
  once (a cookie holds an HMAC of the token, never the token), an API client sends
  `Authorization: Bearer <token>`.
- Every POST from a browser carries a CSRF token: a random cookie repeated in a form field
  (double submit). The cookie is SameSite=Strict and another site cannot read it, so it
  cannot forge the field. A request authenticated by its Authorization header is not a
  browser's ambient credential and needs no CSRF token.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from urllib.parse import quote

from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp

SESSION_COOKIE = "es_dashboard_session"
CSRF_COOKIE = "es_dashboard_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
OPEN_PATHS = ("/login", "/static/")
SECURITY_HEADERS = {
    # Everything the pages use is served from here: htmx and the stylesheet.
    "content-security-policy": "default-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}


def is_loopback(host: str) -> bool:
    """True for addresses only this machine reaches: 127.0.0.0/8, ::1, localhost."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def session_value(token: str) -> str:
    """What the login cookie holds: proof of the token that does not reveal it."""
    return hmac.new(token.encode(), b"es-workers dashboard session", hashlib.sha256).hexdigest()


def token_matches(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode(), token.encode())


def bearer(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


def by_header(request: Request, token: str | None) -> bool:
    """True if the request proves the token in its Authorization header."""
    given = bearer(request)
    return token is not None and given is not None and token_matches(given, token)


def authenticated(request: Request, token: str | None) -> bool:
    if token is None or by_header(request, token):
        return True
    cookie = request.cookies.get(SESSION_COOKIE, "")
    return hmac.compare_digest(cookie.encode(), session_value(token).encode())


def safe_next(target: str | None) -> str:
    """Where to go after logging in: a path of this site only."""
    if target and target.startswith("/") and not target.startswith("//"):
        return target
    return "/"


def csrf_token(request: Request) -> str:
    """The CSRF token of this browser (set as a cookie on the response if new)."""
    token: str = request.state.csrf_token
    return token


def csrf_ok(request: Request, form_value: str | None, token: str | None) -> bool:
    if by_header(request, token):
        return True
    cookie = request.cookies.get(CSRF_COOKIE)
    given = form_value or request.headers.get(CSRF_HEADER)
    return bool(cookie and given) and hmac.compare_digest(
        str(cookie).encode(), str(given).encode()
    )


class AccessMiddleware(BaseHTTPMiddleware):
    """Refuses requests without the token, hands out CSRF cookies, adds safe headers."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        super().__init__(app)
        self.token = token

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        cookie = request.cookies.get(CSRF_COOKIE)
        request.state.csrf_token = cookie or secrets.token_urlsafe(32)
        path = request.url.path
        if path.startswith(OPEN_PATHS) or authenticated(request, self.token):
            response = await call_next(request)
        else:
            response = self.refuse(request)
        if cookie is None:
            response.set_cookie(CSRF_COOKIE, request.state.csrf_token, httponly=True,
                                samesite="strict", secure=request.url.scheme == "https")
        response.headers.update(SECURITY_HEADERS)
        return response

    @staticmethod
    def refuse(request: Request) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": "this dashboard needs its token: send "
                                 "'Authorization: Bearer <ES_DASHBOARD_TOKEN>'"},
                                status_code=401, headers={"www-authenticate": "Bearer"})
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        login = f"/login?next={quote(target)}"
        if request.headers.get("hx-request"):
            # htmx follows a redirect inside the fragment; ask it for a full page instead.
            return Response(status_code=401, headers={"hx-redirect": login})
        return RedirectResponse(login, status_code=303)
