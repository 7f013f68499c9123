"""XMP sidecars from batch tagging, read back by the real exiftool."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from landmark.geotag import geotag_jpeg
from landmark.resolve import MODELS_DIR
from tests.conftest import REPO, real_photos, unavailable

DARKTABLE = """<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="XMP Core 4.4.0-Exiv2">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmlns:darktable="http://darktable.sf.net/"
   xmp:Rating="4"
   darktable:xmp_version="5"
   darktable:history_end="2">
   <dc:subject>
    <rdf:Bag>
     <rdf:li>holiday</rdf:li>
    </rdf:Bag>
   </dc:subject>
   <darktable:history>
    <rdf:Seq>
     <rdf:li darktable:operation="exposure" darktable:enabled="1"/>
     <rdf:li darktable:operation="colorbalancergb" darktable:enabled="1"/>
    </rdf:Seq>
   </darktable:history>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="w"?>
"""


def exiftool(*paths: Path) -> list[dict]:
    """What Debian's exiftool reads from files (structs kept)."""
    exe = shutil.which("exiftool")
    if exe is None:
        unavailable("no exiftool: apt-get install libimage-exiftool-perl (CI installs it)")
    res = subprocess.run([exe, "-j", "-struct", "-G1", *map(str, paths)], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def _tag(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "landmark.tag", "--model",
                           str(MODELS_DIR / "transfer.pt"), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def album(tmp_path: Path) -> Path:
    """Eiffel Tower photos (one with GPS of its own, one in a folder with a space and
    accents) and one photo of a place no model knows."""
    root = tmp_path / "album"
    (root / "été 2024").mkdir(parents=True)
    eiffel = real_photos("03.Eiffel_Tower", "test", 3)
    shutil.copy(eiffel[0], root / "tower.jpg")
    shutil.copy(eiffel[1], root / "été 2024" / "tour eiffel.jpg")
    (root / "own_gps.jpg").write_bytes(geotag_jpeg(eiffel[2].read_bytes(), 40.69, -74.04, "NY"))
    shutil.copy(REPO / "examples" / "unknown_place.jpg", root / "lighthouse.jpg")
    return root


def test_sidecars_carry_keywords_hierarchy_location_and_gps_rules(album: Path,
                                                                  tmp_path: Path) -> None:
    before = {p: _digest(p) for p in album.rglob("*.jpg")}
    res = _tag(str(album), "--out", str(tmp_path / "t.jsonl"), "--sidecar", "--set-gps")
    assert res.returncode == 0, res.stderr[-2000:]
    assert {p: _digest(p) for p in album.rglob("*.jpg")} == before  # photos untouched
    assert not (album / "lighthouse.jpg.xmp").exists()  # no landmark, no sidecar
    sidecars = [album / "tower.jpg.xmp", album / "été 2024" / "tour eiffel.jpg.xmp",
                album / "own_gps.jpg.xmp"]
    tower, accents, own = exiftool(*sidecars)
    for meta in (tower, accents, own):
        assert meta["XMP-dc:Subject"] == ["Eiffel Tower", "Paris", "France"]
        assert meta["XMP-lr:HierarchicalSubject"] == ["Places|France|Paris|Eiffel Tower"]
        assert meta["XMP-digiKam:TagsList"] == ["Places/France/Paris/Eiffel Tower"]
        assert meta["XMP-photoshop:City"] == "Paris"
        assert meta["XMP-photoshop:Country"] == "France"
        (shown,) = meta["XMP-iptcExt:LocationShown"]
        assert shown["LocationName"] == "Eiffel Tower" and shown["City"] == "Paris"
        assert shown["CountryName"] == "France" and shown["GPSLatitude"].startswith("48 deg 51'")
    assert tower["XMP-exif:GPSLatitude"].startswith("48 deg 51'")  # --set-gps, no GPS of its own
    assert "XMP-exif:GPSLatitude" not in own  # the photo's own GPS stays the only one


def test_merge_keeps_other_fields_and_reruns_change_nothing(album: Path,
                                                            tmp_path: Path) -> None:
    existing = album / "tower.jpg.xmp"
    existing.write_text(DARKTABLE, encoding="utf-8")
    out = tmp_path / "t.jsonl"
    assert _tag(str(album / "tower.jpg"), "--out", str(out), "--sidecar").returncode == 0
    (meta,) = exiftool(existing)
    assert meta["XMP-xmp:Rating"] == 4
    assert [h["Operation"] for h in meta["XMP-darktable:History"]] == ["exposure",
                                                                       "colorbalancergb"]
    assert meta["XMP-dc:Subject"] == ["holiday", "Eiffel Tower", "Paris", "France"]
    first = existing.read_bytes()
    out.unlink()
    again = _tag(str(album / "tower.jpg"), "--out", str(out), "--sidecar", "--dry-run")
    assert "unchanged" in again.stdout
    assert _tag(str(album / "tower.jpg"), "--out", str(out), "--sidecar").returncode == 0
    assert existing.read_bytes() == first  # no duplicate keywords, nothing rewritten


def test_dry_run_prints_and_writes_nothing(album: Path, tmp_path: Path) -> None:
    res = _tag(str(album), "--out", str(tmp_path / "t.jsonl"), "--sidecar", "--dry-run")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "created " in res.stdout and "+Eiffel Tower" in res.stdout
    assert not list(album.rglob("*.xmp"))


def test_lightroom_names_under_a_mirrored_folder(album: Path, tmp_path: Path) -> None:
    dest = tmp_path / "sidecars"
    res = _tag(str(album), "--out", str(tmp_path / "t.jsonl"), "--sidecar",
               "--sidecar-dir", str(dest), "--sidecar-name", "stem")
    assert res.returncode == 0, res.stderr[-2000:]
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*.xmp")) == [
        "own_gps.xmp", "tower.xmp", "été 2024/tour eiffel.xmp"]
    assert not list(album.rglob("*.xmp"))


def test_bad_sidecar_places_are_one_line_each_and_the_run_goes_on(album: Path,
                                                                  tmp_path: Path) -> None:
    corrupt = album / "tower.jpg.xmp"
    corrupt.write_text("<x:xmpmeta this is not xml")
    (album / "own_gps.jpg.xmp").mkdir()
    (album / "linked.jpg").symlink_to(album / "été 2024" / "tour eiffel.jpg")
    out = tmp_path / "t.jsonl"
    res = _tag(str(album), "--out", str(out), "--sidecar")
    assert res.returncode == 0, res.stderr[-2000:]
    assert corrupt.read_text() == "<x:xmpmeta this is not xml"  # left untouched
    recs = {Path(r["file"]).name: r for r in map(json.loads, out.read_text().splitlines())}
    assert "not valid XMP" in recs["tower.jpg"]["sidecar_error"]
    assert "a folder stands where the sidecar goes" in recs["own_gps.jpg"]["sidecar_error"]
    assert "sidecar: " in res.stderr and "Traceback" not in res.stderr
    assert "linked.jpg is a link" in res.stderr and (album / "linked.jpg.xmp").is_file()
    assert (album / "été 2024" / "tour eiffel.jpg.xmp").is_file()
    # a sidecar folder that cannot be created (a file stands in the way): one line a photo
    blocked = tmp_path / "blocked"
    blocked.write_text("a file")
    out.unlink()
    res = _tag(str(album), "--out", str(out), "--sidecar", "--sidecar-dir", str(blocked))
    assert res.returncode == 0 and "Traceback" not in res.stderr
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(recs) == 5
    assert all("cannot write the sidecar" in r["sidecar_error"] for r in recs)
