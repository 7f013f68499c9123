"""The app under load: start `python app.py`, then N concurrent gradio_client users each
send a fixed number of /tag requests with real test photos, while --bombs more users
each upload decompression-bomb PNGs (0.96 MB files that decode to 15000x15900 RGBA).

    python -m bench.app_load --data ../shared/data/landmark_images --users 16 --bombs 4

Reports time to ready, errors, latency p50/p95 of the real photos, the bombs' answers,
throughput and the app's peak resident memory (VmHWM), and writes its section of
BENCHMARKS.md. Traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from gradio_client import Client, handle_file

from bench.report import update_section
from landmark.cli import add_data_arg
from train.data import scan_split

ROOT = Path(__file__).resolve().parents[1]


def start_app(port: int) -> tuple[subprocess.Popen, float]:
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False"}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
            return proc, time.perf_counter() - start
        except OSError:
            if proc.poll() is not None or time.perf_counter() - start > 120:
                raise RuntimeError("app did not start") from None
            time.sleep(0.1)


def bomb_png(path: Path, width: int = 15000, height: int = 15900) -> Path:
    """A PNG of `width` x `height` transparent pixels: a small file (0.96 MB at the default
    size) that costs width * height * 4 bytes once decoded. Written row by row, so making
    it costs no such memory here."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    row = bytes(1 + 4 * width)  # filter byte 0, then RGBA zeros
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)  # 8-bit RGBA
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
                     + chunk(b"IEND", b""))
    return path


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def user(url: str, photos: list[Path], model: str) -> tuple[list[float], list[str]]:
    """Send each photo to /tag in turn: (latencies of the answers, error messages)."""
    client = Client(url, verbose=False)
    lat, errors = [], []
    for p in photos:
        start = time.perf_counter()
        try:
            client.predict(handle_file(str(p)), model, 3, api_name="/tag")
            lat.append(time.perf_counter() - start)
        except Exception as e:
            errors.append(str(e))
    return lat, errors


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arg(p)
    p.add_argument("--users", type=int, default=8, help="concurrent gradio_client users")
    p.add_argument("--requests", type=int, default=10, help="requests per user")
    p.add_argument("--bombs", type=int, default=0,
                   help="extra concurrent users uploading bomb PNGs, --requests each "
                        "(default 0)")
    p.add_argument("--model", default="transfer", help="bundled model the requests ask for")
    args = p.parse_args()
    photos = scan_split(args.data, "test").paths
    bomb = [bomb_png(Path(tempfile.mkdtemp()) / "bomb.png")] * args.requests
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc, ready = start_app(port)
    url = f"http://127.0.0.1:{port}/"
    try:
        user(url, photos[:2], args.model)  # warm-up
        start = time.perf_counter()
        with ThreadPoolExecutor(args.users + args.bombs) as pool:
            jobs = [pool.submit(user, url, photos[u * args.requests:(u + 1) * args.requests],
                                args.model) for u in range(args.users)]
            bombs = [pool.submit(user, url, bomb, args.model) for _ in range(args.bombs)]
            results = [j.result() for j in jobs]
            refused = [e for j in bombs for e in j.result()[1]]
        wall = time.perf_counter() - start
        peak = peak_rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    lat = [x for r in results for x in r[0]]
    errors = sum(len(r[1]) for r in results)
    sent_bombs = args.bombs * args.requests
    bomb_note = (f" {sent_bombs} bomb uploads ({args.bombs} users): "
                 f"{sum('too large' in e for e in refused)} refused as too large, "
                 f"{sent_bombs - len(refused)} accepted." if args.bombs else "")
    body = (f"{args.users} concurrent users x {args.requests} `/tag` requests "
            f"(model `{args.model}`, real test photos).{bomb_note} Latency and errors are "
            "the real photos'; memory is the app's peak over the whole run.\n\n"
            "| ready after (s) | requests | errors | p50 (s) | p95 (s) | throughput (req/s) | "
            "peak memory (MB) |\n|---|---|---|---|---|---|---|\n"
            f"| {ready:.1f} | {len(lat) + errors} | {errors} | {np.percentile(lat, 50):.2f} | "
            f"{np.percentile(lat, 95):.2f} | {len(lat) / wall:.1f} | {peak:.0f} |")
    update_section("app_load", "The app under load", body)


if __name__ == "__main__":
    main()
