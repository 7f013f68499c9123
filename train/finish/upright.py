"""Teach a model file to turn photos upright: phone photos whose EXIF orientation was lost.

    python -m train.finish.upright models/transfer.pt \\
        --photos ../shared/data/landmark_images/train ../shared/data/landmark_extra/train

A photo lying on its side is named right less often and accepted less often than the same
photo upright (BENCHMARKS.md, "Robustness"). An upright head fixes that before the
classifier sees it: a linear classifier on the file's own features (the layout: the
final map's four quadrants) tells which of the four quarter turns a photo shows. It
learns from the given photos, each seen in all four turns, so it needs no labels. The
exported file then undoes every turn the head is sure of, and only those photos go
through the network again.

How sure is chosen on out-of-fold predictions (--folds, split by photo): the lowest
threshold (at least 0.5) at which at most --max-false-turns of the upright photos would
be turned. The photos are assumed upright as stored (EXIF orientation honoured); pass
photos the model is meant for, and never test photos. The file is written again with
the head (train.finish.reexport keeps it); its probabilities on photos the head leaves alone do
not change.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from landmark.imageio import ImageError, list_images, load_image, to_tensor
from landmark.metrics import share_text
from landmark.predict import decode_side
from train.export import ExportError, Upright, wrap
from train.finish.reexport import rebuild, reexport

MIN_PHOTOS = 20
FLOOR = 0.5  # a turn must be likelier than the other three together


@dataclass
class Choice:
    """The chosen threshold and what it did to the out-of-fold photos."""

    threshold: float
    photos: int
    upright_turned: float  # share of upright photos turned (wrongly)
    turned_righted: float  # share of turned photos set upright
    turned_wrongly: float  # share of turned photos turned the wrong way


@torch.no_grad()
def turned_layouts(model: Path, photos: list[Path]) -> Tensor:
    """(N, 4, L): the network's layout features of every readable photo in each quarter
    turn (k turns counter-clockwise), decoded as the app decodes them. The network is
    rebuilt from the file, so files exported before the layout existed work too."""
    net, preset, _ = rebuild(model)
    eager = wrap(net, preset)
    load = partial(load_image, max_side=decode_side(preset.resize_size))
    out = []
    for path in tqdm(photos, desc="layouts", unit="photo"):
        try:
            x = eager.pre(to_tensor(load(path))[None].float() / 255.0)
        except ImageError:
            continue
        out.append(eager.features(torch.cat([torch.rot90(x, k, (-2, -1))
                                             for k in range(4)]))[2])
    return torch.stack(out) if out else torch.empty(0, 4, 0)


def fit_head(x: Tensor, y: Tensor, l2: float) -> tuple[Tensor, Tensor]:
    """Multinomial logistic regression on standardised features, folded back into one
    (4, L) weight and (4,) bias on the raw features."""
    mean, std = x.mean(0), x.std(0) + 1e-6
    z = (x - mean) / std
    w = torch.zeros(4, x.shape[1], requires_grad=True)
    b = torch.zeros(4, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=300, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z @ w.T + b, y) + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    weight = (w / std).detach()
    return weight, (b - weight @ mean).detach()


def flat(layouts: Tensor) -> tuple[Tensor, Tensor]:
    """(N, 4, L) -> (4N, L) rows and their quarter turns."""
    n = layouts.shape[0]
    return layouts.reshape(n * 4, -1), torch.arange(4).repeat(n)


def out_of_fold(layouts: Tensor, folds: int, l2: float, seed: int = 0) -> Tensor:
    """(N, 4, 4): each photo's turn probabilities in each turn, from a head fitted on the
    other folds' photos."""
    order = torch.randperm(len(layouts), generator=torch.Generator().manual_seed(seed))
    probs = torch.empty(len(layouts), 4, 4)
    for part in order.chunk(folds):
        rest = torch.ones(len(layouts), dtype=torch.bool)
        rest[part] = False
        weight, bias = fit_head(*flat(layouts[rest]), l2)
        probs[part] = (layouts[part] @ weight.T + bias).softmax(-1)
    return probs


def choose(probs: Tensor, max_false_turns: float) -> Choice:
    """The lowest threshold (at least FLOOR) turning at most `max_false_turns` of the
    upright photos, and its out-of-fold effect."""
    conf, turn = probs.max(-1)  # (N, 4): for each photo in each true turn
    wrong_upright = conf[:, 0][turn[:, 0] != 0].sort(descending=True).values
    allowed = int(max_false_turns * len(probs))
    threshold = FLOOR
    if len(wrong_upright) > allowed:
        threshold = max(FLOOR, float(torch.nextafter(wrong_upright[allowed], torch.tensor(2.0))))
    acted = (turn != 0) & (conf >= threshold)
    truth = torch.arange(4).expand_as(turn)
    return Choice(threshold, len(probs), acted[:, 0].float().mean().item(),
                  (acted & (turn == truth))[:, 1:].float().mean().item(),
                  (acted & (turn != truth))[:, 1:].float().mean().item())


def describe(c: Choice) -> str:
    """One line: the threshold and its out-of-fold shares with 95% Wilson intervals."""
    return (f"threshold {c.threshold:.3f}, out of fold on {c.photos} photos: upright photos "
            f"turned {share_text(c.upright_turned, c.photos)}; photos on their side or "
            f"upside down set upright {share_text(c.turned_righted, 3 * c.photos)}, turned "
            f"the wrong way {share_text(c.turned_wrongly, 3 * c.photos)}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.finish.upright", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, help="model file to give an upright head")
    p.add_argument("--photos", type=Path, nargs="+", required=True, metavar="DIR",
                   help="folders of upright photos (searched recursively; never test photos)")
    p.add_argument("--out", type=Path, default=None, help="where to write (default: in place)")
    p.add_argument("--max-false-turns", type=float, default=0.02, metavar="SHARE",
                   help="most upright photos the head may turn, out of fold (default 0.02)")
    p.add_argument("--folds", type=int, default=5, help="folds to choose the threshold on")
    p.add_argument("--l2", type=float, default=0.1, help="weight decay of the head")
    args = p.parse_args(argv)
    if not 0 <= args.max_false_turns < 1 or args.folds < 2:
        p.error("--max-false-turns must be in [0, 1) and --folds at least 2")
    for folder in args.photos:
        if not folder.is_dir():
            p.error(f"--photos {folder}: no such folder")
    command = shlex.join(["python", "-m", "train.finish.upright", *(argv or sys.argv[1:])])
    photos = [f for d in args.photos for f in list_images(d)]
    try:
        layouts = turned_layouts(args.model, photos)
        if len(layouts) < max(MIN_PHOTOS, args.folds):
            raise ExportError(f"{len(layouts)} readable photos in {len(photos)} files: the "
                              f"upright head needs at least {max(MIN_PHOTOS, args.folds)}")
        choice = choose(out_of_fold(layouts, args.folds, args.l2), args.max_false_turns)
        weight, bias = fit_head(*flat(layouts), args.l2)
        out = reexport(args.model, args.out or args.model, command,
                       upright=Upright(weight, bias, choice.threshold),
                       notes={"upright": {**asdict(choice), "command": command,
                                          "photos_from": [str(d) for d in args.photos]}})
    except (OSError, RuntimeError, KeyError) as e:
        print(f"error: {args.model}: {e}", file=sys.stderr)
        return 1
    print(describe(choice))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
