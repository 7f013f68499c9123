"""The real app: started as `python app.py`, driven through gradio_client and Chromium."""

from __future__ import annotations

import os
import shutil
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
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import expect, sync_playwright

from landmark import imageio  # noqa: F401  (registers the HEIF codec)
from tests.conftest import REPO, real_photos, unavailable

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
def app_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    places = tmp_path_factory.mktemp("places")  # never the user's own place store
    with running_app(HF_HUB_OFFLINE="1", LANDMARK_PLACES=str(places)) as url:
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
    assert set(preds[0]) == {"class", "landmark", "confidence", "source"}
    assert preds[0]["source"] == "model"
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


@pytest.mark.parametrize(("k", "listed"), [(None, None), ("abc", None), (2.7, 3), (2.5, 3),
                                           (0, 1), (99, 10)])
def test_api_k_is_a_number_rounded_and_bounded(client: Client, k: object,
                                               listed: int | None) -> None:
    photo = handle_file(str(EXAMPLES / "taj_mahal.jpg"))
    if listed is None:
        with pytest.raises(Exception, match="k must be a number from 1 to 10"):
            client.predict(photo, "transfer", k, api_name="/tag")
    else:
        assert len(client.predict(photo, "transfer", k, api_name="/tag")["predictions"]) == listed


def _save(img: Image.Image, path: Path, **kw: object) -> Path:
    img.save(path, **kw)
    return path


def _bad_inputs(tmp: Path) -> dict[str, tuple[Path, str | None]]:
    """name -> (file, expected error text, "refused" for a tag record that names no
    landmark and says why, or None when a valid tag is expected)."""
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
        "1x1": (_save(Image.new("RGB", (1, 1), (9, 9, 9)), tmp / "one.png"), "refused"),
        "10x4000 strip": (_save(photo.resize((10, 4000)), tmp / "strip.png"), "refused"),
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
        elif error == "refused":
            result = client.predict(handle_file(str(path)), "transfer", 3, api_name="/tag")
            assert result["known"] is False and result["predictions"] == [], name
            assert "to show a landmark" in result["reason"], name
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


def test_same_named_uploads_from_two_users_stay_apart(app_url: str, tmp_path: Path) -> None:
    """Two users send a different IMG_0001.jpg at once: each gets back their own photo,
    geotagged with their own landmark."""
    from concurrent.futures import ThreadPoolExecutor

    from landmark.geotag import read_gps
    users = {"eiffel": (EXAMPLES / "eiffel_tower.jpg", 48.8584),
             "bridge": (EXAMPLES / "golden_gate_bridge.jpg", 37.8199)}

    def geotag(name: str, attempt: int) -> Path:
        folder = tmp_path / f"{name}{attempt}"
        folder.mkdir()
        photo = folder / "IMG_0001.jpg"
        photo.write_bytes(users[name][0].read_bytes())
        client = Client(app_url, verbose=False)
        return Path(client.predict(handle_file(str(photo)), "transfer", api_name="/geotag"))

    for attempt in range(3):
        with ThreadPoolExecutor(2) as pool:
            got = dict(zip(users, pool.map(geotag, users, [attempt] * 2), strict=True))
        for name, copy in got.items():
            assert copy.name == "IMG_0001_geotagged.jpg"
            assert read_gps(copy)[0] == pytest.approx(users[name][1], abs=1e-3), name


def test_geotag_survives_a_65kb_exif_block(client: Client, tmp_path: Path) -> None:
    import pyexiv2

    from landmark.geotag import read_gps
    photo = tmp_path / "big_exif.jpg"
    photo.write_bytes((EXAMPLES / "eiffel_tower.jpg").read_bytes())
    with pyexiv2.Image(str(photo)) as img:
        img.modify_exif({"Exif.Image.Make": "x" * 65_300})
    copy = client.predict(handle_file(str(photo)), "transfer", api_name="/geotag")
    assert read_gps(copy) == pytest.approx((48.8584, 2.2945), abs=1e-3)


def test_download_folders_go_when_the_app_stops(tmp_path: Path) -> None:
    with running_app(HF_HUB_OFFLINE="1", TMPDIR=str(tmp_path)) as url:
        Client(url, verbose=False).predict(handle_file(str(EXAMPLES / "eiffel_tower.jpg")),
                                           "transfer", api_name="/geotag")
        assert list(tmp_path.glob("landmark-*/*/*_geotagged.jpg"))
    assert not list(tmp_path.glob("landmark-*"))


def _browser(p: object, exe: str | None = None) -> object:
    """Debian's Chromium; missing, or present but unable to start, the test is skipped
    with the reason, except under CI (conftest.unavailable)."""
    exe = exe or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(exe).exists():
        unavailable("no Chromium: apt-get install chromium (CI installs it)")
    try:
        return p.chromium.launch(
            executable_path=exe, timeout=60_000,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"])
    except PlaywrightError as e:
        unavailable(f"Chromium at {exe} does not start: {str(e).splitlines()[0]}")


@pytest.mark.parametrize(("ci", "outcome"), [("", pytest.skip.Exception),
                                             ("true", pytest.fail.Exception)])
def test_a_chromium_that_cannot_start_skips_and_fails_under_ci(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ci: str, outcome: type) -> None:
    broken = tmp_path / "chromium"
    broken.write_text("#!/bin/sh\necho 'cannot open display' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CI", ci)
    with sync_playwright() as p, pytest.raises(outcome, match="does not start"):
        _browser(p, str(broken))


def test_browser_upload_switch_model_and_read_tags(app_url: str, tmp_path: Path) -> None:
    with sync_playwright() as p:
        browser = _browser(p)
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
        browser.close()
    assert seen["scratch"].startswith("#") or seen["scratch"] == "—"
    assert "#TajMahal" in seen["transfer"] and "Agra" in seen["transfer"]


def test_browser_reads_right_with_the_network_blocked(app_url: str) -> None:
    """Several photos in the one upload control: a rejected photo's card names no
    landmark in its headline and shows no bars, tags do not repeat words, and the map
    draws with every request off this machine blocked. The screenshot goes to docs/."""
    photos = [EXAMPLES / n for n in ("leaning_tower_of_pisa.jpg", "unknown_place.jpg")]
    with sync_playwright() as p:
        browser = _browser(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1300})
        blocked = []

        def only_local(route: object) -> None:
            if route.request.url.startswith(app_url):
                route.continue_()
            else:
                blocked.append(route.request.url)
                route.abort()

        page.route("**/*", only_local)
        page.goto(app_url)
        page.locator("input[type=file]").first.set_input_files([str(x) for x in photos])
        page.get_by_role("button", name="Tag", exact=True).click()
        page.get_by_text("unknown_place.jpg: No known landmark").wait_for(timeout=60_000)
        page.get_by_text("leaning_tower_of_pisa.jpg: Leaning Tower of Pisa").wait_for()
        tags = page.locator(".hashtags textarea").first.input_value()
        maps = page.locator("svg.worldmap")
        maps.first.wait_for()  # the map's HTML can land just after the headline's
        assert maps.count() == 1 and maps.first.bounding_box()["width"] > 200
        assert page.locator(".guesses").count() == 1
        assert "below the confidence threshold" in page.locator(".guesses").inner_text()
        headlines = page.locator("h3").all_inner_texts()
        page.screenshot(path=str(REPO / "docs" / "app.png"), full_page=True)
        browser.close()
    assert tags.endswith(" Leaning Tower of Pisa Italy")  # not "... of Pisa Pisa Italy"
    unknown = next(h for h in headlines if h.startswith("unknown_place.jpg"))
    assert "Mount Rushmore" not in unknown and "Space Needle" not in unknown


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


def test_teach_through_the_api_then_tag_and_sessions_stay_apart(tmp_path: Path) -> None:
    """Private places (as on Spaces): a visitor teaches a place and their next upload is
    tagged with it, no restart; another visitor sees none of it. Bad input is one clear
    message."""
    from landmark.imageio import list_images
    from tests.conftest import SHARED
    falls = list_images(SHARED.parent / "new_places" / "Comet_Falls")
    with running_app(HF_HUB_OFFLINE="1", LANDMARK_PRIVATE_PLACES="1",
                     TMPDIR=str(tmp_path)) as url:
        alice, bob = Client(url, verbose=False), Client(url, verbose=False)
        place = alice.predict([handle_file(str(p)) for p in falls[:5]], "Comet Falls",
                              46.78, -121.77, api_name="/teach")
        assert place["name"] == "Comet Falls" and place["photos"] == 5
        tags = [alice.predict(handle_file(str(p)), "transfer", 3, api_name="/tag")
                for p in falls[5:]]
        taught = [t for t in tags if t["predictions"][0]["source"] == "taught"]
        assert taught and taught[0]["predictions"][0]["landmark"] == "Comet Falls"
        assert [p["name"] for p in alice.predict(api_name="/places")] == ["Comet Falls"]
        assert bob.predict(api_name="/places") == []
        assert all(bob.predict(handle_file(str(p)), "transfer", 3, api_name="/tag")
                   ["predictions"][0]["source"] == "model" for p in falls[5:])
        with pytest.raises(Exception, match="3 to 20 photos"):
            bob.predict([handle_file(str(falls[0]))], "One", None, None, api_name="/teach")
        with pytest.raises(Exception, match="coordinates out of range"):
            bob.predict([handle_file(str(p)) for p in falls[:3]], "X", 91, 0,
                        api_name="/teach")
        assert alice.predict("Comet Falls", api_name="/forget") == []


def test_sidecar_download_for_a_heic_upload(client: Client, tmp_path: Path) -> None:
    """Any accepted format gets a sidecar, HEIC included; exiftool reads it back."""
    from tests.test_sidecar import exiftool
    photo = tmp_path / "IMG_0042.heic"
    Image.open(EXAMPLES / "taj_mahal.jpg").save(photo, format="HEIF")
    path = Path(client.predict(handle_file(str(photo)), "transfer", api_name="/sidecar"))
    assert path.name == "IMG_0042.heic.xmp"
    (meta,) = exiftool(path)
    assert meta["XMP-dc:Subject"] == ["Taj Mahal", "Agra", "India"]
    assert meta["XMP-iptcExt:LocationShown"][0]["City"] == "Agra"
    with pytest.raises(Exception, match="no sidecar"):
        client.predict(handle_file(str(EXAMPLES / "unknown_place.jpg")), "transfer",
                       api_name="/sidecar")


def test_browser_teach_tab_lists_and_removes_a_place(app_url: str) -> None:
    """The Teach a place tab: photos and a name in, the place in the table, then gone."""
    from landmark.imageio import list_images
    from tests.conftest import SHARED
    falls = list_images(SHARED.parent / "new_places" / "Comet_Falls")[:3]
    name = "Browser Falls"
    with sync_playwright() as p:
        browser = _browser(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(app_url)
        page.get_by_role("tab", name="Teach a place").click()
        page.locator("#teach-photos input[type=file]").set_input_files([str(f) for f in falls])
        page.get_by_label("Name").fill(name)
        page.get_by_role("button", name="Teach", exact=True).click()
        row = page.get_by_text(name, exact=True).filter(visible=True)  # the table's cell
        expect(row).to_have_count(1, timeout=60_000)
        page.get_by_label("Remove a place").click()
        page.get_by_role("option", name=name).click()
        page.get_by_role("button", name="Remove", exact=True).click()
        expect(row).to_have_count(0, timeout=60_000)
        browser.close()
