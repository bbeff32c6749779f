"""DeFeat distillation: masks, losses, adapters, the two-stage and one-stage distillers; usable in your own loop.

    from defeat.distill import DeFeatDistiller, decoupled_feature_loss, object_masks
"""

from defeat.distill.adapters import FeatureAdapters, init_adapter_
from defeat.distill.losses import (
    FEATURE_MODES, FEATURE_NORMS, PROPOSAL_MODES, decoupled_feature_loss, decoupled_proposal_loss, imitation_term,
    masked_squared_error, sigmoid_kl, softmax_kl, squared_distance)
from defeat.distill.masks import assign_levels, box_cells, fgfi_masks, object_masks, split_anchors
from defeat.distill.base import TeacherStudentModule, kd_scale_at
from defeat.distill.two_stage import DeFeatDistiller, check_compatible
from defeat.distill.one_stage import OneStageDistiller
from defeat.distill.build import build_distiller

__all__ = ["DeFeatDistiller", "OneStageDistiller", "build_distiller", "FEATURE_MODES", "FEATURE_NORMS", "FeatureAdapters", "PROPOSAL_MODES", "assign_levels", "box_cells", "check_compatible",
           "decoupled_feature_loss", "decoupled_proposal_loss", "fgfi_masks", "imitation_term", "init_adapter_", "kd_scale_at",
           "masked_squared_error", "object_masks", "sigmoid_kl", "softmax_kl", "split_anchors", "squared_distance", "TeacherStudentModule"]
