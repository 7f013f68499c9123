"""bench.int8 quantizes a shipped twin and compares it with the float one on real photos."""

from pathlib import Path

from bench.int8 import compare, quantize, twin_predictor
from landmark.predict import Predictor
from landmark.resolve import MODELS_DIR
from landmark.runtime import onnx_path
from tests.conftest import SHARED, real_photos
from train.data import Split, scan_split


def test_an_int8_twin_of_a_shipped_model_answers_like_the_float_one(tmp_path: Path) -> None:
    fp32 = Predictor(MODELS_DIR / "scratch.pt", "onnx")
    calibration = [p for c in ("03.Eiffel_Tower", "16.Stonehenge") for p in real_photos(c, n=4)]
    out = tmp_path / "int8.onnx"
    quantize(onnx_path(fp32.path), out, fp32, calibration)
    assert out.stat().st_size < onnx_path(fp32.path).stat().st_size / 2
    int8 = twin_predictor(fp32, out)
    test = scan_split(SHARED, "test", fp32.classes)
    few = Split(test.paths[::40], test.labels[::40], test.classes)
    r = compare(fp32, int8, few)
    assert r["n"] == len(few.paths) >= 10
    assert r["agree"] >= r["n"] - 2 and r["cos_median"] > 0.95
    assert abs(r["top1"][0] - r["top1"][1]) <= 2 / r["n"]
