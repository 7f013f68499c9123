"""After training: flip TTA and temperature chosen on validation, the reject threshold on
validation + half of the unknown photos, and the full report on test + the other half."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from landmark.metrics import classification_report
from train.calibration import (
    auroc,
    expected_calibration_error,
    fit_temperature,
    open_set_report,
    reject_threshold,
    reliability_bins,
    tta_probs,
)
from train.data import split_unknown
from train.data.cache import CachedSplit
from train.presets import EvalPreprocess, Preset

log = logging.getLogger("train")
# (temperature, background logit) -> (reject threshold, where it came from): a threshold
# chosen outside validation, which may need the calibrated network (train.finish.fast --match)
ThresholdRule = Callable[[float, float | None], tuple[float, str]]


@dataclass
class Outputs:
    """The network's outputs on every split, as the assessment uses them."""

    views: dict[str, list[Tensor]]  # logits of the eval crop (and of its mirror image)
    probs: dict[str, Tensor]  # shipped probabilities: temperature and background logit
    feats: dict[str, Tensor]  # penultimate features of the eval crop
    temperature: float


@torch.no_grad()
def logit_views(net: nn.Module, preset: Preset, data: CachedSplit, flip: bool = True,
                batch: int = 128) -> tuple[list[Tensor], Tensor]:
    """([logits of the eval crop(, of its mirror image)], penultimate features of the eval
    crop: the input of the network's last Linear layer) for every cached photo."""
    net.eval()
    pre = EvalPreprocess(preset)
    views: list[list[Tensor]] = [[], []] if flip else [[]]
    feats: list[Tensor] = []
    last = [m for m in net.modules() if isinstance(m, nn.Linear)][-1:]
    hooks = [m.register_forward_hook(lambda _m, inp, _out: feats.append(inp[0].float()))
             for m in last]
    for i in range(0, len(data.paths), batch):
        x = pre(data.images[i:i + batch].float() / 255.0)
        for v, out in enumerate(views):
            out.append(net(x.flip(-1) if v else x).float())
    for h in hooks:
        h.remove()
    feats = feats[::len(views)]  # the eval crop's, not the mirror's
    return ([torch.cat(v) if v else torch.empty(0) for v in views],
            torch.cat(feats) if feats else torch.empty(0))


def feature_scores(train: Tensor, labels: Tensor, feats: Tensor) -> dict[str, Tensor]:
    """Feature-space familiarity: cosine to the nearest class prototype (mean training
    feature) and to the nearest training photo."""
    train, feats = F.normalize(train, dim=1), F.normalize(feats, dim=1)
    protos = F.normalize(torch.stack([train[labels == c].mean(0)
                                      for c in labels.unique()]), dim=1)
    return {"prototype_cosine": (feats @ protos.T).max(1).values,
            "nearest_photo_cosine": (feats @ train.T).max(1).values}


def choose_background(known: list[Tensor], unknown: list[Tensor], temperature: float,
                      labels: Tensor, min_gain: float = 0.002,
                      max_ece_increase: float = 0.02) -> float | None:
    """The background logit b maximising known-vs-unknown AUROC of the top probability
    (validation photos vs the tuning half of unknown/) among those that keep validation
    ECE within `max_ece_increase` of plain softmax, so confidences still mean what they
    say; None (plain softmax) unless some b beats it by `min_gain`."""
    def score(b: float | None) -> float:
        return auroc(tta_probs(known, temperature, b).max(1).values,
                     tta_probs(unknown, temperature, b).max(1).values)

    def ece(b: float | None) -> float:
        return expected_calibration_error(tta_probs(known, temperature, b), labels)

    energy = torch.logsumexp(torch.cat([*known, *unknown]) / temperature, 1)
    limit = ece(None) + max_ece_increase
    grid = [b for b in torch.quantile(energy, torch.linspace(0.0, 1.0, 41)).tolist()
            if ece(b) <= limit]
    if not grid:
        return None
    best = max(grid, key=score)
    base, folded = score(None), score(best)
    log.info("open-set AUROC on tuning photos: max-probability %.4f, with background logit "
             "%.2f %.4f", base, best, folded)
    return round(best, 4) if folded > base + min_gain else None


@dataclass
class ValOutputs:
    """The shipped probabilities of the validation photos and the top probabilities of
    the tuning unknown photos: what train.crossval pools across folds."""

    val: Tensor
    unknown_tune: Tensor | None


@dataclass
class Settings:
    """What the export embeds, chosen without the test split."""

    flip: bool
    temperature: float
    reject_threshold: float
    background: float | None
    val_outputs: ValOutputs


def assess(net: nn.Module, preset: Preset, data: dict[str, CachedSplit], tta: str,
           calibrate: bool, accept_known: float, exposure: bool = False,
           given: ThresholdRule | None = None) -> tuple[dict, Settings]:
    """Choose flip, temperature and threshold without the test split; report every split.
    With outlier `exposure`, the unknown photos the network trained on are left out.
    A `given` rule, called once temperature and background logit are chosen, replaces the
    threshold chosen on validation. Returns (report, the export's settings)."""
    # training photos are only needed for the feature-space open-set scores
    out = {k: logit_views(net, preset, d, flip=tta != "off" and k != "train")
           for k, d in data.items()
           if k in ("val", "test", "unknown") or (k == "train" and "unknown" in data)}
    views = {k: v for k, (v, _) in out.items() if k != "train"}
    feats = {k: f for k, (_, f) in out.items()}
    val_labels = data["val"].labels
    flip = tta == "on"
    if tta == "auto":
        accs = [(tta_probs(views["val"][:n], 1.0).argmax(1) == val_labels).float().mean()
                for n in (1, 2)]
        flip = bool(accs[1] > accs[0])
        log.info("validation top-1 without/with flip TTA: %.4f / %.4f -> flip %s",
                 accs[0], accs[1], "on" if flip else "off")
    used = {k: v[:1 + flip] for k, v in views.items()}
    temperature = fit_temperature(used["val"], val_labels) if calibrate else 1.0
    background = None
    parts = split_unknown(len(data["unknown"].paths), exposure) if "unknown" in data else None
    if parts:
        background = choose_background(used["val"], [v[parts["tune"]] for v in
                                                     used["unknown"]], temperature, val_labels)
    probs = {k: tta_probs(v, temperature, background) for k, v in used.items()}
    raw = {k: tta_probs(v, 1.0) for k, v in used.items()}
    report: dict = {"flip_tta": flip, "temperature": temperature,
                    "background_logit": background}
    for k in ("val", "test"):
        if k in data:
            report[k] = classification_report(probs[k], data[k].labels, data[k].classes)
            report[k]["ece_before"] = expected_calibration_error(raw[k], data[k].labels)
            report[k]["ece_after"] = expected_calibration_error(probs[k], data[k].labels)
            report[k]["reliability_before"] = reliability_bins(raw[k], data[k].labels)
            report[k]["reliability_after"] = reliability_bins(probs[k], data[k].labels)
    unknown_tune = probs["unknown"][parts["tune"]].max(1).values if parts else None
    if given is None:
        threshold = reject_threshold(probs["val"].max(1).values, accept_known, unknown_tune)
        rule = (f"threshold: most validation photos accepted + tuning unknown photos "
                f"rejected (shares), keeping at least {accept_known:.0%} of validation photos")
    else:
        threshold, origin = given(temperature, background)
        rule = f"threshold from {origin}"
    if parts:
        _open_set(report, data, Outputs(used, probs, feats, temperature), threshold,
                  rule, parts)
    return report, Settings(flip, temperature, threshold, background,
                            ValOutputs(probs["val"], unknown_tune))


def _open_set(report: dict, data: dict[str, CachedSplit], out: Outputs, threshold: float,
              rule: str, parts: dict[str, list[int]]) -> None:
    """Record the threshold on val + unknown-tune, and every score's AUROC on tuning
    photos (where the shipped score is chosen) and on test + unknown-hold."""
    views, probs, feats, temperature = out.views, out.probs, out.feats, out.temperature
    tune, hold = parts["tune"], parts["hold"]
    known = "test" if "test" in data else "val"
    by_feature = {k: feature_scores(feats["train"], data["train"].labels, feats[k])
                  for k in {known, "val", "unknown"}} if feats["train"].numel() else {}
    scores = {
        "max_probability": lambda k: tta_probs(views[k], temperature).max(1).values,
        "shipped (with background logit)": lambda k: probs[k].max(1).values,
        "max_logit": lambda k: torch.stack(views[k]).mean(0).max(1).values,
        "energy": lambda k: torch.logsumexp(torch.stack(views[k]).mean(0) / temperature, 1),
        **{name: (lambda k, name=name: by_feature[k][name])
           for name in ("prototype_cosine", "nearest_photo_cosine") if by_feature},
    }
    report["open_set"] = {
        "rule": f"accept when top probability >= threshold; {rule}",
        "tune": open_set_report(probs["val"].max(1).values,
                                probs["unknown"][tune].max(1).values, threshold),
        "report_on": f"{known} split + held-out half of unknown/",
        "shipped": open_set_report(probs[known].max(1).values,
                                   probs["unknown"][hold].max(1).values, threshold),
        "auroc_by_score": {name: auroc(f(known), f("unknown")[hold])
                           for name, f in scores.items()},
        "auroc_by_score_tune": {name: auroc(f("val"), f("unknown")[tune])
                                for name, f in scores.items()},
    }
    shipped = report["open_set"]["shipped"]
    log.info("open set on %s: AUROC %.3f, known accepted %.3f, unknown rejected %.3f "
             "(threshold %.3f)", report["open_set"]["report_on"], shipped["auroc"],
             shipped["known_accepted"], shipped["unknown_rejected"], threshold)
