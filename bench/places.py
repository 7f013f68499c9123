r"""Teaching new places: accuracy against shots, the open world, adding, and scale.

    python -m bench.places --data ../shared/data/landmark_images \
        --places ../shared/data/new_places --known-extra ../shared/data/landmark_extra \
        [--models transfer scratch]

- Accuracy: among the 58 places of --places, for 1, 3, 5 and 10 taught photos a place
  (seeded; the rest queried), top-1 of the best-scoring place (`PlaceIndex.best`); a
  PNG beside.
- Open world: the protocol of `python -m train.finish.places` (two folds over places), and
  test/ top-1 with every place taught under the rule stored in the model file.
- Adding a place of 10 photos through `landmark.places.teach`, tagging latency with
  1e5 stored vectors (5,000 places of 20) against none, and the first tag over that
  store (it builds the index) and after one more place joins it (it updates it).
- Scale: query latency p50/p95 and index memory for 1e3, 1e5 and 1e6 synthetic unit
  vectors of the transfer model's size, exact (FAISS flat) and the served index (IVF
  past 10,000 vectors), with recall@1 of perturbed stored vectors.
Writes its section of BENCHMARKS.md and bench/results/places_shots.png.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import faiss
import numpy as np
from tqdm import tqdm

from bench.report import take_turns, update_section
from landmark.cli import add_data_arg
from landmark.imageio import list_images
from landmark.metrics import wilson_interval
from landmark.places import Place, PlaceIndex, PlaceStore
from landmark.places.index import EXACT_MAX, PROBES, ivf_lists, one_thread
from landmark.places.store import MAX_PHOTOS
from landmark.places.teach import teach
from landmark.predict import Predictor
from landmark.resolve import resolve
from train import plots
from train.data import scan_split
from train.finish import places as protocol

SHOTS = (1, 3, 5, 10)
BIG_PLACES = 5_000  # x MAX_PHOTOS = the 1e5 stored vectors of the latency target
RESULTS = Path(__file__).parent / "results"
T = TypeVar("T")


def shots_curve(out: protocol.Outputs) -> dict[int, tuple[float, int]]:
    """Shots -> (top-1 among the places, queries)."""
    curve = {}
    for k in SHOTS:
        taught, queries = protocol.shots(out.labels, k)
        found = protocol.nearest(out, taught, out.emb[queries]).place
        curve[k] = (float((found == out.labels[queries]).mean()), len(queries))
    return curve


def timed(*fns: Callable[[], object], n: int) -> list[tuple[float, float]]:
    """p50 and p95 in ms of `n` calls of each function, taking turns (`take_turns`)."""
    lat = take_turns([lambda _, f=fn: f() for fn in fns], n)
    return [(float(np.percentile(t, 50)) * 1e3, float(np.percentile(t, 95)) * 1e3)
            for t in lat]


def scale_rows(dim: int, sizes: tuple[int, ...] = (1_000, 100_000, 1_000_000)) -> list[str]:
    """Build time, query latency, memory and recall@1 of the exact index and the served one
    (`PlaceIndex`: IVF past EXACT_MAX) over synthetic unit vectors in places of
    MAX_PHOTOS, and the served index's change: one place out, one in
    (`PlaceIndex.updated`). Recall@1: how often a stored vector, perturbed to a cosine of
    about 0.89, finds itself first."""
    gen = np.random.default_rng(0)
    rows = []
    for n in sizes:
        vectors = unit(gen.standard_normal((n, dim), dtype=np.float32))
        picked = gen.integers(0, n, 200)
        queries = unit(vectors[picked] + 0.5 / np.sqrt(dim)
                       * gen.standard_normal((200, dim), dtype=np.float32))
        if n > EXACT_MAX:  # the exact index for comparison, gone before the served one
            index, took = timed_call(lambda v=vectors: exact_index(v))
            rows.append(scale_row(n, dim, "exact", index, took, queries, picked))
            del index
        places = [Place(f"p{i}", f"p{i}", MAX_PHOTOS, None) for i in range(n // MAX_PHOTOS)]
        served, took = timed_call(lambda v=vectors, p=places: PlaceIndex.build(
            v, np.arange(len(v)) // MAX_PHOTOS, p))
        new = vectors[:MAX_PHOTOS].copy()
        del vectors  # a change copies the index: 1e6 vectors twice are 15 GB already
        kind = f"IVF, {ivf_lists(n):,} lists, {PROBES} probed" if n > EXACT_MAX else "exact"
        rows.append(scale_row(n, dim, kind, served.index, took, queries, picked,
                              (served, new)))
        del served
    return rows


def scale_row(n: int, dim: int, kind: str, index: faiss.Index, took: float,
              queries: np.ndarray, picked: np.ndarray,
              served: tuple[PlaceIndex, np.ndarray] | None = None) -> str:
    """One row of the scale table; `served` (the index, a new place's vectors) is also
    timed for a change."""
    with one_thread():
        found = index.search(queries, 1)[1][:, 0]
    (p50, p95), = timed(lambda q=queries, i=index: search_one(i, q[:1]), n=100)
    lists = index.nlist if isinstance(index, faiss.IndexIVF) else 0
    size = n * dim * 4 + (n * 8 + lists * dim * 4 if lists else 0)
    change = "–" if served is None else f"{seconds(lambda: changed(*served)):.2f}"
    row = (f"| {n:,} | {kind}{' (served)' * (served is not None)} | {took:.1f} | {change} | "
           f"{p50:.2f} | {p95:.2f} | {np.mean(found == picked):.3f} | {size / 2**20:,.0f} |")
    print(row, flush=True)
    return row


def changed(index: PlaceIndex, new: np.ndarray) -> PlaceIndex:
    """`index` after its first place is removed and one place of `new` vectors is added."""
    return index.updated([*index.places[1:], Place("New", "new", len(new), None)],
                         lambda _: new)


def unit(v: np.ndarray) -> np.ndarray:
    """`v` with its rows scaled to length 1, in place (1e6 vectors are 7 GB)."""
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


def exact_index(vectors: np.ndarray) -> faiss.Index:
    """A FAISS exact inner-product index over `vectors`, for comparison."""
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return index


def search_one(index: faiss.Index, query: np.ndarray) -> None:
    """One nearest-neighbour search, single-threaded as a tag searches."""
    with one_thread():
        index.search(query, 1)


@dataclass(frozen=True)
class Speed:
    """Seconds to teach a place of 10 photos; seconds of the first tag over a store of 1e5
    vectors (it builds the index) and of the first tag after one more place is added to
    it (the index is updated); tagging p50/p95 in ms without and with that store."""

    add: float
    build: float
    rebuild: float
    tag: list[tuple[float, float]]


def add_and_tag(predictor: Predictor, places_dir: Path, photo: Path) -> Speed:
    """Teach a place of 10 photos, then time tagging with 1e5 stored vectors spread as a
    library spreads them: over BIG_PLACES places of the most photos a place may have (a
    tag's cost grows with places, not only vectors)."""
    folder = max((d for d in places_dir.iterdir() if d.is_dir()),
                 key=lambda d: len(list_images(d)))
    with tempfile.TemporaryDirectory() as tmp:
        store = PlaceStore(Path(tmp))
        add = seconds(lambda: teach(store, [predictor], "Bench place", list_images(folder)[:10]))
        key, dim = predictor.key, int(predictor.metadata["embedding_dim"])
        gen = np.random.default_rng(0)

        def synthetic(i: int) -> None:
            v = unit(gen.standard_normal((MAX_PHOTOS, dim), dtype=np.float32))
            store.save_vectors(store.add(f"Synthetic {i}", [], None), key, v)

        for i in tqdm(range(BIG_PLACES), desc="synthetic places", unit="place"):
            synthetic(i)
        build = seconds(lambda: predictor.tag(photo, 3, store))
        tag = timed(lambda: predictor.tag(photo), lambda: predictor.tag(photo, 3, store), n=60)
        synthetic(BIG_PLACES)
        return Speed(add, build, seconds(lambda: predictor.tag(photo, 3, store)), tag)


def timed_call(fn: Callable[[], T]) -> tuple[T, float]:
    """What one call of `fn` returns, and the seconds it took."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def seconds(fn: Callable[[], object]) -> float:
    """Seconds one call of `fn` takes."""
    return timed_call(fn)[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arg(p)
    p.add_argument("--places", type=Path, required=True, help="new_places-style folder")
    p.add_argument("--models", nargs="+", default=["transfer", "scratch"],
                   help="model names or .pt files")
    p.add_argument("--known-extra", type=Path, action="append", default=[], metavar="ROOT",
                   help="as for train.finish.places: known-landmark photos the models never "
                   "trained on, for the margin")
    p.add_argument("--no-scale", action="store_true", help="skip the synthetic scale part")
    args = p.parse_args()
    names, files, labels, shown = protocol.place_photos(args.places)
    unknown_files = list_images(args.data / "unknown")
    tune, hold = protocol.untaught_parts(unknown_files, shown)
    lines = [f"{len(names)} places, {len(files)} photos (`{args.places}`); unknown photos of "
             f"places not taught: {len(tune)} tuning, {len(hold)} held out. Accuracy: top-1 "
             "of the best-scoring place among the places alone (`PlaceIndex.best`).", "",
             "| model | " + " | ".join(f"{k} shot{'s' * (k > 1)}" for k in SHOTS) + " |",
             "|---|" + "---|" * len(SHOTS)]
    curves, worlds, speed = {}, [], []
    for name in args.models:
        predictor = Predictor(resolve(name))
        out = protocol.run_model(predictor, files, labels, f"{name}: places")
        unknown = protocol.run_model(predictor, unknown_files, [-1] * len(unknown_files),
                                     f"{name}: unknown")
        known = protocol.known_photos(predictor, args.data, args.known_extra)
        test = scan_split(args.data, "test", predictor.classes)
        test_out = protocol.run_model(predictor, test.paths, test.labels, f"{name}: test")
        curves[name] = shots_curve(out)
        lines.append(f"| {name} | " + " | ".join(
            f"{a:.3f} ({lo:.3f}–{hi:.3f})" for a, n in curves[name].values()
            for lo, hi in [wilson_interval(a, n)]) + " |")
        cf = protocol.cross_fit(out, unknown, known, tune, hold, predictor.reject_threshold,
                                5)
        drop = protocol.test_drop(predictor, test_out, out, predictor.calibration, 5)
        worlds.append(f"| {name} | {cf['queries']} | {cf['named_right']:.3f} "
                      f"({cf['named_right_ci'][0]:.3f}–{cf['named_right_ci'][1]:.3f}) | "
                      f"{cf['unknown']} | {cf['unknown_rejected']:.3f} "
                      f"({cf['unknown_rejected_ci'][0]:.3f}–{cf['unknown_rejected_ci'][1]:.3f}) "
                      f"| {predictor.calibration.margin:.3f} | {drop['top1_without']:.3f} → "
                      f"{drop['top1_with']:.3f} |")
        sp = add_and_tag(predictor, args.places, files[0])
        (p50, p95), (q50, q95) = sp.tag
        speed.append(f"| {name} | {sp.add:.2f} | {p50:.1f} / {p95:.1f} | "
                     f"{q50:.1f} / {q95:.1f} | {q50 / p50 - 1:+.0%} | {sp.build:.1f} | "
                     f"{sp.rebuild:.1f} |")
    RESULTS.mkdir(exist_ok=True)
    plots.lines_png({n: {k: a for k, (a, _) in c.items()} for n, c in curves.items()},
                    RESULTS / "places_shots.png", "taught photos a place",
                    f"top-1 among {len(names)} new places")
    lines += ["", "![accuracy against shots](bench/results/places_shots.png)", "",
              "Open world, 5 shots: the model's classes and every place together; the "
              "similarity-to-confidence mapping, margin and place threshold chosen on one "
              "half of the places, the tuning unknown photos and "
              f"{len(known.labels)} known-landmark photos the model never trained on, "
              "scored on the other half and the held-out unknown photos, halves swapped and "
              "pooled (`python -m train.finish.places`). Test top-1 with all places taught uses "
              "the rule stored in the model file (its margin shown).",
              "", "| model | queries | named right and accepted | unknown photos | "
              "unknown rejected | margin | test top-1, all places taught |",
              "|---|---|---|---|---|---|---|", *worlds, "",
              "Adding a place of 10 photos (decode, keep, embed, locate) and tagging one "
              "photo (`Predictor.tag`, ms p50 / p95, 60 calls each) with no places and with "
              f"{BIG_PLACES * MAX_PHOTOS:,} stored vectors ({BIG_PLACES:,} places of "
              f"{MAX_PHOTOS}, the most a place may have), the two taking turns call by call. "
              "The first tag over that store builds its index (IVF lists trained); the "
              "first after one more place is added updates a copy of it, reading and "
              "filing only the new place's photos (`PlaceIndex.updated`):",
              "",
              "| model | add 10 photos (s) | tag, no places | tag, "
              f"{BIG_PLACES * MAX_PHOTOS:,} vectors in {BIG_PLACES:,} places | change | "
              "first tag (s) | first tag after adding a place (s) |",
              "|---|---|---|---|---|---|---|", *speed]
    if not args.no_scale:
        dim = Predictor(resolve(args.models[0])).metadata["embedding_dim"]
        lines += ["", f"Index scale, {dim}-d synthetic unit vectors, one query at a time "
                  "on one thread, as a tag searches (FAISS). Recall@1: of 200 stored vectors "
                  "perturbed to a cosine of about 0.89, the share found first. Memory: the "
                  f"vectors, plus the IVF's ids and list centroids. Change: the served index "
                  f"after one place of {MAX_PHOTOS} is removed and one added "
                  "(`PlaceIndex.updated`):", "",
                  "| vectors | index | build (s) | change (s) | p50 (ms) | "
                  "p95 (ms) | recall@1 | index MB |",
                  "|---|---|---|---|---|---|---|---|", *scale_rows(dim)]
    update_section("places", "Teaching new places", "\n".join(lines))


if __name__ == "__main__":
    main()
