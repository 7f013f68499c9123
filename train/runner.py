"""What every training entry point shares: the CLI options and the run from data to export.

scan -> split -> decode cache -> Trainer.fit -> best weights -> flip TTA chosen on
validation -> test evaluation -> TorchScript export (self-verified) -> plots and report.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import ConcatDataset, Dataset

from landmark.cli import part
from landmark.metrics import per_class_rows
from train import checkpoint, plots
from train.assess import Settings, ThresholdRule, ValOutputs, assess
from train.data import DatasetError, TensorImageDataset, scan_split, split_unknown, stratified_split
from train.data.cache import DEFAULT_CACHE_DIR, CachedSplit, cached_split
from train.data.datasets import VAL_FRACTION
from train.data.layout import shown_places, unknown_split
from train.distill import Teacher
from train.engine import TrainConfig, Trainer
from train.export import export_model
from train.presets import Preset, eval_transform, train_transform

log = logging.getLogger("train")
VAL_OUTPUTS = "val_outputs.json"  # what train.crossval pools across folds
CHOICES = {"balance": ("none", "sampler", "loss"), "augment_on": ("auto", "loader", "device")}
HELP = {
    "outlier_weight": "outlier exposure: train on two thirds of the tuning half of the "
                      "unknown photos as 'none of these' (cross-entropy to uniform) with this "
                      "weight; 0 turns it off. The held-out half stays unseen",
    "backbone_lr_scale": "the backbone's LR as a share of the head's",
    "workers": "DataLoader workers; -1 picks for the machine",
    "augment_on": "where training photos are augmented: loader (DataLoader workers), device "
                  "(on the training device, batch by batch), auto (device on a GPU, whose "
                  "box's CPU cores cannot keep up, else loader)",
    "balance": "even out classes of unequal size: none; sampler (every class drawn equally "
               "often); loss (cross-entropy weighted by inverse class size)",
    "distill_weight": "with --teacher: the share of the loss that follows the teacher",
}


def add_common_args(p: argparse.ArgumentParser, defaults: TrainConfig, name: str) -> None:
    """Options shared by train.scratch and train.transfer."""
    d = p.add_argument_group("data")
    d.add_argument("--data", required=True, type=Path,
                   help="dataset root holding train/NN.Class/*.jpg (and test/ for figures)")
    d.add_argument("--val-fraction", type=float, default=VAL_FRACTION,
                   help="share of each training class held out for validation (default 0.1)")
    d.add_argument("--fold", type=fold_arg, default=None, metavar="I/K",
                   help="hold out part I of K of every class for validation instead of "
                        "--val-fraction (k-fold cross-validation, I from 0; "
                        "python -m train.crossval runs all K)")
    d.add_argument("--extra-train", type=Path, action="append", default=[], metavar="DIR",
                   help="more training photos in the same layout (DIR/train/NN.Class/*.jpg), "
                        "matched to the classes by folder name; training only, never "
                        "validation; repeatable. See --balance")
    d.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR,
                   help="where decoded, resized photos are cached (default %(default)s)")
    d.add_argument("--no-cache", action="store_true", help="decode photos without caching")
    d.add_argument("--unknown", type=Path, default=None,
                   help="photos of other places, for the 'no known landmark' threshold "
                        "(default DATA/unknown when present)")
    d.add_argument("--outlier-skip", type=Path, action="append", default=[], metavar="PLACES",
                   help="a new_places-style folder: the unknown photos its places.json lists "
                        "as showing its places (also_in_unknown) are never trained on as "
                        "outliers, so figures for those places taught stay honest; repeatable")
    t = p.add_argument_group("training")
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        t.add_argument(flag, type=type(f.default), default=getattr(defaults, f.name),
                       choices=CHOICES.get(f.name),
                       help=f"{HELP.get(f.name, '')} (default: {getattr(defaults, f.name)})"
                       .lstrip())
    t.add_argument("--degrade", type=float, default=0.0, metavar="P",
                   help="share of training views given one degradation phones send: blur, a "
                        "quarter turn or sensor noise (see python -m bench.robustness; "
                        "default %(default)s)")
    t.add_argument("--init", type=Path, default=None, metavar="MODEL.pt",
                   help="start from the weights of an exported model file of the same "
                        "architecture and classes (e.g. models/scratch.pt), to go on training "
                        "it on more data; pair with a lower --lr and fewer --epochs")
    t.add_argument("--teacher", type=Path, default=None, metavar="MODEL.pt",
                   help="distil an exported model file over the same classes (e.g. "
                        "models/transfer.pt) into this network: it scores every training "
                        "view and --distill-weight of the loss follows it")
    o = p.add_argument_group("output")
    o.add_argument("--output", type=Path, default=Path("runs") / name,
                   help="run folder: checkpoints, metrics.csv (default %(default)s)")
    o.add_argument("--export", type=Path, default=None,
                   help="TorchScript file to write (default OUTPUT/NAME.pt); report and plots "
                        "are written beside it")
    o.add_argument("--onnx", action=argparse.BooleanOptionalAction, default=True,
                   help="also write NAME.onnx beside the file, for ONNX Runtime (default on; "
                        "--no-onnx saves its export, about 5 s on a CPU, for a quick "
                        "experiment)")
    o.add_argument("--resume", action="store_true",
                   help="continue from OUTPUT/last.pt after an interruption")
    o.add_argument("--export-only", action="store_true",
                   help="skip training: calibrate, evaluate and export the weights in "
                        "OUTPUT/best.pt (a finished run, or a run folder copied from a GPU "
                        "box); OUTPUT/run.json, when present, supplies the training command and "
                        "the options it trained with (--init, --teacher, --balance, and "
                        "--extra-train and --outlier-skip unless given)")
    o.add_argument("--tta", choices=["auto", "on", "off"], default="auto",
                   help="flip test-time augmentation inside the export; auto: keep it only if "
                        "it helps on validation")
    o.add_argument("--push-to-hub", metavar="OWNER/NAME", default=None,
                   help="after export, push the model, its card and figures to this Hub repo "
                        "(token: HF_TOKEN or a saved login)")
    o.add_argument("--no-calibrate", action="store_true",
                   help="skip temperature scaling on the validation split")
    o.add_argument("--threshold-from", type=Path, default=None, metavar="CROSSVAL.json",
                   help="ship the reject threshold that python -m train.crossval chose on "
                        "out-of-fold photos instead of choosing one on validation")
    o.add_argument("--accept-known", type=float, default=0.95,
                   help="share of validation photos the reject threshold must keep at least; "
                        "with unknown photos, the threshold then maximises known accepted + "
                        "unknown rejected on the tuning photos (default %(default)s)")


def fold_arg(text: str) -> tuple[int, int]:
    """'I/K' -> (I, K): fold I (from 0) of K >= 2."""
    return part(text, least=2)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its CPU probing, per line


def load_splits(args: argparse.Namespace, preset: Preset) -> dict[str, CachedSplit]:
    """Scan the dataset, carve validation out of train, decode/cache train, val and test;
    raises DatasetError when the data cannot train a classifier."""
    full = scan_split(args.data, "train")
    if len(full.classes) < 2:
        raise DatasetError(f"{args.data / 'train'} holds one class folder ({full.classes[0]}); "
                           "a classifier needs at least two")
    train, val = stratified_split(full, args.val_fraction, args.seed, fold=args.fold)
    splits = {"train": train, "val": val}
    if (args.data / "test").is_dir():
        splits["test"] = scan_split(args.data, "test", classes=full.classes)
    unknown = args.unknown or args.data / "unknown"
    others = unknown_split(unknown, full.classes)
    if others:
        splits["unknown"] = others
    for i, extra in enumerate(args.extra_train):
        splits[f"extra{i}"] = scan_split(extra, "train", classes=full.classes)
    cache = None if args.no_cache else args.cache_dir
    out = {k: cached_split(s, preset.resize_size, preset.interpolation, cache, desc=k)
           for k, s in splits.items() if s.paths}
    for i in range(len(args.extra_train)):
        out["train"] = out["train"].joined(out.pop(f"extra{i}"))
    check_learnable(out, args, len(full.paths))
    if args.outlier_weight > 0:
        if "unknown" not in out:
            raise DatasetError(f"--outlier-weight needs photos of other places: no images in "
                               f"{unknown} (pass --unknown DIR)")
        out["outliers"] = outlier_photos(out["unknown"], args.outlier_skip)
    for k, s in out.items():
        log.info("%s: %d photos, %d classes%s", k, len(s.labels), len(s.classes),
                 f", {len(s.skipped)} unreadable skipped" if s.skipped else "")
    return out


def outlier_photos(unknown: CachedSplit, skip: list[Path]) -> CachedSplit:
    """The unknown photos outlier exposure trains on: the seeded exposure part, less those
    that `skip`'s places.json files say show a place (kept unseen, not moved elsewhere, so
    the tuning and held-out parts stay the same photos)."""
    shown = set().union(*(shown_places(root) for root in skip))
    exposed = split_unknown(len(unknown.paths), exposure=True)["train"]
    keep = [i for i in exposed if Path(unknown.paths[i]).name not in shown]
    if len(keep) < len(exposed):
        log.info("outliers: %d of %d photos left out as showing a place of %s",
                 len(exposed) - len(keep), len(exposed), ", ".join(map(str, skip)))
    return unknown.subset(keep)


def check_learnable(data: dict[str, CachedSplit], args: argparse.Namespace,
                    photos: int) -> None:
    """Raise DatasetError, saying what is wrong with the data, unless training has readable
    photos of at least two classes and validation has photos to choose the epoch on."""
    train = data["train"]
    if not len(train.labels):
        raise DatasetError(f"none of the {photos} photos in {args.data / 'train'} could be "
                           f"read (e.g. {(train.skipped or ['no files'])[0]})")
    seen = train.labels.unique().tolist()
    if len(seen) < 2:
        raise DatasetError(f"only {train.classes[seen[0]]} has readable training photos; a "
                           "classifier needs at least two classes")
    if "val" not in data or not len(data["val"].labels):
        held = (f"--fold {args.fold[0]}/{args.fold[1]}", "add photos") if args.fold else \
            (f"--val-fraction {args.val_fraction}", "raise it or add photos")
        raise DatasetError(f"{held[0]} leaves no readable validation photos ({photos} photos "
                           f"in {len(train.classes)} classes); {held[1]}")


@dataclass
class Trained:
    """A trained (or reloaded) network, its per-epoch history, what the trainer reports
    (best epoch, device, rank...) and what the run recorded (run.json: command, time)."""

    net: nn.Module
    history: list[dict]
    info: dict
    run: dict


def run(args: argparse.Namespace, model: nn.Module, name: str,
        fit: Callable[..., tuple[nn.Module, list[dict], dict]] | None = None) -> dict:
    """Train `model` as the CLI asked, export it, and write its report. Returns the report.

    Stages: data -> train (or load a finished run) -> calibrate and choose the threshold
    (`assess`) -> export and report. `fit(args, model, data, cfg) -> (net, history, info)`
    trains; the default trains the whole network on augmented photos. Only rank 0 returns
    a report under DDP.
    """
    setup_logging()
    cfg = config_from_args(args)
    command = "python -m " + " ".join(shlex.quote(a) for a in [f"train.{name}", *sys.argv[1:]])
    log.info("%s", command)
    given = given_threshold(args.threshold_from)  # a bad file fails now, not after training
    model.preset = replace(model.preset, degrade=args.degrade)
    if args.export_only:
        adopt_run_options(args)
    try:
        data = load_splits(args, model.preset)
    except DatasetError as e:
        sys.exit(f"error: {e}")
    if args.init and not args.export_only and not args.resume:
        init_from(model, args.init, data["train"].classes)
    trained = train_or_load(args, model, data, cfg, command, fit or fit_images)
    if trained.info.get("rank", 0) != 0:
        return {}
    trained.net = trained.net.cpu().eval()
    report, settings = assess(trained.net, model.preset, data, args.tta, not args.no_calibrate,
                              args.accept_known, exposure="outliers" in data, given=given)
    write_val_outputs(args.output / VAL_OUTPUTS, data, settings.val_outputs, args.fold)
    report.update(train_seconds=trained.run.get("train_seconds"), **trained.info)
    if "outliers" in data:
        report["outlier_exposure"] = {"weight": cfg.outlier_weight,
                                      "photos": len(data["outliers"].paths)}
    export = export_and_report(args, name, model, cfg, data, trained, report, settings, command)
    if args.push_to_hub:
        from landmark.hub import HubError, push
        try:
            report["hub_commit"] = push(export, args.push_to_hub)
        except HubError as e:
            log.error("%s (the model is saved at %s; push it later with "
                      "python -m landmark.hub push)", e, export)
    log.info("exported %s  (val top-1 %.4f%s)", export, report["val"]["top1"],
             f", test top-1 {report['test']['top1']:.4f} top-3 {report['test']['top3']:.4f}"
             if "test" in report else "")
    return report


def init_from(model: nn.Module, path: Path, classes: list[str]) -> None:
    """Load an exported model file's weights into `model`, refusing another architecture
    or class list by name (a shape error would say neither)."""
    from train.finish.reexport import rebuild_or_exit  # the one way back from a model file
    net, _, exp = rebuild_or_exit(path, "--init")
    arch = getattr(model, "arch", None)
    if exp.metadata.get("architecture") != arch or exp.classes != classes:
        sys.exit(f"error: --init {path}: a {exp.metadata.get('architecture')} over "
                 f"{len(exp.classes)} classes; this run trains a {arch} over the "
                 f"{len(classes)} classes of --data")
    model.load_state_dict(net.state_dict())
    log.info("initialised from %s", path)


def train_or_load(args: argparse.Namespace, model: nn.Module, data: dict[str, CachedSplit],
                  cfg: TrainConfig, command: str,
                  fit: Callable[..., tuple[nn.Module, list[dict], dict]]) -> Trained:
    """Train with `fit`, recording run.json; with --export-only, reload OUTPUT's run."""
    if args.export_only:
        return load_trained(args.output, model, cfg)
    start = time.time()
    net, history, info = fit(args, model, data, cfg)
    ran = {"command": command, "train_seconds": round(time.time() - start),
           "device": info.get("device"), **run_options(args)}
    if info.get("rank", 0) == 0:
        (args.output / "run.json").write_text(json.dumps(ran, indent=2))
    return Trained(net, history, info, ran)


def export_and_report(args: argparse.Namespace, name: str, model: nn.Module, cfg: TrainConfig,
                      data: dict[str, CachedSplit], trained: Trained, report: dict,
                      settings: Settings, command: str) -> Path:
    """Write the model file (the contract, self-checked), its report and plots."""
    export = args.export or args.output / f"{name}.pt"
    metadata = {"name": name, "architecture": getattr(model, "arch", name),
                "dataset": str(args.data),
                "command": trained.run.get("command", command),
                **({"export_command": command, "training": trained.run} if args.export_only
                   else {}),
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "metrics": headline_metrics(report),
                "reject_threshold": settings.reject_threshold,
                "training_data": training_data(args, data),
                "open_set": report.get("open_set", {}).get("shipped"),
                "train_config": vars(cfg)}
    samples = [img.float() / 255.0 for img in data["val"].images[:4]]
    samples.append(torch.rand(3, 300, 200))
    export_model(trained.net, model.preset, data["train"].classes, metadata, export, samples,
                 temperature=settings.temperature, flip=settings.flip,
                 background=settings.background, onnx=args.onnx)
    write_report(report, trained.history, data["train"].classes, export)
    return export


def headline_metrics(report: dict) -> dict:
    """The figures a model file's metadata keeps from its report, per split."""
    return {s: {k: report[s][k] for k in ("n", "top1", "top3", "ece_after")}
            for s in ("val", "test") if s in report}


def run_options(args: argparse.Namespace) -> dict:
    """What run.json keeps of how a run trained, beyond its command: the model files it
    started from (--init) and learnt from (--teacher), and the data options that changed
    which photos it saw. --export-only reads them back (`adopt_run_options`)."""
    return {"initialised_from": str(args.init) if args.init else None,
            "teacher": str(args.teacher) if args.teacher else None,
            "extra_train": [str(p) for p in args.extra_train], "balance": args.balance,
            "outlier_skip": [str(p) for p in args.outlier_skip]}


def adopt_run_options(args: argparse.Namespace) -> None:
    """With --export-only, take what OUTPUT/run.json recorded, so the export says what
    trained the model without the training command given again: --init, --teacher and
    --balance always; --extra-train and --outlier-skip unless given (their paths may differ
    on this machine). A recorded folder that is not here is one clear error."""
    path = args.output / "run.json"
    ran = json.loads(path.read_text()) if path.is_file() else {}
    args.init = Path(ran["initialised_from"]) if ran.get("initialised_from") else args.init
    args.teacher = Path(ran["teacher"]) if ran.get("teacher") else args.teacher
    args.balance = ran.get("balance", args.balance)
    for name in ("extra_train", "outlier_skip"):
        if getattr(args, name) or not ran.get(name):
            continue
        flag = "--" + name.replace("_", "-")
        missing = [p for p in ran[name] if not Path(p).is_dir()]
        if missing:
            sys.exit(f"error: {path} says the run trained with {flag} {missing[0]}, which is "
                     f"not here; pass {flag} with that folder's path on this machine")
        setattr(args, name, [Path(p) for p in ran[name]])


def training_data(args: argparse.Namespace, data: dict[str, CachedSplit]) -> dict:
    """Which photos the model saw: the dataset, the photos per class that trained it, the
    unknown photos trained on as outliers, and the run's options (`run_options`: extra
    folders, balance, the places left out of the outliers, --init and --teacher)."""
    counts = torch.bincount(data["train"].labels[data["train"].labels >= 0],
                            minlength=len(data["train"].classes)).tolist()
    return {"dataset": str(args.data), "train_photos": len(data["train"].labels),
            "val_photos": len(data["val"].labels),
            "train_per_class": dict(zip(data["train"].classes, counts, strict=True)),
            "outlier_photos": len(data["outliers"].labels) if "outliers" in data else 0,
            **run_options(args)}


def given_threshold(path: Path | None) -> ThresholdRule | None:
    """The reject threshold of a train.crossval summary, with its origin, or None."""
    if path is None:
        return None
    try:
        cv = json.loads(path.read_text())
        pooled = float(cv["reject_threshold"]), f"{cv['folds']}-fold cross-validation ({path})"
    except (OSError, ValueError, KeyError) as e:
        sys.exit(f"error: --threshold-from {path}: not a train.crossval summary ({e})")
    return lambda _temperature, _background: pooled


def write_val_outputs(path: Path, data: dict[str, CachedSplit], outputs: ValOutputs,
                      fold: tuple[int, int] | None) -> None:
    """The validation photos' shipped probabilities and the tuning unknown photos' top
    probabilities: what train.crossval pools across folds."""
    unknown = outputs.unknown_tune
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "fold": list(fold) if fold else None, "classes": data["val"].classes,
        "paths": [str(p) for p in data["val"].paths], "labels": data["val"].labels.tolist(),
        "probs": outputs.val.round(decimals=6).tolist(),
        "unknown_tune": None if unknown is None else unknown.round(decimals=6).tolist()}))


def fit_images(args: argparse.Namespace, model: nn.Module, data: dict[str, CachedSplit],
               cfg: TrainConfig) -> tuple[nn.Module, list[dict], dict]:
    """Train every trainable weight on augmented photos; keep the best validation epoch."""
    preset = model.preset
    teacher = Teacher(args.teacher, preset, data["train"].classes) if args.teacher else None
    trainer = Trainer(model, len(data["train"].classes), cfg, args.output, teacher)
    augment = train_transform(preset)
    on_device = trainer.augments_on_device()
    train = with_outliers(data, lambda d: TensorImageDataset(
        d.images, d.labels, nn.Identity() if on_device else augment))
    trainer.fit(train, TensorImageDataset(data["val"].images, data["val"].labels,
                                          eval_transform(preset)), resume=args.resume,
                augment=augment if on_device else None)
    return trainer.load_best(), trainer.history, run_info(trainer)


def with_outliers(data: dict, dataset: Callable[..., Dataset]) -> Dataset:
    """`dataset(data["train"])`, joined by `dataset(data["outliers"])` (photos labelled -1)
    when the run uses outlier exposure. Works on cached photos and cached features alike."""
    train = dataset(data["train"])
    return ConcatDataset([train, dataset(data["outliers"])]) if "outliers" in data else train


def load_trained(out: Path, model: nn.Module, cfg: TrainConfig) -> Trained:
    """`model` with a run folder's best weights, its history, and what the run recorded."""
    best, metrics = out / "best.pt", out / "metrics.csv"
    if not best.is_file() or not metrics.is_file():
        sys.exit(f"error: --export-only needs {best} and {metrics} from a training run")
    state = checkpoint.load(best)
    trained_with = state.get("config", {}).get("outlier_weight", cfg.outlier_weight)
    if trained_with != cfg.outlier_weight:
        sys.exit(f"error: {best} was trained with --outlier-weight {trained_with}; pass the "
                 "same value, so the unknown photos it trained on stay out of the tuning")
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        sys.exit(f"error: {best} does not hold this model's weights ({str(e)[:200]})")
    with open(metrics, newline="") as f:
        history = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    run_file = out / "run.json"
    ran = json.loads(run_file.read_text()) if run_file.is_file() else {}
    return Trained(model, history, {"best_epoch": state["epoch"], "epochs_run": len(history),
                                    "device": ran.get("device"), "export_only": True}, ran)


def run_info(trainer: Trainer, **extra: object) -> dict:
    """What the report records about a finished Trainer."""
    return {"rank": trainer.rank, "world_size": trainer.world,
            "best_epoch": trainer.best["epoch"], "epochs_run": len(trainer.history),
            "device": str(trainer.device), **extra}


def write_report(report: dict, history: list[dict], classes: list[str], export: Path) -> None:
    """STEM.report.json, STEM.confusion.png, STEM.reliability.png and, when it trained,
    STEM.curves.png beside the model file."""
    stem = export.with_suffix("")
    Path(f"{stem}.report.json").write_text(json.dumps(report, indent=2))
    if history:
        plots.training_curves(history, f"{stem}.curves.png", title=export.name)
    split = "test" if "test" in report else "val"
    plots.confusion_png(report[split]["confusion"], classes, f"{stem}.confusion.png",
                        title=f"{export.name}: {split} top-1 {report[split]['top1']:.3f}")
    plots.reliability_png(report[split]["reliability_before"],
                          report[split]["reliability_after"], f"{stem}.reliability.png",
                          title=f"{export.name}: {split}, ECE {report[split]['ece_before']:.3f}"
                                f" -> {report[split]['ece_after']:.3f}")
    log.info("per-class %s accuracy:", split)
    for name, acc, n in per_class_rows(report[split]["per_class"]):
        log.info("  %-40s %s  (%d photos)", name, acc, n)
