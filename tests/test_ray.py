"""Ray Serve for real: `serve run deploy/ray-serve.yaml` with its 2 local replicas on
127.0.0.1, called by concurrent httpx clients and Google's own client; a replica is
killed under load. Also: the retry rule against a real flaky server, and the KubeRay
manifest carrying the same Serve config."""

from __future__ import annotations

import asyncio
import http.server
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from google.cloud import vision

from bench.service import _replicas, running_ray
from landmark.predict import Predictor
from landmark.resolve import MODELS_DIR
from landmark.serve.client import send
from tests.conftest import REPO, SHARED, real_photos, unavailable
from tests.test_serve import PLACE, google_client

CONFIG = REPO / "deploy" / "ray-serve.yaml"
PHOTOS = [p for cls in ("03.Eiffel_Tower", "11.Niagara_Falls", "17.Sydney_Opera_House")
          for p in real_photos(cls, "test", 4)] if (SHARED / "test").is_dir() else []


@pytest.fixture(scope="module")
def ray_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`serve run` on the repo's config as it is (plus a free port), places in a fresh
    folder."""
    pytest.importorskip("ray.serve", reason="ray[serve] is not installed")
    tmp = tmp_path_factory.mktemp("ray")
    try:
        with running_ray("transfer", log=tmp / "serve.log", places=tmp / "places") as url:
            yield url
    except RuntimeError as e:
        unavailable(f"{e}: {(tmp / 'serve.log').read_text()[-3000:]}")


async def _tag_all(url: str, photos: list[Path], clients: int,
                   **params: object) -> list[httpx.Response]:
    """Every photo through /v1/tag from `clients` concurrent clients that retry by the
    rule (landmark.serve.client)."""
    limit = asyncio.Semaphore(clients)
    async with httpx.AsyncClient(timeout=60) as client:
        async def one(p: Path) -> httpx.Response:
            async with limit:
                return await send(client, "POST", f"{url}/v1/tag", content=p.read_bytes(),
                                  params=params)
        return await asyncio.gather(*(one(p) for p in photos))


def test_both_replicas_answer_concurrent_clients_as_the_plain_server(ray_url: str) -> None:
    answers = asyncio.run(_tag_all(ray_url, PHOTOS * 2, clients=16, k=4))
    assert all(r.status_code == 200 for r in answers)
    assert len({r.headers["x-landmark-replica"] for r in answers}) == 2
    direct = Predictor(MODELS_DIR / "transfer.pt")
    for photo, r in zip(PHOTOS * 2, answers, strict=True):
        want = direct.tag(photo, 4)
        assert r.json()["predictions"][0]["class"] == want["predictions"][0]["class"]
        assert r.json()["known"] == want["known"]
    found = google_client(ray_url).landmark_detection(
        image=vision.Image(content=PHOTOS[0].read_bytes()))
    assert found.landmark_annotations[0].description == "Eiffel Tower"
    assert "landmark_batch_size_count" in httpx.get(f"{ray_url}/metrics").text


def test_a_taught_place_is_recognised_by_every_replica(ray_url: str) -> None:
    photos = sorted(PLACE.iterdir())[:4]
    files = [("file", (p.name, p.read_bytes())) for p in photos]
    other = sorted((SHARED.parent / "new_places" / "Comet_Falls").iterdir())[:4]

    async def teach_two() -> list[httpx.Response]:  # at once, likely through both replicas
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(
                client.post(f"{ray_url}/v1/places", files=files, data={"name": "Aurora Bridge"}),
                client.post(f"{ray_url}/v1/places", data={"name": "Comet Falls"},
                            files=[("file", (p.name, p.read_bytes())) for p in other]))
    assert [r.status_code for r in asyncio.run(teach_two())] == [201, 201]
    again = httpx.post(f"{ray_url}/v1/places", files=files, data={"name": "aurora bridge"},
                       timeout=120)
    assert again.status_code == 409  # a retried teach is a conflict, not a second place

    seen: dict[str, list[str]] = {}
    for _ in range(12):  # every answer after the acknowledgement, whichever replica
        r = httpx.post(f"{ray_url}/v1/tag", content=photos[0].read_bytes(), timeout=60)
        listed = httpx.get(f"{ray_url}/v1/places").json()["places"]
        assert sorted(p["name"] for p in listed) == ["Aurora Bridge", "Comet Falls"]
        seen.setdefault(r.headers["x-landmark-replica"], []).append(
            r.json()["predictions"][0]["landmark"])
    assert len(seen) == 2
    assert all(top == "Aurora Bridge" for tops in seen.values() for top in tops)


def test_a_killed_replica_is_replaced_and_a_retrying_client_loses_nothing(
        ray_url: str) -> None:
    victim = httpx.get(f"{ray_url}/healthz").headers["x-landmark-replica"]
    before = _replicas(ray_url)

    async def load_and_kill() -> list[httpx.Response]:
        task = asyncio.create_task(_tag_all(ray_url, PHOTOS * 5, clients=8))
        await asyncio.sleep(1.0)
        os.kill(int(victim.rsplit("-", 1)[1]), signal.SIGKILL)
        return await task
    killed_at = time.time()
    answers = asyncio.run(load_and_kill())
    assert [r.status_code for r in answers] == [200] * len(answers)  # no photo lost
    while not (_replicas(ray_url) - before):
        assert time.time() - killed_at < 30, "no new replica answered within 30 s"
        time.sleep(0.5)
    assert victim not in _replicas(ray_url, tries=12)


class Flaky(http.server.BaseHTTPRequestHandler):
    """Answers 503, then drops a connection, then 200: what a client meets while a
    replica is replaced."""

    calls = 0

    def do_POST(self) -> None:
        Flaky.calls += 1
        if Flaky.calls == 2:
            self.connection.close()  # a dropped connection, no answer at all
            return
        self.send_response(503 if Flaky.calls == 1 else 200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


def test_the_retry_rule_rides_out_503_and_a_dropped_connection() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1/tag"

    async def call(tries: int) -> httpx.Response:
        async with httpx.AsyncClient(timeout=10) as client:
            return await send(client, "POST", url, content=b"x", tries=tries, backoff_s=0.01)
    try:
        assert asyncio.run(call(tries=4)).status_code == 200 and Flaky.calls == 3
        Flaky.calls = 0
        assert asyncio.run(call(tries=1)).status_code == 503  # no retry left: the answer
    finally:
        server.shutdown()


def test_kuberay_serves_the_same_config_from_the_dockerfiles_image() -> None:
    docs = {d["kind"]: d for d in yaml.safe_load_all((REPO / "deploy" / "kuberay.yaml").open())}
    service, claim = docs["RayService"], docs["PersistentVolumeClaim"]
    assert yaml.safe_load(service["spec"]["serveConfigV2"]) == yaml.safe_load(CONFIG.read_text())
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    cluster = service["spec"]["rayClusterConfig"]
    worker = cluster["workerGroupSpecs"][0]["template"]["spec"]
    for pod in (cluster["headGroupSpec"]["template"]["spec"], worker):
        (container,) = pod["containers"]
        assert container["image"].split(":")[0] == "landmark-tagger"
        assert container["resources"]["requests"]["cpu"]
        assert {"name": "LANDMARK_PLACES", "value": "/places"} in container["env"]
        assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == \
            claim["metadata"]["name"]
    assert worker["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/readyz"
    dockerfile = (REPO / "Dockerfile").read_text()
    assert f"rayproject/ray:{cluster['rayVersion']}" in dockerfile
