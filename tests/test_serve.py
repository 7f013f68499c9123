"""The HTTP service on 127.0.0.1, for real: `python -m landmark.serve` in a process of its
own (Google's own client, API keys, logs) and the same app under uvicorn in a thread
(limits, concurrency), on real photos and the shipped model files."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn
from google.api_core import exceptions as google_errors
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import vision
from PIL import Image

from bench.app_load import bomb_png
from landmark.facts import lookup
from landmark.predict import BatchPlan, Predictor
from landmark.resolve import MODELS_DIR
from landmark.serve import Settings, create_app
from landmark.serve.fetch import Fetcher
from tests.conftest import REPO, SHARED, real_photos

EXAMPLES = REPO / "examples"
PLACE = SHARED.parent / "new_places" / "Aurora_Bridge"
KEYS = ("alpha-key-0001", "beta-key-0002")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve_process(tmp: Path, *args: str, **env: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """`python -m landmark.serve` on a free port; yields its URL once /readyz says ready."""
    port = _free_port()
    log = open(tmp / f"serve-{port}.log", "w+")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "landmark.serve", "--port", str(port), "--models", "transfer",
         "scratch", *args], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "LANDMARK_HUB_REPO": "off", "LANDMARK_PLACES": str(tmp / "places"),
             **env})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while not _ready(url):
            if proc.poll() is not None or time.time() > deadline:
                log.seek(0)
                pytest.fail(f"the service did not start: {log.read()[-3000:]}")
            time.sleep(0.3)
        yield url, proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def serve_thread(settings: Settings, predictors: dict[str, Predictor]) -> Iterator[str]:
    """The same app under uvicorn in a thread of this process, on a free port."""
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings, predictors), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while not _ready(url):
        assert time.time() < deadline, "the in-process service did not start"
        time.sleep(0.1)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def predictors() -> dict[str, Predictor]:
    return {name: Predictor(MODELS_DIR / f"{name}.pt") for name in ("transfer", "scratch")}


@pytest.fixture(scope="module")
def open_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve_process(tmp_path_factory.mktemp("open")) as (url, _):
        yield url


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A server with API keys: two in LANDMARK_API_KEYS, a third in a keys file."""
    tmp = tmp_path_factory.mktemp("keyed")
    keys = tmp / "keys.txt"
    keys.write_text("# tenants\ngamma-key-0003  # from the file\n\n")
    with serve_process(tmp, "--api-keys", str(keys), LANDMARK_API_KEYS=",".join(KEYS)) as (
            url, _):
        yield url, tmp


def google_client(url: str, api_key: str | None = None) -> vision.ImageAnnotatorClient:
    """Google's client pointed here: anonymous, or with an API key (which Google's client
    takes instead of credentials)."""
    return vision.ImageAnnotatorClient(
        transport="rest", credentials=None if api_key else AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=url, api_key=api_key))


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def _annotate(url: str, *requests: dict, **kw: object) -> httpx.Response:
    return httpx.post(f"{url}/v1/images:annotate", json={"requests": list(requests)},
                      timeout=60, **kw)


def _landmark(path: Path, **feature: object) -> dict:
    return {"image": {"content": _b64(path)},
            "features": [{"type": "LANDMARK_DETECTION", **feature}]}


# -- Google's own client ------------------------------------------------------------------
def test_googles_client_reads_landmarks_from_the_service(open_url: str) -> None:
    photos = [real_photos(c, "test", 1)[0] for c in ("03.Eiffel_Tower", "05.Golden_Gate_Bridge",
                                                      "17.Sydney_Opera_House")]
    client = google_client(open_url)
    answer = client.batch_annotate_images(requests=[
        {"image": vision.Image(content=p.read_bytes()),
         "features": [{"type_": vision.Feature.Type.LANDMARK_DETECTION, "max_results": 1}]}
        for p in [*photos, EXAMPLES / "unknown_place.jpg"]])
    assert len(answer.responses) == 4
    for photo, response in zip(photos, answer.responses[:3], strict=True):
        (found,) = response.landmark_annotations
        fact = lookup(photo.parent.name)
        assert found.description == fact.landmark and found.mid == fact.wikidata
        assert 0.5 < found.score <= 1
        assert found.locations[0].lat_lng.latitude == pytest.approx(fact.lat)
        w, h = Image.open(photo).size
        assert [(v.x, v.y) for v in found.bounding_poly.vertices] == [(0, 0), (w, 0), (w, h),
                                                                      (0, h)]
    assert not answer.responses[3].landmark_annotations  # "no known landmark": {}
    assert not answer.responses[3].error.message
    one = client.landmark_detection(image=vision.Image(content=photos[0].read_bytes()))
    assert one.landmark_annotations[0].description == "Eiffel Tower"


def test_googles_client_with_keys(keyed: tuple[str, Path]) -> None:
    url, _ = keyed
    photo = vision.Image(content=(EXAMPLES / "taj_mahal.jpg").read_bytes())
    for key in (KEYS[1], "gamma-key-0003"):
        found = google_client(url, key).landmark_detection(image=photo).landmark_annotations
        assert found[0].description == "Taj Mahal"
    with pytest.raises(google_errors.Forbidden, match="not valid"):
        google_client(url, "wrong-key").landmark_detection(image=photo)
    # without a key, Google's client meets the 401 by refreshing its anonymous
    # credentials, which cannot be; the 401 itself is checked with httpx below


# -- images:annotate as Google shapes it -----------------------------------------------
def test_annotate_answers_each_photo_or_its_own_error(open_url: str, tmp_path: Path) -> None:
    bomb = bomb_png(tmp_path / "bomb.png")
    eiffel = EXAMPLES / "eiffel_tower.jpg"
    r = _annotate(open_url, _landmark(eiffel, maxResults=2),
                  {"image": {"content": _b64(eiffel)}, "features": [{"type": 2}]},
                  {"image": {"content": "not base64!"}, "features": [{"type": 2}]},
                  {"image": {"content": _b64(bomb)}, "features": [{"type": 2}]},
                  {"image": {"content": base64.b64encode(b"GIF89a broken").decode()},
                   "features": [{"type": 2}]},
                  {"image": {"content": _b64(eiffel)}, "features": [{"type": "LABEL_DETECTION"}]},
                  {"image": {"source": {"imageUri": "https://example.com/a.jpg"}},
                   "features": [{"type": 2}]},
                  {"image": {"source": {"gcsImageUri": "gs://bucket/a.jpg"}},
                   "features": [{"type": 2}]})
    assert r.status_code == 200
    two, default, b64, bombed, broken, label, uri, gcs = r.json()["responses"]
    assert two["landmarkAnnotations"][0]["description"] == "Eiffel Tower"
    assert len(two["landmarkAnnotations"]) == 2  # maxResults
    assert len(default["landmarkAnnotations"]) == 10  # Google's default maxResults
    assert b64["error"] == {"code": 3, "message": "image.content is not valid base64"}
    assert bombed["error"]["code"] == 3 and "image too large" in bombed["error"]["message"]
    assert broken["error"]["code"] == 3 and "photo:" in broken["error"]["message"]
    assert "LANDMARK_DETECTION only" in label["error"]["message"]
    assert "--fetch-remote" in uri["error"]["message"]
    assert "gs://" in gcs["error"]["message"]


@pytest.mark.parametrize(("body", "says"), [
    (b"{not json", "not valid JSON"),
    (b"{}", "requests"),
    (b'{"requests": [{"features": [{"type": 2}]}]}', "requests.0.image"),
    (json.dumps({"requests": [{"image": {"content": ""}}] * 17}).encode(), "at most 16"),
])
def test_a_malformed_call_is_400_in_googles_shape(open_url: str, body: bytes, says: str) -> None:
    r = httpx.post(f"{open_url}/v1/images:annotate", content=body,
                   headers={"content-type": "application/json"})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == 400 and error["status"] == "INVALID_ARGUMENT"
    assert says in error["message"]


# -- /v1/tag: the same record as landmark.tag ---------------------------------------------
def test_tag_route_gives_landmark_tags_records(open_url: str, tmp_path: Path) -> None:
    unknown = SHARED / "unknown"
    photos = [*real_photos("11.Niagara_Falls", "test", 2), unknown / "00d0a55a8aee1407.jpg",
              EXAMPLES / "leaning_tower_of_pisa.jpg", unknown / "0156e1210d644b06.jpg"]
    kinds = set()
    for model in ("transfer", "scratch"):
        out = tmp_path / f"{model}.jsonl"
        res = subprocess.run([sys.executable, "-m", "landmark.tag", *map(str, photos),
                              "--model", model, "-k", "4", "--out", str(out)], cwd=REPO,
                             capture_output=True, text=True, timeout=300,
                             env={**os.environ, "LANDMARK_HUB_REPO": "off"})
        assert res.returncode == 0, res.stderr
        batch = {Path(r.pop("file")).name: r for r in map(json.loads, out.read_text().splitlines())}
        for i, photo in enumerate(photos):
            kw = {"files": {"file": (photo.name, photo.read_bytes())}} if i % 2 else \
                {"content": photo.read_bytes()}
            r = httpx.post(f"{open_url}/v1/tag", params={"model": model, "k": 4}, timeout=60,
                           **kw)
            assert r.status_code == 200, r.text
            assert r.json() == batch[photo.name], (model, photo)
        kinds |= {r["known"] for r in batch.values()}
    assert kinds == {True, False}  # photos named and photos rejected, both compared


@pytest.mark.parametrize(("params", "body", "says"), [
    ({"model": "nope"}, b"x", "unknown model 'nope'"),
    ({"k": "lots"}, b"x", "k must be a number"),
    ({}, b"", "no photo"),
    ({}, b"\x89PNG not really", "photo: "),
])
def test_tag_route_refuses_bad_input_in_one_line(open_url: str, params: dict, body: bytes,
                                                  says: str) -> None:
    r = httpx.post(f"{open_url}/v1/tag", params=params, content=body)
    assert r.status_code == 400 and says in r.json()["error"]["message"]


# -- places and tenants ------------------------------------------------------------------
def test_each_key_teaches_sees_and_removes_only_its_own_places(keyed: tuple[str, Path]) -> None:
    url, tmp = keyed
    photos = sorted(PLACE.iterdir())[:4]
    alpha, beta = ({"x-goog-api-key": k} for k in KEYS)
    files = [("file", (p.name, p.read_bytes())) for p in photos]
    r = httpx.post(f"{url}/v1/places", headers=alpha, files=files, timeout=120,
                   data={"name": "Aurora Bridge", "lat": "47.6465", "lon": "-122.3474"})
    assert r.status_code == 201, r.text
    taught = r.json()
    assert taught["name"] == "Aurora Bridge" and taught["location"]["city"]
    again = httpx.post(f"{url}/v1/places", headers=alpha, files=files, timeout=120,
                       data={"name": "aurora bridge"})
    assert again.status_code == 409 and again.json()["error"]["status"] == "ALREADY_EXISTS"
    few = httpx.post(f"{url}/v1/places", headers=beta, files=files[:2], data={"name": "X"})
    assert few.status_code == 400 and "3 to 20 photos" in few.json()["error"]["message"]

    query = photos[0].read_bytes()  # a taught photo: its own nearest neighbour
    seen = httpx.post(f"{url}/v1/tag", headers=alpha, content=query, timeout=60).json()
    assert seen["known"] and seen["predictions"][0] == {
        "class": None, "landmark": "Aurora Bridge", "confidence": seen["predictions"][0][
            "confidence"], "source": "taught"}
    found = _annotate(url, _landmark(photos[0]), params={"key": KEYS[0]}).json()
    top = found["responses"][0]["landmarkAnnotations"][0]
    assert top["mid"] == f"place:{taught['id']}" and top["description"] == "Aurora Bridge"
    assert top["locations"][0]["latLng"] == {"latitude": 47.6465, "longitude": -122.3474}

    assert httpx.get(f"{url}/v1/places", headers=beta).json() == {"places": []}
    other = httpx.post(f"{url}/v1/tag", headers=beta, content=query, timeout=60).json()
    assert all(p["source"] == "model" for p in other["predictions"])
    gone = httpx.delete(f"{url}/v1/places/Aurora Bridge", headers=beta)
    assert gone.status_code == 404
    listed = httpx.get(f"{url}/v1/places", headers={"authorization": f"Bearer {KEYS[0]}"})
    assert [p["name"] for p in listed.json()["places"]] == ["Aurora Bridge"]
    assert httpx.delete(f"{url}/v1/places/Aurora Bridge", headers=alpha).status_code == 200
    assert httpx.get(f"{url}/v1/places", headers=alpha).json() == {"places": []}
    assert not any(KEYS[0] in p.name for p in (tmp / "places").rglob("*"))  # hashed names


def test_keys_are_checked_on_every_route_and_never_logged(keyed: tuple[str, Path]) -> None:
    url, tmp = keyed
    for method, route in (("GET", "/v1/places"), ("POST", "/v1/tag"),
                          ("POST", "/v1/images:annotate"), ("DELETE", "/v1/places/x")):
        r = httpx.request(method, f"{url}{route}")
        assert r.status_code == 401 and r.json()["error"]["status"] == "UNAUTHENTICATED"
        r = httpx.request(method, f"{url}{route}", params={"key": "nope-nope"})
        assert r.status_code == 403 and r.json()["error"]["status"] == "PERMISSION_DENIED"
    assert httpx.get(f"{url}/v1/places", params={"key": KEYS[1]}).status_code == 200
    assert httpx.get(f"{url}/healthz").status_code == 200  # probes need no key
    log = "".join(p.read_text() for p in tmp.glob("serve-*.log"))
    assert "GET /v1/places 200" in log
    assert not any(k in log for k in (*KEYS, "gamma-key-0003", "nope-nope"))


def test_a_public_server_without_keys_tags_but_does_not_teach(
        tmp_path: Path, predictors: dict[str, Predictor]) -> None:
    with serve_thread(Settings(places=tmp_path, public=True), predictors) as url:
        r = httpx.post(f"{url}/v1/places", data={"name": "X"})
        assert r.status_code == 403 and "needs an API key" in r.json()["error"]["message"]
        assert httpx.delete(f"{url}/v1/places/X").status_code == 403
        tagged = httpx.post(f"{url}/v1/tag", content=(EXAMPLES / "taj_mahal.jpg").read_bytes())
        assert tagged.json()["tags"][0] == "Taj Mahal"


# -- limits, concurrency, operations -------------------------------------------------------
def test_oversized_and_slow_bodies_are_refused(tmp_path: Path,
                                               predictors: dict[str, Predictor]) -> None:
    settings = Settings(places=tmp_path, max_body=1 << 20, body_timeout_s=1.0)
    with serve_thread(settings, predictors) as url:
        r = httpx.post(f"{url}/v1/tag", content=b"\0" * (2 << 20))
        assert r.status_code == 413 and "over 1 MB" in r.json()["error"]["message"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
            for _ in range(40):
                yield b"\0" * (64 << 10)
        r = httpx.post(f"{url}/v1/tag", content=chunks())
        assert r.status_code == 413
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"POST /v1/tag HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\nabc")
            started = time.time()
            answer = s.recv(4096).decode()
        assert answer.startswith("HTTP/1.1 408") and "DEADLINE_EXCEEDED" in answer
        assert time.time() - started < 10
        ok = httpx.post(f"{url}/v1/tag", content=(EXAMPLES / "eiffel_tower.jpg").read_bytes())
        assert ok.status_code == 200  # the server is still fine


def test_bodies_in_flight_together_are_bounded(tmp_path: Path,
                                              predictors: dict[str, Predictor]) -> None:
    settings = Settings(places=tmp_path, max_body=2 << 20, in_flight=3 << 20,
                        body_timeout_s=3.0)
    photo = (EXAMPLES / "eiffel_tower.jpg").read_bytes()
    with serve_thread(settings, predictors) as url:
        port = int(url.rsplit(":", 1)[1])
        held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(2)]
        for s in held:  # two slow clients, 1.5 MB each announced, hold 3 MB between them
            s.sendall(b"POST /v1/tag HTTP/1.1\r\nHost: x\r\nContent-Length: 1572864\r\n"
                      b"\r\n" + b"\0" * 1024)
        time.sleep(0.5)
        busy = httpx.post(f"{url}/v1/tag", content=photo)
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        assert busy.json()["error"]["status"] == "UNAVAILABLE"
        assert all(s.recv(4096).startswith(b"HTTP/1.1 408") for s in held)  # timed out
        for s in held:
            s.close()
        assert httpx.post(f"{url}/v1/tag", content=photo).status_code == 200  # released


def test_private_and_local_uris_are_never_fetched(tmp_path: Path,
                                                  predictors: dict[str, Predictor]) -> None:
    settings = Settings(places=tmp_path, fetch=Fetcher(enabled=True))
    with serve_thread(settings, predictors) as url:
        uris = [f"{url}/healthz", "http://localhost/x.jpg", "http://10.0.0.8/x.jpg",
                "http://169.254.169.254/latest/meta-data", "file:///etc/passwd",
                "ftp://example.com/x.jpg"]
        r = _annotate(url, *({"image": {"source": {"imageUri": u}}, "features": [{"type": 2}]}
                             for u in uris))
        errors = [resp["error"] for resp in r.json()["responses"]]
        assert [e["code"] for e in errors] == [7, 7, 7, 7, 3, 3]
        assert all("never fetched" in e["message"] for e in errors[:4])
        assert "only http(s)" in errors[4]["message"]


def test_concurrent_clients_share_batches_and_get_their_own_answers(
        tmp_path: Path, predictors: dict[str, Predictor]) -> None:
    photos = [p for c in ("02.Colosseum", "12.Parthenon", "16.Stonehenge", "18.Taj_Mahal")
              for p in real_photos(c, "test", 4)]
    settings = Settings(places=tmp_path, plan=BatchPlan(max_batch=8, max_wait_ms=20, streams=1))
    with serve_thread(settings, predictors) as url:
        alone = [httpx.post(f"{url}/v1/tag", content=p.read_bytes()).json() for p in photos]

        async def together() -> list[dict]:
            async with httpx.AsyncClient(timeout=120) as client:
                async def one(p: Path) -> dict:
                    r = await client.post(f"{url}/v1/tag", content=p.read_bytes())
                    assert r.status_code == 200
                    return r.json()
                return await asyncio.gather(*(one(p) for p in photos))
        assert asyncio.run(together()) == alone
        metrics = httpx.get(f"{url}/metrics").text
    sizes = {line.split()[0]: float(line.split()[1]) for line in metrics.splitlines()
             if line.startswith("landmark_batch_size_")}
    calls = sizes['landmark_batch_size_count{model="transfer"}']
    assert sizes['landmark_batch_size_sum{model="transfer"}'] == 2 * len(photos)
    assert calls < 2 * len(photos)  # concurrent photos shared model calls
    assert 'landmark_requests_total{route="/v1/tag",status="200"} 32.0' in metrics
    assert "landmark_queue_depth " in metrics
    assert 'landmark_request_seconds_bucket{le="+Inf",route="/v1/tag"} 32.0' in metrics


def test_health_readiness_replica_and_docs(open_url: str) -> None:
    health = httpx.get(f"{open_url}/healthz")
    assert health.json()["status"] == "ok"
    replica = health.headers["x-landmark-replica"]
    assert replica == httpx.post(f"{open_url}/v1/tag", content=b"").headers["x-landmark-replica"]
    assert httpx.get(f"{open_url}/readyz").json() == {"status": "ready",
                                                      "models": ["transfer", "scratch"]}
    spec = httpx.get(f"{open_url}/openapi.json").json()
    assert {"/v1/images:annotate", "/v1/tag", "/v1/places", "/v1/places/{name}"} <= set(
        spec["paths"])
    assert httpx.get(f"{open_url}/docs").status_code == 200


def test_ready_only_once_the_models_are_loaded(tmp_path: Path) -> None:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "landmark.serve", "--port", str(port),
                             "--models", "transfer"], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                            env={**os.environ, "LANDMARK_HUB_REPO": "off",
                                 "LANDMARK_PLACES": str(tmp_path)})
    url, codes = f"http://127.0.0.1:{port}", []
    try:
        deadline = time.time() + 120
        while not codes or codes[-1] != 200:
            assert time.time() < deadline and proc.poll() is None
            try:
                codes.append(httpx.get(f"{url}/readyz", timeout=2).status_code)
                if codes[-1] == 503:
                    r = httpx.post(f"{url}/v1/tag", content=b"x")
                    assert r.status_code in (400, 503)  # 400 once loaded in between
            except httpx.TransportError:
                time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert set(codes) <= {503, 200} and codes.index(200) == len(codes) - 1
