"""Student-side adapters: one 3x3 conv per distilled map (FPN level or backbone stage) mapping student features
into the teacher's space."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def init_adapter_(conv: nn.Conv2d, scale: float = 1e-4) -> nn.Conv2d:
    """The official initialisation: weight ~ N(0, 1) folded into (-2, 2) by ``fmod``, times ``scale``.

    The bias starts at 0 (the official code keeps PyTorch's default uniform bias; see docs/distill.md), so a
    fresh adapter outputs ~0 and the first KD gradients are small.
    """
    with torch.no_grad():
        conv.weight.normal_().fmod_(2.0).mul_(scale)
        if conv.bias is not None:
            conv.bias.zero_()
    return conv


def _per_level(channels: int | Mapping[str, int], levels: Sequence[str], what: str) -> dict[str, int]:
    if isinstance(channels, int):
        return {name: channels for name in levels}
    missing = [name for name in levels if name not in channels]
    if missing:
        raise ValueError(f"FeatureAdapters: no {what} channel count for {missing}")
    return {name: int(channels[name]) for name in levels}


class FeatureAdapters(nn.Module):
    """One ``Conv2d(student_channels, teacher_channels, 3, padding=1)`` (bias) per level, optionally + ReLU.

    Args:
        levels: level (or stage) names, e.g. ``["P2", ..., "P6"]`` or ``["layer3", "layer4"]``.
        student_channels / teacher_channels: one count for every level (256 for the zoo's FPNs) or a mapping
            level -> count (backbone stages differ).
        relu: a ReLU after the conv (the official backbone adapters have one; the FPN adapters do not).
    """

    def __init__(
        self,
        levels: Sequence[str],
        student_channels: int | Mapping[str, int] = 256,
        teacher_channels: int | Mapping[str, int] = 256,
        init_scale: float = 1e-4,
        relu: bool = False,
    ) -> None:
        super().__init__()
        self.levels = list(levels)
        self.relu = relu
        s_ch = _per_level(student_channels, self.levels, "student")
        t_ch = _per_level(teacher_channels, self.levels, "teacher")
        self.convs = nn.ModuleDict(
            {name: init_adapter_(nn.Conv2d(s_ch[name], t_ch[name], 3, padding=1), init_scale) for name in self.levels}
        )

    def forward(self, features: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Level name -> student map ``(N, C_s, H, W)``  to  level name -> adapted map ``(N, C_t, H, W)``."""
        out = {name: self.convs[name](features[name]) for name in self.levels}
        return {name: F.relu(x) for name, x in out.items()} if self.relu else out
