"""Finding taught places: every taught photo's embedding in a FAISS index, and the
model's mapping from cosine similarity to a calibrated confidence."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import torch
from faiss.contrib.ivf_tools import add_preassigned

from landmark.places.store import Place

# Vectors: an exact index up to here, inverted lists (IVF) beyond. bench.places: a 1280-d
# exact search takes ~0.3 ms at 1e3 and 40-80 ms at 1e5, so 1e4 keeps it near 4-8 ms.
EXACT_MAX = 10_000
# Taught photos a query looks at; the places among them compete. On new_places, 16 and 32
# give the same top-1 (docs/decisions.md).
NEIGHBOURS = 16
# Lists an IVF search opens. On 1e5 random 384-d unit vectors in 1,024 lists, 16 found a
# perturbed stored vector first 99% of the time in 0.39 ms after a forward pass, where
# HNSW (M 32, efSearch 32) found it 76% of the time in 0.57 ms (docs/decisions.md).
PROBES = 16


@contextmanager
def one_thread() -> Iterator[None]:
    """Searches here are one photo at a time, so FAISS's OpenMP threads would only contend
    with torch's for the same cores. The two share one OpenMP runtime: the calling
    thread's count is restored after, or torch would be left on one thread too."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def model_key(path: Path) -> str:
    """Which model file embedded a vector: a hash of the file, cheap to compute once."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def ivf_lists(n: int) -> int:
    """Inverted lists for n vectors: the power of two nearest 4 * sqrt(n), FAISS's rule of
    thumb, but at least 39 vectors a list, the fewest its k-means trains on without
    warning (1e4: 256, 1e5: 1,024, 1e6: 4,096)."""
    return int(min(2 ** round(np.log2(4 * np.sqrt(n))), 2 ** int(np.log2(max(n // 39, 1)))))


def vector_index(vectors: np.ndarray, centroids: faiss.IndexFlat | None = None,
                 assigned: np.ndarray | None = None) -> faiss.Index:
    """A FAISS inner-product index holding `vectors` (N, D): exact up to EXACT_MAX, IVF
    beyond. IVF files the vectors into the lists of `centroids` when they are as many as
    `ivf_lists` asks (trained before: `TrainedLists`), else trains new lists by k-means
    on at most 64 vectors a list, which bounds a rebuild (1e5 1840-d vectors: seconds,
    where HNSW's graph took 80 s). `assigned` (N,) gives vectors' list numbers where
    known, -1 elsewhere; the rest are found and written into it, for the next index."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    d = vectors.shape[1] if vectors.ndim == 2 else 1
    if len(vectors) <= EXACT_MAX:
        index = faiss.IndexFlatIP(d)
        if len(vectors):
            index.add(vectors)
        return index
    lists = ivf_lists(len(vectors))
    if centroids is None or centroids.ntotal != lists:  # never retrain shared lists
        centroids = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(centroids, d, lists, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        index.cp.max_points_per_centroid = 64
        index.train(vectors)
    index.nprobe = PROBES
    if assigned is None:
        assigned = np.full(len(vectors), -1, np.int64)
    todo = np.flatnonzero(assigned < 0)
    if len(todo):  # comparing each vector with every centroid is most of filing it
        assigned[todo] = centroids.search(vectors[todo], 1)[1][:, 0]
    add_preassigned(index, vectors, assigned)
    return index


@dataclass(frozen=True)
class TrainedLists:
    """An IVF index's list centroids and the places whose photos trained them. When the
    store changes, the vectors are filed into these lists again instead of training new
    ones (1e5 1840-d vectors: 1.7 s against 6.9 s), as long as the lists still suit the
    store (`suit`); new places' photos then join the lists nearest them."""

    centroids: faiss.IndexFlat
    places: frozenset[str]

    def suit(self, owners: np.ndarray, places: list[Place]) -> bool:
        """Whether the store that `owners` and `places` describe can keep these lists: it
        is past EXACT_MAX with the same number of lists (`ivf_lists`), and at least half
        its vectors are of places the lists were trained on, so they still follow where
        the vectors lie."""
        n = len(owners)
        if n <= EXACT_MAX or ivf_lists(n) != self.centroids.ntotal:
            return False
        known = np.array([p.slug in self.places for p in places], bool)
        return bool(known[owners].mean() >= 0.5)


@dataclass(frozen=True)
class Calibration:
    """(similarity, runner-up) -> confidence: sigmoid(scale * (similarity - shift) +
    gap_weight * (similarity - max(runner_up, background))). A place well ahead of every
    other place is more often right than its similarity alone says; `background` stands in
    for a runner-up when none comes close (one place taught). A place is named when the
    confidence reaches `threshold`, and beats the model's best class only by more than
    `margin`, so photos of the model's own landmarks stay with their classes. Chosen by
    `python -m train.places`."""

    scale: float = 20.0
    shift: float = 0.75
    threshold: float = 0.5
    margin: float = 0.0
    gap_weight: float = 0.0
    background: float = 0.0

    def confidence(self, similarity: np.ndarray, runner_up: np.ndarray) -> np.ndarray:
        gap = similarity - np.maximum(runner_up, self.background)
        logit = self.scale * (similarity - self.shift) + self.gap_weight * gap
        return 0.5 + 0.5 * np.tanh(0.5 * logit)  # sigmoid, without overflow


@dataclass(frozen=True)
class Match:
    """Each query's best taught place (-1 when nothing is taught), its score, and the
    score of the best other place among the neighbours (-inf when there is none)."""

    place: np.ndarray
    score: np.ndarray
    runner_up: np.ndarray


def prototypes(vectors: np.ndarray, owners: np.ndarray, d: int) -> np.ndarray:
    """Each place's prototype, the normalised sum of its vectors, row `owner`. Summed by
    torch's index_add_: numpy's add.at took 1.3 s for 1e5 1840-d vectors."""
    sums = torch.zeros(int(owners.max()) + 1 if len(owners) else 0, d)
    if len(owners):
        sums.index_add_(0, torch.as_tensor(owners, dtype=torch.int64),
                        torch.as_tensor(vectors, dtype=torch.float32))
    return torch.nn.functional.normalize(sums, dim=1, eps=1e-12).numpy()


def carried(previous: PlaceIndex, owners: np.ndarray, places: list[Place]) -> np.ndarray:
    """Each vector's list number in `previous` where its place is there unchanged (the
    same record, as many vectors), else -1: only the others need filing anew."""
    out = np.full(len(owners), -1, np.int64)
    theirs, mine = groups(previous.owners, len(previous.places)), groups(owners, len(places))
    where = {p: j for j, p in enumerate(previous.places)}
    for i, place in enumerate(places):
        j = where.get(place)
        if j is not None and len(mine[i]) == len(theirs[j]):
            out[mine[i]] = previous.assigned[theirs[j]]
    return out


def groups(owners: np.ndarray, n: int) -> list[np.ndarray]:
    """The positions of each owner's vectors, for owners 0..n-1, in one sort."""
    order = np.argsort(owners, kind="stable")
    return np.split(order, np.searchsorted(owners[order], np.arange(1, n)))


class PlaceIndex:
    """Every taught photo's embedding in a FAISS index (`vector_index`), and each place's
    prototype: the normalised mean of its photos. `best` scores the places among a
    query's NEIGHBOURS nearest taught photos by the mean of two cosines, to the place's
    nearest photo and to its prototype (on new_places, 5 shots: top-1 0.662 by the
    nearest photo alone, 0.698 with both). Built with the index it replaces
    (`previous`), it keeps that index's IVF lists while they suit (`TrainedLists`), and
    the list numbers of the photos of places it still holds (`carried`)."""

    def __init__(self, vectors: np.ndarray, owners: np.ndarray, places: list[Place],
                 previous: PlaceIndex | None = None) -> None:
        self.places, self.owners = places, owners
        lists = previous.lists if previous is not None else None
        if lists is not None and not lists.suit(owners, places):
            lists = None
        self.assigned = (carried(previous, owners, places) if lists else
                         np.full(len(owners), -1, np.int64))
        self.index = vector_index(vectors, lists.centroids if lists else None, self.assigned)
        if lists is None and isinstance(self.index, faiss.IndexIVF):
            lists = TrainedLists(faiss.clone_index(self.index.quantizer),
                                 frozenset(p.slug for p in places))
        self.lists = lists
        self.prototypes = prototypes(vectors, owners, self.index.d)

    def __len__(self) -> int:
        return self.index.ntotal

    def best(self, queries: np.ndarray) -> Match:
        """Each query's best place among its NEIGHBOURS nearest taught photos, and the
        runner-up place's score."""
        n = len(queries)
        match = Match(np.full(n, -1), np.full(n, -np.inf, dtype=np.float32),
                      np.full(n, -np.inf, dtype=np.float32))
        if not len(self):
            return match
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        with one_thread():
            sims, ids = self.index.search(queries, min(NEIGHBOURS, len(self)))
        for i in range(n):
            found = ids[i] >= 0
            near = dict(zip(self.owners[ids[i][found]][::-1].tolist(),
                            sims[i][found][::-1].tolist(), strict=True))  # nearest kept
            cands = np.fromiter(near, int)
            both = 0.5 * (np.fromiter(near.values(), np.float32)
                          + self.prototypes[cands] @ queries[i])
            order = np.argsort(-both)
            match.place[i], match.score[i] = cands[order[0]], both[order[0]]
            if len(order) > 1:
                match.runner_up[i] = both[order[1]]
        return match


def decide(class_conf: np.ndarray | float, place_conf: np.ndarray | float,
           class_threshold: float, cal: Calibration) -> tuple[np.ndarray, np.ndarray]:
    """The rule every tagging path uses: the best taught place wins when its confidence
    beats the model's best class by more than `cal.margin`, else the class does; the
    winner is named when its confidence reaches its own threshold. Returns (place wins,
    named), element-wise."""
    place_wins = np.asarray(place_conf) > np.asarray(class_conf) + cal.margin
    named = np.where(place_wins, np.asarray(place_conf) >= cal.threshold,
                     np.asarray(class_conf) >= class_threshold)
    return place_wins, named
