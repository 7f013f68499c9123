"""Robustness to the photos phones really send: accuracy and trust under degradations.

    python -m bench.robustness --data ../shared/data/landmark_images [--models transfer]

Every test photo is degraded one way at a time, then tagged by the model file itself:
JPEG quality 15; a Gaussian blur of radius 1% of the long side; shrunk to a 160 px long
side; brightness x0.4; rotated 90 degrees (EXIF orientation lost); the central 50% of
each side; Gaussian noise (sigma 0.1 on [0, 1]); a white border of 15% of each side (a
screenshot). For each: top-1, the share accepted at the model's own reject threshold, and
the share of accepted answers that are right (the issue's target: at least 97%). A wrong
answer under degradation should be rejected, not tagged. Writes its section of
BENCHMARKS.md and bench/results/robustness.png.
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter, ImageOps
from tqdm import tqdm

from bench.report import command_line, update_section
from landmark.cli import add_data_arg
from landmark.contract import load_exported
from landmark.imageio import load_image, to_tensor
from landmark.metrics import share_text
from landmark.resolve import resolve
from train import plots
from train.data import default_val_split, scan_split

RESULTS = Path(__file__).parent / "results"
ACCEPTED_RIGHT_TARGET = 0.97


def jpeg(img: Image.Image, quality: int = 15) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def blur(img: Image.Image) -> Image.Image:
    return img.filter(ImageFilter.GaussianBlur(radius=max(1.0, 0.01 * max(img.size))))


def shrink(img: Image.Image, side: int = 160) -> Image.Image:
    out = img.copy()
    out.thumbnail((side, side), Image.Resampling.BICUBIC)
    return out


def centre_crop(img: Image.Image, keep: float = 0.5) -> Image.Image:
    w, h = img.size
    cw, ch = round(w * keep), round(h * keep)
    return img.crop(((w - cw) // 2, (h - ch) // 2, (w + cw) // 2, (h + ch) // 2))


def noise(img: Image.Image, sigma: float = 0.1, seed: int = 0) -> Image.Image:
    x = np.asarray(img, dtype=np.float32) / 255
    x = x + np.random.default_rng(seed).normal(0, sigma, x.shape).astype(np.float32)
    return Image.fromarray((x.clip(0, 1) * 255 + 0.5).astype(np.uint8))


def border(img: Image.Image, share: float = 0.15) -> Image.Image:
    w, h = img.size
    return ImageOps.expand(img, (round(w * share), round(h * share)), fill="white")


DEGRADATIONS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "none": lambda img: img,
    "JPEG quality 15": jpeg,
    "blur (1% radius)": blur,
    "160 px long side": shrink,
    "brightness x0.4": lambda img: ImageEnhance.Brightness(img).enhance(0.4),
    "rotated 90°": lambda img: img.transpose(Image.Transpose.ROTATE_90),
    "50% centre crop": centre_crop,
    "noise (sigma 0.1)": noise,
    "white border 15%": border,
}


@torch.no_grad()
def top_probs(model: torch.jit.ScriptModule, photos: list[Image.Image]) -> torch.Tensor:
    """(N, C) probabilities, one photo a call (the photos differ in size)."""
    return torch.cat([model(to_tensor(p)[None].float() / 255) for p in photos])


def measure(path: Path, photos: list[Path], labels: torch.Tensor) -> dict[str, dict]:
    """Per degradation: top-1, accepted share and accepted-right share with counts."""
    model = load_exported(path)
    threshold = float(model.metadata.get("reject_threshold", 0.0))
    clean = [load_image(p) for p in photos]
    rows = {}
    for name, fn in tqdm(DEGRADATIONS.items(), desc=path.stem, unit="degradation"):
        probs = top_probs(model.module, [fn(img) for img in clean])
        conf, pred = probs.max(1)
        right, accepted = pred == labels, conf >= threshold
        n_acc = int(accepted.sum())
        rows[name] = {"top1": float(right.float().mean()), "n": len(labels),
                      "accepted": n_acc / len(labels), "n_accepted": n_acc,
                      "accepted_right": float(right[accepted].float().mean()) if n_acc else 1.0}
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arg(p)
    p.add_argument("--models", nargs="+", default=["transfer", "scratch"],
                   help="model names or .pt files")
    p.add_argument("--split", choices=["test", "val"], default="test",
                   help="test/, or the trainers' default validation split (10%% of train/, "
                        "seed 0), to choose between candidate models without test/")
    p.add_argument("--photos", type=int, default=None, help="photos (default: all)")
    p.add_argument("--out", type=Path, default=None, metavar="FILE.md",
                   help="write the table (and its plot beside it) here instead of "
                        "BENCHMARKS.md, to compare candidate models")
    args = p.parse_args()
    split = (default_val_split(args.data) if args.split == "val"
             else scan_split(args.data, "test"))
    photos, labels = split.paths[: args.photos], torch.as_tensor(split.labels[: args.photos])
    results = {Path(m).stem: measure(resolve(m), photos, labels) for m in args.models}
    lines = [f"{len(photos)} {args.split} photos, each degraded one way; each model at its own "
             "reject threshold. *Accepted right*: of the answers the model accepted (tagged), the "
             f"share that is right (target at least {ACCEPTED_RIGHT_TARGET:.0%}); a miss is "
             "marked **bold**. In brackets: 95% Wilson intervals.", "",
             "| degradation | model | top-1 | accepted | accepted right |", "|---|---|---|---|---|"]
    for name in DEGRADATIONS:
        for model, rows in results.items():
            r = rows[name]
            right = share_text(r["accepted_right"], r["n_accepted"])
            if r["accepted_right"] < ACCEPTED_RIGHT_TARGET:
                right = f"**{right}**"
            lines.append(f"| {name} | {model} | {share_text(r['top1'], r['n'])} | "
                         f"{r['accepted']:.3f} | {right} |")
    png = args.out.with_suffix(".png") if args.out else RESULTS / "robustness.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    plots.robustness_png(results, png, ACCEPTED_RIGHT_TARGET)
    if args.out:
        table = "\n".join([f"`{command_line('robustness')}`", "", *lines, "",
                           f"![plot]({png.name})"])
        args.out.write_text(table)
        print(table)
        return
    lines += ["", "![top-1 and accepted answers right, by degradation]"
                  "(bench/results/robustness.png)"]
    update_section("robustness", "Robustness to degraded photos", "\n".join(lines))


if __name__ == "__main__":
    main()
