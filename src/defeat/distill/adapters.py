"""Student-side adapters: one module per distilled map (FPN level or backbone stage) mapping student features
into the teacher's space: DeFeat's 3x3 conv, or what another method's reference uses (a 1x1 conv; Ultralytics'
1x1 conv, ReLU, 1x1 conv projector)."""

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


class Projector(nn.Sequential):
    """Ultralytics' distillation projector: ``Conv2d(C_s, C_t, 1)``, ReLU, ``Conv2d(C_t, C_t, 1)`` (biases,
    PyTorch's default initialisation)."""

    def __init__(self, student_channels: int, teacher_channels: int) -> None:
        super().__init__(
            nn.Conv2d(student_channels, teacher_channels, 1),
            nn.ReLU(),
            nn.Conv2d(teacher_channels, teacher_channels, 1),
        )

    @property
    def out_channels(self) -> int:
        return self[2].out_channels


#: adapter kinds: DeFeat's 3x3 conv (``init_adapter_``), a 1x1 conv (PyTorch's default initialisation, as the
#: CWD / PKD references' ``nn.Conv2d``), Ultralytics' :class:`Projector`
ADAPTER_KINDS = ("conv3x3", "conv1x1", "projector")


def _adapter(kind: str, student_channels: int, teacher_channels: int, init_scale: float) -> nn.Module:
    if kind == "conv3x3":
        return init_adapter_(nn.Conv2d(student_channels, teacher_channels, 3, padding=1), init_scale)
    if kind == "conv1x1":
        return nn.Conv2d(student_channels, teacher_channels, 1)
    if kind == "projector":
        return Projector(student_channels, teacher_channels)
    raise ValueError(f"FeatureAdapters: unknown kind {kind!r} (choose from {', '.join(ADAPTER_KINDS)})")


class FeatureAdapters(nn.Module):
    """One adapter per level, optionally + ReLU: by default DeFeat's ``Conv2d(student_channels, teacher_channels,
    3, padding=1)`` (bias, :func:`init_adapter_`).

    Args:
        levels: level (or stage) names, e.g. ``["P2", ..., "P6"]`` or ``["layer3", "layer4"]``.
        student_channels / teacher_channels: one count for every level (256 for the zoo's FPNs) or a mapping
            level -> count (backbone stages differ).
        relu: a ReLU after the conv (the official backbone adapters have one; the FPN adapters do not).
        kind: one of :data:`ADAPTER_KINDS` (``init_scale`` applies to ``conv3x3`` only).
    """

    def __init__(
        self,
        levels: Sequence[str],
        student_channels: int | Mapping[str, int] = 256,
        teacher_channels: int | Mapping[str, int] = 256,
        init_scale: float = 1e-4,
        relu: bool = False,
        kind: str = "conv3x3",
    ) -> None:
        super().__init__()
        self.levels = list(levels)
        self.relu = relu
        self.kind = kind
        s_ch = _per_level(student_channels, self.levels, "student")
        t_ch = _per_level(teacher_channels, self.levels, "teacher")
        self.convs = nn.ModuleDict({name: _adapter(kind, s_ch[name], t_ch[name], init_scale) for name in self.levels})

    def forward(self, features: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Level name -> student map ``(N, C_s, H, W)``  to  level name -> adapted map ``(N, C_t, H, W)``."""
        out = {name: self.convs[name](features[name]) for name in self.levels}
        return {name: F.relu(x) for name, x in out.items()} if self.relu else out


def adapters_from_state(weights: Mapping[str, Tensor]) -> FeatureAdapters:
    """The FPN :class:`FeatureAdapters` whose ``state_dict`` is ``weights`` (a checkpoint's ``adapters.*`` keys
    without the prefix), with the kind its keys and shapes show; the weights loaded."""
    if any(len(k.split(".")) == 4 for k in weights):  # convs.<level>.{0,2}.weight: a Projector
        kind, first = "projector", ".0.weight"
    else:
        kind, first = None, ".weight"
    levels = list(dict.fromkeys(k.split(".")[1] for k in weights if k.endswith(first) and k.count(".") >= 2))
    if not levels:
        raise ValueError(f"adapters: no adapter weights among {list(weights)[:3]}")
    weight = weights[f"convs.{levels[0]}{first}"]
    out_ch, in_ch = weight.shape[:2]
    kind = kind or ("conv1x1" if weight.shape[-1] == 1 else "conv3x3")
    adapters = FeatureAdapters(levels, int(in_ch), int(out_ch), kind=kind)
    adapters.load_state_dict(dict(weights))
    return adapters
