"""torchvision's official detection builders (the ones with COCO weights), built by torchvision itself.

``fasterrcnn_resnet50_fpn``, ``fasterrcnn_resnet50_fpn_v2``, ``fasterrcnn_mobilenet_v3_large_fpn``,
``fasterrcnn_mobilenet_v3_large_320_fpn``, ``retinanet_resnet50_fpn``, ``retinanet_resnet50_fpn_v2``,
``fcos_resnet50_fpn``: their state dicts are torchvision's, so the official COCO files load into them and an exported
student loads into the stock builder. (torchvision's spelling of other ResNet depths, e.g. ``fasterrcnn_resnet18_fpn``,
is an alias of this project's ``faster_rcnn_r18_fpn``: see :mod:`defeat.models.spec`.)

Built from scratch a model follows torchvision's untrained convention (BatchNorm, every stage trainable); built
``pretrained`` (weights will be loaded: the caller does the I/O) it follows the pretrained one: FrozenBatchNorm in
the backbone body (BatchNorm for the ``_v2`` models, as torchvision does) and only the last ``trainable_layers``
stages trainable (default 3).
"""

from __future__ import annotations

from torch import nn
from torchvision.models import detection
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops.misc import FrozenBatchNorm2d

from defeat.config import ModelConfig
from defeat.models.spec import OFFICIAL, ModelSpec, model_spec

#: torchvision's default for ``trainable_backbone_layers`` with pretrained weights, and the stage counts
DEFAULT_TRAINABLE = 3
MAX_TRAINABLE = {"resnet": 5, "mobilenet": 6}


def torchvision_names() -> list[str]:
    """torchvision's official names (:func:`build_torchvision_detector` builds them)."""
    return list(OFFICIAL)


def torchvision_defaults(name: str) -> dict:
    """The model-section values that give the builder's own behaviour (torchvision's defaults differ from this
    project's small-image ones): transform sizes, RPN numbers, score threshold. E.g. for ``defeat predict``."""
    values = dict(min_size=800, max_size=1333, box_score_thresh=0.05, box_detections_per_img=100)
    if model_spec(name).family == "faster_rcnn":
        values.update(
            rpn_pre_nms_top_n_train=2000,
            rpn_post_nms_top_n_train=2000,
            rpn_pre_nms_top_n_test=1000,
            rpn_post_nms_top_n_test=1000,
            rpn_batch_size_per_image=256,
            box_batch_size_per_image=512,
        )
    if name == "fasterrcnn_mobilenet_v3_large_320_fpn":
        values.update(min_size=320, max_size=640, rpn_pre_nms_top_n_test=150, rpn_post_nms_top_n_test=150)
    return values


def detector_kwargs(cfg: ModelConfig, family: str) -> dict:
    """The model section's transform sizes, RPN / box sampling numbers and thresholds as the keyword arguments of
    torchvision's ``FasterRCNN`` (or ``RetinaNet`` / ``FCOS``): every builder passes them the same way."""
    kwargs = dict(min_size=cfg.min_size, max_size=cfg.max_size)
    if family == "faster_rcnn":
        return dict(
            kwargs,
            rpn_pre_nms_top_n_train=cfg.rpn_pre_nms_top_n_train,
            rpn_post_nms_top_n_train=cfg.rpn_post_nms_top_n_train,
            rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n_test,
            rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n_test,
            rpn_batch_size_per_image=cfg.rpn_batch_size_per_image,
            box_batch_size_per_image=cfg.box_batch_size_per_image,
            box_detections_per_img=cfg.box_detections_per_img,
            box_score_thresh=cfg.box_score_thresh,
        )
    return dict(kwargs, score_thresh=cfg.box_score_thresh, detections_per_img=cfg.box_detections_per_img)


def build_torchvision_detector(cfg: ModelConfig, spec: ModelSpec, num_outputs: int, pretrained: bool) -> nn.Module:
    """torchvision's official detector ``spec`` with ``num_outputs`` class outputs (background included).

    ``pretrained``: build it as torchvision does when weights are loaded (FrozenBatchNorm body, frozen early
    stages); the weights themselves are loaded by the caller. The model section's sizes (``min_size``, the RPN and
    box sampling numbers, score threshold) apply as to the zoo's models; ``anchor_sizes`` / ``anchor_ratios``
    replace the builder's anchors only when changed from the defaults (same number of anchors per location, so
    weights still fit).
    """
    kwargs = detector_kwargs(cfg, spec.family)
    if spec.builder != "torchvision":
        raise ValueError(f"model.name: {cfg.name!r} is not one of torchvision's builders ({', '.join(OFFICIAL)})")
    builder = getattr(detection, spec.canonical)
    model = builder(weights=None, weights_backbone=None, num_classes=num_outputs, **kwargs)
    _replace_anchors(model, cfg, spec)
    if pretrained or cfg.trainable_layers is not None:
        trainable = DEFAULT_TRAINABLE if cfg.trainable_layers is None else cfg.trainable_layers
        freeze_stages(model, trainable)
    if pretrained and not spec.canonical.endswith("_v2"):
        frozen_batchnorm(model.backbone.body)
    return model


def _replace_anchors(model: nn.Module, cfg: ModelConfig, spec: ModelSpec) -> None:
    """The config's anchors where they differ from the defaults (sizes per level by the spec's rule)."""
    defaults = ModelConfig()
    if (
        cfg.anchor_sizes in (defaults.anchor_sizes, spec.default_anchor_sizes)
        and cfg.anchor_ratios == defaults.anchor_ratios
    ):
        return  # the builder's own anchors
    generator = model.rpn.anchor_generator if spec.family == "faster_rcnn" else model.anchor_generator
    ratios = generator.aspect_ratios
    if cfg.anchor_ratios != defaults.anchor_ratios and spec.family != "fcos":
        if len(cfg.anchor_ratios) != len(ratios[0]):
            raise ValueError(
                f"model.anchor_ratios: {cfg.name}'s heads are built for {len(ratios[0])} ratios per "
                f"location; give {len(ratios[0])} (got {cfg.anchor_ratios})"
            )
        ratios = (spec.anchor_ratios(cfg.anchor_ratios),) * len(ratios)
    sizes = generator.sizes
    if cfg.anchor_sizes not in (defaults.anchor_sizes, spec.default_anchor_sizes):
        sizes = spec.anchor_sizes(cfg.anchor_sizes)
        if len(sizes[0]) != len(generator.sizes[0]):  # the heads (and the official weights) fix the count
            example = [list(s) for s in generator.sizes]
            raise ValueError(
                f"model.anchor_sizes: {cfg.name}'s heads are built for {len(generator.sizes[0])} sizes per level; "
                f"give {len(generator.sizes[0])} on every level (its own: {example}), got {[list(s) for s in sizes]}"
            )
    _set_generator(model, spec.family, AnchorGenerator(sizes, ratios))


def _set_generator(model: nn.Module, family: str, generator: AnchorGenerator) -> None:
    if family == "faster_rcnn":
        model.rpn.anchor_generator = generator
    else:
        model.anchor_generator = generator


def frozen_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm2d`` under ``module`` by a ``FrozenBatchNorm2d`` with its statistics, in place.

    torchvision builds pretrained bodies with ``norm_layer=FrozenBatchNorm2d`` (default eps 1e-5); this gives the
    same modules (and state-dict keys, without ``num_batches_tracked``) after building from scratch.
    """
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features)
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, key).copy_(getattr(child, key).detach())
            setattr(module, name, frozen)
        else:
            frozen_batchnorm(child)
    return module


def freeze_stages(model: nn.Module, trainable: int) -> None:
    """torchvision's ``trainable_backbone_layers``: only the last ``trainable`` stages of the body train.

    ResNet (5 stages: conv1+bn1, layer1..layer4), as ``_resnet_fpn_extractor``; MobileNetV3 (6 stages split at
    its strided blocks), as ``_mobilenet_extractor``.
    """
    body = model.backbone.body
    kind = "resnet" if hasattr(body, "layer1") else "mobilenet"
    if not 0 <= trainable <= MAX_TRAINABLE[kind]:
        raise ValueError(f"model.trainable_layers: a {kind} backbone has {MAX_TRAINABLE[kind]} stages, got {trainable}")
    if kind == "resnet":
        train = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable] + (["bn1"] if trainable == 5 else [])
        for name, parameter in body.named_parameters():
            parameter.requires_grad_(any(name.startswith(layer) for layer in train))
        return
    blocks = list(body.children())
    stage_starts = [0] + [i for i, b in enumerate(blocks) if getattr(b, "_is_cn", False)] + [len(blocks) - 1]
    freeze_before = len(blocks) if trainable == 0 else stage_starts[len(stage_starts) - trainable]
    for index, block in enumerate(blocks):
        block.requires_grad_(index >= freeze_before)
