import urllib.error

import pytest
import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from defeat.config import ModelConfig
from defeat.models import build_detector, fpn_features, levels_of, model_spec
from defeat.models.spec import RESNET_LEVELS as LEVELS


@pytest.mark.parametrize("family", ["faster_rcnn", "retinanet", "fcos"])
@pytest.mark.parametrize("backbone", ["tiny", "r18"])
def test_every_family_trains_and_predicts(family, backbone):
    torch.manual_seed(0)
    cfg = ModelConfig(name=f"{family}_{backbone}_fpn", min_size=64, max_size=64, anchor_sizes=[8, 16, 32, 64, 128])
    model = build_detector(cfg, num_classes=5)
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    targets = [
        {"boxes": torch.tensor([[4.0, 4.0, 30.0, 30.0]]), "labels": torch.tensor([5])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]  # an empty image
    losses = model(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    # From scratch every backbone parameter trains and has trainable normalisation (no FrozenBatchNorm).
    assert all(p.requires_grad for p in model.backbone.parameters())
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in model.backbone.body.modules())
    assert all(p.grad is not None for p in model.backbone.body.layer1.parameters())
    model.eval()
    out = model(images)
    assert set(out[0]) == {"boxes", "scores", "labels"}
    x, _ = model.transform(images)
    feats = fpn_features(model, x.tensors)
    assert list(feats) == levels_of(model) == list(LEVELS[family])
    assert all(f.shape[1] == model_spec(cfg.name).fpn_channels for f in feats.values())
    widths = [f.shape[-1] for f in feats.values()]
    assert widths == sorted(widths, reverse=True) and widths[0] == 64 // list(LEVELS[family].values())[0]


def test_depths_and_sampling_sizes():
    cfg = ModelConfig(name="faster_rcnn_r50_fpn", norm="bn", box_batch_size_per_image=64, rpn_post_nms_top_n_train=123)
    model = build_detector(cfg, num_classes=3)
    assert model.roi_heads.box_predictor.cls_score.out_features == 4  # K + background
    assert model.roi_heads.fg_bg_sampler.batch_size_per_image == 64
    assert model.rpn._post_nms_top_n["training"] == 123
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.backbone.body.modules())
    assert model_spec("fcos_r152_fpn").depth == 152 and model_spec("fcos_resnet152_fpn").canonical == "fcos_r152_fpn"


@pytest.mark.parametrize("name", ["faster_rcnn_r51_fpn", "yolo_r50_fpn", "retinanet_r50"])
def test_unknown_names_are_refused(name):
    with pytest.raises(ValueError, match=f"unknown detector '{name}'"):
        build_detector(ModelConfig(name=name), 3)


def test_anchor_sizes_must_match_levels():
    with pytest.raises(ValueError, match="model.anchor_sizes: faster_rcnn_r18_fpn needs 5 entries"):
        build_detector(ModelConfig(anchor_sizes=[16, 32]), 3)


def test_pretrained_offline_gives_a_clear_error(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError, match="could not get torchvision's ImageNet weights for resnet18.*offline"):
        build_detector(ModelConfig(pretrained_backbone=True, norm="frozen_bn", trainable_layers=3), 3)
    with pytest.raises(ValueError, match="model.norm=gn: ImageNet backbone weights are BatchNorm weights"):
        build_detector(ModelConfig(pretrained_backbone=True, norm="gn"), 3)
