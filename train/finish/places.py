r"""Choose how taught places compete with a model's classes, on places it never saw.

    python -m train.finish.places models/transfer.pt --places ../shared/data/new_places \
        --data ../shared/data/landmark_images \
        [--known-extra ../shared/data/landmark_extra] [--write]

Protocol (fixed): in every place of --places (one folder a place, places.json beside),
a seeded --shots photos are taught and the rest are queries. A query's similarity is its
best place's score, as served (landmark.places.PlaceIndex.best: the mean of the cosines
to the place's nearest taught photo and to its prototype), and its runner-up the next
place's score.
- The mapping (similarity, runner-up) -> confidence (a logistic fit: is the best place
  right?) and the place threshold are chosen on half the places and the tuning half of unknown/,
  then scored on the other half of the places and the held-out half of unknown/; the
  two halves swap and the scores pool. Unknown photos that places.json lists as showing
  a place (`also_in_unknown`) are left out: with every place taught they are not unknown.
- The margin a place must beat the model's best class by is the smallest that lets
  taught places take at most KNOWN_BUDGET of the known-landmark photos the model gets
  right: the trainers' validation split of --data plus any --known-extra photos the
  model never trained on, with every place taught. test/ is never used to choose.
- The threshold maximises new-place queries named right + unknown photos rejected
  (shares), the rule the model's own threshold follows, under `decide`.
- Open world: the model's 19 classes and all places together, on test/ as well.
--write stores the rule fit on all places in the file's metadata["places"] (only the
metadata is rewritten; the network is untouched).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from landmark.contract import update_metadata
from landmark.imageio import list_images
from landmark.metrics import wilson_interval
from landmark.places import Calibration, Match, PlaceIndex, decide
from landmark.predict import Predictor
from train.data import default_val_split, scan_split, split_unknown
from train.data.layout import shown_places

# The share of rightly classified known-landmark photos taught places may take: half the
# 0.5-point test/ drop allowed, as the share is measured on other photos (and test/ has
# 536: one photo is 0.19 point).
KNOWN_BUDGET = 0.0025
MARGINS = np.round(np.arange(0.0, 0.5001, 0.025), 3)
BACKGROUND_QUANTILE = 0.1


@dataclass
class Outputs:
    """A model's outputs on a set of photos: top class probability and class, embeddings,
    and each photo's label (place or class index; -1 for unknown)."""

    conf: np.ndarray
    cls: np.ndarray
    emb: np.ndarray
    labels: np.ndarray
    files: list[str]


def run_model(predictor: Predictor, files: list[Path], labels: list[int],
              desc: str) -> Outputs:
    """Probabilities and embeddings of every photo, decoded as the app decodes them."""
    conf, cls, emb = [], [], []
    for f in tqdm(files, desc=desc, unit="photo"):
        probs, e = predictor.run([predictor.load(f)])
        top = probs[0].max(0)
        conf.append(top.values.item())
        cls.append(top.indices.item())
        emb.append(e[0].numpy())
    return Outputs(np.array(conf), np.array(cls), np.stack(emb), np.array(labels),
                   [str(f) for f in files])


def place_photos(root: Path) -> tuple[list[str], list[Path], list[int], set[str]]:
    """(place names, photo files, their place index, unknown/ files showing a place)."""
    info = json.loads((root / "places.json").read_text())
    names = sorted(info)
    files, labels = [], []
    for i, name in enumerate(names):
        photos = list_images(root / name)
        files += photos
        labels += [i] * len(photos)
    return names, files, labels, shown_places(root)


def untaught_parts(unknown_files: list[Path], shown: set[str]) -> tuple[np.ndarray, np.ndarray]:
    """(tuning, held-out) indices of the unknown photos that show none of the places."""
    parts = split_unknown(len(unknown_files))
    tune, hold = ([i for i in parts[k] if unknown_files[i].name not in shown]
                  for k in ("tune", "hold"))
    return np.array(tune), np.array(hold)


def shots(labels: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(taught, queried) indices: a seeded k photos of every place taught, the rest
    queried; a place with k photos or fewer keeps one query."""
    gen = torch.Generator().manual_seed(seed)
    taught, queried = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[torch.randperm(len(idx), generator=gen).numpy()]
        n = min(k, len(idx) - 1)
        taught += idx[:n].tolist()
        queried += idx[n:].tolist()
    return np.array(taught), np.array(queried)


def nearest(places: Outputs, taught: np.ndarray, queries: np.ndarray) -> Match:
    """Each query's best place and runner-up, via the served index."""
    index = PlaceIndex.build(places.emb[taught], places.labels[taught], [])
    return index.best(queries)


def fit_mapping(sim: np.ndarray, runner_up: np.ndarray, right: np.ndarray) -> Calibration:
    """Calibration(scale, shift, gap_weight, background) ~ P(the best place is right), a
    logistic fit. `background` is the 10th percentile of the runner-up scores: a query with
    no rival as close as that (one place taught) is treated as having one there."""
    background = float(np.quantile(runner_up[np.isfinite(runner_up)], BACKGROUND_QUANTILE)) \
        if np.isfinite(runner_up).any() else 0.0
    s = torch.tensor(sim, dtype=torch.float64)
    gap = s - torch.tensor(np.maximum(runner_up, background), dtype=torch.float64)
    y = torch.tensor(right, dtype=torch.float64)
    a = torch.tensor(10.0, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(float(np.median(sim)), dtype=torch.float64, requires_grad=True)
    c = torch.tensor(0.0, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([a, b, c], max_iter=200)

    def loss() -> torch.Tensor:
        opt.zero_grad()
        out = torch.nn.functional.binary_cross_entropy_with_logits(a * (s - b) + c * gap, y)
        out.backward()
        return out

    opt.step(loss)
    return Calibration(round(a.item(), 4), round(b.item(), 4), gap_weight=round(c.item(), 4),
                       background=round(background, 4))


@dataclass
class Scene:
    """One open-world setting: queries of taught places, unknown photos and photos of the
    model's own landmarks, each with the model's top class confidence and the best place's
    match (and, for queries and known photos, whether the answer is right)."""

    q_conf: np.ndarray
    q_match: Match
    q_right: np.ndarray
    u_conf: np.ndarray
    u_match: Match
    k_conf: np.ndarray
    k_match: Match
    k_right: np.ndarray

    def scores(self, cal: Calibration, class_threshold: float) -> tuple[float, float]:
        """(share of queries named right, share of unknown photos rejected)."""
        q_wins, q_named = decide(self.q_conf, confidence(cal, self.q_match), class_threshold,
                                 cal)
        _, u_named = decide(self.u_conf, confidence(cal, self.u_match), class_threshold, cal)
        return float((q_wins & q_named & self.q_right).mean()), float((~u_named).mean())

    def known_taken(self, cal: Calibration, class_threshold: float) -> float:
        """The share of known-landmark photos the model gets right that a place takes."""
        wins, _ = decide(self.k_conf, confidence(cal, self.k_match), class_threshold, cal)
        return float((wins & self.k_right).mean()) if len(self.k_right) else 0.0


def confidence(cal: Calibration, match: Match) -> np.ndarray:
    return cal.confidence(match.score, match.runner_up)


def choose(scene: Scene, class_threshold: float) -> Calibration:
    """The mapping fit on the scene's queries; the smallest margin keeping taught places
    off all but KNOWN_BUDGET of the known photos; the threshold maximising queries named
    right + unknown rejected."""
    q, u = scene.q_match, scene.u_match
    mapping = fit_mapping(np.concatenate([q.score, u.score]),
                          np.concatenate([q.runner_up, u.runner_up]),
                          np.concatenate([scene.q_right, np.zeros(len(u.score))]))
    margin = next((float(m) for m in MARGINS if scene.known_taken(
        replace(mapping, margin=m), class_threshold) <= KNOWN_BUDGET), MARGINS[-1])
    best = max(np.linspace(0.05, 0.99, 189), key=lambda t: sum(
        scene.scores(replace(mapping, threshold=t, margin=margin), class_threshold)))
    return replace(mapping, threshold=round(float(best), 4), margin=margin)


def scene(places: Outputs, unknown: Outputs, known: Outputs, keep: np.ndarray, k: int,
          seed: int) -> Scene:
    """All places taught with k shots; queries of the places in `keep`; unknown photos;
    photos of the model's own landmarks."""
    taught, queries = shots(places.labels, k, seed)
    queries = queries[np.isin(places.labels[queries], keep)]
    match = nearest(places, taught, places.emb[queries])
    return Scene(places.conf[queries], match, match.place == places.labels[queries],
                 unknown.conf, nearest(places, taught, unknown.emb), known.conf,
                 nearest(places, taught, known.emb), known.cls == known.labels)


def subset(o: Outputs, idx: np.ndarray) -> Outputs:
    return Outputs(o.conf[idx], o.cls[idx], o.emb[idx], o.labels[idx],
                   [o.files[i] for i in idx])


def cross_fit(places: Outputs, unknown: Outputs, known: Outputs, tune: np.ndarray,
              hold: np.ndarray, class_threshold: float, k: int, seed: int = 0) -> dict:
    """Two folds over places: choose on one half (+ unknown tuning photos), score on the
    other (+ held-out unknown photos); pooled counts."""
    order = torch.randperm(int(places.labels.max()) + 1,
                           generator=torch.Generator().manual_seed(seed)).numpy()
    halves = (order[::2], order[1::2])
    named = queries = rejected = scored = 0
    folds = []
    for fit_half, score_half in (halves, halves[::-1]):
        cal = choose(scene(places, subset(unknown, tune), known, fit_half, k, seed),
                     class_threshold)
        held = scene(places, subset(unknown, hold), known, score_half, k, seed)
        right, rej = held.scores(cal, class_threshold)
        named += right * len(held.q_right)
        queries += len(held.q_right)
        rejected += rej * len(held.u_conf)
        scored += len(held.u_conf)
        folds.append(asdict(cal))
    return {"queries": queries, "named_right": named / queries,
            "named_right_ci": wilson_interval(named / queries, queries),
            "unknown": len(hold), "unknown_rejected": rejected / scored,
            "unknown_rejected_ci": wilson_interval(rejected / scored, len(hold)),
            "folds": folds}


def add_known_extra_arg(p: argparse.ArgumentParser, purpose: str) -> None:
    """--known-extra ROOT: the photos `known_photos` adds to the validation split."""
    p.add_argument("--known-extra", type=Path, action="append", default=[], metavar="ROOT",
                   help="more photos of the model's own landmarks that it never trained on "
                        f"(ROOT/train/NN.Class/*.jpg, e.g. ../shared/data/landmark_extra), "
                        f"{purpose}; repeatable")


def known_photos(predictor: Predictor, data: Path, extra: list[Path]) -> Outputs:
    """Photos of the model's own landmarks it never trained on: the trainers' validation
    split of `data`, plus the train/ photos of each `extra` root (Udacity layout). A root
    the model trained on (its dataset or one of its --extra-train roots) is an error."""
    trained = predictor.metadata.get("training_data", {})
    seen = {Path(d).resolve() for d in [predictor.metadata.get("dataset", data),
                                        *trained.get("extra_train", [])]}
    for root in extra:
        if root.resolve() in seen:
            sys.exit(f"error: --known-extra {root}: {predictor.path} was trained on it")
    splits = [default_val_split(data, predictor.classes),
              *(scan_split(root, "train", predictor.classes) for root in extra)]
    return run_model(predictor, [f for s in splits for f in s.paths],
                     [y for s in splits for y in s.labels], "known")


def test_drop(predictor: Predictor, test: Outputs, places: Outputs, cal: Calibration,
              k: int, seed: int = 0) -> dict:
    """test/ top-1 without and with every place taught (a place that wins is wrong)."""
    taught, _ = shots(places.labels, k, seed)
    wins, _ = decide(test.conf, confidence(cal, nearest(places, taught, test.emb)),
                     predictor.reject_threshold, cal)
    right = test.cls == test.labels
    return {"photos": len(test.labels), "top1_without": float(right.mean()),
            "top1_with": float((right & ~wins).mean())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.finish.places", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, help="model file (with embed)")
    p.add_argument("--places", type=Path, required=True, help="new_places-style folder")
    p.add_argument("--data", type=Path, required=True,
                   help="dataset root with test/ and unknown/")
    add_known_extra_arg(p, "to choose the margin with")
    p.add_argument("--shots", type=int, default=5, help="photos taught a place (default 5)")
    p.add_argument("--write", action="store_true",
                   help="store the mapping in the model file's metadata")
    p.add_argument("--report", type=Path, default=None, help="write the figures as JSON here")
    args = p.parse_args(argv)
    predictor = Predictor(args.model)
    names, files, labels, shown = place_photos(args.places)
    place_out = run_model(predictor, files, labels, "places")
    unknown_files = list_images(args.data / "unknown")
    unknown = run_model(predictor, unknown_files, [-1] * len(unknown_files), "unknown")
    tune, hold = untaught_parts(unknown_files, shown)
    known = known_photos(predictor, args.data, args.known_extra)
    test = scan_split(args.data, "test", predictor.classes)
    test_out = run_model(predictor, test.paths, test.labels, "test")
    report = {"model": str(args.model), "places": len(names), "shots": args.shots,
              "known_photos": len(known.labels),
              "cross_fit": cross_fit(place_out, unknown, known, tune, hold,
                                     predictor.reject_threshold, args.shots)}
    chosen_scene = scene(place_out, subset(unknown, tune), known, np.arange(len(names)),
                         args.shots, 0)
    cal = choose(chosen_scene, predictor.reject_threshold)
    report["shipped"] = asdict(cal)
    report["known_taken"] = chosen_scene.known_taken(cal, predictor.reject_threshold)
    report["test"] = test_drop(predictor, test_out, place_out, cal, args.shots)
    print(json.dumps(report, indent=2))
    if args.report:
        args.report.write_text(json.dumps(report, indent=2))
    if args.write:
        chosen = {**asdict(cal), "chosen_on": f"{args.places.name}: {len(names)} places, "
                  f"{args.shots} shots, + tuning half of unknown/, + {len(known.labels)} "
                  "known-landmark photos (python -m train.finish.places)"}
        update_metadata(args.model, {"places": chosen, "places_command": shlex.join(
            ["python", "-m", "train.finish.places", *(argv or sys.argv[1:])])})
        print(f"wrote metadata['places'] into {args.model}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
