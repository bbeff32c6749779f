"""The family-specific part of a DeFeat step: the student's detection losses and the samples of the head term.

:class:`~defeat.distill.distiller.DeFeatDistiller` runs one skeleton for every pair; what differs between
detector families sits behind the small :class:`HeadTerm` interface, one class per family of the *student*:

==================  ===========================================  =============================================
class               detection losses                             head term: samples, positive/negative, KL
==================  ===========================================  =============================================
``ProposalHead``    RPN + RoI sampler + box head (Faster R-CNN)  the sampled proposals; the sampler's labels;
                                                                 teacher's RoI head on the same proposals;
                                                                 softmax KL
``AnchorHead``      head + torchvision's own anchor assignment   every anchor / location; the matcher's split
                    (RetinaNet, FCOS)                            (ignored anchors in none); the teacher's
                                                                 classification head; per-class sigmoid KL
==================  ===========================================  =============================================

The head term needs both models of one family (and, for anchors, the same anchor layout); :func:`head_term_for`
checks that and says why the term is off otherwise. Adding a family means adding one class here.
:func:`teacher_scores` is the family part of feature mode ``score_weighted``: the teacher's dense confidence.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.models.detection._utils import Matcher
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import fastrcnn_loss
from torchvision.models.detection.rpn import concat_box_prediction_layers

from defeat.distill.losses import sigmoid_kl, softmax_kl
from defeat.distill.methods import teacher_confidence
from defeat.models.families import anchor_generator_of, family_of, fpn_output_keys, num_classes_of, strides_of


@dataclass
class HeadSamples:
    """What the head term compares: the student's logits on its samples and which samples are positive.

    ``labels``: ``(R,)`` int, > 0 for a positive sample, 0 for a negative one. ``context`` is the family's own
    (the proposals of a two-stage step; the counted-anchor mask of a one-stage step). ``anchors``: one image's
    anchors on every level when the step computed them (FGFI's masks reuse them).
    """

    student_logits: Tensor
    labels: Tensor
    context: object = None
    anchors: Tensor | None = None


class HeadTerm:
    """Interface of a family's part of the step (see the module docstring)."""

    #: the per-sample divergence of the head term
    kl: Callable[[Tensor, Tensor, float], Tensor] = softmax_kl
    #: whether the head term's samples can come from the teacher (``proposal_sampling: teacher``)
    teacher_sampling: bool = False

    def student_step(
        self, student: nn.Module, images: ImageList, features: dict[str, Tensor], targets: list[dict[str, Tensor]]
    ) -> tuple[dict[str, Tensor], HeadSamples]:
        """The student's own detection losses (torchvision's keys and order) and the head term's samples."""
        raise NotImplementedError

    def teacher_logits(
        self, teacher: nn.Module, images: ImageList, features: dict[str, Tensor], samples: HeadSamples
    ) -> Tensor:
        """The teacher's logits on exactly the samples of ``samples`` (called under ``no_grad``)."""
        raise NotImplementedError

    def teacher_samples(
        self,
        student: nn.Module,
        teacher: nn.Module,
        images: ImageList,
        student_features: dict[str, Tensor],
        teacher_features: dict[str, Tensor],
        targets: list[dict[str, Tensor]],
    ) -> HeadSamples:
        """The head term's samples drawn from the teacher (only where :attr:`teacher_sampling`)."""
        raise NotImplementedError(f"{type(self).__name__}: the head term has no teacher sampling")


class ProposalHead(HeadTerm):
    """Faster R-CNN: RPN, the RoI sampler's proposals, the box head; the KL on the sampled proposals."""

    kl = staticmethod(softmax_kl)
    teacher_sampling = True

    def student_step(self, student, images, features, targets):
        proposals, losses = student.rpn(images, features, targets)
        roi = student.roi_heads
        proposals, _, labels, regression_targets = roi.select_training_samples(proposals, targets)
        box_features = roi.box_head(roi.box_roi_pool(features, proposals, images.image_sizes))
        class_logits, box_regression = roi.box_predictor(box_features)
        loss_classifier, loss_box_reg = fastrcnn_loss(class_logits, box_regression, labels, regression_targets)
        losses = {**losses, "loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}
        return losses, HeadSamples(class_logits, torch.cat(labels), context=proposals)

    def teacher_logits(self, teacher, images, features, samples):
        roi = teacher.roi_heads
        box_features = roi.box_head(roi.box_roi_pool(features, samples.context, images.image_sizes))
        logits, _ = roi.box_predictor(box_features)
        return logits

    def teacher_samples(self, student, teacher, images, student_features, teacher_features, targets):
        """``proposal_sampling: teacher`` (the official default, ``SampleTEA``): the *teacher's* RPN proposals
        (its training-time pre/post-NMS counts), sampled and labelled by the student's RoI sampler against the
        GT boxes (GT added as proposals, as torchvision does); the student's box head classifies them with
        gradient. The labels are those of exactly these samples (the official code splits them with the labels
        of the student's own samples, a positional mismatch; see docs/distill.md)."""
        with torch.no_grad():
            proposals = rpn_proposals(teacher, images, teacher_features)
            proposals, _, labels, _ = student.roi_heads.select_training_samples(proposals, targets)
        roi = student.roi_heads
        logits, _ = roi.box_predictor(roi.box_head(roi.box_roi_pool(student_features, proposals, images.image_sizes)))
        return HeadSamples(logits, torch.cat(labels), context=proposals)


def rpn_proposals(model: nn.Module, images: ImageList, features: dict[str, Tensor]) -> list[Tensor]:
    """A Faster R-CNN's RPN proposals per image, without its losses, with the *training-time* pre/post-NMS
    counts whatever the model's mode (a frozen teacher stays in eval mode; its RPN then would use the test-time
    counts). Only the RPN module's own ``training`` flag is switched, for the filtering call, and restored."""
    rpn = model.rpn
    maps = list(features.values())
    objectness, deltas = rpn.head(maps)
    anchors = rpn.anchor_generator(images, maps)
    per_level = [o[0].shape[0] * o[0].shape[1] * o[0].shape[2] for o in objectness]
    objectness, deltas = concat_box_prediction_layers(objectness, deltas)
    proposals = rpn.box_coder.decode(deltas.detach(), anchors).view(len(anchors), -1, 4)
    was_training = rpn.training
    rpn.training = True
    try:
        boxes, _ = rpn.filter_proposals(proposals, objectness.detach(), images.image_sizes, per_level)
    finally:
        rpn.training = was_training
    return boxes


class AnchorHead(HeadTerm):
    """RetinaNet / FCOS: the head on every anchor (FCOS: location), split by torchvision's own assignment.

    Positive: anchors the model's matcher marks positive (RetinaNet IoU >= 0.5 or the best anchor of a box;
    FCOS: centre sampling and scale ranges); negative: RetinaNet IoU < 0.4, FCOS every other location.
    RetinaNet's ignored anchors (0.4 <= IoU < 0.5) are in no split, as they are in no detection loss. The KL
    sums over the K foreground classes; the unused class-0 output of the zoo's one-stage heads is left out.
    """

    kl = staticmethod(sigmoid_kl)

    def student_step(self, student, images, features, targets):
        maps = list(features.values())
        head_outputs = student.head(maps)
        anchors = student.anchor_generator(images, maps)
        assigned = matched_idxs(student, targets, anchors, [m.shape[-2] * m.shape[-1] for m in maps])
        losses = dict(student.head.compute_loss(targets, head_outputs, anchors, assigned))
        matched = torch.stack(assigned)  # (N, A)
        counted = matched != Matcher.BETWEEN_THRESHOLDS
        labels = (matched[counted] >= 0).to(torch.int64)  # 1 = positive, 0 = negative
        # Class 0 is never a target of the zoo's one-stage heads (labels are 1..K): the KL covers 1..K.
        logits = head_outputs["cls_logits"][counted][:, 1:]
        return losses, HeadSamples(logits, labels, context=counted, anchors=anchors[0])

    def teacher_logits(self, teacher, images, features, samples):
        logits = teacher.head.classification_head(list(features.values()))
        if logits.shape[:2] != samples.context.shape:
            raise ValueError(
                f"head term: teacher logits {tuple(logits.shape)} on {tuple(samples.context.shape)} "
                "student anchors; the anchors or classes do not align"
            )
        return logits[samples.context][:, 1:]


def teacher_scores(teacher: nn.Module, features: dict[str, Tensor]) -> dict[str, Tensor]:
    """Per teacher level, the teacher's confidence at each position (feature mode ``score_weighted``):
    ``(N, H, W)``, the highest sigmoid probability over the anchors and classes of its dense head there
    (:func:`~defeat.distill.methods.teacher_confidence`).

    RetinaNet / FCOS: the classification head's logits of each level (classes 1..K; the zoo heads' class 0 is
    never a target). Faster R-CNN has no dense class head: its RPN's objectness, max over the anchors. Call under
    ``no_grad``. ``features``: level name -> ``(N, C, H, W)`` teacher map (any subset of its levels).
    """
    family = family_of(teacher, "teacher")
    out = {}
    for name, feature in features.items():
        n, _, h, w = feature.shape
        if family == "faster_rcnn":
            (objectness,), _ = teacher.rpn.head([feature])  # (N, A, H, W)
            logits = objectness.unsqueeze(2)
        else:  # (N, H*W*A, K + 1), torchvision's layout: positions, then anchors
            flat = teacher.head.classification_head([feature])
            logits = flat.view(n, h, w, -1, flat.shape[-1])[..., 1:].permute(0, 3, 4, 1, 2)
        out[name] = teacher_confidence(logits)
    return out


def head_for(student: nn.Module) -> HeadTerm:
    """The family part of the step for this student."""
    return ProposalHead() if family_of(student, "student") == "faster_rcnn" else AnchorHead()


def head_term_for(student: nn.Module, teacher: nn.Module, proposal_mode: str, where: str = "teacher") -> str | None:
    """Why the head term cannot run for this pair (``None`` when it can, or when it is not asked for).

    Raises ValueError for a pair of one family whose samples cannot be compared (other RoI levels, other
    anchors): a mistake in the configs rather than a mixed pair.
    """
    s_family, t_family = family_of(student, "student"), family_of(teacher, where)
    if s_family != t_family:
        return (
            f"distill.proposal_mode={proposal_mode} needs the same head family on both sides"
            if proposal_mode != "none"
            else None
        )
    if s_family == "faster_rcnn":
        check_roi_heads_align(student, teacher, where)
    elif proposal_mode != "none":
        check_anchors_align(student, teacher, where)
    return None


def check_roi_heads_align(student: nn.Module, teacher: nn.Module, where: str = "teacher") -> None:
    """Two Faster R-CNNs: each RoI head pools from levels its own FPN outputs (torchvision's ``MultiScaleRoIAlign``
    uses the named levels that exist). Their levels need not match: a proposal is a box in image coordinates, and
    the teacher pools it from its own pyramid (an R50 P2-P6 teacher classifies a MobileNetV3 student's proposals)."""
    for model, who in ((student, "student"), (teacher, where)):
        pooled = model.roi_heads.box_roi_pool.featmap_names
        outputs = fpn_output_keys(model, who)
        if not any(name in outputs for name in pooled):
            raise ValueError(
                f"{who}: its RoI head pools FPN levels {pooled}, none of which its backbone outputs (outputs {outputs})"
            )


def check_anchors_align(student: nn.Module, teacher: nn.Module, where: str = "teacher") -> None:
    """The head term compares logits anchor by anchor: both anchor generators must lay out the same anchors.

    Both generators are run on the same probe (a 256 x 256 batch with each level's feature-map size) and
    the anchors must be identical, as they then are for every input (the anchors depend only on the input
    size, the strides and the generator's sizes / aspect ratios).
    """
    s_gen, t_gen = anchor_generator_of(student), anchor_generator_of(teacher)
    strides = list(strides_of(student, "student").values())
    reason = None
    if len(t_gen.sizes) != len(strides):
        reason = f"{len(t_gen.sizes)} anchor levels vs the student's {len(strides)}"
    elif s_gen.num_anchors_per_location() != t_gen.num_anchors_per_location():
        reason = (
            f"{t_gen.num_anchors_per_location()} anchors per location vs the student's "
            f"{s_gen.num_anchors_per_location()}"
        )
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
            "distill.proposal_mode=none to distil features only"
        )


def check_same_input(student: nn.Module, teacher: nn.Module, where: str = "teacher") -> None:
    """Same classes and the same image normalisation (both backbones see one tensor)."""
    s_classes, t_classes = num_classes_of(student, "student"), num_classes_of(teacher, where)
    if s_classes != t_classes:
        raise ValueError(f"{where}: predicts {t_classes - 1} classes, the student {s_classes - 1}")
    if list(student.transform.image_mean) != list(teacher.transform.image_mean) or list(
        student.transform.image_std
    ) != list(teacher.transform.image_std):
        raise ValueError(f"{where}: image normalisation differs from the student's; both must see the same tensor")


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


def matched_idxs(
    model: nn.Module, targets: list[dict[str, Tensor]], anchors: list[Tensor], num_anchors_per_level: list[int]
) -> list[Tensor]:
    """Per image, the ``(A,)`` GT index of every anchor as the one-stage model's own ``compute_loss`` assigns it.

    ``>= 0``: positive (index of the matched box); ``-1`` (``Matcher.BELOW_LOW_THRESHOLD``): negative;
    ``-2`` (``Matcher.BETWEEN_THRESHOLDS``, RetinaNet only): ignored. Images without boxes are all ``-1``.
    """
    family = family_of(model, "matched_idxs")
    recorder = _MatchRecorder(model)
    if family == "retinanet":
        return type(model).compute_loss(recorder, targets, None, anchors)
    if family == "fcos":
        return type(model).compute_loss(recorder, targets, None, anchors, num_anchors_per_level)
    raise ValueError(f"matched_idxs: expected a RetinaNet or FCOS, got {type(model).__name__}")
