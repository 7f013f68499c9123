"""K-fold cross-validation: folds partition the training photos, out-of-fold figures are
pooled, the threshold ships through --threshold-from, and reruns resume."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from landmark.contract import load_exported
from tests.conftest import REPO, SHARED
from train.calibration import reject_threshold
from train.crossval import fold_env, summarize
from train.data import scan_split, stratified_split

TINY = ["--model", "tiny_cnn", "--epochs", "2", "--batch-size", "8", "--workers", "0", "--no-onnx"]


def _run(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600)


def test_folds_hold_out_every_photo_exactly_once() -> None:
    full = scan_split(SHARED, "train")
    folds = [stratified_split(full, 0.1, seed=0, fold=(i, 5)) for i in range(5)]
    held = [p for _, val in folds for p in val.paths]
    assert sorted(held) == sorted(full.paths)  # a partition: no photo twice, none missing
    for train, val in folds:
        assert not set(train.paths) & set(val.paths)
        assert len(train.paths) + len(val.paths) == len(full.paths)
        for c in range(len(full.classes)):  # every class split evenly: a fifth +- 1
            assert abs(val.labels.count(c) - full.labels.count(c) / 5) < 1
    assert stratified_split(full, 0.1, seed=1, fold=(0, 5))[1].paths != folds[0][1].paths


@pytest.mark.parametrize("fold", ["5/5", "0/1", "x/5", "-1/5"])
def test_bad_fold_is_one_clear_line(fold: str, tmp_path: Path) -> None:
    res = _run("train.scratch", "--data", str(tmp_path), "--fold", fold)
    assert res.returncode == 2 and "--fold" in res.stderr and "Traceback" not in res.stderr


def _val_outputs(paths: list[str], labels: list[int], top: list[float],
             unknown: list[float]) -> dict:
    probs = [[p, 1 - p] if y == 0 else [1 - p, p] for p, y in zip(top, labels, strict=True)]
    return {"paths": paths, "labels": labels, "probs": probs, "unknown_tune": unknown}


def test_summary_pools_folds_by_photo_not_by_fold() -> None:
    a = _val_outputs(["a", "b", "c", "d"], [0, 0, 1, 1], [0.9, 0.4, 0.8, 0.95], [0.6])
    b = _val_outputs(["e", "f"], [0, 1], [0.7, 0.99], [0.55, 0.5])
    s = summarize([a, b], accept_known=0.5)
    assert s["n"] == 6 and s["fold_top1"] == [0.75, 1.0]
    assert s["top1"] == pytest.approx(5 / 6)  # not the mean of the folds' 0.875
    assert s["open_set"]["n_unknown"] == 3
    known = [0.9, 0.6, 0.8, 0.95, 0.7, 0.99]
    assert s["reject_threshold"] == pytest.approx(
        reject_threshold(torch.tensor(known), 0.5, torch.tensor([0.6, 0.55, 0.5])))
    with pytest.raises(ValueError, match="overlapping"):
        summarize([a, a], accept_known=0.5)


def test_crossval_cli_pools_resumes_and_ships_its_threshold(tiny_data: Path,
                                                           tmp_path: Path) -> None:
    out, cache = tmp_path / "cv", str(tmp_path / "cache")
    args = ["--folds", "2", "--jobs", "2", "--output", str(out), "scratch",
            "--data", str(tiny_data), *TINY, "--cache-dir", cache]
    res = _run("train.crossval", *args)
    assert res.returncode == 0, res.stderr[-3000:]
    cv = json.loads((out / "crossval.json").read_text())
    held = [json.loads((out / f"fold{i}" / "val_outputs.json").read_text()) for i in range(2)]
    train_photos = sorted(str(p) for p in scan_split(tiny_data, "train").paths)
    assert sorted(held[0]["paths"] + held[1]["paths"]) == train_photos
    assert cv["n"] == len(train_photos) == 16 and len(cv["fold_top1"]) == 2
    assert "2-fold cross-validation, 16 out-of-fold photos" in res.stdout
    with Image.open(out / "threshold.png") as png:  # the trade-off plot
        assert png.format == "PNG" and png.width > 300

    again = _run("train.crossval", *args)  # finished folds are reused, not retrained
    assert again.returncode == 0 and again.stderr.count("finished earlier") == 2
    assert json.loads((out / "crossval.json").read_text())["reject_threshold"] \
        == cv["reject_threshold"]

    res = _run("train.scratch", "--data", str(tiny_data), *TINY, "--cache-dir", cache,
               "--fold", "0/2", "--output", str(out / "fold0"), "--export-only",
               "--export", str(tmp_path / "m.pt"), "--threshold-from", str(out / "crossval.json"))
    assert res.returncode == 0, res.stderr[-3000:]
    meta = load_exported(tmp_path / "m.pt").metadata
    assert meta["reject_threshold"] == pytest.approx(cv["reject_threshold"])
    report = json.loads((tmp_path / "m.report.json").read_text())
    assert "2-fold cross-validation" in report["open_set"]["rule"]


def test_crossval_reports_a_failed_fold_and_owned_options(tiny_data: Path,
                                                          tmp_path: Path) -> None:
    res = _run("train.crossval", "--folds", "2", "--output", str(tmp_path / "cv"), "scratch",
               "--data", str(tiny_data), "--model", "no_such_model")
    assert res.returncode == 1 and "fold 0 failed" in res.stderr
    assert "rerun the same command" in res.stderr and "Traceback" not in res.stderr
    res = _run("train.crossval", "scratch", "--data", str(tiny_data), "--output", "x")
    assert res.returncode == 2 and "crossval sets these" in res.stderr
    res = _run("train.scratch", "--data", str(tiny_data), "--output", str(tmp_path / "r"),
               "--threshold-from", str(tmp_path / "missing.json"))  # fails before training
    assert res.returncode == 1 and "not a train.crossval summary" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "r" / "last.pt").exists()


def test_side_by_side_folds_share_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert fold_env(5)["OMP_NUM_THREADS"] == "3" and fold_env(32)["OMP_NUM_THREADS"] == "1"
    assert "OMP_NUM_THREADS" not in fold_env(1)  # one fold at a time: torch's own default
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    assert fold_env(5)["OMP_NUM_THREADS"] == "7"  # the user's setting wins
