"""``build_distiller``: the one place that picks the distiller for a (student, teacher) pair.

============================  ======================  ==============================================
student / teacher             distiller               terms
============================  ======================  ==============================================
Faster R-CNN / Faster R-CNN   ``DeFeatDistiller``     features P2-P6, proposals
RetinaNet / RetinaNet         ``OneStageDistiller``   features P3-P7, anchors (same anchor generator)
FCOS / FCOS                   ``OneStageDistiller``   features P3-P7, locations
any other pair                ``OneStageDistiller``   features on the common levels only (warning)
no common FPN level           refused (ValueError with the reason)
============================  ======================  ==============================================
"""

from __future__ import annotations

from torch import nn

from defeat.config import DistillConfig
from defeat.distill.one_stage import OneStageDistiller, family_of
from defeat.distill.two_stage import DeFeatDistiller, check_compatible


def build_distiller(student: nn.Module, teacher: nn.Module, settings: DistillConfig | None = None,
                    max_steps: int = 0, where: str = "teacher") -> nn.Module:
    """The DeFeat distiller for this pair (see the table above); ``where`` names the teacher in messages.

    Both distillers share the interface: ``forward(images, targets)`` -> loss dict in train mode, student
    detections in eval mode; ``student``; ``teacher`` (outside the module tree); ``before_step(step)``.
    Raises ValueError (one line, with the reason) for pairs that cannot be distilled.
    """
    student_family, teacher_family = family_of(student, "student"), family_of(teacher, where)
    if student_family == teacher_family == "faster_rcnn":
        check_compatible(student, teacher, where=where)
        return DeFeatDistiller(student, teacher, settings, max_steps=max_steps)
    return OneStageDistiller(student, teacher, settings, max_steps=max_steps, where=where)
