"""Serving: tag photos with an exported TorchScript model. Imports no training code."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import torch
from PIL import Image

from landmark.data.imageio import load_image, to_tensor
from landmark.data.layout import display_name
from landmark.export import MIN_SIDE, load_exported
from landmark.facts import lookup, nearest
from landmark.geotag import read_gps

GENERIC_HASHTAGS = ("#travel", "#landmark")
MAX_ASPECT = 6.0  # a wider strip than this (a 6:1 panorama) shows too little to call


def unusable(size: tuple[int, int]) -> str | None:
    """Why a photo of this (width, height) is refused rather than guessed, or None:
    under MIN_SIDE pixels on its short side, or longer than MAX_ASPECT times its width."""
    short, long = sorted(size)
    if short < MIN_SIDE:
        return f"too small to show a landmark ({size[0]}x{size[1]}; at least {MIN_SIDE} px " \
               "a side needed)"
    if long > MAX_ASPECT * short:
        return f"too narrow to show a landmark ({size[0]}x{size[1]}; at most " \
               f"{MAX_ASPECT:g}:1 accepted)"
    return None


def distinct_tags(tags: list[str]) -> list[str]:
    """Tags in order, without one that a longer tag already holds as whole words
    ("Leaning Tower of Pisa", "Pisa" -> the first only)."""
    def holds(a: str, b: str) -> bool:
        return a != b and f" {b.lower()} " in f" {a.lower()} "
    return [t for i, t in enumerate(tags)
            if t not in tags[:i] and not any(holds(o, t) for o in tags)]


class Predictor:
    """Loads one model file (the export contract) and returns top-k landmarks for photos."""

    def __init__(self, path: str | Path) -> None:
        exported = load_exported(path)
        self.path = Path(path)
        self.module, self.classes, self.metadata = (exported.module, exported.classes,
                                                    exported.metadata)
        preset = self.metadata.get("preset", {})
        # decode big photos at reduced scale, still well above what the model resizes to
        self.decode_side = 2 * int(preset.get("resize_size", 256))
        self.reject_threshold = float(self.metadata.get("reject_threshold", 0.0))

    def load(self, src: str | Path | BinaryIO) -> Image.Image:
        """Any photo source -> RGB PIL image, reduced for memory (raises ImageError)."""
        return load_image(src, max_side=self.decode_side)

    @torch.no_grad()
    def probabilities(self, images: list[Image.Image]) -> torch.Tensor:
        """(N, C) probabilities; photos of different sizes run one at a time."""
        return torch.cat([self.module(to_tensor(img)[None].float() / 255.0)
                          for img in images])

    def top_k(self, probs: torch.Tensor, k: int = 3) -> list[dict]:
        """Top-k [{class, landmark, confidence}] of one probability row, best first."""
        top = probs.topk(min(k, len(self.classes)))
        return [{"class": self.classes[i], "landmark": display_name(self.classes[i]),
                 "confidence": round(float(p), 4)}
                for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)]

    def record(self, probs: torch.Tensor | None, k: int = 3,
               gps: tuple[float, float] | None = None, refused: str | None = None) -> dict:
        """The tag record of one probability row: predictions, known, location, hashtags,
        tags, `reason` when no landmark is named, and the photo's own GPS with the
        nearest known landmark when it has one. A photo `refused` (see `unusable`) gets
        no predictions."""
        preds = [] if refused or probs is None else self.top_k(probs, k)
        known = bool(preds) and preds[0]["confidence"] >= self.reject_threshold
        fact = lookup(preds[0]["class"]) if known else None
        result = {"predictions": preds, "known": known,
                  "location": fact.location() if fact else None,
                  "hashtags": [*fact.hashtags, *GENERIC_HASHTAGS] if fact else [],
                  "tags": distinct_tags([fact.landmark, fact.city, fact.country])
                  if fact else []}
        if not known:
            result["reason"] = refused or (
                f"top confidence {preds[0]['confidence']:.2f} is below this model's "
                f"threshold {self.reject_threshold:.2f}")
        if gps:
            place, km = nearest(*gps)
            result["photo_gps"] = {"lat": gps[0], "lon": gps[1],
                                   "nearest_landmark": place.landmark,
                                   "distance_km": round(km, 1)}
        return result

    def tag(self, src: str | Path, k: int = 3) -> dict:
        """The full tag record of one photo file (see `record`)."""
        img = self.load(src)
        refused = unusable(img.size)
        probs = None if refused else self.probabilities([img])[0]
        return self.record(probs, k, read_gps(img), refused)
