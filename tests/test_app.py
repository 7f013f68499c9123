"""The real app: started as `python app.py`, driven through gradio_client and Chromium."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image
from playwright.sync_api import sync_playwright

from landmark.data import imageio  # noqa: F401  (registers the HEIF codec)
from tests.conftest import REPO, real_photos

EXAMPLES = REPO / "examples"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_app(**env: str) -> Iterator[str]:
    """`python app.py` on a free port with extra environment; yields its URL once it serves."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=REPO,
                            env={**os.environ, "GRADIO_SERVER_PORT": str(port),
                                 "GRADIO_ANALYTICS_ENABLED": "False", **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"app exited: {proc.stdout.read()[-3000:]}")
                if time.time() > deadline:
                    pytest.fail("app did not start within 120 s")
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def app_url() -> Iterator[str]:
    with running_app(HF_HUB_OFFLINE="1") as url:
        yield url


@pytest.fixture(scope="module")
def client(app_url: str) -> Client:
    return Client(app_url, verbose=False)


@pytest.mark.parametrize("model", ["scratch", "transfer"])
def test_api_tags_a_real_photo(client: Client, model: str) -> None:
    result = client.predict(handle_file(str(EXAMPLES / "golden_gate_bridge.jpg")), model, 3,
                            api_name="/tag")
    preds = result["predictions"]
    assert len(preds) == 3
    assert [p["confidence"] for p in preds] == sorted((p["confidence"] for p in preds),
                                                      reverse=True)
    assert set(preds[0]) == {"class", "landmark", "confidence"}
    assert preds[0]["class"] == "05.Golden_Gate_Bridge"
    assert result["known"] is True
    assert result["location"]["city"] == "San Francisco"
    assert "#GoldenGateBridge" in result["hashtags"]


def test_api_k_and_unknown_model(client: Client) -> None:
    result = client.predict(handle_file(str(EXAMPLES / "taj_mahal.jpg")), "transfer", 5,
                            api_name="/tag")
    assert len(result["predictions"]) == 5
    with pytest.raises(Exception, match="unknown model"):
        client.predict(handle_file(str(EXAMPLES / "taj_mahal.jpg")), "nope", 3,
                       api_name="/tag")


def _save(img: Image.Image, path: Path, **kw: object) -> Path:
    img.save(path, **kw)
    return path


def _bad_inputs(tmp: Path) -> dict[str, tuple[Path, str | None]]:
    """name -> (file, expected error text, or None when a valid tag is expected)."""
    photo = Image.open(real_photos("05.Golden_Gate_Bridge", "test")[0]).convert("RGB")
    data = real_photos("05.Golden_Gate_Bridge", "test")[0].read_bytes()
    (tmp / "notes.txt").write_text("hello, not a photo")
    (tmp / "corrupt.jpg").write_bytes(data[: len(data) // 2])  # cut off mid-scan
    big = photo.resize((9000, 6700))  # 60 megapixels
    rgba = photo.convert("RGBA")
    rgba.putalpha(128)
    frames = [photo.resize((120, 120)), photo.resize((120, 120)).rotate(10)]
    frames[0].save(tmp / "anim.gif", save_all=True, append_images=frames[1:])
    return {
        "non-image": (tmp / "notes.txt", "not an image"),
        "corrupt jpeg": (tmp / "corrupt.jpg", "unreadable"),
        "60 megapixels": (_save(big, tmp / "big.jpg", quality=80), None),
        "decompression bomb": (_save(Image.new("L", (20000, 20000)), tmp / "bomb.png"),
                               "too large"),
        "1x1": (_save(Image.new("RGB", (1, 1), (9, 9, 9)), tmp / "one.png"), None),
        "grayscale": (_save(photo.convert("L"), tmp / "grey.jpg"), None),
        "cmyk": (_save(photo.convert("CMYK"), tmp / "cmyk.jpg"), None),
        "png alpha": (_save(rgba, tmp / "alpha.png"), None),
        "animated gif": (tmp / "anim.gif", None),
        "heic": (_save(photo, tmp / "phone.heic", format="HEIF"), None),  # via pillow-heif
    }


def test_bad_inputs_get_a_clear_message_or_a_tag(client: Client, tmp_path: Path) -> None:
    for name, (path, error) in _bad_inputs(tmp_path).items():
        if error is None:
            result = client.predict(handle_file(str(path)), "transfer", 3, api_name="/tag")
            assert len(result["predictions"]) == 3, name
        else:
            with pytest.raises(Exception, match=error):
                client.predict(handle_file(str(path)), "transfer", 3, api_name="/tag")
    # still serving, and still right
    result = client.predict(handle_file(str(EXAMPLES / "eiffel_tower.jpg")), "transfer", 1,
                            api_name="/tag")
    assert result["predictions"][0]["class"] == "03.Eiffel_Tower"


def test_upload_size_limit(client: Client, tmp_path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 255, (3000, 3000, 3), dtype=np.uint8)
    path = _save(Image.fromarray(noise), tmp_path / "huge.png")  # ~27 MB of noise
    assert path.stat().st_size > 25_000_000
    with pytest.raises(Exception, match=r"(?i)size|large|limit"):
        client.predict(handle_file(str(path)), "transfer", 3, api_name="/tag")


def test_gps_in_photo_is_reported(client: Client, tmp_path: Path) -> None:
    from landmark.geotag import geotag_jpeg
    data = (EXAMPLES / "sydney_opera_house.jpg").read_bytes()
    path = tmp_path / "with_gps.jpg"
    path.write_bytes(geotag_jpeg(data, -33.8570, 151.2150, "holiday"))
    result = client.predict(handle_file(str(path)), "transfer", 3, api_name="/tag")
    assert result["photo_gps"]["nearest_landmark"] == "Sydney Opera House"
    assert result["photo_gps"]["distance_km"] < 1


def test_browser_upload_switch_model_and_read_tags(app_url: str, tmp_path: Path) -> None:
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(app_url)
        page.locator("input[type=file]").first.set_input_files(str(EXAMPLES / "taj_mahal.jpg"))
        seen = {}
        for model in ("scratch", "transfer"):  # switch models and tag again
            page.get_by_label("Model").click()
            page.get_by_role("option", name=model).click()
            page.get_by_role("button", name="Tag", exact=True).click()
            page.get_by_text(f"taj_mahal.jpg: {'' if model == 'scratch' else 'Taj Mahal'}")\
                .first.wait_for(timeout=60_000)
            box = page.locator(".hashtags textarea").first
            box.wait_for(timeout=60_000)
            seen[model] = box.input_value()
        assert seen["scratch"].startswith("#") or seen["scratch"] == "—"
        assert "#TajMahal" in seen["transfer"] and "Agra" in seen["transfer"]
        shot = tmp_path / "app.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert Image.open(io.BytesIO(shot.read_bytes())).size[0] == 1400


def test_app_serves_models_pulled_from_the_hub(tiny_model: Path, tmp_path: Path) -> None:
    """LANDMARK_HUB_REPO: the app pulls through landmark.hub; the pulled model answers."""
    from landmark import hub
    from tests.hub_server import FakeHub
    with FakeHub() as srv:
        hub.push(tiny_model, "me/landmark-scratch", endpoint=srv.url)
        with running_app(HF_ENDPOINT=srv.url, LANDMARK_HUB_REPO="me/landmark-scratch",
                         HF_HOME=str(tmp_path / "hf")) as url:
            result = Client(url, verbose=False).predict(
                handle_file(str(EXAMPLES / "eiffel_tower.jpg")), "scratch", 3, api_name="/tag")
    # the tiny Hub model knows two classes; the bundled scratch model knows 19
    assert {p["class"] for p in result["predictions"]} == {"03.Eiffel_Tower",
                                                           "11.Niagara_Falls"}
