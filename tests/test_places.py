"""Teaching new places: the store, its checks, recognition and the command line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch

from landmark.geotag import geotag_jpeg
from landmark.imageio import list_images
from landmark.places import Place, PlaceError, PlaceIndex, PlaceStore
from landmark.places import index as place_index
from landmark.places.teach import teach
from landmark.predict import Predictor
from landmark.resolve import MODELS_DIR
from tests.conftest import REPO, SHARED

NEW_PLACES = SHARED.parent / "new_places"
FALLS = NEW_PLACES / "Comet_Falls"  # 9 photos the shipped transfer model tells apart


@pytest.fixture(scope="module")
def transfer() -> Predictor:
    return Predictor(MODELS_DIR / "transfer.pt")


@pytest.fixture
def store(tmp_path: Path) -> PlaceStore:
    return PlaceStore(tmp_path / "store")


def _photos(folder: Path = FALLS) -> list[Path]:
    photos = list_images(folder)
    if not photos:
        pytest.fail(f"shared photos missing: {folder}")
    return photos


def test_taught_place_is_recognised_at_once_and_forgotten(transfer: Predictor,
                                                          store: PlaceStore) -> None:
    photos = _photos()
    place = teach(store, [transfer], "Comet Falls", photos[:5], 46.7806, -121.7715)
    assert place.location.country == "United States" and place.location.source == "given"
    records = [transfer.tag(p, 3, store) for p in photos[5:]]
    named = [r for r in records if r["known"] and r["predictions"][0]["source"] == "taught"]
    assert len(named) >= 2, records
    top = named[0]["predictions"][0]
    assert top["landmark"] == "Comet Falls" and top["class"] is None
    assert 0 < top["confidence"] <= 1
    assert named[0]["location"]["lat"] == pytest.approx(46.7806)
    assert "#CometFalls" in named[0]["hashtags"] and named[0]["tags"][0] == "Comet Falls"
    # a landmark the model knows is still the model's
    eiffel = transfer.tag(REPO / "examples" / "eiffel_tower.jpg", 3, store)
    assert eiffel["predictions"][0]["class"] == "03.Eiffel_Tower" and eiffel["known"]
    store.remove("comet falls")
    assert all(transfer.tag(p, 3, store)["predictions"][0]["source"] == "model"
               for p in photos[5:])
    assert not list((store.root / "photos").iterdir())
    assert not list((store.root / "vectors").rglob("*.npy"))


def test_tagging_reads_the_list_of_places_only_when_it_changes(
        transfer: Predictor, store: PlaceStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tag costs a stat of places.json, not a parse of every place: with thousands of
    places the parse alone took 19 ms a tag (5,000) to 151 ms (20,000). A change updates
    the index, reading only the new place's vectors
    (`test_a_store_change_reads_only_new_places_and_keeps_the_ivf_lists_while_they_suit`)."""
    monkeypatch.setattr(place_index, "EXACT_MAX", 2)  # an IVF index from the first place
    assert store.version() is None
    teach(store, [transfer], "Comet Falls", _photos()[:3])
    first = store.version()
    reads, vectors_read = [], []
    real, real_vectors = store.places, transfer.place_vectors
    monkeypatch.setattr(store, "places", lambda: reads.append(1) or real())
    monkeypatch.setattr(transfer, "place_vectors", lambda s, p: vectors_read.append(
        p.name) or real_vectors(s, p))
    query = _photos()[5]
    transfer.tag(query, 3, store)
    assert len(reads) == 1  # the index is built once...
    trained_on = transfer.taught(store).trained_on
    transfer.tag(query, 3, store)
    transfer.tag(query, 3, store)
    assert len(reads) == 1  # ...and kept while the store is unchanged
    teach(store, [transfer], "Diablo Lake", _photos(NEW_PLACES / "Diablo_Lake")[:3])
    assert store.version() != first
    reads.clear()
    transfer.tag(query, 3, store)
    assert len(reads) == 1 and vectors_read == ["Comet Falls", "Diablo Lake"]
    assert [p.name for p in transfer.taught(store).places] == ["Comet Falls", "Diablo Lake"]
    assert transfer.taught(store).trained_on is trained_on and trained_on
    store.remove("Diablo Lake")
    assert [p.name for p in transfer.taught(store).places] == ["Comet Falls"]
    assert transfer.taught(store).trained_on is trained_on
    assert vectors_read == ["Comet Falls", "Diablo Lake"]


def test_a_place_taught_again_at_once_is_tagged_with_its_new_photos(
        transfer: Predictor, store: PlaceStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """The next index keeps the vectors of every place whose record is unchanged, so a
    place removed and taught again under the same name, with as many other photos, in
    the same second (the clock stopped here), must still be a new record."""
    from landmark.places import store as store_module
    now = datetime.now(UTC)
    monkeypatch.setattr(store_module, "datetime", type("Clock", (), {"now": lambda _tz: now}))
    transfer.tag(_photos()[0], 3, store)
    teach(store, [transfer], "Comet Falls", _photos()[:3])
    transfer.tag(_photos()[0], 3, store)
    store.remove("Comet Falls")
    teach(store, [transfer], "Comet Falls", _photos()[3:6])
    new = transfer.run([transfer.load(p) for p in store.photo_files(store.places()[0])])[1]
    want = torch.nn.functional.normalize(new.sum(0), dim=0).numpy()
    assert np.allclose(transfer.taught(store).prototypes[0], want, atol=1e-5)


def test_location_comes_from_the_photos_gps(transfer: Predictor, store: PlaceStore,
                                            tmp_path: Path) -> None:
    fixes = [(47.6205, -122.3493), (47.6206, -122.3490), (47.6204, -122.3495), (10.0, 10.0)]
    photos = []
    for i, (src, (lat, lon)) in enumerate(zip(_photos(), fixes, strict=False)):
        out = tmp_path / f"{i}.jpg"
        out.write_bytes(geotag_jpeg(src.read_bytes(), lat, lon, "x"))
        photos.append(out)
    place = teach(store, [transfer], "Needle Park", photos)
    loc = place.location
    assert loc.source == "GPS of 4 photo(s)" and loc.city == "Seattle"
    assert (loc.lat, loc.lon) == pytest.approx((47.62045, -122.34915), abs=1e-6)  # median


@pytest.mark.parametrize(("name", "files", "coords", "message"), [
    ("Two Photos", 2, None, "3 to 20 photos"),
    ("", 5, None, "give the place a name"),
    ("Tab\there", 5, None, "control characters"),
    ("Eiffel tower", 5, None, "one of the model's own landmarks"),
    ("Far Away", 5, (95.0, 0.0), "out of range"),
    ("Half", 5, (45.0, None), "both latitude and longitude"),
])
def test_bad_input_is_one_clear_message_and_writes_nothing(
        transfer: Predictor, store: PlaceStore, name: str, files: int,
        coords: tuple | None, message: str) -> None:
    lat, lon = coords or (None, None)
    with pytest.raises(PlaceError, match=message):
        teach(store, [transfer], name, _photos()[:files], lat, lon)
    assert store.places() == []
    assert not (store.root / "photos").exists() or not list((store.root / "photos").iterdir())


def test_non_images_among_the_photos_are_listed(transfer: Predictor, store: PlaceStore,
                                                tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo")
    with pytest.raises(PlaceError, match=r"1 of 5 files are not usable photos: notes.txt"):
        teach(store, [transfer], "Falls", [*_photos()[:4], notes])
    assert store.places() == []


def test_names_are_text_and_unique(transfer: Predictor, store: PlaceStore) -> None:
    html = '<img src=x onerror="alert(1)">'
    place = teach(store, [transfer], html, _photos()[:3])
    assert store.get(html).name == html and place.slug.startswith("img-src-x")
    with pytest.raises(PlaceError, match="exists already"):
        teach(store, [transfer], html.upper(), _photos()[3:6])
    with pytest.raises(PlaceError, match="no place named"):
        store.remove("nowhere")


def test_concurrent_adds_lose_nothing(transfer: Predictor, store: PlaceStore) -> None:
    names = [f"Place {i}" for i in range(6)]
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda n: teach(store, [transfer], n, _photos()[:3]), names))
    assert sorted(p.name for p in store.places()) == names
    assert len(list((store.root / "photos").iterdir())) == 6


def test_corrupt_or_unwritable_store_is_one_clear_message(transfer: Predictor,
                                                         store: PlaceStore) -> None:
    teach(store, [transfer], "Falls", _photos()[:3])
    store.index_file.write_text("{ not json")
    with pytest.raises(PlaceError, match="corrupt"):
        store.places()
    with pytest.raises(PlaceError, match="corrupt"):
        transfer.tag(_photos()[4], 3, store)
    blocked = store.root.parent / "a_file"
    blocked.write_text("in the way")
    with pytest.raises(PlaceError, match="cannot create the place store"):
        teach(PlaceStore(blocked / "store"), [transfer], "Falls again", _photos()[:3])


def test_a_place_whose_photos_and_vectors_are_gone_is_one_clear_message(
        transfer: Predictor, store: PlaceStore) -> None:
    """Tagging used to fail with torch's "expected a non-empty list of Tensors", and an
    unreadable kept photo was blamed on the photo being tagged."""
    teach(store, [transfer], "Falls", _photos()[:3])
    photos, query = store.root / "photos", _photos()[4]
    (next(photos.iterdir()) / "00.jpg").write_bytes(b"not a photo")
    shutil.rmtree(store.root / "vectors")
    with pytest.raises(PlaceError, match=r"corrupt: unreadable vectors or photos .* of 'Falls'"):
        transfer.tag(query, 3, store)
    shutil.rmtree(photos)
    with pytest.raises(PlaceError, match="corrupt: no photos and no vectors of 'Falls'; remove"):
        transfer.tag(query, 3, store)
    store.remove("Falls")
    assert transfer.tag(query, 3, store)["predictions"]


def test_ivf_past_the_exact_size_finds_the_same_places(monkeypatch: pytest.MonkeyPatch,
                                                       ) -> None:
    gen = np.random.default_rng(0)
    vectors = gen.normal(size=(3000, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    owners = np.arange(3000) // 10
    queries = vectors[::7] + 0.05 * gen.normal(size=(429, 64)).astype(np.float32)
    exact = PlaceIndex.build(vectors, owners, [])
    monkeypatch.setattr(place_index, "EXACT_MAX", 1000)
    approx = PlaceIndex.build(vectors, owners, [])
    assert isinstance(approx.index, faiss.IndexIVFFlat) and approx.index.nlist == 64
    assert isinstance(exact.index, faiss.IndexFlatIP) and len(approx) == len(exact) == 3000
    same = (exact.best(queries).place == approx.best(queries).place).mean()
    assert same > 0.98


def test_a_store_change_reads_only_new_places_and_keeps_the_ivf_lists_while_they_suit(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The first tag after a change rebuilt the index from every place's vector file
    (1e5 1840-d vectors: 2.0 s, most of it reading and stacking them). The next index is
    now the last one copied, without the places gone and with only the new places' vectors
    read and filed into its lists, while the lists suit the store."""
    monkeypatch.setattr(place_index, "EXACT_MAX", 1000)
    gen = np.random.default_rng(0)

    def unit(n: int) -> np.ndarray:
        v = gen.normal(size=(n, 64)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def places(prefix: str, n: int = 300) -> list[Place]:
        return [Place(f"{prefix}{i}", f"{prefix}{i}", 10, None) for i in range(n)]

    vectors, owners, old = unit(3000), np.arange(3000) // 10, places("p")
    first = PlaceIndex.build(vectors, owners, old)
    assert first.index.nlist == 64
    new, read = unit(10), []

    def reader(store: dict[str, np.ndarray]):
        return lambda p: read.append(p.name) or store[p.name]

    more = [*old, Place("New", "new", 10, None)]
    added = first.updated(more, reader({"New": new}))
    assert read == ["New"]  # the places it held are not read again
    assert first.index.ntotal == 3000 and added.index.ntotal == 3010  # a copy: searches safe
    centroids = [i.quantizer.reconstruct_n(0, 64) for i in (first.index, added.index)]
    assert np.array_equal(*centroids)  # the same lists
    assert (added.best(new).place == 300).all()
    assert (added.best(vectors[::100]).place == owners[::100]).all()
    assert np.allclose(added.prototypes, PlaceIndex.build(
        np.vstack([vectors, new]), np.r_[owners, np.full(10, 300)], more).prototypes, atol=1e-6)
    # a place removed leaves the index, and the rows of the places after it move up
    read.clear()
    fewer = added.updated(more[1:], reader({}))
    assert read == [] and fewer.index.ntotal == 3000
    assert (fewer.best(new).place == 299).all()
    assert (fewer.best(vectors[10::100]).place == owners[10::100] - 1).all()
    assert np.array_equal(fewer.prototypes, added.prototypes[1:])
    # taught again under the same name (another record): its new photos replace the old
    retaught = [replace(more[1], added="later"), *more[2:]]
    other = unit(10)
    again = fewer.updated(retaught, reader({"p1": other}))
    assert read == ["p1"] and again.index.ntotal == 3000 - 10 + 10
    assert (again.best(other).place == 0).all()
    assert (again.best(vectors[10:20]).place != 0).all()
    # a store mostly of places the lists never saw, or grown past their size: built anew
    replaced = again.updated(places("q"), reader({p.name: unit(10) for p in places("q")}))
    assert replaced.trained_on == frozenset(places("q")) and replaced.index.nlist == 64
    grown = first.updated(places("p", 1200), reader({f"p{i}": unit(10) for i in range(1200)}))
    assert grown.index.nlist == 256 and grown.trained_on == frozenset(places("p", 1200))


@pytest.mark.parametrize("exact_max", [10_000, 300])  # exact, and IVF past 300 vectors
def test_a_run_of_random_changes_keeps_every_place_findable(
        monkeypatch: pytest.MonkeyPatch, exact_max: int) -> None:
    """Adds, removals and re-teachings in a random order: after each change the updated
    index holds exactly the store's vectors, finds every stored photo's own place, and
    has the prototypes a fresh build has."""
    monkeypatch.setattr(place_index, "EXACT_MAX", exact_max)
    gen = np.random.default_rng(2)
    vectors: dict[Place, np.ndarray] = {}

    def teach_one(i: int) -> None:  # a place's photos lie around one direction, as photos do
        v = (gen.normal(size=32) + 0.7 * gen.normal(size=(int(gen.integers(3, 21)), 32))
             ).astype(np.float32)
        vectors[Place(f"p{i}", f"p{i}", len(v), None, uid=str(gen.random()))] = \
            v / np.linalg.norm(v, axis=1, keepdims=True)

    for i in range(40):
        teach_one(i)
    index = PlaceIndex.build(*place_index.stacked(list(vectors), vectors.get, 32),
                             list(vectors))
    for step in range(30):
        places = list(vectors)
        if step % 3 == 0:
            del vectors[places[int(gen.integers(len(places)))]]
        elif step % 3 == 1:
            old = places[int(gen.integers(len(places)))]
            del vectors[old]
            teach_one(int(old.name[1:]))  # taught again: a new record, other photos
        else:
            teach_one(100 + step)
        places = list(vectors)
        index = index.updated(places, vectors.get)
        stacked, owners = place_index.stacked(places, vectors.get, 32)
        assert len(index) == len(stacked) and index.places == places
        assert (index.best(stacked).place == owners).all()
        assert np.allclose(index.prototypes, PlaceIndex.build(stacked, owners, places)
                           .prototypes, atol=1e-5)
    assert isinstance(index.index, faiss.IndexIVF) == (exact_max == 300)


def test_an_exact_index_reuses_the_vectors_it_holds() -> None:
    gen = np.random.default_rng(1)
    vectors = gen.normal(size=(30, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ps = [Place(f"p{i}", f"p{i}", 10, None) for i in range(3)]
    two = PlaceIndex.build(vectors[:20], np.arange(20) // 10, ps[:2])
    reads = []
    three = two.updated([ps[1], ps[2]], lambda p: reads.append(p.name) or vectors[20:])
    assert reads == ["p2"] and isinstance(three.index, faiss.IndexFlatIP)
    fresh = PlaceIndex.build(vectors[10:30], np.arange(20) // 10, [ps[1], ps[2]])
    assert np.array_equal(three.best(vectors).place, fresh.best(vectors).place)
    assert np.allclose(three.prototypes, fresh.prototypes)
    empty = PlaceIndex.build(np.zeros((0, 16), np.float32), np.zeros(0, np.int64), [])
    assert len(empty.updated(ps[:1], lambda p: vectors[:10])) == 10


def test_a_place_scores_by_its_nearest_photo_and_its_prototype() -> None:
    """Place A has the single nearest photo but points elsewhere on average; place B's
    photos all sit near the query: B wins, scored (nearest + prototype cosine) / 2."""
    r = np.sqrt
    a = [[0.9, r(1 - 0.81), 0], [-0.5, 0, r(0.75)], [-0.5, 0, -r(0.75)]]
    b = [[0.85, r(1 - 0.85**2), 0], [0.85, -r(1 - 0.85**2), 0]]
    index = PlaceIndex.build(np.array(a + b, np.float32), np.array([0, 0, 0, 1, 1]), [])
    match = index.best(np.array([[1.0, 0, 0]]))
    proto = np.sum(a, 0) / np.linalg.norm(np.sum(a, 0))
    assert match.place.tolist() == [1] and match.score[0] == pytest.approx((0.85 + 1.0) / 2)
    assert match.runner_up[0] == pytest.approx((0.9 + proto[0]) / 2)  # A, second
    # alone, A's nearest photo and its own prototype give A the query, with no runner-up
    alone = PlaceIndex.build(np.array(a, np.float32), np.zeros(3, int), []).best(
        np.array([[1.0, 0, 0]]))
    assert alone.score[0] == pytest.approx((0.9 + proto[0]) / 2)
    assert alone.runner_up[0] == -np.inf


def _cli(*args: str, store: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "landmark.places", "--store", str(store),
                           "--model", "transfer", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "LANDMARK_HUB_REPO": "off"})


def test_cli_add_list_import_remove_and_batch_tagging(tmp_path: Path) -> None:
    store = tmp_path / "store"
    res = _cli("add", "Comet Falls", *map(str, _photos()[:5]), "--lat", "46.78",
               "--lon", "-121.77", store=store)
    assert res.returncode == 0, res.stderr[-2000:]
    again = _cli("add", "Comet Falls", *map(str, _photos()[:5]), store=store)
    assert again.returncode == 1 and "error: a place named 'Comet Falls' exists already" \
        in again.stderr and "Traceback" not in again.stderr
    root = tmp_path / "two"
    for name in ("Comet_Falls", "Riverfront_Park_Carousel"):
        shutil.copytree(NEW_PLACES / name, root / name)
    info = json.loads((NEW_PLACES / "places.json").read_text())
    (root / "places.json").write_text(json.dumps({"Riverfront_Park_Carousel": info[
        "Riverfront_Park_Carousel"]}))
    res = _cli("import", str(root), "--most", "5", store=store)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "taught 1 place(s), skipped 1" in res.stdout and "exists already" in res.stderr
    listed = _cli("list", store=store).stdout
    assert "Comet Falls\t5 photos" in listed and "Riverfront Park Carousel" in listed
    assert "Spokane" in listed
    out = tmp_path / "tags.jsonl"
    tag = subprocess.run([sys.executable, "-m", "landmark.tag", str(FALLS), "--model",
                          "transfer", "--places", str(store), "--out", str(out)], cwd=REPO,
                         capture_output=True, text=True, timeout=600,
                         env={**os.environ, "LANDMARK_HUB_REPO": "off"})
    assert tag.returncode == 0, tag.stderr[-2000:]
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    taught = [r for r in recs if r["known"] and r["predictions"][0]["source"] == "taught"]
    assert len(taught) >= 5 and taught[0]["predictions"][0]["landmark"] == "Comet Falls"
    assert _cli("remove", "Comet Falls", store=store).returncode == 0
    assert "Comet Falls" not in _cli("list", store=store).stdout


def test_place_search_leaves_torch_on_all_its_threads() -> None:
    """FAISS and torch share one OpenMP runtime: pinning FAISS to one thread used to pin
    torch too, and every tag ran on one core."""
    code = ("import torch; n = torch.get_num_threads(); import numpy as np; "
            "from landmark.places import PlaceIndex; "
            "PlaceIndex.build(np.eye(4, dtype=np.float32), np.arange(4), []).best(np.eye(4)[:1]); "
            "print(n, torch.get_num_threads())")
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout.split()
    assert out == ["2", "2"]


def test_a_place_within_the_margin_ranks_below_the_winning_class(
        transfer: Predictor, store: PlaceStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A taught place more confident than the model's class, but not by the margin, loses:
    the class leads the record and is named with its own facts (this used to crash batch
    tagging, which looked up the place's missing class)."""
    place = Place("Look-alike Tower", "look-alike-tower", 3, None)
    emb = np.eye(4, dtype=np.float32)
    index = PlaceIndex.build(emb[:1], np.zeros(1, int), [place])
    monkeypatch.setattr(transfer, "taught", lambda _: index)
    monkeypatch.setattr(transfer, "calibration", replace(
        transfer.calibration, scale=20.0, shift=0.5, gap_weight=0.0, margin=0.3))
    probs = torch.zeros(len(transfer.classes))
    probs[transfer.classes.index("03.Eiffel_Tower")] = 0.9
    rec = transfer.record(probs, k=3, embedding=torch.from_numpy(emb[0]), places=store)
    first, *rest = rec["predictions"]
    assert first["landmark"] == "Eiffel Tower" and rec["known"]
    assert rest[0]["landmark"] == "Look-alike Tower" and rest[0]["confidence"] > 0.9
    assert rec["location"]["country"] == "France"
