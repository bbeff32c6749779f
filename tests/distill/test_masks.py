"""Object / FGFI masks against hand-computed cases."""

import pytest
import torch

from defeat.distill.masks import (
    assign_levels,
    box_cells,
    fgfi_masks,
    level_number,
    object_masks,
    split_anchors,
    stage_masks,
)

LEVELS = {"P2": 4, "P3": 8, "P4": 16, "P5": 32, "P6": 64}


def square(side, x=0.0, y=0.0):
    return [x, y, x + side, y + side]


def test_level_assignment_boundaries():
    sides = [0, 1, 111.9, 112, 223.9, 224, 447.9, 448, 895.9, 896, 5000]
    boxes = torch.tensor([square(s) for s in sides])
    got = assign_levels(boxes, list(LEVELS)).tolist()
    assert got == [0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4]


def test_level_assignment_uses_area_and_one_stage_levels():
    # 56 x 224 has sqrt(area) = 112 -> P3; on P3..P7 anything below 224 goes to P3 (index 0)
    boxes = torch.tensor([[0, 0, 56, 224], [0, 0, 50, 50], [0, 0, 300, 300]], dtype=torch.float)
    assert assign_levels(boxes, list(LEVELS)).tolist() == [1, 0, 2]
    assert assign_levels(boxes, ["P3", "P4", "P5", "P6", "P7"]).tolist() == [0, 0, 1]
    with pytest.raises(ValueError, match="consecutive"):
        assign_levels(boxes, ["P2", "P4"])
    with pytest.raises(ValueError, match="level name"):
        level_number("C3")


def test_box_cells_truncation_and_exclusive_end():
    # stride 4: x 5..13 -> cols int(1.25)=1 .. int(3.25)=3 (exclusive) -> cols 1,2 ; y 0..8 -> rows 0,1
    cells = box_cells(torch.tensor([[5.0, 0.0, 13.0, 8.0]]), 4, 4, 5)[0]
    expected = torch.zeros(4, 5, dtype=torch.bool)
    expected[0:2, 1:3] = True
    assert torch.equal(cells, expected)


def test_degenerate_box_marks_one_cell():
    for box in ([9.0, 9.0, 9.0, 9.0], [9.0, 9.0, 10.0, 10.5]):  # zero-size and sub-stride
        cells = box_cells(torch.tensor([box]), 4, 5, 5)[0]
        assert cells.sum() == 1 and cells[2, 2]


def test_object_masks_levels_padding_and_empty_images():
    # batch of 3 padded to 64x96: image 0 has a small box (P2) and a 128 box (P3); image 1 none; image 2 small
    boxes = [
        torch.tensor([[0.0, 0.0, 8.0, 4.0], [0.0, 0.0, 128.0, 128.0]]),
        torch.zeros(0, 4),
        torch.tensor([[16.0, 8.0, 24.0, 16.0]]),
    ]
    sizes = {name: (-(-64 // s), -(-96 // s)) for name, s in LEVELS.items()}
    masks = object_masks(boxes, sizes, LEVELS)
    assert list(masks) == list(LEVELS)
    for name, (h, w) in sizes.items():
        assert masks[name].shape == (3, h, w) and masks[name].dtype == torch.bool
    p2, p3 = masks["P2"], masks["P3"]
    assert p2[0, 0, 0:2].all() and p2[0].sum() == 2  # the 8x4 box: cols 0..1 of row 0 only
    assert p3[0].all()  # the 128 box covers all of P3 (clipped to the 8x12 map: 0..16 -> all rows/cols)
    assert not masks["P4"].any() and not masks["P5"].any() and not masks["P6"].any()
    assert not any(m[1].any() for m in masks.values())  # no boxes -> all background
    assert p2[2].sum() == 4 and p2[2, 2:4, 4:6].all()
    # padding beyond a 40x40 image stays background on every level
    small = object_masks([torch.tensor([[0.0, 0.0, 40.0, 40.0]])], sizes, LEVELS)
    assert small["P2"][0, :10, :10].all() and small["P2"][0].sum() == 100


def test_split_anchors_and_fgfi_mask():
    sizes = {"P3": (2, 2), "P4": (1, 1)}
    # P3 cells of stride 8 with one 8x8 anchor each; P4 one 16x16 anchor
    p3 = torch.tensor([[[[0, 0, 8, 8]], [[8, 0, 16, 8]]], [[[0, 8, 8, 16]], [[8, 8, 16, 16]]]], dtype=torch.float)
    p4 = torch.tensor([[[[0, 0, 16, 16]]]], dtype=torch.float)
    flat = torch.cat([p3.reshape(-1, 4), p4.reshape(-1, 4)])
    anchors = split_anchors(flat, sizes)
    assert torch.equal(anchors["P3"], p3) and torch.equal(anchors["P4"], p4)
    # box 0..10 x 0..8 (side 8.9 -> P3, its one level): IoUs with P3 anchors 64/80=0.8, 16/128=0.125, 0, 0
    # -> max 0.8, thresh 0.4 -> cell (0,0); nothing on P4 (not its level)
    masks = fgfi_masks([torch.tensor([[0.0, 0.0, 10.0, 8.0]]), torch.zeros(0, 4)], anchors, phi=0.5)
    assert masks["P3"][0].tolist() == [[True, False], [False, False]]
    assert masks["P4"][0].tolist() == [[False]]
    assert not masks["P3"][1].any() and not masks["P4"][1].any()
    # phi = 0.1 admits the 0.125 anchor too
    assert fgfi_masks([torch.tensor([[0.0, 0.0, 10.0, 8.0]])], anchors, phi=0.1)["P3"][0].tolist() == [
        [True, True],
        [False, False],
    ]
    # global (the original FGFI): one max over all levels (0.8); the P4 anchor has IoU 80/256 = 0.31 < 0.4
    glob = fgfi_masks([torch.tensor([[0.0, 0.0, 10.0, 8.0]])], anchors, phi=0.5, assign="global")
    assert glob["P3"][0].tolist() == [[True, False], [False, False]] and not glob["P4"].any()
    glob = fgfi_masks([torch.tensor([[0.0, 0.0, 10.0, 8.0]])], anchors, phi=0.3, assign="global")
    assert glob["P4"][0].tolist() == [[True]]  # 0.31 > 0.3 * 0.8 once the threshold is global
    with pytest.raises(ValueError, match="anchors"):
        split_anchors(flat[:-1], sizes)
    with pytest.raises(ValueError, match="fgfi_assign"):
        fgfi_masks([torch.zeros(0, 4)], anchors, assign="all")


# ------------------------------------------------------------------------ FGFI against a hand computation
ZOO_STRIDES = {"P2": 4, "P3": 8, "P4": 16, "P5": 32, "P6": 64}


def zoo_anchors(height=800, width=1216):
    """The zoo's Faster R-CNN anchors (sizes 32..512, ratios 0.5/1/2) on a height x width input, per level."""
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.image_list import ImageList

    gen = AnchorGenerator(tuple((s,) for s in (32, 64, 128, 256, 512)), ((0.5, 1.0, 2.0),) * 5)
    sizes = {name: (-(-height // s), -(-width // s)) for name, s in ZOO_STRIDES.items()}
    maps = [torch.zeros(1, 1, *sizes[name]) for name in ZOO_STRIDES]
    flat = gen(ImageList(torch.zeros(1, 3, height, width), [(height, width)]), maps)[0]
    return split_anchors(flat, sizes)


def brute_force_fgfi(box, stride, rows, cols, size, phi=0.5):
    """The same FGFI mask on one level, written independently: torchvision's anchor shapes by their formula
    (w = round(size / sqrt(r) / 2) * 2 ...), scalar IoUs in Python, best IoU over the level, threshold."""
    import math

    shapes = []
    for ratio in (0.5, 1.0, 2.0):
        h_ratio = math.sqrt(ratio)
        half_w, half_h = round(size / h_ratio / 2), round(size * h_ratio / 2)
        shapes.append((half_w, half_h))
    x1, y1, x2, y2 = box
    area = (x2 - x1) * (y2 - y1)

    def iou(cx, cy, hw, hh):
        ix = max(0.0, min(x2, cx + hw) - max(x1, cx - hw))
        iy = max(0.0, min(y2, cy + hh) - max(y1, cy - hh))
        inter = ix * iy
        return inter / (area + 4 * hw * hh - inter)

    # only cells within reach of the box can overlap it; the rest have IoU 0
    reach = max(max(s) for s in shapes)
    ys = range(max(0, int((y1 - reach) // stride)), min(rows, int((y2 + reach) // stride) + 2))
    xs = range(max(0, int((x1 - reach) // stride)), min(cols, int((x2 + reach) // stride) + 2))
    ious = {(y, x): [iou(x * stride, y * stride, hw, hh) for hw, hh in shapes] for y in ys for x in xs}
    best = max(max(v) for v in ious.values())
    return {cell for cell, values in ious.items() if any(v > phi * best for v in values)}, best


def test_fgfi_issue_example_40x50_box_marks_79_cells_on_p2_only():
    """Issue 14's example: 800x1216 input, the zoo's anchors, one 40x50 box (x 100..140, y 100..150).

    By hand: the box has sqrt(40 * 50) = 44.7 < 112 -> P2 (stride 4; anchors 46x22, 32x32, 22x46 centred at
    (4x, 4y)). Best IoU: a 32x32 anchor inside the box, 1024 / 2000 = 0.512; threshold 0.256. A 32x32 anchor passes
    when its overlap I = ox * oy > 0.256 * 3024 / 1.256 = 616.4, a 22x46 or 46x22 one when I > 613.9, with ox, oy
    the overlaps per axis (e.g. a 32x32 anchor at cx = 112 overlaps x 100..140 by 28). Counting cells (x = cx / 4)
    where at least one anchor passes gives, per column x, rows y:
    """
    by_hand = {
        26: range(29, 34),
        27: range(28, 36),
        28: range(27, 37),
        29: range(26, 37),
        30: range(26, 37),
        31: range(26, 37),
        32: range(27, 37),
        33: range(28, 36),
        34: range(29, 34),
    }
    expected = {(y, x) for x, rows in by_hand.items() for y in rows}
    assert len(expected) == 79  # 5 + 8 + 10 + 11 + 11 + 11 + 10 + 8 + 5
    box = [100.0, 100.0, 140.0, 150.0]
    anchors = zoo_anchors()
    masks = fgfi_masks([torch.tensor([box])], anchors, phi=0.5)
    marked = {tuple(c) for c in masks["P2"][0].nonzero().tolist()}
    assert marked == expected
    assert [int(m.sum()) for m in masks.values()] == [79, 0, 0, 0, 0]  # the issue: 79 / 54 / 92 / 84 / 59 before
    cells, best = brute_force_fgfi(box, 4, 200, 304, 32)
    assert cells == expected and abs(best - 0.512) < 1e-9
    # the original FGFI's single max over all levels: P2's 0.512 is the best; P3's 64x64 anchors reach
    # 2000 / 4096 = 0.488 > 0.256, so P3 cells are imitated too
    glob = fgfi_masks([torch.tensor([box])], anchors, phi=0.5, assign="global")
    assert {tuple(c) for c in glob["P2"][0].nonzero().tolist()} == expected and glob["P3"].any()


def test_fgfi_large_box_marks_only_its_own_level():
    """A 400x500 box (the issue: 12,264 P2 cells before the fix) has sqrt(wh) = 447.2 -> P4 with this project's
    rule (the official rule's +1 gives sqrt(401 * 501) = 448.2 -> P5; see docs/distill.md); it marks exactly the
    cells an independent brute-force computation on P4 finds, and nothing elsewhere."""
    box = [100.0, 100.0, 500.0, 600.0]
    anchors = zoo_anchors()
    masks = fgfi_masks([torch.tensor([box])], anchors, phi=0.5)
    assert [bool(m.any()) for m in masks.values()] == [False, False, True, False, False]
    cells, best = brute_force_fgfi(box, 16, 50, 76, 128)
    assert {tuple(c) for c in masks["P4"][0].nonzero().tolist()} == cells
    assert abs(best - 128 * 128 / 200000) < 1e-9 and len(cells) == int(masks["P4"].sum())


def test_fgfi_level_rule_k0_and_empty_images():
    anchors = zoo_anchors(256, 256)
    box = torch.tensor([[40.0, 40.0, 80.0, 90.0]])  # side 44.7: P2 with k0 = 4 (floor(1.67) -> 2); P3 with k0 = 6
    assert fgfi_masks([box], anchors)["P2"].any()
    shifted = fgfi_masks([box], anchors, k0=6)
    assert not shifted["P2"].any() and shifted["P3"].any()
    empty = fgfi_masks([torch.zeros(0, 4), box], anchors)
    assert not any(m[0].any() for m in empty.values()) and empty["P2"][1].any()


def test_stage_masks_mark_every_box_on_every_stage():
    boxes = [torch.tensor([[0.0, 0.0, 8.0, 4.0], [0.0, 0.0, 64.0, 64.0]]), torch.zeros(0, 4)]
    strides = {"layer3": 16, "layer4": 32}
    masks = stage_masks(boxes, {"layer3": (4, 6), "layer4": (2, 3)}, strides)
    assert masks["layer3"].shape == (2, 4, 6) and masks["layer4"].shape == (2, 2, 3)
    assert masks["layer3"][0, :4, :4].all() and masks["layer3"][0].sum() == 16  # the 64 box; the 8x4 one inside
    assert masks["layer4"][0, :2, :2].all() and masks["layer4"][0].sum() == 4
    assert not masks["layer3"][1].any() and not masks["layer4"][1].any()
