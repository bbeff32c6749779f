"""The models' tensor ops (defeat.models.ops) against torchvision's."""

import pytest
import torch
from torchvision.ops import roi_align

from defeat.models.ops import roi_align_matmul


@pytest.mark.parametrize("aligned", [False, True])
def test_matmul_roi_align_matches_torchvision(aligned):
    torch.manual_seed(0)
    feat = torch.randn(2, 8, 12, 10, dtype=torch.float64, requires_grad=True)
    boxes = torch.tensor(
        [
            [0, 1.0, 2.0, 30.0, 40.0],
            [1, 0.0, 0.0, 40.0, 48.0],
            [0, 35.0, 40.0, 39.9, 47.9],
            [1, 5.0, 5.0, 5.2, 5.1],  # smaller than a cell (torchvision forces 1x1 when not aligned)
            [0, -6.0, -8.0, 12.0, 50.0],
            [1, 38.0, 44.0, 60.0, 70.0],
        ],  # partly outside the map
        dtype=torch.float64,
    )
    for scale, ratio in ((0.25, 2), (0.25, 1), (0.5, 3)):
        a = roi_align(feat, boxes, (7, 7), scale, ratio, aligned)
        b = roi_align_matmul(feat, boxes, (7, 7), scale, ratio, aligned)
        grad = torch.randn_like(a)
        (ga,) = torch.autograd.grad(a, feat, grad)
        (gb,) = torch.autograd.grad(b, feat, grad)
        assert torch.allclose(a, b, atol=1e-10) and torch.allclose(ga, gb, atol=1e-10)


def test_matmul_roi_align_edge_cases():
    feat = torch.randn(2, 3, 6, 5)
    no_rois = torch.zeros(0, 5)
    assert roi_align_matmul(feat, no_rois, 2, 1.0, 2).shape == (0, 3, 2, 2)
    only_second = torch.tensor([[1, 0.0, 0.0, 4.0, 4.0]])  # the first image has no RoI
    assert torch.allclose(
        roi_align_matmul(feat, only_second, 3, 1.0, 2), roi_align(feat, only_second, 3, 1.0, 2), atol=1e-6
    )
    adaptive = torch.tensor([[0, 0.5, 0.5, 4.0, 5.0]])  # sampling_ratio <= 0: torchvision's own kernel
    assert torch.equal(roi_align_matmul(feat, adaptive, 2, 1.0, -1), roi_align(feat, adaptive, 2, 1.0, -1))
