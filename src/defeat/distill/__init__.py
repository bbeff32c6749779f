"""DeFeat distillation: masks, losses, adapters and the distiller; usable in your own loop.

Other feature-KD methods (CWD, PKD, Ultralytics' score-weighted MSE) as feature modes: :mod:`defeat.distill.methods`.

    from defeat.config import DistillSettings
    from defeat.distill import DeFeatDistiller, decoupled_feature_loss, object_masks

Everything here works on tensors and modules; nothing reads or writes files (checkpoints: ``defeat.engine``).
"""

from defeat.config import DistillSettings
from defeat.distill.adapters import FeatureAdapters, init_adapter_
from defeat.distill.base import TeacherStudentModule, kd_scale_at
from defeat.distill.calibrate import WeightCalibration, calibrate_weights, choose_weights, measure_terms
from defeat.distill.distiller import DeFeatDistiller, build_distiller, check_boxes
from defeat.distill.heads import (
    AnchorHead,
    HeadSamples,
    HeadTerm,
    ProposalHead,
    check_anchors_align,
    check_roi_heads_align,
    matched_idxs,
    rpn_proposals,
    teacher_scores,
)
from defeat.distill.losses import (
    KD_LOSS_KEYS,
    backbone_feature_loss,
    decoupled_feature_loss,
    decoupled_proposal_loss,
    feature_loss_keys,
    imitation_term,
    is_kd_loss,
    masked_squared_error,
    proposal_loss_keys,
    sigmoid_kl,
    softmax_kl,
    squared_distance,
)
from defeat.distill.masks import assign_levels, box_cells, fgfi_masks, object_masks, split_anchors, stage_masks
from defeat.distill.methods import (
    METHOD_LOSSES,
    channel_wise_divergence,
    cwd_loss,
    pearson_feature_loss,
    pkd_loss,
    score_loss,
    score_weighted_mse,
    teacher_confidence,
)

__all__ = [
    "KD_LOSS_KEYS",
    "METHOD_LOSSES",
    "channel_wise_divergence",
    "cwd_loss",
    "pearson_feature_loss",
    "pkd_loss",
    "score_loss",
    "score_weighted_mse",
    "teacher_confidence",
    "teacher_scores",
    "AnchorHead",
    "DeFeatDistiller",
    "DistillSettings",
    "FeatureAdapters",
    "HeadSamples",
    "HeadTerm",
    "ProposalHead",
    "TeacherStudentModule",
    "WeightCalibration",
    "assign_levels",
    "backbone_feature_loss",
    "box_cells",
    "build_distiller",
    "calibrate_weights",
    "choose_weights",
    "measure_terms",
    "rpn_proposals",
    "stage_masks",
    "check_anchors_align",
    "check_boxes",
    "check_roi_heads_align",
    "decoupled_feature_loss",
    "decoupled_proposal_loss",
    "feature_loss_keys",
    "fgfi_masks",
    "imitation_term",
    "init_adapter_",
    "is_kd_loss",
    "kd_scale_at",
    "masked_squared_error",
    "matched_idxs",
    "object_masks",
    "proposal_loss_keys",
    "sigmoid_kl",
    "softmax_kl",
    "split_anchors",
    "squared_distance",
]
