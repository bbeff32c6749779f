"""Detectors: what a name means (:mod:`defeat.models.spec`), the builders (:mod:`defeat.models.zoo` for the
ResNet-FPN and tiny detectors, :mod:`defeat.models.torchvision_zoo` for torchvision's official ones), class
mapping (:mod:`defeat.models.classes`), what differs between built detectors of each family
(:mod:`defeat.models.families`) and the models' ops (:mod:`defeat.models.ops`)."""

from defeat.models.families import (
    anchor_generator_of,
    common_levels,
    family_of,
    fpn_features,
    level_pairs,
    levels_of,
    name_levels,
    num_classes_of,
    strides_of,
)
from defeat.models.spec import DEPTHS, FAMILIES, ModelSpec, family_of_name, model_names, model_spec
from defeat.models.zoo import build_detector, count_parameters

__all__ = [
    "DEPTHS",
    "FAMILIES",
    "ModelSpec",
    "anchor_generator_of",
    "build_detector",
    "common_levels",
    "count_parameters",
    "family_of",
    "family_of_name",
    "fpn_features",
    "level_pairs",
    "levels_of",
    "model_names",
    "model_spec",
    "name_levels",
    "num_classes_of",
    "strides_of",
]
