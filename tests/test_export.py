"""The export contract: one TorchScript file, [0,1] RGB of any size in, probabilities out."""

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from landmark.contract import load_exported, update_metadata
from landmark.imageio import load_image
from tests.conftest import real_photos
from train.calibration import calibrated_softmax
from train.export import ExportError, export_model
from train.models import create_model
from train.models.embedding import Pooled
from train.presets import EvalPreprocess

CLASSES = ["03.Eiffel_Tower", "11.Niagara_Falls", "15.Space_Needle"]


def _photo(i: int = 0) -> torch.Tensor:
    img = load_image(real_photos("03.Eiffel_Tower")[i])
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    torch.manual_seed(0)
    net = create_model("landmark_resnet_s", len(CLASSES), crop_size=64).eval()
    path = tmp_path_factory.mktemp("exp") / "m.pt"
    export_model(net, net.preset, CLASSES, {"architecture": "landmark_resnet_s"}, path,
                 [_photo(0), _photo(1)], flip=True)
    return path, net


def test_plain_torch_jit_load_follows_contract(exported: tuple[Path, nn.Module]) -> None:
    path, _ = exported
    extra = {"classes.json": "", "metadata.json": ""}
    m = torch.jit.load(str(path), _extra_files=extra)
    assert json.loads(extra["classes.json"]) == CLASSES
    meta = json.loads(extra["metadata.json"])
    assert meta["architecture"] == "landmark_resnet_s" and meta["tta_flip"] is True
    assert meta["preset"]["crop_size"] == 64
    for h, w in ((32, 32), (40, 300), (333, 500), (1024, 77)):
        probs = m(torch.rand(2, 3, h, w))
        assert probs.shape == (2, 3)
        assert torch.allclose(probs.sum(1), torch.ones(2), atol=1e-5)
        assert (probs >= 0).all()


def test_loaded_file_matches_eager_model(exported: tuple[Path, nn.Module]) -> None:
    path, net = exported
    loaded = load_exported(path)
    x = _photo(2)[None]
    pre = loaded.module.pre(x)
    want = 0.5 * (net(pre).softmax(1) + net(pre.flip(-1)).softmax(1))
    assert torch.allclose(loaded.module(x), want, atol=1e-5)
    features, _ = net.split_head()
    emb = torch.nn.functional.normalize(0.5 * (features(pre)[1] + features(pre.flip(-1))[1]),
                                        dim=1)
    assert torch.allclose(loaded.module.embed(x), emb, atol=1e-5)
    probs, both = loaded.module.probs_and_embedding(x)
    assert torch.allclose(probs, want, atol=1e-5) and torch.allclose(both, emb, atol=1e-5)
    assert loaded.metadata["embedding_dim"] == emb.shape[1] == 256


def test_too_small_or_wrong_shape_is_rejected(exported: tuple[Path, nn.Module]) -> None:
    m = load_exported(exported[0]).module
    with pytest.raises(torch.jit.Error, match="at least 32x32"):
        m(torch.rand(1, 3, 31, 100))
    with pytest.raises(torch.jit.Error, match="N, 3, H, W"):
        m(torch.rand(3, 64, 64))


def test_file_is_self_contained_archive(exported: tuple[Path, nn.Module]) -> None:
    names = zipfile.ZipFile(exported[0]).namelist()
    assert any(n.endswith("extra/classes.json") for n in names)


class _BranchyNet(nn.Module):
    """Data-dependent control flow: tracing bakes one branch, so the export must notice."""

    def split_head(self) -> tuple[nn.Module, nn.Module]:
        return Pooled(self, nn.Flatten()), nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = x.mean((2, 3), keepdim=True)
        return logits if x.mean() > 0 else -logits * 5


def test_export_verification_catches_a_mismatch(tmp_path: Path) -> None:
    from train.presets import Preset
    preset = Preset(crop_size=32, resize_size=36, mean=(0.5,) * 3, std=(0.5,) * 3)
    shades = torch.tensor([0.1, 0.2, 0.3])[:, None, None]
    dark, bright = shades.expand(3, 50, 50), (shades + 0.6).expand(3, 50, 50)
    with pytest.raises(ExportError, match="disagrees"):
        export_model(_BranchyNet(), preset, CLASSES, {}, tmp_path / "x.pt", [dark, bright])
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["transfer", "scratch"])
def test_bundled_models_keep_their_shipped_probabilities_and_embed(name: str) -> None:
    """models/*.pt, exported again under the current contract (python -m train.finish.reexport),
    give the probabilities recorded in tests/data when each was shipped."""
    from landmark.imageio import to_tensor
    from landmark.resolve import MODELS_DIR
    before = json.loads((Path(__file__).parent / "data" / "shipped_probs.json")
                        .read_text())["models"][name]
    model = load_exported(MODELS_DIR / f"{name}.pt")
    for photo, want in before.items():
        x = to_tensor(load_image(MODELS_DIR.parent / "examples" / photo))[None].float() / 255
        probs, emb = model.module.probs_and_embedding(x)
        assert torch.allclose(probs[0], torch.tensor(want), atol=2e-6), photo
        assert emb.shape == (1, model.metadata["embedding_dim"])
        assert torch.allclose(emb.norm(dim=1), torch.ones(1), atol=1e-5)


def test_frozen_export_matches_and_keeps_the_contract(tmp_path: Path) -> None:
    """A frozen file (weights inlined) gives the eager model's probabilities and
    embeddings on real photos, and still has every contract method."""
    torch.manual_seed(0)
    net = create_model("landmark_resnet_s", len(CLASSES), crop_size=64).eval()
    path = export_model(net, net.preset, CLASSES, {"architecture": "landmark_resnet_s"},
                        tmp_path / "f.pt", [_photo(0)], freeze=True)
    loaded = load_exported(path)
    assert loaded.metadata["frozen"] is True
    assert not hasattr(loaded.module, "features")  # frozen: no submodules left to retrain
    x = _photo(3)[None]
    pre = EvalPreprocess(net.preset)(x)
    features, head = net.split_head()
    with torch.no_grad():
        pooled, descriptor, _ = features(pre)
        want_probs = head(pooled).softmax(1)
        want_emb = torch.nn.functional.normalize(descriptor, dim=1)
        probs, emb = loaded.module.probs_and_embedding(x)
    assert torch.allclose(probs, want_probs, atol=1e-5)
    assert torch.allclose(emb, want_emb, atol=1e-5)
    assert torch.allclose(loaded.module(x), probs) and torch.allclose(loaded.module.embed(x), emb)


def test_update_metadata_merges_and_leaves_the_network_alone(
        exported: tuple[Path, nn.Module], tmp_path: Path) -> None:
    copy = tmp_path / "copy.pt"
    copy.write_bytes(exported[0].read_bytes())
    before = load_exported(copy)
    update_metadata(copy, {"places": {"scale": 2.0}})
    after = load_exported(copy)
    assert after.metadata == {**before.metadata, "places": {"scale": 2.0}}
    assert after.classes == before.classes
    x = _photo(4)[None]
    assert torch.equal(after.module(x), before.module(x))
    assert [p.name for p in tmp_path.iterdir()] == ["copy.pt"]  # no temporary file left


def test_efficientnet_embeds_gem_of_its_last_blocks_and_keeps_its_probabilities(
        tmp_path: Path) -> None:
    """An EfficientNet's file embeds by GeM of its last two blocks and final map (each
    L2-normalised), computed here from the timm network's own modules; its probabilities
    are still head(global pool)."""
    torch.manual_seed(0)
    net = create_model("efficientnet_lite0", len(CLASSES), pretrained=False).eval()
    path = export_model(net, net.preset, CLASSES, {"architecture": "efficientnet_lite0"},
                        tmp_path / "e.pt", [_photo(0)])
    loaded = load_exported(path)
    x = _photo(1)[None]
    b = net.backbone
    with torch.no_grad():
        h = b.bn1(b.conv_stem(loaded.module.pre(x)))
        maps = []
        for block in b.blocks:
            h = block(h)
            maps.append(h)
        final = b.bn2(b.conv_head(h))
        parts = [m.clamp(min=1e-6).pow(3).mean((2, 3)).pow(1 / 3) for m in (*maps[-2:], final)]
        want = F.normalize(torch.cat([F.normalize(p, dim=1) for p in parts], 1), dim=1)
        probs = net.head(final.mean((2, 3))).softmax(1)
        got_probs, got = loaded.module.probs_and_embedding(x)
    assert "GeM" in loaded.metadata["embedding"]
    assert got.shape[1] == loaded.metadata["embedding_dim"] == 192 + 320 + 1280
    assert torch.allclose(got, want, atol=1e-5) and torch.allclose(got_probs, probs, atol=1e-5)


def test_files_written_before_the_descriptor_rebuild_with_their_probabilities() -> None:
    """tests/data/older_layout.pt was written by the exporter of commit 5fce222^ (the
    network itself as `features`, as in files already on the Hub); train.finish.reexport still
    rebuilds it exactly."""
    from train.finish.reexport import rebuild
    old = Path(__file__).parent / "data" / "older_layout.pt"
    assert not hasattr(load_exported(old).module.features, "net")  # the older layout
    net, preset, exp = rebuild(old)
    meta = exp.metadata
    x = _photo(2)[None]
    with torch.no_grad():
        logits = net(EvalPreprocess(preset)(x))
        want = calibrated_softmax(logits, meta["temperature"], meta["background_logit"])
        assert torch.allclose(exp.module(x), want, atol=1e-5)


def test_a_projected_embedding_is_smaller_and_leaves_probabilities_alone(
        exported: tuple[Path, nn.Module], tmp_path: Path) -> None:
    """With a projection P, embed is normalise(normalise(descriptor) @ P): the stored
    vectors shrink; the probabilities are the unprojected file's."""
    path, net = exported
    plain = load_exported(path)
    x = _photo(2)[None]
    dim = plain.metadata["embedding_dim"]
    basis = torch.linalg.qr(torch.randn(dim, 8, generator=torch.Generator().manual_seed(0)))[0]
    small = load_exported(export_model(net, net.preset, CLASSES, {}, tmp_path / "p.pt",
                                       [_photo(0)], flip=True, projection=basis))
    with torch.no_grad():
        probs, emb = small.module.probs_and_embedding(x)
        want_probs, full = plain.module.probs_and_embedding(x)
    assert small.metadata["embedding_dim"] == 8 and emb.shape == (1, 8)
    assert "projected to 8 dimensions" in small.metadata["embedding"]
    assert torch.allclose(emb, F.normalize(full @ basis, dim=1), atol=1e-5)
    assert torch.allclose(probs, want_probs, atol=1e-6)


def test_reexport_projects_on_photos_and_keeps_the_projection(tiny_model: Path,
                                                               tiny_data: Path,
                                                               tmp_path: Path) -> None:
    from train.finish.reexport import main as reexport
    out, again = tmp_path / "p.pt", tmp_path / "again.pt"
    assert reexport([str(tiny_model), "--out", str(out), "--project", "6", "--photos",
                     str(tiny_data / "train")]) == 0
    before, after = load_exported(tiny_model), load_exported(out)
    x = _photo(3)[None]
    with torch.no_grad():
        assert torch.allclose(after.module(x), before.module(x), atol=1e-6)
        assert after.module.embed(x).shape == (1, 6)
    assert reexport([str(out), "--out", str(again)]) == 0  # no --project: keeps it
    assert load_exported(again).metadata["embedding_dim"] == 6
    # more dimensions than photos to fit them on is one clear error
    assert reexport([str(tiny_model), "--out", str(tmp_path / "x.pt"), "--project", "99",
                     "--photos", str(tiny_data / "train")]) == 1
    assert not (tmp_path / "x.pt").exists()
