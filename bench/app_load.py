"""The app under load: start `python app.py`, then N concurrent gradio_client users each
send a fixed number of /tag requests with real test photos.

    python -m bench.app_load --data ../shared/data/landmark_images --users 8 --requests 10

Reports time to ready, errors, latency p50/p95, throughput and the app's peak resident
memory (VmHWM), and writes its section of BENCHMARKS.md. Traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from gradio_client import Client, handle_file

from bench.report import update_section
from landmark.data import scan_split

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


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def user(url: str, photos: list[Path], model: str) -> tuple[list[float], int]:
    client = Client(url, verbose=False)
    lat, errors = [], 0
    for p in photos:
        start = time.perf_counter()
        try:
            client.predict(handle_file(str(p)), model, 3, api_name="/tag")
            lat.append(time.perf_counter() - start)
        except Exception:
            errors += 1
    return lat, errors


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True,
                   help="dataset root in the Udacity layout (train/, test/, unknown/)")
    p.add_argument("--users", type=int, default=8, help="concurrent gradio_client users")
    p.add_argument("--requests", type=int, default=10, help="requests per user")
    p.add_argument("--model", default="transfer", help="bundled model the requests ask for")
    args = p.parse_args()
    photos = scan_split(args.data, "test").paths
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc, ready = start_app(port)
    url = f"http://127.0.0.1:{port}/"
    try:
        user(url, photos[:2], args.model)  # warm-up
        start = time.perf_counter()
        with ThreadPoolExecutor(args.users) as pool:
            jobs = [pool.submit(user, url, photos[u * args.requests:(u + 1) * args.requests],
                                args.model) for u in range(args.users)]
            results = [j.result() for j in jobs]
        wall = time.perf_counter() - start
        peak = peak_rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    lat = [x for r in results for x in r[0]]
    errors = sum(r[1] for r in results)
    body = (f"{args.users} concurrent users x {args.requests} `/tag` requests "
            f"(model `{args.model}`, real test photos).\n\n"
            "| ready after (s) | requests | errors | p50 (s) | p95 (s) | throughput (req/s) | "
            "peak memory (MB) |\n|---|---|---|---|---|---|---|\n"
            f"| {ready:.1f} | {len(lat) + errors} | {errors} | {np.percentile(lat, 50):.2f} | "
            f"{np.percentile(lat, 95):.2f} | {len(lat) / wall:.1f} | {peak:.0f} |")
    update_section("app_load", "The app under load", body)


if __name__ == "__main__":
    main()
