"""The detectors this project builds: Faster R-CNN, RetinaNet and FCOS on ResNet-FPN (or toy tiny / small) backbones.

Names and everything they determine come from :func:`defeat.models.spec.model_spec`; torchvision's official builders
(COCO weights) are built by :mod:`defeat.models.torchvision_zoo`. Every family uses contiguous labels ``1..K`` with
0 as background, so the model is built with ``K + 1`` class outputs (for one-stage heads output 0 never fires).

From scratch the backbone needs *trainable* normalisation. torchvision's ``resnet_fpn_backbone()`` uses
FrozenBatchNorm and 3 trainable stages, which on random weights means no normalisation at all and two
frozen random stages; we build the ResNet ourselves with the chosen norm layer and, from scratch, train every stage
(with loaded weights torchvision's convention: FrozenBatchNorm, the last 3 stages).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable

from torch import nn
from torchvision.models import resnet
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN, _resnet_fpn_extractor
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops import misc as misc_ops
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from defeat.config import ModelConfig
from defeat.models.spec import DEPTHS, ModelSpec, model_spec
from defeat.models.torchvision_zoo import build_torchvision_detector, detector_kwargs

__all__ = ["DEPTHS", "build_detector", "count_parameters", "norm_in_state", "norm_layer_for", "uses_pretrained_weights"]
#: channels of the toy backbones' four stages (strides 4, 8, 16, 32): small is tiny at twice the width
TOY_WIDTHS = {"tiny": (16, 32, 32, 64), "small": (32, 64, 64, 128)}


def norm_layer_for(norm: str) -> Callable[[int], nn.Module]:
    """The per-channel normalisation used inside the backbone (and the RetinaNet head for ``gn``).

    GroupNorm uses 32 groups, fewer where a layer has under 64 channels (the tiny backbone), so that a group always
    holds at least 2 channels: a 1x1 map at batch 1 then still has a spread to normalise."""
    if norm == "gn":
        return lambda channels: nn.GroupNorm(math.gcd(32, max(1, channels // 2)), channels)
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
                "or set model.pretrained_backbone=false"
            ) from None
        raise
    return model


def _toy_body(widths: tuple[int, ...], norm: str) -> nn.Module:
    """Four conv-norm-ReLU stages ``layer1..layer4`` of strides 4, 8, 16, 32 (a ResNet's stage names and strides)."""
    norm_layer, stages, channels = norm_layer_for(norm), OrderedDict(), 3
    for index, (width, stride) in enumerate(zip(widths, (4, 2, 2, 2)), start=1):
        stages[f"layer{index}"] = nn.Sequential(
            nn.Conv2d(channels, width, 3, stride, 1, bias=False), norm_layer(width), nn.ReLU(inplace=True)
        )
        channels = width
    return nn.Sequential(stages)


def build_backbone(spec: ModelSpec, cfg: ModelConfig) -> BackboneWithFPN:
    """ResNet (or toy) + FPN: P2-P6 for Faster R-CNN, P3-P7 (from P5) for one-stage."""
    pretrained = uses_pretrained_weights(cfg)
    norm = spec.resolved_norm(cfg.norm, _imagenet_backbone(cfg))
    if _imagenet_backbone(cfg) and norm == "gn":
        raise ValueError(
            "model.norm=gn: ImageNet backbone weights are BatchNorm weights; use model.norm=frozen_bn, "
            "bn or auto with them"
        )
    returned = [1, 2, 3, 4] if spec.family == "faster_rcnn" else [2, 3, 4]
    extra = LastLevelMaxPool() if spec.family == "faster_rcnn" else LastLevelP6P7(spec.fpn_channels, spec.fpn_channels)
    if spec.backbone in TOY_WIDTHS:
        if _imagenet_backbone(cfg):
            raise ValueError(f"model.backbone_weights: {spec.name} has a toy backbone; no ImageNet weights fit it")
        layers, widths = {f"layer{k}": str(i) for i, k in enumerate(returned)}, TOY_WIDTHS[spec.backbone]
        return BackboneWithFPN(
            _toy_body(widths, norm), layers, [widths[k - 1] for k in returned], spec.fpn_channels, extra_blocks=extra
        )
    trainable = (3 if pretrained else 5) if cfg.trainable_layers is None else cfg.trainable_layers
    if trainable > 5:
        raise ValueError(f"model.trainable_layers: a ResNet has 5 stages, got {trainable}")
    body = _load_resnet(spec.depth, norm, cfg.pretrained_backbone)
    return _resnet_fpn_extractor(body, trainable, returned_layers=returned, extra_blocks=extra)


def anchor_generator(spec: ModelSpec, cfg: ModelConfig) -> AnchorGenerator:
    """The anchors of ``spec`` from the config's one base size per level and its ratios (see the spec)."""
    sizes = spec.anchor_sizes(cfg.anchor_sizes)
    return AnchorGenerator(sizes, (spec.anchor_ratios(cfg.anchor_ratios),) * len(sizes))


def build_detector(cfg: ModelConfig, num_classes: int) -> nn.Module:
    """Build the detector named ``cfg.name`` for ``num_classes`` foreground classes (labels 1..K)."""
    if num_classes < 1:
        raise ValueError(f"num_classes: need at least one class, got {num_classes}")
    spec = model_spec(cfg.name)
    if spec.is_yolo:
        raise ValueError(
            f"model.name: {cfg.name} is an Ultralytics YOLO model: `defeat train` / `defeat distill` train it with "
            "Ultralytics' own trainer (docs/yolo.md); it is not a torchvision detector"
        )
    if spec.builder == "torchvision":
        model = build_torchvision_detector(cfg, spec, num_classes + 1, pretrained=uses_pretrained_weights(cfg))
    else:
        model = _build_zoo(spec, cfg, num_classes + 1)
    return nn.SyncBatchNorm.convert_sync_batchnorm(model) if cfg.norm == "syncbn" else model


def _build_zoo(spec: ModelSpec, cfg: ModelConfig, outputs: int) -> nn.Module:
    backbone = build_backbone(spec, cfg)
    anchors = anchor_generator(spec, cfg)
    common = dict(detector_kwargs(cfg, spec.family), num_classes=outputs)
    if spec.family == "faster_rcnn":
        if spec.box_head_size != 1024:  # torchvision's TwoMLPHead is 1024 wide; the toy models' are narrow
            common.update(
                box_head=TwoMLPHead(spec.fpn_channels * 7 * 7, spec.box_head_size),
                box_predictor=FastRCNNPredictor(spec.box_head_size, outputs),
                num_classes=None,
            )
        return FasterRCNN(backbone, rpn_anchor_generator=anchors, **common)
    if spec.family == "retinanet":
        norm = spec.resolved_norm(cfg.norm, _imagenet_backbone(cfg))
        head_norm = norm_layer_for("gn") if norm == "gn" else None
        head = RetinaNetHead(spec.fpn_channels, anchors.num_anchors_per_location()[0], outputs, norm_layer=head_norm)
        return RetinaNet(backbone, anchor_generator=anchors, head=head, **common)
    return FCOS(backbone, anchor_generator=anchors, **common)  # FCOSHead already has GroupNorm(32) in its towers


def uses_pretrained_weights(cfg: ModelConfig) -> bool:
    """Whether weights will be loaded into the model built from ``cfg`` (torchvision's pretrained conventions)."""
    return cfg.weights.lower() != "none" or cfg.backbone_weights.lower() != "none" or cfg.pretrained_backbone


def norm_in_state(keys) -> str:
    """The backbone normalisation a zoo detector's state-dict keys were saved from: ``bn`` (running statistics and
    a batch counter), ``frozen_bn`` (statistics only) or ``gn`` (neither)."""
    body = [k for k in keys if k.startswith("backbone.body.")]
    if not any(k.endswith("running_mean") for k in body):
        return "gn"
    return "bn" if any(k.endswith("num_batches_tracked") for k in body) else "frozen_bn"


def _imagenet_backbone(cfg: ModelConfig) -> bool:
    return cfg.backbone_weights.lower() != "none" or cfg.pretrained_backbone


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
