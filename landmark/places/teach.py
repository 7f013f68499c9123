"""Teaching a place: check the name, photos and location, keep the photos, embed them."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from landmark.facts import display_name
from landmark.geotag import read_gps
from landmark.imageio import ImageError, list_images, load_image
from landmark.places.store import (
    KEPT_SIDE,
    MAX_PHOTOS,
    MIN_PHOTOS,
    Location,
    Place,
    PlaceError,
    PlaceStore,
    check_coordinates,
    clean_name,
    locate,
    median_gps,
)
from landmark.predict import Predictor


def photo_files(inputs: list[Path]) -> list[Path]:
    """Files named directly, and the photos below folders, in order."""
    files: list[Path] = []
    for p in inputs:
        if p.is_dir():
            files += list_images(p)
        elif p.exists():
            files.append(p)
        else:
            raise PlaceError(f"no such file or folder: {p}")
    return files


def _kept(img: Image.Image) -> bytes:
    """A photo as the store keeps it: JPEG, at most KEPT_SIDE on its long side."""
    img = img.copy()
    img.thumbnail((KEPT_SIDE, KEPT_SIDE), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def read_photos(files: list[Path | str], names: list[str] | None = None,
                ) -> list[Image.Image]:
    """Decode every photo, or raise PlaceError listing each file that is not one, and
    the count rule (MIN_PHOTOS..MAX_PHOTOS)."""
    names = names or [Path(f).name for f in files]
    if not MIN_PHOTOS <= len(files) <= MAX_PHOTOS:
        raise PlaceError(f"teach a place with {MIN_PHOTOS} to {MAX_PHOTOS} photos; "
                         f"got {len(files)}")
    images, bad = [], []
    for f, name in zip(files, names, strict=True):
        try:
            images.append(load_image(f, max_side=KEPT_SIDE))
        except ImageError as e:
            bad.append(f"{name} ({str(e).rsplit(': ', 1)[-1]})")
    if bad:
        raise PlaceError(f"{len(bad)} of {len(files)} files are not usable photos: "
                         + "; ".join(bad) + ". Nothing was taught")
    return images


def where(images: list[Image.Image], lat: float | None, lon: float | None) -> Location | None:
    """The given coordinates, else the median of the photos' own GPS, else None."""
    given = check_coordinates(lat, lon)
    if given:
        return locate(*given, "given")
    fixes = [g for g in (read_gps(img) for img in images) if g]
    point = median_gps(fixes)
    return locate(*point, f"GPS of {len(fixes)} photo(s)") if point else None


def teach(store: PlaceStore, predictors: list[Predictor], name: str, files: list[Path | str],
          lat: float | None = None, lon: float | None = None,
          names: list[str] | None = None) -> Place:
    """Check everything, then store the place and embed its photos for each model, so the
    next photo tagged can be recognised as it. Raises PlaceError; writes nothing then."""
    builtin = sorted({c for p in predictors for c in p.classes})
    name = clean_name(name, builtin)
    images = read_photos(files, names)
    location = where(images, lat, lon)
    place = store.add(name, [_kept(img) for img in images], location)
    kept = [load_image(p) for p in store.photo_files(place)]
    for predictor in predictors:
        store.save_vectors(place, predictor.key, predictor.run(kept)[1].numpy())
    return place


def import_folder(store: PlaceStore, predictors: list[Predictor], root: Path,
                  most: int = MAX_PHOTOS, progress: Callable[[], object] = lambda: None,
                  ) -> tuple[list[Place], list[str]]:
    """Teach one place per sub-folder of `root` (the new_places layout); names and
    coordinates from `root/places.json` when present, else from the folder name
    ("Comet_Falls" -> "Comet Falls"). Returns
    (places taught, one line per folder skipped and why)."""
    info_file = root / "places.json"
    info = json.loads(info_file.read_text()) if info_file.exists() else {}
    taught, skipped = [], []
    for folder in sorted(d for d in root.iterdir() if d.is_dir()):
        meta = info.get(folder.name, {})
        files = list_images(folder)[:most]
        try:
            taught.append(teach(store, predictors, meta.get("name", display_name(folder.name)),
                                files,
                                meta.get("lat"), meta.get("lon")))
        except PlaceError as e:
            skipped.append(f"{folder.name}: {e}")
        progress()
    return taught, skipped
