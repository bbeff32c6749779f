"""Figures and tables of the feature analyses (per-channel distance, gradient-norm maps).

Matplotlib with the Agg backend; every file is written atomically (``defeat.utils``: temporary name in the same
folder, then rename), so a reader never sees half a figure or table.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from defeat.analysis.plotting import save_figure
from defeat.utils import atomic_write_bytes


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def write_table(rows: Sequence[Mapping], stem: str | Path, meta: Mapping | None = None) -> list[Path]:
    """Write ``rows`` (dicts with the same keys) as ``stem.csv``, ``stem.json`` and ``stem.md``.

    The JSON holds ``{"meta": meta, "rows": rows}`` (NaN written as null); the Markdown is a pipe table
    preceded by the meta entries as a bullet list.
    """
    stem = Path(stem)
    columns = list(rows[0]) if rows else []
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row[c]) for c in columns])
    csv_path, json_path, md_path = (stem.with_suffix(s) for s in (".csv", ".json", ".md"))
    atomic_write_bytes(csv_path, text.getvalue().encode())

    def clean(v):
        return None if isinstance(v, float) and math.isnan(v) else v

    payload = {"meta": dict(meta or {}), "rows": [{k: clean(v) for k, v in r.items()} for r in rows]}
    atomic_write_bytes(json_path, (json.dumps(payload, indent=2) + "\n").encode())
    lines = [f"- {k}: {v}" for k, v in (meta or {}).items()]
    if lines:
        lines.append("")
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "|".join("---" for _ in columns) + "|")
    lines += ["| " + " | ".join(_cell(r[c]) for c in columns) + " |" for r in rows]
    atomic_write_bytes(md_path, ("\n".join(lines) + "\n").encode())
    return [csv_path, json_path, md_path]


# ------------------------------------------------------------------------------------------ channel distance
def plot_channel_distance(students: Sequence, level: str, path: str | Path, title: str | None = None) -> Path:
    """One panel per student (channel on x, mean |T - S| on y, object and background series), in the order given.

    ``students`` are :class:`~defeat.analysis.channel_distance.StudentDistance` objects; panels share the y axis.
    """
    n = len(students)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 2.8), sharey=True, squeeze=False)
    for ax, s in zip(axes[0], students):
        x = np.arange(s.obj.numel())
        ax.plot(x, s.obj.numpy(), color="tab:red", lw=0.8, label="object")
        ax.plot(x, s.bg.numpy(), color="tab:blue", lw=0.8, label="background")
        ax.set_title(f"{s.name}\n(KD: {s.mode}; {s.feature} feature)", fontsize=8)
        ax.set_xlabel(f"channel of {level}", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_xlim(0, max(len(x) - 1, 1))
    axes[0][0].set_ylabel("mean |teacher - student|", fontsize=8)
    axes[0][0].legend(fontsize=7, loc="upper right")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, tight=True)


def plot_channel_distance_seeds(
    groups: Mapping[str, Mapping[str, np.ndarray]], level: str, path: str | Path, title: str | None = None
) -> Path:
    """Fig. 1 over seeds: one panel per student, per channel the mean over seeds of |T - S| (line) and its spread
    (band from the lowest to the highest seed), object (red) and background (blue); panels share the y axis.

    ``groups``: ``{student: {"object": (seeds, C) array, "background": (seeds, C) array}}``, in panel order.
    """
    names = list(groups)
    fig, axes = plt.subplots(1, len(names), figsize=(3.0 * len(names), 2.8), sharey=True, squeeze=False)
    for ax, name in zip(axes[0], names):
        seeds = 0
        for region, color in (("object", "tab:red"), ("background", "tab:blue")):
            values = np.atleast_2d(np.asarray(groups[name][region], dtype=np.float64))
            seeds = values.shape[0]
            x = np.arange(values.shape[1])
            ax.plot(x, np.nanmean(values, axis=0), color=color, lw=0.8, label=region)
            if seeds > 1:
                ax.fill_between(x, np.nanmin(values, axis=0), np.nanmax(values, axis=0), color=color, alpha=0.25, lw=0)
            ax.set_xlim(0, max(len(x) - 1, 1))
        ax.set_title(f"{name} ({seeds} seed{'s' if seeds != 1 else ''})", fontsize=8)
        ax.set_xlabel(f"channel of {level}", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel("mean |teacher - student|\n(line: mean over seeds; band: min-max)", fontsize=8)
    axes[0][0].legend(fontsize=7, loc="upper right")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, tight=True)


# ------------------------------------------------------------------------------------------ gradient norms
def plot_grad_norm_overlay(
    image: np.ndarray,
    norms: Mapping[str, np.ndarray],
    strides: Mapping[str, int],
    path: str | Path,
    boxes: np.ndarray | None = None,
    title: str | None = None,
    ratios: Mapping[str, float] | None = None,
    alpha: float = 0.65,
) -> Path:
    """The image, then one panel per level with that level's gradient-norm map overlaid (``Blues``: darker = larger).

    Args:
        image: ``(H, W, 3)`` RGB in [0, 1] (the transformed, unpadded image the network saw).
        norms: level -> ``(h_l, w_l)`` norm map cropped to the image's valid cells.
        strides: level -> stride, to place each map over the image.
        boxes: ``(G, 4)`` xyxy GT boxes in the same frame, outlined in every panel.
        ratios: level -> object/background mean-norm ratio, shown in the panel titles.
    """
    height, width = image.shape[:2]
    levels = list(norms)
    fig, axes = plt.subplots(1, len(levels) + 1, figsize=(2.2 * (len(levels) + 1), 2.5), squeeze=False)
    axes = axes[0]

    def outline(ax):
        for x1, y1, x2, y2 in boxes if boxes is not None else []:
            ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec="tab:orange", lw=0.7))

    axes[0].imshow(image)
    outline(axes[0])
    axes[0].set_title("image + GT boxes", fontsize=8)
    for ax, level in zip(axes[1:], levels):
        norm = np.asarray(norms[level], dtype=np.float64)
        h, w = norm.shape
        extent = (0, w * strides[level], h * strides[level], 0)
        ax.imshow(image, alpha=0.45)
        top = float(norm.max()) if norm.size else 0.0
        ax.imshow(
            norm,
            cmap="Blues",
            vmin=0.0,
            vmax=top if top > 0 else 1.0,
            alpha=alpha,
            extent=extent,
            interpolation="nearest",
        )
        outline(ax)
        ax.set_xlim(0, width)
        ax.set_ylim(height, 0)
        ratio = "" if ratios is None else f"\nobj/bg {ratios[level]:.2f}"
        ax.set_title(f"{level} (max {top:.2g}){ratio}", fontsize=8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, tight=True)
