"""Limits refused before anything is decoded: the body's size and how long a client may
take to send it (slow clients included), for every /v1/ route."""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from landmark.serve.errors import error_response

MAX_BODY = 40 * 1024 * 1024  # about Google's request limit
BODY_TIMEOUT_S = 60.0


class BodyTooLarge(Exception):
    pass


class BodyTooSlow(Exception):
    pass


class BodyLimit:
    """ASGI middleware: a /v1/ request whose body is over `max_bytes` (by its
    Content-Length, or as it streams in) gets 413, and one not sent within `timeout_s`
    gets 408, both in Google's error shape; the body is never held beyond the limit."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY,
                 timeout_s: float = BODY_TIMEOUT_S) -> None:
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if int(length or 0) > self.max_bytes:
            await self._refuse(413, scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline, seen, started = loop.time() + self.timeout_s, 0, False

        async def limited() -> Message:
            nonlocal seen
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise BodyTooSlow from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge
            return message

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, sending)
        except (BodyTooLarge, BodyTooSlow) as e:
            if not started:
                await self._refuse(413 if isinstance(e, BodyTooLarge) else 408, scope,
                                   receive, send)

    async def _refuse(self, status: int, scope: Scope, receive: Receive, send: Send) -> None:
        message = (f"the request body is over {self.max_bytes // (1024 * 1024)} MB"
                   if status == 413 else f"the request body was not sent within "
                   f"{self.timeout_s:g} s")
        await error_response(status, message)(scope, receive, send)
