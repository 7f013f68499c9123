"""bench.inference measures every path of a model file, a frozen one included."""

from pathlib import Path

import torch

from bench.inference import bench_model, latencies, row
from landmark.predict import Predictor
from landmark.resolve import MODELS_DIR
from tests.conftest import real_photos
from train.export import export_model
from train.models import create_model


def test_every_path_is_measured_and_a_frozen_file_has_no_eager_columns(tmp_path: Path) -> None:
    photos = real_photos("03.Eiffel_Tower", "test", 4)
    net = create_model("tiny_cnn", 19).eval()
    frozen = export_model(net, net.preset, [f"c{i}" for i in range(19)],
                          {"architecture": "tiny_cnn"}, tmp_path / "f.pt", [torch.rand(3, 40, 50)],
                          freeze=True)
    preds = [Predictor(MODELS_DIR / "scratch.pt"), Predictor(frozen)]
    lat = latencies(preds, photos)
    assert all(0 < t["p50"] <= t["p95"] for t in lat)
    full = bench_model(preds[0], photos, batch=2, repeats=1)
    assert all(full[k] > 0 for k in ("tag", "torchscript", "streams", "eager", "raw forward"))
    bare = bench_model(preds[1], photos, batch=2, repeats=1)
    assert bare["frozen"] and "eager" not in bare and "raw forward" not in bare
    line = row("f.pt", {**bare, **lat[1]}, lat[0]["p50"])
    assert line.count("—") == 3  # raw forward, eager, tagging / raw forward
    assert f"{lat[1]['p50'] / lat[0]['p50']:.2f}" in line

