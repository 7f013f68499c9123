"""How taught places compete with the model's classes: `decide`, and the rule
`python -m train.places` chooses and writes into a model file."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from landmark.places import Calibration, decide
from landmark.predict import Predictor
from tests.conftest import REPO, SHARED
from train.places import KNOWN_BUDGET, MARGINS, Scene, choose

NEW_PLACES = SHARED.parent / "new_places"


def test_a_place_must_beat_the_class_by_the_margin() -> None:
    cal = Calibration(threshold=0.5, margin=0.1)
    wins, named = decide(np.array([0.6, 0.6, 0.3, 0.3]), np.array([0.65, 0.75, 0.45, 0.1]),
                         0.5, cal)
    assert wins.tolist() == [False, True, True, False]
    # a class is named by the model's threshold, a place by the place threshold
    assert named.tolist() == [True, True, False, False]


def _scene(known_sim: float, n_known: int = 400) -> Scene:
    """Queries whose nearest place is right above similarity 0.8, unknown photos below
    0.7, and known photos the model gets right with class confidence 0.6."""
    gen = np.random.default_rng(0)
    q_sim = gen.uniform(0.6, 1.0, 300)
    return Scene(q_conf=np.full(300, 0.2), q_sim=q_sim, q_right=q_sim > 0.8,
                 u_conf=np.full(200, 0.2), u_sim=gen.uniform(0.4, 0.7, 200),
                 k_conf=np.full(n_known, 0.6), k_sim=np.full(n_known, known_sim),
                 k_right=np.ones(n_known, bool))


def test_the_margin_is_the_smallest_that_keeps_known_photos_with_their_classes() -> None:
    scene = _scene(known_sim=0.95)  # places look very like the known photos
    cal = choose(scene, class_threshold=0.5)
    assert cal.margin > 0
    assert scene.known_taken(cal, 0.5) <= KNOWN_BUDGET
    smaller = MARGINS[cal.margin > MARGINS].max()
    tighter = Calibration(cal.scale, cal.shift, cal.threshold, float(smaller))
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
    cmd = [sys.executable, "-m", "train.places", str(model), "--places", str(places),
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
