"""Serving: tag photos with an exported TorchScript model. Imports no training code."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image

from landmark.data.imageio import load_image
from landmark.data.layout import display_name
from landmark.export import load_exported
from landmark.facts import lookup, nearest
from landmark.geotag import read_gps

GENERIC_HASHTAGS = ("#travel", "#landmark")


def upscale_tiny(img: Image.Image, side: int = 32) -> Image.Image:
    """The contract wants photos of at least 32 px a side: upscale tinier ones, aspect
    kept (bicubic); others pass unchanged."""
    if min(img.size) >= side:
        return img
    scale = side / min(img.size)
    return img.resize((max(side, round(img.width * scale)),
                       max(side, round(img.height * scale))), Image.BICUBIC)


class Predictor:
    """Loads one model file (the export contract) and returns top-k landmarks for photos."""

    def __init__(self, path: str | Path) -> None:
        exported = load_exported(path)
        self.path = Path(path)
        self.module, self.classes, self.metadata = (exported.module, exported.classes,
                                                    exported.metadata)
        preset = self.metadata.get("preset", {})
        # decode big JPEGs at reduced scale, still well above what the model resizes to
        self.decode_side = 2 * int(preset.get("resize_size", 256))
        self.reject_threshold = float(self.metadata.get("reject_threshold", 0.0))

    def load(self, src: str | Path | BinaryIO | Image.Image) -> Image.Image:
        """Any photo source -> RGB PIL image (raises ImageError on bad input)."""
        img = src.convert("RGB") if isinstance(src, Image.Image) else load_image(
            src, max_side=self.decode_side)
        factor = min(img.size) // self.decode_side
        # a huge PNG/HEIC: box-downscale first, so memory stays bounded
        return img.reduce(factor) if factor >= 2 else img

    @torch.no_grad()
    def probabilities(self, images: list[Image.Image]) -> torch.Tensor:
        """(N, C) probabilities; photos of different sizes run one at a time."""
        out = []
        for img in images:
            x = torch.from_numpy(np.asarray(upscale_tiny(img)).copy()).permute(2, 0, 1)
            x = x.float() / 255.0
            out.append(self.module(x[None]))
        return torch.cat(out)

    def top_k(self, probs: torch.Tensor, k: int = 3) -> list[dict]:
        """Top-k [{class, landmark, confidence}] of one probability row, best first."""
        top = probs.topk(min(k, len(self.classes)))
        return [{"class": self.classes[i], "landmark": display_name(self.classes[i]),
                 "confidence": round(float(p), 4)}
                for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)]

    def predict(self, src: str | Path | BinaryIO | Image.Image, k: int = 3) -> list[dict]:
        """Top-k [{class, landmark, confidence}] for one photo, best first."""
        return self.top_k(self.probabilities([self.load(src)])[0], k)

    def record(self, probs: torch.Tensor, k: int = 3,
               gps: tuple[float, float] | None = None) -> dict:
        """The tag record of one probability row: predictions, known, location, hashtags,
        tags, and the photo's own GPS with the nearest known landmark when it has one."""
        preds = self.top_k(probs, k)
        known = bool(preds) and preds[0]["confidence"] >= self.reject_threshold
        fact = lookup(preds[0]["class"]) if known else None
        result = {"predictions": preds, "known": known,
                  "location": fact.location() if fact else None,
                  "hashtags": [*fact.hashtags, *GENERIC_HASHTAGS] if fact else [],
                  "tags": [fact.landmark, fact.city, fact.country] if fact else []}
        if gps:
            place, km = nearest(*gps)
            result["photo_gps"] = {"lat": gps[0], "lon": gps[1],
                                   "nearest_landmark": place.landmark,
                                   "distance_km": round(km, 1)}
        return result

    def tag(self, src: str | Path | BinaryIO, k: int = 3) -> dict:
        """The full tag record of one photo (see `record`)."""
        probs = self.probabilities([self.load(src)])[0]
        return self.record(probs, k, read_gps(src) if isinstance(src, (str, Path)) else None)
