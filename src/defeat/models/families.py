"""What differs between detector families, asked of a *built* model: its family, FPN levels and strides (measured),
FPN features, anchor generator and classifier width. (What a model *name* means lives in :mod:`defeat.models.spec`.)

Every other module asks these functions instead of testing model classes itself. A model of no known family
is an error that names it, never a silent default. Adding a family means adding it to :mod:`defeat.models.spec`
and to the ``isinstance`` table of :func:`family_of` (and, for distillation, one head class in ``defeat.distill``).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet

from defeat.models.spec import FAMILIES  # noqa: F401  (re-exported)

_CLASSES = ((FasterRCNN, "faster_rcnn"), (RetinaNet, "retinanet"), (FCOS, "fcos"))

#: ResNet stages inside ``backbone.body`` (torchvision's IntermediateLayerGetter) and their strides
BACKBONE_STAGE_STRIDES = {"layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}


def family_of(model: nn.Module, where: str = "model") -> str:
    """``'faster_rcnn' | 'retinanet' | 'fcos'`` for a torchvision detector; a ValueError naming ``where`` otherwise."""
    for cls, family in _CLASSES:
        if isinstance(model, cls):
            return family
    raise ValueError(f"{where}: expected a torchvision FasterRCNN, RetinaNet or FCOS, got {type(model).__name__}")


def anchor_generator_of(model: nn.Module, where: str = "model"):
    """The anchor generator: the RPN's for Faster R-CNN, the model's own for one-stage detectors."""
    return model.rpn.anchor_generator if family_of(model, where) == "faster_rcnn" else model.anchor_generator


def strides_of(model: nn.Module, where: str = "model") -> dict[str, int]:
    """Level name -> stride of a detector's FPN outputs, in order; level ``Pk`` has stride ``2**k`` (``P2..P6``
    for the ResNet Faster R-CNNs, ``P3..P7`` one-stage, ``P4..P6`` for torchvision's MobileNetV3-FPN).

    Measured, not looked up: the backbone runs once on a blank image and each stride is the image side over the
    map's side, so any torchvision backbone (or a user's own) gets its true levels. Cached per backbone.
    """
    return dict(_probe(model, where)[0])


def fpn_output_keys(model: nn.Module, where: str = "model") -> list[str]:
    """torchvision's keys of the backbone's outputs (``'0', '1', ..., 'pool'``), in the order of :func:`strides_of`."""
    return list(_probe(model, where)[1])


_STRIDES: weakref.WeakKeyDictionary[nn.Module, tuple[dict[str, int], list[str]]] = weakref.WeakKeyDictionary()
_PROBE_SIDE = 256


def _probe(model: nn.Module, where: str) -> tuple[dict[str, int], list[str]]:
    family_of(model, where)
    backbone = model.backbone
    if backbone not in _STRIDES:
        _STRIDES[backbone] = _measure_strides(backbone, where)
    return _STRIDES[backbone]


def _measure_strides(backbone: nn.Module, where: str) -> tuple[dict[str, int], list[str]]:
    parameter = next(backbone.parameters())
    probe = torch.zeros(1, 3, _PROBE_SIDE, _PROBE_SIDE, device=parameter.device, dtype=parameter.dtype)
    was_training = backbone.training
    backbone.eval()  # BatchNorm must not learn from the probe
    try:
        with torch.no_grad():
            maps = backbone(probe)
    finally:
        backbone.train(was_training)
    strides = {}
    for key, feature in maps.items():
        stride = _PROBE_SIDE // feature.shape[-1]
        if stride < 1 or stride & (stride - 1) or stride * feature.shape[-1] != _PROBE_SIDE:
            raise ValueError(
                f"{where}: FPN output {key!r} has side {feature.shape[-1]} for a {_PROBE_SIDE}-px image, "
                "not a power-of-two stride"
            )
        name = f"P{stride.bit_length() - 1}"
        suffix = iter("bcdefgh")
        while name in strides:  # MobileNetV3-FPN has two maps at stride 32: P5 and P5b
            name = f"P{stride.bit_length() - 1}{next(suffix)}"
        strides[name] = stride
    return strides, list(maps)


def levels_of(model: nn.Module, where: str = "model") -> list[str]:
    """Level names of a detector's FPN outputs, e.g. ``['P2', ..., 'P6']`` for Faster R-CNN."""
    return list(strides_of(model, where))


def fpn_features(model: nn.Module, images: Tensor) -> dict[str, Tensor]:
    """The FPN maps of a detector for a batched, already-transformed image tensor, keyed ``P2..`` / ``P3..``.

    torchvision keys its FPN outputs '0', '1', ..., 'pool' / 'p6', 'p7'; we name them by pyramid level.
    """
    return name_levels(model, model.backbone(images))


def pixel_fpn_features(model: nn.Module, images: Tensor) -> dict[str, Tensor]:
    """The FPN maps of a torchvision detector for a batch of RGB images in [0, 1] *as they are*: normalised with the
    model's own mean and std, not resized (so that a map of stride s covers the same pixels as another model's map
    of stride s on the same batch: a torchvision teacher for a YOLO student). Keyed ``P2..`` / ``P3..``."""
    family_of(model, "teacher")
    mean = torch.as_tensor(model.transform.image_mean, dtype=images.dtype, device=images.device)
    std = torch.as_tensor(model.transform.image_std, dtype=images.dtype, device=images.device)
    return fpn_features(model, (images - mean[:, None, None]) / std[:, None, None])


def name_levels(model: nn.Module, features: dict[str, Tensor]) -> dict[str, Tensor]:
    """torchvision's feature dict of ``model``'s backbone, re-keyed by pyramid level (same order)."""
    return dict(zip(levels_of(model), features.values()))


def num_classes_of(model: nn.Module, where: str = "model") -> int:
    """Outputs of the classifier, the background (or unused) class 0 included."""
    if family_of(model, where) == "faster_rcnn":
        predictor = model.roi_heads.box_predictor  # a class-restricted predictor says its own width
        return getattr(predictor, "num_classes", None) or predictor.cls_score.out_features
    return model.head.classification_head.num_classes


def level_pairs(student: nn.Module, teacher: nn.Module, where: str = "teacher") -> dict[str, str]:
    """Student level -> the teacher level of the same stride, for every student level that has one (two student
    maps of one stride, as MobileNetV3-FPN's P5/P5b, both imitate that teacher level); a ValueError with the reason
    when no stride is shared."""
    return pair_levels(strides_of(student, "student"), strides_of(teacher, where), where)


def pair_levels(s_levels: dict[str, int], t_levels: dict[str, int], where: str = "teacher") -> dict[str, str]:
    """Student level -> the teacher level of the same stride, from each side's level -> stride (any two families:
    a YOLO student's P3-P5 and a torchvision teacher's FPN); a ValueError naming both sides' strides when none is
    shared."""
    by_stride: dict[int, str] = {}
    for name, stride in t_levels.items():
        by_stride.setdefault(stride, name)
    pairs = {name: by_stride[stride] for name, stride in s_levels.items() if stride in by_stride}
    if not pairs:
        show = lambda levels: ", ".join(f"{n} (stride {s})" for n, s in levels.items())
        raise ValueError(
            f"{where}: no FPN stride in common with the student (teacher {show(t_levels)}; student "
            f"{show(s_levels)}); DeFeat imitates features level by level at equal strides, so this "
            "pair cannot be distilled"
        )
    return pairs


def common_levels(student: nn.Module, teacher: nn.Module, where: str = "teacher") -> list[str]:
    """The student's levels that have a teacher level of the same stride (see :func:`level_pairs`)."""
    return list(level_pairs(student, teacher, where))


def backbone_stages_of(model: nn.Module, where: str = "model") -> dict[str, int]:
    """ResNet stage name -> stride of the stages the detector's backbone body runs (``layer1..layer4``).

    torchvision's ``BackboneWithFPN.body`` keeps the ResNet's layers up to the last one the FPN reads (all four
    for the zoo's detectors; the one-stage ones still run ``layer1``, it only does not feed the FPN).
    """
    family_of(model, where)
    body = getattr(getattr(model, "backbone", None), "body", None)
    if body is None:
        return {}
    children = dict(body.named_children())
    return {name: stride for name, stride in BACKBONE_STAGE_STRIDES.items() if name in children}


def backbone_stage_channels(model: nn.Module, stage: str) -> int:
    """Output channels of a backbone stage: the ``out_channels`` of its last convolution (in a ResNet stage the
    last block's projection or downsample conv, both of the stage's width)."""
    convs = [m for m in getattr(model.backbone.body, stage).modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"backbone stage {stage}: no convolution to read its channel count from")
    return convs[-1].out_channels


@contextmanager
def capture_backbone_stages(model: nn.Module, stages: list[str]) -> Iterator[dict[str, Tensor]]:
    """Within the block, every forward of ``model.backbone`` records the outputs of ``stages`` (ResNet layer
    names) into the yielded dict; the hooks are removed on exit (the model is left as it was)."""
    captured: dict[str, Tensor] = {}
    body = model.backbone.body
    handles = [
        getattr(body, name).register_forward_hook(
            lambda _module, _inputs, output, name=name: captured.__setitem__(name, output)
        )
        for name in stages
    ]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def default_level_k0(model: nn.Module, where: str = "model") -> int:
    """k0 of the box-to-level rule ``floor(k0 + log2(sqrt(wh) / 224))`` when ``distill.level_k0`` is not set.

    * Faster R-CNN: 4, the RoI-level rule (the official code's, and torchvision's ``MultiScaleRoIAlign``): a
      box's object mask is where its RoI features are pooled from.
    * RetinaNet / FCOS (no RoI pooling): the level made for the box's size by the model's own assignment, rounded
      down as the official rule is (4 = floor(4.81) for Faster R-CNN's 32-px anchors on P2): with ``a`` the first
      level's smallest anchor size, RetinaNet's anchors on P3 fit sides from ``a``, FCOS's P3 takes regression
      distances 4a..8a (sides from ~8a), so ``k0 = floor(3 + log2(224 / a))`` resp. ``floor(3 + log2(224 / (8 a)))``.
      The zoo's default anchors (32 on P3) give RetinaNet 5, the official rule ported to P3-P7 (side < 112 -> P3).
    """
    family = family_of(model, where)
    if family == "faster_rcnn":
        return 4
    first_level = int(next(iter(strides_of(model, where)))[1:])
    size = float(min(anchor_generator_of(model).sizes[0]))
    made_for = size if family == "retinanet" else 8.0 * size
    return math.floor(first_level + math.log2(224.0 / made_for) + 1e-9)


#: the authors' COCO values (R50 students) of the learned feature-KD methods (``distill.feature_mode`` fgd / mgd,
#: :mod:`defeat.distill.learned_methods`) by student family. FGD: yzd-v/FGD at c03a6cf3, configs/distillers/fgd/
#:   faster_rcnn  fgd_faster_rcnn_r101_fpn_2x_distill_faster_rcnn_r50_fpn_2x_coco.py
#:   retinanet    fgd_retina_r101_fpn_2x_distill_retina_r50_fpn_2x_coco.py
#:   fcos         fgd_fcos_r101_distill_fcos_r50_2x_coco.py
#: MGD: yzd-v/MGD at 2c9da0b2, det/configs/distillers/mgd/
#:   faster_rcnn  cascade_mask_rcnn_rx101_32x4d_distill_faster_rcnn_r50_fpn_2x_coco.py
#:   retinanet    retina_rx101_64x4d_distill_retina_r50_fpn_2x_coco.py
#:   fcos         (no FCOS config there: the one-stage values, RetinaNet's, also RepPoints' and SOLO's)
LEARNED_KD_DEFAULTS = {
    "faster_rcnn": {
        **{"fgd_temp": 0.5, "fgd_alpha": 5e-5, "fgd_beta": 2.5e-5, "fgd_gamma": 5e-5, "fgd_lambda": 5e-7},
        **{"mgd_alpha": 5e-7, "mgd_lambda": 0.45},
    },
    "retinanet": {
        **{"fgd_temp": 0.5, "fgd_alpha": 1e-3, "fgd_beta": 5e-4, "fgd_gamma": 5e-4, "fgd_lambda": 5e-6},
        **{"mgd_alpha": 2e-5, "mgd_lambda": 0.65},
    },
    "fcos": {
        **{"fgd_temp": 0.8, "fgd_alpha": 1.6e-3, "fgd_beta": 8e-4, "fgd_gamma": 8e-4, "fgd_lambda": 8e-6},
        **{"mgd_alpha": 2e-5, "mgd_lambda": 0.65},
    },
    # Ultralytics YOLO: neither author published a YOLO config; the one-stage (RetinaNet) values stand in
    "yolo": {
        **{"fgd_temp": 0.5, "fgd_alpha": 1e-3, "fgd_beta": 5e-4, "fgd_gamma": 5e-4, "fgd_lambda": 5e-6},
        **{"mgd_alpha": 2e-5, "mgd_lambda": 0.65},
    },
}


def learned_kd_defaults(model: nn.Module | str, where: str = "model") -> dict[str, float]:
    """The FGD / MGD settings fields (``fgd_*``, ``mgd_alpha``, ``mgd_lambda``) at the authors' values for
    ``model``'s family, or for the family named by a string (:data:`LEARNED_KD_DEFAULTS`)."""
    family = model if isinstance(model, str) else family_of(model, where)
    return dict(LEARNED_KD_DEFAULTS[family])
