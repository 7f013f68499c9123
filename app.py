"""Landmark Tagger: upload photos, get the landmark, its location and hashtags.

    python app.py      serve the web demo on 127.0.0.1:7860 (GRADIO_SERVER_PORT), with
                       the HTTP API of landmark.serve on the same port (/v1/, /docs)

Models: found by name through landmark.resolve (the Hub repos in LANDMARK_HUB_REPO, then
huggingface_hub's cache, then the files bundled in models/). Batch tagging from the shell
is `python -m landmark.tag`.

API (gradio_client):
    Client(url).predict(handle_file("photo.jpg"), "transfer", 3, api_name="/tag")
    Client(url).predict(handle_file("photo.jpg"), "transfer", api_name="/geotag")
    Client(url).predict(handle_file("photo.heic"), "transfer", api_name="/sidecar")
    Client(url).predict([handle_file(p) for p in photos], "Name", None, None,
                        api_name="/teach")            # lat, lon optional
    Client(url).predict(api_name="/places")           # and "/forget" with a name

Taught places: on your own machine the app shares the place store of
`python -m landmark.places` (LANDMARK_PLACES). On a public server (Hugging Face
Spaces, or LANDMARK_PRIVATE_PLACES=1) every visitor teaches into a store of their own
session, which nobody else sees and which goes when the app does.
"""

from __future__ import annotations

import argparse
import atexit
import html
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import gradio as gr
import torch
import uvicorn

from landmark.geotag import GeotagError, geotagged_copy
from landmark.imageio import ImageError
from landmark.places import PlaceError, PlaceStore
from landmark.places import store as place_rules
from landmark.places.teach import teach
from landmark.predict import MAX_K, Predictor, parse_k, stream_plan
from landmark.resolve import available
from landmark.runtime import add_runtime_arg
from landmark.serve import Settings, create_app
from landmark.sidecar import SidecarError, sidecar_path, write_sidecar
from landmark.worldmap import world_svg

ROOT = Path(__file__).parent
EXAMPLES = sorted((ROOT / "examples").glob("*.jpg"))
MAX_FILE_SIZE = "25mb"
MAX_PHOTOS = 24
KEEP_DOWNLOADS_S = 3600
KEEP_PLACES_S = 24 * 3600  # a public session's taught places, once unchanged this long
log = logging.getLogger("app")


def load_predictors(runtime: str | None = None) -> dict[str, Predictor]:
    """Every model found (Hub or bundled), ready to serve, the best one first."""
    return {name: Predictor(path, runtime) for name, path in available().items()}


def tag_file(predictors: dict[str, Predictor], path: str | Path, model_name: str,
             k: object, places: PlaceStore | None = None) -> dict:
    """Tag one photo; raises ValueError with a user-facing message on bad input."""
    if model_name not in predictors:
        raise ValueError(f"unknown model {model_name!r}; choose from {sorted(predictors)}")
    k = parse_k(k)
    try:
        return predictors[model_name].tag(path, k, places)
    except ImageError as e:
        raise ValueError(f"{Path(path).name}: {str(e).split(': ', 1)[-1]}") from None


def private_places() -> bool:
    """Whether each visitor gets a place store of their own (public servers)."""
    return bool(os.environ.get("SPACE_ID")) or os.environ.get(
        "LANDMARK_PRIVATE_PLACES", "").lower() in ("1", "true", "yes")


def place_rows(store: PlaceStore) -> list[list]:
    """The taught places as table rows: name, photos, where (HTML-escaped by the table)."""
    return [[p.name, p.photos, f"{p.location.city}, {p.location.country} "
             f"({p.location.lat:.4f}, {p.location.lon:.4f})" if p.location else "—"]
            for p in store.places()]


class Downloads:
    """A private folder per request for the files a user downloads, so two users' photos
    named alike never meet, and, on public servers, each session's taught places.
    Request folders are swept after KEEP_DOWNLOADS_S, a session's places after
    KEEP_PLACES_S unchanged, and everything goes when the app exits."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="landmark-"))
        self.places = self.root / "places"
        atexit.register(shutil.rmtree, self.root, True)

    def folder(self) -> Path:
        """A new private folder for one request's downloads (old ones are swept)."""
        now = time.time()
        for old, keep in [*((d, KEEP_DOWNLOADS_S) for d in self.root.glob("req-*")),
                          *((d, KEEP_PLACES_S) for d in self.places.glob("*"))]:
            if old.stat().st_mtime < now - keep:
                shutil.rmtree(old, ignore_errors=True)
        return Path(tempfile.mkdtemp(prefix="req-", dir=self.root))

    def geotagged(self, photo: str | Path, result: dict, folder: Path) -> Path | None:
        """The photo geotagged with its landmark (JPEGs only), in `folder`."""
        photo = Path(photo)
        return geotagged_copy(photo, result, folder / f"{photo.stem}_geotagged.jpg")

    def sidecar(self, photo: str | Path, result: dict, model: str, folder: Path,
                ) -> Path | None:
        """An XMP sidecar (PHOTO.EXT.xmp) with the landmark's tags, in `folder`; None when
        no landmark was named. Any format, HEIC included: the photo is not touched."""
        path = sidecar_path(Path(photo), "full", folder)
        write_sidecar(path, result, model, photo_has_gps="photo_gps" in result)
        return path if path.exists() else None


def map_html(loc: dict | None) -> str:
    """The landmark on a world map drawn offline, its place and coordinates as text, and
    a link to OpenStreetMap for a closer look."""
    if not loc:
        return "<p>No location: no known landmark in this photo.</p>"
    lat, lon = loc["lat"], loc["lon"]
    place = html.escape(f"{loc['city']}, {loc['country']}")
    osm = f"https://www.openstreetmap.org/?mlat={lat}&mlon={lon}#map=15/{lat}/{lon}"
    return (f"<p><b>{place}</b> · {lat:.4f}, {lon:.4f} · "
            f'<a href="{osm}" target="_blank" rel="noopener">OpenStreetMap</a></p>'
            f"{world_svg(lat, lon)}")


def build_demo(predictors: dict[str, Predictor]) -> gr.Blocks:
    names = list(predictors)
    downloads = Downloads()
    shared = None if private_places() else PlaceStore()

    def places_of(request: gr.Request | None) -> PlaceStore:
        """The visitor's place store: the shared one, or their session's own."""
        if shared is not None:
            return shared
        session = re.sub(r"[^0-9A-Za-z_-]", "", getattr(request, "session_hash", "") or "")
        return PlaceStore(downloads.places / (session or "anonymous"))

    def tag_many(files: list[str] | None, model_name: str, k: float,
                 request: gr.Request) -> list[dict]:
        if not files:
            raise gr.Error("Upload a photo first.")
        if len(files) > MAX_PHOTOS:
            raise gr.Error(f"At most {MAX_PHOTOS} photos at a time.")
        items, folder = [], downloads.folder()
        for path in files:
            item = {"file": Path(path).name}
            try:
                item.update(path=path, result=tag_file(predictors, path, model_name, k,
                                                       places_of(request)))
                item["geotagged"] = downloads.geotagged(path, item["result"], folder)
                item["sidecar"] = downloads.sidecar(path, item["result"], model_name, folder)
            except (ValueError, OSError) as e:  # Geotag-, Place-, SidecarError: ValueErrors
                item["error"] = str(e)
            items.append(item)
        return items

    def tag_api(photo: str | None, model_name: str, k: float, request: gr.Request) -> dict:
        if not photo:
            raise gr.Error("No photo given.")
        try:
            return tag_file(predictors, photo, model_name, k, places_of(request))
        except ValueError as e:
            raise gr.Error(str(e)) from None

    def geotag_api(photo: str | None, model_name: str, request: gr.Request) -> str:
        result = tag_api(photo, model_name, 1, request)
        try:
            copy = downloads.geotagged(photo, result, downloads.folder())
        except GeotagError as e:
            raise gr.Error(f"{Path(photo).name}: {e}") from None
        if copy is None:
            raise gr.Error(f"{Path(photo).name}: no geotagged copy (needs a JPEG showing a "
                           "known landmark)")
        return str(copy)

    def sidecar_api(photo: str | None, model_name: str, request: gr.Request) -> str:
        result = tag_api(photo, model_name, 3, request)
        try:
            path = downloads.sidecar(photo, result, model_name, downloads.folder())
        except SidecarError as e:
            raise gr.Error(str(e)) from None
        if path is None:
            raise gr.Error(f"{Path(photo).name}: no sidecar: {result.get('reason')}")
        return str(path)

    def teach_api(files: list[str] | None, name: str, lat: object, lon: object,
                  request: gr.Request) -> dict:
        store = places_of(request)
        paths = files or []
        try:
            place = teach(store, list(predictors.values()), name, paths, _number(lat),
                          _number(lon), [Path(p).name for p in paths])
        except ValueError as e:  # PlaceError, and a coordinate that is not a number
            raise gr.Error(str(e)) from None
        return place.to_dict()

    def places_api(request: gr.Request) -> list[dict]:
        try:
            return [p.to_dict() for p in places_of(request).places()]
        except PlaceError as e:
            raise gr.Error(str(e)) from None

    def forget_api(name: str, request: gr.Request) -> list[dict]:
        try:
            places_of(request).remove(str(name or ""))
        except PlaceError as e:
            raise gr.Error(str(e)) from None
        return places_api(request)

    def teach_ui(files: list[str] | None, name: str, lat: str, lon: str,
                 request: gr.Request) -> tuple:
        """Teach, then clear the form (the table refreshes next)."""
        place = teach_api(files, name, lat, lon, request)
        gr.Info(f"Taught {place['name']} from {place['photos']} photos: tag a photo of it.")
        return None, ""

    def forget_ui(name: str | None, request: gr.Request) -> tuple:
        if not name:
            raise gr.Error("Choose a place to remove.")
        forget_api(name, request)
        return _place_table(places_of(request))

    def refresh_ui(request: gr.Request) -> tuple:
        try:
            return _place_table(places_of(request))
        except PlaceError as e:
            raise gr.Error(str(e)) from None

    with gr.Blocks(title="Landmark Tagger", delete_cache=(600, KEEP_DOWNLOADS_S)) as demo:
        gr.Markdown("# 🗼 Landmark Tagger\nUpload a photo (or many): the model names the "
                    "landmark, places it on the map and suggests hashtags. Photos showing "
                    "no landmark it knows are reported as such. Teach it places of your own "
                    "in the second tab.")
        with gr.Tab("Tag photos"), gr.Row():
            with gr.Column(scale=1):
                files = gr.File(file_count="multiple", label="Photos (one or many)",
                                file_types=["image", ".heic", ".heif"])
                model = gr.Dropdown(names, value=names[0], label="Model")
                k = gr.Slider(1, MAX_K, value=3, step=1, label="Landmarks to list (top-k)")
                button = gr.Button("Tag", variant="primary")
                if EXAMPLES:
                    gr.Examples([[[str(p)]] for p in EXAMPLES], inputs=[files],
                                label="Examples")
            with gr.Column(scale=2):
                results = gr.State([])

                @gr.render(inputs=results)
                def show(items: list[dict]) -> None:
                    for item in items:
                        _result_card(item)

        with gr.Tab("Teach a place") as teach_tab:
            gr.Markdown(f"Upload {place_rules.MIN_PHOTOS} to {place_rules.MAX_PHOTOS} "
                        "photos of a place the model "
                        "does not know and name it: the next photo you tag can be "
                        "recognised as it, with no retraining. Coordinates are optional; "
                        "without them the photos' own GPS is used, if they have any.")
            with gr.Row():
                with gr.Column(scale=1):
                    teach_files = gr.File(file_count="multiple", label="Photos of the place",
                                          file_types=["image", ".heic", ".heif"],
                                          elem_id="teach-photos")
                    teach_name = gr.Textbox(label="Name", max_length=place_rules.MAX_NAME)
                    with gr.Row():
                        teach_lat = gr.Textbox(label="Latitude (optional)",
                                               placeholder="e.g. 47.6062")
                        teach_lon = gr.Textbox(label="Longitude (optional)",
                                               placeholder="e.g. -122.3321")
                    teach_button = gr.Button("Teach", variant="primary")
                with gr.Column(scale=1):
                    table = gr.Dataframe(headers=["place", "photos", "where"],
                                         label="Taught places", interactive=False)
                    forget_name = gr.Dropdown([], label="Remove a place", allow_custom_value=True)
                    forget_button = gr.Button("Remove")
        teach_button.click(teach_ui, [teach_files, teach_name, teach_lat, teach_lon],
                           [teach_files, teach_name], api_visibility="private"
                           ).success(refresh_ui, None, [table, forget_name],
                                     api_visibility="private")
        forget_button.click(forget_ui, forget_name, [table, forget_name],
                            api_visibility="private")
        teach_tab.select(refresh_ui, None, [table, forget_name], api_visibility="private")
        api_files = gr.File(file_count="multiple", visible=False)
        api_name = gr.Textbox(visible=False)
        api_lat, api_lon = gr.JSON(visible=False), gr.JSON(visible=False)
        api_place, api_places = gr.JSON(visible=False), gr.JSON(visible=False)
        gr.Button(visible=False).click(teach_api, [api_files, api_name, api_lat, api_lon],
                                       api_place, api_name="teach")
        gr.Button(visible=False).click(places_api, None, api_places, api_name="places")
        gr.Button(visible=False).click(forget_api, api_name, api_places, api_name="forget")
        button.click(tag_many, [files, model, k], results, api_visibility="private")
        api_photo = gr.File(visible=False)
        api_model = gr.Textbox(visible=False)
        api_k = gr.JSON(visible=False)  # any value reaches parse_k, which explains itself
        api_out = gr.JSON(visible=False)
        api_copy = gr.File(visible=False)
        gr.Button(visible=False).click(tag_api, [api_photo, api_model, api_k], api_out,
                                       api_name="tag")
        gr.Button(visible=False).click(geotag_api, [api_photo, api_model], api_copy,
                                       api_name="geotag")
        api_sidecar = gr.File(visible=False)
        gr.Button(visible=False).click(sidecar_api, [api_photo, api_model], api_sidecar,
                                       api_name="sidecar")
    return demo


def _number(value: object) -> float | None:
    """An optional coordinate from the API or a form: None, or a number."""
    if value is None or value == "":
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise PlaceError(f"a coordinate must be a number, got {value!r}") from None


def _place_table(store: PlaceStore) -> tuple:
    """Rows for the taught-places table, and the remove dropdown's choices."""
    rows = place_rows(store)
    return gr.Dataframe(value=rows or None), gr.Dropdown(choices=[r[0] for r in rows],
                                                          value=None)


def _result_card(item: dict) -> None:
    """One photo's results. A landmark: its bars, map, hashtags, a geotagged copy and an
    XMP sidecar to download.
    No known landmark: that headline and the reason; the guesses only small, marked as
    below the threshold."""
    with gr.Group():
        if "error" in item:
            gr.Markdown(f"### {html.escape(item['file'])}\n⚠️ {html.escape(item['error'])}")
            return
        result, name = item["result"], html.escape(item["file"])
        preds = result["predictions"]
        head = (f"### {name}: {preds[0]['landmark']}" if result["known"] else
                f"### {name}: No known landmark\n{html.escape(result['reason'])}")
        gps = result.get("photo_gps")
        if gps:
            head += (f"\n\n📍 Photo GPS {gps['lat']:.4f}, {gps['lon']:.4f}: nearest known "
                     f"landmark {gps['nearest_landmark']} ({gps['distance_km']} km)")
        gr.Markdown(head)
        with gr.Row():
            gr.Image(item["path"], show_label=False, height=200, scale=1)
            if result["known"]:
                gr.Label({p["landmark"]: p["confidence"] for p in preds},
                         label="Top landmarks", scale=1)
                gr.HTML(map_html(result["location"]), scale=1)
            elif preds:
                guesses = ", ".join(f"{p['landmark']} {p['confidence']:.0%}" for p in preds)
                gr.HTML(f'<p class="guesses"><small>Guesses below the confidence threshold, '
                        f"not tags: {html.escape(guesses)}</small></p>", scale=2)
        gr.Textbox(" ".join(result["hashtags"] + result["tags"]) or "—",
                   label="Hashtags and tags", buttons=["copy"], elem_classes="hashtags")
        with gr.Accordion("JSON", open=False):
            gr.JSON(result)
        with gr.Row():
            if item.get("geotagged"):
                gr.DownloadButton("Download the photo geotagged (EXIF GPS + description)",
                                  value=str(item["geotagged"]))
            if item.get("sidecar"):
                gr.DownloadButton("Download the XMP sidecar (for Immich, digiKam, "
                                  "darktable, Lightroom)", value=str(item["sidecar"]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_runtime_arg(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    # concurrent requests run in parallel streams, each on its share of the cores
    torch.set_num_threads(stream_plan(torch.get_num_threads())[1])
    predictors = load_predictors(args.runtime)
    if not predictors:
        print("error: no model files found (models/*.pt or LANDMARK_HUB_REPO)", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # so atexit clean-up runs
    host = os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1")
    port = int(os.environ.get("GRADIO_SERVER_PORT", 7860))
    service = create_app(Settings.from_env(public=private_places() or None), predictors)
    demo = build_demo(predictors).queue(default_concurrency_limit=2)
    app = gr.mount_gradio_app(service, demo, path="/", max_file_size=MAX_FILE_SIZE)
    log.info("the app and the HTTP API (/v1/, docs at /docs) on http://%s:%d", host, port)
    uvicorn.run(app, host=host, port=port, access_log=False, log_level="warning",
                timeout_keep_alive=5, timeout_graceful_shutdown=5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
