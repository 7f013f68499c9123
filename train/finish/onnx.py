r"""Give model files their ONNX twins, for ONNX Runtime (landmark.runtime).

    python -m train.finish.onnx models/transfer.pt models/scratch.pt

The trainers' export writes the twin itself; this step makes it for a file exported
before, from the file's own weights (`rebuild`): `FILE.onnx` beside `FILE.pt`, which is
left as it is. The twin holds the networks; preprocessing, the upright head's turn, the
mirror view and calibration stay the contract's wrapper, the same module for both
runtimes. The twin must match the file on sample photos (1e-4) before it is written,
and records the file's hash, so a twin left beside another file is never served.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from landmark.imageio import list_images, load_image, to_tensor
from landmark.predict import decode_side
from train.export import ExportError, export_onnx, kept_parts, wrap
from train.finish.reexport import rebuild


def samples(photos: list[Path], side: int) -> list[torch.Tensor]:
    """Random images of three shapes, and `photos` decoded as the app decodes them."""
    gen = torch.Generator().manual_seed(0)
    noise = [torch.rand(3, h, w, generator=gen) for h, w in ((300, 200), (64, 64), (512, 700))]
    return noise + [to_tensor(load_image(p, max_side=side)).float() / 255.0 for p in photos]


def twin(path: Path, photos: list[Path]) -> Path:
    """Write `path`'s ONNX twin; raises ExportError when it would not match."""
    net, preset, exp = rebuild(path)
    meta = exp.metadata
    if meta.get("frozen"):
        raise ExportError(f"{path} is frozen (inlined weights); export the twin from the "
                          "file it was frozen from")
    parts = kept_parts(exp.module)
    if parts["projection"] is not None:
        raise ExportError(f"{path} has a projected embedding, which ONNX Runtime does not "
                          "serve; it stays on TorchScript")
    eager = wrap(net, preset, meta["temperature"], meta["tta_flip"],
                 meta["background_logit"], **parts)
    return export_onnx(eager, meta, path, samples(photos, decode_side(preset.resize_size)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.finish.onnx", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", type=Path, nargs="+", help="model files (.pt)")
    p.add_argument("--photos", type=Path, default=None, metavar="DIR",
                   help="a folder of photos to check the twin on too (the first 8)")
    args = p.parse_args(argv)
    photos = list_images(args.photos)[:8] if args.photos else []
    for model in args.models:
        try:
            print(f"wrote {twin(model, photos)}")
        except (OSError, RuntimeError, KeyError) as e:  # ExportError is a RuntimeError
            print(f"error: {model}: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
