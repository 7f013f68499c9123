"""The tagging service: FastAPI routes over the model files, for photo backends.

    POST /v1/images:annotate   Google Cloud Vision's LANDMARK_DETECTION, request and answer
    POST /v1/tag               one photo (multipart `file` or the raw body) -> tag record
    GET/POST /v1/places, DELETE /v1/places/{name}   the caller's taught places
    GET /healthz, /readyz, /metrics, /docs

`create_app` builds the app; `python -m landmark.serve` runs it and `python app.py`
mounts it beside the Gradio UI. Photos are decoded in worker threads, never on the event
loop, and reach the models through `infer`: the plain server's Batcher, or a Ray Serve
replica's `@serve.batch` method (landmark.serve.batching, landmark.serve.replicas).
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from landmark.geotag import read_gps
from landmark.imageio import ImageError
from landmark.places import PlaceError
from landmark.places.store import MAX_PHOTOS, default_store
from landmark.places.teach import teach
from landmark.predict import BatchPlan, Predictor, parse_k, unusable
from landmark.resolve import available, resolve
from landmark.serve.batching import Batcher, Item, Row
from landmark.serve.errors import ApiError, PhotoError
from landmark.serve.fetch import Fetcher
from landmark.serve.limits import BODY_TIMEOUT_S, MAX_BODY, MAX_IN_FLIGHT, BodyLimit
from landmark.serve.metrics import Metrics
from landmark.serve.tenants import Tenant, Tenants, read_keys
from landmark.serve.vision import (
    MAX_IMAGES,
    BatchAnnotateImagesRequest,
    annotations,
    content_bytes,
)

log = logging.getLogger("landmark.serve")
REPLICA = f"{socket.gethostname()[:24]}-{os.getpid()}"
OBSERVED = ("/v1/", "/healthz", "/readyz", "/metrics")


@dataclass(frozen=True)
class Settings:
    """What the service serves and how: models (names or .pt files; none = every one
    found), the places root, API keys, whether it is public, batching, remote fetching
    and body limits (each body, and all bodies in flight together)."""

    models: tuple[str, ...] = ()
    runtime: str | None = None  # landmark.runtime: None = LANDMARK_RUNTIME, else auto
    places: Path = field(default_factory=default_store)
    api_keys: tuple[str, ...] = ()
    public: bool = False
    plan: BatchPlan = field(default_factory=BatchPlan.for_device)
    fetch: Fetcher = field(default_factory=Fetcher)
    max_body: int = MAX_BODY
    body_timeout_s: float = BODY_TIMEOUT_S
    in_flight: int = MAX_IN_FLIGHT

    @staticmethod
    def from_env(**given: object) -> Settings:
        """Settings from the environment both servers read, `given` ones first:
        LANDMARK_MODELS (comma-separated), LANDMARK_PLACES, LANDMARK_API_KEYS (and a keys
        file, LANDMARK_API_KEYS_FILE), LANDMARK_PUBLIC or SPACE_ID, LANDMARK_FETCH_REMOTE;
        LANDMARK_RUNTIME and the Hub's are read where models load."""
        env = os.environ
        keys_file = env.get("LANDMARK_API_KEYS_FILE")
        found = {
            "models": tuple(m for m in env.get("LANDMARK_MODELS", "").split(",") if m),
            "places": default_store(),
            "api_keys": read_keys(env.get("LANDMARK_API_KEYS"),
                                  Path(keys_file) if keys_file else None),
            "public": _flag("LANDMARK_PUBLIC") or bool(env.get("SPACE_ID")),
            "fetch": Fetcher(enabled=_flag("LANDMARK_FETCH_REMOTE")),
        }
        return Settings(**{**found, **{k: v for k, v in given.items() if v is not None}})


def _flag(name: str) -> bool:
    return os.environ.get(name, "").lower() not in ("", "0", "false", "no")


def load_models(models: tuple[str, ...], runtime: str | None = None) -> dict[str, Predictor]:
    """Predictors by name, the default first; logs once which loaded and from where."""
    paths = {Path(m).stem if m.endswith(".pt") else m: resolve(m) for m in models} \
        if models else available()
    if not paths:
        raise SystemExit("error: no model files found (models/*.pt or LANDMARK_HUB_REPO)")
    log.info("models loaded: %s", ", ".join(f"{n} ({p})" for n, p in paths.items()))
    return {name: Predictor(path, runtime) for name, path in paths.items()}


Infer = Callable[[Item], Awaitable[Row]]


@dataclass
class Photo:
    """One decoded photo's answer: its tag record and its full upright size."""

    record: dict
    size: tuple[int, int]


class Service:
    """The state behind the routes: predictors, how photos reach them (`infer`),
    tenants, metrics."""

    def __init__(self, settings: Settings, predictors: dict[str, Predictor] | None,
                 infer: Infer | None = None, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.predictors = predictors or {}
        self.infer = infer
        self.batcher: Batcher | None = None
        self.tenants = Tenants(settings.api_keys, settings.places, settings.public)
        self.metrics = metrics or Metrics()
        self.ready = False

    async def start(self) -> None:
        """Load the models unless given (in a thread: /healthz answers meanwhile, /readyz
        says 503), and start the Batcher unless `infer` was given."""
        if not self.predictors:
            try:
                self.predictors = await run_in_threadpool(load_models, self.settings.models,
                                                          self.settings.runtime)
            except (SystemExit, FileNotFoundError, RuntimeError, ValueError) as e:
                log.error("%s", e)
                os._exit(1)  # a server with no model must not look alive
        if self.infer is None:
            self.batcher = Batcher(self.predictors, self.settings.plan, self.metrics)
            self.batcher.start()
            self.infer = self.batcher
        self.ready = True

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.close()

    def model(self, name: str | None) -> str:
        """A model's name as asked for; the default (first) when none is named."""
        if not self.ready:
            raise ApiError(503, "the models are still loading; retry shortly")
        if not name:
            return next(iter(self.predictors))
        if name not in self.predictors:
            raise ApiError(400, f"unknown model {name!r}; choose from {sorted(self.predictors)}")
        return name

    async def tag(self, data: bytes, model: str, k: int, tenant: Tenant) -> Photo:
        """Decode (in a worker thread), run through the model's batcher, make the record.
        Raises ImageError for bytes that are not a usable photo."""
        predictor = self.predictors[model]
        img, square = await run_in_threadpool(_decode, predictor, data)
        gps, refused = read_gps(img), unusable(img.size)
        size = img.info.get("source_size", img.size)
        if refused:
            return Photo(predictor.record(None, k, gps, refused), size)
        probs, emb = await self.infer((model, square))
        record = await run_in_threadpool(predictor.record, probs, k, gps, None, emb,
                                         tenant.store)
        self.metrics.photos.labels("known" if record["known"] else "unknown").inc()
        return Photo(record, size)

    async def annotate_one(self, request: object, model: str | None, tenant: Tenant) -> dict:
        """One AnnotateImageResponse: landmarkAnnotations, `{}`, or its own error."""
        try:
            feature = request.landmark_feature()
            source = request.image.source
            if request.image.content is None and source is not None:
                data = await self.settings.fetch.get(source.image_uri, source.gcs_image_uri)
            else:
                data = content_bytes(request.image)
            photo = await self.tag(data, self.model(feature.model or model), request.results(),
                                   tenant)
        except PhotoError as e:
            self.metrics.photos.labels("error").inc()
            return {"error": e.body()}
        except (ImageError, PlaceError) as e:
            self.metrics.photos.labels("error").inc()
            return {"error": PhotoError("INVALID_ARGUMENT" if isinstance(e, ImageError)
                                        else "INTERNAL", str(e)).body()}
        places = {p.name: p for p in tenant.store.places()} if any(
            p["source"] == "taught" for p in photo.record["predictions"]) else {}
        found = annotations(photo.record, photo.size, places)
        return {"landmarkAnnotations": found} if found else {}


def _decode(predictor: Predictor, data: bytes) -> tuple[Image.Image, object]:
    """The photo decoded for the model, and its square when it is usable."""
    buf = io.BytesIO(data)
    buf.name = "photo"  # ImageError messages start with it
    img = predictor.load(buf)
    return img, predictor.prepare(img) if unusable(img.size) is None else None


async def _json(request: Request) -> object:
    try:
        return await request.json()
    except ValueError:
        raise ApiError(400, "the request body is not valid JSON") from None


async def _photo_bytes(request: Request) -> bytes:
    """One photo: the multipart field `file`, or the raw body."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=4)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ApiError(400, "send the photo as the multipart field `file`")
        return await upload.read()
    data = await request.body()
    if not data:
        raise ApiError(400, "no photo: send it as the body or as the multipart field `file`")
    return data


def _coordinate(form: object, key: str) -> float | None:
    value = form.get(key)
    if value in (None, ""):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ApiError(400, f"{key} must be a number, got {value!r}") from None


def _place_json(place: object) -> dict:
    d = place.to_dict()
    return {"name": d["name"], "id": d["uid"], "photos": d["photos"],
            "location": d["location"], "added": d["added"]}


def create_app(settings: Settings | None = None,
               predictors: dict[str, Predictor] | None = None,
               infer: Infer | None = None, metrics: Metrics | None = None) -> FastAPI:
    """The service as a FastAPI app: models loaded at start-up unless given, batched by
    its own Batcher unless `infer` is given (Ray Serve's replicas give theirs)."""
    service = Service(settings or Settings(), predictors, infer, metrics)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(service.start())  # serve /healthz meanwhile
        yield
        loading.cancel()
        await service.stop()

    app = FastAPI(title="Landmark Tagger", lifespan=lifespan, version="1",
                  description="Landmarks, locations and hashtags for photos without GPS. "
                  "`images:annotate` speaks Google Cloud Vision's LANDMARK_DETECTION.")
    app.state.service = service
    app.add_middleware(BodyLimit, max_bytes=service.settings.max_body,
                       timeout_s=service.settings.body_timeout_s,
                       in_flight=service.settings.in_flight)
    app.add_middleware(Observe, metrics=service.metrics)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, e: ApiError) -> JSONResponse:
        return e.response()

    @app.get("/healthz")
    async def healthz() -> dict:
        """Alive."""
        return {"status": "ok", "replica": REPLICA}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """Ready once the models are loaded (503 until then)."""
        if not service.ready:
            return JSONResponse({"status": "loading"}, status_code=503)
        return JSONResponse({"status": "ready", "models": list(service.predictors)})

    @app.get("/metrics")
    async def metrics() -> Response:
        """Prometheus metrics."""
        return Response(generate_latest(service.metrics.registry),
                        media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/images:annotate")
    async def annotate(request: Request, model: str | None = None) -> dict:
        """Google Cloud Vision's `images:annotate`, for LANDMARK_DETECTION."""
        tenant = service.tenants(request)
        body = await _json(request)
        if isinstance(body, dict) and len(body.get("requests") or []) > MAX_IMAGES:
            raise ApiError(400, f"at most {MAX_IMAGES} images a call; got "
                           f"{len(body['requests'])}")
        try:
            batch = BatchAnnotateImagesRequest.model_validate(body)
        except ValidationError as e:
            where = ".".join(str(p) for p in e.errors()[0]["loc"])
            raise ApiError(400, f"invalid request at {where or 'the body'}: "
                           f"{e.errors()[0]['msg']}") from None
        service.model(model)  # 503 while loading, 400 for a model that does not exist
        return {"responses": await asyncio.gather(
            *(service.annotate_one(r, model, tenant) for r in batch.requests))}

    @app.post("/v1/tag")
    async def tag(request: Request, model: str | None = None, k: str = "3") -> dict:
        """One photo (multipart `file` or the raw body) -> the app's tag record."""
        tenant = service.tenants(request)
        name = service.model(model)
        try:
            top = parse_k(k)
        except ValueError as e:
            raise ApiError(400, str(e)) from None
        data = await _photo_bytes(request)
        try:
            return (await service.tag(data, name, top, tenant)).record
        except ImageError as e:
            raise ApiError(400, str(e)) from None

    @app.get("/v1/places")
    async def list_places(request: Request) -> dict:
        """The caller's taught places."""
        tenant = service.tenants(request)
        return {"places": [_place_json(p) for p in tenant.store.places()]}

    @app.post("/v1/places", status_code=201)
    async def add_place(request: Request) -> dict:
        """Teach a place: multipart `name`, optional `lat` and `lon`, 3-20 `file`s."""
        tenant = _teacher(service.tenants(request))
        service.model(None)
        form = await request.form(max_files=MAX_PHOTOS + 1, max_fields=8)
        files = [f for f in form.getlist("file") if isinstance(f, UploadFile)]
        photos = [io.BytesIO(await f.read()) for f in files]
        try:
            place = await run_in_threadpool(
                teach, tenant.store, list(service.predictors.values()),
                str(form.get("name") or ""), photos, _coordinate(form, "lat"),
                _coordinate(form, "lon"), [f.filename or f"file {i + 1}"
                                           for i, f in enumerate(files)])
        except PlaceError as e:
            raise ApiError(409 if "exists already" in str(e) else 400, str(e)) from None
        return _place_json(place)

    @app.delete("/v1/places/{name}")
    async def remove_place(request: Request, name: str) -> dict:
        """Forget one of the caller's places."""
        tenant = _teacher(service.tenants(request))
        try:
            return _place_json(await run_in_threadpool(tenant.store.remove, name))
        except PlaceError as e:
            raise ApiError(404 if str(e).startswith("no place") else 400, str(e)) from None

    return app


def _teacher(tenant: Tenant) -> Tenant:
    if not tenant.may_teach:
        raise ApiError(403, "teaching places on a public server needs an API key "
                       "(LANDMARK_API_KEYS)")
    return tenant


class Observe:
    """ASGI middleware: X-Landmark-Replica on every answer; for the service's own routes,
    Prometheus counts and latency by route template and one log line (path only: a
    `?key=` never reaches the log)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", []).append(
                    (b"x-landmark-replica", REPLICA.encode()))
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            if scope["path"].startswith(OBSERVED):
                route = getattr(scope.get("route"), "path", "unmatched")
                took = time.perf_counter() - start
                self.metrics.requests.labels(route, str(status)).inc()
                self.metrics.latency.labels(route).observe(took)
                log.info("%s %s %d %.3fs", scope["method"], scope["path"], status, took)
