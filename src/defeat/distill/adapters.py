"""Student-side adapters: one 3x3 conv per FPN level mapping student features into the teacher's space."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor, nn


def init_adapter_(conv: nn.Conv2d, scale: float = 1e-4) -> nn.Conv2d:
    """The official initialisation: weight ~ N(0, 1) folded into (-2, 2) by ``fmod``, times ``scale``.

    The bias starts at 0, so a fresh adapter outputs ~0 and the first KD gradients are small.
    """
    with torch.no_grad():
        conv.weight.normal_().fmod_(2.0).mul_(scale)
        if conv.bias is not None:
            conv.bias.zero_()
    return conv


class FeatureAdapters(nn.Module):
    """One ``Conv2d(student_channels, teacher_channels, 3, padding=1)`` (bias, no activation) per level.

    Args:
        levels: level names, e.g. ``["P2", ..., "P6"]``.
        student_channels / teacher_channels: channel counts of the two FPNs (256 for the zoo's detectors).
    """

    def __init__(self, levels: Sequence[str], student_channels: int = 256, teacher_channels: int = 256,
                 init_scale: float = 1e-4) -> None:
        super().__init__()
        self.levels = list(levels)
        self.convs = nn.ModuleDict({
            name: init_adapter_(nn.Conv2d(student_channels, teacher_channels, 3, padding=1), init_scale)
            for name in self.levels
        })

    def forward(self, features: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Level name -> student map ``(N, C_s, H, W)``  to  level name -> adapted map ``(N, C_t, H, W)``."""
        return {name: self.convs[name](features[name]) for name in self.levels}
