"""Find a model file by name: one rule for the app, batch tagging and the benchmarks.

A name ("transfer", "scratch") is pulled from its Hugging Face Hub repo when
LANDMARK_HUB_REPO lists one (comma-separated OWNER/landmark-NAME; default the project's
repos; "off" for none; LANDMARK_HUB_REVISION pins a revision), falling back to
huggingface_hub's cache and then to the file bundled in models/. A path to a .pt file is
used as it is.
"""

from __future__ import annotations

import os
from pathlib import Path

from landmark.hub import DEFAULT_REPOS, pull_with_fallback

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
OFF = ("", "off", "none", "0")


def bundled(folder: Path = MODELS_DIR) -> dict[str, Path]:
    """Model name (file stem) -> path, for every TorchScript file in `folder`."""
    return {p.stem: p for p in sorted(folder.glob("*.pt"))}


def hub_repos() -> dict[str, str]:
    """Model name -> Hub repo, from LANDMARK_HUB_REPO ('OWNER/landmark-NAME' -> NAME)."""
    repos = os.environ.get("LANDMARK_HUB_REPO", ",".join(DEFAULT_REPOS))
    if repos.strip().lower() in OFF:
        return {}
    return {r.rsplit("/", 1)[-1].removeprefix("landmark-"): r
            for r in (r.strip() for r in repos.split(",")) if r}


def _from_hub(name: str, local: Path | None) -> Path | None:
    repo = hub_repos().get(name)
    if repo is None:
        return local
    return pull_with_fallback(repo, local, os.environ.get("LANDMARK_HUB_REVISION") or None)


def available(folder: Path = MODELS_DIR) -> dict[str, Path]:
    """Every model to serve (Hub or bundled), "transfer" first, then by name."""
    local = bundled(folder)
    found = {name: _from_hub(name, local.get(name)) for name in {*local, *hub_repos()}}
    return {n: found[n] for n in sorted(found, key=lambda n: (n != "transfer", n)) if found[n]}


def resolve(name_or_path: str, folder: Path = MODELS_DIR) -> Path:
    """The model file for a name or a path; raises FileNotFoundError naming the choices."""
    path = Path(name_or_path)
    if path.suffix == ".pt":
        if path.is_file():
            return path
        raise FileNotFoundError(f"no such model file: {path}")
    found = _from_hub(name_or_path, bundled(folder).get(name_or_path))
    if found:
        return found
    raise FileNotFoundError(f"no model {name_or_path!r}: give a .pt file or one of "
                            f"{sorted({*bundled(folder), *hub_repos()})}")
