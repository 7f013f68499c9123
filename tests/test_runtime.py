"""Both runtimes of one model file, TorchScript (`.pt`) and ONNX Runtime (`.onnx` beside
it), give the same answers on real photos; `auto`, `--runtime` and a stale twin."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from landmark.predict import Predictor
from landmark.resolve import MODELS_DIR
from landmark.runtime import RuntimeChoiceError, choose, onnx_path
from tests.conftest import REPO, SHARED

PHOTOS = [p for c in sorted(d.name for d in (SHARED / "test").iterdir())
          for p in sorted((SHARED / "test" / c).iterdir())[:2]]


@pytest.mark.parametrize("name", ["transfer", "scratch"])
def test_both_runtimes_give_the_same_answers_on_real_photos(name: str) -> None:
    ts = Predictor(MODELS_DIR / f"{name}.pt", "torchscript")
    ox = Predictor(MODELS_DIR / f"{name}.pt", "onnx")
    assert (ts.runtime, ox.runtime) == ("torchscript", "onnx")
    assert ox.classes == ts.classes and ox.metadata == ts.metadata
    images = [ts.load(p) for p in PHOTOS]
    probs_ts, emb_ts = ts.run(images)
    probs_ox, emb_ox = ox.run(images)
    assert len(images) == 38
    assert torch.equal(probs_ts.argmax(1), probs_ox.argmax(1))
    assert (probs_ts - probs_ox).abs().max() < 1e-4
    assert torch.nn.functional.cosine_similarity(emb_ts, emb_ox).min() > 1 - 1e-4
    # so every decision built on them holds: named or not, and the same top landmark
    for p in PHOTOS[::4]:
        a, b = ts.tag(p), ox.tag(p)
        assert (a["known"], a["predictions"][0]["class"]) == (b["known"],
                                                              b["predictions"][0]["class"])


def test_auto_takes_onnx_where_the_twin_and_onnxruntime_are(tmp_path: Path) -> None:
    shipped = MODELS_DIR / "scratch.pt"
    assert choose(shipped) == "onnx" and choose(shipped, "torchscript") == "torchscript"
    alone = tmp_path / "scratch.pt"
    shutil.copy(shipped, alone)
    assert choose(alone) == "torchscript"
    with pytest.raises(RuntimeChoiceError, match=r"no scratch\.onnx beside"):
        choose(alone, "onnx")
    with pytest.raises(RuntimeChoiceError, match="choose from auto, onnx, torchscript"):
        choose(shipped, "tensorrt")


def test_a_twin_made_from_another_file_is_never_served(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    model = tmp_path / "transfer.pt"
    shutil.copy(MODELS_DIR / "transfer.pt", model)
    shutil.copy(MODELS_DIR / "scratch.onnx", onnx_path(model))  # the wrong twin
    with caplog.at_level(logging.WARNING, logger="landmark.predict"):
        fallback = Predictor(model)
    assert fallback.runtime == "torchscript"
    assert "was made from another model file" in caplog.text
    with pytest.raises(RuntimeChoiceError, match="made from another model file"):
        Predictor(model, "onnx")
    monkeypatch.setenv("LANDMARK_RUNTIME", "onnx")
    with pytest.raises(RuntimeChoiceError):
        Predictor(model)


def test_the_trainers_export_writes_a_matching_twin(tiny_model: Path) -> None:
    twin = onnx_path(tiny_model)
    assert twin.is_file()
    ts, ox = Predictor(tiny_model, "torchscript"), Predictor(tiny_model, "onnx")
    images = [ts.load(p) for p in PHOTOS[::3]]
    (pa, ea), (pb, eb) = ts.run(images), ox.run(images)
    assert (pa - pb).abs().max() < 1e-4
    assert torch.nn.functional.cosine_similarity(ea, eb).min() > 1 - 1e-4


def test_tag_cli_runtime_flag_and_log(tmp_path: Path) -> None:
    records = {}
    for runtime in ("torchscript", "onnx"):
        out = tmp_path / f"{runtime}.jsonl"
        res = subprocess.run([sys.executable, "-m", "landmark.tag", *map(str, PHOTOS[:6]),
                              "--model", "transfer", "--runtime", runtime, "--out", str(out)],
                             cwd=REPO, capture_output=True, text=True, timeout=300,
                             env={**os.environ, "LANDMARK_HUB_REPO": "off"})
        assert res.returncode == 0, res.stderr
        assert ("ONNX Runtime" if runtime == "onnx" else "TorchScript") in res.stderr
        records[runtime] = [json.loads(line) for line in out.read_text().splitlines()]
    for a, b in zip(records["torchscript"], records["onnx"], strict=True):
        assert a["file"] == b["file"] and a["known"] == b["known"]
        assert [p["class"] for p in a["predictions"]] == [p["class"] for p in b["predictions"]]
        assert all(abs(p["confidence"] - q["confidence"]) <= 2e-4
                   for p, q in zip(a["predictions"], b["predictions"], strict=True))


def test_finish_onnx_makes_the_twin_of_a_file_exported_before(tmp_path: Path) -> None:
    model = tmp_path / "scratch.pt"
    shutil.copy(MODELS_DIR / "scratch.pt", model)
    res = subprocess.run([sys.executable, "-m", "train.finish.onnx", str(model)], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert Predictor(model).runtime == "onnx"
    assert model.read_bytes() == (MODELS_DIR / "scratch.pt").read_bytes()  # left as it was
