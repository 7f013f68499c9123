"""Landmark Tagger: upload photos, get the landmark, its location and hashtags.

    python app.py      serve the web demo on 127.0.0.1:7860 (GRADIO_SERVER_PORT)

Models: found by name through landmark.resolve (the Hub repos in LANDMARK_HUB_REPO, then
huggingface_hub's cache, then the files bundled in models/). Batch tagging from the shell
is `python -m landmark.tag`.

API (gradio_client):
    Client(url).predict(handle_file("photo.jpg"), "transfer", 3, api_name="/tag")
    Client(url).predict(handle_file("photo.jpg"), "transfer", api_name="/geotag")
"""

from __future__ import annotations

import argparse
import atexit
import html
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from landmark.data.imageio import ImageError
from landmark.geotag import GeotagError, geotagged_copy
from landmark.predict import Predictor
from landmark.resolve import available
from landmark.worldmap import world_svg

ROOT = Path(__file__).parent
EXAMPLES = sorted((ROOT / "examples").glob("*.jpg"))
MAX_FILE_SIZE = "25mb"
MAX_PHOTOS = 24
MAX_K = 10
KEEP_DOWNLOADS_S = 3600
log = logging.getLogger("app")


def load_predictors() -> dict[str, Predictor]:
    """Every model found (Hub or bundled), ready to serve, the best one first."""
    return {name: Predictor(path) for name, path in available().items()}


def parse_k(k: object) -> int:
    """How many landmarks to list: a number, rounded to the nearest whole one (halves up,
    2.5 -> 3) and kept within 1..MAX_K. Raises ValueError on anything else."""
    try:
        value = float(k)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value):
        raise ValueError(f"k must be a number from 1 to {MAX_K}, got {k!r}")
    return max(1, min(MAX_K, math.floor(value + 0.5)))


def tag_file(predictors: dict[str, Predictor], path: str | Path, model_name: str,
             k: object) -> dict:
    """Tag one photo; raises ValueError with a user-facing message on bad input."""
    if model_name not in predictors:
        raise ValueError(f"unknown model {model_name!r}; choose from {sorted(predictors)}")
    k = parse_k(k)
    try:
        return predictors[model_name].tag(path, k)
    except ImageError as e:
        raise ValueError(f"{Path(path).name}: {str(e).split(': ', 1)[-1]}") from None


class Downloads:
    """A private folder per request for the files a user downloads, so two users' photos
    named alike never meet. Folders are swept after KEEP_DOWNLOADS_S, and all of them go
    when the app exits."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="landmark-"))
        atexit.register(shutil.rmtree, self.root, True)

    def folder(self) -> Path:
        cutoff = time.time() - KEEP_DOWNLOADS_S
        for old in self.root.iterdir():
            if old.stat().st_mtime < cutoff:
                shutil.rmtree(old, ignore_errors=True)
        return Path(tempfile.mkdtemp(dir=self.root))

    def geotagged(self, photo: str | Path, result: dict) -> Path | None:
        """The photo geotagged with its landmark, in a new private folder (JPEGs only)."""
        photo = Path(photo)
        return geotagged_copy(photo, result, self.folder() / f"{photo.stem}_geotagged.jpg")


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


def build_demo(predictors: dict[str, Predictor]):
    import gradio as gr

    names = list(predictors)
    downloads = Downloads()

    def tag_many(files: list[str] | None, model_name: str, k: float) -> list[dict]:
        if not files:
            raise gr.Error("Upload a photo first.")
        if len(files) > MAX_PHOTOS:
            raise gr.Error(f"At most {MAX_PHOTOS} photos at a time.")
        items = []
        for path in files:
            item = {"file": Path(path).name}
            try:
                item.update(path=path, result=tag_file(predictors, path, model_name, k))
                item["geotagged"] = downloads.geotagged(path, item["result"])
            except (ValueError, OSError) as e:  # GeotagError is a ValueError
                item["error"] = str(e)
            items.append(item)
        return items

    def tag_api(photo: str | None, model_name: str, k: float) -> dict:
        if not photo:
            raise gr.Error("No photo given.")
        try:
            return tag_file(predictors, photo, model_name, k)
        except ValueError as e:
            raise gr.Error(str(e)) from None

    def geotag_api(photo: str | None, model_name: str) -> str:
        result = tag_api(photo, model_name, 1)
        try:
            copy = downloads.geotagged(photo, result)
        except GeotagError as e:
            raise gr.Error(f"{Path(photo).name}: {e}") from None
        if copy is None:
            raise gr.Error(f"{Path(photo).name}: no geotagged copy (needs a JPEG showing a "
                           "known landmark)")
        return str(copy)

    with gr.Blocks(title="Landmark Tagger", delete_cache=(600, KEEP_DOWNLOADS_S)) as demo:
        gr.Markdown("# 🗼 Landmark Tagger\nUpload a photo (or many): the model names the "
                    "landmark, places it on the map and suggests hashtags. Photos showing "
                    "no landmark it knows are reported as such.")
        with gr.Row():
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
                        _result_card(gr, item)

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
    return demo


def _result_card(gr, item: dict) -> None:
    """One photo's results. A landmark: its bars, map, hashtags and a geotagged download.
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
        if item.get("geotagged"):
            gr.DownloadButton("Download the photo geotagged (EXIF GPS + description)",
                              value=str(item["geotagged"]))


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter
                            ).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    predictors = load_predictors()
    if not predictors:
        print("error: no model files found (models/*.pt or LANDMARK_HUB_REPO)", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # so atexit clean-up runs
    build_demo(predictors).queue(default_concurrency_limit=2).launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", 7860)),
        max_file_size=MAX_FILE_SIZE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
