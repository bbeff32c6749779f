"""Per-channel teacher-student distance: hand-computed cases, masks, ordering, summary, layout checks."""

import math

import pytest
import torch

from defeat.analysis import channel_distance as cd
from defeat.distill.masks import object_masks


def test_constant_features_known_mask():
    # teacher channel c is the constant c + 1; the student is 0 on object pixels and 2 on background pixels
    n, c, h, w = 2, 3, 4, 5
    teacher = torch.arange(1.0, c + 1).view(1, c, 1, 1).expand(n, c, h, w)
    obj = torch.zeros(n, h, w, dtype=torch.bool)
    obj[0, 1:3, 1:4] = True  # 6 pixels
    obj[1, 0, 0] = True  # 1 pixel
    student = torch.where(obj[:, None], 0.0, 2.0).expand(n, c, h, w)
    d_obj, d_bg = cd.channel_distance(teacher, student, obj)
    assert torch.allclose(d_obj, torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    assert torch.allclose(d_bg, torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64))
    sums = cd.region_channel_sums(teacher, student, obj)
    assert (sums.obj_count, sums.bg_count) == (7, 2 * h * w - 7)


def test_pooled_over_pixels_and_padding_excluded():
    # image 0: one object pixel at distance 1; image 1: three object pixels at distance 5 -> pooled (1 + 15) / 4
    teacher = torch.zeros(2, 1, 2, 2)
    student = torch.zeros(2, 1, 2, 2)
    obj = torch.zeros(2, 2, 2, dtype=torch.bool)
    obj[0, 0, 0] = True
    student[0, 0, 0, 0] = 1.0
    obj[1, 0, 0] = obj[1, 0, 1] = obj[1, 1, 0] = True
    student[1, 0] = torch.tensor([[5.0, -5.0], [5.0, 100.0]])  # (1, 1) of image 1 is padding below
    valid = torch.ones(2, 2, 2, dtype=torch.bool)
    valid[1, 1, 1] = False
    d_obj, d_bg = cd.channel_distance(teacher, student, obj, valid)
    assert d_obj.item() == pytest.approx(16 / 4)
    assert d_bg.item() == pytest.approx(0.0)  # the 100 sits in the padding
    sums = cd.region_channel_sums(teacher, student, obj, valid)
    assert (sums.obj_count, sums.bg_count) == (4, 3)


def test_empty_region_is_nan_and_sums_add():
    t = torch.ones(1, 2, 3, 3)
    s = torch.zeros(1, 2, 3, 3)
    none = torch.zeros(1, 3, 3, dtype=torch.bool)
    d_obj, d_bg = cd.channel_distance(t, s, none)
    assert torch.isnan(d_obj).all() and torch.allclose(d_bg, torch.ones(2, dtype=torch.float64))
    total = cd.region_channel_sums(t, s, none) + cd.region_channel_sums(t, s, ~none)
    assert (total.obj_count, total.bg_count) == (9, 9)
    with pytest.raises(ValueError, match="shapes differ"):
        cd.region_channel_sums(t, torch.zeros(1, 3, 3, 3), none)


def test_valid_mask_from_image_sizes():
    valid = cd.valid_mask([(10, 17), (16, 32)], stride=4, height=4, width=8)
    assert valid[0].sum() == 3 * 5 and valid[0, :3, :5].all()  # ceil(10/4)=3 rows, ceil(17/4)=5 cols
    assert valid[1].all()


def test_region_masks_all_boxes_vs_assigned_rule():
    sizes = {"P2": (16, 16), "P3": (8, 8), "P4": (4, 4), "P5": (2, 2), "P6": (1, 1)}
    strides = {"P2": 4, "P3": 8, "P4": 16, "P5": 32, "P6": 64}
    small = [0.0, 0.0, 16.0, 8.0]  # side < 112 -> P2
    big = [0.0, 0.0, 64.0, 200.0]  # sqrt(64 * 200) = 113 -> P3
    boxes = [torch.tensor([small, big]), torch.zeros(0, 4)]
    every = cd.region_masks(boxes, sizes, strides, rule="all")
    assigned = cd.region_masks(boxes, sizes, strides, rule="assigned")
    expected_p2 = torch.zeros(16, 16, dtype=torch.bool)
    expected_p2[:, :16] = True  # the big box covers rows 0:50 -> clamped 0:16, cols 0:16
    assert torch.equal(every["P2"][0], expected_p2)
    only_small = torch.zeros(16, 16, dtype=torch.bool)
    only_small[0:2, 0:4] = True
    assert torch.equal(assigned["P2"][0], only_small)
    # the 'assigned' rule is exactly the distiller's mask function
    reference = object_masks(boxes, sizes, strides)
    assert all(torch.equal(assigned[k], reference[k]) for k in sizes)
    assert not every["P2"][1].any() and not assigned["P3"][1].any()
    with pytest.raises(ValueError, match="mask rule"):
        cd.region_masks(boxes, sizes, strides, rule="boxes")


def _student(name, mode, obj, bg):
    return cd.StudentDistance(
        name, mode, "raw", torch.tensor(obj, dtype=torch.float64), torch.tensor(bg, dtype=torch.float64), 10, 20
    )


def test_seed_order_and_summary_ratios():
    given = [
        _student("dec", "decoupled", [1.0, 1.0], [2.0, 2.0]),
        _student("fg", "fgfi", [3.0, 3.0], [3.0, 3.0]),
        _student("base", "none", [2.0, 6.0], [4.0, 8.0]),
        _student("obj", "object", [1.0, 3.0], [6.0, 6.0]),
    ]
    ordered = cd.seed_order(given)
    assert [s.name for s in ordered] == ["base", "obj", "dec", "fg"]
    rows = cd.summary_rows(ordered, "base")
    by = {(r["student"], r["region"]): r for r in rows}
    assert by[("base", "object")]["mean_distance"] == 4.0 and by[("base", "object")]["ratio_to_baseline"] == 1.0
    assert by[("obj", "object")]["ratio_to_baseline"] == pytest.approx(0.5)
    assert by[("obj", "background")]["ratio_to_baseline"] == pytest.approx(1.0)
    assert by[("dec", "background")]["ratio_to_baseline"] == pytest.approx(1 / 3)
    assert by[("dec", "object")]["pixels"] == 10 and by[("dec", "background")]["pixels"] == 20
    assert all(r["ratio_to_baseline"] is None for r in cd.summary_rows(ordered, None))
    with pytest.raises(ValueError, match="baseline"):
        cd.summary_rows(ordered, "nobody")
    nan_row = cd.summary_rows([_student("x", "none", [math.nan], [1.0])], "x")[0]
    assert math.isnan(nan_row["mean_distance"])


def test_check_layout_says_what_differs():
    levels = ["P2", "P3", "P4", "P5", "P6"]
    cd.check_layout(levels, 256, levels, 256)
    with pytest.raises(ValueError, match=r"levels P3/P4/P5/P6/P7 vs the teacher's P2/P3/P4/P5/P6"):
        cd.check_layout(levels, 256, ["P3", "P4", "P5", "P6", "P7"], 256)
    with pytest.raises(ValueError, match="128 channels vs the teacher's 256"):
        cd.check_layout(levels, 256, levels, 128, what="s")


def test_least_squares_map_recovers_a_linear_teacher_and_skips_padding():
    """A teacher that is exactly W^T [S; 1] on the valid pixels: the fitted map gives it back (distance 0 there),
    whatever the padding holds; the map goes from the student's channels to the teacher's."""
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(3, 4, 6, 5, generator=gen)
    weights = torch.randn(5, 7, generator=gen, dtype=torch.float64)  # 4 channels + bias -> 7
    teacher = cd.apply_linear_map(student, weights)
    valid = torch.ones(3, 6, 5, dtype=torch.bool)
    valid[:, 4:, :] = False
    teacher[:, :, 4:, :] = 100.0  # padding: no influence on the fit
    fitted = cd.NormalEquations.zeros(4, 7).add(teacher, student, valid).solve(ridge=0.0)
    assert torch.allclose(fitted, weights, atol=1e-9)
    d_obj, d_bg = cd.channel_distance(teacher, cd.apply_linear_map(student, fitted), valid.clone(), valid)
    assert d_obj.shape == (7,) and float(d_obj.max()) < 1e-9 and torch.isnan(d_bg).all()  # all valid cells: object
    # accumulated image by image = fitted on all at once
    parts = cd.NormalEquations.zeros(4, 7)
    for n in range(3):
        parts = parts.add(teacher[n : n + 1], student[n : n + 1], valid[n : n + 1])
    assert torch.allclose(parts.solve(ridge=0.0), fitted, atol=1e-9)
