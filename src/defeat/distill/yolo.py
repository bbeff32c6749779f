"""DeFeat (and the other feature modes) for an Ultralytics YOLO student, inside Ultralytics' own training loop.

:class:`YoloDistiller` is the model Ultralytics' trainer trains in place of the student (as Ultralytics' own
``DistillationModel`` is; :mod:`defeat.engine.yolo` puts it there): ``forward(batch)`` returns the student's own
YOLO loss with one distillation term appended, ``forward(images)`` the student's predictions. It imports no
Ultralytics: it asks :mod:`defeat.models.yolo` about the models and calls the student's own ``loss``.

One training step:

1. the student runs on the batch; forward hooks record the neck maps that feed its Detect head (P3, P4, P5);
2. the frozen teacher runs on the same tensor under ``no_grad``: a YOLO teacher's Detect inputs the same way, or a
   torchvision teacher's FPN (the batch normalised with its mean and std, not resized), paired with the student's
   maps by stride (8/16/32; refused with both sides' strides when none is shared);
3. the student's YOLO loss (Ultralytics' criterion: its assigner, box, class and DFL terms);
4. the feature term on the paired maps: DeFeat's object masks per stride from the batch's GT boxes
   (:func:`~defeat.distill.masks.object_masks`, each box on its one level by the rule
   ``floor(k0 + log2(sqrt(wh) / 224))``, k0 = ``distill.level_k0`` or :data:`~defeat.models.yolo.YOLO_LEVEL_K0`),
   the adapters of the mode and its loss: ``decoupled`` / ``object`` / ``background`` / ``all`` (DeFeat), ``cwd``,
   ``pkd``, ``score_weighted`` (the teacher's Detect confidence per position; a torchvision teacher's dense head),
   ``fgd``, ``mgd``. ``fgfi`` needs anchors (YOLO's head has none) and is refused; there is no proposal term (no
   RoI head), so ``proposal_mode`` is ignored.

The KD term is appended to Ultralytics' loss vector times the batch size, as Ultralytics appends its own
distillation term (its detection terms are per-image means times the batch size), so that the KD weights keep their
meaning relative to the detection loss. Its parts go to the trainer's loss items (``loss_feat_*``, unscaled by the
batch size).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from defeat.config import DistillSettings
from defeat.distill.adapters import FeatureAdapters
from defeat.distill.base import TeacherStudentModule
from defeat.distill.heads import teacher_scores
from defeat.distill.learned_methods import LEARNED_MODES, LearnedFeatureKD, resolve_learned_defaults
from defeat.distill.losses import REGION_MODES, decoupled_feature_loss, feature_loss_keys
from defeat.distill.masks import object_masks
from defeat.distill.methods import METHOD_ADAPTERS, METHOD_LOSSES
from defeat.models.families import num_classes_of, pair_levels, pixel_fpn_features, strides_of
from defeat.models.yolo import (
    YOLO_LEVEL_K0,
    capture_neck,
    head_confidence,
    is_yolo_model,
    neck_channels,
    yolo_levels,
)

#: the feature modes a YOLO student cannot have, and why (one line each)
REFUSED_MODES = {"fgfi": "FGFI marks cells by their anchors' IoU with the boxes, and YOLO's Detect head has no anchors"}


def batch_boxes(bboxes: Tensor, batch_idx: Tensor, num_images: int, height: int, width: int) -> list[Tensor]:
    """Ultralytics' batch boxes -> per image ``(G_i, 4)`` xyxy in pixels of the batch tensor.

    Args:
        bboxes: ``(M, 4)`` ``cx, cy, w, h`` normalised to the batch's image size (Ultralytics' ``batch["bboxes"]``).
        batch_idx: ``(M,)`` the image of each box (``batch["batch_idx"]``).
    """
    scale = bboxes.new_tensor([width, height, width, height])
    xywh = bboxes.float() * scale
    xyxy = torch.cat([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], dim=1)
    owner = batch_idx.view(-1).long()
    return [xyxy[owner == i] for i in range(num_images)]


class _AlignAdapters(nn.Module):
    """CWD / PKD's adapters: per level a 1x1 conv where the channel counts differ, nothing where they match."""

    def __init__(self, levels: Sequence[str], student: Mapping[str, int], teacher: Mapping[str, int]) -> None:
        super().__init__()
        self.convs = nn.ModuleDict(
            {n: nn.Identity() if student[n] == teacher[n] else nn.Conv2d(student[n], teacher[n], 1) for n in levels}
        )

    def forward(self, features: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {name: conv(features[name]) for name, conv in self.convs.items()}


class YoloDistiller(TeacherStudentModule):
    """A YOLO student trained from a frozen teacher (YOLO or torchvision) inside Ultralytics' loop (see the module
    docstring). Registered submodules: ``student`` and the mode's ``adapters`` or ``feature_kd``; the teacher is
    held outside the module tree (not in the optimizer, the state dict or the EMA's copy).

    Args:
        student: the Ultralytics ``DetectionModel`` that trains.
        teacher: an Ultralytics YOLO detection model, or a torchvision Faster R-CNN / RetinaNet / FCOS, trained on
            the same classes.
        settings: the method's settings (``feature_mode``, weights, ``level_k0``, schedule).
        max_steps: training batches, for the KD-weight schedules.
        where: how messages name the teacher.
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
        mode = settings.feature_mode
        if mode in REFUSED_MODES:
            raise ValueError(f"distill.feature_mode={mode}: not for a YOLO student ({REFUSED_MODES[mode]})")
        s_levels = yolo_levels(student, "student")
        teacher_is_yolo = is_yolo_model(teacher)
        student_classes = int(student.nc) if hasattr(student, "nc") else int(student.yaml["nc"])
        if teacher_is_yolo:
            t_levels = yolo_levels(teacher, where)
            teacher_classes = int(teacher.nc) if hasattr(teacher, "nc") else int(teacher.yaml["nc"])
        else:
            t_levels = strides_of(teacher, where)  # a one-line error for anything but a torchvision detector
            teacher_classes = num_classes_of(teacher, where) - 1
        if teacher_classes != student_classes:
            raise ValueError(f"{where}: predicts {teacher_classes} classes, the student {student_classes}")
        pairs = pair_levels(s_levels, t_levels, where)  # refused with both sides' strides when none is shared
        settings = resolve_learned_defaults(settings, "yolo")
        s_channels = neck_channels(student, "student")
        t_channels = (
            neck_channels(teacher, where)
            if teacher_is_yolo
            else {name: int(teacher.backbone.out_channels) for name in t_levels}
        )
        super().__init__(student, teacher, settings, max_steps)
        self.teacher_is_yolo = teacher_is_yolo
        self.pairs = pairs
        self.levels = list(pairs)
        self.strides = {name: s_levels[name] for name in self.levels}
        s_ch = {n: s_channels[n] for n in self.levels}
        t_ch = {n: t_channels[pairs[n]] for n in self.levels}
        self.adapters: nn.Module | None = None
        self.feature_kd: LearnedFeatureKD | None = None
        if mode in LEARNED_MODES:
            self.feature_kd = LearnedFeatureKD(mode, self.levels, s_ch, t_ch, seed=settings.mgd_seed)
        elif METHOD_ADAPTERS.get(mode) == "align":
            self.adapters = _AlignAdapters(self.levels, s_ch, t_ch)
        elif mode != "none":
            kind = "projector" if METHOD_ADAPTERS.get(mode) == "projector" else "conv3x3"
            self.adapters = FeatureAdapters(self.levels, s_ch, t_ch, kind=kind)

    # ------------------------------------------------------------------ what Ultralytics' trainer asks of its model
    @property
    def student_model(self) -> nn.Module:
        """The student, under the name Ultralytics' trainer looks for (class weights, quantisation)."""
        return self.student

    @property
    def criterion(self):
        return self.student.criterion

    @criterion.setter
    def criterion(self, value) -> None:
        self.student.criterion = value

    @property
    def end2end(self):
        return getattr(self.student, "end2end", False)

    @end2end.setter
    def end2end(self, value) -> None:
        self.student.end2end = value

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("stride", "names", "nc", "args", "yaml", "task", "class_weights", "pt_path"):
                return getattr(self.student, name)
            raise

    def init_criterion(self):
        return self.student.init_criterion()

    def set_head_attr(self, **kwargs) -> None:
        self.student.set_head_attr(**kwargs)

    def fuse(self, *args, **kwargs) -> nn.Module:
        return self.student.fuse(*args, **kwargs)

    def __deepcopy__(self, memo: dict) -> YoloDistiller:
        """A copy (Ultralytics' EMA keeps one) that shares the frozen teacher instead of copying it."""
        memo[id(self.teacher)] = self.teacher
        clone = type(self).__new__(type(self))
        memo[id(self)] = clone
        clone.__dict__.update({key: copy.deepcopy(value, memo) for key, value in self.__dict__.items()})
        return clone

    # -------------------------------------------------------------------------------------------- forward
    def forward(self, x, *args, **kwargs):
        """A batch dict: ``(loss vector, loss items)`` (:meth:`loss`); an image tensor: the student's output."""
        if isinstance(x, dict):
            return self.loss(x, *args, **kwargs)
        return self.student(x, *args, **kwargs)

    @property
    def kd_keys(self) -> tuple[str, ...]:
        return feature_loss_keys(self.settings.feature_mode)

    def loss(self, batch: dict, preds=None) -> tuple[Tensor, dict]:
        """The student's YOLO loss vector with the KD term appended (times the batch size), and the loss items with
        the KD terms added. Outside training (Ultralytics' validation loss) the KD terms are zero."""
        images = batch["img"]
        if not self.training:
            preds = self.student(images) if preds is None else preds
            det_loss, items = self.student.loss(batch, preds)
            zero = det_loss.new_zeros(1)
            return torch.cat([det_loss, zero]), {**items, **{k: zero[0].detach() for k in self.kd_keys}}
        with capture_neck(self.student, "student") as student_maps:
            preds = self.student(images)
        det_loss, items = self.student.loss(batch, preds)
        scale = self.kd_scale
        if self.settings.feature_mode == "none" or scale <= 0:
            learned = self.adapters if self.adapters is not None else self.feature_kd
            params = list(learned.parameters()) if learned is not None else []
            zero = sum((p.sum() for p in params), images.new_zeros(())) * 0.0  # adapters stay in the graph
            terms = {k: zero for k in self.kd_keys}
        else:
            terms = {k: scale * v for k, v in self.feature_terms(images, dict(student_maps), batch).items()}
        kd = sum(terms.values(), images.new_zeros(()).float())
        items = {**items, **{k: v.detach() for k, v in terms.items()}}
        return torch.cat([det_loss, (kd * images.shape[0]).view(1).to(det_loss.dtype)]), items

    def teacher_maps(self, images: Tensor, with_scores: bool) -> tuple[dict[str, Tensor], dict[str, Tensor] | None]:
        """The teacher's maps paired with the student's levels (keyed by the *student's* level names), and with
        ``with_scores`` its confidence per position on each. Call under ``no_grad``."""
        teacher = self.teacher
        wanted = dict(self.pairs)
        if self.teacher_is_yolo:
            with capture_neck(teacher, "teacher", head=with_scores) as captured:
                teacher(images)
            maps = {s: captured[t] for s, t in wanted.items()}
            scores = None
            if with_scores:
                sizes = {name: tuple(captured[name].shape[-2:]) for name in yolo_levels(teacher, "teacher")}
                per_level = head_confidence(captured["head"], sizes)
                scores = {s: per_level[t] for s, t in wanted.items()}
            return maps, scores
        fpn = pixel_fpn_features(teacher, images)
        maps = {s: fpn[t] for s, t in wanted.items()}
        scores = None
        if with_scores:
            per_level = teacher_scores(teacher, {t: fpn[t] for t in set(wanted.values())})
            scores = {s: per_level[t] for s, t in wanted.items()}
        return maps, scores

    def feature_terms(self, images: Tensor, student_maps: dict[str, Tensor], batch: dict) -> dict[str, Tensor]:
        """The (unscaled) feature term of the mode on the paired levels: ``{loss key: weighted scalar}``."""
        s = self.settings
        mode = s.feature_mode
        with torch.no_grad():
            teacher_maps, scores = self.teacher_maps(images, with_scores=mode == "score_weighted")
        for name in self.levels:
            if teacher_maps[name].shape[-2:] != student_maps[name].shape[-2:]:
                raise ValueError(
                    f"level {name}: teacher map {tuple(teacher_maps[name].shape[-2:])} and student map "
                    f"{tuple(student_maps[name].shape[-2:])} differ on a {tuple(images.shape[-2:])} batch"
                )
        height, width = images.shape[-2:]
        boxes = batch_boxes(batch["bboxes"], batch["batch_idx"], images.shape[0], height, width)
        students = [student_maps[n] for n in self.levels]
        teachers = [teacher_maps[n] for n in self.levels]
        if self.feature_kd is not None:
            return self.feature_kd(students, teachers, boxes, (height, width), s)
        if self.adapters is not None:
            adapted = self.adapters(dict(zip(self.levels, students)))
            students = [adapted[n] for n in self.levels]
        method = METHOD_LOSSES.get(mode)
        if method is not None:
            level_scores = [scores[n] for n in self.levels] if scores is not None else None
            return method(students, teachers, s, level_scores)
        if mode not in REGION_MODES:
            raise ValueError(f"distill.feature_mode={mode}: not available for a YOLO student")
        if mode == "all":
            masks = [torch.ones(t.shape[0], *t.shape[-2:], dtype=torch.bool, device=t.device) for t in teachers]
        else:
            level_masks = self.feature_masks(boxes, {n: tuple(student_maps[n].shape[-2:]) for n in self.levels})
            masks = [level_masks[n] for n in self.levels]
        return decoupled_feature_loss(students, teachers, masks, s)

    def feature_masks(self, boxes: Sequence[Tensor], sizes: Mapping[str, tuple[int, int]]) -> dict[str, Tensor]:
        """DeFeat's object masks on the distilled levels (``(N, H, W)`` bool each): every box on its one level by
        the rule with :attr:`level_k0`, marking the cells it covers at that level's stride."""
        return object_masks(boxes, {n: sizes[n] for n in self.levels}, self.strides, k0=self.level_k0)

    @property
    def level_k0(self) -> int:
        """k0 of the box-to-level rule: ``distill.level_k0`` or :data:`~defeat.models.yolo.YOLO_LEVEL_K0`."""
        return self.settings.level_k0 if self.settings.level_k0 is not None else YOLO_LEVEL_K0
