"""HEAD requests: answered as GET without the body, as HTTP asks of every server.

FastAPI's routes answer only the methods they name, so ``curl -I`` on the page or on an image
got 405; Starlette's own routes add HEAD to every GET route, and this does the same for all of
them at once without listing HEAD operations in ``/docs``.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class HeadAsGet:
    """ASGI middleware: run a HEAD request as GET and send its status and headers (its
    ``Content-Length`` included) without the body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)
