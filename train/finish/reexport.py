r"""Export a model file again under the current contract, from the file's own weights.

    python -m train.finish.reexport models/transfer.pt                  # in place
    python -m train.finish.reexport models/scratch.pt --out /tmp/s.pt
    python -m train.finish.reexport models/transfer.pt --backbone-out runs/backbone.pth
    python -m train.finish.reexport models/transfer.pt --project 512 \
        --photos ../shared/data/landmark_images/train ../shared/data/landmark_extra/train

`--backbone-out` writes the file's backbone weights instead, for `train.transfer
--weights`: a new head trained on a backbone fine-tuned before (on a CPU, on cached
features).

`--project K` gives `embed` a K-dimensional output: the leading K principal directions
(uncentred) of the file's embeddings of `--photos`, photos of the model's own landmarks.
Stored vectors and searches shrink by D/K; the probabilities do not change. A file
exported again keeps its projection.

Files written before the contract had `embed` gain it: the network is rebuilt from the
registry (`metadata["architecture"]`), loaded with the file's weights and exported with
the file's own temperature, flip TTA, background logit, classes and metadata, so its
probabilities stay the same. The command is recorded in `metadata["reexport_command"]`.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from functools import partial
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm import tqdm

from landmark.contract import Exported, load_exported
from landmark.imageio import list_images, load_image, to_tensor
from landmark.predict import decode_side
from train.export import ExportError, Upright, export_model, kept_parts, wrap
from train.models import create_model
from train.models.transfer import BACKBONES
from train.presets import Preset


def rebuild(path: Path) -> tuple[nn.Module, Preset, Exported]:
    """(eager network with the file's weights, its preset, the loaded file)."""
    exp = load_exported(path)
    meta = exp.metadata
    if meta.get("frozen"):
        raise ExportError(f"{path} is frozen (its weights are inlined constants); rebuild "
                          f"from the file it was made from: {meta.get('derived_from', '?')}")
    kw = {"pretrained": False} if meta["architecture"] in BACKBONES else {}
    net = create_model(meta["architecture"], len(exp.classes), **kw).eval()
    if hasattr(exp.module, "net"):  # the contract before `embed`: one traced network
        net.load_state_dict(exp.module.net.state_dict())
    else:
        features, head = net.split_head()
        saved = exp.module.features
        # files before train.models.embedding held the network itself as `features`
        features.net.load_state_dict(getattr(saved, "net", saved).state_dict())
        head.load_state_dict(exp.module.head.state_dict())
    preset = Preset(**{k: tuple(v) if isinstance(v, list) else v
                       for k, v in meta["preset"].items()})
    return net, preset, exp


def rebuild_or_exit(path: Path, flag: str) -> tuple[nn.Module, Preset, Exported]:
    """`rebuild(path)` for a training option (`flag`) naming a model file: a file that is
    not one stops the run with one line."""
    try:
        return rebuild(path)
    except (OSError, RuntimeError, ValueError, KeyError) as e:
        sys.exit(f"error: {flag} {path}: not a readable model file ({str(e)[:200]})")


def fit_projection(path: Path, photos: list[Path], k: int) -> Tensor:
    """(D, k): the leading k right singular vectors of the file's unprojected embeddings
    of `photos`, decoded as the app decodes them."""
    net, preset, exp = rebuild(path)
    eager = wrap(net, preset, flip=exp.metadata["tta_flip"])
    load = partial(load_image, max_side=decode_side(preset.resize_size))
    with torch.no_grad():
        emb = torch.cat([eager.embed(to_tensor(load(f))[None].float() / 255.0)
                         for f in tqdm(photos, desc="embed", unit="photo")])
    if k >= emb.shape[1] or k > len(photos):
        raise ExportError(f"--project {k}: needs fewer dimensions than the embedding's "
                          f"{emb.shape[1]} and no more than the {len(photos)} photos")
    return torch.linalg.svd(emb, full_matrices=False).Vh[:k].T.contiguous()


def reexport(path: Path, out: Path, command: str, projection: Tensor | None = None,
             upright: Upright | None = None, notes: dict | None = None) -> Path:
    """Write `path`'s model to `out` under the current contract (see the module doc),
    with `projection` and `upright` if given, else the file's own; `notes` join its
    metadata."""
    net, preset, exp = rebuild(path)
    meta = exp.metadata
    gen = torch.Generator().manual_seed(0)
    samples = [torch.rand(3, h, w, generator=gen) for h, w in ((300, 200), (64, 64), (512, 700))]
    keep = {k: v for k, v in meta.items() if k not in ("preset", "temperature", "tta_flip",
                                                        "background_logit", "num_classes",
                                                        "embedding_dim")}
    parts = kept_parts(exp.module)
    parts.update({k: v for k, v in (("projection", projection), ("upright", upright))
                  if v is not None})
    return export_model(net, preset, exp.classes,
                        {**keep, **(notes or {}), "reexport_command": command}, out,
                        samples, temperature=meta["temperature"], flip=meta["tta_flip"],
                        background=meta["background_logit"], **parts)


def save_backbone(path: Path, out: Path) -> Path:
    """The file's transfer backbone as a state dict that timm's loader reads."""
    net, _, exp = rebuild(path)
    if not hasattr(net, "backbone"):
        raise ExportError(f"a {exp.metadata['architecture']} has no pretrained backbone to "
                          "reuse; --backbone-out takes a train.transfer model")
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.backbone.state_dict(), out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.finish.reexport", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, help="model file to export again")
    p.add_argument("--out", type=Path, default=None, help="where to write (default: in place)")
    p.add_argument("--backbone-out", type=Path, default=None, metavar="FILE.pth",
                   help="write the backbone's weights here instead (for train.transfer "
                        "--weights)")
    p.add_argument("--project", type=int, default=None, metavar="K",
                   help="project the embedding to K dimensions, fitted on --photos")
    p.add_argument("--photos", type=Path, nargs="+", default=[], metavar="DIR",
                   help="folders of photos of the model's own landmarks (never photos of "
                        "places to be taught) to fit --project on")
    args = p.parse_args(argv)
    if args.project is not None and not args.photos:
        p.error("--project needs --photos")
    command = shlex.join(["python", "-m", "train.finish.reexport", *(argv or sys.argv[1:])])
    try:
        if args.backbone_out:
            out = save_backbone(args.model, args.backbone_out)
        else:
            projection = None if args.project is None else fit_projection(
                args.model, [f for d in args.photos for f in list_images(d)], args.project)
            out = reexport(args.model, args.out or args.model, command, projection)
    except (OSError, RuntimeError, KeyError) as e:
        print(f"error: {args.model}: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
