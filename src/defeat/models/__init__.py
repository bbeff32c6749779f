"""Detectors: the zoo (torchvision detectors on ResNet-FPN backbones, by short name), torchvision's own detectors
by their names (:mod:`defeat.models.torchvision_zoo`), class mapping (:mod:`defeat.models.classes`) and what differs between
detector families (levels, strides, features, heads), in :mod:`defeat.models.families`."""

from defeat.models.families import (FAMILIES, LEVELS, anchor_generator_of, common_levels, family_of, fpn_features,
                                    level_pairs, levels_of, name_levels, num_classes_of, strides_of)
from defeat.models.zoo import DEPTHS, DetectorSpec, build_detector, count_parameters, parse_name

__all__ = ["DEPTHS", "FAMILIES", "LEVELS", "DetectorSpec", "anchor_generator_of", "build_detector", "common_levels",
           "count_parameters", "family_of", "fpn_features", "level_pairs", "levels_of", "name_levels", "num_classes_of", "parse_name",
           "strides_of"]
