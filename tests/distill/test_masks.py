"""Object / FGFI masks against hand-computed cases."""

import pytest
import torch

from defeat.distill.masks import assign_levels, box_cells, fgfi_masks, level_number, object_masks, split_anchors

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
    boxes = [torch.tensor([[0.0, 0.0, 8.0, 4.0], [0.0, 0.0, 128.0, 128.0]]),
             torch.zeros(0, 4),
             torch.tensor([[16.0, 8.0, 24.0, 16.0]])]
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
    # box 0..10 x 0..8: IoUs with P3 anchors 64/80=0.8, 16/128=0.125, 0, 0 -> max 0.8, thresh 0.4 -> cell (0,0)
    masks = fgfi_masks([torch.tensor([[0.0, 0.0, 10.0, 8.0]]), torch.zeros(0, 4)], anchors, phi=0.5)
    assert masks["P3"][0].tolist() == [[True, False], [False, False]]
    assert masks["P4"][0].tolist() == [[True]]  # its only anchor is the best one there
    assert not masks["P3"][1].any() and not masks["P4"][1].any()
    # phi = 0.1 admits the 0.125 anchor too
    assert fgfi_masks([torch.tensor([[0.0, 0.0, 10.0, 8.0]])], anchors, phi=0.1)["P3"][0].tolist() == \
        [[True, True], [False, False]]
    with pytest.raises(ValueError, match="anchors"):
        split_anchors(flat[:-1], sizes)
