"""API keys and the place store of each tenant.

Keys come from LANDMARK_API_KEYS (comma-separated) or a file (one a line, `#` starts a
comment), and are read the way Google's clients send them: the `x-goog-api-key` header or
`?key=`, and `Authorization: Bearer` too. With keys set every /v1/ route needs one, and
each key has its own place store under the places root, named by a hash of the key (never
the key itself), so one tenant never sees, matches or removes another's places. With no
keys the server is one tenant on its own machine; a public one (Spaces, `--public`) then
tags but does not teach. Keys are compared in constant time and never logged.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request

from landmark.places import PlaceStore
from landmark.serve.errors import ApiError


def read_keys(env: str | None, file: Path | None) -> tuple[str, ...]:
    """The API keys named by the environment's comma-separated list and a keys file."""
    keys = [k.strip() for k in (env or "").split(",")]
    if file is not None:
        try:
            lines = file.read_text().splitlines()
        except OSError as e:
            raise SystemExit(f"error: cannot read the API keys file {file}: {e.strerror}") \
                from None
        keys += [line.split("#", 1)[0].strip() for line in lines]
    return tuple(dict.fromkeys(k for k in keys if k))


def sent_key(request: Request) -> str | None:
    """The key a request carries, in any of the three places clients put it."""
    auth = request.headers.get("authorization", "")
    bearer = auth[7:].strip() if auth[:7].lower() == "bearer " else None
    return request.headers.get("x-goog-api-key") or request.query_params.get("key") or bearer


@dataclass(frozen=True)
class Tenant:
    """Who is calling: a short id (a hash of the key, or "local"), their place store, and
    whether they may teach and remove places."""

    id: str
    store: PlaceStore
    may_teach: bool


class Tenants:
    """Maps a request to its tenant, or refuses it (401 without a key, 403 with an
    unknown one)."""

    def __init__(self, keys: tuple[str, ...], places: Path, public: bool) -> None:
        self.keys = [(k.encode(), hashlib.sha256(k.encode()).hexdigest()[:16]) for k in keys]
        self.places, self.public = places, public
        self.local = Tenant("local", PlaceStore(places), not public)

    def __call__(self, request: Request) -> Tenant:
        if not self.keys:
            return self.local
        sent = sent_key(request)
        if not sent:
            raise ApiError(401, "this server needs an API key: send it as the "
                           "x-goog-api-key header, ?key= or Authorization: Bearer")
        found = None
        for key, tid in self.keys:  # every key compared, in constant time each
            if hmac.compare_digest(key, sent.encode()):
                found = tid
        if found is None:
            raise ApiError(403, "the API key is not valid for this server")
        return Tenant(found, PlaceStore(self.places / "tenants" / found), True)
