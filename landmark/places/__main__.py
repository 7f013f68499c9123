"""Teach the tagger new places from a few photos each; no retraining.

    python -m landmark.places add "Town Hall" photos/townhall/ [--lat 47.6 --lon -122.3]
    python -m landmark.places list
    python -m landmark.places remove "Town Hall"
    python -m landmark.places import ../shared/data/new_places      # one folder a place

A place needs 3 to 20 photos. Its location is --lat/--lon, else the median GPS of its
photos, else none; the nearest town and country are looked up offline. The store is
LANDMARK_PLACES (or --store), by default ~/.local/share/landmark/places (/data/places on
Hugging Face Spaces). Every tagging path then knows the place: the app, and
`python -m landmark.tag --places`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from landmark.places.store import MAX_PHOTOS, PlaceError, PlaceStore, default_store
from landmark.places.teach import import_folder, photo_files, teach
from landmark.predict import Predictor
from landmark.resolve import available, resolve


def _predictors(models: list[str] | None) -> list[Predictor]:
    """Every model a place is embedded for at once (the others embed it on first use)."""
    paths = [resolve(m) for m in models] if models else list(available().values())
    return [Predictor(p) for p in paths]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m landmark.places", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", type=Path, default=None,
                   help=f"place store folder (default: {default_store()})")
    p.add_argument("--model", action="append", default=None,
                   help="embed for this model now (name or .pt; repeatable; default: all)")
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("add", help="teach one place")
    a.add_argument("name", help="the place's name")
    a.add_argument("photos", nargs="+", type=Path, help="3 to 20 photos, or folders of them")
    a.add_argument("--lat", type=float, default=None, help="latitude (with --lon)")
    a.add_argument("--lon", type=float, default=None, help="longitude (with --lat)")
    sub.add_parser("list", help="list the taught places")
    r = sub.add_parser("remove", help="forget a place")
    r.add_argument("name")
    i = sub.add_parser("import", help="teach every sub-folder of DIR (new_places layout)")
    i.add_argument("dir", type=Path)
    i.add_argument("--most", type=int, default=MAX_PHOTOS,
                   help=f"photos taught per place (default {MAX_PHOTOS}, the most allowed)")
    args = p.parse_args(argv)
    store = PlaceStore(args.store)
    try:
        return _run(args, store)
    except (PlaceError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, store: PlaceStore) -> int:
    if args.cmd == "list":
        places = store.places()
        for place in places:
            loc = place.location
            where = f"{loc.city}, {loc.country} ({loc.lat:.4f}, {loc.lon:.4f}; {loc.source})" \
                if loc else "no location"
            print(f"{place.name}\t{place.photos} photos\t{where}")
        print(f"{len(places)} place(s) in {store.root}", file=sys.stderr)
    elif args.cmd == "remove":
        print(f"removed {store.remove(args.name).name}")
    elif args.cmd == "add":
        place = teach(store, _predictors(args.model), args.name, photo_files(args.photos),
                      args.lat, args.lon)
        print(f"taught {place.name} ({place.photos} photos) in {store.root}")
    else:
        predictors = _predictors(args.model)
        folders = [d for d in args.dir.iterdir() if d.is_dir()] if args.dir.is_dir() else []
        if not folders:
            raise PlaceError(f"{args.dir}: no place folders in it")
        with tqdm(total=len(folders), desc="teaching", unit="place") as bar:
            taught, skipped = import_folder(store, predictors, args.dir, args.most,
                                            progress=bar.update)
        for line in skipped:
            print(f"skipped {line}", file=sys.stderr)
        print(f"taught {len(taught)} place(s), skipped {len(skipped)}, in {store.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
