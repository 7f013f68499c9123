"""Models on the Hugging Face Hub: push an exported file with a model card, pull it back.

    python -m landmark.hub push models/transfer.pt --repo OWNER/landmark-transfer
    python -m landmark.hub pull OWNER/landmark-transfer [--revision REV] [--dest DIR]

One repo holds one model: `model.pt` (the TorchScript file, byte for byte), `config.json`
(classes, preprocessing, architecture), `README.md` (the model card) and its figures.
Pulls go through huggingface_hub's cache and are pinned to a commit; offline (no network,
HF_HUB_OFFLINE=1 or the Hub down) `pull_with_fallback` uses the cache, then a bundled file.
The token is read the huggingface_hub way (HF_TOKEN or a saved login) and never printed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import socket
import sys
import urllib.parse
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, constants, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from landmark.contract import load_exported
from landmark.metrics import per_class_rows
from landmark.runtime import onnx_path

log = logging.getLogger(__name__)
MODEL_FILE = "model.pt"
ONNX_FILE = "model.onnx"  # its ONNX twin (landmark.runtime), when it has one
DEFAULT_REPOS = ("landmark-tagger/landmark-transfer", "landmark-tagger/landmark-scratch")
TIMEOUT = float(os.environ.get("LANDMARK_HUB_TIMEOUT", 5))


class HubError(RuntimeError):
    """A Hub operation that failed; the message says what to do."""


def endpoint_url(endpoint: str | None = None) -> str:
    return (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def hub_reachable(endpoint: str | None = None, timeout: float = 3.0) -> bool:
    """False at once when offline (HF_HUB_OFFLINE) or the endpoint takes no connection."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false"):
        return False
    url = urllib.parse.urlparse(endpoint_url(endpoint))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError:
        return False
    return True


# -- push ---------------------------------------------------------------------------------
def model_card(meta: dict, report: dict, repo_id: str, figures: list[str]) -> str:
    """README.md for the Hub: YAML metadata (library, tags, datasets, license, model-index)
    and a body with the metrics, the per-class table, figures and the training command."""
    test = report.get("test") or report.get("val") or {}
    split = "test" if "test" in report else "validation"
    metrics = [{"type": "accuracy", "name": f"{split} top-1", "value": round(test["top1"], 4)},
               {"type": "top-3-accuracy", "name": f"{split} top-3",
                "value": round(test["top3"], 4)}] if test else []
    yaml = {
        "library_name": "pytorch", "license": "apache-2.0", "pipeline_tag":
        "image-classification", "tags": ["image-classification", "landmarks", "torchscript",
                                         "landmark-tagger"],
        "datasets": ["udacity-landmark-images"],
        "model-index": [{"name": repo_id.split("/")[-1], "results": [{
            "task": {"type": "image-classification", "name": "Landmark recognition"},
            "dataset": {"type": "udacity-landmark-images", "name": meta.get("dataset", ""),
                        "split": split},
            "metrics": metrics}]}],
    }
    lines = ["---", json_yaml(yaml), "---", "", f"# {repo_id}", "",
             f"Landmark classifier ({meta.get('architecture')}), exported as one TorchScript "
             "file following the Landmark Tagger export contract: `m = torch.jit.load(path)`, "
             "`m(x)` with x float32 (N, 3, H, W) RGB in [0, 1], any H, W >= 32, returns (N, C) "
             "calibrated probabilities; `config.json` lists the classes.", "",
             "## Metrics", "", "| split | photos | top-1 | top-3 | ECE |", "|---|---|---|---|---|"]
    for s in ("val", "test"):
        if s in report:
            r = report[s]
            lines.append(f"| {s} | {r['n']} | {r['top1']:.4f} | {r['top3']:.4f} | "
                         f"{r.get('ece_after', float('nan')):.4f} |")
    shipped = (report.get("open_set") or {}).get("shipped")
    if shipped:
        lines += ["", f"No known landmark: reject when the top probability is below "
                      f"{shipped['threshold']:.3f}. On {report['open_set']['report_on']}: "
                      f"AUROC {shipped['auroc']:.3f}, {shipped['known_accepted']:.1%} of known "
                      f"photos accepted, {shipped['unknown_rejected']:.1%} of unknown rejected."]
    if test:
        lines += ["", f"## Per-class accuracy ({split})", "", "| landmark | photos | accuracy |",
                  "|---|---|---|"]
        lines += [f"| {name} | {n} | {acc} |" for name, acc, n in per_class_rows(test["per_class"])]
    seen = meta.get("training_data")
    if seen:
        extra = ", ".join(seen["extra_train"]) or "none"
        lines += ["", "## Training data", "", f"{seen['train_photos']} training and "
                  f"{seen['val_photos']} validation photos from `{seen['dataset']}`; extra "
                  f"training folders: {extra}; class balance: {seen['balance']}." + "".join(
                      f" {what} `{seen[key]}`." for key, what in (
                          ("initialised_from", "Started from the weights of"),
                          ("teacher", "Distilled from")) if seen.get(key))]
    upright = meta.get("upright")
    if upright:
        lines += ["", "## Upright head", "", "A photo lying on its side or upside down (its "
                  "EXIF orientation lost) is turned upright before it is scored when the "
                  f"head is at least {upright['threshold']:.3f} sure. Out of fold on "
                  f"{upright['photos']} photos: {upright['turned_righted']:.1%} of turned "
                  f"photos set upright, {upright['upright_turned']:.1%} of upright ones "
                  f"turned. Made by `{upright['command']}`."]
    lines += ["", *[f"![{f}]({f})" for f in figures], "", "## Training command", "",
              "```bash", *recipe(meta), "```", ""]
    return "\n".join(lines)


def recipe(meta: dict) -> list[str]:
    """The commands that made a file, in the order its metadata recorded them: the
    trainer's `command`, then each later step's `*_command` (upright head, retune, place
    rule...), so a model card shows the whole recipe and not only its first step."""
    steps = [f"# {key.removesuffix('_command')}\n{value}" for key, value in meta.items()
             if key.endswith("_command") and value]
    return [meta.get("command", "(unknown)"), *steps]


def json_yaml(obj: dict) -> str:
    """YAML front matter written as JSON-compatible YAML flow mappings, one key a line."""
    return "\n".join(f"{k}: {json.dumps(v)}" for k, v in obj.items())


def push(model_path: str | Path, repo_id: str, *, endpoint: str | None = None,
         private: bool = False, token: str | None = None) -> str:
    """Create `repo_id` if needed and upload the model, config and card in one commit.
    Returns the commit id."""
    model_path = Path(model_path)
    if not model_path.is_file():
        raise HubError(f"{model_path}: no such model file")
    try:
        model = load_exported(model_path)
    except (RuntimeError, ValueError, OSError) as e:
        raise HubError(f"{model_path}: not an exported model file ({_short(e)[:120]})") from None
    meta = model.metadata
    stem = model_path.with_suffix("")
    report_path = Path(f"{stem}.report.json")
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    figures = [p for p in (f"{stem}.confusion.png", f"{stem}.reliability.png",
                           f"{stem}.curves.png") if Path(p).exists()]
    config = {"format": "torchscript", "model_file": MODEL_FILE,
              "onnx_file": ONNX_FILE if onnx_path(model_path).is_file() else None,
              "name": meta.get("name"),
              "architecture": meta.get("architecture"), "classes": model.classes,
              "preprocessing": meta.get("preset"), "temperature": meta.get("temperature"),
              "reject_threshold": meta.get("reject_threshold"), "metrics": meta.get("metrics")}
    names = [Path(f).name.replace(f"{stem.name}.", "") for f in figures]
    card = model_card(meta, report, repo_id, names)
    twin = onnx_path(model_path)
    ops = [CommitOperationAdd(MODEL_FILE, str(model_path)),
           *([CommitOperationAdd(ONNX_FILE, str(twin))] if twin.is_file() else []),
           CommitOperationAdd("config.json", json.dumps(config, indent=2).encode()),
           CommitOperationAdd("README.md", card.encode()),
           *[CommitOperationAdd(n, f) for n, f in zip(names, figures, strict=True)]]
    api = HfApi(endpoint=endpoint_url(endpoint), token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.create_commit(repo_id, ops, commit_message=f"Upload {model_path.name}")
    except HfHubHTTPError as e:
        raise HubError(f"push to {repo_id} failed: {_short(e)}") from None
    log.info("pushed %s to %s at %s", model_path.name, repo_id, info.oid)
    return info.oid


# -- pull ---------------------------------------------------------------------------------
def _git_blob_sha1(path: Path) -> str:
    h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def verify(path: Path, sibling: object) -> None:
    """Check size and hash against the Hub's metadata (LFS sha256 or git blob id)."""
    lfs, size = getattr(sibling, "lfs", None), getattr(sibling, "size", None)
    if lfs:
        size = lfs.size
    if size is not None and path.stat().st_size != size:
        raise HubError(f"{path}: size {path.stat().st_size} != {size} on the Hub")
    if lfs and _sha256(path) != lfs.sha256:
        raise HubError(f"{path}: SHA-256 differs from the Hub's")
    blob = getattr(sibling, "blob_id", None)
    if not lfs and blob and _git_blob_sha1(path) != blob:
        raise HubError(f"{path}: content differs from the Hub's blob {blob}")


def pull(repo_id: str, revision: str | None = None, dest: str | Path | None = None, *,
         endpoint: str | None = None, cache_dir: str | Path | None = None,
         timeout: float = TIMEOUT) -> Path:
    """Download a model file (pinned to the revision's commit) into huggingface_hub's cache,
    verify it, and copy it to `dest`/NAME.pt when asked. Raises HubError."""
    url = endpoint_url(endpoint)
    if not hub_reachable(url, timeout):
        raise HubError(f"the Hub at {url} cannot be reached")
    api = HfApi(endpoint=url)
    try:
        info = api.model_info(repo_id, revision=revision, files_metadata=True, timeout=timeout)
        sibling = next((s for s in info.siblings or [] if s.rfilename == MODEL_FILE), None)
        if sibling is None:
            raise HubError(f"{repo_id}@{info.sha[:8]} has no {MODEL_FILE}")
        # by ref, so the cache records it for offline use; pinned to info.sha below
        path = Path(hf_hub_download(repo_id, MODEL_FILE, revision=revision or "main",
                                    endpoint=url, cache_dir=cache_dir, etag_timeout=timeout))
        twin = next((s for s in info.siblings or [] if s.rfilename == ONNX_FILE), None)
        if twin is not None:  # lands beside the model file, in the same snapshot
            hf_hub_download(repo_id, ONNX_FILE, revision=revision or "main", endpoint=url,
                            cache_dir=cache_dir, etag_timeout=timeout)
    except RepositoryNotFoundError:
        raise HubError(f"model repo {repo_id!r} not found on {url} (private repos need "
                       "HF_TOKEN or `hf auth login`)") from None
    except RevisionNotFoundError:
        raise HubError(f"revision {revision!r} not found in {repo_id}") from None
    except HubError:
        raise
    except Exception as e:  # transport errors (httpx, sockets): the network boundary
        raise HubError(f"download from {repo_id} failed: {_short(e)}") from None
    if path.parent.name != info.sha:
        raise HubError(f"{repo_id} changed during the download; pull again")
    try:
        verify(path, sibling)
        contract_problem(path, repo_id)
    except HubError:
        _evict(path)  # never leave a bad file in the cache
        raise
    if twin is not None:
        try:
            verify(onnx_path(path), twin)
        except HubError as e:  # the .pt still serves, on TorchScript
            log.warning("Hub: %s; removed", e)
            _evict(onnx_path(path))
    log.info("pulled %s@%s", repo_id, info.sha[:8])
    return _copy_to(path, dest, repo_id) if dest else path


def contract_problem(path: Path, repo_id: str) -> None:
    """Raise HubError unless `path` loads under the export contract."""
    try:
        load_exported(path)
    except (RuntimeError, ValueError, OSError) as e:
        raise HubError(f"{repo_id}: {MODEL_FILE} is not a Landmark Tagger model file "
                       f"({_short(e)[:120]})") from None


def _evict(path: Path) -> None:
    """Remove a cached file: the snapshot link and the blob it points to."""
    blob = path.resolve()
    path.unlink(missing_ok=True)
    blob.unlink(missing_ok=True)


def _copy_to(path: Path, dest: str | Path, repo_id: str) -> Path:
    name = load_exported(path).metadata.get("name") or repo_id.split("/")[-1]
    out = Path(dest) / f"{name}.pt"
    out.parent.mkdir(parents=True, exist_ok=True)
    for src, dst in ((path, out), (onnx_path(path), onnx_path(out))):
        if src.is_file():
            tmp = dst.with_name(f".{dst.name}.tmp")
            shutil.copyfile(src, tmp)
            tmp.replace(dst)
    return out


def cached(repo_id: str, revision: str | None = None, cache_dir: str | Path | None = None,
           ) -> Path | None:
    """The model file from huggingface_hub's cache, if an earlier pull left one."""
    try:
        path = Path(hf_hub_download(repo_id, MODEL_FILE, revision=revision,
                                    cache_dir=cache_dir, local_files_only=True))
        contract_problem(path, repo_id)
    except (LocalEntryNotFoundError, EntryNotFoundError, OSError, ValueError):
        return None
    except HubError as e:
        log.warning("Hub cache: %s; removed", e)
        _evict(path)
        return None
    return path


def pull_with_fallback(repo_id: str, bundled: Path | None, revision: str | None = None,
                       **kw: object) -> Path | None:
    """`pull`, else the cached copy, else the bundled file; one log line says which."""
    try:
        return pull(repo_id, revision, **kw)
    except HubError as e:
        reason = str(e)
    hit = cached(repo_id, revision, kw.get("cache_dir"))
    if hit:
        log.warning("Hub: %s; using the cached copy of %s", reason, repo_id)
        return hit
    log.warning("Hub: %s; using the bundled %s", reason, bundled or "(none)")
    return bundled


def _short(e: Exception) -> str:
    return str(e).splitlines()[0][:300]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m landmark.hub", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    ps = sub.add_parser("push", help="upload an exported model with its card")
    ps.add_argument("model", type=Path, help="TorchScript model file")
    ps.add_argument("--repo", required=True, help="OWNER/NAME on the Hub")
    ps.add_argument("--private", action="store_true", help="create the repo private")
    pl = sub.add_parser("pull", help="download a model (cached, verified)")
    pl.add_argument("repo", help="OWNER/NAME on the Hub")
    pl.add_argument("--revision", default=None, help="branch, tag or commit (default main)")
    pl.add_argument("--dest", type=Path, default=Path("models"),
                    help="folder for NAME.pt (default %(default)s)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        if args.cmd == "push":
            print(f"pushed {args.model} to {args.repo}: commit {push(args.model, args.repo)}")
        else:
            print(f"pulled {args.repo} to {pull(args.repo, args.revision, args.dest)}")
    except (HubError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
