"""Dataset statistics and anchor coverage/fitting: pure functions checked against hand computations."""

from __future__ import annotations

import numpy as np
import pytest

from defeat.data.anchors import (
    anchor_coverage,
    anchor_offsets,
    anchor_shapes,
    aspect_ratio_quantiles,
    coverage,
    fit_anchors,
    grid_iou,
    training_scale,
)
from defeat.data.coco import CocoIndex
from defeat.data.stats import choose_image_size, dataset_statistics, format_statistics
from defeat.models.spec import model_spec

FASTER, RETINA, FCOS = (model_spec(f"{f}_r18_fpn") for f in ("faster_rcnn", "retinanet", "fcos"))


def test_coverage_equals_a_hand_computation():
    anchors = np.array([[10.0, 10.0]])
    boxes = np.array([[10, 10], [20, 10], [20, 20], [5, 10], [10, 30]], float)
    # IoU = min(w,aw)·min(h,ah) / (w·h + aw·ah − I): 100/100, 100/200, 100/400, 50/100, 100/300
    expected = np.array([1.0, 0.5, 0.25, 0.5, 1 / 3])
    assert grid_iou(boxes, anchors)[:, 0] == pytest.approx(expected)
    assert coverage(boxes, anchors) == pytest.approx(3 / 5)  # IoU >= 0.5: boxes 1, 2 and 4
    # a second anchor (20 x 20) lifts box 3 to IoU 1; box 5 (10 x 30) gets 200/(300+400-200) = 0.4 from it
    assert coverage(boxes, np.array([[10.0, 10.0], [20.0, 20.0]])) == pytest.approx(4 / 5)
    assert np.isnan(coverage(np.zeros((0, 2)), anchors))


def test_grid_iou_equals_a_hand_computation():
    # box 10 x 10, anchor 10 x 10 whose centre is d = 2 off in x and y: ix = iy = clip(10 - 2, 0, 10) = 8
    assert grid_iou(np.array([[10.0, 10.0]]), np.array([[10.0, 10.0]]), [2.0])[0, 0] == pytest.approx(64 / 136)
    # box 20 x 10, anchor 10 x 10, d = 3: ix = min(15 - 3, 10) = 10, iy = 10 - 3 = 7 -> 70 / (200 + 100 - 70)
    assert grid_iou(np.array([[20.0, 10.0]]), np.array([[10.0, 10.0]]), [3.0])[0, 0] == pytest.approx(70 / 230)
    # far apart: no overlap
    assert grid_iou(np.array([[4.0, 4.0]]), np.array([[4.0, 4.0]]), [5.0])[0, 0] == 0.0
    # stride / 4 per anchor, in anchor_shapes' order (sizes x ratios; RetinaNet x 3 octave scales)
    assert anchor_offsets([8, 16, 32, 64, 128], [0.5, 1, 2], FASTER) == pytest.approx(np.repeat([1, 2, 4, 8, 16], 3))
    assert len(anchor_offsets([8, 16, 32, 64, 128], [0.5, 1, 2], RETINA)) == 45
    with pytest.raises(ValueError, match="needs 5 entries"):
        anchor_offsets([8, 16], [1.0], FASTER)


def test_small_anchors_on_a_coarse_grid_do_not_count():
    # an anchor of a box's own size reaches grid IoU 0.5 from ~1.36 strides on: (s - t/4)^2 / (2 s^2 - (s - t/4)^2)
    boxes = np.array([[20.0, 20.0]])
    assert coverage(boxes, np.array([[20.0, 20.0]])) == 1.0  # centred: a perfect match
    assert coverage(boxes, np.array([[20.0, 20.0]]), [16 / 4]) == 0.0  # on a stride-16 grid: (16^2)/(800-256) < 0.5
    assert coverage(boxes, np.array([[20.0, 20.0]]), [8 / 4]) == 1.0  # stride 8: 18^2 / (800 - 324) = 0.68
    # Faster R-CNN sizes [16, 32, ...] put the 16 on P2 (stride 4): 16 x 16 boxes are covered
    assert anchor_coverage(np.array([[16.0, 16.0]]), [16, 32, 64, 128, 256], [1.0], FASTER) == 1.0
    # RetinaNet's levels start at stride 8: sizes [4, 8, 16, ...] put the 16 on P5 (stride 32), too coarse for it
    assert anchor_coverage(np.array([[16.0, 16.0]]), [4, 8, 16, 32, 64], [1.0], RETINA) < 1.0


def test_anchor_shapes_follow_torchvision():
    # size s, ratio r = h/w: w = s/√r, h = s·√r (torchvision's AnchorGenerator)
    shapes = anchor_shapes([16] * 5, [0.25, 1.0, 4.0], FASTER)[:3]
    assert shapes == pytest.approx(np.array([[32, 8], [16, 16], [8, 32]]))
    assert len(anchor_shapes([8, 16, 32, 64, 128], [0.5, 1, 2], RETINA)) == 45  # 3 octave scales
    assert len(anchor_shapes([8, 16, 32, 64, 128], [0.5, 1, 2], FCOS)) == 5  # anchor-free: one square


def test_training_scale_is_torchvisions_resize():
    scale = training_scale(np.array([[640, 480], [100, 400]]), min_size=320, max_size=400)
    assert scale == pytest.approx([min(320 / 480, 400 / 640), min(320 / 100, 400 / 400)])


def test_fit_covers_the_boxes_and_never_loses_to_the_given_anchors():
    rng = np.random.default_rng(0)
    side = rng.uniform(6, 14, 300)
    boxes = np.stack([side, 3 * side], 1)  # tall thin objects, 6-14 px wide: the defaults miss them all
    fit = fit_anchors(boxes, FASTER, given_sizes=[32, 64, 128, 256, 512])
    assert fit.given_coverage == pytest.approx(anchor_coverage(boxes, [32, 64, 128, 256, 512], [0.5, 1, 2], FASTER))
    assert fit.given_coverage < 0.2 and fit.coverage == 1.0
    assert fit.sizes == sorted(fit.sizes) and fit.sizes[0] >= 4  # one size per level, >= the P2 stride
    assert fit.coverage == pytest.approx(anchor_coverage(boxes, fit.sizes, fit.ratios, FASTER))
    # each fitted size reaches IoU 0.5 on its own level's grid for a box of its own shape: >= ~1.36 strides
    assert all(size >= 1.3 * stride for size, stride in zip(fit.sizes, (4, 8, 16, 32, 64)))
    assert aspect_ratio_quantiles(boxes) == (3.0, 3.0, 3.0)
    same = fit_anchors(np.array([[32.0, 32.0]]), FASTER, given_sizes=[32, 64, 128, 256, 512])
    assert same.coverage == same.given_coverage == 1.0
    with pytest.raises(ValueError, match="no boxes"):
        fit_anchors(np.zeros((0, 2)), FASTER)


def test_statistics_of_a_hand_made_index():
    images = [
        {"id": 1, "width": 100, "height": 50},
        {"id": 2, "width": 100, "height": 50},
        {"id": 3, "width": 60, "height": 80},
    ]
    boxes = {1: [[0, 0, 10, 10], [0, 0, 40, 40]], 2: [], 3: [[0, 0, 60, 80]]}
    labels = {1: [1, 2], 2: [], 3: [2]}
    index = CocoIndex(images, boxes, labels, [{"id": 1, "name": "a"}, {"id": 5, "name": "b"}], 0)
    stats = dataset_statistics(index)
    assert (stats.images, stats.empty_images, stats.boxes) == (3, 1, 3)
    assert stats.boxes_per_class == {"a": 1, "b": 2}
    assert stats.boxes_per_image == {"min": 0.0, "median": 1.0, "mean": 1.0, "max": 2.0}
    # areas 100 (< 32²), 1600 (medium), 4800 (medium: < 96² = 9216)
    assert stats.coco_split == {"small": 1, "medium": 2, "large": 0}
    assert stats.image_sizes == {"100x50": 2, "60x80": 1}
    assert stats.box_width["q50"] == 40 and stats.box_area["q100"] == 4800
    assert any("boxes per class" in line for line in format_statistics(stats))


def test_image_size_from_the_median_image():
    assert choose_image_size(np.array([[640, 480], [640, 427], [500, 375]])) == (416, 576)  # median short 427
    assert choose_image_size(np.array([[64, 64]] * 3)) == (64, 64)
    assert choose_image_size(np.array([[4000, 3000]])) == (512, 704)  # capped for CPU cost
