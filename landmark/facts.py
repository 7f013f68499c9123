"""Where each landmark is, and the hashtags that go with it (landmark/facts.csv).

Covers the 50 classes of the Udacity landmark dataset and the 19 offline classes; rows
are keyed by display name, so "16.Eiffel_Tower" and "03.Eiffel_Tower" share one row.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

FACTS_CSV = Path(__file__).with_name("facts.csv")


def display_name(folder: str) -> str:
    """A class folder's landmark name: '05.Golden_Gate_Bridge' -> 'Golden Gate Bridge'."""
    return re.sub(r"^\d+\.", "", folder).replace("_", " ").strip()


@dataclass(frozen=True)
class Fact:
    landmark: str
    city: str
    country: str
    lat: float
    lon: float
    hashtags: tuple[str, ...]
    wikidata: str = ""  # its Wikidata id, where one was recorded

    def location(self) -> dict:
        return {"city": self.city, "country": self.country, "lat": self.lat, "lon": self.lon}


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", display_name(name).lower())


@cache
def all_facts() -> dict[str, Fact]:
    """Normalised landmark name -> Fact."""
    with open(FACTS_CSV, newline="", encoding="utf-8") as f:
        return {_key(r["landmark"]): Fact(r["landmark"], r["city"], r["country"],
                                          float(r["lat"]), float(r["lon"]),
                                          tuple(r["hashtags"].split()), r.get("wikidata", ""))
                for r in csv.DictReader(f)}


def lookup(class_name: str) -> Fact | None:
    """The Fact for a class folder name or display name, if known."""
    return all_facts().get(_key(class_name))


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in kilometres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0088 * math.asin(math.sqrt(a))


def nearest(lat: float, lon: float) -> tuple[Fact, float]:
    """The known landmark closest to (lat, lon) and its distance in km."""
    return min(((f, haversine_km(lat, lon, f.lat, f.lon)) for f in all_facts().values()),
               key=lambda t: t[1])
