"""A world map that draws offline: the landmark's point on country outlines.

`world.path` holds Natural Earth's 1:110m country outlines (public domain, via the copy
geopandas 0.14 bundled) in equirectangular degrees, rounded to whole degrees: one SVG
path of 36 KB, so a result card needs no tile server (docs/decisions.md says how it
was made).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

WORLD_PATH = Path(__file__).with_name("world.path")


@cache
def outline() -> str:
    """The SVG path data of every country outline (x = lon + 180, y = 90 - lat)."""
    return WORLD_PATH.read_text().strip()


def world_svg(lat: float, lon: float) -> str:
    """An inline SVG world map with a pin at (lat, lon)."""
    x, y = lon + 180, 90 - lat
    return (f'<svg class="worldmap" viewBox="0 0 360 180" width="100%" '
            f'style="max-width:360px" role="img" aria-label="world map, pin at '
            f'{lat:.2f}, {lon:.2f}"><rect width="360" height="180" fill="#dbeafe"/>'
            f'<path d="{outline()}" fill="#f3f4f6" stroke="#9ca3af" stroke-width="0.3"/>'
            f'<circle cx="{x:.2f}" cy="{y:.2f}" r="4" fill="#dc2626" stroke="#fff" '
            f'stroke-width="1.2"/></svg>')
