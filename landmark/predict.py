"""Serving: tag photos with an exported TorchScript model. Imports no training code."""

from __future__ import annotations

import logging
import math
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, fields
from functools import cached_property, partial
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image

from landmark.contract import MIN_SIDE, load_exported, read_extra
from landmark.facts import display_name, lookup, nearest
from landmark.geotag import read_gps
from landmark.imageio import cache_image, load_image, to_tensor
from landmark.places import (
    Calibration,
    Place,
    PlaceError,
    PlaceIndex,
    PlaceStore,
    decide,
    model_key,
)
from landmark.places.index import stacked
from landmark.runtime import RuntimeChoiceError, choose, onnx_classifier, onnx_path

GENERIC_HASHTAGS = ("#travel", "#landmark")
log = logging.getLogger(__name__)
TAUGHT_CACHE = 32  # place stores whose index stays built (the app: one a session)
MAX_ASPECT = 6.0  # a wider strip than this (a 6:1 panorama) shows too little to call
MAX_K = 10  # landmarks a record lists at most


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


def decode_side(resize_size: int) -> int:
    """The longest side a photo is decoded at for a model resizing to `resize_size`: big
    photos are decoded at reduced scale, still well above what the model resizes to."""
    return 2 * resize_size


def stream_plan(threads: int) -> tuple[int, int]:
    """(model streams, intra-op threads each) for `threads` cores: single-threaded streams,
    at most 8. Independent streams never wait on each other, where one multi-threaded
    forward stalls at every op whenever a decoder takes one of its cores."""
    streams = max(1, min(8, threads))
    return streams, max(1, threads // streams)


@dataclass(frozen=True)
class BatchPlan:
    """How photos are grouped: the largest batch, the longest wait for one to fill, and
    how many model calls run at once."""

    max_batch: int
    max_wait_ms: float
    streams: int

    @staticmethod
    def for_device(cuda: bool | None = None) -> BatchPlan:
        """The measured default: on a CPU single photos on one stream a core (at most 8;
        bench.service: batches of one beat larger ones on this 2-core CPU), on a GPU
        batches of up to 16 on one stream."""
        if torch.cuda.is_available() if cuda is None else cuda:
            return BatchPlan(16, 5.0, 1)
        return BatchPlan(1, 0.0, stream_plan(torch.get_num_threads())[0])


class Predictor:
    """Loads one model file (the export contract) and returns top-k landmarks for photos:
    the model's classes and, with a place store, the places a user taught."""

    def __init__(self, path: str | Path, runtime: str | None = None) -> None:
        self.path = Path(path)
        self.runtime = choose(self.path, runtime)
        self.module, self.classes, self.metadata = self._load(runtime)
        preset = self.metadata.get("preset", {})
        self.resize_size = int(preset.get("resize_size", 256))
        self.interpolation = str(preset.get("interpolation", "bilinear"))
        self.decode_side = decode_side(self.resize_size)
        self.reject_threshold = float(self.metadata.get("reject_threshold", 0.0))
        chosen = self.metadata.get("places", {})
        self.calibration = Calibration(**{f.name: chosen[f.name] for f in fields(Calibration)
                                          if f.name in chosen})
        self._taught: OrderedDict[Path, tuple[tuple, PlaceIndex]] = OrderedDict()
        self._lock = threading.Lock()

    def _load(self, asked: str | None) -> tuple[torch.nn.Module, list[str], dict]:
        """(module, classes, metadata) from the chosen runtime; an ONNX twin made from
        another file falls back to TorchScript unless ONNX was asked for by name."""
        if self.runtime == "onnx":
            classes, metadata = read_extra(self.path)
            try:
                # each stream's share of the cores: parallel streams, not threads, scale
                threads = stream_plan(torch.get_num_threads())[1]
                module = onnx_classifier(onnx_path(self.path), metadata, threads, self.key)
            except RuntimeChoiceError as e:
                if (asked or os.environ.get("LANDMARK_RUNTIME")) == "onnx":
                    raise
                log.warning("%s: %s; serving it with TorchScript", self.path, e)
                self.runtime = "torchscript"
            else:
                log.info("%s: ONNX Runtime (%s)", self.path, onnx_path(self.path).name)
                return module, classes, metadata
        exported = load_exported(self.path)
        log.info("%s: TorchScript", self.path)
        return exported.module, exported.classes, exported.metadata

    def load(self, src: str | Path | BinaryIO) -> Image.Image:
        """Any photo source -> RGB PIL image, reduced for memory (raises ImageError)."""
        return load_image(src, max_side=self.decode_side)

    def prepare(self, img: Image.Image) -> torch.Tensor:
        """A decoded photo as the uint8 (3, S, S) square the model file resizes it to
        (S = its resize size): photos of any shape then stack into one batch, and the
        answer is the one `forward` gives the batch tagger and the service alike."""
        return cache_image(to_tensor(img), self.resize_size, self.interpolation)

    @torch.no_grad()
    def forward(self, squares: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, C) probabilities and (N, D) embeddings of a uint8 (N, 3, S, S) batch from
        `prepare`: the one inference path of `landmark.tag` and `landmark.serve`."""
        return self.module.probs_and_embedding(squares.float() / 255.0)

    def run(self, images: list[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, C) probabilities and (N, D) embeddings of decoded photos, from one pass
        through `prepare` and `forward`: the app, places, the batch tagger and the service
        all answer alike."""
        return self.forward(torch.stack([self.prepare(img) for img in images]))

    def top_k(self, probs: torch.Tensor, k: int = 3) -> list[dict]:
        """Top-k [{class, landmark, confidence, source}] of one probability row."""
        top = probs.topk(min(k, len(self.classes)))
        return [{"class": self.classes[i], "landmark": display_name(self.classes[i]),
                 "confidence": round(float(p), 4), "source": "model"}
                for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)]

    def taught(self, store: PlaceStore) -> PlaceIndex:
        """The index of `store`'s places under this model, updated when the store changes
        (`PlaceIndex.updated`: only new places' vectors are read; the last TAUGHT_CACHE
        stores are kept); a place this model has not embedded yet is embedded from its
        kept photos."""
        stamp = store.version()  # before reading, so a write in between updates again
        with self._lock:
            hit = self._taught.get(store.root)
            if hit is None or hit[0] != stamp:
                places = store.places()
                read = partial(self.place_vectors, store)
                hit = (stamp, hit[1].updated(places, read) if hit else PlaceIndex.build(
                    *stacked(places, read, int(self.metadata.get("embedding_dim", 1))), places))
                self._taught[store.root] = hit
            self._taught.move_to_end(store.root)
            while len(self._taught) > TAUGHT_CACHE:
                self._taught.popitem(last=False)
            return hit[1]

    @cached_property
    def key(self) -> str:
        """Which model file embeds this predictor's vectors (`model_key`), hashed once:
        every store change and every place taught needs it."""
        return model_key(self.path)

    def place_vectors(self, store: PlaceStore, place: Place) -> np.ndarray:
        """The embeddings of a place's photos under this model (computed once, stored).
        Raises PlaceError, naming the place, when the store has lost or spoilt them."""
        path = store.vectors_file(place, self.key)
        lost = (f"the place store {store.root} is corrupt: {{}} of {place.name!r}; remove "
                "the place and teach it again")
        try:
            if path.exists():
                return np.load(path)
            images = [self.load(p) for p in store.photo_files(place)]
        except (OSError, ValueError) as e:  # ImageError is a ValueError
            raise PlaceError(lost.format(f"unreadable vectors or photos ({e})")) from None
        if not images:
            raise PlaceError(lost.format("no photos and no vectors"))
        vectors = self.run(images)[1].numpy()
        store.save_vectors(place, self.key, vectors)
        return vectors

    def _candidates(self, probs: torch.Tensor, embedding: torch.Tensor | None, k: int,
                    places: PlaceStore | None) -> tuple[list[dict], Place | None, bool]:
        """The top-k of the model's classes and the best taught place, best first; that
        place; and whether the winner is named (`decide`)."""
        preds = self.top_k(probs, k)
        index = self.taught(places) if places is not None and embedding is not None else None
        place, conf = None, -1.0
        if index is not None and len(index):
            match = index.best(embedding.numpy()[None])
            place = index.places[int(match.place[0])]
            conf = float(self.calibration.confidence(match.score, match.runner_up)[0])
        wins, named = decide(preds[0]["confidence"], conf, self.reject_threshold,
                             self.calibration)
        if place is None:
            return preds, None, bool(named)
        hit = {"class": None, "landmark": place.name, "confidence": round(conf, 4),
               "source": "taught"}
        # the winner leads even when a losing place is more confident (within the margin)
        ranked = [hit, *preds] if wins else [preds[0], *sorted(
            [*preds[1:], hit], key=lambda p: -p["confidence"])]
        return ranked[:k], place if wins else None, bool(named)

    def record(self, probs: torch.Tensor | None, k: int = 3,
               gps: tuple[float, float] | None = None, refused: str | None = None,
               embedding: torch.Tensor | None = None, places: PlaceStore | None = None,
               ) -> dict:
        """The tag record of one probability row (and embedding, for `places` taught):
        predictions, known, location, hashtags, tags, `reason` when no landmark is
        named, and the photo's own GPS with the nearest known landmark when it has one.
        A photo `refused` (see `unusable`) gets no predictions. The model's best class
        and the best taught place compete by `decide`."""
        preds, place, known = ([], None, False) if refused or probs is None else \
            self._candidates(probs, embedding, k, places)
        result = {"predictions": preds, "known": known, "location": None, "hashtags": [],
                  "tags": []}
        if known and place is not None:
            loc = place.location
            result.update(location=loc and {"city": loc.city, "country": loc.country,
                                            "lat": loc.lat, "lon": loc.lon},
                          hashtags=[*place.hashtags(), *GENERIC_HASHTAGS],
                          tags=distinct_tags([place.name, *([loc.city, loc.country]
                                                            if loc else [])]))
        elif known:
            fact = lookup(preds[0]["class"])
            if fact:
                result.update(location=fact.location(),
                              hashtags=[*fact.hashtags, *GENERIC_HASHTAGS],
                              tags=distinct_tags([fact.landmark, fact.city, fact.country]))
        else:
            threshold = self.calibration.threshold if place else self.reject_threshold
            result["reason"] = refused or (
                f"top confidence {preds[0]['confidence']:.2f} is below the threshold "
                f"{threshold:.2f}")
        if gps:
            near, km = nearest(*gps)
            result["photo_gps"] = {"lat": gps[0], "lon": gps[1],
                                   "nearest_landmark": near.landmark,
                                   "distance_km": round(km, 1)}
        return result

    def tag(self, src: str | Path, k: int = 3, places: PlaceStore | None = None) -> dict:
        """The full tag record of one photo file (see `record`)."""
        img = self.load(src)
        refused = unusable(img.size)
        if refused:
            return self.record(None, k, read_gps(img), refused)
        probs, emb = self.run([img])
        return self.record(probs[0], k, read_gps(img), None, emb[0], places)
