"""Push and pull through the real huggingface_hub client against a local Hub server."""

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

from landmark import hub
from landmark.contract import load_exported
from landmark.predict import Predictor
from landmark.runtime import onnx_path
from tests.conftest import REPO
from tests.hub_server import FakeHub
from train.export import export_model
from train.models import create_model


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "landmark.hub", *args], cwd=REPO, text=True,
                          capture_output=True, timeout=300, env={**os.environ, **(env or {})})


def _front_matter(card: str) -> dict:
    head = card.split("---")[1]
    return {k: json.loads(v) for k, v in (line.split(": ", 1) for line in head.strip()
                                          .splitlines())}


def test_push_uploads_one_commit_with_model_config_and_card(tiny_model: Path) -> None:
    with FakeHub() as srv:
        commit = hub.push(tiny_model, "me/landmark-tiny", endpoint=srv.url)
        commits = srv.repos["me/landmark-tiny"].commits
    assert len(commits) == 1 and commits[0][0] == commit
    files = commits[0][1]
    assert files["model.pt"] == tiny_model.read_bytes()
    assert files["model.onnx"] == onnx_path(tiny_model).read_bytes()  # the ONNX twin
    config = json.loads(files["config.json"])
    assert config["onnx_file"] == "model.onnx"
    assert config["classes"] == ["03.Eiffel_Tower", "11.Niagara_Falls"]
    assert config["architecture"] == "tiny_cnn" and config["preprocessing"]["crop_size"] == 32
    assert files["confusion.png"][:4] == b"\x89PNG"
    card = files["README.md"].decode()
    meta = _front_matter(card)
    assert {"library_name", "tags", "datasets", "license", "model-index"} <= set(meta)
    metrics = meta["model-index"][0]["results"][0]["metrics"]
    report = json.loads(tiny_model.with_suffix(".report.json").read_text())
    assert metrics[0]["value"] == pytest.approx(report["test"]["top1"], abs=1e-4)
    assert "| Eiffel Tower | 3 |" in card and "| Niagara Falls | 3 |" in card
    assert "![confusion.png](confusion.png)" in card
    assert "python -m train.scratch --data" in card


def _second_model(tmp_path: Path) -> Path:
    torch.manual_seed(1)
    net = create_model("tiny_cnn", 2)
    path = tmp_path / "other.pt"
    export_model(net, net.preset, ["a", "b"], {"name": "other"}, path, [torch.rand(3, 40, 40)])
    return path


def test_pull_latest_and_pinned_older_revision(tiny_model: Path, tmp_path: Path) -> None:
    other = _second_model(tmp_path)
    with FakeHub() as srv:
        first = hub.push(tiny_model, "me/m", endpoint=srv.url)
        hub.push(other, "me/m", endpoint=srv.url)
        latest = hub.pull("me/m", endpoint=srv.url, cache_dir=tmp_path / "c")
        pinned = hub.pull("me/m", first, tmp_path / "dest", endpoint=srv.url,
                          cache_dir=tmp_path / "c")
    assert latest.read_bytes() == other.read_bytes()
    assert pinned == tmp_path / "dest" / "scratch.pt"
    assert pinned.read_bytes() == tiny_model.read_bytes()
    assert load_exported(pinned).classes == ["03.Eiffel_Tower", "11.Niagara_Falls"]
    for pulled, source in ((latest, other), (pinned, tiny_model)):  # twins come along
        assert onnx_path(pulled).read_bytes() == onnx_path(source).read_bytes()
    assert Predictor(pinned).runtime == "onnx"


def test_missing_repo_and_revision_are_clear_errors(tiny_model: Path, tmp_path: Path) -> None:
    with FakeHub() as srv:
        with pytest.raises(hub.HubError, match="'me/nope' not found"):
            hub.pull("me/nope", endpoint=srv.url, cache_dir=tmp_path)
        hub.push(tiny_model, "me/m", endpoint=srv.url)
        with pytest.raises(hub.HubError, match="revision 'v9' not found"):
            hub.pull("me/m", "v9", endpoint=srv.url, cache_dir=tmp_path)
        res = _run("pull", "me/nope", "--dest", str(tmp_path), env={"HF_ENDPOINT": srv.url})
    assert res.returncode == 1 and "error: model repo 'me/nope' not found" in res.stderr
    assert "Traceback" not in res.stderr


def test_stopped_server_falls_back_to_cache_then_bundled(tiny_model: Path, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    bundled = tmp_path / "bundled.pt"
    shutil.copy(tiny_model, bundled)
    srv = FakeHub().__enter__()
    hub.push(tiny_model, "me/m", endpoint=srv.url)
    pulled = hub.pull("me/m", endpoint=srv.url, cache_dir=tmp_path / "c")
    srv.stop()
    with caplog.at_level(logging.WARNING, logger="landmark.hub"):
        got = hub.pull_with_fallback("me/m", bundled, endpoint=srv.url, cache_dir=tmp_path / "c")
        assert got == pulled
        got = hub.pull_with_fallback("me/other", bundled, endpoint=srv.url,
                                     cache_dir=tmp_path / "c")
        assert got == bundled
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert "cannot be reached; using the cached copy" in lines[0]
    assert "using the bundled" in lines[1]


def test_offline_env_never_touches_the_network(tiny_model: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with FakeHub() as srv:
        got = hub.pull_with_fallback("me/m", tiny_model, endpoint=srv.url, cache_dir=tmp_path)
        assert got == tiny_model and srv.auth_headers == []


def test_interrupted_download_leaves_no_corrupt_file(tiny_model: Path, tmp_path: Path) -> None:
    cache = tmp_path / "c"
    with FakeHub() as srv:
        hub.push(tiny_model, "me/m", endpoint=srv.url)
        srv.cut.add("model.pt")
        with pytest.raises(hub.HubError, match="failed"):
            hub.pull("me/m", endpoint=srv.url, cache_dir=cache)
        assert not list(cache.rglob("snapshots/*/model.pt"))
        assert hub.cached("me/m", cache_dir=cache) is None
        assert hub.pull_with_fallback("me/m", tiny_model, endpoint=srv.url,
                                      cache_dir=cache) == tiny_model
        srv.cut.clear()
        good = hub.pull("me/m", endpoint=srv.url, cache_dir=cache)
    assert good.read_bytes() == tiny_model.read_bytes()


def test_cli_push_uses_token_and_never_prints_it(tiny_model: Path) -> None:
    secret = "hf_s3cr3tt0k3nvalue"
    with FakeHub() as srv:
        res = _run("push", str(tiny_model), "--repo", "me/cli",
                   env={"HF_ENDPOINT": srv.url, "HF_TOKEN": secret})
        assert res.returncode == 0, res.stderr[-2000:]
        assert f"Bearer {secret}" in srv.auth_headers
        assert "me/cli" in srv.repos
    assert secret not in res.stdout + res.stderr


def test_training_push_to_hub_flag(tiny_data: Path, tmp_path: Path) -> None:
    with FakeHub() as srv:
        res = subprocess.run(
            [sys.executable, "-m", "train.scratch", "--data", str(tiny_data), "--model",
             "tiny_cnn", "--epochs", "1", "--batch-size", "8", "--workers", "0",
             "--no-onnx", "--output",
             str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache"), "--push-to-hub",
             "me/trained"], cwd=REPO, capture_output=True, text=True, timeout=600,
            env={**os.environ, "HF_ENDPOINT": srv.url})
        assert res.returncode == 0, res.stderr[-2000:]
        files = srv.repos["me/trained"].commits[-1][1]
    assert files["model.pt"] == (tmp_path / "run" / "scratch.pt").read_bytes()


def _corrupt_repo(srv: FakeHub, repo_id: str) -> None:
    """A Hub repo whose model.pt is a broken TorchScript archive (hashes all consistent)."""
    from tests.hub_server import Repo
    srv.repos[repo_id] = Repo(commits=[("c" * 40, {"model.pt": b"PK\x03\x04 not a model"})])


def test_corrupt_hub_model_is_skipped_and_never_cached(tiny_model: Path, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    cache = tmp_path / "c"
    with FakeHub() as srv:
        _corrupt_repo(srv, "me/landmark-scratch")
        with pytest.raises(hub.HubError, match="not a Landmark Tagger model file"):
            hub.pull("me/landmark-scratch", endpoint=srv.url, cache_dir=cache)
        assert not [p for p in cache.rglob("*") if p.is_file() and p.stat().st_size > 10
                    and "blobs" in p.parts]
        with caplog.at_level(logging.WARNING, logger="landmark.hub"):
            got = hub.pull_with_fallback("me/landmark-scratch", tiny_model, endpoint=srv.url,
                                         cache_dir=cache)
    assert got == tiny_model
    assert any("not a Landmark Tagger model file" in r.getMessage() and "bundled" in
               r.getMessage() for r in caplog.records)


def test_app_resolver_falls_back_past_a_corrupt_hub_file(tiny_model: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """What the app, landmark.tag and the benches use: the bundled file, not a traceback."""
    from landmark.resolve import available, resolve
    bundled = tmp_path / "models"
    bundled.mkdir()
    shutil.copy(tiny_model, bundled / "scratch.pt")
    with FakeHub() as srv:
        _corrupt_repo(srv, "me/landmark-scratch")
        monkeypatch.setenv("HF_ENDPOINT", srv.url)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
        monkeypatch.setenv("LANDMARK_HUB_REPO", "me/landmark-scratch")
        assert available(bundled) == {"scratch": bundled / "scratch.pt"}
        assert resolve("scratch", bundled) == bundled / "scratch.pt"


def test_poisoned_cache_entry_is_removed(tiny_model: Path, tmp_path: Path) -> None:
    """A bad file an older version left in the cache is not served, even offline."""
    cache = tmp_path / "c"
    with FakeHub() as srv:
        hub.push(tiny_model, "me/m", endpoint=srv.url)
        path = hub.pull("me/m", endpoint=srv.url, cache_dir=cache)
    blob = path.resolve()
    blob.write_bytes(b"garbage")
    assert hub.cached("me/m", cache_dir=cache) is None
    assert not blob.exists()


@pytest.mark.parametrize("kind", ["missing", "not a model"])
def test_push_of_a_non_model_is_one_clear_line(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "notes.pt"
    if kind == "not a model":
        path.write_text("hello")
    res = _run("push", str(path), "--repo", "me/x", env={"HF_ENDPOINT": "http://127.0.0.1:9"})
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "error:" in res.stderr and ("no such model file" if kind == "missing" else
                                       "not an exported model file") in res.stderr


def test_the_card_says_where_a_model_started_and_who_taught_it() -> None:
    from landmark.hub import model_card
    seen = {"train_photos": 1396, "val_photos": 157, "dataset": "data", "extra_train": [],
            "balance": "none", "initialised_from": "runs/scratch_h200.pt",
            "teacher": "models/transfer.pt"}
    card = model_card({"training_data": seen}, {}, "me/landmarks", [])
    assert "Started from the weights of `runs/scratch_h200.pt`." in card
    assert "Distilled from `models/transfer.pt`." in card
    assert "Distilled" not in model_card({"training_data": {**seen, "teacher": None}}, {},
                                         "me/landmarks", [])


def test_the_card_of_a_bundled_model_says_what_its_upright_head_does() -> None:
    from landmark.hub import model_card
    from landmark.resolve import MODELS_DIR
    meta = load_exported(MODELS_DIR / "transfer.pt").metadata
    card = model_card(meta, {}, "me/landmarks", [])
    assert f"at least {meta['upright_threshold']:.3f} sure" in card
    assert "python -m train.upright models/transfer.pt" in card  # as the shipped file recorded it
    assert "# places\npython -m train.places models/transfer.pt" in card
