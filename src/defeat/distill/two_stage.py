"""``DeFeatDistiller``: a torchvision Faster R-CNN student trained from a frozen Faster R-CNN teacher.

The distiller is what the training loop trains: ``forward(images, targets)`` in train mode returns the
student's four detection losses plus the distillation terms, already weighted, as one dict. Its registered
submodules are only ``student`` and ``adapters``, so its ``state_dict``, its optimizer and DDP never see the
teacher; the teacher is held outside the module tree, frozen and in eval mode, and only moved along with
``.to()``.

One training step, top to bottom (see :meth:`DeFeatDistiller.forward`):

1. the student's transform resizes, normalises and batches the images once; both backbones see that tensor;
2. student backbone+FPN; teacher backbone+FPN under ``no_grad``;
3. student RPN (its losses) and the student RoI sampler's proposals and labels;
4. student box head and predictor on those proposals (Fast R-CNN losses);
5. the feature term on the FPN levels with the object masks of the GT boxes (:mod:`defeat.distill.masks`);
6. the proposal term: the teacher's RoI pooling, box head and classifier on the *same* sampled proposals
   with the teacher's FPN maps, and the KL split by those proposals' labels.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.roi_heads import fastrcnn_loss

from defeat.config import DistillConfig
from defeat.distill.adapters import FeatureAdapters
from defeat.distill.base import KD_SCHEDULES, TeacherStudentModule, kd_scale_at  # noqa: F401 (re-exported)
from defeat.distill.losses import (
    FEATURE_MODES, FEATURE_NORMS, PROPOSAL_MODES, decoupled_feature_loss, decoupled_proposal_loss)
from defeat.distill.masks import fgfi_masks, object_masks, split_anchors
from defeat.models.zoo import LEVELS

def check_settings(settings: DistillConfig) -> None:
    """Reject unknown modes, negative weights and non-positive temperatures with a one-line ValueError."""
    for value, allowed, key in ((settings.feature_mode, FEATURE_MODES, "feature_mode"),
                                (settings.proposal_mode, PROPOSAL_MODES, "proposal_mode"),
                                (settings.feature_norm, FEATURE_NORMS, "feature_norm"),
                                (settings.weight_decay_policy, KD_SCHEDULES, "weight_decay_policy")):
        if value not in allowed:
            raise ValueError(f"distill.{key}: unknown value {value!r} (choose from {', '.join(allowed)})")
    for key in ("alpha_obj", "alpha_bg", "alpha_all", "beta_obj", "beta_bg", "beta_all", "stop_step"):
        if getattr(settings, key) < 0:
            raise ValueError(f"distill.{key}: must be >= 0, got {getattr(settings, key)}")
    for key in ("temperature_obj", "temperature_bg", "temperature_all", "fgfi_phi"):
        if getattr(settings, key) <= 0:
            raise ValueError(f"distill.{key}: must be > 0, got {getattr(settings, key)}")


def check_compatible(student: nn.Module, teacher: nn.Module, where: str = "teacher") -> None:
    """Teacher and student must both be Faster R-CNNs with the same levels, classes and normalisation."""
    for name, model in (("student", student), (where, teacher)):
        if not isinstance(model, FasterRCNN):
            raise ValueError(f"{name}: DeFeatDistiller needs a torchvision FasterRCNN, got {type(model).__name__}")
    s_levels = student.roi_heads.box_roi_pool.featmap_names
    t_levels = teacher.roi_heads.box_roi_pool.featmap_names
    s_feats = len(student.rpn.anchor_generator.sizes)
    t_feats = len(teacher.rpn.anchor_generator.sizes)
    if s_feats != t_feats or s_levels != t_levels:
        raise ValueError(f"{where}: FPN levels differ from the student's ({t_feats} levels, RoI levels {t_levels} vs "
                         f"{s_feats} levels, RoI levels {s_levels})")
    s_classes = student.roi_heads.box_predictor.cls_score.out_features
    t_classes = teacher.roi_heads.box_predictor.cls_score.out_features
    if s_classes != t_classes:
        raise ValueError(f"{where}: predicts {t_classes - 1} classes, the student {s_classes - 1}")
    if (list(student.transform.image_mean) != list(teacher.transform.image_mean)
            or list(student.transform.image_std) != list(teacher.transform.image_std)):
        raise ValueError(f"{where}: image normalisation differs from the student's; both must see the same tensor")


class DeFeatDistiller(TeacherStudentModule):
    """DeFeat for two-stage detectors (see the module docstring for the step).

    Args:
        student: a torchvision ``FasterRCNN`` (trained).
        teacher: a torchvision ``FasterRCNN`` with the same FPN levels and classes (frozen here: its parameters
            get ``requires_grad=False`` and it is put in eval mode for good).
        settings: the ``distill`` config section (modes, weights, temperatures, schedule).
        max_steps: length of training, for the linear/cosine KD-weight schedules.
    """

    def __init__(self, student: FasterRCNN, teacher: FasterRCNN, settings: DistillConfig | None = None,
                 max_steps: int = 0) -> None:
        settings = settings or DistillConfig()
        check_settings(settings)
        check_compatible(student, teacher)
        super().__init__(student, teacher, settings, max_steps)
        self.levels = list(LEVELS["faster_rcnn"])[: len(student.rpn.anchor_generator.sizes)]
        self.strides = {name: LEVELS["faster_rcnn"][name] for name in self.levels}
        self.adapters = (FeatureAdapters(self.levels, student.backbone.out_channels, teacher.backbone.out_channels)
                         if settings.feature_mode != "none" else None)

    # ----------------------------------------------------------------------------------------- forward
    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None):
        """Train mode: dict of weighted losses. Eval mode: the student's detections."""
        if not self.training:
            return self.student(images, targets)
        if targets is None:
            raise ValueError("DeFeatDistiller: targets are required in training mode")
        student, teacher, s = self.student, self.teacher, self.settings
        scale = self.kd_scale
        use_features = s.feature_mode != "none" and scale > 0
        use_proposals = s.proposal_mode != "none" and scale > 0

        # 1-2. one transformed batch, both backbones
        images, targets = student.transform(images, targets)
        _check_boxes(targets)
        s_feats = student.backbone(images.tensors)
        t_feats = None
        if use_features or use_proposals:
            with torch.no_grad():
                t_feats = teacher.backbone(images.tensors)

        # 3. student RPN and RoI sampling
        proposals, losses = student.rpn(images, s_feats, targets)
        roi = student.roi_heads
        proposals, _, labels, regression_targets = roi.select_training_samples(proposals, targets)

        # 4. student box head
        box_features = roi.box_head(roi.box_roi_pool(s_feats, proposals, images.image_sizes))
        class_logits, box_regression = roi.box_predictor(box_features)
        loss_classifier, loss_box_reg = fastrcnn_loss(class_logits, box_regression, labels, regression_targets)
        losses = {**losses, "loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}

        # 5. decoupled features
        if use_features:
            feature_losses = self.feature_loss(images, targets, s_feats, t_feats)
            losses.update({k: scale * v for k, v in feature_losses.items()})
        elif s.feature_mode != "none":  # schedule at 0: same keys, and the adapters stay in the graph for DDP
            zero = sum(p.sum() for p in self.adapters.parameters()) * 0.0
            losses.update({k: zero for k in feature_loss_keys(s.feature_mode)})

        # 6. decoupled proposals
        if use_proposals:
            with torch.no_grad():
                t_roi = teacher.roi_heads
                t_box = t_roi.box_head(t_roi.box_roi_pool(t_feats, proposals, images.image_sizes))
                teacher_logits, _ = t_roi.box_predictor(t_box)
            proposal_losses = decoupled_proposal_loss(
                class_logits, teacher_logits, torch.cat(labels), s.proposal_mode, s.beta_obj, s.beta_bg, s.beta_all,
                s.temperature_obj, s.temperature_bg, s.temperature_all)
            losses.update({k: scale * v for k, v in proposal_losses.items()})
        elif s.proposal_mode != "none":
            zero = class_logits.sum() * 0.0
            losses.update({k: zero for k in proposal_loss_keys(s.proposal_mode)})
        return losses

    def feature_masks(self, images, targets: list[dict[str, Tensor]], s_feats: "OrderedDict[str, Tensor]"
                      ) -> dict[str, Tensor]:
        """Per level ``(N, H, W)`` bool masks: DeFeat's object masks, or FGFI's anchor masks in ``fgfi`` mode."""
        sizes = {name: tuple(f.shape[-2:]) for name, f in zip(self.levels, s_feats.values())}
        boxes = [t["boxes"] for t in targets]
        if self.settings.feature_mode == "fgfi":
            anchors = self.student.rpn.anchor_generator(images, list(s_feats.values()))[0]
            return fgfi_masks(boxes, split_anchors(anchors, sizes), phi=self.settings.fgfi_phi)
        return object_masks(boxes, sizes, self.strides, k0=self.settings.level_k0)

    def feature_loss(self, images, targets, s_feats, t_feats) -> dict[str, Tensor]:
        """The (unscaled) feature term on all levels: adapters(student) vs teacher, under the masks."""
        s = self.settings
        named_student = dict(zip(self.levels, s_feats.values()))
        adapted = self.adapters(named_student)
        teacher_maps = list(t_feats.values())
        if s.feature_mode == "all":  # one uniform term: every pixel counts
            masks = [torch.ones(t.shape[0], *t.shape[-2:], dtype=torch.bool, device=t.device) for t in teacher_maps]
        else:
            level_masks = self.feature_masks(images, targets, s_feats)
            masks = [level_masks[name] for name in self.levels]
        return decoupled_feature_loss([adapted[name] for name in self.levels], teacher_maps, masks,
                                      s.feature_mode, s.alpha_obj, s.alpha_bg, s.alpha_all, s.feature_norm)


def feature_loss_keys(mode: str) -> tuple[str, ...]:
    return {"none": (), "object": ("loss_feat_obj",), "background": ("loss_feat_bg",), "all": ("loss_feat_all",),
            "decoupled": ("loss_feat_obj", "loss_feat_bg"), "fgfi": ("loss_feat_obj",)}[mode]


def proposal_loss_keys(mode: str) -> tuple[str, ...]:
    return {"none": (), "positive": ("loss_kd_pos",), "negative": ("loss_kd_neg",), "all": ("loss_kd_all",),
            "decoupled": ("loss_kd_pos", "loss_kd_neg")}[mode]


def _check_boxes(targets: list[dict[str, Tensor]]) -> None:
    """The check torchvision's GeneralizedRCNN does: no box with non-positive width or height."""
    for index, target in enumerate(targets):
        boxes = target["boxes"]
        bad = (boxes[:, 2:] <= boxes[:, :2]).any(dim=1)
        if bad.any():
            raise ValueError(f"targets[{index}]: degenerate box {boxes[bad][0].tolist()} (width or height <= 0)")
