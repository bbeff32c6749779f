"""Learning-rate schedule as a pure function of the step (so resuming needs only the step)."""

from __future__ import annotations

import math

from defeat.config import ScheduleConfig


def lr_factor(step: int, cfg: ScheduleConfig) -> float:
    """Multiplier of the base LR at ``step``: linear warm-up from ``warmup_factor`` to 1 over
    ``warmup_steps``, then cosine to 0 at ``max_steps`` (``0.5 (1 + cos(pi t))``) or ``gamma ** k``
    after the k-th milestone."""
    if step < cfg.warmup_steps:
        alpha = step / cfg.warmup_steps
        warm = cfg.warmup_factor * (1 - alpha) + alpha
    else:
        warm = 1.0
    if cfg.policy == "cosine":
        t = min(step, cfg.max_steps) / cfg.max_steps
        return warm * 0.5 * (1.0 + math.cos(math.pi * t))
    return warm * cfg.gamma ** sum(step >= m for m in cfg.milestones)
