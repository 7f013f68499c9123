"""The upright head: a photo lying on its side is turned back before it is scored."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from landmark.contract import load_exported
from landmark.imageio import center_crop, load_image, to_tensor
from landmark.resolve import MODELS_DIR
from tests.conftest import real_photos
from train.export import Upright, export_model
from train.finish.upright import main as upright
from train.models import create_model
from train.presets import Preset

CLASSES = ["03.Eiffel_Tower", "11.Niagara_Falls", "15.Space_Needle"]
# an even margin around the crop, so the centre crop of a turned square is the turned crop
PRESET = Preset(crop_size=64, resize_size=72)


def _square(path: Path) -> torch.Tensor:
    """A real photo cut square: its quarter turns then crop exactly alike."""
    x = to_tensor(load_image(path))[None].float() / 255
    return center_crop(x, min(x.shape[-2:]))


@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("landmark_resnet_s", len(CLASSES), crop_size=64).eval()


def _export(net: torch.nn.Module, path: Path, upright: Upright | None) -> torch.jit.ScriptModule:
    photos = [_square(p) for p in real_photos("03.Eiffel_Tower", n=2)]
    export_model(net, PRESET, CLASSES, {"architecture": "landmark_resnet_s"}, path,
                 [p[0] for p in photos], flip=True, upright=upright)
    return load_exported(path).module


def test_a_turn_the_head_is_sure_of_is_undone_and_others_are_left_alone(
        net: torch.nn.Module, tmp_path: Path) -> None:
    """In one batch, the photo the head finds turned once is scored as the same photo
    turned back, probabilities and embedding; the other is scored as it is."""
    plain = _export(net, tmp_path / "plain.pt", None)
    photos = torch.cat([_square(p) for p in real_photos("11.Niagara_Falls", n=2)])
    photos = torch.nn.functional.interpolate(photos, size=(120, 120), antialias=True,
                                             mode="bilinear")
    with torch.no_grad():
        layouts = net.split_head()[0](plain.pre(photos))[2]
    # a head sure of "turned once" for the photo whose layout sums higher, unsure for the other
    sums = layouts.sum(1)
    scale = 100.0 / float(sums.max() - sums.min())
    weight = torch.zeros(4, layouts.shape[1])
    weight[1] = scale
    bias = torch.tensor([0.0, -scale * float(sums.mean()), 0.0, 0.0])
    turned_one = int(sums.argmax())
    head = _export(net, tmp_path / "head.pt", Upright(weight, bias, 0.9))
    with torch.no_grad():
        got_probs, got_emb = head.probs_and_embedding(photos)
        back = photos.clone()
        back[turned_one] = torch.rot90(photos[turned_one], -1, (-2, -1))
        want_probs, want_emb = plain.probs_and_embedding(back)
    assert torch.allclose(got_probs, want_probs, atol=1e-5)
    assert torch.allclose(got_emb, want_emb, atol=1e-5)
    still = 1 - turned_one
    assert not torch.allclose(plain(photos[still:still + 1]),
                              plain(torch.rot90(photos[still:still + 1], -1, (-2, -1))))
    # unsure (below the threshold): nothing is turned
    unsure = _export(net, tmp_path / "unsure.pt",
                     Upright(torch.zeros_like(weight), torch.tensor([0.0, 1.0, 0, 0]), 0.9))
    with torch.no_grad():
        assert torch.allclose(unsure(photos), plain(photos), atol=1e-6)


def test_train_upright_learns_turns_from_real_photos(tmp_path: Path) -> None:
    """Fitted on 60 real photos, a head on the shipped scratch network turns most held-out
    photos lying on their side back, leaves upright ones be, and train.finish.reexport keeps it."""
    from train.finish.reexport import main as reexport
    from train.finish.reexport import rebuild
    net, preset, exp = rebuild(MODELS_DIR / "scratch.pt")
    plain = tmp_path / "plain.pt"  # the shipped network without its own upright head
    export_model(net, preset, exp.classes, {"architecture": exp.metadata["architecture"]},
                 plain, [torch.rand(3, 200, 300)], temperature=exp.metadata["temperature"],
                 background=exp.metadata["background_logit"])
    photos = tmp_path / "photos"
    for cls in CLASSES:
        (photos / cls).mkdir(parents=True)
        for p in real_photos(cls, n=20):
            shutil.copy(p, photos / cls / p.name)
    out = tmp_path / "upright.pt"
    assert upright([str(plain), "--photos", str(photos), "--out", str(out)]) == 0
    before, head = load_exported(plain), load_exported(out)
    meta = head.metadata["upright"]
    assert meta["photos"] == 60 and 0.5 <= meta["threshold"] == head.metadata[
        "upright_threshold"] < 1
    held_out = [_square(p) for cls in CLASSES for p in real_photos(cls, "test", n=6)]
    with torch.no_grad():
        want = [before.module(x).argmax(1) for x in held_out]

        def agree(model: torch.jit.ScriptModule, turn: int) -> int:
            return sum(bool(model(torch.rot90(x, turn, (-2, -1))).argmax(1) == w)
                       for x, w in zip(held_out, want, strict=True))

        sideways_before, sideways_head = agree(before.module, 1), agree(head.module, 1)
        upright_kept = agree(head.module, 0)
    assert sideways_head >= sideways_before + 3, (sideways_before, sideways_head)
    assert upright_kept >= len(held_out) - 2
    again = tmp_path / "again.pt"
    assert reexport([str(out), "--out", str(again)]) == 0
    x = torch.rot90(held_out[0], 1, (-2, -1))
    with torch.no_grad():
        assert torch.allclose(load_exported(again).module(x), head.module(x), atol=1e-6)


def test_a_missing_folder_too_few_photos_or_a_frozen_file_is_one_clear_error(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    few = tmp_path / "few"
    few.mkdir()
    for p in real_photos("03.Eiffel_Tower", n=5):
        shutil.copy(p, few / p.name)
    (few / "notes.jpg").write_text("not a photo")
    out = tmp_path / "x.pt"
    assert upright([str(MODELS_DIR / "scratch.pt"), "--photos", str(few), "--out",
                    str(out)]) == 1
    assert "5 readable photos in 6 files" in capsys.readouterr().err
    assert not out.exists()
    torch.manual_seed(0)
    net = create_model("landmark_resnet_s", len(CLASSES), crop_size=64).eval()
    frozen = export_model(net, net.preset, CLASSES, {"architecture": "landmark_resnet_s"},
                          tmp_path / "frozen.pt", [_square(real_photos(CLASSES[0])[0])[0]],
                          freeze=True)
    assert upright([str(frozen), "--photos", str(few), "--out", str(out)]) == 1
    assert "is frozen" in capsys.readouterr().err and not out.exists()
    with pytest.raises(SystemExit) as stop:
        upright([str(MODELS_DIR / "scratch.pt"), "--photos", str(tmp_path / "nowhere")])
    assert stop.value.code == 2 and "nowhere: no such folder" in capsys.readouterr().err
