"""Detector zoo: torchvision Faster R-CNN, RetinaNet and FCOS on ResNet-FPN backbones, by short name.

The zoo's names are ``<family>_r<depth>_fpn`` with family in ``faster_rcnn | retinanet | fcos`` and depth in
18/34/50/101/152, e.g. ``faster_rcnn_r50_fpn``; torchvision's own names (``fasterrcnn_resnet50_fpn_v2``,
``fasterrcnn_mobilenet_v3_large_fpn``, ...) go to :mod:`defeat.models.torchvision_zoo`. Every family uses contiguous labels ``1..K`` with 0 as
background, so the model is built with ``K + 1`` class outputs (for one-stage heads output 0 never fires).

From scratch the backbone needs *trainable* normalisation. torchvision's ``resnet_fpn_backbone()`` uses
FrozenBatchNorm and 3 trainable stages, which on random weights means no normalisation at all and two
frozen random stages; we build the ResNet ourselves with the chosen norm layer and train every stage.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial
from typing import Callable

from torch import nn
from torchvision.models import resnet
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN, _resnet_fpn_extractor
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops import misc as misc_ops
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from defeat.config import ModelConfig
from defeat.models.families import FAMILIES, LEVELS
from defeat.models.torchvision_zoo import OFFICIAL, build_torchvision_detector, is_torchvision_name

DEPTHS = (18, 34, 50, 101, 152)
_NAME = re.compile(r"^(faster_rcnn|retinanet|fcos)_r(\d+)_fpn$")


@dataclass(frozen=True)
class DetectorSpec:
    family: str
    depth: int

    @property
    def levels(self) -> dict[str, int]:
        """FPN output level name -> stride, in the order the backbone returns them."""
        return LEVELS[self.family]


def parse_name(name: str) -> DetectorSpec:
    """``'faster_rcnn_r50_fpn'`` -> ``DetectorSpec('faster_rcnn', 50)``; a clear error otherwise."""
    match = _NAME.match(name)
    if not match or int(match.group(2)) not in DEPTHS:
        choices = ", ".join(f"{f}_r{{{','.join(map(str, DEPTHS))}}}_fpn" for f in FAMILIES)
        raise ValueError(f"model.name: unknown detector {name!r} (expected one of {choices}, or a torchvision "
                         f"name: {', '.join(OFFICIAL)}, {{fasterrcnn,retinanet,fcos}}_resnet{{18,34,101,152}}_fpn)")
    return DetectorSpec(match.group(1), int(match.group(2)))


def norm_layer_for(norm: str) -> Callable[[int], nn.Module]:
    """The per-channel normalisation used inside the ResNet (and the RetinaNet head for ``gn``)."""
    if norm == "gn":
        return partial(nn.GroupNorm, 32)
    if norm in ("bn", "syncbn"):  # syncbn: converted after building, see engine.distributed
        return nn.BatchNorm2d
    if norm == "frozen_bn":
        return misc_ops.FrozenBatchNorm2d
    raise ValueError(f"model.norm: unknown normalisation {norm!r}")


def _load_resnet(depth: int, norm: str, pretrained: bool) -> resnet.ResNet:
    weights = None
    if pretrained:
        weights = resnet.__dict__[f"ResNet{depth}_Weights"].IMAGENET1K_V1
    norm_layer = norm_layer_for(norm)
    try:
        model = resnet.__dict__[f"resnet{depth}"](weights=weights, norm_layer=norm_layer)
    except (OSError, RuntimeError) as err:  # URLError is an OSError
        if pretrained:
            raise RuntimeError(
                f"model.pretrained_backbone: could not get torchvision's ImageNet weights for resnet{depth} "
                f"({type(err).__name__}: {err}); are you offline? Put the file in $TORCH_HOME/hub/checkpoints "
                "or set model.pretrained_backbone=false") from None
        raise
    return model


def build_backbone(spec: DetectorSpec, cfg: ModelConfig) -> BackboneWithFPN:
    """ResNet + FPN with 256 output channels: P2-P6 for Faster R-CNN, P3-P7 (from P5) for one-stage."""
    if (cfg.pretrained_backbone or cfg.backbone_weights.lower() != "none") and cfg.norm == "gn":
        raise ValueError("model.norm=gn: ImageNet backbone weights are BatchNorm weights; use model.norm=frozen_bn "
                         "or bn with them")
    trainable = 5 if cfg.trainable_layers is None else cfg.trainable_layers
    if trainable > 5:
        raise ValueError(f"model.trainable_layers: a ResNet has 5 stages, got {trainable}")
    body = _load_resnet(spec.depth, cfg.norm, cfg.pretrained_backbone)
    if spec.family == "faster_rcnn":
        returned, extra = [1, 2, 3, 4], LastLevelMaxPool()
    else:
        returned, extra = [2, 3, 4], LastLevelP6P7(256, 256)
    return _resnet_fpn_extractor(body, trainable, returned_layers=returned, extra_blocks=extra)


def _anchor_generator(spec: DetectorSpec, cfg: ModelConfig) -> AnchorGenerator:
    if len(cfg.anchor_sizes) != len(spec.levels):
        raise ValueError(f"model.anchor_sizes: need {len(spec.levels)} sizes (one per level "
                         f"{'/'.join(spec.levels)}), got {cfg.anchor_sizes}")
    if spec.family == "faster_rcnn":
        sizes = tuple((s,) for s in cfg.anchor_sizes)
    elif spec.family == "retinanet":  # three octave scales per level, as in the RetinaNet paper
        sizes = tuple((s, int(s * 2 ** (1 / 3)), int(s * 2 ** (2 / 3))) for s in cfg.anchor_sizes)
    else:  # FCOS is anchor-free: one "anchor" per location marks the location and its stride
        sizes = tuple((s,) for s in cfg.anchor_sizes)
    ratios = tuple(float(r) for r in cfg.anchor_ratios) if spec.family != "fcos" else (1.0,)  # h/w
    return AnchorGenerator(sizes, (ratios,) * len(sizes))


def build_detector(cfg: ModelConfig, num_classes: int) -> nn.Module:
    """Build the detector named ``cfg.name`` for ``num_classes`` foreground classes (labels 1..K)."""
    if num_classes < 1:
        raise ValueError(f"num_classes: need at least one class, got {num_classes}")
    if is_torchvision_name(cfg.name):
        model = build_torchvision_detector(cfg, num_classes + 1, pretrained=uses_pretrained_weights(cfg))
        return nn.SyncBatchNorm.convert_sync_batchnorm(model) if cfg.norm == "syncbn" else model
    spec = parse_name(cfg.name)
    backbone = build_backbone(spec, cfg)
    anchors = _anchor_generator(spec, cfg)
    common = dict(min_size=cfg.min_size, max_size=cfg.max_size, num_classes=num_classes + 1)
    if spec.family == "faster_rcnn":
        model = FasterRCNN(
            backbone, rpn_anchor_generator=anchors,
            rpn_pre_nms_top_n_train=cfg.rpn_pre_nms_top_n_train, rpn_post_nms_top_n_train=cfg.rpn_post_nms_top_n_train,
            rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n_test, rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n_test,
            rpn_batch_size_per_image=cfg.rpn_batch_size_per_image, box_batch_size_per_image=cfg.box_batch_size_per_image,
            box_detections_per_img=cfg.box_detections_per_img, box_score_thresh=cfg.box_score_thresh, **common)
    elif spec.family == "retinanet":
        head_norm = partial(nn.GroupNorm, 32) if cfg.norm == "gn" else None
        head = RetinaNetHead(256, anchors.num_anchors_per_location()[0], num_classes + 1, norm_layer=head_norm)
        model = RetinaNet(backbone, anchor_generator=anchors, head=head, score_thresh=cfg.box_score_thresh,
                          detections_per_img=cfg.box_detections_per_img, **common)
    else:  # FCOSHead already uses GroupNorm(32) in its towers
        model = FCOS(backbone, anchor_generator=anchors, score_thresh=cfg.box_score_thresh,
                     detections_per_img=cfg.box_detections_per_img, **common)
    if cfg.norm == "syncbn":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def uses_pretrained_weights(cfg: ModelConfig) -> bool:
    """Whether weights will be loaded into the model built from ``cfg`` (torchvision's pretrained conventions)."""
    return cfg.weights.lower() != "none" or cfg.backbone_weights.lower() != "none" or cfg.pretrained_backbone


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
