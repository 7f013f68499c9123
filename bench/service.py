"""The HTTP service against what the model can do, in one run on the same photos.

    python -m bench.service --data ../shared/data/landmark_images --photos 96

Rows, each measured in a process of its own so that its peak memory (VmHWM) is its own:
- `capacity`: the model file called directly (`Predictor` load, prepare, forward), one
  photo a call, from 1, 2 and 4 threads; the best is the capacity;
- `landmark.tag`: the batch tagger at steady state (in one process, after a warm-up
  pass), and its cold start for one photo next to importing torch and loading the file;
- `landmark.serve`: `/v1/tag`, and `images:annotate` with 1 and with 16 photos a call,
  from 1, 4, 16 and 64 concurrent httpx clients: photos/s, p50/p95/p99 per request;
- the Gradio `/tag` path of `python app.py`, from 16 gradio_client users;
- with `--ray`: `/v1/tag` at 16 clients on Ray Serve (`serve run` on deploy/ray-serve.yaml)
  with 1 replica of 2 CPUs and with 2 replicas of 1 CPU, then a kill drill: one replica
  SIGKILLed under load while clients retry by the rule (landmark.serve.client).
`--soak 600` instead runs 16 clients for 10 minutes with bombs and broken photos mixed in.
Writes its section of BENCHMARKS.md. Traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import yaml

from bench.app_load import bomb_png, peak_rss_mb, start_app, user
from bench.report import update_section
from landmark.cli import add_data_arg
from landmark.serve.client import send
from train.data import scan_split

ROOT = Path(__file__).resolve().parents[1]
CLIENTS = (1, 4, 16, 64)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child(part: str, photos: list[Path], model: str, runtime: str) -> dict:
    """Run one part of this bench in a fresh process; its JSON line back."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(map(str, photos)))
    out = subprocess.run([sys.executable, "-m", "bench.service", "--part", part, "--list",
                          f.name, "--model", model, "--runtimes", runtime], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _own_peak() -> float:
    return peak_rss_mb(os.getpid())


def part_capacity(photos: list[Path], model: str, runtime: str) -> dict:
    """The model file called directly, one photo a call (decode included), per thread
    count: photos/s."""
    import torch

    from landmark.predict import Predictor
    from landmark.resolve import resolve
    predictor = Predictor(resolve(model), runtime)
    cores = torch.get_num_threads()

    def one(p: Path) -> None:
        predictor.forward(predictor.prepare(predictor.load(p))[None])

    torch.set_num_threads(cores)
    for photo in photos[:4]:
        predictor.tag(photo)  # warm-up
    direct = []
    for photo in photos:  # one client's latency, called directly
        start = time.perf_counter()
        predictor.tag(photo)
        direct.append(time.perf_counter() - start)
    rates = {}
    for threads in (1, 2, 4):
        torch.set_num_threads(max(1, cores // threads))
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(one, photos[:threads * 2]))  # warm-up
            start = time.perf_counter()
            list(pool.map(one, photos))
            rates[threads] = len(photos) / (time.perf_counter() - start)
    return {"rates": rates, "direct_p50": float(np.median(direct)), "peak_mb": _own_peak()}


def part_tag(photos: list[Path], model: str, runtime: str) -> dict:
    """landmark.tag's run at steady state: a warm-up pass, then the timed one."""
    from landmark.predict import Predictor
    from landmark.resolve import resolve
    from landmark.tag import run
    predictor = Predictor(resolve(model), runtime)
    with tempfile.TemporaryDirectory() as tmp:
        run(photos[:8], predictor, Path(tmp) / "warm.jsonl")
        start = time.perf_counter()
        run(photos, predictor, Path(tmp) / "tags.jsonl")
        rate = len(photos) / (time.perf_counter() - start)
    return {"rate": rate, "peak_mb": _own_peak()}


def part_limit(photos: list[Path], model: str, runtime: str) -> dict:
    """The ONNX file alone: ONNX Runtime sessions called from 1, 2 and 4 threads on
    crops already decoded and preprocessed (each thread's share of the cores)."""
    from bench.onnx_alone import onnx_input, onnx_rate
    from landmark.predict import Predictor
    from landmark.resolve import resolve
    from landmark.runtime import onnx_path
    predictor = Predictor(resolve(model), "onnx")
    crops = [onnx_input(predictor, p) for p in photos]
    rates = {t: onnx_rate(onnx_path(predictor.path), crops, t) for t in (1, 2, 4)}
    return {"rates": rates, "peak_mb": _own_peak()}


def cold_start(photo: Path, model: str, runtime: str) -> dict:
    """Seconds for `landmark.tag` to tag one photo from a cold process, and for a bare
    process to import torch and load the model file."""
    def timed(*cmd: str) -> float:
        start = time.perf_counter()
        subprocess.run([sys.executable, *cmd], cwd=ROOT, check=True,
                       capture_output=True)
        return time.perf_counter() - start

    with tempfile.TemporaryDirectory() as tmp:
        tag = timed("-m", "landmark.tag", str(photo), "--model", model, "--out",
                    f"{tmp}/one.jsonl", "--runtime", runtime)
    load = timed("-c", "import torch; from landmark.contract import load_exported; "
                 f"from landmark.resolve import resolve; load_exported(resolve({model!r}))")
    return {"tag_one_s": tag, "import_and_load_s": load}


async def _clients(url: str, n: int, bodies: list[tuple[str, dict]], photos_per: int,
                   ) -> dict:
    """`n` concurrent clients share the request bodies; photos/s and latency."""
    queue = list(bodies)
    latencies: list[float] = []
    errors = 0

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal errors
        while queue:
            route, kw = queue.pop()
            start = time.perf_counter()
            r = await http.post(f"{url}{route}", **kw)
            latencies.append(time.perf_counter() - start)
            errors += r.status_code != 200 or "error" in r.text[:20000]
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(timeout=300, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(n)))
        wall = time.perf_counter() - start
    p50, p95, p99 = np.percentile(latencies, [50, 95, 99])
    return {"rate": len(bodies) * photos_per / wall, "p50": p50, "p95": p95, "p99": p99,
            "errors": errors, "requests": len(bodies)}


@contextmanager
def running_service(model: str, runtime: str = "auto") -> Iterator[tuple[str, int]]:
    """`python -m landmark.serve` on a free port, once ready: (URL, pid)."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "landmark.serve", "--port", str(port),
                             "--models", model, "--runtime", runtime], cwd=ROOT, env={
                                 **os.environ, "LANDMARK_PLACES": tempfile.mkdtemp()},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _annotate_body(photos: list[bytes]) -> dict:
    feature = [{"type": "LANDMARK_DETECTION", "maxResults": 3}]
    return {"json": {"requests": [{"image": {"content": base64.b64encode(b).decode()},
                                   "features": feature} for b in photos]}}


def service_rows(photos: list[Path], model: str, runtime: str) -> tuple[list[dict], float]:
    raw = [p.read_bytes() for p in photos]
    shapes = {
        "/v1/tag": ([("/v1/tag", {"content": b}) for b in raw], 1),
        "images:annotate, 1 photo a call": (
            [("/v1/images:annotate", _annotate_body([b])) for b in raw], 1),
        "images:annotate, 16 photos a call": (
            [("/v1/images:annotate", _annotate_body(raw[i:i + 16]))
             for i in range(0, len(raw) - 15, 16)], 16)}
    rows = []
    with running_service(model, runtime) as (url, pid):
        asyncio.run(_clients(url, 2, shapes["/v1/tag"][0][:8], 1))  # warm-up
        for name, (bodies, per) in shapes.items():
            for n in CLIENTS:
                rows.append({"path": name, "clients": n,
                             **asyncio.run(_clients(url, n, bodies, per))})
        peak = peak_rss_mb(pid)
    return rows, peak


@contextmanager
def running_ray(model: str, runtime: str | None = None, replicas: int | None = None,
                log: Path | None = None, places: Path | None = None) -> Iterator[str]:
    """`serve run` on deploy/ray-serve.yaml on a free port, with `replicas` fixed replicas
    sharing the cores instead of its autoscaling (None: the config as it is); its URL
    once every replica answers. Output goes to `log`."""
    port, tmp = _free_port(), Path(tempfile.mkdtemp())
    config = yaml.safe_load((ROOT / "deploy" / "ray-serve.yaml").read_text())
    config["http_options"] = {"host": "127.0.0.1", "port": port}
    deployment = config["applications"][0]["deployments"][0]
    if replicas:
        del deployment["autoscaling_config"]
        deployment.update(num_replicas=replicas,
                          ray_actor_options={"num_cpus": (os.cpu_count() or 2) // replicas})
    want = replicas or deployment["autoscaling_config"]["initial_replicas"]
    (tmp / "serve.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "LANDMARK_PLACES": str(places or tmp / "places"),
           "LANDMARK_MODELS": model, "LANDMARK_HUB_REPO": "off", "RAY_USAGE_STATS_ENABLED": "0",
           **({"LANDMARK_RUNTIME": runtime} if runtime else {})}
    out = open(log or os.devnull, "w")  # noqa: SIM115 (held while Serve runs)
    proc = subprocess.Popen(["serve", "run", str(tmp / "serve.yaml")], cwd=ROOT, env=env,
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while len(_replicas(url)) < want:
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"Ray Serve did not start; see {log or 'serve run'}")
            time.sleep(0.5)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)  # serve run shuts Serve and its local Ray down
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            subprocess.run(["ray", "stop", "--force"], capture_output=True, timeout=60)
        out.close()


def _replicas(url: str, tries: int = 12) -> set[str]:
    """The replica ids (host-pid) that answered `tries` readiness checks."""
    seen = set()
    for _ in range(tries):
        try:
            r = httpx.get(f"{url}/readyz", timeout=5)
        except httpx.HTTPError:
            return seen
        if r.status_code == 200:
            seen.add(r.headers["x-landmark-replica"])
    return seen


async def _kill_drill(url: str, photos: list[bytes], clients: int = 16) -> dict:
    """Tag every photo from retrying clients while one replica is SIGKILLed a second in:
    photos lost, and seconds until a new replica answers."""
    before = await asyncio.to_thread(_replicas, url)
    victim = next(iter(before))
    limit = asyncio.Semaphore(clients)
    async with httpx.AsyncClient(timeout=120) as http:
        async def one(b: bytes) -> int:
            async with limit:
                return (await send(http, "POST", f"{url}/v1/tag", content=b)).status_code
        load = asyncio.gather(*(one(b) for b in photos))
        await asyncio.sleep(1.0)
        os.kill(int(victim.rsplit("-", 1)[1]), signal.SIGKILL)
        killed = time.perf_counter()
        codes = await load
    while not (await asyncio.to_thread(_replicas, url)) - before:
        await asyncio.sleep(0.25)
    return {"photos": len(photos), "lost": sum(c != 200 for c in codes),
            "replaced_s": time.perf_counter() - killed}


def ray_rows(photos: list[Path], model: str, runtime: str) -> tuple[list[dict], dict]:
    """/v1/tag at 16 clients on 1 and 2 replicas (peak memory: the replicas' sum); the
    kill drill on 2."""
    raw = [p.read_bytes() for p in photos]
    bodies = [("/v1/tag", {"content": b}) for b in raw]
    rows, drill = [], {}
    for replicas in (1, 2):
        with running_ray(model, runtime, replicas) as url:
            asyncio.run(_clients(url, 2, bodies[:8], 1))  # warm-up
            row = asyncio.run(_clients(url, 16, bodies, 1))
            row["peak_mb"] = sum(peak_rss_mb(int(r.rsplit("-", 1)[1])) for r in _replicas(url))
            rows.append({"replicas": replicas, **row})
            if replicas == 2:
                drill = asyncio.run(_kill_drill(url, raw * 2))
    return rows, drill


def gradio_row(photos: list[Path], model: str, users: int = 16) -> dict:
    port = _free_port()
    proc, _ = start_app(port)
    url = f"http://127.0.0.1:{port}/"
    try:
        user(url, photos[:2], model)
        per = -(-len(photos) // users)
        start = time.perf_counter()
        with ThreadPoolExecutor(users) as pool:
            done = list(pool.map(lambda u: user(url, photos[u * per:(u + 1) * per], model),
                                 range(users)))
        wall = time.perf_counter() - start
        peak = peak_rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    lat = [x for d in done for x in d[0]]
    p50, p95, p99 = np.percentile(lat, [50, 95, 99])
    return {"rate": len(lat) / wall, "p50": p50, "p95": p95, "p99": p99,
            "errors": sum(len(d[1]) for d in done), "peak_mb": peak}


def _row(path: str, clients: object, rate: float, capacity: float, peak: float,
         r: dict | None = None) -> str:
    lat = f"{r['p50']:.3f} | {r['p95']:.3f} | {r['p99']:.3f} | {r['errors']}" if r else \
        " | | | 0"
    return (f"| {path} | {clients} | {rate:.1f} | {rate / capacity:.2f} | {lat} | "
            f"{peak:.0f} |")


def report(photos: list[Path], model: str, runtimes: list[str], ray: bool = False) -> str:
    """Every row, each runtime in turn; × is against TorchScript's capacity (the first
    runtime's, when TorchScript is not measured)."""
    lines, notes, capacity = [], [], None
    for rt in runtimes:
        cap = _child("capacity", photos, model, rt)
        capacity = capacity or max(cap["rates"].values())
        tag = _child("tag", photos, model, rt)
        cold = cold_start(photos[0], model, rt)
        rows, serve_peak = service_rows(photos, model, rt)
        for threads, rate in cap["rates"].items():
            lines.append(_row(f"{rt}: model file called directly, {threads} thread(s)",
                              threads, rate, capacity, cap["peak_mb"]))
        if rt == "onnx":
            limit = _child("limit", photos, model, rt)
            for threads, rate in limit["rates"].items():
                lines.append(_row(f"onnx: the ONNX file alone, decoded crops, {threads} "
                                  "thread(s)", threads, rate, capacity, limit["peak_mb"]))
            best = max(limit["rates"].values())
            notes.append(f"ONNX-only limit {best:.1f} photos/s: `landmark.tag --runtime onnx` "
                         f"reaches {tag['rate'] / best:.2f}× of it and "
                         f"{tag['rate'] / capacity:.2f}× TorchScript's capacity.")
        lines.append(_row(f"{rt}: `landmark.tag`, steady state", "", tag["rate"], capacity,
                          tag["peak_mb"]))
        lines += [_row(f"{rt}: `landmark.serve` {r['path']}", r["clients"], r["rate"],
                       capacity, serve_peak, r) for r in rows]
        at16 = next(r for r in rows if r["path"] == "/v1/tag" and r["clients"] == 16)
        at1 = next(r for r in rows if r["path"] == "/v1/tag" and r["clients"] == 1)
        if ray:
            replicated, drill = ray_rows(photos, model, rt)
            for r in replicated:
                lines.append(_row(f"{rt}: Ray Serve /v1/tag, {r['replicas']} replica(s) of "
                                  f"{(os.cpu_count() or 2) // r['replicas']} CPU(s)", 16,
                                  r["rate"], capacity, r["peak_mb"], r))
            notes.append(
                f"{rt}: Ray Serve at 16 clients: 1 replica "
                f"{replicated[0]['rate'] / at16['rate']:.2f}× the plain server, 2 replicas "
                f"{replicated[1]['rate'] / at16['rate']:.2f}×; kill drill: one of 2 replicas "
                f"SIGKILLed under load, {drill['lost']} of {drill['photos']} photos lost "
                f"(clients retry by the rule), a new replica answered after "
                f"{drill['replaced_s']:.1f} s.")
        little = 16 / at16["rate"]
        notes.append(
            f"{rt}: capacity {max(cap['rates'].values()):.1f} photos/s (best of 1, 2, 4 "
            f"threads); `/v1/tag` at 16 clients {at16['rate']:.1f} photos/s, p95 "
            f"{at16['p95']:.3f} s = {at16['p95'] / little:.2f}× Little's law (16 ÷ "
            f"throughput = {little:.3f} s); one client p50 {at1['p50']:.3f} s against "
            f"{cap['direct_p50']:.3f} s for `Predictor.tag` called directly "
            f"({at1['p50'] / cap['direct_p50']:.2f}×); `landmark.tag` tags one photo from a "
            f"cold start in {cold['tag_one_s']:.1f} s, where importing torch and loading "
            f"the `.pt` take {cold['import_and_load_s']:.1f} s "
            f"({cold['tag_one_s'] / cold['import_and_load_s']:.2f}×).")
    grad = gradio_row(photos, model)
    lines.append(_row("auto: Gradio `/tag` (`python app.py`)", 16, grad["rate"], capacity,
                      grad["peak_mb"], grad))
    head = [f"{len(photos)} test photos, model `{model}`; photos/s, seconds per request, "
            "× TorchScript's capacity (the `.pt` called directly, best of 1, 2, 4 threads, "
            "decode included).", "", "| path | clients | photos/s | × capacity | p50 | p95 "
            "| p99 | errors | peak memory (MB) |", "|---|---|---|---|---|---|---|---|---|"]
    return "\n".join([*head, *lines, "", *(f"- {n}" for n in notes)])


async def _soak_client(url: str, bodies: list[tuple[str, dict, bool]], deadline: float,
                       counts: dict, first: int) -> None:
    """Send bodies round-robin until the deadline; count what came back. A good photo
    must be answered without error, a bad one refused with a clear error (400, or its
    own error in images:annotate); anything else is an error, and no answer at all a
    lost photo."""
    i = first
    async with httpx.AsyncClient(timeout=120) as http:
        while time.perf_counter() < deadline:
            route, kw, good = bodies[i % len(bodies)]
            i += 1
            try:
                r = await http.post(f"{url}{route}", **kw)
            except httpx.HTTPError:
                counts["lost"] += 1
                continue
            try:
                answers = r.json().get("responses", [])
            except ValueError:
                answers = []
            failed = r.status_code != 200 or any("error" in x for x in answers)
            counts["requests"] += 1
            if good and not failed:
                counts["answered"] += 1
            elif not good and failed and r.status_code < 500:
                counts["refused"] += 1
            else:
                counts["errors"] += 1


def soak(photos: list[Path], model: str, seconds: float, clients: int = 16) -> str:
    """`clients` clients for `seconds`, real photos with bombs and broken photos mixed in."""
    bomb = bomb_png(Path(tempfile.mkdtemp()) / "bomb.png").read_bytes()
    raw = [p.read_bytes() for p in photos]
    broken = raw[0][: len(raw[0]) // 3]
    bodies = [*(("/v1/tag", {"content": b}, True) for b in raw[::2]),
              *(("/v1/images:annotate", _annotate_body([b]), True) for b in raw[1::2]),
              ("/v1/tag", {"content": bomb}, False), ("/v1/tag", {"content": broken}, False),
              ("/v1/images:annotate", _annotate_body([bomb]), False),
              ("/v1/tag", {"content": b"not a photo"}, False)]
    counts = dict.fromkeys(("requests", "answered", "refused", "errors", "lost"), 0)
    with running_service(model) as (url, pid):
        start = time.perf_counter()

        async def all_clients() -> None:
            await asyncio.gather(*(_soak_client(url, bodies, start + seconds, counts,
                                                c * 7) for c in range(clients)))
        asyncio.run(all_clients())
        wall = time.perf_counter() - start
        peak = peak_rss_mb(pid)
    return (f"{clients} clients for {wall:.0f} s against `landmark.serve` (model `{model}`), "
            f"{len(raw)} real test photos with a PNG bomb (15000×15900), a truncated JPEG, "
            "and bytes that are no photo mixed in.\n\n| requests | good photos answered | "
            "bad photos refused | errors | lost | requests/s | peak memory (MB) |\n"
            "|---|---|---|---|---|---|---|\n"
            f"| {counts['requests']} | {counts['answered']} | {counts['refused']} | "
            f"{counts['errors']} | {counts['lost']} | {counts['requests'] / wall:.1f} | "
            f"{peak:.0f} |")


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.service", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arg(p, required=False)
    p.add_argument("--photos", type=int, default=96, help="test photos used (default 96)")
    p.add_argument("--model", default="transfer", help="model name (default transfer)")
    p.add_argument("--soak", type=float, default=0, metavar="SECONDS",
                   help="instead: a soak of 16 clients for SECONDS with bombs and broken "
                   "photos mixed in (the issue's 600)")
    p.add_argument("--runtimes", nargs="+", default=["torchscript", "onnx"],
                   choices=["torchscript", "onnx"], help="runtimes to measure, side by side "
                   "(default both)")
    p.add_argument("--ray", action="store_true",
                   help="add rows for Ray Serve with 1 and 2 replicas, and a kill drill "
                   "(needs ray[serve])")
    p.add_argument("--part", choices=["capacity", "tag", "limit"], help=argparse.SUPPRESS)
    p.add_argument("--list", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    os.environ.update(LANDMARK_HUB_REPO="off", GRADIO_ANALYTICS_ENABLED="False")  # all parts
    if args.part:
        photos = [Path(line) for line in args.list.read_text().splitlines()]
        fn = {"capacity": part_capacity, "tag": part_tag, "limit": part_limit}[args.part]
        print(json.dumps(fn(photos, args.model, args.runtimes[0])))
        return
    if args.data is None:
        p.error("--data is required")
    photos = scan_split(args.data, "test").paths[::3][:args.photos]
    if args.soak:
        update_section("service_soak", "The HTTP service under a soak",
                       soak(photos, args.model, args.soak), module="service")
        return
    update_section("service", "The HTTP service against the model's capacity",
                   report(photos, args.model, args.runtimes, args.ray))


if __name__ == "__main__":
    main()
