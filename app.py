"""Landmark Tagger: upload photos, get the landmark, its location and hashtags.

    python app.py                 serve the web demo on 127.0.0.1:7860 (GRADIO_SERVER_PORT)
    python app.py --tag PHOTO...  tag photos from the command line and print JSON lines

Models: pulled from the Hugging Face Hub repos in LANDMARK_HUB_REPO (comma-separated,
default: the project's; "off" to skip; LANDMARK_HUB_REVISION pins a revision), falling
back to huggingface_hub's cache and then to the files bundled in models/.

API (gradio_client):
    Client(url).predict(handle_file("photo.jpg"), "transfer", 3, api_name="/tag")
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

from landmark.data.imageio import ImageError
from landmark.geotag import geotag_jpeg
from landmark.hub import DEFAULT_REPOS, pull_with_fallback
from landmark.predict import Predictor

ROOT = Path(__file__).parent
MODELS_DIR = ROOT / "models"
EXAMPLES = sorted((ROOT / "examples").glob("*.jpg"))
MAX_FILE_SIZE = "25mb"
MAX_PHOTOS = 24
log = logging.getLogger("app")


def find_models(folder: Path = MODELS_DIR) -> dict[str, Path]:
    """Model name (file stem) -> path, for every TorchScript file bundled in `folder`."""
    return {p.stem: p for p in sorted(folder.glob("*.pt"))}


def resolve_models(folder: Path = MODELS_DIR) -> dict[str, Path]:
    """Model files to serve: each repo in LANDMARK_HUB_REPO (comma-separated; default the
    project's repos; "off" for none) pulled from the Hub, else its cached or bundled copy."""
    models = find_models(folder)
    repos = os.environ.get("LANDMARK_HUB_REPO", ",".join(DEFAULT_REPOS))
    if repos.strip().lower() in ("", "off", "none", "0"):
        return models
    revision = os.environ.get("LANDMARK_HUB_REVISION") or None
    for repo in (r.strip() for r in repos.split(",") if r.strip()):
        name = repo.rsplit("/", 1)[-1].removeprefix("landmark-")
        path = pull_with_fallback(repo, models.get(name), revision)
        if path:
            models[name] = path
    return models


def load_predictors(folder: Path = MODELS_DIR) -> dict[str, Predictor]:
    """Every model found (Hub or bundled), ready to serve, the best one first."""
    models = resolve_models(folder)
    order = sorted(models, key=lambda n: (n != "transfer", n))
    return {name: Predictor(models[name]) for name in order}


def tag_file(predictors: dict[str, Predictor], path: str | Path, model_name: str,
             k: int) -> dict:
    """Tag one photo; raises ValueError with a user-facing message on bad input."""
    if model_name not in predictors:
        raise ValueError(f"unknown model {model_name!r}; choose from {sorted(predictors)}")
    try:
        return predictors[model_name].tag(path, max(1, min(int(k), 10)))
    except ImageError as e:
        raise ValueError(f"{Path(path).name}: {str(e).split(': ', 1)[-1]}") from None


def geotagged_copy(path: str | Path, result: dict, folder: Path) -> Path | None:
    """A copy of a JPEG with the predicted landmark's GPS and name in its EXIF."""
    loc = result.get("location")
    data = Path(path).read_bytes()
    if not loc or data[:2] != b"\xff\xd8":
        return None
    name = result["predictions"][0]["landmark"]
    out = folder / f"{Path(path).stem}_geotagged.jpg"
    out.write_bytes(geotag_jpeg(data, loc["lat"], loc["lon"],
                                f"{name}, {loc['city']}, {loc['country']}"))
    return out


def map_html(loc: dict | None) -> str:
    """An OpenStreetMap embed centred on the landmark, with the coordinates as text."""
    if not loc:
        return "<p>No location: no known landmark in this photo.</p>"
    lat, lon, d = loc["lat"], loc["lon"], 0.02
    bbox = f"{lon - d},{lat - d},{lon + d},{lat + d}"
    place = html.escape(f"{loc['city']}, {loc['country']}")
    return (f"<p><b>{place}</b> · {lat:.4f}, {lon:.4f}</p>"
            f'<iframe title="map" width="100%" height="220" style="border:0" loading="lazy" '
            f'src="https://www.openstreetmap.org/export/embed.html?bbox={bbox}'
            f'&layer=mapnik&marker={lat},{lon}"></iframe>')


def build_demo(predictors: dict[str, Predictor]):
    import gradio as gr

    names = list(predictors)
    out_dir = Path(tempfile.mkdtemp(prefix="landmark-"))

    def tag_many(photo: str | None, files: list[str] | None, model_name: str, k: int):
        paths = [*([photo] if photo else []), *(files or [])]
        if not paths:
            raise gr.Error("Upload a photo first.")
        if len(paths) > MAX_PHOTOS:
            raise gr.Error(f"At most {MAX_PHOTOS} photos at a time.")
        items = []
        for path in paths:
            try:
                result = tag_file(predictors, path, model_name, k)
                copy = geotagged_copy(path, result, out_dir)
                items.append({"file": Path(path).name, "path": path, "result": result,
                              "geotagged": str(copy) if copy else None})
            except ValueError as e:
                items.append({"file": Path(path).name, "error": str(e)})
        return items

    def tag_api(photo: str | None, model_name: str, k: float) -> dict:
        if not photo:
            raise gr.Error("No photo given.")
        try:
            return tag_file(predictors, photo, model_name, int(k))
        except ValueError as e:
            raise gr.Error(str(e)) from None

    with gr.Blocks(title="Landmark Tagger") as demo:
        gr.Markdown("# 🗼 Landmark Tagger\nUpload a photo (or many): the model names the "
                    "landmark, places it on the map and suggests hashtags. Photos showing "
                    "no landmark it knows are reported as such.")
        with gr.Row():
            with gr.Column(scale=1):
                photo = gr.Image(type="filepath", label="Photo", height=280,
                                 sources=["upload", "clipboard"])
                files = gr.File(file_count="multiple", label="…or several photos",
                                file_types=["image", ".heic", ".heif"])
                model = gr.Dropdown(names, value=names[0], label="Model")
                k = gr.Slider(1, 10, value=3, step=1, label="Landmarks to list (top-k)")
                button = gr.Button("Tag", variant="primary")
                if EXAMPLES:
                    gr.Examples([[str(p)] for p in EXAMPLES], inputs=[photo],
                                label="Examples")
            with gr.Column(scale=2):
                results = gr.State([])

                @gr.render(inputs=results)
                def show(items: list[dict]) -> None:
                    for item in items:
                        _result_card(gr, item)

        button.click(tag_many, [photo, files, model, k], results, api_visibility="private")
        api_photo = gr.File(visible=False)
        api_model = gr.Textbox(visible=False)
        api_k = gr.Number(visible=False)
        api_out = gr.JSON(visible=False)
        api_button = gr.Button(visible=False)
        api_button.click(tag_api, [api_photo, api_model, api_k], api_out, api_name="tag")
    return demo


def _result_card(gr, item: dict) -> None:
    """One photo's results: bars, map, hashtags, JSON, geotagged download."""
    with gr.Group():
        if "error" in item:
            gr.Markdown(f"### {item['file']}\n⚠️ {item['error']}")
            return
        result = item["result"]
        top = result["predictions"][0]
        head = (f"### {item['file']}: {top['landmark']}" if result["known"] else
                f"### {item['file']}: No known landmark")
        gps = result.get("photo_gps")
        if gps:
            head += (f"\n📍 Photo GPS {gps['lat']:.4f}, {gps['lon']:.4f}: nearest known "
                     f"landmark {gps['nearest_landmark']} ({gps['distance_km']} km)")
        gr.Markdown(head)
        with gr.Row():
            gr.Image(item["path"], show_label=False, height=200, scale=1)
            gr.Label({p["landmark"]: p["confidence"] for p in result["predictions"]},
                     label="Top landmarks" + ("" if result["known"] else
                                              " (below the confidence threshold)"), scale=1)
            gr.HTML(map_html(result["location"]), scale=1)
        gr.Textbox(" ".join(result["hashtags"] + result["tags"]) or "—",
                   label="Hashtags and tags", buttons=["copy"], elem_classes="hashtags")
        with gr.Accordion("JSON", open=False):
            gr.JSON(result)
        if item["geotagged"]:
            gr.DownloadButton("Download the photo geotagged (EXIF GPS + description)",
                              value=item["geotagged"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tag", nargs="+", type=Path, metavar="PHOTO", help="tag these photos")
    p.add_argument("--model", default=None, help="model name (default: the best bundled)")
    p.add_argument("-k", type=int, default=3, help="how many landmarks to list")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    predictors = load_predictors()
    if not predictors:
        print(f"error: no model files in {MODELS_DIR}", file=sys.stderr)
        return 1
    if args.tag:
        name = args.model or next(iter(predictors))
        for photo in args.tag:
            try:
                record = tag_file(predictors, photo, name, args.k)
            except ValueError as e:
                record = {"error": str(e)}
            print(json.dumps({"file": str(photo), **record}))
        return 0
    build_demo(predictors).queue(default_concurrency_limit=2).launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", 7860)),
        max_file_size=MAX_FILE_SIZE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
