"""Detector zoo: torchvision detectors on ResNet-FPN backbones, built from a short name."""

from defeat.models.zoo import (DEPTHS, FAMILIES, LEVELS, DetectorSpec, build_detector, count_parameters,
                               fpn_features, levels_of, parse_name)

__all__ = ["DEPTHS", "FAMILIES", "LEVELS", "DetectorSpec", "build_detector", "count_parameters", "fpn_features",
           "levels_of", "parse_name"]
