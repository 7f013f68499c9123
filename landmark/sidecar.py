"""XMP sidecars that photo managers read (Immich, digiKam, darktable, Lightroom, PhotoPrism).

One sidecar per photo, written through exiv2 (pyexiv2), never into the photo itself:
- dc:subject: the landmark, city and country as keywords;
- lr:hierarchicalSubject `Places|Country|City|Landmark` and digiKam's TagsList
  `Places/Country/City/Landmark`;
- Iptc4xmpExt:LocationShown (the landmark is the location shown, not where the camera
  stood) with its name, city, country and GPS position; photoshop:City and :Country;
- the photo's own GPS (exif:GPSLatitude/Longitude) only when asked (`set_gps`) and only
  when neither the photo nor the sidecar has a position: real GPS is never overwritten;
- provenance in the project's namespace (lmt:): the model, its confidence, and which
  values this project wrote, so a re-run replaces only its own and duplicates nothing.
An existing sidecar is merged: every field this project did not write is kept. A sidecar
exiv2 cannot parse is reported and left untouched. Writes go to a temporary file that is
renamed over the sidecar.
"""

from __future__ import annotations

import os
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pyexiv2

NAMESPACE = "http://ns.landmark-tagger.org/xmp/1.0/"
pyexiv2.registerNs(NAMESPACE, "lmt")
EMPTY_PACKET = ('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
                '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf='
                '"http://www.w3.org/1999/02/22-rdf-syntax-ns#"/></x:xmpmeta>\n'
                '<?xpacket end="w"?>\n')
LISTS = {"Xmp.dc.subject": "Xmp.lmt.Keywords",
         "Xmp.lr.hierarchicalSubject": "Xmp.lmt.Hierarchy",
         "Xmp.digiKam.TagsList": "Xmp.lmt.TagsList"}
BAGS = {"Xmp.dc.subject", "Xmp.lr.hierarchicalSubject"}  # unordered, as the standards say
SHOWN = "Xmp.iptcExt.LocationShown"
OWNED = "Xmp.lmt.Fields"  # the single-valued keys this project wrote last time
_exiv2 = threading.Lock()


class SidecarError(ValueError):
    """A sidecar that cannot be written or read; the message says which and why."""


@dataclass
class Change:
    """What writing one sidecar did (or, in a dry run, would do)."""

    path: Path
    action: str  # "created", "updated", "unchanged", "skipped"
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    def line(self) -> str:
        parts = [f"+{a}" for a in self.added] + [f"-{r}" for r in self.removed]
        return f"{self.action} {self.path}" + (f": {', '.join(parts)}" if parts else "")


def sidecar_path(photo: Path, naming: str = "full", folder: Path | None = None) -> Path:
    """photo.jpg.xmp ("full": Immich, darktable, digiKam) or photo.xmp ("stem":
    Lightroom), beside the photo or in `folder`."""
    name = f"{photo.name}.xmp" if naming == "full" else f"{photo.stem}.xmp"
    return (folder or photo.parent) / name


def _degrees(value: float, pos: str, neg: str) -> str:
    """XMP's GPS coordinate form, as exiv2 writes it: 'DDD,MM.mmmmmmmR'."""
    whole = int(abs(value))
    return f"{whole},{(abs(value) - whole) * 60:.7f}{pos if value >= 0 else neg}"


def wanted(record: dict, model: str) -> tuple[dict[str, list[str]], dict[str, str]]:
    """The lists and single values this project writes for a tag record: nothing unless
    a landmark was named."""
    if not record.get("known"):
        return {key: [] for key in LISTS}, {}
    top, loc = record["predictions"][0], record.get("location")
    name = top["landmark"]
    path = [loc["country"], loc["city"], name] if loc else [name]
    lists = {"Xmp.dc.subject": list(dict.fromkeys(record.get("tags") or [name])),
             "Xmp.lr.hierarchicalSubject": ["|".join(["Places", *path])],
             "Xmp.digiKam.TagsList": ["/".join(["Places", *path])]}
    values = {"Xmp.lmt.Model": model, "Xmp.lmt.Landmark": name,
              "Xmp.lmt.Source": top.get("source", "model"),
              "Xmp.lmt.Confidence": f"{top['confidence']:.4f}"}
    if loc:
        values.update({"Xmp.photoshop.City": loc["city"],
                       "Xmp.photoshop.Country": loc["country"]})
    return lists, values


def _shown(record: dict) -> dict[str, str]:
    """The LocationShown entry for a named landmark with a location."""
    loc, name = record["location"], record["predictions"][0]["landmark"]
    item = f"{SHOWN}[1]/"
    return {SHOWN: 'type="Bag"', f"{SHOWN}[1]": 'type="Struct"',
            f"{item}iptcExt:LocationName": name,
            f"{item}iptcExt:City": loc["city"], f"{item}iptcExt:CountryName": loc["country"],
            f"{item}exif:GPSLatitude": _degrees(loc["lat"], "N", "S"),
            f"{item}exif:GPSLongitude": _degrees(loc["lon"], "E", "W")}


def _read(path: Path) -> dict:
    """The XMP of an existing sidecar; SidecarError when exiv2 cannot parse it."""
    if path.is_dir():
        raise SidecarError(f"{path}: a folder stands where the sidecar goes")
    try:
        with _exiv2, pyexiv2.Image(str(path), encoding="utf-8") as img:
            return img.read_xmp()
    except (RuntimeError, UnicodeDecodeError) as e:
        raise SidecarError(f"{path}: existing sidecar is not valid XMP ({str(e).strip()}); "
                           "left untouched") from None


def _as_list(value: object) -> list[str]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [str(value)]


def plan(old: dict, record: dict, model: str, set_gps: bool,
         photo_has_gps: bool) -> tuple[dict, list[str], list[str]]:
    """(keys to set or delete (None), added, removed): the merge of this project's tags
    into a sidecar's existing XMP `old`."""
    lists, values = wanted(record, model)
    changes: dict = {}
    added, removed = [], []
    for key, mine in LISTS.items():
        before, ours = _as_list(old.get(key)), set(_as_list(old.get(mine)))
        kept = [v for v in before if v not in ours]
        new = kept + [v for v in lists[key] if v not in kept]
        if new != before:
            changes[key] = new or None
        changes[mine] = lists[key] or None
        added += [v for v in new if v not in before and key == "Xmp.dc.subject"]
        removed += [v for v in before if v not in new and key == "Xmp.dc.subject"]
    owned = set(_as_list(old.get(OWNED)))
    for key, value in values.items():
        if key not in old or key in owned:
            changes[key] = value
    shown_keys = [k for k in old if k.startswith(SHOWN)]
    if "Xmp.lmt.LocationShown" in owned or not shown_keys:
        changes.update(dict.fromkeys(shown_keys))
        if record.get("known") and record.get("location"):
            changes.update(_shown(record))
            values = {**values, "Xmp.lmt.LocationShown": "yes"}
            changes["Xmp.lmt.LocationShown"] = "yes"
    loc = record.get("location") if record.get("known") else None
    gps_mine = "Xmp.exif.GPSLatitude" in owned or "Xmp.exif.GPSLatitude" not in old
    if set_gps and loc and not photo_has_gps and gps_mine:
        gps = {"Xmp.exif.GPSLatitude": _degrees(loc["lat"], "N", "S"),
               "Xmp.exif.GPSLongitude": _degrees(loc["lon"], "E", "W")}
        changes.update(gps)
        values = {**values, **gps}
    for key in owned - set(values):
        changes[key] = None  # a value this project wrote that no longer applies
    changes[OWNED] = sorted(values) or None
    return {k: v for k, v in changes.items() if old.get(k) != v}, added, removed


def _steps(changes: dict) -> tuple[dict, dict]:
    """(deletions, then settings) for exiv2, which applies each in order: an array's items
    are deleted before the array, and the array is typed (Bag or Seq) before its items.
    A changed list is deleted and written anew, so no old item lingers."""
    deletes = {k: None for k, v in changes.items() if v is None or isinstance(v, list)}
    sets: dict = {}
    for key, value in changes.items():
        if isinstance(value, list):
            sets[key] = 'type="Bag"' if key in BAGS else 'type="Seq"'
            sets.update({f"{key}[{i}]": item for i, item in enumerate(value, 1)})
        elif value is not None:
            sets[key] = value
    return (dict(sorted(deletes.items(), key=lambda kv: -kv[0].count("["))),
            dict(sorted(sets.items(), key=lambda kv: kv[0].count("["))))


def write_sidecar(path: Path, record: dict, model: str, *, set_gps: bool = False,
                  photo_has_gps: bool = False, dry_run: bool = False) -> Change:
    """Merge a tag record into the sidecar at `path` (see the module doc). A photo with
    no named landmark and no earlier sidecar gets none. Raises SidecarError."""
    exists = path.exists() or path.is_symlink()
    old = _read(path) if exists else {}
    if not exists and not record.get("known"):
        return Change(path, "skipped")
    changes, added, removed = plan(old, record, model, set_gps, photo_has_gps)
    if not changes:
        return Change(path, "unchanged")
    change = Change(path, "updated" if exists else "created", added, removed)
    if dry_run:
        return change
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        emptied = set(old) <= set(changes) and all(v is None for v in changes.values())
        if exists and not emptied:
            shutil.copyfile(path, tmp)
        else:  # exiv2 leaves a file alone rather than write an empty packet into it
            tmp.write_text(EMPTY_PACKET, encoding="utf-8")
            changes = {} if emptied else changes
        with _exiv2, pyexiv2.Image(str(tmp), encoding="utf-8") as img:
            # exiv2 mirrors a sidecar's XMP into EXIF and IPTC when reading it and back
            # when writing, which would restore what `changes` deletes: the XMP rules
            img.clear_exif()
            img.clear_iptc()
            for step in _steps(changes):
                if step:
                    img.modify_xmp(step)
        tmp.replace(path)
    except (OSError, RuntimeError) as e:
        tmp.unlink(missing_ok=True)
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).strip()
        raise SidecarError(f"{path}: cannot write the sidecar ({reason})") from None
    return change
