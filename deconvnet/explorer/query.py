"""The explorer's query strings: each parameter given once.

FastAPI reads a parameter given twice (``channel=3&channel=4``) as its last value and answers
for it, so a request that names two units would get one of them without a word.
"""

from __future__ import annotations

from collections import Counter
from urllib.parse import parse_qsl

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send


class OneValueEach:
    """ASGI middleware: refuse (400) a request whose query string names a parameter twice."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            query = scope.get("query_string", b"").decode("latin-1")
            names = Counter(name for name, _ in parse_qsl(query, keep_blank_values=True))
            repeated = [(name, count) for name, count in names.items() if count > 1]
            if repeated:
                name, count = repeated[0]
                detail = f"the query names {name!r} {count} times; give it once"
                await JSONResponse({"detail": detail}, status_code=400)(scope, receive, send)
                return
        await self.app(scope, receive, send)
