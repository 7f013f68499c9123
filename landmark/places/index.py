"""Finding taught places: every taught photo's embedding in a FAISS index, and the
model's mapping from cosine similarity to a calibrated confidence."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
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


def vector_index(vectors: np.ndarray) -> faiss.Index:
    """A FAISS inner-product index holding `vectors` (N, D) under ids 0..N-1: exact up to
    EXACT_MAX, IVF beyond, its lists trained by k-means on at most 64 vectors a list,
    which bounds a build (1e5 1840-d vectors: seconds, where HNSW's graph took 80 s)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    d = vectors.shape[1] if vectors.ndim == 2 else 1
    if len(vectors) <= EXACT_MAX:
        index = faiss.IndexFlatIP(d)
        if len(vectors):
            index.add(vectors)
        return index
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, ivf_lists(len(vectors)),
                               faiss.METRIC_INNER_PRODUCT)
    index.cp.max_points_per_centroid = 64
    index.train(vectors)
    index.nprobe = PROBES
    file_vectors(index, vectors, np.arange(len(vectors)))
    return index


def file_vectors(index: faiss.IndexIVF, vectors: np.ndarray, ids: np.ndarray) -> None:
    """Add `vectors` under `ids` to the IVF lists nearest them."""
    if len(vectors):
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        add_preassigned(index, vectors, index.quantizer.search(vectors, 1)[1][:, 0], ids)


@dataclass(frozen=True)
class Calibration:
    """(similarity, runner-up) -> confidence: sigmoid(scale * (similarity - shift) +
    gap_weight * (similarity - max(runner_up, background))). A place well ahead of every
    other place is more often right than its similarity alone says; `background` stands in
    for a runner-up when none comes close (one place taught). A place is named when the
    confidence reaches `threshold`, and beats the model's best class only by more than
    `margin`, so photos of the model's own landmarks stay with their classes. Chosen by
    `python -m train.finish.places`."""

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


def stacked(places: list[Place], read: Callable[[Place], np.ndarray],
            dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(vectors, owners): every place's vectors, one after another, and their place rows."""
    vectors = [read(p) for p in places]
    owners = np.concatenate([np.full(len(v), i) for i, v in enumerate(vectors)]
                            or [np.zeros(0, np.int64)])
    return (np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32)), owners


class PlaceIndex:
    """Every taught photo's embedding in a FAISS index (`vector_index`), and each place's
    prototype: the normalised mean of its photos. `best` scores the places among a
    query's NEIGHBOURS nearest taught photos by the mean of two cosines, to the place's
    nearest photo and to its prototype (on new_places, 5 shots: top-1 0.662 by the
    nearest photo alone, 0.698 with both). After a store change, `updated` makes the next
    index from this one, reading only the new places' vectors."""

    def __init__(self, index: faiss.Index, owners: np.ndarray, places: list[Place],
                 prototypes: np.ndarray, trained_on: frozenset[Place] = frozenset()) -> None:
        self.index, self.places, self.prototypes = index, places, prototypes
        self.owners = owners  # each vector id's place (row of `places`); -1 once dropped
        self.trained_on = trained_on  # the places whose photos trained the IVF lists

    @classmethod
    def build(cls, vectors: np.ndarray, owners: np.ndarray, places: list[Place]) -> PlaceIndex:
        """An index of `vectors` (N, D), owned by the rows `owners` (N,) of `places`."""
        index = vector_index(vectors)
        return cls(index, owners, places, prototypes(vectors, owners, index.d),
                   frozenset(places) if isinstance(index, faiss.IndexIVF) else frozenset())

    def updated(self, places: list[Place], read: Callable[[Place], np.ndarray]) -> PlaceIndex:
        """The index of `places`, the store after a change. A place this index holds (the
        same record) keeps its vectors; `read` gives only the others'. An IVF index is
        copied, so a search in flight on this one is safe, drops the places gone and
        files the new places' vectors into its lists while they suit the store (`suits`);
        otherwise, and for an exact index, the next index is built anew."""
        rows = {p: i for i, p in enumerate(places)}
        moved = np.array([rows.get(p, -1) for p in self.places] + [-1], np.int64)
        owners = moved[self.owners]  # a dropped vector's -1 picks moved's last entry, -1
        held = set(self.places)
        fresh = [p for p in places if p not in held]
        added, added_owners = stacked(fresh, read, self.index.d)
        added_owners = np.array([rows[p] for p in fresh], np.int64)[added_owners]
        if not isinstance(self.index, faiss.IndexIVF):
            kept = self.index.reconstruct_n(0, self.index.ntotal)[owners >= 0]
            return PlaceIndex.build(np.concatenate([kept, added]),
                                    np.concatenate([owners[owners >= 0], added_owners]), places)
        if not self.suits(owners, added_owners, places):
            return PlaceIndex.build(*stacked(places, read, self.index.d), places)
        index = faiss.clone_index(self.index)  # nprobe included
        index.remove_ids(np.flatnonzero((owners < 0) & (self.owners >= 0)))
        file_vectors(index, added, np.arange(len(owners), len(owners) + len(added)))
        return PlaceIndex(index, np.concatenate([owners, added_owners]), places,
                          self.carried_prototypes(moved, added, added_owners, len(places)),
                          self.trained_on)

    def carried_prototypes(self, moved: np.ndarray, added: np.ndarray,
                           added_owners: np.ndarray, n: int) -> np.ndarray:
        """The prototypes of n places: a kept place's from this index (its row `moved`),
        a new place's from its vectors `added`."""
        protos = np.zeros((n, self.index.d), np.float32)
        to = moved[:len(self.prototypes)]
        protos[to[to >= 0]] = self.prototypes[to >= 0]
        rows, nth = np.unique(added_owners, return_inverse=True)
        protos[rows] = prototypes(added, nth, self.index.d)
        return protos

    def suits(self, owners: np.ndarray, added_owners: np.ndarray, places: list[Place]) -> bool:
        """Whether this IVF index's lists suit the store of its kept vectors (`owners` >= 0)
        and the added ones: at that size ivf_lists asks as many (it moves one step when
        the store grows or shrinks about fourfold), at least half the vectors are of
        places the lists were trained on, so the lists still follow where the vectors
        lie, and at least half the ids are in use (a dropped vector's id is not reused)."""
        kept = owners[owners >= 0]
        n = len(kept) + len(added_owners)
        if n <= EXACT_MAX or ivf_lists(n) != self.index.nlist or 2 * n < len(owners):
            return False
        trained = np.array([p in self.trained_on for p in places], bool)
        return bool(trained[kept].sum() >= 0.5 * n)

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
