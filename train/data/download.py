"""Fetch the Udacity landmark dataset: resumable, verified, unpacked atomically."""

from __future__ import annotations

import hashlib
import http.client
import logging
import shutil
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from tqdm import tqdm

log = logging.getLogger(__name__)
DATASET_URL = "https://udacity-dlnfd.s3-us-west-1.amazonaws.com/datasets/landmark_images.zip"
CHUNK = 1 << 16


class DownloadError(RuntimeError):
    """The download or the archive failed; the message says what to do."""


def _fetch(url: str, part: Path, timeout: float) -> bool:
    """Append the rest of `url` to `part` (HTTP Range). True when the server sent it all."""
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416:  # range not satisfiable: we already hold every byte
            return True
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from e
    with resp:
        if have and resp.status != 206:
            have = 0  # server ignored the range: start again
        total = have + int(resp.headers.get("Content-Length", 0)) or None
        with open(part, "ab" if have else "wb") as f, tqdm(
                total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                desc=part.name.removesuffix(".part")) as bar:
            while chunk := resp.read(CHUNK):
                f.write(chunk)
                bar.update(len(chunk))
        return total is None or part.stat().st_size >= total


def download_file(url: str, dest: Path, retries: int = 5, timeout: float = 30.0) -> Path:
    """Download `url` to `dest`, resuming a partial `dest.part` after any broken connection."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(1, retries + 1):
        try:
            if _fetch(url, part, timeout):
                part.replace(dest)
                return dest
        except (TimeoutError, urllib.error.URLError, http.client.HTTPException,
                ConnectionError) as e:
            if isinstance(e, urllib.error.HTTPError):
                raise
            log.warning("connection lost (%s); resuming, attempt %d/%d", e, attempt, retries)
        time.sleep(min(2.0 ** attempt / 4, 10.0))
    raise DownloadError(f"{url}: gave up after {retries} attempts; run again to resume "
                        f"from {part}")


def verify_zip(path: Path, sha256: str | None = None) -> None:
    """Check the archive's checksum (if given) and every member's CRC."""
    if sha256:
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256")
        if digest.hexdigest() != sha256:
            raise DownloadError(f"{path}: SHA-256 mismatch")
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError) as e:
        raise DownloadError(f"{path}: corrupt archive ({e})") from e
    if bad:
        raise DownloadError(f"{path}: corrupt archive (bad CRC in {bad})")


def unpack(archive: Path, dest: Path) -> Path:
    """Extract into a temporary folder beside `dest`, then rename: never half-unpacked."""
    tmp = dest.with_name(f".{dest.name}.unpacking")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                target = (tmp / name).resolve()
                if not target.is_relative_to(tmp.resolve()):
                    raise DownloadError(f"{archive}: unsafe path in archive: {name}")
            zf.extractall(tmp)
        entries = [p for p in tmp.iterdir() if not p.name.startswith(("__MACOSX", "."))]
        root = entries[0] if len(entries) == 1 and entries[0].is_dir() else tmp
        if dest.exists():
            shutil.rmtree(dest)
        root.replace(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def download_dataset(dest: Path, url: str = DATASET_URL, sha256: str | None = None,
                     keep_archive: bool = False, timeout: float = 30.0) -> Path:
    """Download, verify and unpack the dataset into dest/landmark_images; returns that path."""
    target = dest / "landmark_images"
    if (target / "train").is_dir():
        log.info("%s already present", target)
        return target
    archive = download_file(url, dest / Path(url).name, timeout=timeout)
    try:
        verify_zip(archive, sha256)
    except DownloadError:
        archive.unlink(missing_ok=True)
        raise
    unpack(archive, target)
    if not keep_archive:
        archive.unlink()
    return target
