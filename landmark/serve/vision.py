"""Google Cloud Vision's `images:annotate` for LANDMARK_DETECTION: the request as Google's
clients send it (camelCase or snake_case, the feature type as a name or its enum number)
and the response built from a tag record.

Only LANDMARK_DETECTION is answered; other feature types in the same request are ignored,
and a request that asks for none gets an error of its own.
"""

from __future__ import annotations

import base64
import binascii

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from landmark.facts import display_name, lookup
from landmark.places import Place
from landmark.predict import MAX_K
from landmark.serve.errors import PhotoError

LANDMARK_DETECTION = 2  # google.cloud.vision.v1.Feature.Type
MAX_IMAGES = 16  # images a call, as Google allows
DEFAULT_RESULTS = 10  # Google's default maxResults


def _field(name: str, snake: str) -> object:
    return Field(default=None, validation_alias=AliasChoices(name, snake))


class ImageSource(BaseModel):
    model_config = ConfigDict(extra="ignore")
    image_uri: str | None = _field("imageUri", "image_uri")
    gcs_image_uri: str | None = _field("gcsImageUri", "gcs_image_uri")


class Image(BaseModel):
    model_config = ConfigDict(extra="ignore")
    content: str | None = None
    source: ImageSource | None = None


class Feature(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: int | str = 0
    max_results: int | None = _field("maxResults", "max_results")
    model: str | None = None

    def is_landmark(self) -> bool:
        return self.type in (LANDMARK_DETECTION, "LANDMARK_DETECTION")


class AnnotateImageRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    image: Image
    features: list[Feature] = []

    def landmark_feature(self) -> Feature:
        """The LANDMARK_DETECTION feature asked for, or PhotoError."""
        found = next((f for f in self.features if f.is_landmark()), None)
        if found is None:
            raise PhotoError("INVALID_ARGUMENT", "this server answers LANDMARK_DETECTION "
                             "only; add it to features")
        return found

    def results(self) -> int:
        """How many landmarks to list: maxResults, within 1..MAX_K (Google's default 10)."""
        wanted = self.landmark_feature().max_results
        return max(1, min(MAX_K, wanted if wanted else DEFAULT_RESULTS))


class BatchAnnotateImagesRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    requests: list[AnnotateImageRequest] = Field(min_length=1)


def content_bytes(image: Image) -> bytes:
    """The photo's bytes from `image.content` (base64), or PhotoError."""
    try:
        return base64.b64decode(image.content or "", validate=True)
    except (binascii.Error, ValueError):
        raise PhotoError("INVALID_ARGUMENT", "image.content is not valid base64") from None


def mid(prediction: dict, place: Place | None) -> str:
    """A stable id for a landmark: its Wikidata id where known, `landmark:CLASS` for a
    class without one, `place:UID` for a taught place."""
    if place is not None:
        return f"place:{place.uid}"
    fact = lookup(prediction["class"])
    return fact.wikidata if fact and fact.wikidata else f"landmark:{prediction['class']}"


def _where(prediction: dict, place: Place | None) -> list[dict]:
    loc = place.location if place is not None else lookup(prediction["class"])
    return [{"latLng": {"latitude": loc.lat, "longitude": loc.lon}}] if loc else []


def annotations(record: dict, size: tuple[int, int], places: dict[str, Place],
                ) -> list[dict]:
    """landmarkAnnotations for one tag record: its predictions when it names a landmark
    (best first), none when it does not (Google answers such a photo with `{}`).
    `boundingPoly` is the whole photo, in its pixels: the model does not localise."""
    if not record["known"]:
        return []
    w, h = size
    poly = {"vertices": [{"x": 0, "y": 0}, {"x": w, "y": 0}, {"x": w, "y": h},
                         {"x": 0, "y": h}]}
    out = []
    for p in record["predictions"]:
        place = places.get(p["landmark"]) if p["source"] == "taught" else None
        out.append({"mid": mid(p, place),
                    "description": p["landmark"] if place else display_name(p["class"]),
                    "score": p["confidence"], "boundingPoly": poly,
                    "locations": _where(p, place)})
    return out
