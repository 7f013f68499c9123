r"""Serve the tagger over plain HTTP, for photo backends.

    python -m landmark.serve --host 127.0.0.1 --port 8080 --models transfer scratch

Routes: POST /v1/images:annotate (Google Cloud Vision's LANDMARK_DETECTION: point Google's
client at this server), POST /v1/tag (one photo -> tag record), GET/POST /v1/places and
DELETE /v1/places/{name} (taught places), GET /healthz, /readyz and /metrics
(Prometheus); the OpenAPI docs are at /docs.

Settings not given here come from the environment, as on Ray Serve: LANDMARK_MODELS
(comma-separated), LANDMARK_PLACES, LANDMARK_API_KEYS, LANDMARK_API_KEYS_FILE,
LANDMARK_PUBLIC, LANDMARK_FETCH_REMOTE, LANDMARK_RUNTIME, LANDMARK_HUB_REPO.

API keys (LANDMARK_API_KEYS, comma-separated, or --api-keys FILE): with keys set, every
/v1/ route needs one (x-goog-api-key, ?key= or Authorization: Bearer), and each key has
its own place store under LANDMARK_PLACES. Without keys the server teaches into
LANDMARK_PLACES itself, unless it is --public (or on Spaces), where teaching needs a key.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import torch
import uvicorn

from landmark.predict import BatchPlan
from landmark.runtime import add_runtime_arg
from landmark.serve.fetch import Fetcher
from landmark.serve.limits import MAX_BODY, MAX_IN_FLIGHT
from landmark.serve.service import Settings, create_app
from landmark.serve.tenants import read_keys


def parser() -> argparse.ArgumentParser:
    plan = BatchPlan.for_device()
    p = argparse.ArgumentParser(prog="python -m landmark.serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: all)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--models", nargs="+", default=[], metavar="NAME_OR_PT",
                   help="model names (Hub, cache, bundled) or .pt files, the default first "
                   "(default: LANDMARK_MODELS, else every model found)")
    add_runtime_arg(p)
    p.add_argument("--places", type=Path, default=None,
                   help="the places root (default: LANDMARK_PLACES, else the user's data "
                   "folder); tenants' stores are under ROOT/tenants/")
    p.add_argument("--api-keys", type=Path, default=None, metavar="FILE",
                   help="API keys, one a line (# starts a comment); adds to LANDMARK_API_KEYS")
    p.add_argument("--public", action="store_true",
                   help="a public server: without keys, teaching is refused (on by itself "
                   "on Hugging Face Spaces)")
    p.add_argument("--fetch-remote", action="store_true",
                   help="fetch http(s) image.source.imageUri (public addresses only, 20 MB, "
                   "10 s); off by default")
    p.add_argument("--max-batch", type=int, default=plan.max_batch,
                   help=f"photos in one model call at most (default here: {plan.max_batch})")
    p.add_argument("--max-wait-ms", type=float, default=plan.max_wait_ms,
                   help="how long a batch waits to fill (default here: "
                   f"{plan.max_wait_ms:g} ms)")
    p.add_argument("--streams", type=int, default=plan.streams,
                   help=f"model calls at once (default here: {plan.streams}, one a core)")
    p.add_argument("--max-body-mb", type=float, default=MAX_BODY / 2**20,
                   help="largest request body (default %(default)g MB, as Google)")
    p.add_argument("--max-in-flight-mb", type=float, default=MAX_IN_FLIGHT / 2**20,
                   help="request bytes all requests may hold at once; past it, 503 with "
                   "Retry-After (default %(default)g MB)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if min(args.max_batch, args.streams) < 1 or args.max_wait_ms < 0:
        parser().error("--max-batch and --streams must be at least 1, --max-wait-ms >= 0")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # each stream a share of the cores: parallel calls never fight over threads
    torch.set_num_threads(max(1, torch.get_num_threads() // args.streams))
    settings = Settings.from_env(
        models=tuple(args.models) or None, runtime=args.runtime, places=args.places,
        api_keys=read_keys(os.environ.get("LANDMARK_API_KEYS"), args.api_keys)
        if args.api_keys else None, public=args.public or None,
        plan=BatchPlan(args.max_batch, args.max_wait_ms, args.streams),
        fetch=Fetcher(enabled=True) if args.fetch_remote else None,
        max_body=int(args.max_body_mb * 2**20),
        in_flight=int(args.max_in_flight_mb * 2**20))
    logging.getLogger("landmark.serve").info(
        "serving on http://%s:%d (%d API keys, places in %s, batches of %d, %d streams)",
        args.host, args.port, len(settings.api_keys), settings.places, args.max_batch,
        args.streams)
    uvicorn.run(create_app(settings), host=args.host, port=args.port, access_log=False,
                timeout_keep_alive=5, timeout_graceful_shutdown=5, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
