"""python -m train.finish.fast: the same weights at a smaller input, re-calibrated, frozen."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from landmark.contract import load_exported
from landmark.imageio import load_image, to_tensor
from landmark.predict import Predictor
from tests.conftest import REPO, real_photos
from train.calibration import calibrated_softmax
from train.data import default_val_split
from train.finish import fast, retune
from train.finish.reexport import rebuild
from train.presets import EvalPreprocess


@pytest.fixture(scope="module")
def model_48(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CNN trained at 48 px on real photos (one epoch), with outlier exposure as
    the shipped models had."""
    out = tmp_path_factory.mktemp("m48")
    res = subprocess.run(
        [sys.executable, "-m", "train.scratch", "--data", str(tiny_data), "--model", "tiny_cnn",
         "--crop-size", "48", "--epochs", "1", "--batch-size", "8", "--workers", "0", "--no-onnx",
         "--outlier-weight", "0.5", "--output", str(out), "--cache-dir", str(out / "cache")],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return out / "scratch.pt"


def test_fast_model_is_the_same_network_at_the_smaller_size(model_48: Path, tiny_data: Path,
                                                             tmp_path: Path) -> None:
    out = tmp_path / "fast.pt"
    assert fast.main([str(model_48), "--crop-size", "32", "--data", str(tiny_data),
                      "--out", str(out), "--cache-dir", str(tmp_path / "cache")]) == 0
    model = load_exported(out)
    meta = model.metadata
    assert meta["frozen"] is True and meta["derived_from"] == str(model_48)
    assert (meta["preset"]["crop_size"], meta["preset"]["resize_size"]) == (32, 36)
    assert "train.finish.fast" in meta["fast_command"] and 0 < meta["reject_threshold"] < 1
    assert meta["metrics"]["val"]["n"] > 0
    # chosen on the tuning photos the network never trained on, reported on the held-out
    open_set = json.loads((tmp_path / "fast.report.json").read_text())["open_set"]
    assert (open_set["tune"]["n_unknown"], open_set["shipped"]["n_unknown"]) == (1, 3)
    net, preset, _ = rebuild(model_48)
    small = fast.smaller(preset, 32)
    for photo in real_photos("11.Niagara_Falls", "test", 2):
        x = to_tensor(load_image(photo))[None].float() / 255
        with torch.no_grad():
            want = calibrated_softmax(net(EvalPreprocess(small)(x)), meta["temperature"],
                                      meta["background_logit"])
            assert torch.allclose(model.module(x), want, atol=1e-5)


def test_retune_chooses_the_mirror_view_again_and_keeps_the_record(
        model_48: Path, tiny_data: Path, tmp_path: Path) -> None:
    """train.finish.retune: the same weights and preset, with flip TTA on, scored as the mean of
    the calibrated view and its mirror image; off again, one view; the training record
    kept, the command recorded, the threshold chosen again."""
    args = ["--data", str(tiny_data), "--cache-dir", str(tmp_path / "cache")]
    source = load_exported(model_48).metadata
    net, preset, _ = rebuild(model_48)
    photos = [to_tensor(load_image(p))[None].float() / 255
              for p in real_photos("11.Niagara_Falls", "test", 2)]
    for tta, flip in (("on", True), ("off", False)):
        out = tmp_path / f"{tta}.pt"
        assert retune.main([str(model_48), "--tta", tta, "--out", str(out), *args]) == 0
        model = load_exported(out)
        meta = model.metadata
        assert meta["tta_flip"] is flip and meta["frozen"] is False
        assert meta["preset"] == source["preset"] and meta["command"] == source["command"]
        assert "train.finish.retune" in meta["retune_command"] and 0 < meta["reject_threshold"] < 1
        assert (tmp_path / f"{tta}.report.json").exists()
        for x in photos:
            with torch.no_grad():
                views = [EvalPreprocess(preset)(x)]
                views += [views[0].flip(-1)] if flip else []
                want = torch.stack([calibrated_softmax(net(v), meta["temperature"],
                                                       meta["background_logit"])
                                    for v in views]).mean(0)
                assert torch.allclose(model.module(x), want, atol=1e-5)
    with torch.no_grad():  # the mirror image changes these photos' scores: the test can fail
        x = EvalPreprocess(preset)(photos[0])
        assert not torch.allclose(net(x), net(x.flip(-1)), atol=1e-3)


def test_bad_requests_are_one_clear_error(model_48: Path, tiny_data: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--data", str(tiny_data), "--cache-dir", str(tmp_path / "cache")]
    assert fast.main([str(model_48), "--crop-size", "64", "--out", str(tmp_path / "a.pt"),
                      *args]) == 1
    assert "between 32 and the model's own 48" in capsys.readouterr().err
    frozen = tmp_path / "frozen.pt"
    assert fast.main([str(model_48), "--crop-size", "40", "--out", str(frozen), *args]) == 0
    assert fast.main([str(frozen), "--crop-size", "32", "--out", str(tmp_path / "b.pt"),
                      *args]) == 1
    assert "is frozen" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["frozen.pt"]


def _extra(root: Path) -> Path:
    """ROOT/train/<class>/: 6 photos of each tiny class that tiny_data does not hold."""
    for cls in ("03.Eiffel_Tower", "11.Niagara_Falls"):
        (root / "train" / cls).mkdir(parents=True)
        for p in real_photos(cls, "train", 14)[8:]:
            shutil.copy(p, root / "train" / cls / p.name)
    return root


def test_match_keeps_the_reference_models_share_of_known_photos(
        model_48: Path, tiny_data: Path, tmp_path: Path) -> None:
    from train.finish.places import known_photos
    extra = _extra(tmp_path / "extra")
    out = tmp_path / "fast.pt"
    assert fast.main([str(model_48), "--crop-size", "40", "--data", str(tiny_data),
                      "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
                      "--match", str(model_48), "--known-extra", str(extra)]) == 0
    ref, new = Predictor(model_48), Predictor(out)
    ref_conf = known_photos(ref, tiny_data, [extra]).conf
    new_conf = known_photos(new, tiny_data, [extra]).conf
    assert len(new_conf) == 12 + len(default_val_split(tiny_data, new.classes).paths)
    # the same photos: the fast file accepts exactly as many as the reference does
    assert (new_conf >= new.reject_threshold).sum() == (ref_conf >= ref.reject_threshold).sum()
    assert (ref_conf >= ref.reject_threshold).sum() > 0
    assert new.reject_threshold in new_conf  # the lowest confidence still accepted
    rule = json.loads((tmp_path / "fast.report.json").read_text())["open_set"]["rule"]
    assert f"{model_48}'s share of known photos accepted" in rule


def test_known_extra_needs_match(model_48: Path, tiny_data: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        fast.main([str(model_48), "--data", str(tiny_data), "--out", str(tmp_path / "f.pt"),
                   "--known-extra", str(tiny_data)])


def test_match_never_counts_photos_the_fast_files_network_trained_on(
        model_48: Path, tiny_data: Path, tmp_path: Path) -> None:
    """The reference did not train on the extra photos, but the network made fast did."""
    extra = _extra(tmp_path / "extra")
    res = subprocess.run(
        [sys.executable, "-m", "train.scratch", "--data", str(tiny_data), "--model", "tiny_cnn",
         "--crop-size", "48", "--epochs", "1", "--batch-size", "8", "--workers", "0", "--no-onnx",
         "--extra-train", str(extra), "--output", str(tmp_path / "run"),
         "--cache-dir", str(tmp_path / "cache")],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    with pytest.raises(SystemExit, match=f"--known-extra {extra}: .*fast.pt was trained on it"):
        fast.main([str(tmp_path / "run" / "scratch.pt"), "--crop-size", "40", "--data",
                   str(tiny_data), "--out", str(tmp_path / "fast.pt"), "--cache-dir",
                   str(tmp_path / "cache"), "--match", str(model_48), "--known-extra",
                   str(extra)])
    assert not (tmp_path / "fast.pt").exists()
