"""The request body bounded while it arrives, before Starlette parses it.

Starlette reads a multipart body to its end, spooling its files to disk, before a route can look
at a single field; a 300 MB upload was read and spooled in full before the route's 413. Here a
Content-Length above the limit is refused before a byte is read, and a body without one (chunked)
is counted as its `http.request` messages arrive: the one that passes the limit ends the request
with 413, so at most the limit plus one message (the server's read buffer, 64 KiB for uvicorn)
is ever taken in.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..problems import problem


class _TooLarge(Exception):
    """Raised into the app from `receive`; whatever the app makes of it, the answer is 413."""


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    def _refusal(self):
        response = problem(
            "body-too-large",
            f"the request body is larger than {self.max_bytes:,} bytes ({self.max_bytes / 2**20:.1f} MiB)",
        )
        # The rest of the body is never read: the server closes the connection rather than
        # reading (and discarding) it to reuse the connection.
        response.headers["Connection"] = "close"
        return response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            return await self._refusal()(scope, receive, send)

        received, over, started = 0, False, False

        async def limited_receive() -> Message:
            nonlocal received, over
            if over:
                raise _TooLarge
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    over = True
                    raise _TooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if over and not started:
                return  # FastAPI turns the failed read into a 400; the client is owed the 413
            started |= message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not over or started:
                raise
        if over and not started:
            await self._refusal()(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server refuses a malformed one before the app sees it
    return None
