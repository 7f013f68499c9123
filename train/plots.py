"""PNG figures: training curves, the confusion matrix, reliability and threshold trade-off."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from landmark.facts import display_name


def _save(fig: plt.Figure, path: str | Path) -> Path:
    """Lay out, write and close a figure."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def training_curves(history: list[dict], path: str | Path, title: str = "") -> Path:
    """Loss and top-1 per epoch, train against validation."""
    epochs = [r["epoch"] for r in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for key, ax in (("loss", ax1), ("top1", ax2)):
        ax.plot(epochs, [r[f"train_{key}"] for r in history], label="train")
        ax.plot(epochs, [r[f"val_{key}"] for r in history], label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    return _save(fig, path)


def confusion_png(confusion: list[list[int]], classes: list[str], path: str | Path,
                  title: str = "") -> Path:
    """Row-normalised confusion matrix with counts, true class on the rows."""
    n = len(classes)
    rows = [[v / max(1, sum(r)) for v in r] for r in confusion]
    size = max(6.0, 0.45 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    names = [display_name(c) for c in classes]
    ax.set_xticks(range(n), names, rotation=90, fontsize=7)
    ax.set_yticks(range(n), names, fontsize=7)
    for i, r in enumerate(confusion):
        for j, v in enumerate(r):
            if v:
                ax.text(j, i, v, ha="center", va="center", fontsize=6,
                        color="white" if rows[i][j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return _save(fig, path)


def reliability_png(before: list[dict], after: list[dict], path: str | Path,
                    title: str = "") -> Path:
    """Reliability diagram: accuracy against confidence, before and after calibration."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfectly calibrated")
    for bins, name in ((before, "before"), (after, "after")):
        pts = [(b["confidence"], b["accuracy"]) for b in bins if b["count"]]
        ax.plot(*zip(*pts, strict=True), "o-", label=name)
    ax.set_xlabel("confidence (top-1 probability)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    return _save(fig, path)


def threshold_png(known: list[float], unknown: list[float], threshold: float,
                  path: str | Path, title: str = "") -> Path:
    """Share of known photos accepted and of unknown photos rejected at every threshold
    on the top probability, with the chosen one marked."""
    grid = [i / 200 for i in range(201)]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(grid, [sum(s >= t for s in known) / len(known) for t in grid],
            label=f"known photos accepted ({len(known)})")
    if unknown:
        ax.plot(grid, [sum(s < t for s in unknown) / len(unknown) for t in grid],
                label=f"unknown photos rejected ({len(unknown)})")
    ax.axvline(threshold, color="k", ls="--", lw=1, label=f"threshold {threshold:.3f}")
    ax.set_xlabel("reject threshold on the top probability")
    ax.set_ylabel("share")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    ax.set_title(title)
    return _save(fig, path)


def lines_png(series: dict[str, dict[float, float]], path: str | Path, xlabel: str,
              ylabel: str) -> Path:
    """One line a series (x -> y), markers at the measured points, y from 0 to 1."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, points in series.items():
        xs = sorted(points)
        ax.plot(xs, [points[x] for x in xs], marker="o", label=name)
    ax.set(xlabel=xlabel, ylabel=ylabel, ylim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def robustness_png(results: dict[str, dict[str, dict]], path: str | Path,
                   target: float) -> Path:
    """Per degradation and model: top-1 (bar) and the share of accepted answers that are
    right (dot), with the target as a line."""
    names = list(next(iter(results.values())))
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / len(results)
    for i, (model, rows) in enumerate(results.items()):
        xs = [j + (i - (len(results) - 1) / 2) * width for j in range(len(names))]
        bars = ax.bar(xs, [rows[n]["top1"] for n in names], width, label=f"{model}: top-1",
                      alpha=0.7)
        ax.plot(xs, [rows[n]["accepted_right"] for n in names], "o",
                color=bars.patches[0].get_facecolor(), markeredgecolor="black",
                label=f"{model}: accepted answers right")
    ax.axhline(target, color="red", linestyle="--", linewidth=1, label=f"target {target:.0%}")
    ax.set_xticks(range(len(names)), names, rotation=25, ha="right")
    ax.set(ylim=(0, 1.02), ylabel="share of test photos")
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)
