"""The figure of ``defeat data stats`` / ``defeat init --figure``: box sizes per class and anchor coverage."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from defeat.analysis.plotting import plt, save_figure
from defeat.data.anchors import POSITIVE_IOU, anchor_offsets, anchor_shapes, best_iou
from defeat.models.spec import model_spec

MAX_CLASSES = 8  # classes drawn one by one; the rest are pooled as "other"


def draw_dataset_figure(report, path: str | Path) -> Path:
    """Three panels: the histogram of box size √(w·h) at the training scale per class (log bins), the box shapes
    (w, h) with the given and fitted anchors, and the coverage (best grid IoU ≥ 0.5) per box-size bin for the
    given and the fitted anchors. Written atomically as PNG."""
    sides = np.sqrt(report.boxes_wh[:, 0] * report.boxes_wh[:, 1])
    bins = np.geomspace(max(1.0, sides.min() * 0.9), sides.max() * 1.1, 25)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))

    counts = np.bincount(report.labels, minlength=len(report.categories) + 1)[1:]
    order = np.argsort(-counts, kind="stable")
    shown = [i for i in order[:MAX_CLASSES] if counts[i] > 0]
    series = [(report.categories[i]["name"], sides[report.labels == i + 1]) for i in shown]
    rest = ~np.isin(report.labels, [i + 1 for i in shown])
    if rest.any():
        series.append((f"other ({len(order) - len(shown)} classes)", sides[rest]))
    axes[0].hist([s for _, s in series], bins=bins, stacked=True, label=[n for n, _ in series])
    axes[0].set_xscale("log")
    axes[0].set_xlabel(f"box size √(w·h), px at the training size ({report.min_size}/{report.max_size})")
    axes[0].set_ylabel("boxes")
    axes[0].set_title(f"box sizes per class ({len(sides)} boxes)")
    axes[0].legend(fontsize=7)

    fit = report.anchors
    spec = model_spec(report.model)
    given = anchor_shapes(fit.given_sizes, fit.given_ratios, spec)
    fitted = anchor_shapes(fit.sizes, fit.ratios, spec)
    axes[1].scatter(report.boxes_wh[:, 0], report.boxes_wh[:, 1], s=4, alpha=0.3, color="grey", label="boxes")
    axes[1].scatter(given[:, 0], given[:, 1], marker="x", color="tab:red", label="given anchors")
    axes[1].scatter(fitted[:, 0], fitted[:, 1], marker="+", s=80, color="tab:blue", label="fitted anchors")
    axes[1].set_xscale("log")
    axes[1].set_yscale("log")
    axes[1].set_xlabel("width, px")
    axes[1].set_ylabel("height, px")
    axes[1].set_title("box and anchor shapes (training size)")
    axes[1].legend(fontsize=7)

    centres = np.sqrt(bins[:-1] * bins[1:])
    which = np.clip(np.digitize(sides, bins) - 1, 0, len(centres) - 1)
    filled = np.bincount(which, minlength=len(centres)) > 0
    for name, sizes, ratios, colour in (
        ("given", fit.given_sizes, fit.given_ratios, "tab:red"),
        ("fitted", fit.sizes, fit.ratios, "tab:blue"),
    ):
        anchors, offsets = anchor_shapes(sizes, ratios, spec), anchor_offsets(sizes, ratios, spec)
        covered = best_iou(report.boxes_wh, anchors, offsets) >= POSITIVE_IOU
        share = np.bincount(which, weights=covered, minlength=len(centres)) / np.maximum(
            1, np.bincount(which, minlength=len(centres))
        )
        total = 100 * covered.mean()
        axes[2].plot(centres[filled], 100 * share[filled], marker="o", color=colour, label=f"{name}: {total:.1f} %")
    axes[2].set_xscale("log")
    axes[2].set_ylim(-2, 102)
    axes[2].set_xlabel("box size √(w·h), px at the training size")
    axes[2].set_ylabel(f"% boxes with best anchor IoU ≥ {POSITIVE_IOU}")
    axes[2].set_title("anchor coverage (grid IoU, centres stride/4 apart)")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=90)
