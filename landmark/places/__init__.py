"""Teaching new places from a few photos, with no retraining (see store, index, teach).

    python -m landmark.places add "Name" PHOTO_OR_DIR... [--lat LAT --lon LON]
    python -m landmark.places list | remove NAME | import DIR
"""

from landmark.places.index import Calibration, Match, PlaceIndex, decide, model_key
from landmark.places.store import Location, Place, PlaceError, PlaceStore

__all__ = ["Calibration", "Location", "Match", "Place", "PlaceError", "PlaceIndex", "PlaceStore",
           "decide", "model_key"]
