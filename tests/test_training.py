"""The training engine: it learns, it resumes, it runs as a CLI."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from landmark.contract import load_exported
from tests.conftest import REPO, real_photos
from train import checkpoint
from train.data import TensorImageDataset, scan_split
from train.data.cache import cached_split
from train.engine import TrainConfig, Trainer, predict
from train.models import create_model
from train.presets import Preset, eval_transform, train_transform


def _data(tiny_data: Path, cache_dir: Path, size: int = 36):
    return cached_split(scan_split(tiny_data, "train"), size, cache_dir=cache_dir)


def test_two_classes_overfit_to_100_percent(tiny_data: Path, cache_dir: Path,
                                            tmp_path: Path) -> None:
    data = _data(tiny_data, cache_dir)
    torch.manual_seed(0)
    model = create_model("tiny_cnn", 2)
    ds = TensorImageDataset(data.images, data.labels, eval_transform(model.preset))
    cfg = TrainConfig(epochs=60, batch_size=8, lr=1e-2, warmup_epochs=1, weight_decay=0.0,
                      label_smoothing=0.0, patience=100, workers=0, precision="fp32")
    trainer = Trainer(model, 2, cfg, tmp_path / "run")
    history = trainer.fit(ds, ds)
    probs, labels = predict(model, torch.utils.data.DataLoader(ds, 16), torch.device("cpu"))
    assert (probs.argmax(1) == labels).float().mean().item() == 1.0
    assert history[-1]["train_loss"] < history[0]["train_loss"] / 4
    assert (tmp_path / "run" / "best.pt").exists()
    assert (tmp_path / "run" / "metrics.csv").read_text().count("\n") == len(history) + 1


class _Interrupt(TensorImageDataset):
    """Raises KeyboardInterrupt at a given item once armed (a kill in mid-epoch)."""

    calls = 0
    fail_at = -1

    def __getitem__(self, i: int):
        _Interrupt.calls += 1
        if _Interrupt.calls == _Interrupt.fail_at:
            raise KeyboardInterrupt
        return super().__getitem__(i)


def _trainer(run: Path) -> tuple[Trainer, TrainConfig]:
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=4, batch_size=4, lr=5e-3, warmup_epochs=1, workers=0,
                      precision="fp32", patience=100)
    return Trainer(create_model("tiny_cnn", 2), 2, cfg, run), cfg


def test_resume_after_interruption_matches_uninterrupted_run(
        tiny_data: Path, cache_dir: Path, tmp_path: Path) -> None:
    data = _data(tiny_data, cache_dir)
    preset = create_model("tiny_cnn", 2).preset

    def datasets():
        return (_Interrupt(data.images, data.labels, train_transform(preset)),
                TensorImageDataset(data.images, data.labels, eval_transform(preset)))

    straight, _ = _trainer(tmp_path / "a")
    _Interrupt.calls, _Interrupt.fail_at = 0, -1
    straight.fit(*datasets())

    killed, _ = _trainer(tmp_path / "b")
    _Interrupt.calls, _Interrupt.fail_at = 0, 2 * len(data.labels) + 5  # in epoch 3
    with pytest.raises(KeyboardInterrupt):
        killed.fit(*datasets())
    assert checkpoint.load(tmp_path / "b" / "last.pt")["epoch"] == 2

    resumed, _ = _trainer(tmp_path / "b")
    _Interrupt.fail_at = -1
    history = resumed.fit(*datasets(), resume=True)
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    for name, value in straight.model.state_dict().items():
        assert torch.allclose(value.float(), resumed.model.state_dict()[name].float(),
                              atol=1e-6), name


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "train.scratch", *args, "--no-onnx"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_cli_missing_dataset_is_one_clear_line(tmp_path: Path) -> None:
    res = _cli("--data", str(tmp_path / "missing"), "--output", str(tmp_path / "r"))
    assert res.returncode != 0
    assert "dataset folder not found" in res.stderr
    assert "Traceback" not in res.stderr


def test_cli_trains_exports_and_reports(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = _cli("--data", str(tiny_data), "--model", "tiny_cnn", "--epochs", "2",
               "--batch-size", "8", "--workers", "0", "--output", str(out),
               "--cache-dir", str(tmp_path / "cache"))
    assert res.returncode == 0, res.stderr[-2000:]
    for name in ("scratch.pt", "scratch.report.json", "scratch.curves.png",
                 "scratch.confusion.png", "scratch.reliability.png", "metrics.csv", "last.pt",
                 "best.pt"):
        assert (out / name).stat().st_size > 0, name
    assert "test top-1" in res.stderr
    meta = load_exported(out / "scratch.pt").metadata
    assert 0 < meta["reject_threshold"] < 1 and meta["temperature"] > 0
    report = json.loads((out / "scratch.report.json").read_text())
    assert report["open_set"]["shipped"]["n_unknown"] == 3  # the held-out half
    assert report["open_set"]["tune"]["n_unknown"] == 3
    scores = {"max_probability", "shipped (with background logit)", "max_logit", "energy",
              "prototype_cosine", "nearest_photo_cosine"}
    assert set(report["open_set"]["auroc_by_score"]) == scores
    assert set(report["open_set"]["auroc_by_score_tune"]) == scores
    # the file, evaluated on its own, reproduces the training-time figures
    ev = subprocess.run([sys.executable, "-m", "train.evaluate", str(out / "scratch.pt"),
                         "--data", str(tiny_data), "--out", str(tmp_path / "ev")],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert ev.returncode == 0, ev.stderr[-2000:]
    evaluated = json.loads((tmp_path / "ev.json").read_text())
    assert evaluated["top1"] == pytest.approx(report["test"]["top1"], abs=1e-6)
    assert evaluated["open_set"]["known_accepted"] == pytest.approx(
        report["open_set"]["shipped"]["known_accepted"], abs=1e-6)
    # a run folder exported again (as after training on a GPU box) gives the same model
    # and keeps the training command
    again = _cli("--data", str(tiny_data), "--model", "tiny_cnn", "--output", str(out),
                 "--cache-dir", str(tmp_path / "cache"), "--export-only",
                 "--export", str(tmp_path / "again.pt"))
    assert again.returncode == 0, again.stderr[-2000:]
    assert "epoch 1" not in again.stderr  # nothing was trained
    first, second = load_exported(out / "scratch.pt"), load_exported(tmp_path / "again.pt")
    x = torch.rand(2, 3, 50, 40)
    assert torch.allclose(first.module(x), second.module(x), atol=1e-6)
    assert second.metadata["command"] == meta["command"]
    assert "--export-only" in second.metadata["export_command"]
    assert second.metadata["training"]["train_seconds"] == report["train_seconds"]


def test_no_validation_photos_is_one_clear_line(tiny_data: Path, tmp_path: Path) -> None:
    res = _cli("--data", str(tiny_data), "--model", "tiny_cnn", "--val-fraction", "0.01",
               "--output", str(tmp_path / "r"), "--cache-dir", str(tmp_path / "cache"))
    assert res.returncode != 0
    assert "leaves no readable validation photos" in res.stderr
    assert "Traceback" not in res.stderr


def _dataset(root: Path, classes: dict[str, list[Path | bytes]]) -> Path:
    """ROOT/train/CLASS/ holding copies of photos, or files with the given bytes."""
    for cls, items in classes.items():
        folder = root / "train" / cls
        folder.mkdir(parents=True)
        for i, item in enumerate(items):
            (folder / f"{i:02d}.jpg").write_bytes(
                item.read_bytes() if isinstance(item, Path) else item)
    return root


@pytest.mark.parametrize(("kind", "message"), [
    ("one class", "holds one class folder (03.Eiffel_Tower); a classifier needs at least two"),
    ("all unreadable", "none of the 20 photos in"),
    ("ten junk files", "none of the 10 photos in"),
    ("one class readable", "only 03.Eiffel_Tower has readable training photos"),
])
def test_data_it_cannot_learn_from_is_one_clear_line(tmp_path: Path, kind: str,
                                                     message: str) -> None:
    photos = real_photos("03.Eiffel_Tower", n=10)
    junk = b"\xff\xd8 not a photo"
    classes = {"one class": {"03.Eiffel_Tower": photos},
               "all unreadable": {"03.Eiffel_Tower": [junk] * 10, "11.Niagara_Falls": [junk] * 10},
               "ten junk files": {"03.Eiffel_Tower": [junk] * 5, "11.Niagara_Falls": [junk] * 5},
               "one class readable": {"03.Eiffel_Tower": photos,
                                      "11.Niagara_Falls": [junk] * 10}}[kind]
    data = _dataset(tmp_path / "data", classes)
    res = _cli("--data", str(data), "--model", "tiny_cnn", "--epochs", "1", "--output",
               str(tmp_path / "r"), "--cache-dir", str(tmp_path / "cache"))
    assert res.returncode != 0 and not (tmp_path / "r" / "scratch.pt").exists()
    assert f"error: {message}" in res.stderr or message in res.stderr, res.stderr[-1500:]
    assert "Traceback" not in res.stderr and "--val-fraction" not in res.stderr


def test_export_only_without_a_run_is_one_clear_line(tiny_data: Path, tmp_path: Path) -> None:
    res = _cli("--data", str(tiny_data), "--model", "tiny_cnn", "--output",
               str(tmp_path / "none"), "--cache-dir", str(tmp_path / "cache"), "--export-only")
    assert res.returncode != 0
    assert "--export-only needs" in res.stderr and "Traceback" not in res.stderr


def test_logit_views_capture_the_features_the_head_sees(tiny_data: Path,
                                                       cache_dir: Path) -> None:
    from train.assess import logit_views
    model = create_model("tiny_cnn", 2)
    data = _data(tiny_data, cache_dir, model.preset.resize_size)
    (plain, mirror), feats = logit_views(model, model.preset, data, flip=True)
    assert feats.shape == (len(data.labels), model.head[-1].in_features)
    assert torch.allclose(model.head[-1](feats), plain, atol=1e-5)
    assert not torch.allclose(plain, mirror)


def test_feature_scores_rank_familiar_photos_above_strange_ones() -> None:
    from train.assess import feature_scores
    train = torch.tensor([[1.0, 0, 0], [0.9, 0.1, 0], [0, 1.0, 0], [0.1, 0.9, 0]])
    scores = feature_scores(train, torch.tensor([0, 0, 1, 1]),
                            torch.tensor([[2.0, 0, 0], [0, 0, 1.0]]))
    assert scores["nearest_photo_cosine"].tolist() == pytest.approx([1.0, 0.0], abs=1e-6)
    assert scores["prototype_cosine"][0] > 0.99 and abs(scores["prototype_cosine"][1]) < 1e-6


def test_auto_workers_follow_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    from landmark.imageio import resolve_workers
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert resolve_workers(-1, cpu) == 0  # a worker would only compete for the 2 cores
    assert resolve_workers(3, cpu) == 3
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert resolve_workers(-1, cpu) == 8 and resolve_workers(-1, gpu) == 8


def _clusters_with_outliers(outlier_weight: float, tmp_path: Path) -> tuple[float, float]:
    """A small MLP on three labelled clusters plus unlabelled (-1) photos from a fourth:
    (mean top probability on fresh photos of the fourth cluster, training accuracy)."""
    gen = torch.Generator().manual_seed(0)
    centres = torch.eye(6) * 3
    known = torch.cat([centres[c] + 0.5 * torch.randn(40, 6, generator=gen) for c in range(3)])
    labels = torch.arange(3).repeat_interleave(40)
    outliers, fresh = (centres[3] + 0.5 * torch.randn(n, 6, generator=gen) for n in (60, 100))
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    cfg = TrainConfig(epochs=30, batch_size=32, lr=1e-2, warmup_epochs=1, weight_decay=0.0,
                      label_smoothing=0.0, patience=100, workers=0, precision="fp32",
                      outlier_weight=outlier_weight)
    train = torch.utils.data.ConcatDataset([
        torch.utils.data.TensorDataset(known, labels),
        torch.utils.data.TensorDataset(outliers, torch.full((60,), -1))])
    Trainer(net, 3, cfg, tmp_path / str(outlier_weight)).fit(
        train, torch.utils.data.TensorDataset(known, labels))
    with torch.no_grad():
        net.eval()
        return (net(fresh).softmax(1).max(1).values.mean().item(),
                (net(known).argmax(1) == labels).float().mean().item())


def test_outlier_exposure_spreads_belief_on_unknown_places(tmp_path: Path) -> None:
    plain_conf, plain_acc = _clusters_with_outliers(0.0, tmp_path)
    exposed_conf, exposed_acc = _clusters_with_outliers(1.0, tmp_path)
    assert plain_acc == exposed_acc == 1.0  # the labelled photos are still learnt
    assert plain_conf > 0.55  # without exposure the net is sure of something
    assert exposed_conf < 0.45  # near the uniform 1/3 on photos like the outliers


def test_unknown_parts_keep_the_report_half_apart() -> None:
    from train.data import split_unknown
    plain, exposed = split_unknown(30), split_unknown(30, exposure=True)
    assert plain["hold"] == exposed["hold"] and len(plain["hold"]) == 15
    assert plain["train"] == [] and sorted(exposed["tune"] + exposed["train"]) == plain["tune"]
    assert len(exposed["train"]) == 10 and not set(exposed["tune"]) & set(exposed["train"])
    assert split_unknown(30, exposure=True) == exposed  # seeded


def test_outliers_leave_out_unknown_photos_of_places_to_be_taught(tmp_path: Path) -> None:
    from train.data import split_unknown
    from train.data.cache import CachedSplit
    from train.runner import outlier_photos
    paths = [f"/u/{i:02d}.jpg" for i in range(30)]
    unknown = CachedSplit(torch.arange(30), torch.full((30,), -1), paths, ["a", "b"], [])
    exposed = split_unknown(30, exposure=True)["train"]
    shown = [paths[exposed[0]], paths[exposed[3]]]
    places = tmp_path / "places"
    places.mkdir()
    (places / "places.json").write_text(json.dumps({
        "Bridge": {"also_in_unknown": [Path(shown[0]).name]},
        "Tower": {"also_in_unknown": [Path(shown[1]).name, "not_here.jpg"]}}))
    kept = outlier_photos(unknown, [places])
    assert kept.paths == [paths[i] for i in exposed if paths[i] not in shown]
    assert kept.images.tolist() == [i for i in exposed if paths[i] not in shown]
    assert outlier_photos(unknown, []).paths == [paths[i] for i in exposed]


def test_cli_outlier_exposure_trains_on_unknown_and_reports_on_the_rest(
        tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = _cli("--data", str(tiny_data), "--model", "tiny_cnn", "--epochs", "1",
               "--batch-size", "8", "--workers", "0", "--outlier-weight", "0.5",
               "--augment-on", "device",  # outlier photos take the device path too
               "--output", str(out), "--cache-dir", str(tmp_path / "cache"))
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads((out / "scratch.report.json").read_text())
    assert report["outlier_exposure"] == {"weight": 0.5, "photos": 2}
    seen = load_exported(out / "scratch.pt").metadata["training_data"]
    assert seen["outlier_photos"] == 2 and seen["outlier_skip"] == []
    assert report["open_set"]["tune"]["n_unknown"] == 1  # the rest of the tuning half
    assert report["open_set"]["shipped"]["n_unknown"] == 3  # the held-out half, unchanged
    # exporting it again without the flag would tune on photos it trained on: refused
    mismatch = _cli("--data", str(tiny_data), "--model", "tiny_cnn", "--output", str(out),
                    "--cache-dir", str(tmp_path / "cache"), "--export-only")
    assert mismatch.returncode != 0 and "--outlier-weight 0.5" in mismatch.stderr
    missing = _cli("--data", str(tiny_data), "--model", "tiny_cnn", "--outlier-weight", "0.5",
                   "--unknown", str(tmp_path / "nowhere"), "--output", str(tmp_path / "r2"),
                   "--cache-dir", str(tmp_path / "cache"))
    assert missing.returncode != 0
    assert "--outlier-weight needs photos" in missing.stderr
    assert "Traceback" not in missing.stderr


def _extra(root: Path, photos: dict[str, list[Path]]) -> Path:
    for cls, files in photos.items():
        (root / "train" / cls).mkdir(parents=True)
        for p in files:
            shutil.copy(p, root / "train" / cls / f"extra_{p.name}")
    return root


def test_extra_train_with_an_unknown_class_is_one_clear_line(tiny_data: Path,
                                                             tmp_path: Path) -> None:
    extra = _extra(tmp_path / "extra", {"99.Nowhere": real_photos("03.Eiffel_Tower", n=2)})
    res = _cli("--data", str(tiny_data), "--model", "tiny_cnn", "--extra-train", str(extra),
               "--output", str(tmp_path / "r"), "--cache-dir", str(tmp_path / "cache"))
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "class folders not in training classes: ['99.Nowhere']" in res.stderr


def test_extra_photos_train_but_never_validate(tiny_data: Path, tiny_model: Path,
                                              tmp_path: Path) -> None:
    extra = _extra(tmp_path / "extra", {
        "03.Eiffel_Tower": real_photos("03.Eiffel_Tower", n=14)[8:],
        "11.Niagara_Falls": real_photos("11.Niagara_Falls", n=10)[8:]})
    out = tmp_path / "run"
    res = _cli("--data", str(tiny_data), "--model", "tiny_cnn", "--epochs", "1",
               "--batch-size", "8", "--workers", "0", "--extra-train", str(extra),
               "--balance", "sampler", "--init", str(tiny_model), "--teacher", str(tiny_model),
               "--output", str(out), "--cache-dir", str(tmp_path / "cache"))
    assert res.returncode == 0, res.stderr[-2000:]
    val = json.loads((out / "val_outputs.json").read_text())["paths"]
    assert val and not [p for p in val if "extra_" in p]
    seen = load_exported(out / "scratch.pt").metadata["training_data"]
    assert seen["extra_train"] == [str(extra)] and seen["balance"] == "sampler"
    assert seen["initialised_from"] == seen["teacher"] == str(tiny_model)
    assert seen["train_photos"] + seen["val_photos"] == 16 + 8
    assert seen["train_per_class"]["03.Eiffel_Tower"] == seen["train_per_class"][
        "11.Niagara_Falls"] + 4
    # exported again from the run folder without the training options, it records them
    again = _cli("--data", str(tiny_data), "--model", "tiny_cnn", "--output", str(out),
                 "--cache-dir", str(tmp_path / "cache"), "--export-only",
                 "--export", str(tmp_path / "again.pt"))
    assert again.returncode == 0, again.stderr[-2000:]
    kept = load_exported(tmp_path / "again.pt").metadata["training_data"]
    assert kept == seen
    # the folder moved (a run copied from a GPU box): one clear line, then its path here
    moved = extra.rename(tmp_path / "moved")
    lost = _cli("--data", str(tiny_data), "--model", "tiny_cnn", "--output", str(out),
                "--cache-dir", str(tmp_path / "cache"), "--export-only")
    assert lost.returncode != 0 and "Traceback" not in lost.stderr
    assert f"trained with --extra-train {extra}, which is not here" in lost.stderr
    here = _cli("--data", str(tiny_data), "--model", "tiny_cnn", "--output", str(out),
                "--cache-dir", str(tmp_path / "cache"), "--export-only", "--extra-train",
                str(moved), "--export", str(tmp_path / "here.pt"))
    assert here.returncode == 0, here.stderr[-2000:]
    assert load_exported(tmp_path / "here.pt").metadata["training_data"]["train_per_class"] \
        == seen["train_per_class"]


def test_init_starts_from_an_exported_models_weights(tiny_model: Path) -> None:
    from train.finish.reexport import rebuild
    from train.runner import init_from
    shipped = rebuild(tiny_model)[0].state_dict()
    model = create_model("tiny_cnn", 2)
    assert any(not torch.equal(v, shipped[k]) for k, v in model.state_dict().items())
    init_from(model, tiny_model, load_exported(tiny_model).classes)
    assert all(torch.equal(v, shipped[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("init, expected", [
    ("model", "a tiny_cnn over 2 classes; this run trains a landmark_resnet_s"),
    ("junk", "not a readable model file")])
def test_init_from_another_network_is_one_clear_line(tiny_data: Path, tiny_model: Path,
                                                      tmp_path: Path, init: str,
                                                      expected: str) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    res = _cli("--data", str(tiny_data), "--model", "landmark_resnet_s", "--init",
               str(tiny_model if init == "model" else junk), "--output", str(tmp_path / "r"),
               "--cache-dir", str(tmp_path / "cache"))
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert expected in res.stderr


def test_a_teacher_scores_the_students_views_as_its_own_file_would(tiny_model: Path) -> None:
    """The student's views are normalised for the student; the teacher normalises them
    again for itself, so it gives the logits its own network gives the same pixels."""
    from train.distill import Teacher
    from train.finish.reexport import rebuild
    net, preset, exp = rebuild(tiny_model)
    student = Preset(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert student.mean != preset.mean
    pixels = torch.rand(2, 3, preset.crop_size, preset.crop_size,
                        generator=torch.Generator().manual_seed(0))
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (preset.mean, preset.std))
    with torch.no_grad():
        own = net((pixels - mean) / std)
    got = Teacher(tiny_model, student, exp.classes)((pixels - 0.5) / 0.25)
    assert torch.allclose(got, own, atol=1e-5)


def test_a_student_follows_its_teacher_by_the_distill_weight(tmp_path: Path) -> None:
    """Every label says class 0 and the teacher says class 1: with the whole loss on the
    teacher the student learns class 1, with none of it class 0."""
    class Says(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tensor([[-4.0, 4.0]]).expand(len(x), 2)

    images = torch.randint(0, 256, (16, 3, 40, 40), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    ds = TensorImageDataset(images, torch.zeros(16, dtype=torch.long), lambda x: x.float() / 255)
    learned = {}
    for weight in (0.0, 1.0):
        cfg = TrainConfig(epochs=15, batch_size=8, lr=1e-2, warmup_epochs=0, workers=0,
                          distill_weight=weight, precision="fp32")
        trainer = Trainer(create_model("tiny_cnn", 2), 2, cfg, tmp_path / str(weight), Says())
        trainer.fit(ds, ds)
        with torch.no_grad():
            learned[weight] = trainer.model.eval()(images.float() / 255).argmax(1)
    assert (learned[0.0] == 0).all() and (learned[1.0] == 1).all()


def test_a_teacher_over_other_classes_is_one_clear_line(tiny_data: Path, tmp_path: Path,
                                                        ) -> None:
    res = _cli("--data", str(tiny_data), "--model", "tiny_cnn", "--teacher",
               str(REPO / "models" / "scratch.pt"), "--epochs", "1", "--workers", "0",
               "--output", str(tmp_path / "r"), "--cache-dir", str(tmp_path / "cache"))
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "--teacher" in res.stderr and "its 19 classes are not the 2 classes" in res.stderr


def test_balance_draws_classes_evenly_or_weights_the_loss(tmp_path: Path) -> None:
    from train.data.datasets import class_weights
    labels = torch.tensor([0] * 90 + [1] * 10)
    ds = TensorImageDataset(torch.zeros(100, 3, 8, 8, dtype=torch.uint8), labels,
                            lambda x: x.float())
    cfg = TrainConfig(batch_size=10, workers=0, balance="sampler")
    trainer = Trainer(create_model("tiny_cnn", 2), 2, cfg, tmp_path / "r")
    drawn = torch.cat([y for _ in range(10) for _, y in trainer.loader(ds, True)])
    share = (drawn == 1).float().mean().item()
    assert 0.4 < share < 0.6  # unbalanced, class 1 would be 10%
    assert torch.allclose(class_weights(labels, 2), torch.tensor([100 / 180, 100 / 20]))


def test_photos_augmented_on_the_device_get_their_own_views(tmp_path: Path) -> None:
    """--augment-on device: the DataLoader hands over uint8 photos and every photo of a
    batch gets its own random view on the training device (the same pipeline as the
    loader's), so a GPU box's few CPU cores do not starve the GPU."""
    model = create_model("tiny_cnn", 2)
    size = model.preset.resize_size
    photo = torch.randint(0, 256, (3, size, size), generator=torch.Generator().manual_seed(0),
                          dtype=torch.uint8)
    ds = TensorImageDataset(photo.expand(8, -1, -1, -1).clone(), torch.tensor([0, 1] * 4),
                            torch.nn.Identity())
    seen = []
    model.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach().clone()))
    cfg = TrainConfig(epochs=1, batch_size=8, workers=0, precision="fp32", augment_on="device")
    trainer = Trainer(model, 2, cfg, tmp_path / "r")
    assert trainer.augments_on_device()
    assert not Trainer(model, 2, TrainConfig(augment_on="auto"), tmp_path / "a"
                       ).augments_on_device()  # a CPU: the loader's workers augment
    trainer.fit(ds, TensorImageDataset(ds.images, ds.labels, eval_transform(model.preset)),
                augment=train_transform(model.preset))
    batch = seen[0]
    crop = model.preset.crop_size
    assert batch.dtype == torch.float32 and batch.shape == (8, 3, crop, crop)
    assert len({tuple(v.flatten()[:64].tolist()) for v in batch}) == 8  # eight views


def test_degrade_recomputes_only_the_augmented_feature_views(tiny_data: Path, cache_dir: Path,
                                                              tmp_path: Path) -> None:
    """Cached frozen features: views 0 and 1 (the eval crop and its mirror) are shared by
    runs that differ only in augmentation; the augmented views are not."""
    from dataclasses import replace

    from train.features import cached_features
    model = create_model("tiny_cnn", 2)
    data = _data(tiny_data, cache_dir, model.preset.resize_size)
    backbone = torch.nn.Sequential(model.features, torch.nn.AdaptiveAvgPool2d(1),
                                   torch.nn.Flatten())
    feats = tmp_path / "feats"
    plain, _ = cached_features(backbone, data, model.preset, 3, feats, "train")
    assert len(list(feats.iterdir())) == 3
    torch.manual_seed(1)
    degraded, _ = cached_features(backbone, data, replace(model.preset, degrade=1.0), 3, feats,
                                  "train")
    assert len(list(feats.iterdir())) == 4
    n = len(data.labels)
    assert torch.equal(plain[:2 * n], degraded[:2 * n])
    assert not torch.allclose(plain[2 * n:], degraded[2 * n:])
