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

**Anchor shapes** follow torchvision's ``AnchorGenerator`` as the zoo builds it: for size s and ratio r = h/w,
``w = s / √r``, ``h = s · √r``; Faster R-CNN has one size per level, RetinaNet three octave scales
``s, ⌊s·2^(1/3)⌋, ⌊s·2^(2/3)⌋`` per level; FCOS is anchor-free (its "anchor" is a square of the level's size
that only sets the level's scale range), so it is not fitted.

**Boxes at the training scale.** torchvision resizes an image of w×h by ``min(min_size / min(w, h),
max_size / max(w, h))``; box sizes are scaled by the same factor before coverage is measured.

**Fit.** Sizes per level form a geometric sequence ``s_k = s_0 · g^k`` (k = 0..L−1, so sizes grow with the
levels' strides), with ``s_k`` ≥ the level's stride; ratios are either the default (0.5, 1, 2) or the box
aspect ratios' quantiles ``r_j = exp(Q_{(j+½)/R}(log(h/w)))``, j = 0..R−1. A grid over s_0 (log-spaced from the
first stride to 32 strides), g ∈ {1.5, 1.75, 2, 2.25, 2.5, 3} and both ratio sets is searched; the winner has
the highest coverage (grid IoU), ties broken by the mean best grid IoU. The given (default) anchors are a candidate
too, so the fit never reports a lower coverage than them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

DEFAULT_RATIOS = (0.5, 1.0, 2.0)
GROWTHS = (1.5, 1.75, 2.0, 2.25, 2.5, 3.0)
#: level strides of the zoo's families (P2..P6 for Faster R-CNN, P3..P7 one-stage)
STRIDES = {"faster_rcnn": (4, 8, 16, 32, 64), "retinanet": (8, 16, 32, 64, 128), "fcos": (8, 16, 32, 64, 128)}
POSITIVE_IOU = 0.5


def family_of_name(model_name: str) -> str:
    """``'retinanet_r18_fpn'`` -> ``'retinanet'`` (the zoo's naming); torchvision's ResNet-FPN names too
    (``'fasterrcnn_resnet50_fpn_v2'`` -> ``'faster_rcnn'``: same levels and one anchor size per level)."""
    if "mobilenet" in model_name:
        raise ValueError(f"model.name: {model_name} has several anchor sizes on each of its 3 levels; anchors are "
                         "fitted for ResNet-FPN models (one size per level). Use e.g. --model fasterrcnn_resnet18_fpn, "
                         "or set model.name afterwards and drop anchor_sizes (its own anchors are kept)")
    for family in STRIDES:
        if model_name.startswith((family + "_", family.replace("_", "") + "_")):
            return family
    raise ValueError(f"model.name: unknown detector family in {model_name!r} (faster_rcnn, retinanet or fcos)")


def anchor_shapes(sizes, ratios, family: str = "faster_rcnn") -> np.ndarray:
    """``(A, 2)`` anchor (w, h) of every level, as the zoo's AnchorGenerator makes them (before rounding)."""
    if family == "retinanet":
        scales = [v for s in sizes for v in (s, int(s * 2 ** (1 / 3)), int(s * 2 ** (2 / 3)))]
    else:
        scales = list(sizes)
    ratios = (1.0,) if family == "fcos" else tuple(ratios)
    root = np.sqrt(np.asarray(ratios, float))
    scales = np.asarray(scales, float)
    return np.stack([(scales[:, None] / root[None, :]).ravel(), (scales[:, None] * root[None, :]).ravel()], 1)


def anchor_offsets(sizes, ratios, family: str = "faster_rcnn") -> np.ndarray:
    """``(A,)`` the typical centre offset per axis, stride / 4, of every anchor of :func:`anchor_shapes` (same order)."""
    strides = STRIDES[family]
    if len(sizes) != len(strides):
        raise ValueError(f"anchor_sizes: {family} has {len(strides)} levels (strides {list(strides)}), "
                         f"got {len(sizes)} sizes {list(sizes)}")
    per_level = (3 if family == "retinanet" else 1) * (1 if family == "fcos" else len(ratios))
    return np.repeat(np.asarray(strides, float) / 4, per_level)


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


def anchor_coverage(boxes_wh: np.ndarray, sizes, ratios, family: str = "faster_rcnn") -> float:
    """Coverage of the anchors a ``family`` detector builds from ``sizes`` and ``ratios``, on their grid."""
    return coverage(boxes_wh, anchor_shapes(sizes, ratios, family), anchor_offsets(sizes, ratios, family))


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

    sizes: list[int]
    ratios: list[float]
    coverage: float  # of the fitted anchors
    mean_best_iou: float
    given_sizes: list[int]
    given_ratios: list[float]
    given_coverage: float
    given_mean_best_iou: float
    boxes: int  # boxes measured (after subsampling)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def summary(self) -> str:
        return (f"anchor coverage (best grid IoU >= {POSITIVE_IOU} at the training size, {self.boxes} boxes): "
                f"given sizes {self.given_sizes} ratios {self.given_ratios}: {100 * self.given_coverage:.1f} % "
                f"(mean best IoU {self.given_mean_best_iou:.3f}) -> fitted sizes {self.sizes} ratios {self.ratios}: "
                f"{100 * self.coverage:.1f} % (mean best IoU {self.mean_best_iou:.3f})")


def _score(boxes_wh: np.ndarray, sizes, ratios, family: str) -> tuple[float, float]:
    best = best_iou(boxes_wh, anchor_shapes(sizes, ratios, family), anchor_offsets(sizes, ratios, family))
    return float((best >= POSITIVE_IOU).mean()), float(best.mean())


def fit_anchors(boxes_wh: np.ndarray, family: str = "faster_rcnn", given_sizes=(32, 64, 128, 256, 512),
                given_ratios=DEFAULT_RATIOS, max_boxes: int = 20000, seed: int = 0) -> AnchorFit:
    """Anchor sizes (one per level) and ratios for boxes of shape ``boxes_wh`` (N, 2) at the training scale.

    See the module docstring for the search; more than ``max_boxes`` boxes are subsampled (seeded).
    """
    boxes_wh = np.asarray(boxes_wh, float).reshape(-1, 2)
    if len(boxes_wh) == 0:
        raise ValueError("no boxes to fit anchors to")
    if len(boxes_wh) > max_boxes:
        boxes_wh = boxes_wh[np.random.default_rng(seed).choice(len(boxes_wh), max_boxes, replace=False)]
    given_sizes, given_ratios = [int(s) for s in given_sizes], [float(r) for r in given_ratios]
    given = _score(boxes_wh, given_sizes, given_ratios, family)
    best = (given, given_sizes, given_ratios)
    notes = []
    if family == "fcos":
        notes.append("FCOS is anchor-free: its sizes only set each level's scale range, so they are not fitted")
    else:
        strides = np.asarray(STRIDES[family], float)
        levels = np.arange(len(strides))
        fitted_ratios = list(aspect_ratio_quantiles(boxes_wh, len(given_ratios)))
        ratio_sets = [given_ratios] + ([fitted_ratios] if len(set(fitted_ratios)) == len(fitted_ratios) else [])
        for s0 in np.geomspace(strides[0], 32 * strides[0], 48):
            for growth in GROWTHS:
                sizes = np.maximum(np.round(s0 * growth ** levels), strides).astype(int)
                if np.any(np.diff(sizes) <= 0):
                    continue
                for ratios in ratio_sets:
                    score = _score(boxes_wh, sizes, ratios, family)
                    if score > best[0]:
                        best = (score, [int(s) for s in sizes], list(ratios))
    (cov, mean), sizes, ratios = best
    return AnchorFit(sizes, ratios, cov, mean, given_sizes, given_ratios, given[0], given[1], len(boxes_wh), notes)
