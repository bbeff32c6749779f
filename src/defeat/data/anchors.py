"""Anchor coverage and anchors fitted to a dataset's boxes. Pure numpy, no I/O.

**Grid IoU.** Anchors sit on a grid: on a level of stride t a box's centre is up to t/2 (in x and in y) from the
nearest anchor centre, t/4 on average (the mean of |u| for u uniform in [−t/2, t/2]). An anchor of shape
(a_w, a_h) whose centre is d off the box's centre in both axes overlaps a box of shape (w, h) by
``I = ix · iy`` with ``ix = clip((w + a_w)/2 − d, 0, min(w, a_w))`` (iy likewise);
``IoU = I / (w·h + a_w·a_h − I)``. With d = t/4 (:func:`anchor_offsets`) this is the IoU a box gets from an anchor of
that shape at a typical position; an anchor of a box's own size then reaches IoU ≥ 0.5 from s ≳ 1.36 t on (≳ 2.7 t
at the worst position), so small anchors on coarse levels no longer count coverage the grid cannot deliver. With
d = 0 it is the centred "shape IoU" of YOLO's autoanchor ("best possible recall").

**Coverage** of a set of anchors = the fraction of boxes whose best grid IoU over all anchors of all levels is
≥ 0.5 (torchvision's RPN and RetinaNet take an anchor as positive from IoU 0.5 on, 0.7 for the RPN's
foreground, but every box also gets its best anchor).

**Anchor shapes** follow torchvision's ``AnchorGenerator`` as the model builds it: for size s and ratio r = h/w,
``w = s / √r``, ``h = s · √r``; the sizes of each level come from the model's spec
(:meth:`defeat.models.spec.ModelSpec.anchor_sizes`: one size per level, RetinaNet three octave scales); FCOS is
anchor-free (its "anchor" is a square of the level's size that only sets the level's scale range), so it is not
fitted. Every function takes that spec (any object with ``family``, ``strides``, ``anchor_sizes(base)`` and
``anchor_ratios(ratios)``), so what a model is stays in one place.

**Boxes at the training scale.** torchvision resizes an image of w×h by ``min(min_size / min(w, h),
max_size / max(w, h))``; box sizes are scaled by the same factor before coverage is measured.

**Fit.** Sizes per level form a geometric sequence ``s_k = s_0 · g^k`` (k = 0..L−1, so sizes grow with the levels'
strides), with ``s_k`` ≥ the level's stride; a model that shares its sizes across levels (MobileNetV3-FPN: five on
each of its three) gets one such sequence of its count, ≥ the finest stride, on every level; ratios are either the
default (0.5, 1, 2) or the box aspect ratios' quantiles ``r_j = exp(Q_{(j+½)/R}(log(h/w)))``, j = 0..R−1. A grid
over s_0 (log-spaced from the first stride to 32 strides), g ∈ {1.5, 1.75, 2, 2.25, 2.5, 3} and both ratio sets is
searched; the winner has the highest coverage (grid IoU), ties broken by the mean best grid IoU. The given (default)
anchors are a candidate too, so the fit never reports a lower coverage than them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

DEFAULT_RATIOS = (0.5, 1.0, 2.0)
GROWTHS = (1.5, 1.75, 2.0, 2.25, 2.5, 3.0)
POSITIVE_IOU = 0.5


class AnchorLayout(Protocol):
    """What anchor fitting needs of a model (:class:`defeat.models.spec.ModelSpec` is one)."""

    family: str
    shared_anchor_sizes: int  # > 0: this many sizes, the same on every level

    @property
    def strides(self) -> tuple[int, ...]: ...

    def anchor_sizes(self, base_sizes) -> tuple[tuple[int, ...], ...]: ...

    def anchor_ratios(self, ratios) -> tuple[float, ...]: ...


def anchor_shapes(sizes, ratios, spec: AnchorLayout) -> np.ndarray:
    """``(A, 2)`` anchor (w, h) of every level, as the model's AnchorGenerator makes them (before rounding)."""
    scales = np.asarray([s for level in spec.anchor_sizes(sizes) for s in level], float)
    root = np.sqrt(np.asarray(spec.anchor_ratios(ratios), float))
    return np.stack([(scales[:, None] / root[None, :]).ravel(), (scales[:, None] * root[None, :]).ravel()], 1)


def anchor_offsets(sizes, ratios, spec: AnchorLayout) -> np.ndarray:
    """``(A,)`` the typical centre offset per axis, stride / 4, of every anchor of :func:`anchor_shapes` (same
    order)."""
    per_level = [len(level) * len(spec.anchor_ratios(ratios)) for level in spec.anchor_sizes(sizes)]
    return np.repeat(np.asarray(spec.strides, float) / 4, per_level)


def grid_iou(boxes_wh: np.ndarray, anchors_wh: np.ndarray, offsets=None) -> np.ndarray:
    """``(N, A)`` grid IoU of every box with every anchor whose centre is ``offsets`` (A,) off the box's in x and y
    (see the module docstring); without ``offsets`` both are centred at the same point (shape IoU)."""
    b = np.asarray(boxes_wh, float).reshape(-1, 1, 2)
    a = np.asarray(anchors_wh, float).reshape(1, -1, 2)
    d = np.zeros((1, a.shape[1], 1)) if offsets is None else np.asarray(offsets, float).reshape(1, -1, 1)
    overlap = np.clip((b + a) / 2 - d, 0, np.minimum(b, a))  # (N, A, 2): ix, iy
    inter = overlap[..., 0] * overlap[..., 1]
    return inter / (b[..., 0] * b[..., 1] + a[..., 0] * a[..., 1] - inter)


def best_iou(boxes_wh: np.ndarray, anchors_wh: np.ndarray, offsets=None) -> np.ndarray:
    """``(N,)`` the best grid IoU of each box over the anchors (shape IoU without ``offsets``)."""
    if len(boxes_wh) == 0:
        return np.zeros(0)
    return grid_iou(boxes_wh, anchors_wh, offsets).max(1)


def coverage(boxes_wh: np.ndarray, anchors_wh: np.ndarray, offsets=None, threshold: float = POSITIVE_IOU) -> float:
    """Fraction of boxes whose best grid IoU is ≥ ``threshold`` (NaN without boxes)."""
    best = best_iou(boxes_wh, anchors_wh, offsets)
    return float((best >= threshold).mean()) if len(best) else float("nan")


def anchor_coverage(boxes_wh: np.ndarray, sizes, ratios, spec: AnchorLayout) -> float:
    """Coverage of the anchors the model of ``spec`` builds from ``sizes`` and ``ratios``, on their grid."""
    return coverage(boxes_wh, anchor_shapes(sizes, ratios, spec), anchor_offsets(sizes, ratios, spec))


def training_scale(image_wh: np.ndarray, min_size: int, max_size: int) -> np.ndarray:
    """``(N,)`` torchvision's resize factor ``min(min_size / short side, max_size / long side)`` per image."""
    image_wh = np.asarray(image_wh, float).reshape(-1, 2)
    return np.minimum(min_size / image_wh.min(1), max_size / image_wh.max(1))


def aspect_ratio_quantiles(boxes_wh: np.ndarray, count: int = 3) -> tuple[float, ...]:
    """``r_j = exp(Q_{(j+½)/count}(log(h/w)))``, rounded to 2 decimals (see the module docstring)."""
    log_ratio = np.log(boxes_wh[:, 1] / boxes_wh[:, 0])
    return tuple(round(float(np.exp(np.quantile(log_ratio, (j + 0.5) / count))), 2) for j in range(count))


@dataclass
class AnchorFit:
    """The anchors chosen for a dataset and how well they and the given ones cover its boxes."""

    sizes: list  # model.anchor_sizes: one base size (int) or a list of sizes per level
    ratios: list[float]
    coverage: float  # of the fitted anchors
    mean_best_iou: float
    given_sizes: list
    given_ratios: list[float]
    given_coverage: float
    given_mean_best_iou: float
    boxes: int  # boxes measured (after subsampling)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def summary(self) -> str:
        return (
            f"anchor coverage (best grid IoU >= {POSITIVE_IOU} at the training size, {self.boxes} boxes): "
            f"given sizes {self.given_sizes} ratios {self.given_ratios}: {100 * self.given_coverage:.1f} % "
            f"(mean best IoU {self.given_mean_best_iou:.3f}) -> fitted sizes {self.sizes} ratios {self.ratios}: "
            f"{100 * self.coverage:.1f} % (mean best IoU {self.mean_best_iou:.3f})"
        )


def _score(boxes_wh: np.ndarray, sizes, ratios, spec: AnchorLayout) -> tuple[float, float]:
    best = best_iou(boxes_wh, anchor_shapes(sizes, ratios, spec), anchor_offsets(sizes, ratios, spec))
    return float((best >= POSITIVE_IOU).mean()), float(best.mean())


def fit_anchors(
    boxes_wh: np.ndarray,
    spec: AnchorLayout,
    given_sizes=(32, 64, 128, 256, 512),
    given_ratios=DEFAULT_RATIOS,
    max_boxes: int = 20000,
    seed: int = 0,
) -> AnchorFit:
    """Anchor sizes (``model.anchor_sizes``: one base size per level, or, where a model shares its sizes across
    levels, the same list on every level) and ratios for boxes of shape ``boxes_wh`` (N, 2) at the training scale.

    See the module docstring for the search; more than ``max_boxes`` boxes are subsampled (seeded).
    """
    boxes_wh = np.asarray(boxes_wh, float).reshape(-1, 2)
    if len(boxes_wh) == 0:
        raise ValueError("no boxes to fit anchors to")
    if len(boxes_wh) > max_boxes:
        boxes_wh = boxes_wh[np.random.default_rng(seed).choice(len(boxes_wh), max_boxes, replace=False)]
    given_sizes = [[int(v) for v in e] if isinstance(e, (list, tuple)) else int(e) for e in given_sizes]
    given_ratios = [float(r) for r in given_ratios]
    given = _score(boxes_wh, given_sizes, given_ratios, spec)
    best = (given, given_sizes, given_ratios)
    notes = []
    if spec.family == "fcos":
        notes.append("FCOS is anchor-free: its sizes only set each level's scale range, so they are not fitted")
    else:
        shared = spec.shared_anchor_sizes  # the same sizes on every level (MobileNetV3-FPN)
        count = shared or len(spec.strides)
        # each size >= its level's stride; shared sizes serve every level, so >= the finest stride
        floors = np.full(count, min(spec.strides), float) if shared else np.asarray(spec.strides, float)
        fitted_ratios = list(aspect_ratio_quantiles(boxes_wh, len(given_ratios)))
        ratio_sets = [given_ratios] + ([fitted_ratios] if len(set(fitted_ratios)) == len(fitted_ratios) else [])
        for s0 in np.geomspace(floors[0], 32 * floors[0], 48):
            for growth in GROWTHS:
                sizes = np.maximum(np.round(s0 * growth ** np.arange(count)), floors).astype(int)
                if np.any(np.diff(sizes) <= 0):
                    continue
                entries = [[int(s) for s in sizes] for _ in spec.strides] if shared else [int(s) for s in sizes]
                for ratios in ratio_sets:
                    score = _score(boxes_wh, entries, ratios, spec)
                    if score > best[0]:
                        best = (score, entries, list(ratios))
    (cov, mean), sizes, ratios = best
    return AnchorFit(sizes, ratios, cov, mean, given_sizes, given_ratios, given[0], given[1], len(boxes_wh), notes)
