"""Calibration (temperature scaling, ECE) and open-set scores (AUROC, reject threshold)."""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

from landmark.contract import calibrated_softmax


def tta_probs(logit_views: list[Tensor], temperature: float,
              background: float | None = None) -> Tensor:
    """What the exported model returns: the mean over views of `calibrated_softmax`."""
    return torch.stack([calibrated_softmax(v, temperature, background)
                        for v in logit_views]).mean(0)


def fit_temperature(logit_views: list[Tensor], labels: Tensor) -> float:
    """The T in [0.05, 20] minimising validation NLL of `tta_probs` (log-spaced search)."""
    grid = torch.logspace(-1.3, 1.3, 261)
    nll = [-(tta_probs(logit_views, t.item())[torch.arange(len(labels)), labels]
             .clamp_min(1e-12).log().mean()).item() for t in grid]
    return round(grid[int(torch.tensor(nll).argmin())].item(), 4)


def expected_calibration_error(probs: Tensor, labels: Tensor, bins: int = 15) -> float:
    """ECE of the top-1 confidence over equal-width bins."""
    conf, pred = probs.max(1)
    correct = (pred == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    ece = torch.zeros(())
    for lo, hi in itertools.pairwise(edges):
        mask = (conf > lo) & (conf <= hi)
        if mask.any():
            ece += mask.float().mean() * (conf[mask].mean() - correct[mask].mean()).abs()
    return ece.item()


def reliability_bins(probs: Tensor, labels: Tensor, bins: int = 10) -> list[dict]:
    """Per-bin mean confidence, accuracy and count, for a reliability diagram."""
    conf, pred = probs.max(1)
    correct = (pred == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    out = []
    for lo, hi in itertools.pairwise(edges):
        mask = (conf > lo) & (conf <= hi)
        out.append({"lo": lo.item(), "hi": hi.item(), "count": int(mask.sum()),
                    "confidence": conf[mask].mean().item() if mask.any() else None,
                    "accuracy": correct[mask].mean().item() if mask.any() else None})
    return out


def auroc(known: Tensor, unknown: Tensor) -> float:
    """P(score of a known photo > score of an unknown one), ties counted half."""
    if not len(known) or not len(unknown):
        return float("nan")
    diff = known[:, None] - unknown[None, :]
    return ((diff > 0).float().mean() + 0.5 * (diff == 0).float().mean()).item()


def reject_threshold(known_scores: Tensor, accept_known: float = 0.95,
                     unknown_scores: Tensor | None = None) -> float:
    """Threshold on a familiarity score: accept a photo when its score >= it.

    Known photos only: the highest threshold that still accepts `accept_known` of them.
    With photos of unknown places too: among the thresholds that accept at least that
    share, the one deciding the most photos right on both sides (share of known accepted
    + share of unknown rejected, Youden's J; the lowest threshold on ties), placed midway
    to the next lower score so it keeps a margin on both sides."""
    if not len(known_scores):
        return 0.0
    k = int((1 - accept_known) * len(known_scores) + 1e-9)  # 0.2 * 10 is 1.999...
    highest = known_scores.sort().values[k].item()
    if unknown_scores is None or not len(unknown_scores):
        return highest
    scores = torch.cat([known_scores, unknown_scores]).unique()
    scores = scores[scores <= highest]
    j = torch.stack([(known_scores >= t).float().mean() + (unknown_scores < t).float().mean()
                     for t in scores])
    i = int(j.argmax())
    return ((scores[i] + scores[i - 1]) / 2 if i else scores[i]).item()


def open_set_report(known: Tensor, unknown: Tensor, threshold: float) -> dict:
    """AUROC and acceptance rates of a score at a threshold (accept when score >= it)."""
    return {"auroc": auroc(known, unknown), "threshold": threshold,
            "known_accepted": (known >= threshold).float().mean().item(),
            "unknown_rejected": (unknown < threshold).float().mean().item(),
            "n_known": len(known), "n_unknown": len(unknown)}
