"""Transfer learning: real packaged weights, the resnet50 file path, caching, DDP."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from landmark.contract import load_exported
from landmark.imageio import load_image
from tests.conftest import REPO, real_photos
from train.data import scan_split
from train.data.cache import cached_split
from train.features import cached_features
from train.models import create_model
from train.models.transfer import (
    BackboneUnavailable,
    lite_weights_file,
    mobilenet_v2_imagenet,
    timm_backbone,
)
from train.presets import EvalPreprocess

SUSPENSION_BRIDGE = 839  # ImageNet class


def _batch(paths: list[Path]) -> list[torch.Tensor]:
    return [torch.from_numpy(np.asarray(load_image(p)).copy()).permute(2, 0, 1)[None].float()
            / 255 for p in paths]


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1",
                                  "efficientnet_lite2", "mobilenet_v2"])
def test_offline_backbones_carry_real_imagenet_weights(name: str) -> None:
    """A Golden Gate Bridge photo is a 'suspension bridge' in ImageNet's top-5."""
    if name == "mobilenet_v2":
        net = mobilenet_v2_imagenet()
    else:
        v = int(name[-1])
        net = timm_backbone(f"tf_efficientnet_lite{v}", weights=lite_weights_file(v),
                            num_classes=1000)
    pre = EvalPreprocess(create_model(name, 2, pretrained=False).preset)
    photos = [real_photos("05.Golden_Gate_Bridge")[i] for i in (0, 1, 4)]
    with torch.no_grad():
        hits = [SUSPENSION_BRIDGE in net.eval()(pre(x)).topk(5).indices[0].tolist()
                for x in _batch(photos)]
    assert sum(hits) >= 2, hits
    random = timm.create_model("tf_efficientnet_lite0", num_classes=1000).eval()
    with torch.no_grad():
        assert SUSPENSION_BRIDGE not in random(pre(_batch(photos[:1])[0])).topk(5).indices[0]


def test_preset_comes_from_backbone_config() -> None:
    lite2 = create_model("efficientnet_lite2", 3, pretrained=False).preset
    assert (lite2.crop_size, lite2.mean, lite2.interpolation) == (260, (0.5,) * 3, "bicubic")
    mobile = create_model("mobilenet_v2", 3, pretrained=False).preset
    assert mobile.crop_size == 224 and mobile.mean[0] == pytest.approx(0.485)


def test_resnet50_loads_local_file_trains_and_exports(tiny_data: Path, tmp_path: Path) -> None:
    ref = timm.create_model("resnet50", num_classes=1000)
    weights = tmp_path / "resnet50.pth"
    torch.save(ref.state_dict(), weights)
    out = tmp_path / "run"
    res = subprocess.run(
        [sys.executable, "-m", "train.transfer", "--data", str(tiny_data), "--model",
         "resnet50", "--weights", str(weights), "--strategy", "finetune", "--epochs", "1",
         "--batch-size", "8", "--feature-views", "1", "--workers", "0",
         "--no-onnx", "--output", str(out),
         "--cache-dir", str(tmp_path / "cache")],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    model = load_exported(out / "transfer.pt")
    assert model.metadata["architecture"] == "resnet50"
    assert model.metadata["preset"]["crop_size"] == 224
    assert model.module(torch.rand(1, 3, 300, 400)).shape == (1, 2)
    net = create_model("resnet50", 2, weights=str(weights))
    assert torch.equal(net.backbone.conv1.weight, ref.conv1.weight)


def test_resnet50_without_network_fails_fast_naming_the_alternatives(tiny_data: Path) -> None:
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0"}
    res = subprocess.run([sys.executable, "-m", "train.transfer", "--data", str(tiny_data)],
                         cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode != 0
    assert "--weights" in res.stderr and "efficientnet_lite0" in res.stderr
    assert "Traceback" not in res.stderr
    with pytest.raises(BackboneUnavailable, match="not found"):
        create_model("resnet50", 2, weights="/nonexistent.pth")


def test_feature_cache_equals_running_the_backbone(tiny_data: Path, tmp_path: Path) -> None:
    model = create_model("efficientnet_lite0", 2).eval()
    data = cached_split(scan_split(tiny_data, "train"), model.preset.resize_size,
                        model.preset.interpolation, cache_dir=tmp_path)
    first, labels = cached_features(model.backbone, data, model.preset, 2, tmp_path, "t")
    again, _ = cached_features(model.backbone, data, model.preset, 2, tmp_path, "t")
    assert torch.equal(first, again) and len(list(tmp_path.glob("feat-*"))) == 2
    n = len(data.labels)
    x = data.images.float() / 255
    with torch.no_grad():
        live = model.head(first[:n])
        full = model(EvalPreprocess(model.preset)(x))
        mirrored = model.backbone(EvalPreprocess(model.preset)(x).flip(-1))
    assert torch.allclose(live, full, atol=1e-4)
    assert torch.allclose(first[n:], mirrored, atol=1e-4)
    assert torch.equal(labels[:n], labels[n:])


def test_ddp_on_two_cpu_processes_with_gloo(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    res = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
         "--master_port=29533", "-m", "train.scratch", "--data", str(tiny_data), "--model",
         "tiny_cnn", "--epochs", "2", "--batch-size", "4", "--workers", "0",
         "--no-onnx", "--output",
         str(out), "--cache-dir", str(tmp_path / "cache")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((out / "scratch.report.json").read_text())
    assert report["world_size"] == 2
    assert load_exported(out / "scratch.pt").module(torch.rand(1, 3, 64, 64)).shape == (1, 2)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "mobilenet_v2", "resnet50"])
def test_split_backbone_composes_to_the_backbone(name: str) -> None:
    from train.models.transfer import split_backbone
    model = create_model(name, 3, pretrained=False).eval()
    x = torch.rand(2, 3, 96, 96)
    for blocks in (1, 2):
        trunk, top = split_backbone(model.backbone, blocks)
        with torch.no_grad():
            assert torch.allclose(top(trunk(x)), model.backbone(x), atol=1e-5)
        assert all(any(p is q for q in model.backbone.parameters()) for p in top.parameters())


def test_partial_strategy_trains_last_stage_and_exports(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = subprocess.run(
        [sys.executable, "-m", "train.transfer", "--data", str(tiny_data), "--model",
         "efficientnet_lite0", "--strategy", "partial", "--epochs", "2", "--batch-size", "8",
         "--feature-views", "2", "--workers", "0", "--no-onnx", "--mixup", "0.2", "--cutmix", "1.0",
         "--output", str(out), "--cache-dir", str(tmp_path / "cache")],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "--mixup/--cutmix apply to photos only" in res.stderr  # not to cached maps
    exported = load_exported(out / "transfer.pt")
    report = json.loads((out / "transfer.report.json").read_text())
    assert report["strategy"] == "partial" and report["unfreeze"] == 1
    # the last stage moved away from the ImageNet weights, the stem did not
    pretrained = create_model("efficientnet_lite0", 2).backbone.state_dict()
    tuned = {k.removeprefix("features.net."): v for k, v in exported.module.state_dict().items()
             if k.startswith("features.net.")}
    assert torch.equal(tuned["conv_stem.weight"], pretrained["conv_stem.weight"])
    assert not torch.equal(tuned["conv_head.weight"], pretrained["conv_head.weight"])
    # the run folder exports again (its stages keep their checkpoints in subfolders)
    again = subprocess.run(
        [sys.executable, "-m", "train.transfer", "--data", str(tiny_data), "--model",
         "efficientnet_lite0", "--strategy", "partial", "--output", str(out), "--export-only",
         "--no-onnx",
         "--export", str(tmp_path / "again.pt"), "--cache-dir", str(tmp_path / "cache")],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    x = torch.rand(2, 3, 64, 48)
    assert torch.allclose(load_exported(tmp_path / "again.pt").module(x), exported.module(x),
                          atol=1e-6)
