"""Landmark Tagger: upload a photo, get the landmark it shows.

    python app.py                 serve the web demo on 127.0.0.1:7860 (GRADIO_SERVER_PORT)
    python app.py --tag PHOTO...  tag photos from the command line and print JSON
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from landmark.data.imageio import ImageError
from landmark.predict import Predictor

MODELS_DIR = Path(__file__).parent / "models"


def find_models(folder: Path = MODELS_DIR) -> dict[str, Path]:
    """Model name (file stem) -> path, for every TorchScript file bundled in `folder`."""
    return {p.stem: p for p in sorted(folder.glob("*.pt"))}


def build_demo(predictors: dict[str, Predictor]):
    import gradio as gr

    def tag(image, model_name: str, k: int):
        if image is None:
            raise gr.Error("Upload a photo first.")
        preds = predictors[model_name].predict(image, int(k))
        return {p["landmark"]: p["confidence"] for p in preds}, {"predictions": preds}

    with gr.Blocks(title="Landmark Tagger") as demo:
        gr.Markdown("# Landmark Tagger\nUpload a photo: the model names the landmark it shows.")
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="pil", label="Photo")
                model = gr.Dropdown(list(predictors), value=next(iter(predictors)),
                                    label="Model")
                k = gr.Slider(1, 10, value=3, step=1, label="Top-k")
                button = gr.Button("Tag", variant="primary")
            with gr.Column():
                label = gr.Label(label="Landmarks")
                raw = gr.JSON(label="Result")
        button.click(tag, [image, model, k], [label, raw], api_name="tag")
    return demo


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tag", nargs="+", type=Path, metavar="PHOTO", help="tag these photos")
    p.add_argument("--model", default="scratch", help="bundled model name (default scratch)")
    p.add_argument("-k", type=int, default=3, help="how many landmarks to list")
    args = p.parse_args(argv)
    models = find_models()
    if not models:
        print(f"error: no model files in {MODELS_DIR}", file=sys.stderr)
        return 1
    if args.tag:
        predictor = Predictor(models[args.model])
        for photo in args.tag:
            try:
                print(json.dumps({"file": str(photo), "predictions":
                                  predictor.predict(photo, args.k)}))
            except ImageError as e:
                print(json.dumps({"file": str(photo), "error": str(e)}))
        return 0
    predictors = {name: Predictor(path) for name, path in models.items()}
    build_demo(predictors).launch(server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                                  server_port=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
