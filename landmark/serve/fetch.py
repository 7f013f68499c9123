"""Fetching `image.source.imageUri` for images:annotate, only when the operator turns it
on (`--fetch-remote`): http(s) only, every address the host resolves to must be public
(no loopback, private, link-local or metadata address, after each redirect too), at most
MAX_REDIRECTS hops, a size limit and a timeout. `file:` and `gs://` are never read.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx

from landmark.serve.errors import PhotoError

MAX_REDIRECTS = 3


@dataclass(frozen=True)
class Fetcher:
    """How remote images are fetched; `enabled` False refuses every URI with a reason."""

    enabled: bool = False
    max_bytes: int = 20 * 1024 * 1024
    timeout_s: float = 10.0

    async def get(self, uri: str | None, gcs: str | None) -> bytes:
        """The image bytes behind `imageUri` (or `gcsImageUri`), or PhotoError."""
        if gcs or (uri or "").startswith("gs://"):
            raise PhotoError("INVALID_ARGUMENT", "gs:// images are not fetched by this "
                             "server; send the photo as image.content (base64)")
        if not self.enabled:
            raise PhotoError("INVALID_ARGUMENT", "this server does not fetch image URIs "
                             "(the operator can turn it on with --fetch-remote); send the "
                             "photo as image.content (base64)")
        try:
            async with asyncio.timeout(self.timeout_s), httpx.AsyncClient(
                    follow_redirects=False, timeout=self.timeout_s) as client:
                return await self._follow(client, uri or "")
        except TimeoutError:
            raise PhotoError("DEADLINE_EXCEEDED", f"fetching the image took longer than "
                             f"{self.timeout_s:g} s") from None
        except httpx.HTTPError as e:
            raise PhotoError("UNAVAILABLE", f"cannot fetch the image: {e}") from None

    async def _follow(self, client: httpx.AsyncClient, url: str) -> bytes:
        for _ in range(MAX_REDIRECTS + 1):
            await public_host(url)
            async with client.stream("GET", url) as r:
                if r.is_redirect:
                    url = urljoin(url, r.headers.get("location", ""))
                    continue
                if r.status_code != 200:
                    raise PhotoError("INVALID_ARGUMENT", f"the image URI answered HTTP "
                                     f"{r.status_code}")
                return await self._read(r)
        raise PhotoError("INVALID_ARGUMENT", f"more than {MAX_REDIRECTS} redirects")

    async def _read(self, r: httpx.Response) -> bytes:
        too_big = PhotoError("INVALID_ARGUMENT", f"the image is larger than "
                             f"{self.max_bytes // (1024 * 1024)} MB")
        if int(r.headers.get("content-length") or 0) > self.max_bytes:
            raise too_big
        data = bytearray()
        async for chunk in r.aiter_bytes():
            data += chunk
            if len(data) > self.max_bytes:
                raise too_big
        return bytes(data)


async def public_host(url: str) -> None:
    """Raise PhotoError unless `url` is http(s) on a host whose every address is public."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PhotoError("INVALID_ARGUMENT", f"only http(s) image URIs are fetched, not "
                         f"{parts.scheme or 'scheme-less'} ones")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(parts.hostname, port,
                                                             type=socket.SOCK_STREAM)
    except OSError:
        raise PhotoError("INVALID_ARGUMENT", f"cannot resolve {parts.hostname}") from None
    for info in infos:
        if not ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_global:
            raise PhotoError("PERMISSION_DENIED", f"{parts.hostname} is a private or local "
                             "address; such image URIs are never fetched")
