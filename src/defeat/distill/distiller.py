"""``DeFeatDistiller``: a torchvision detector (the student) trained from a frozen one (the teacher) with DeFeat.

The distiller is what the training loop trains: ``forward(images, targets)`` in train mode returns the
student's own detection losses plus the weighted distillation terms as one dict; in eval mode the student's
detections. Its registered submodules are only ``student`` and ``adapters`` (or, in the ``fgd`` / ``mgd`` feature
modes, ``feature_kd``: those methods' own learnable modules, :mod:`defeat.distill.learned_methods`), so its
``state_dict``, its optimizer and DDP never see the teacher (held outside the module tree, frozen, in eval mode,
moved along by ``.to()``; see :class:`~defeat.distill.base.TeacherStudentModule`).

One training step, top to bottom (:meth:`DeFeatDistiller.forward`), the same for every pair:

1. the student's transform resizes, normalises and batches the images once; both backbones see that tensor;
2. student backbone+FPN; teacher backbone+FPN under ``no_grad``;
3. the student's detection losses and the head term's samples (the family part, :mod:`defeat.distill.heads`:
   Faster R-CNN's sampled proposals, or every anchor of RetinaNet / FCOS with torchvision's own assignment);
4. the feature term on the distilled FPN levels with the object masks of the GT boxes
   (:mod:`defeat.distill.masks`), through one adapter conv per level;
5. the head term: the teacher's classifier on the *same* samples, and the KL split into positive and
   negative samples (:func:`~defeat.distill.losses.decoupled_proposal_loss`). With ``proposal_sampling: teacher``
   (Faster R-CNN) the samples are the teacher's RPN proposals drawn by the student's sampler instead.

Other feature-KD methods replace step 4 (``feature_mode``: ``cwd``, ``pkd``, ``score_weighted``;
:mod:`defeat.distill.methods`): every common level, no GT masks, the adapters their reference uses (none for
CWD / PKD when the channel counts match).

Optional: ``backbone_stages`` adds the decoupled feature term on ResNet stages (recorded by forward hooks during
step 2; every box on every stage; conv + ReLU adapters, ``backbone_adapters``).

Pairs: the feature term runs on the FPN levels both models have (same name = same stride; none in common:
refused with the reason). The head term needs both of one family; on a mixed pair (a Faster R-CNN and a
one-stage detector, or RetinaNet and FCOS) it is switched off with a warning. For one-stage students,
``level_k0`` assigns each box to ``floor(k0 + log2(sqrt(wh) / 224))`` clamped to the distilled levels; unset, k0
follows the student family (:func:`~defeat.models.families.default_level_k0`; docs/distill.md).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList

from defeat.config import DistillSettings
from defeat.distill.adapters import FeatureAdapters
from defeat.distill.base import TeacherStudentModule
from defeat.distill.heads import HeadSamples, check_same_input, head_for, head_term_for, teacher_scores
from defeat.distill.learned_methods import LEARNED_MODES, LearnedFeatureKD, resolve_learned_defaults
from defeat.distill.losses import (
    BACKBONE_LOSS_KEYS,
    backbone_feature_loss,
    decoupled_feature_loss,
    decoupled_proposal_loss,
    feature_loss_keys,
    proposal_loss_keys,
)
from defeat.distill.masks import fgfi_masks, object_masks, split_anchors, stage_masks
from defeat.distill.methods import METHOD_ADAPTERS, METHOD_LOSSES
from defeat.models.families import (
    anchor_generator_of,
    backbone_stage_channels,
    backbone_stages_of,
    capture_backbone_stages,
    default_level_k0,
    family_of,
    level_pairs,
    strides_of,
)


class DeFeatDistiller(TeacherStudentModule):
    """DeFeat for any pair of torchvision Faster R-CNN / RetinaNet / FCOS detectors (see the module docstring).

    Args:
        student: the detector that trains.
        teacher: the detector it imitates (frozen here: ``requires_grad=False`` and eval mode for good); same
            classes and image normalisation, at least one FPN level in common.
        settings: the method's settings (modes, weights, temperatures, schedule); default: DeFeat's.
        max_steps: length of training, for the linear/cosine KD-weight schedules.
        where: how messages name the teacher (e.g. its checkpoint path).
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        settings: DistillSettings | None = None,
        max_steps: int = 0,
        where: str = "teacher",
    ) -> None:
        settings = settings or DistillSettings()
        family_of(student, "student"), family_of(teacher, where)  # a clear error for anything else
        check_same_input(student, teacher, where)
        settings = resolve_learned_defaults(settings, student)  # fgd / mgd: unset -> the authors' values
        super().__init__(student, teacher, settings, max_steps)
        self.head = head_for(student)
        self.student_strides = strides_of(student, "student")
        self.teacher_strides = strides_of(teacher, where)
        #: student level -> teacher level of the same stride; the masks live on the teacher levels
        self.pairs = level_pairs(student, teacher, where)
        self.levels = list(self.pairs)
        self.mask_levels = list(dict.fromkeys(self.pairs.values()))
        self.strides = {name: self.teacher_strides[name] for name in self.mask_levels}
        why_off = head_term_for(student, teacher, settings.proposal_mode, where)
        self.head_kd = family_of(student) == family_of(teacher)
        self.notes: list[str] = []
        if not self.head_kd:
            note = (
                f"DeFeat on a mixed pair (student {family_of(student)}, {where} {family_of(teacher)}): "
                f"feature KD on the common levels {'/'.join(self.levels)}"
            )
            if why_off:
                note += f"; head KD is off ({why_off})"
            self.notes.append(note)
            warnings.warn(note, stacklevel=2)
        self.adapters = feature_adapters(
            settings.feature_mode, self.levels, student.backbone.out_channels, teacher.backbone.out_channels
        )
        #: fgd / mgd: the method's own learnable modules per level (align, context blocks / generator)
        self.feature_kd = (
            LearnedFeatureKD(
                settings.feature_mode,
                self.levels,
                student.backbone.out_channels,
                teacher.backbone.out_channels,
                seed=settings.mgd_seed,
            )
            if settings.feature_mode in LEARNED_MODES
            else None
        )
        if settings.proposal_sampling == "teacher" and self.proposal_mode != "none" and not self.head.teacher_sampling:
            raise ValueError(
                f"distill.proposal_sampling=teacher: only for Faster R-CNN pairs (a {family_of(student)} "
                "head term distils every anchor; there are no proposals to sample); use student"
            )
        self.backbone_stages = settings.backbone_stage_names
        check_backbone_stages(student, teacher, self.backbone_stages, where)
        self.backbone_adapters = (
            FeatureAdapters(
                self.backbone_stages,
                {n: backbone_stage_channels(student, n) for n in self.backbone_stages},
                {n: backbone_stage_channels(teacher, n) for n in self.backbone_stages},
                relu=True,
            )
            if self.backbone_stages
            else None
        )

    @property
    def level_k0(self) -> int:
        """k0 of the box-to-level rule in effect: ``settings.level_k0``, or the student family's default
        (:func:`~defeat.models.families.default_level_k0`: 4 for Faster R-CNN, from the anchors one-stage)."""
        k0 = self.settings.level_k0
        return k0 if k0 is not None else default_level_k0(self.student, "student")

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
            raise ValueError("DeFeatDistiller: targets are required in training mode")
        student, teacher, s = self.student, self.teacher, self.settings
        scale = self.kd_scale
        use_features = s.feature_mode != "none" and scale > 0
        use_head = self.proposal_mode != "none" and scale > 0
        use_backbone = bool(self.backbone_stages) and scale > 0

        # 1-2. one transformed batch, both backbones (their stages recorded on the way when backbone KD is on)
        images, targets = student.transform(images, targets)
        check_boxes(targets)
        with capture_backbone_stages(student, self.backbone_stages if use_backbone else []) as s_stages:
            s_feats = student.backbone(images.tensors)
        t_feats = None
        if use_features or use_head or use_backbone:
            with (
                torch.no_grad(),
                capture_backbone_stages(teacher, self.backbone_stages if use_backbone else []) as t_stages,
            ):
                t_feats = teacher.backbone(images.tensors)

        # 3. the student's own detection losses and the head term's samples
        losses, samples = self.head.student_step(student, images, s_feats, targets)
        if use_head and s.proposal_sampling == "teacher":  # the head term on the teacher's proposals instead
            samples = self.head.teacher_samples(student, teacher, images, s_feats, t_feats, targets)

        # 4. decoupled features
        if use_features:
            feature_losses = self.feature_loss(images, targets, s_feats, t_feats, samples)
            losses.update({k: scale * v for k, v in feature_losses.items()})
        elif s.feature_mode != "none":  # schedule at 0: same keys, and the adapters stay in the graph for DDP
            learned = self.adapters if self.adapters is not None else self.feature_kd
            params = learned.parameters() if learned is not None else ()
            zero = sum((p.sum() for p in params), images.tensors.new_zeros(())) * 0.0
            losses.update({k: zero for k in feature_loss_keys(s.feature_mode)})

        # 4b. decoupled backbone stages
        if use_backbone:
            sizes = {name: tuple(s_stages[name].shape[-2:]) for name in self.backbone_stages}
            # the stride as the maps show it (the padded input is a multiple of 32, so it divides exactly)
            strides = {name: max(1, round(images.tensors.shape[-1] / sizes[name][1])) for name in sizes}
            masks = stage_masks([t["boxes"] for t in targets], sizes, strides)
            adapted = self.backbone_adapters(s_stages)
            stage_losses = backbone_feature_loss(
                [adapted[n] for n in self.backbone_stages],
                [t_stages[n] for n in self.backbone_stages],
                [masks[n] for n in self.backbone_stages],
                s,
            )
            losses.update({k: scale * v for k, v in stage_losses.items()})
        elif self.backbone_stages:
            zero = sum(p.sum() for p in self.backbone_adapters.parameters()) * 0.0
            losses.update({k: zero for k in BACKBONE_LOSS_KEYS})

        # 5. decoupled proposals / anchors
        if use_head:
            with torch.no_grad():
                teacher_logits = self.head.teacher_logits(teacher, images, t_feats, samples)
            head_losses = decoupled_proposal_loss(
                samples.student_logits, teacher_logits, samples.labels, s, kl_fn=self.head.kl
            )
            losses.update({k: scale * v for k, v in head_losses.items()})
        elif self.proposal_mode != "none":
            zero = samples.student_logits.sum() * 0.0
            losses.update({k: zero for k in proposal_loss_keys(self.proposal_mode)})
        return losses

    def feature_masks(
        self,
        images: ImageList,
        targets: list[dict[str, Tensor]],
        s_feats: dict[str, Tensor],
        samples: HeadSamples | None = None,
    ) -> dict[str, Tensor]:
        """Per mask level (the teacher's levels paired with the student's) ``(N, H, W)`` bool masks: DeFeat's
        object masks, or FGFI's in ``fgfi`` mode."""
        student_sizes = {name: tuple(f.shape[-2:]) for name, f in zip(self.student_strides, s_feats.values())}
        # one student level per mask level: equal strides give equal map sizes (and FGFI its anchors)
        first = {t: s for s, t in reversed(list(self.pairs.items()))}
        sizes = {t: student_sizes[first[t]] for t in self.mask_levels}
        boxes = [t["boxes"] for t in targets]
        if self.settings.feature_mode == "fgfi":
            anchors = (
                samples.anchors
                if samples is not None and samples.anchors is not None
                else anchor_generator_of(self.student)(images, list(s_feats.values()))[0]
            )
            per_level = split_anchors(anchors, student_sizes)
            return fgfi_masks(
                boxes,
                {t: per_level[first[t]] for t in self.mask_levels},
                phi=self.settings.fgfi_phi,
                assign=self.settings.fgfi_assign,
                k0=self.level_k0,
            )
        return object_masks(boxes, sizes, self.strides, k0=self.level_k0)

    def feature_loss(
        self,
        images: ImageList,
        targets: list[dict[str, Tensor]],
        s_feats: dict[str, Tensor],
        t_feats: dict[str, Tensor],
        samples: HeadSamples | None = None,
    ) -> dict[str, Tensor]:
        """The (unscaled) feature term on the distilled levels: adapters(student) vs teacher, under the masks (or
        the method of :data:`~defeat.distill.methods.METHOD_LOSSES` for its mode)."""
        named_student = dict(zip(self.student_strides, s_feats.values()))
        named_teacher = dict(zip(self.teacher_strides, t_feats.values()))
        if self.feature_kd is not None:  # fgd / mgd: every box on every level, the method's own modules
            return self.feature_kd(
                [named_student[name] for name in self.levels],
                [named_teacher[self.pairs[name]] for name in self.levels],
                [t["boxes"] for t in targets],
                tuple(images.tensors.shape[-2:]),
                self.settings,
            )
        adapted = {name: named_student[name] for name in self.levels}
        if self.adapters is not None:
            adapted = self.adapters(adapted)
        teacher_maps = [named_teacher[self.pairs[name]] for name in self.levels]
        method = METHOD_LOSSES.get(self.settings.feature_mode)
        if method is not None:  # CWD, PKD, score-weighted MSE: every level, no masks
            scores = None
            if self.settings.feature_mode == "score_weighted":
                with torch.no_grad():
                    per_level = teacher_scores(self.teacher, {t: named_teacher[t] for t in self.mask_levels})
                scores = [per_level[self.pairs[name]] for name in self.levels]
            return method([adapted[name] for name in self.levels], teacher_maps, self.settings, scores)
        if self.settings.feature_mode == "all":  # one uniform term: every pixel counts
            masks = [torch.ones(t.shape[0], *t.shape[-2:], dtype=torch.bool, device=t.device) for t in teacher_maps]
        else:
            level_masks = self.feature_masks(images, targets, s_feats, samples)
            masks = [level_masks[self.pairs[name]] for name in self.levels]
        return decoupled_feature_loss([adapted[name] for name in self.levels], teacher_maps, masks, self.settings)


def feature_adapters(
    mode: str, levels: list[str], student_channels: int, teacher_channels: int
) -> FeatureAdapters | None:
    """The FPN adapters of feature mode ``mode``: DeFeat's 3x3 convs for its region modes; for another method
    the adapter of its reference (:data:`~defeat.distill.methods.METHOD_ADAPTERS`): ``align`` = 1x1 convs where
    the channel counts differ and none where they match (CWD, PKD), ``projector`` = Ultralytics' projector. None
    for mode ``none``, where no adapter is needed, and for FGD / MGD (their own modules: ``feature_kd``)."""
    kind = METHOD_ADAPTERS.get(mode, "conv3x3")
    if mode in ("none", *LEARNED_MODES) or (kind == "align" and student_channels == teacher_channels):
        return None
    return FeatureAdapters(levels, student_channels, teacher_channels, kind="conv1x1" if kind == "align" else kind)


def check_boxes(targets: list[dict[str, Tensor]]) -> None:
    """The check torchvision's GeneralizedRCNN does: no box with non-positive width or height."""
    for index, target in enumerate(targets):
        boxes = target["boxes"]
        bad = (boxes[:, 2:] <= boxes[:, :2]).any(dim=1)
        if bad.any():
            raise ValueError(f"targets[{index}]: degenerate box {boxes[bad][0].tolist()} (width or height <= 0)")


def check_backbone_stages(student: nn.Module, teacher: nn.Module, stages: list[str], where: str = "teacher") -> None:
    """Backbone KD: a one-line ValueError for a stage either model does not have."""
    for model, who in ((student, "the student"), (teacher, where)):
        have = backbone_stages_of(model, who)
        for name in stages:
            if name not in have:
                raise ValueError(
                    f"distill.backbone_stages: {who} has no backbone stage {name} (its stages: "
                    f"{', '.join(have) or 'none'})"
                )


def build_distiller(
    student: nn.Module,
    teacher: nn.Module,
    settings: DistillSettings | None = None,
    max_steps: int = 0,
    where: str = "teacher",
) -> DeFeatDistiller:
    """The DeFeat distiller for this pair; ``where`` names the teacher in messages. One-line ValueError (with the
    reason) for pairs that cannot be distilled."""
    return DeFeatDistiller(student, teacher, settings, max_steps=max_steps, where=where)
