"""The one training loop: AdamW, warmup + cosine, label smoothing, mixup/cutmix, outlier
exposure, distillation from a teacher, AMP, early stopping, atomic per-epoch checkpoints
with resume, optional DDP. Used by every training entry point (train.scratch,
train.transfer)."""

from __future__ import annotations

import csv
import logging
import math
import os
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, WeightedRandomSampler
from torchvision.transforms import v2
from tqdm import tqdm

from landmark.imageio import resolve_workers
from train import checkpoint
from train.data.datasets import class_weights, dataset_labels, per_photo_weights

log = logging.getLogger(__name__)
KD_TAU = 2.0  # distillation temperature: both distributions softened by it (Hinton et al.)


@dataclass
class TrainConfig:
    """Hyper-parameters of one run; saved in every checkpoint."""

    epochs: int = 100
    batch_size: int = 64
    lr: float = 3e-3
    backbone_lr_scale: float = 1.0
    weight_decay: float = 0.05
    warmup_epochs: int = 3
    label_smoothing: float = 0.1
    mixup: float = 0.0
    cutmix: float = 0.0
    outlier_weight: float = 0.0
    balance: str = "none"  # none | sampler | loss: even out classes of unequal size
    patience: int = 30
    precision: str = "auto"
    device: str = "auto"
    workers: int = -1  # -1: auto (see resolve_workers)
    augment_on: str = "auto"  # auto | loader | device: where photos are augmented
    distill_weight: float = 0.5  # with a teacher: its soft targets' share of the loss
    seed: int = 0


def resolve_device(name: str) -> torch.device:
    """'auto' -> this rank's CUDA device when present, else CPU."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: bf16 where the hardware runs it fast, fp16 on older GPUs, else None."""
    if precision == "fp32":
        return None
    if precision in ("bf16", "fp16"):
        return torch.bfloat16 if precision == "bf16" else torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Join the process group torchrun describes (nccl on GPU, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            torch.cuda.set_device(device)
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """LR multiplier: linear warmup to 1, then cosine decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """No weight decay on norms/biases; the backbone (all but `model.head`) at a scaled LR."""
    head_ids = {id(p) for p in getattr(model, "head", nn.Identity()).parameters()}
    groups: dict[tuple[bool, bool], list[Tensor]] = {}
    for p in model.parameters():
        if p.requires_grad:
            groups.setdefault((id(p) in head_ids, p.ndim <= 1), []).append(p)
    return [{"params": ps, "lr": cfg.lr * (1.0 if head else cfg.backbone_lr_scale),
             "weight_decay": 0.0 if no_wd else cfg.weight_decay}
            for (head, no_wd), ps in groups.items()]


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, device: torch.device,
            dtype: torch.dtype | None = None, desc: str = "eval") -> tuple[Tensor, Tensor]:
    """Run `model` over `loader`: (probabilities (N, C) float32, labels (N,))."""
    model.eval()
    probs, labels = [], []
    for x, y in tqdm(loader, desc=desc, leave=False, disable=_quiet()):
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = model(x.to(device, non_blocking=True))
        probs.append(out.float().softmax(1).cpu())
        labels.append(y)
    return torch.cat(probs), torch.cat(labels)


def _quiet() -> bool:
    return dist.is_initialized() and dist.get_rank() != 0


class Trainer:
    """Fits a classifier on (image, label) datasets and keeps the best weights on disk.

    out_dir/last.pt is rewritten atomically after every epoch (model, optimiser, schedule,
    history, RNG), so `fit(resume=True)` after a kill loses at most the running epoch;
    out_dir/best.pt holds the weights with the best validation top-1.
    """

    def __init__(self, model: nn.Module, num_classes: int, cfg: TrainConfig,
                 out_dir: str | Path, teacher: nn.Module | None = None) -> None:
        self.cfg, self.num_classes, self.out = cfg, num_classes, Path(out_dir)
        self.class_weights: Tensor | None = None  # balance "loss" sets them in fit
        self.device = resolve_device(cfg.device)
        self.rank, self.world = init_distributed(self.device)
        self.dtype = resolve_precision(cfg.precision, self.device)
        self.model = model.to(self.device, memory_format=torch.channels_last)
        self.net: nn.Module = self.model
        self.teacher = teacher.to(self.device) if teacher is not None else None
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.opt = torch.optim.AdamW(param_groups(self.model, cfg))
        self.scaler = torch.amp.GradScaler(self.device.type,
                                           enabled=self.dtype == torch.float16)
        mix = [t(num_classes=num_classes, alpha=a) for t, a in
               ((v2.MixUp, cfg.mixup), (v2.CutMix, cfg.cutmix)) if a > 0]
        self.mix = v2.RandomChoice(mix) if mix else None
        self.history: list[dict] = []
        self.best = {"val_top1": -1.0, "val_loss": float("inf"), "epoch": 0}

    # -- data -------------------------------------------------------------------------
    def loader(self, ds: Dataset, train: bool) -> DataLoader:
        """The DataLoader this trainer uses for `ds` (sharded under DDP when training;
        with balance "sampler", every class drawn equally often, with replacement)."""
        sampler = DistributedSampler(ds, seed=self.cfg.seed) if train and self.world > 1 else None
        if train and self.cfg.balance == "sampler" and sampler is None:
            sampler = WeightedRandomSampler(
                per_photo_weights(dataset_labels(ds)), len(ds),
                generator=torch.Generator().manual_seed(self.cfg.seed))
        workers = resolve_workers(self.cfg.workers, self.device)
        return DataLoader(ds, self.cfg.batch_size, shuffle=train and sampler is None,
                          sampler=sampler, num_workers=workers, drop_last=train and len(ds) >
                          self.cfg.batch_size, persistent_workers=workers > 0,
                          pin_memory=self.device.type == "cuda",
                          worker_init_fn=_worker_init if workers else None)

    # -- loop ---------------------------------------------------------------------------
    def augments_on_device(self) -> bool:
        """Whether photos should be augmented on the training device, batch by batch, rather
        than in the DataLoader: on a GPU by default, whose box's CPU cores cannot keep up
        (bench/results/gpu_session.md, third session)."""
        if self.cfg.augment_on not in ("auto", "loader", "device"):
            raise ValueError(f"augment_on {self.cfg.augment_on!r}: choose auto, loader or device")
        return self.cfg.augment_on == "device" or (self.cfg.augment_on == "auto"
                                                   and self.device.type == "cuda")

    def fit(self, train_ds: Dataset, val_ds: Dataset, resume: bool = False,
            augment: Callable[[Tensor], Tensor] | None = None) -> list[dict]:
        """Train up to cfg.epochs, stopping early after cfg.patience epochs without gain.
        `augment`, when given, turns each training photo into its view on the device."""
        seed_everything(self.cfg.seed + self.rank)
        if self.cfg.balance not in ("none", "sampler", "loss"):
            raise ValueError(f"balance {self.cfg.balance!r}: choose none, sampler or loss")
        self.class_weights = class_weights(dataset_labels(train_ds), self.num_classes) \
            if self.cfg.balance == "loss" else None
        train_dl, val_dl = self.loader(train_ds, True), self.loader(val_ds, False)
        self.schedule(self.cfg.warmup_epochs * len(train_dl), self.cfg.epochs * len(train_dl))
        start = self._resume() + 1 if resume else 1
        for epoch in range(start, self.cfg.epochs + 1):
            if epoch - self.best["epoch"] > self.cfg.patience:
                log.info("early stop: no val gain for %d epochs", self.cfg.patience)
                break
            if isinstance(train_dl.sampler, DistributedSampler):
                train_dl.sampler.set_epoch(epoch)
            train_loss, train_acc = self.train_epoch(train_dl, epoch, augment)
            probs, labels = predict(self.net, val_dl, self.device, self.dtype)
            row = {"epoch": epoch, "lr": self.opt.param_groups[0]["lr"],
                   "train_loss": train_loss, "train_top1": train_acc,
                   "val_loss": F.cross_entropy(probs.clamp_min(1e-12).log(), labels).item(),
                   "val_top1": (probs.argmax(1) == labels).float().mean().item()}
            self._end_epoch(row)
        return self.history

    def schedule(self, warmup_steps: int, total_steps: int) -> None:
        """Linear warmup then cosine decay of the learning rate, stepped every batch."""
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: warmup_cosine(s, warmup_steps, total_steps))

    def train_epoch(self, loader: DataLoader, epoch: int,
                    augment: Callable[[Tensor], Tensor] | None = None) -> tuple[float, float]:
        """One pass over `loader`: (mean loss, top-1) on the known photos; `augment`, when
        given, makes each photo's view on the device."""
        self.net.train()
        loss_sum, correct, seen = 0.0, 0, 0
        bar = tqdm(loader, desc=f"epoch {epoch}/{self.cfg.epochs}", leave=False,
                   disable=_quiet(), unit="batch")
        for x, y in bar:
            x = x.to(self.device, non_blocking=True)
            if augment is not None:
                x = torch.stack([augment(img) for img in x])
            if x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            y = y.to(self.device, non_blocking=True)
            x, target, n_known = self._known_first(x, y)
            with torch.autocast(self.device.type, dtype=self.dtype or torch.float32,
                                enabled=self.dtype is not None):
                out = self.net(x).float()
                soft = self.teacher(x) if self.teacher is not None else None
            loss = self._loss(out, target, n_known, soft)
            self.opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
            self.sched.step()
            loss_sum += loss.item() * n_known
            correct += (out[:n_known].argmax(1) == y[y >= 0]).sum().item()
            seen += n_known
            bar.set_postfix(loss=f"{loss_sum / max(1, seen):.3f}",
                            acc=f"{correct / max(1, seen):.3f}")
        return loss_sum / max(1, seen), correct / max(1, seen)

    def _known_first(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, int]:
        """(batch with labelled photos first, their (mixed) targets, how many there are).
        Rows labelled -1 are outliers: photos of no class, kept after the labelled ones."""
        known = y >= 0
        n_known = int(known.sum())
        if n_known < len(y):
            x = torch.cat([x[known], x[~known]])
        target = y[known]
        if self.mix is not None and n_known:
            mixed, target = self.mix(x[:n_known], target)
            x = torch.cat([mixed, x[n_known:]])
        return x, target, n_known

    def _loss(self, out: Tensor, target: Tensor, n_known: int,
              teacher: Tensor | None = None) -> Tensor:
        """Cross-entropy on labelled rows; on outlier rows, cfg.outlier_weight x the
        cross-entropy to the uniform distribution (outlier exposure, Hendrycks et al.
        2019): the network learns to spread its belief on places it does not know. With
        the teacher's logits for the batch, cfg.distill_weight of the loss is the KL
        divergence to its distribution on every row, both softened by KD_TAU."""
        loss = out.new_zeros(())
        if n_known:
            weight = None if self.class_weights is None else self.class_weights.to(out.device)
            loss = F.cross_entropy(out[:n_known], target, weight=weight,
                                   label_smoothing=self.cfg.label_smoothing)
        if n_known < len(out):
            loss = loss - self.cfg.outlier_weight * out[n_known:].log_softmax(1).mean()
        if teacher is not None:
            kd = F.kl_div((out / KD_TAU).log_softmax(1), (teacher / KD_TAU).log_softmax(1),
                          reduction="batchmean", log_target=True) * KD_TAU ** 2
            w = self.cfg.distill_weight
            loss = (1 - w) * loss + w * kd
        return loss

    def _end_epoch(self, row: dict) -> None:
        self.history.append(row)
        better = (row["val_top1"], -row["val_loss"]) > (self.best["val_top1"],
                                                         -self.best["val_loss"])
        if better:
            self.best = {k: row[k] for k in ("val_top1", "val_loss", "epoch")}
        if self.rank != 0:
            return
        if better:
            checkpoint.save_atomic({"model": self.model.state_dict(), **self.best,
                                    "config": asdict(self.cfg)}, self.out / "best.pt")
        checkpoint.save_atomic(self._state(row["epoch"]), self.out / "last.pt")
        self._write_metrics()
        log.info("epoch %d  train loss %.3f top1 %.3f | val loss %.3f top1 %.3f%s",
                 row["epoch"], row["train_loss"], row["train_top1"], row["val_loss"],
                 row["val_top1"], "  * best" if better else "")

    # -- state --------------------------------------------------------------------------
    def _state(self, epoch: int) -> dict:
        return {"epoch": epoch, "model": self.model.state_dict(), "opt": self.opt.state_dict(),
                "sched": self.sched.state_dict(), "scaler": self.scaler.state_dict(),
                "history": self.history, "best": self.best, "config": asdict(self.cfg),
                "rng": {"torch": torch.get_rng_state(), "python": random.getstate()}}

    def _resume(self) -> int:
        path = self.out / "last.pt"
        if not path.exists():
            log.info("no checkpoint at %s: starting fresh", path)
            return 0
        state = checkpoint.load(path)
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
        self.scaler.load_state_dict(state["scaler"])
        self.history, self.best = state["history"], state["best"]
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        log.info("resumed from %s after epoch %d", path, state["epoch"])
        return state["epoch"]

    def _write_metrics(self) -> None:
        with open(self.out / "metrics.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(self.history[0]))
            writer.writeheader()
            writer.writerows(self.history)

    def load_best(self) -> nn.Module:
        """Put the best validation weights back into the model and return it."""
        path = self.out / "best.pt"
        if path.exists():
            self.model.load_state_dict(checkpoint.load(path)["model"])
        return self.model


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)
