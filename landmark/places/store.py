"""The place store: what a user taught, kept in a folder.

The store is a folder (LANDMARK_PLACES; default /data/places on Hugging Face Spaces
where /data persists, else ~/.local/share/landmark/places):
    places.json          the places, in the order taught
    photos/SLUG/*.jpg    the taught photos, downscaled, so any model can embed them again
    vectors/MODEL/SLUG.npy   their embeddings under one model file (recomputed when missing)
Every write goes through a temporary file and a rename under a file lock, so concurrent
adds lose nothing and a crash leaves the old or the new store, never half of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import re
import shutil
import statistics
import unicodedata
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from uuid import uuid4

import numpy as np
from filelock import FileLock, Timeout

MIN_PHOTOS = 3
MAX_PHOTOS = 20
MAX_NAME = 80
KEPT_SIDE = 512  # taught photos are kept downscaled to this long side


class PlaceError(ValueError):
    """Bad input to the place store; the message says what to change."""


def default_store() -> Path:
    """LANDMARK_PLACES, else Spaces' persistent /data, else the user's data folder."""
    if os.environ.get("LANDMARK_PLACES"):
        return Path(os.environ["LANDMARK_PLACES"])
    if Path("/data").is_dir() and os.access("/data", os.W_OK):
        return Path("/data/places")
    return Path.home() / ".local" / "share" / "landmark" / "places"


@dataclass(frozen=True)
class Location:
    """Where a place is, and where that came from ("given", "photo GPS")."""

    lat: float
    lon: float
    city: str
    country: str
    source: str


@dataclass(frozen=True)
class Place:
    """A taught place, as places.json records it. `uid` is new at every add, so a place
    taught again under its old name is never the same record (indexes keep a record's
    vectors)."""

    name: str
    slug: str
    photos: int
    location: Location | None
    added: str = field(default="")
    uid: str = field(default="")

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> Place:
        return Place(**{**d, "location": Location(**d["location"]) if d["location"] else None})

    def hashtags(self) -> list[str]:
        tags = [self.name, *([self.location.city, self.location.country]
                             if self.location else [])]
        return [f"#{re.sub(r'[^0-9A-Za-z]', '', t.title())}" for t in tags
                if re.sub(r"[^0-9A-Za-z]", "", t)]


def clean_name(name: str, builtin: list[str]) -> str:
    """A place name as stored: trimmed text without control characters (HTML is kept as
    text and escaped wherever shown). Raises PlaceError for an empty, overlong or
    built-in name."""
    name = unicodedata.normalize("NFC", str(name or "")).strip()
    if any(unicodedata.category(ch).startswith("C") for ch in name):
        raise PlaceError("a place name cannot hold control characters (tabs, newlines...)")
    if not name:
        raise PlaceError("give the place a name")
    if len(name) > MAX_NAME:
        raise PlaceError(f"a place name has at most {MAX_NAME} characters")
    key = _key(name)
    clash = next((b for b in builtin if _key(b) == key), None)
    if clash:
        raise PlaceError(f"{name!r} is one of the model's own landmarks ({clash}); "
                         "choose another name")
    return name


def _key(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", re.sub(r"^\d+\.", "", name).lower())


def slugify(name: str) -> str:
    """A folder name for a place: ASCII letters and digits, plus a short hash, so two
    names that differ only in accents or punctuation never share a folder."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    base = re.sub(r"[^0-9a-z]+", "-", ascii_name.lower()).strip("-")[:40] or "place"
    return f"{base}-{hashlib.sha1(name.encode()).hexdigest()[:6]}"


def check_coordinates(lat: float | None, lon: float | None) -> tuple[float, float] | None:
    """(lat, lon) when both are given and in range, None when neither; PlaceError else."""
    if lat is None and lon is None:
        return None
    if lat is None or lon is None:
        raise PlaceError("give both latitude and longitude, or neither")
    if not (math.isfinite(lat) and math.isfinite(lon) and -90 <= lat <= 90
            and -180 <= lon <= 180):
        raise PlaceError(f"coordinates out of range: {lat}, {lon} (latitude -90..90, "
                         "longitude -180..180)")
    return float(lat), float(lon)


@cache
def _geocoder() -> object:
    import reverse_geocoder
    with contextlib.redirect_stdout(io.StringIO()):  # it announces its data file
        reverse_geocoder.search([(0.0, 0.0)], mode=1)
    return reverse_geocoder


def locate(lat: float, lon: float, source: str) -> Location:
    """A Location with the nearest town and its country, offline (reverse_geocoder's
    GeoNames table of places over 1,000 people)."""
    import pycountry
    hit = _geocoder().search([(lat, lon)], mode=1)[0]
    country = pycountry.countries.get(alpha_2=hit["cc"])
    return Location(round(lat, 6), round(lon, 6), hit["name"],
                    country.name if country else hit["cc"], source)


def median_gps(points: list[tuple[float, float]]) -> tuple[float, float] | None:
    """The median position of photos' GPS fixes, robust to a stray one."""
    if not points:
        return None
    return statistics.median(p[0] for p in points), statistics.median(p[1] for p in points)


class PlaceStore:
    """The taught places in one folder (see the module doc). Reads are lock-free;
    writes hold `store.lock`."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root else default_store()
        self.index_file = self.root / "places.json"

    def _lock(self) -> FileLock:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise PlaceError(f"cannot create the place store {self.root}: {e.strerror}") from None
        return FileLock(self.root / "store.lock", timeout=30)

    def places(self) -> list[Place]:
        """Every taught place, in the order taught. Raises PlaceError on a corrupt store."""
        if not self.index_file.exists():
            return []
        try:
            return [Place.from_dict(d) for d in json.loads(self.index_file.read_text())]
        except (ValueError, TypeError, KeyError) as e:
            raise PlaceError(f"{self.index_file} is corrupt ({e}); move it away to start "
                             "a new store") from None

    def version(self) -> tuple[int, int, int] | None:
        """A token that changes whenever the list of places does (every write replaces
        places.json): its inode, size and modification time; None while nothing is
        taught. A stat, so a tag need not parse a list of thousands of places."""
        try:
            st = self.index_file.stat()
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def get(self, name: str) -> Place | None:
        return next((p for p in self.places() if p.name.casefold() == name.casefold()), None)

    def _write(self, places: list[Place]) -> None:
        tmp = self.index_file.with_name(f".places.{os.getpid()}.tmp")
        tmp.write_text(json.dumps([p.to_dict() for p in places], indent=2, ensure_ascii=False))
        tmp.replace(self.index_file)

    def add(self, name: str, photos: list[bytes], location: Location | None) -> Place:
        """Store a new place with its photos (JPEG bytes, already checked and downscaled)."""
        try:
            with self._lock():
                places = self.places()
                if any(p.name.casefold() == name.casefold() for p in places):
                    raise PlaceError(f"a place named {name!r} exists already; remove it first "
                                     "or choose another name")
                place = Place(name, slugify(name), len(photos), location,
                              datetime.now(UTC).isoformat(timespec="seconds"), uuid4().hex)
                folder = self.root / "photos" / place.slug
                tmp = folder.with_name(f".{place.slug}.tmp")
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
                for i, data in enumerate(photos):
                    (tmp / f"{i:02d}.jpg").write_bytes(data)
                shutil.rmtree(folder, ignore_errors=True)
                tmp.replace(folder)
                self._write([*places, place])
                return place
        except Timeout:
            raise PlaceError(f"the place store {self.root} is busy; try again") from None
        except PermissionError as e:
            raise PlaceError(f"the place store {self.root} is read-only ({e.strerror})") from None

    def remove(self, name: str) -> Place:
        """Forget a place, its photos and its vectors."""
        try:
            with self._lock():
                places = self.places()
                place = next((p for p in places if p.name.casefold() == name.casefold()), None)
                if place is None:
                    raise PlaceError(f"no place named {name!r}")
                self._write([p for p in places if p is not place])
                shutil.rmtree(self.root / "photos" / place.slug, ignore_errors=True)
                for vec in (self.root / "vectors").glob(f"*/{place.slug}.npy"):
                    vec.unlink(missing_ok=True)
                return place
        except PermissionError as e:
            raise PlaceError(f"the place store {self.root} is read-only ({e.strerror})") from None

    def photo_files(self, place: Place) -> list[Path]:
        return sorted((self.root / "photos" / place.slug).glob("*.jpg"))

    def vectors_file(self, place: Place, model_key: str) -> Path:
        return self.root / "vectors" / model_key / f"{place.slug}.npy"

    def save_vectors(self, place: Place, model_key: str, vectors: np.ndarray) -> None:
        path = self.vectors_file(place, model_key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npy")
        np.save(tmp, vectors.astype(np.float32))
        tmp.replace(path)


