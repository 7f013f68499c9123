import pytest

from landmark.facts import all_facts, haversine_km, lookup, nearest
from tests.conftest import SHARED
from train.data import scan_split

UDACITY_50 = [
    "00.Haleakala_National_Park", "01.Mount_Rainier_National_Park", "02.Ljubljana_Castle",
    "03.Dead_Sea", "04.Wroclaws_Dwarves", "05.London_Olympic_Stadium", "06.Niagara_Falls",
    "07.Stonehenge", "08.Grand_Canyon", "09.Golden_Gate_Bridge", "10.Edinburgh_Castle",
    "11.Mount_Rushmore_National_Memorial", "12.Kantanagar_Temple",
    "13.Yellowstone_National_Park", "14.Terminal_Tower", "15.Central_Park", "16.Eiffel_Tower",
    "17.Changdeokgung", "18.Delicate_Arch", "19.Vienna_City_Hall", "20.Matterhorn",
    "21.Taj_Mahal", "22.Moscow_Raceway", "23.Externsteine", "24.Soreq_Cave",
    "25.Banff_National_Park", "26.Pont_du_Gard", "27.Seattle_Japanese_Garden",
    "28.Sydney_Harbour_Bridge", "29.Petronas_Towers", "30.Brooklyn_Bridge",
    "31.Washington_Monument", "32.Hanging_Temple", "33.Sydney_Opera_House",
    "34.Great_Barrier_Reef", "35.Monumento_a_la_Revolucion", "36.Badlands_National_Park",
    "37.Atomium", "38.Forth_Bridge", "39.Gateway_of_India", "40.Stockholm_City_Hall",
    "41.Machu_Picchu", "42.Death_Valley_National_Park", "43.Gullfoss_Falls",
    "44.Trevi_Fountain", "45.Temple_of_Heaven", "46.Great_Wall_of_China",
    "47.Prague_Astronomical_Clock", "48.Whitby_Abbey", "49.Temple_of_Olympian_Zeus"]


@pytest.mark.parametrize("folder", UDACITY_50 + scan_split(SHARED, "train").classes)
def test_every_class_has_facts(folder: str) -> None:
    fact = lookup(folder)
    assert fact is not None, folder
    assert -90 <= fact.lat <= 90 and -180 <= fact.lon <= 180
    assert fact.city and fact.country and all(h.startswith("#") for h in fact.hashtags)


def test_table_size_and_geography() -> None:
    assert len(all_facts()) == 59  # 50 Udacity + 9 offline-only classes
    paris = lookup("03.Eiffel_Tower")
    assert paris.country == "France"
    assert haversine_km(paris.lat, paris.lon, 51.5007, -0.1246) == pytest.approx(341, abs=5)
    fact, km = nearest(47.6215, -122.3480)  # a few hundred metres from the Space Needle
    assert fact.landmark == "Space Needle" and km < 1
