"""Tiny Faster R-CNNs (a few thousand weights, zoo-shaped P2-P6 FPN) so that distiller tests run in seconds."""

from collections import OrderedDict

import pytest
import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool


def tiny_faster_rcnn(num_classes: int = 3, channels: int = 16, seed: int = 0, size: int = 64) -> FasterRCNN:
    """A FasterRCNN with strides 4/8/16/32 (+ P6 by max-pool) like the zoo's, but tiny."""
    torch.manual_seed(seed)
    body = nn.Sequential(
        OrderedDict(
            layer1=nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.ReLU()),
            layer2=nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU()),
            layer3=nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU()),
            layer4=nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU()),
        )
    )
    backbone = BackboneWithFPN(
        body, {f"layer{i}": str(i - 1) for i in range(1, 5)}, [8] * 4, channels, extra_blocks=LastLevelMaxPool()
    )
    anchors = AnchorGenerator(((8,), (16,), (32,), (64,), (128,)), ((0.5, 1.0, 2.0),) * 5)
    return FasterRCNN(
        backbone,
        rpn_anchor_generator=anchors,
        min_size=size,
        max_size=size,
        box_head=TwoMLPHead(channels * 49, 32),
        box_predictor=FastRCNNPredictor(32, num_classes + 1),
        rpn_pre_nms_top_n_train=100,
        rpn_post_nms_top_n_train=50,
        rpn_batch_size_per_image=32,
        box_batch_size_per_image=32,
    )


def batch(with_empty: bool = True):
    """Two 64x64 images: one with a small and a large box, one with no boxes (all background)."""
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 64, 64, generator=g), torch.rand(3, 56, 64, generator=g)]
    targets = [
        {"boxes": torch.tensor([[4.0, 6.0, 20.0, 18.0], [10.0, 8.0, 60.0, 62.0]]), "labels": torch.tensor([1, 3])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    if not with_empty:
        targets[1] = {"boxes": torch.tensor([[30.0, 20.0, 50.0, 40.0]]), "labels": torch.tensor([2])}
    return images, targets


@pytest.fixture
def tiny():
    return tiny_faster_rcnn
