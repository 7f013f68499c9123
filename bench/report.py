"""Write a benchmark's section of BENCHMARKS.md (between its own markers), with the
command and the machine, so every figure sits next to what reproduces it."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import sys
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


def update_section(name: str, title: str, body: str) -> None:
    """Replace (or append) the section `name` of BENCHMARKS.md."""
    command = "python -m " + " ".join([f"bench.{name}", *sys.argv[1:]])
    block = (f"<!-- bench:{name} -->\n## {title}\n\n`{command}`  \n"
             f"{machine()}; {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}\n\n"
             f"{body.rstrip()}\n<!-- /bench:{name} -->")
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"<!-- bench:{name} -->.*?<!-- /bench:{name} -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else \
        f"{text.rstrip()}\n\n{block}\n"
    BENCHMARKS.write_text(text if text.endswith("\n") else text + "\n")
    print(block)
