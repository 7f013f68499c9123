"""Write a benchmark's section of BENCHMARKS.md (between its own markers), with the
command and the machine, so every figure sits next to what reproduces it."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(line.split(":", 1)[1].strip() for line in
                   Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"Python {platform.python_version()}{gpu}")


def command_line(name: str) -> str:
    """The command that is running `bench.{name}`, as a reader would type it."""
    return "python -m " + " ".join([f"bench.{name}", *sys.argv[1:]])


def take_turns(fns: list[Callable[[int], object]], n: int) -> list[list[float]]:
    """Seconds of calls 0..n-1 of each function, the functions taking turns call by call,
    so that drift on a shared VM falls on all of them alike."""
    times: list[list[float]] = [[] for _ in fns]
    for i in range(n):
        for fn, out in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn(i)
            out.append(time.perf_counter() - start)
    return times


def update_section(name: str, title: str, body: str, module: str | None = None) -> None:
    """Replace (or append) the section `name` of BENCHMARKS.md, written by `bench.{module}`
    (by default the module of the same name)."""
    command = command_line(module or name)
    block = (f"<!-- bench:{name} -->\n## {title}\n\n`{command}`  \n"
             f"{machine()}; {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}\n\n"
             f"{body.rstrip()}\n<!-- /bench:{name} -->")
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"<!-- bench:{name} -->.*?<!-- /bench:{name} -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else \
        f"{text.rstrip()}\n\n{block}\n"
    BENCHMARKS.write_text(text if text.endswith("\n") else text + "\n")
    print(block)
