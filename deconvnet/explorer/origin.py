"""The explorer's Origin check: requests that a page of another web site makes are refused.

A server on the user's machine answers any page the browser shows; without this check a page of
another site could make it compute, or evict the user's images, with a POST it sends there.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

_SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
_DEFAULT_PORTS = {"http": "80", "https": "443"}


class SameOriginOnly:
    """ASGI middleware: refuse (403) a request that a page of another origin made.

    Browsers send ``Origin`` with every cross-origin request and every POST, so a request
    whose ``Origin`` is not this server's own scheme, host and port (the ``Host`` it was sent
    to, so any name the server answers works for its own page) comes from another site. A
    POST without ``Origin`` is refused too when ``Sec-Fetch-Site`` says another site sent it.
    Requests without either header (curl, scripts) and plain navigations to the page pass.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = Headers(scope=scope)
            origin = headers.get("origin")
            foreign = (
                origin is not None
                and not _same_origin(origin, scope.get("scheme", "http"), headers.get("host", ""))
            ) or (
                origin is None
                and scope["method"] not in _SAFE_METHODS
                and headers.get("sec-fetch-site") in ("cross-site", "same-site")
            )
            if foreign:
                response = JSONResponse(
                    {"detail": f"refused: a page of another origin ({origin}) sent this request"},
                    status_code=403,
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _same_origin(origin: str, scheme: str, host: str) -> bool:
    """Whether ``origin`` (``scheme://host[:port]``) is this server, reached as ``host``."""
    try:
        parts = urlsplit(origin.strip())
    except ValueError:
        return False
    if parts.scheme.lower() != scheme or not parts.netloc or parts.path not in ("", "/"):
        return False
    return _netloc(parts.netloc, scheme) == _netloc(host, scheme)


def _netloc(netloc: str, scheme: str) -> str:
    """``host:port`` in lower case, with the scheme's default port when none is given."""
    host, port = re.fullmatch(r"(.*?)(?::(\d+))?", netloc.strip().lower()).groups()
    return f"{host}:{port or _DEFAULT_PORTS.get(scheme, '')}"
