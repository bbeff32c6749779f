"""What every distiller shares: a trained student, a frozen teacher held outside the module tree, and the
schedule of the distillation weights."""

from __future__ import annotations

import math

from torch import nn

from defeat.config import KD_SCHEDULES, DistillSettings


def kd_scale_at(step: int, max_steps: int, policy: str = "constant", stop_step: int = 0) -> float:
    """Multiplier of every distillation weight at ``step``.

        constant: 1;   linear: 1 - step / H;   cosine: (1 + cos(pi * step / H)) / 2;   0 from ``stop_step`` on

    where the horizon H is ``stop_step`` when set (> 0), else ``max_steps``.
    """
    if policy not in KD_SCHEDULES:
        raise ValueError(f"weight_decay_policy: unknown value {policy!r} (choose from {', '.join(KD_SCHEDULES)})")
    if stop_step > 0 and step >= stop_step:
        return 0.0
    horizon = stop_step if stop_step > 0 else max_steps
    progress = min(max(step / horizon, 0.0), 1.0) if horizon > 0 else 0.0
    if policy == "linear":
        return 1.0 - progress
    if policy == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0


class TeacherStudentModule(nn.Module):
    """Base of the distillers: registers ``student`` (subclasses add ``adapters``), keeps the teacher out.

    The teacher gets ``requires_grad=False`` and eval mode for good; a tuple attribute is not a registered
    submodule, so the teacher stays out of ``state_dict()``, ``parameters()`` (the optimizer) and DDP, while
    ``.to()`` / ``.cuda()`` still move it along. ``before_step(step)`` is the training loop's hook that sets
    ``kd_scale``, the multiplier of every distillation weight (:func:`kd_scale_at`).
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, settings: DistillSettings, max_steps: int) -> None:
        super().__init__()
        self.settings = settings
        self.max_steps = max_steps
        self.student = student
        teacher.requires_grad_(False)
        teacher.eval()
        self._teacher = (teacher,)
        self.kd_scale = 1.0

    @property
    def teacher(self) -> nn.Module:
        return self._teacher[0]

    def train(self, mode: bool = True) -> TeacherStudentModule:
        super().train(mode)
        self.teacher.eval()  # never leaves eval mode
        return self

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        self.teacher._apply(fn)  # .to(device) / .cuda() move the teacher along
        return self

    def set_kd_scale(self, step: int, max_steps: int | None = None) -> float:
        """Set the multiplier of all KD weights for ``step`` (see :func:`kd_scale_at`) and return it."""
        s = self.settings
        self.kd_scale = kd_scale_at(
            step, self.max_steps if max_steps is None else max_steps, s.weight_decay_policy, s.stop_step
        )
        return self.kd_scale

    def before_step(self, step: int) -> None:
        """The training loop's per-step callback."""
        self.set_kd_scale(step)
