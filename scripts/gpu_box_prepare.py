"""Prepare `.gpu/`: what a lent GPU box needs to fine-tune, small enough to travel (64 MiB
with the tree; move `models/*.pt` out of the tree for the call).

    python scripts/gpu_box_prepare.py --shared ../shared/data
    # then, on the box: PYTHONPATH=$PWD/.gpu/stub bash scripts/gpu_box_run.sh

Photos become 292 px centre squares (the decode cache's geometry) under the same file
stems, so every seeded split and fold is the same as on `../shared/data`: `train/` and
`landmark_extra/train/` as WebP, `unknown/` as JPEG under its own names (`--outlier-skip`
matches them), its held-out half as thumbnails kept only so the seeded parts stay the same.
The Lite2 ImageNet weights travel in fp16 on timm's keys."""

from __future__ import annotations

import argparse
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from PIL import Image

from landmark.imageio import cache_image, list_images, load_image, to_tensor
from train.data.datasets import split_unknown
from train.models.transfer import lite_weights_file

SIZE = 292
STUB = '''def register_heif_opener() -> None:
    """Stand-in on the GPU box, which lacks pillow_heif: its photos are JPEG and WebP."""
'''


def square(job: tuple[Path, Path, int, str, int]) -> None:
    """Write `src` as the decode cache keeps it (a SIZE px centre square), then at `side`
    px, in `fmt` at `quality`."""
    src, dst, side, fmt, quality = job
    kept = cache_image(to_tensor(load_image(src, max_side=2 * SIZE)), SIZE)
    img = Image.fromarray(kept.permute(1, 2, 0).numpy()).resize((side, side), Image.BILINEAR)
    dst.parent.mkdir(parents=True, exist_ok=True)
    img.save(dst, fmt, quality=quality)


def jobs(shared: Path, out: Path) -> list[tuple[Path, Path, int, str, int]]:
    todo = []
    for src, dst in ((shared / "landmark_images/train", out / "data/train"),
                     (shared / "landmark_extra/train", out / "extra/train")):
        todo += [(p, (dst / p.relative_to(src)).with_suffix(".webp"), SIZE, "WEBP", 75)
                 for p in sorted(src.rglob("*")) if p.is_file()]
    unknown = list_images(shared / "landmark_images/unknown")
    hold = set(split_unknown(len(unknown))["hold"])
    todo += [(p, out / "data/unknown" / p.name, 48 if i in hold else SIZE, "JPEG",
              30 if i in hold else 80) for i, p in enumerate(unknown)]
    return todo


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", type=Path, default=Path("../shared/data"))
    p.add_argument("--out", type=Path, default=Path(".gpu"))
    args = p.parse_args()
    with ProcessPoolExecutor() as pool:
        list(pool.map(square, jobs(args.shared, args.out), chunksize=32))
    (args.out / "new_places").mkdir(parents=True, exist_ok=True)
    shutil.copy(args.shared / "new_places/places.json", args.out / "new_places/places.json")
    weights = torch.load(lite_weights_file(2), map_location="cpu")
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in weights.items()},
               args.out / "lite2.pth")
    (args.out / "stub").mkdir(exist_ok=True)
    (args.out / "stub" / "pillow_heif.py").write_text(STUB)


if __name__ == "__main__":
    main()
