"""BENCHMARKS.md sections name the command that wrote them, and a rerun replaces its own."""

import sys
from pathlib import Path

import pytest

from bench import report


def test_a_section_names_its_module_and_a_rerun_replaces_only_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bench = tmp_path / "BENCHMARKS.md"
    monkeypatch.setattr(report, "BENCHMARKS", bench)
    monkeypatch.setattr(sys, "argv", ["service.py", "--soak", "600"])
    report.update_section("service", "Service", "first")
    report.update_section("service_soak", "Soak", "soak-run-1", module="service")
    report.update_section("service_soak", "Soak", "soak-run-2", module="service")
    text = bench.read_text()
    assert "`python -m bench.service --soak 600`" in text
    assert "bench.service_soak" not in text.replace("<!-- bench:service_soak -->", "").replace(
        "<!-- /bench:service_soak -->", "")
    assert text.count("## Soak") == 1 and "soak-run-2" in text and "soak-run-1" not in text
    assert "first" in text
