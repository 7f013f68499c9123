"""Limits refused before anything is decoded, for every /v1/ route: the body's size, how
long a client may take to send it (slow clients included), and the bytes that all
requests in flight may hold together, so memory stays bounded however many clients send
large bodies at once (the rest get 503 and retry, landmark.serve.client)."""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from landmark.serve.errors import error_response

MAX_BODY = 40 * 1024 * 1024  # about Google's request limit
MAX_IN_FLIGHT = 256 * 1024 * 1024  # six bodies of Google's largest at once
BODY_TIMEOUT_S = 60.0


class BodyTooLarge(Exception):
    pass


class BodyTooSlow(Exception):
    pass


class Busy(Exception):
    pass


class BodyLimit:
    """ASGI middleware: a /v1/ request whose body is over `max_bytes` (by its
    Content-Length, or as it streams in) gets 413, one not sent within `timeout_s` gets
    408, and one whose body would take the bytes held by all requests in flight over
    `in_flight` gets 503 with Retry-After, all in Google's error shape. A request holds
    its share until it is answered."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY,
                 timeout_s: float = BODY_TIMEOUT_S, in_flight: int = MAX_IN_FLIGHT) -> None:
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s
        self.in_flight, self.held = in_flight, 0  # one event loop: no lock needed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        length = int(dict(scope["headers"]).get(b"content-length", b"0") or 0)
        if length > self.max_bytes:
            await self._refuse(413, scope, receive, send)
            return
        if self.held + length > self.in_flight:
            await self._refuse(503, scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline, seen, mine, started = loop.time() + self.timeout_s, 0, length, False
        self.held += mine

        async def limited() -> Message:
            nonlocal seen, mine
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise BodyTooSlow from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge
                if seen > mine:  # streamed without (or past) its Content-Length
                    if self.held + seen - mine > self.in_flight:
                        raise Busy
                    self.held, mine = self.held + seen - mine, seen
            return message

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, sending)
        except (BodyTooLarge, BodyTooSlow, Busy) as e:
            if not started:
                status = {BodyTooLarge: 413, BodyTooSlow: 408, Busy: 503}[type(e)]
                await self._refuse(status, scope, receive, send)
        finally:
            self.held -= mine

    async def _refuse(self, status: int, scope: Scope, receive: Receive, send: Send) -> None:
        message = {
            413: f"the request body is over {self.max_bytes // (1024 * 1024)} MB",
            408: f"the request body was not sent within {self.timeout_s:g} s",
            503: "the server holds as many request bytes as it may; retry shortly"}[status]
        response = error_response(status, message)
        if status == 503:
            response.headers["retry-after"] = "1"
        await response(scope, receive, send)
