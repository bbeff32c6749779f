"""torchvision's detectors by name: torchvision's own state dicts, measured levels, pretrained conventions, classes."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models import detection, mobilenet_v3_large
from torchvision.ops.misc import FrozenBatchNorm2d

from defeat.config import ModelConfig
from defeat.models import build_detector, level_pairs, num_classes_of, strides_of
from defeat.models.classes import MergedBackgroundPredictor, keep_classes, outputs_in_state
from defeat.models.spec import OFFICIAL, model_spec


@pytest.mark.parametrize("name", OFFICIAL)
def test_official_names_have_torchvisions_state_dict(name):
    ours = build_detector(ModelConfig(name=name), 4).state_dict()
    theirs = getattr(detection, name)(weights=None, weights_backbone=None, num_classes=5).state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}


def test_levels_are_measured_by_stride():
    mobilenet = build_detector(ModelConfig(name="fasterrcnn_mobilenet_v3_large_fpn"), 3)
    assert strides_of(mobilenet) == {"P5": 32, "P5b": 32, "P6": 64}  # two maps at stride 32, as torchvision has
    r18 = build_detector(ModelConfig(name="fasterrcnn_resnet18_fpn"), 3)
    assert strides_of(r18) == {"P2": 4, "P3": 8, "P4": 16, "P5": 32, "P6": 64}
    retina = build_detector(ModelConfig(name="retinanet_resnet18_fpn"), 3)
    assert strides_of(retina) == {"P3": 8, "P4": 16, "P5": 32, "P6": 64, "P7": 128}
    # both MobileNet maps of stride 32 imitate the ResNet teacher's P5
    assert level_pairs(mobilenet, r18) == {"P5": "P5", "P5b": "P5", "P6": "P6"}
    assert level_pairs(r18, mobilenet) == {"P5": "P5", "P6": "P6"}


def test_pretrained_conventions_follow_torchvision():
    scratch = build_detector(ModelConfig(name="fasterrcnn_resnet50_fpn"), 3)
    assert all(p.requires_grad for p in scratch.parameters())
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in scratch.modules())
    pretrained = build_detector(ModelConfig(name="fasterrcnn_resnet50_fpn", weights="coco.pth"), 3)
    body = pretrained.backbone.body
    assert not any(isinstance(m, nn.BatchNorm2d) for m in body.modules())
    frozen = {n.split(".")[0] for n, p in body.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1", "layer1"}  # torchvision's default: the last 3 stages train
    v2 = build_detector(ModelConfig(name="fasterrcnn_resnet50_fpn_v2", weights="coco.pth", trainable_layers=5), 3)
    assert any(isinstance(m, nn.BatchNorm2d) for m in v2.backbone.body.modules())  # v2 keeps BatchNorm
    assert all(p.requires_grad for p in v2.parameters())
    mobile = build_detector(ModelConfig(name="fasterrcnn_mobilenet_v3_large_fpn", backbone_weights="x.pth"), 3)
    frozen_blocks = {n.split(".")[0] for n, p in mobile.backbone.body.named_parameters() if not p.requires_grad}
    # torchvision's own pretrained assembly, as its builder makes it with weights_backbone set
    reference = detection.backbone_utils._mobilenet_extractor(mobilenet_v3_large(norm_layer=FrozenBatchNorm2d), True, 3)
    expected = {n.split(".")[0] for n, p in reference.body.named_parameters() if not p.requires_grad}
    assert frozen_blocks == expected and frozen_blocks


def test_unknown_names_list_the_choices():
    with pytest.raises(ValueError, match="fasterrcnn_mobilenet_v3_large_fpn"):
        build_detector(ModelConfig(name="fasterrcnn_resnet51_fpn"), 3)
    assert model_spec("fcos_resnet101_fpn").canonical == "fcos_r101_fpn"  # torchvision's spelling: an alias


def test_keep_classes_is_exact_for_faster_rcnn():
    torch.manual_seed(0)
    model = build_detector(ModelConfig(name="fasterrcnn_resnet18_fpn"), 6)  # outputs 0..6
    full = model.roi_heads.box_predictor
    x = torch.randn(5, full.cls_score.in_features)
    scores, deltas = full(x)
    keep_classes(model, [4, 2])
    merged = model.roi_heads.box_predictor
    assert isinstance(merged, MergedBackgroundPredictor) and num_classes_of(model) == 3
    new_scores, new_deltas = merged(x)
    p, q = scores.softmax(1), new_scores.softmax(1)
    torch.testing.assert_close(q[:, 1], p[:, 4])
    torch.testing.assert_close(q[:, 2], p[:, 2])
    torch.testing.assert_close(q[:, 0], p[:, [0, 1, 3, 5, 6]].sum(1))
    torch.testing.assert_close(new_deltas.view(5, 3, 4)[:, 1], deltas.view(5, 7, 4)[:, 4])
    sliced = build_detector(ModelConfig(name="fasterrcnn_resnet18_fpn"), 6)
    keep_classes(sliced, [4, 2], merge_background=False)  # plain layers, standard keys (fine-tuning start)
    assert sliced.roi_heads.box_predictor.cls_score.out_features == 3
    assert outputs_in_state(sliced.state_dict(), "faster_rcnn") == 3


@pytest.mark.parametrize("name", ["retinanet_resnet18_fpn", "fcos_resnet18_fpn"])
def test_keep_classes_slices_one_stage_heads_exactly(name):
    torch.manual_seed(0)
    model = build_detector(ModelConfig(name=name), 5).eval()
    head = model.head.classification_head
    features = [torch.randn(1, 256, 4, 4)]
    before = head(features)  # (N, HWA, C)
    keep_classes(model, [5, 1])
    after = head(features)
    torch.testing.assert_close(after, before[..., [0, 5, 1]])
    assert num_classes_of(model) == 3 and outputs_in_state(model.state_dict(), model_family(name)) == 3


def model_family(name: str) -> str:
    return "retinanet" if name.startswith("retinanet") else "fcos"
