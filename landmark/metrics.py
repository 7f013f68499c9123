"""Classification metrics: top-k accuracy, per-class accuracy, confusion matrix."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from landmark.facts import display_name


def topk_accuracy(probs: Tensor, labels: Tensor, k: int = 1) -> float:
    """Share of rows whose label is among the k highest scores."""
    if len(labels) == 0:
        return 0.0
    k = min(k, probs.shape[1])
    hit = (probs.topk(k, dim=1).indices == labels[:, None]).any(dim=1)
    return hit.float().mean().item()


def confusion_matrix(preds: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """(C, C) counts: row = true class, column = predicted class."""
    idx = labels * num_classes + preds
    return torch.bincount(idx, minlength=num_classes ** 2).view(num_classes, num_classes)


def classification_report(probs: Tensor, labels: Tensor, classes: list[str]) -> dict:
    """Top-1, top-3, per-class accuracy and the confusion matrix, as plain JSON types."""
    cm = confusion_matrix(probs.argmax(1), labels, len(classes))
    support = cm.sum(1)
    per_class = {c: {"accuracy": (cm[i, i] / support[i]).item() if support[i] else None,
                     "support": int(support[i])} for i, c in enumerate(classes)}
    return {"n": len(labels), "top1": topk_accuracy(probs, labels, 1),
            "top3": topk_accuracy(probs, labels, 3), "per_class": per_class,
            "confusion": cm.tolist()}


def per_class_rows(per_class: dict) -> list[tuple[str, str, int]]:
    """(display name, accuracy as text or "n/a", photos) for each class of a report."""
    return [(display_name(c), "n/a" if v["accuracy"] is None else f"{v['accuracy']:.3f}",
             v["support"]) for c, v in per_class.items()]


def share_text(share: float, n: int) -> str:
    """'0.961 (0.941–0.974)': a share with its 95% Wilson interval on n photos."""
    if not n:
        return f"{share:.3f}"
    lo, hi = wilson_interval(share, n)
    return f"{share:.3f} ({lo:.3f}–{hi:.3f})"


def wilson_interval(share: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% (z = 1.96) Wilson score interval of a share observed on n photos."""
    if n == 0:
        return 0.0, 1.0
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)
