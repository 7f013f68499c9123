"""bench.robustness degrades photos the way its table says."""

import subprocess
import sys
from pathlib import Path

import numpy as np

from bench.robustness import DEGRADATIONS
from landmark.imageio import load_image
from tests.conftest import REPO, SHARED, real_photos


def test_each_degradation_does_what_its_name_says() -> None:
    img = load_image(real_photos("03.Eiffel_Tower")[0])
    w, h = img.size
    out = {name: fn(img) for name, fn in DEGRADATIONS.items()}
    assert out["none"] is img
    assert max(out["160 px long side"].size) == 160
    assert out["rotated 90°"].size == (h, w)
    assert out["50% centre crop"].size == (round(w / 2), round(h / 2))
    bordered = np.asarray(out["white border 15%"])
    assert bordered.shape[:2] == (h + 2 * round(h * 0.15), w + 2 * round(w * 0.15))
    assert (bordered[0] == 255).all() and (bordered[:, -1] == 255).all()
    pixels = {name: np.asarray(o, dtype=np.float32) for name, o in out.items()
              if o.size == img.size}
    clean = pixels.pop("none")
    assert abs(pixels.pop("brightness x0.4").mean() / clean.mean() - 0.4) < 0.02
    for name, x in pixels.items():  # JPEG, blur, noise: same size, visibly different
        assert np.abs(x - clean).mean() > 1.0, name
    assert np.array_equal(np.asarray(DEGRADATIONS["noise (sigma 0.1)"](img)),
                          np.asarray(out["noise (sigma 0.1)"]))  # seeded: the same every run


def test_out_writes_a_comparison_table_and_leaves_benchmarks_alone(tmp_path: Path) -> None:
    """--split val --out: candidates compared without test/, BENCHMARKS.md untouched."""
    bench_md = (REPO / "BENCHMARKS.md").read_text()
    out = tmp_path / "cmp.md"
    res = subprocess.run([sys.executable, "-m", "bench.robustness", "--data", str(SHARED),
                          "--models", "scratch", "--split", "val", "--photos", "3",
                          "--out", str(out)],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    table = out.read_text()
    assert "--photos 3" in table and "3 val photos" in table
    assert table.count("| scratch |") == len(DEGRADATIONS)
    assert (tmp_path / "cmp.png").stat().st_size > 0
    assert (REPO / "BENCHMARKS.md").read_text() == bench_md
