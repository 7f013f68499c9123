"""How taught places compete with the model's classes: `decide`, and the rule
`python -m train.finish.places` chooses and writes into a model file."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from landmark.places import Calibration, Match, decide
from landmark.predict import Predictor
from tests.conftest import REPO, SHARED
from train.finish.places import (
    BACKGROUND_QUANTILE,
    KNOWN_BUDGET,
    MARGINS,
    Scene,
    choose,
    fit_mapping,
)

NEW_PLACES = SHARED.parent / "new_places"


def test_a_place_must_beat_the_class_by_the_margin() -> None:
    cal = Calibration(threshold=0.5, margin=0.1)
    wins, named = decide(np.array([0.6, 0.6, 0.3, 0.3]), np.array([0.65, 0.75, 0.45, 0.1]),
                         0.5, cal)
    assert wins.tolist() == [False, True, True, False]
    # a class is named by the model's threshold, a place by the place threshold
    assert named.tolist() == [True, True, False, False]


def _match(score: np.ndarray, gen: np.random.Generator) -> Match:
    return Match(np.zeros(len(score), int), score, score - gen.uniform(0.0, 0.2, len(score)))


def _scene(known_sim: float, n_known: int = 400) -> Scene:
    """Queries whose nearest place is right above similarity 0.8, unknown photos below
    0.7, and known photos the model gets right with class confidence 0.6."""
    gen = np.random.default_rng(0)
    q_sim = gen.uniform(0.6, 1.0, 300)
    return Scene(q_conf=np.full(300, 0.2), q_match=_match(q_sim, gen), q_right=q_sim > 0.8,
                 u_conf=np.full(200, 0.2), u_match=_match(gen.uniform(0.4, 0.7, 200), gen),
                 k_conf=np.full(n_known, 0.6),
                 k_match=_match(np.full(n_known, known_sim), gen),
                 k_right=np.ones(n_known, bool))


def test_a_place_far_ahead_of_the_runner_up_is_more_confident() -> None:
    cal = Calibration(scale=20.0, shift=0.75, gap_weight=30.0, background=0.7)
    score = np.full(3, 0.8)
    close, far, alone = cal.confidence(score, np.array([0.78, 0.6, -np.inf]))
    assert close < far
    # one place taught: no runner-up, so the background stands in for it
    assert alone == cal.confidence(np.array([0.8]), np.array([0.7]))[0]
    plain = Calibration(scale=20.0, shift=0.75)
    assert plain.confidence(score, np.full(3, 0.79)) == pytest.approx(1 / (1 + np.exp(-1.0)))


def test_the_fit_weighs_the_gap_when_rightness_follows_it() -> None:
    gen = np.random.default_rng(0)
    score = gen.uniform(0.6, 0.9, 2000)
    runner_up = score - gen.uniform(0.0, 0.2, 2000)
    right = (score - runner_up) > 0.08  # the similarity alone says nothing
    cal = fit_mapping(score, runner_up, right)
    assert cal.gap_weight > 10 * abs(cal.scale)
    assert cal.background == pytest.approx(np.quantile(runner_up, BACKGROUND_QUANTILE),
                                           abs=1e-4)


def test_the_margin_is_the_smallest_that_keeps_known_photos_with_their_classes() -> None:
    scene = _scene(known_sim=0.95)  # places look very like the known photos
    cal = choose(scene, class_threshold=0.5)
    assert cal.margin > 0
    assert scene.known_taken(cal, 0.5) <= KNOWN_BUDGET
    smaller = MARGINS[cal.margin > MARGINS].max()
    tighter = replace(cal, margin=float(smaller))
    assert scene.known_taken(tighter, 0.5) > KNOWN_BUDGET
    # the queries still reach their places
    right, rejected = scene.scores(cal, 0.5)
    assert right > 0.3 and rejected > 0.9


def test_no_margin_when_places_do_not_reach_known_photos() -> None:
    assert choose(_scene(known_sim=0.2), class_threshold=0.5).margin == 0.0


def _mini_places(root: Path, n_places: int = 3, photos: int = 7) -> Path:
    info = json.loads((NEW_PLACES / "places.json").read_text())
    names = sorted(n for n in info if len(list((NEW_PLACES / n).iterdir())) >= photos)
    for name in names[:n_places]:
        shutil.copytree(NEW_PLACES / name, root / name,
                        ignore=lambda d, files: sorted(files)[photos:])
    (root / "places.json").write_text(json.dumps({n: info[n] for n in names[:n_places]}))
    return root


def test_train_places_writes_the_rule_the_app_then_uses(tiny_model: Path, tiny_data: Path,
                                                        tmp_path: Path) -> None:
    model = tmp_path / "model.pt"
    shutil.copy(tiny_model, model)
    places = _mini_places(tmp_path / "places")
    extra = tmp_path / "extra" / "train" / "03.Eiffel_Tower"
    extra.mkdir(parents=True)
    for photo in sorted((SHARED.parent / "landmark_extra" / "train" / extra.name)
                        .iterdir())[:4]:
        shutil.copy(photo, extra)
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "train.finish.places", str(model), "--places", str(places),
           "--data", str(tiny_data), "--shots", "3", "--known-extra"]
    res = subprocess.run([*cmd, str(extra.parents[1]), "--write", "--report", str(report)],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    figures = json.loads(report.read_text())
    assert figures["known_photos"] == 2 + 4  # validation: one photo a class; + the extra
    assert figures["known_taken"] <= KNOWN_BUDGET
    assert Predictor(model).calibration == Calibration(**figures["shipped"])
    # photos the model was trained on cannot stand in for photos it never saw
    res = subprocess.run([*cmd, str(tiny_data)], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode != 0 and "was trained on it" in res.stderr
