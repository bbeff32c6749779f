"""``OneStageDistiller``: DeFeat for torchvision RetinaNet and FCOS students, and for mixed-family pairs.

The interface is :class:`~defeat.distill.two_stage.DeFeatDistiller`'s: ``OneStageDistiller(student, teacher,
settings, max_steps)``; ``forward(images, targets)`` in train mode returns the student's own detection losses
plus the weighted distillation terms as one dict; the registered submodules are only ``student`` and
``adapters`` (the teacher is held outside the module tree, frozen, in eval mode, and moved along by ``.to()``);
``before_step(step)`` sets the KD-weight schedule. The masks, adapters and losses are the two-stage ones
(:mod:`defeat.distill.masks`, :mod:`~defeat.distill.adapters`, :mod:`~defeat.distill.losses`).

One training step, top to bottom (see :meth:`OneStageDistiller.forward`):

1. the student's transform resizes, normalises and batches the images once; both backbones see that tensor;
2. student backbone+FPN; teacher backbone+FPN under ``no_grad``;
3. the student's head, its anchors (FCOS: one "anchor" per location), torchvision's own assignment of the
   anchors to the GT boxes, and the student's detection losses from its head's ``compute_loss`` with that
   assignment - exactly what torchvision's ``RetinaNet.forward`` / ``FCOS.forward`` compute;
4. the feature term on the distilled FPN levels with the object masks of the GT boxes;
5. the head term: the teacher's classification head on the teacher's FPN maps gives logits on the *same*
   anchors (same input tensor, same anchor generator: checked), and a per-class sigmoid KL at temperature T
   is averaged over the student's positive anchors (weight ``beta_obj``) and negative anchors (``beta_bg``).

Settings (the ``distill`` config section, shared with the two-stage distiller):

* ``feature_mode`` / ``alpha_*`` / ``feature_norm`` / ``fgfi_phi``: as for two-stage, on P3-P7.
* ``level_k0``: each GT box goes to the one level ``floor(k0 + log2(sqrt(wh) / 224))`` clamped to the
  distilled levels - the two-stage rule (:func:`~defeat.distill.masks.assign_levels`) generalised to the
  available levels. With P3-P7 and k0 = 4 boxes of side < 224 px go to P3, < 448 to P4, < 896 to P5,
  < 1792 to P6, else P7 (so on the 320-px embedded benchmark every object is on P3, and P4-P7 are all
  background). Chosen so that ``level_k0`` means the same for every family (the default 4 is the FPN
  paper's / official code's value). RetinaNet's anchors put an object of side s on level ~log2(s / r) with
  r = anchor size / stride (r = 4 with the zoo's default sizes, which ``level_k0: 6`` follows; r = 2 with
  the embedded configs' sizes [16, ..., 256], which ``level_k0: 7`` follows).
* ``proposal_mode`` / ``beta_*`` / ``temperature_*``: the head term, on anchors (RetinaNet) or locations
  (FCOS) instead of proposals. ``positive``: anchors the matcher marks positive (RetinaNet IoU >= 0.5 or the
  best anchor of a box; FCOS: torchvision's centre sampling and scale ranges); ``negative``: RetinaNet IoU <
  0.4, FCOS every other location; ``all``: both (RetinaNet's ignored anchors, 0.4 <= IoU < 0.5, are in no
  split, as they are in no detection loss); ``decoupled``: positive and negative apart. Each split is
  averaged over its anchor count (0 when empty). The KL sums over the K foreground classes; the unused
  class-0 output of the zoo's one-stage heads is left out.

Mixed pairs (a Faster R-CNN and a one-stage detector, or RetinaNet and FCOS) distil features on the levels
both FPNs have (e.g. P3-P6 for Faster R-CNN with RetinaNet) and switch the head term off with a warning; the
object masks then assign boxes over those common levels. Pairs without a common level are refused.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict

import torch
from torch import Tensor, nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection._utils import Matcher
from torchvision.models.detection.image_list import ImageList

from defeat.config import DistillConfig
from defeat.distill.adapters import FeatureAdapters
from defeat.distill.base import TeacherStudentModule
from defeat.distill.losses import (
    decoupled_feature_loss,
    decoupled_proposal_loss,
    sigmoid_kl,
)
from defeat.distill.masks import fgfi_masks, object_masks, split_anchors
from defeat.distill.two_stage import (
    _check_boxes,
    check_settings,
    feature_loss_keys,
    proposal_loss_keys,
)
from defeat.models.zoo import LEVELS


# ------------------------------------------------------------------------------------------------ pairs
def family_of(model: nn.Module, where: str = "model") -> str:
    """``'faster_rcnn' | 'retinanet' | 'fcos'`` for a torchvision detector; a ValueError naming ``where`` otherwise."""
    for cls, family in ((FasterRCNN, "faster_rcnn"), (RetinaNet, "retinanet"), (FCOS, "fcos")):
        if isinstance(model, cls):
            return family
    raise ValueError(f"{where}: expected a torchvision FasterRCNN, RetinaNet or FCOS, got {type(model).__name__}")


def anchor_generator_of(model: nn.Module):
    return model.rpn.anchor_generator if isinstance(model, FasterRCNN) else model.anchor_generator


def levels_and_strides(model: nn.Module, where: str = "model") -> dict[str, int]:
    """Level name -> stride of a detector's FPN outputs, in order (P2.. for Faster R-CNN, P3.. for one-stage).

    The count comes from the anchor generator (one size tuple per level), as in the two-stage distiller.
    """
    family = family_of(model, where)
    count = len(anchor_generator_of(model).sizes)
    if count > len(LEVELS[family]):
        raise ValueError(f"{where}: {count} FPN levels, but a {family} has at most {len(LEVELS[family])} "
                         f"({'/'.join(LEVELS[family])})")
    return dict(list(LEVELS[family].items())[:count])


def common_levels(student: nn.Module, teacher: nn.Module, where: str = "teacher") -> list[str]:
    """Levels both FPNs output (same name = same stride); a ValueError with the reason when there is none."""
    s_levels, t_levels = levels_and_strides(student, "student"), levels_and_strides(teacher, where)
    shared = [name for name in s_levels if name in t_levels]
    if not shared:
        raise ValueError(f"{where}: no FPN level in common with the student (teacher {'/'.join(t_levels)}, student "
                         f"{'/'.join(s_levels)}); DeFeat imitates features level by level at equal strides, so "
                         "this pair cannot be distilled")
    return shared


def check_anchors_align(student: nn.Module, teacher: nn.Module, where: str = "teacher") -> None:
    """The head term compares logits anchor by anchor: both anchor generators must lay out the same anchors.

    Both generators are run on the same probe (a 256 x 256 batch with each level's feature-map size) and
    the anchors must be identical, as they then are for every input (the anchors depend only on the input
    size, the strides and the generator's sizes / aspect ratios).
    """
    s_gen, t_gen = anchor_generator_of(student), anchor_generator_of(teacher)
    strides = list(levels_and_strides(student, "student").values())
    reason = None
    if len(t_gen.sizes) != len(strides):
        reason = f"{len(t_gen.sizes)} anchor levels vs the student's {len(strides)}"
    elif s_gen.num_anchors_per_location() != t_gen.num_anchors_per_location():
        reason = (f"{t_gen.num_anchors_per_location()} anchors per location vs the student's "
                  f"{s_gen.num_anchors_per_location()}")
    else:
        side = 256
        probe = ImageList(torch.zeros(1, 3, side, side), [(side, side)])
        maps = [torch.zeros(1, 1, -(-side // s), -(-side // s)) for s in strides]
        with torch.no_grad():
            s_anchors = s_gen(probe, maps)[0]
            t_anchors = t_gen(probe, maps)[0]
        if s_anchors.shape != t_anchors.shape or not torch.equal(s_anchors, t_anchors):
            reason = "different anchors at the same locations"
    if reason:
        raise ValueError(
            f"{where}: anchors do not align with the student's ({reason}; teacher sizes {t_gen.sizes} ratios "
            f"{t_gen.aspect_ratios}, student sizes {s_gen.sizes} ratios {s_gen.aspect_ratios}). The head term "
            "distils logits anchor by anchor, so both need the same model.anchor_sizes; or set "
            "distill.proposal_mode=none to distil features only")


# ------------------------------------------------------------------------------------------- assignment
class _MatchRecorder:
    """Stands in for the detector as ``self`` of torchvision's ``RetinaNet.compute_loss`` / ``FCOS.compute_loss``.

    Those methods first assign every anchor to a GT box (RetinaNet: ``proposal_matcher`` on IoU; FCOS: centre
    sampling and per-level scale ranges) and then call ``self.head.compute_loss(..., matched_idxs)``. Running
    them with this object as ``self`` executes torchvision's assignment code unchanged and returns the matched
    indices instead of losses, so the distiller uses exactly the model's own matching without a copy of it.
    """

    def __init__(self, model: nn.Module) -> None:
        self.proposal_matcher = getattr(model, "proposal_matcher", None)  # RetinaNet
        self.center_sampling_radius = getattr(model, "center_sampling_radius", None)  # FCOS
        self.head = self

    @staticmethod
    def compute_loss(targets, head_outputs, anchors, matched_idxs):
        return matched_idxs


def matched_idxs(model: nn.Module, targets: list[dict[str, Tensor]], anchors: list[Tensor],
                 num_anchors_per_level: list[int]) -> list[Tensor]:
    """Per image, the ``(A,)`` GT index of every anchor as the one-stage model's own ``compute_loss`` assigns it.

    ``>= 0``: positive (index of the matched box); ``-1`` (``Matcher.BELOW_LOW_THRESHOLD``): negative;
    ``-2`` (``Matcher.BETWEEN_THRESHOLDS``, RetinaNet only): ignored. Images without boxes are all ``-1``.
    """
    recorder = _MatchRecorder(model)
    if isinstance(model, RetinaNet):
        return type(model).compute_loss(recorder, targets, None, anchors)
    if isinstance(model, FCOS):
        return type(model).compute_loss(recorder, targets, None, anchors, num_anchors_per_level)
    raise ValueError(f"matched_idxs: expected a RetinaNet or FCOS, got {type(model).__name__}")


# ------------------------------------------------------------------------------------------- distiller
class OneStageDistiller(TeacherStudentModule):
    """DeFeat with a RetinaNet or FCOS student (or any mixed-family pair; see the module docstring).

    Args:
        student: a torchvision ``RetinaNet`` or ``FCOS`` (trained); or a ``FasterRCNN`` with a one-stage teacher.
        teacher: a torchvision detector sharing at least one FPN level with the student (frozen here).
            The head term needs the same family, classes and anchor generator as the student.
        settings: the ``distill`` config section (modes, weights, temperatures, schedule).
        max_steps: length of training, for the linear/cosine KD-weight schedules.
        where: how messages name the teacher (e.g. its checkpoint path).
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, settings: DistillConfig | None = None,
                 max_steps: int = 0, where: str = "teacher") -> None:
        settings = settings or DistillConfig()
        check_settings(settings)
        super().__init__(student, teacher, settings, max_steps)
        self.student_family = family_of(student, "student")
        self.teacher_family = family_of(teacher, where)
        if self.student_family == self.teacher_family == "faster_rcnn":
            raise ValueError("OneStageDistiller: two Faster R-CNNs go to DeFeatDistiller (use build_distiller)")
        self.student_strides = levels_and_strides(student, "student")
        self.teacher_strides = levels_and_strides(teacher, where)
        self.levels = common_levels(student, teacher, where)
        self.strides = {name: self.student_strides[name] for name in self.levels}
        s_classes, t_classes = _num_classes(student), _num_classes(teacher)
        if s_classes != t_classes:
            raise ValueError(f"{where}: predicts {t_classes - 1} classes, the student {s_classes - 1}")
        if (list(student.transform.image_mean) != list(teacher.transform.image_mean)
                or list(student.transform.image_std) != list(teacher.transform.image_std)):
            raise ValueError(f"{where}: image normalisation differs from the student's; both must see the same tensor")

        # The head term needs the same head on the same anchors.
        self.head_kd = self.student_family == self.teacher_family  # both one-stage here
        self.notes: list[str] = []
        if not self.head_kd:
            note = (f"DeFeat on a mixed pair (student {self.student_family}, {where} {self.teacher_family}): "
                    f"feature KD on the common levels {'/'.join(self.levels)}")
            if settings.proposal_mode != "none":
                note += (f"; head KD is off (distill.proposal_mode={settings.proposal_mode} needs the same head "
                         "family on both sides)")
            self.notes.append(note)
            warnings.warn(note, stacklevel=2)
        elif settings.proposal_mode != "none":
            check_anchors_align(student, teacher, where)

        self.adapters = (FeatureAdapters(self.levels, student.backbone.out_channels, teacher.backbone.out_channels)
                         if settings.feature_mode != "none" else None)

    @property
    def proposal_mode(self) -> str:
        """The head term's mode in effect (``none`` when the pair cannot have one)."""
        return self.settings.proposal_mode if self.head_kd else "none"

    # ----------------------------------------------------------------------------------------- forward
    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None):
        """Train mode: dict of weighted losses. Eval mode: the student's detections."""
        if not self.training:
            return self.student(images, targets)
        if targets is None:
            raise ValueError("OneStageDistiller: targets are required in training mode")
        student, teacher, s = self.student, self.teacher, self.settings
        scale = self.kd_scale
        use_features = s.feature_mode != "none" and scale > 0
        use_head = self.proposal_mode != "none" and scale > 0

        # 1-2. one transformed batch, both backbones
        images, targets = student.transform(images, targets)
        _check_boxes(targets)
        s_feats = student.backbone(images.tensors)
        t_feats = None
        if use_features or use_head:
            with torch.no_grad():
                t_feats = teacher.backbone(images.tensors)

        # 3. the student's own detection losses (and its anchors' assignment)
        s_maps = list(s_feats.values())
        anchors, assigned, head_outputs = None, None, None
        if self.student_family == "faster_rcnn":  # mixed pair: the two-stage student's RPN and RoI head
            proposals, losses = student.rpn(images, s_feats, targets)
            _, roi_losses = student.roi_heads(s_feats, proposals, images.image_sizes, targets)
            losses = {**losses, **roi_losses}
        else:
            head_outputs = student.head(s_maps)
            anchors = student.anchor_generator(images, s_maps)
            per_level = [m.shape[-2] * m.shape[-1] for m in s_maps]
            assigned = matched_idxs(student, targets, anchors, per_level)
            losses = dict(student.head.compute_loss(targets, head_outputs, anchors, assigned))

        # 4. decoupled features
        if use_features:
            feature_losses = self.feature_loss(images, targets, s_feats, t_feats, anchors)
            losses.update({k: scale * v for k, v in feature_losses.items()})
        elif s.feature_mode != "none":  # schedule at 0: same keys, and the adapters stay in the graph for DDP
            zero = sum(p.sum() for p in self.adapters.parameters()) * 0.0
            losses.update({k: zero for k in feature_loss_keys(s.feature_mode)})

        # 5. decoupled anchors / locations
        if use_head:
            with torch.no_grad():
                teacher_logits = teacher.head.classification_head(list(t_feats.values()))
            head_losses = self.head_loss(head_outputs["cls_logits"], teacher_logits, assigned)
            losses.update({k: scale * v for k, v in head_losses.items()})
        elif self.proposal_mode != "none":
            zero = head_outputs["cls_logits"].sum() * 0.0
            losses.update({k: zero for k in proposal_loss_keys(self.proposal_mode)})
        return losses

    def feature_masks(self, targets: list[dict[str, Tensor]], sizes: dict[str, tuple[int, int]],
                      anchors: Tensor | None) -> dict[str, Tensor]:
        """Per distilled level ``(N, H, W)`` bool masks: DeFeat's object masks, or FGFI's in ``fgfi`` mode.

        ``sizes`` covers every student level (in order); ``anchors`` are one image's anchors, all levels.
        """
        boxes = [t["boxes"] for t in targets]
        if self.settings.feature_mode == "fgfi":
            per_level = split_anchors(anchors, sizes)
            return fgfi_masks(boxes, {name: per_level[name] for name in self.levels}, phi=self.settings.fgfi_phi)
        return object_masks(boxes, {name: sizes[name] for name in self.levels}, self.strides,
                            k0=self.settings.level_k0)

    def feature_loss(self, images: ImageList, targets: list[dict[str, Tensor]], s_feats: OrderedDict[str, Tensor],
                     t_feats: OrderedDict[str, Tensor], anchors: list[Tensor] | None = None) -> dict[str, Tensor]:
        """The (unscaled) feature term on the distilled levels: adapters(student) vs teacher, under the masks."""
        s = self.settings
        named_student = dict(zip(self.student_strides, s_feats.values()))
        named_teacher = dict(zip(self.teacher_strides, t_feats.values()))
        adapted = self.adapters({name: named_student[name] for name in self.levels})
        teacher_maps = [named_teacher[name] for name in self.levels]
        if s.feature_mode == "all":  # one uniform term: every pixel counts
            masks = [torch.ones(t.shape[0], *t.shape[-2:], dtype=torch.bool, device=t.device) for t in teacher_maps]
        else:
            sizes = {name: tuple(f.shape[-2:]) for name, f in named_student.items()}
            if s.feature_mode == "fgfi" and anchors is None:  # Faster R-CNN student: its RPN anchors
                anchors = self.student.rpn.anchor_generator(images, list(s_feats.values()))
            level_masks = self.feature_masks(targets, sizes, anchors[0] if anchors is not None else None)
            masks = [level_masks[name] for name in self.levels]
        return decoupled_feature_loss([adapted[name] for name in self.levels], teacher_maps, masks,
                                      s.feature_mode, s.alpha_obj, s.alpha_bg, s.alpha_all, s.feature_norm)

    def head_loss(self, student_logits: Tensor, teacher_logits: Tensor, assigned: list[Tensor]) -> dict[str, Tensor]:
        """The (unscaled) head term: per-class sigmoid KL on the anchors, split by the student's assignment.

        Args:
            student_logits, teacher_logits: ``(N, A, K + 1)`` classification logits of the two heads.
            assigned: per image ``(A,)`` matched indices (see :func:`matched_idxs`).
        """
        s = self.settings
        if teacher_logits.shape != student_logits.shape:
            raise ValueError(f"head term: teacher logits {tuple(teacher_logits.shape)} vs student "
                             f"{tuple(student_logits.shape)}; the anchors or classes do not align")
        matched = torch.stack(assigned)  # (N, A)
        counted = matched != Matcher.BETWEEN_THRESHOLDS  # RetinaNet's ignored anchors are in no split
        labels = (matched[counted] >= 0).to(torch.int64)  # 1 = positive, 0 = negative
        # Class 0 is never a target of the zoo's one-stage heads (labels are 1..K): the KL covers 1..K.
        return decoupled_proposal_loss(
            student_logits[counted][:, 1:], teacher_logits[counted][:, 1:], labels, s.proposal_mode,
            s.beta_obj, s.beta_bg, s.beta_all, s.temperature_obj, s.temperature_bg, s.temperature_all,
            kl_fn=sigmoid_kl)


def _num_classes(model: nn.Module) -> int:
    """Outputs of the classifier, background/unused class 0 included."""
    if isinstance(model, FasterRCNN):
        return model.roi_heads.box_predictor.cls_score.out_features
    return model.head.classification_head.num_classes
