"""Feature-KD methods with learnable parts of their own: FGD and MGD, as feature modes of the one distiller.

* ``fgd`` - Focal and Global Distillation (Yang et al., CVPR 2022; github yzd-v/FGD,
  ``mmdet/distillation/losses/fgd.py``): every GT box on every distilled level, weighted by its inverse area on
  that level; the teacher's spatial and channel attention weight a foreground and a background imitation term;
  an attention term pulls the student's attention to the teacher's; a global term compares the two maps after
  a GcBlock-style context module each (learnable, one for the student, one for the teacher).
* ``mgd`` - Masked Generative Distillation (Yang et al., ECCV 2022; github yzd-v/MGD,
  ``det/mmdet/distillation/losses/mgd.py``): a random share of the student's pixels is zeroed and a small
  generator (3x3 conv, ReLU, 3x3 conv) must produce the teacher's whole map from the rest.

The math is in pure functions (formula in each docstring); the learnable parts are small modules
(:class:`ContextBlock`, :class:`FGDLevel`, :class:`MGDLevel`) gathered per FPN level in
:class:`LearnedFeatureKD`, which the distiller registers as ``feature_kd`` so that its optimizer, state dict,
DDP and checkpoints carry them. Both methods have their own student-side ``align`` (a 1x1 conv, only when the
channel counts differ, as the authors' code) instead of DeFeat's adapters. Each level's terms are summed over
the distilled levels (the authors' configs give every FPN level its own, equally weighted loss).

Defaults (``None`` in :class:`~defeat.config.DistillSettings`) follow the student's family, from the authors'
COCO configs for R50 students (:data:`defeat.models.families.LEARNED_KD_DEFAULTS` names the files;
:func:`resolve_learned_defaults`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from defeat.models.families import learned_kd_defaults

#: feature modes implemented here
LEARNED_MODES = ("fgd", "mgd")

#: the loss keys of each mode (FGD's four parts apart, each already weighted; their sum is the authors' loss)
LEARNED_LOSS_KEYS = {
    "fgd": ("loss_feat_fgd_fg", "loss_feat_fgd_bg", "loss_feat_fgd_mask", "loss_feat_fgd_global"),
    "mgd": ("loss_feat_mgd",),
}
#: loss key -> the settings field that weights it
LEARNED_WEIGHT_OF = {
    "loss_feat_fgd_fg": "fgd_alpha",
    "loss_feat_fgd_bg": "fgd_beta",
    "loss_feat_fgd_mask": "fgd_gamma",
    "loss_feat_fgd_global": "fgd_lambda",
    "loss_feat_mgd": "mgd_alpha",
}


def resolve_learned_defaults(settings, student: nn.Module | str):
    """In the ``fgd`` / ``mgd`` feature modes, ``settings`` with every unset (``None``) FGD / MGD field set to the
    authors' value for the ``student``'s family (a model, or its family's name; see
    :func:`defeat.models.families.learned_kd_defaults`, which names the source configs); otherwise (or when nothing
    is unset) the same object."""
    if settings.feature_mode not in LEARNED_MODES:
        return settings
    table = learned_kd_defaults(student, "student")
    unset = {key: value for key, value in table.items() if getattr(settings, key) is None}
    return dataclasses.replace(settings, **unset) if unset else settings


# ------------------------------------------------------------------------------------------------------ FGD
def fgd_masks(boxes: Sequence[Tensor], size: tuple[int, int], image_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """FGD's foreground and background masks on one ``(H, W)`` level, every box on it.

    A box ``(x1, y1, x2, y2)`` in pixels of an image of ``image_size = (h, w)`` covers the cells
    ``floor(y1 H / h) <= y <= ceil(y2 H / h)`` and ``floor(x1 W / w) <= x <= ceil(x2 W / w)`` (both ends
    included, as the authors' slices), ``n_y x n_x`` cells counted that way;

        M_fg[y, x] = max over the boxes covering (y, x) of 1 / (n_y n_x)        (0 elsewhere)
        M_bg[y, x] = [M_fg[y, x] = 0] / sum_(y', x') [M_fg[y', x'] = 0]           (0 when no cell is free)

    The authors divide by each image's unpadded size (mmdet's ``img_shape``) although the map covers the padded
    batch; the distiller passes the padded batch's size, which maps boxes onto the cells that see them (the two
    agree for an unpadded image).

    Returns:
        ``(M_fg, M_bg)``, each ``(N, H, W)`` float32.
    """
    height, width = size
    fg_masks, bg_masks = [], []
    for b in boxes:
        b = b.detach().float()
        ys = torch.arange(height, dtype=torch.float32, device=b.device)
        xs = torch.arange(width, dtype=torch.float32, device=b.device)
        x0 = torch.floor(b[:, 0] / image_size[1] * width)
        x1 = torch.ceil(b[:, 2] / image_size[1] * width)
        y0 = torch.floor(b[:, 1] / image_size[0] * height)
        y1 = torch.ceil(b[:, 3] / image_size[0] * height)
        weight = 1.0 / ((y1 + 1 - y0) * (x1 + 1 - x0))  # (B,)
        inside_y = (ys[None] >= y0[:, None]) & (ys[None] <= y1[:, None])  # (B, H)
        inside_x = (xs[None] >= x0[:, None]) & (xs[None] <= x1[:, None])  # (B, W)
        inside = inside_y[:, :, None] & inside_x[:, None, :]
        fg = (inside * weight[:, None, None]).amax(dim=0) if len(b) else torch.zeros(height, width, device=b.device)
        bg = (fg == 0).float()
        fg_masks.append(fg)
        bg_masks.append(bg / bg.sum().clamp_min(1.0))  # no free cell: all 0 (the sum is a count, >= 1 otherwise)
    return torch.stack(fg_masks), torch.stack(bg_masks)


def fgd_attention(feature: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """FGD's spatial and channel attention of one ``(N, C, H, W)`` map:

        A_S[n, y, x] = H W softmax_(y, x)( mean_c |F[n, c, y, x]| / T )
        A_C[n, c]    = C   softmax_c( mean_(y, x) |F[n, c, y, x]| / T )

    Returns ``(A_S (N, H, W), A_C (N, C))`` (float32).
    """
    n, c, h, w = feature.shape
    value = feature.float().abs()
    spatial = h * w * F.softmax((value.mean(dim=1) / temperature).reshape(n, -1), dim=1).reshape(n, h, w)
    channel = c * F.softmax(value.mean(dim=(2, 3)) / temperature, dim=1)
    return spatial, channel


def fgd_focal_loss(
    student: Tensor, teacher: Tensor, fg: Tensor, bg: Tensor, spatial_t: Tensor, channel_t: Tensor
) -> tuple[Tensor, Tensor]:
    """FGD's focal (foreground / background) imitation, both under the *teacher's* attention:

        L_fg = (1/N) sum_(n,c,y,x) M_fg[n,y,x] A_S^t[n,y,x] A_C^t[n,c] (F^s - F^t)^2[n,c,y,x]
        L_bg = the same with M_bg

    Args:
        student / teacher: ``(N, C, H, W)`` (student aligned to the teacher's channels).
        fg / bg: ``(N, H, W)`` masks of :func:`fgd_masks`.
        spatial_t / channel_t: the teacher's :func:`fgd_attention`.
    """
    n = student.shape[0]
    weight = spatial_t[:, None] * channel_t[:, :, None, None]
    error = (student.float() - teacher.float()).pow(2) * weight
    return (error * fg[:, None]).sum() / n, (error * bg[:, None]).sum() / n


def fgd_attention_loss(spatial_s: Tensor, channel_s: Tensor, spatial_t: Tensor, channel_t: Tensor) -> Tensor:
    """FGD's attention loss: ``(1/N) (sum |A_C^s - A_C^t| + sum |A_S^s - A_S^t|)``."""
    n = spatial_s.shape[0]
    return ((channel_s - channel_t).abs().sum() + (spatial_s - spatial_t).abs().sum()) / n


def fgd_global_loss(student_context: Tensor, teacher_context: Tensor) -> Tensor:
    """FGD's global loss on the maps after each side's :class:`ContextBlock`: ``(1/N) sum (G^s - G^t)^2``."""
    return (student_context.float() - teacher_context.float()).pow(2).sum() / student_context.shape[0]


class ContextBlock(nn.Module):
    """GcBlock-style global context (FGD's relation module): ``G(F) = F + W2 ReLU(LN(W1 c))`` with the context
    ``c[n, :] = sum_(y, x) softmax_(y, x)(W_k F)[n, y, x] F[n, :, y, x]``; ``W_k``: 1x1 conv C -> 1,
    ``W1``: 1x1 conv C -> C/2, ``W2``: 1x1 conv C/2 -> C. Initialised as the authors': ``W_k`` Kaiming normal
    (fan_in, ReLU gain, bias 0), ``W2`` zero (so ``G`` starts as the identity), ``W1`` PyTorch's default."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv_mask = nn.Conv2d(channels, 1, kernel_size=1)
        self.channel_add = nn.Sequential(
            nn.Conv2d(channels, channels // 2, kernel_size=1),
            nn.LayerNorm([channels // 2, 1, 1]),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels // 2, channels, kernel_size=1),
        )
        nn.init.kaiming_normal_(self.conv_mask.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.conv_mask.bias)
        nn.init.zeros_(self.channel_add[-1].weight)
        nn.init.zeros_(self.channel_add[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        weights = F.softmax(self.conv_mask(x).reshape(n, 1, h * w), dim=2)  # (N, 1, HW)
        context = torch.bmm(x.reshape(n, c, h * w), weights.transpose(1, 2)).reshape(n, c, 1, 1)
        return x + self.channel_add(context)


def make_align(student_channels: int, teacher_channels: int) -> nn.Module:
    """The authors' ``align``: a 1x1 conv when the channel counts differ, else nothing (identity)."""
    if student_channels == teacher_channels:
        return nn.Identity()
    return nn.Conv2d(student_channels, teacher_channels, kernel_size=1)


class FGDLevel(nn.Module):
    """FGD's learnable parts on one level: ``align`` and the student's and teacher's :class:`ContextBlock`."""

    def __init__(self, student_channels: int, teacher_channels: int) -> None:
        super().__init__()
        self.align = make_align(student_channels, teacher_channels)
        self.context_s = ContextBlock(teacher_channels)
        self.context_t = ContextBlock(teacher_channels)

    def forward(self, student: Tensor, teacher: Tensor, fg: Tensor, bg: Tensor, temperature: float) -> dict:
        """The four unweighted parts ``{"fg", "bg", "mask", "global"}`` on this level."""
        student = self.align(student)
        spatial_t, channel_t = fgd_attention(teacher, temperature)
        spatial_s, channel_s = fgd_attention(student, temperature)
        loss_fg, loss_bg = fgd_focal_loss(student, teacher, fg, bg, spatial_t, channel_t)
        return {
            "fg": loss_fg,
            "bg": loss_bg,
            "mask": fgd_attention_loss(spatial_s, channel_s, spatial_t, channel_t),
            "global": fgd_global_loss(self.context_s(student), self.context_t(teacher)),
        }


# ------------------------------------------------------------------------------------------------------ MGD
def mgd_mask(shape: tuple[int, int, int], ratio: float, generator: torch.Generator) -> Tensor:
    """MGD's random spatial mask ``(N, 1, H, W)`` for ``shape = (N, H, W)``: ``u ~ U[0, 1)`` per pixel (drawn from
    ``generator``), ``mask = 0 where u > 1 - ratio, else 1`` (so about ``ratio`` of the pixels are dropped)."""
    n, h, w = shape
    u = torch.rand((n, 1, h, w), generator=generator, device=generator.device)
    return (u <= 1 - ratio).float()


def mgd_loss(generated: Tensor, teacher: Tensor) -> Tensor:
    """MGD's generation loss ``(1/N) sum_(n,c,y,x) (G(M * F^s) - F^t)^2`` (unweighted)."""
    return (generated.float() - teacher.float()).pow(2).sum() / teacher.shape[0]


class MGDLevel(nn.Module):
    """MGD's learnable parts on one level: ``align`` and the generator (3x3 conv, ReLU, 3x3 conv; PyTorch's
    default initialisation, as the authors')."""

    def __init__(self, student_channels: int, teacher_channels: int) -> None:
        super().__init__()
        self.align = make_align(student_channels, teacher_channels)
        self.generation = nn.Sequential(
            nn.Conv2d(teacher_channels, teacher_channels, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(teacher_channels, teacher_channels, kernel_size=3, padding=1),
        )

    def forward(self, student: Tensor, teacher: Tensor, mask: Tensor) -> Tensor:
        """The unweighted generation loss on this level, ``mask`` from :func:`mgd_mask`."""
        student = self.align(student)
        return mgd_loss(self.generation(student * mask.to(student.dtype)), teacher)


# ------------------------------------------------------------------------------------------- the modes' term
class LearnedFeatureKD(nn.Module):
    """The ``fgd`` / ``mgd`` feature term on the distilled levels: one :class:`FGDLevel` / :class:`MGDLevel` per
    level (``levels[name]``), registered by the distiller as ``feature_kd``.

    Args:
        mode: ``"fgd"`` or ``"mgd"``.
        levels: the distilled (student) level names.
        student_channels / teacher_channels: the FPNs' channel counts: one for every level, or level -> count
            (a YOLO neck's maps differ in width).
        seed: seed of MGD's mask generator (a CPU ``torch.Generator``; masks move to the maps' device); ``None``:
            drawn from torch's global RNG (in ``mgd`` mode).
    """

    def __init__(
        self,
        mode: str,
        levels: Sequence[str],
        student_channels: int | Mapping[str, int],
        teacher_channels: int | Mapping[str, int],
        seed: int | None = None,
    ):
        super().__init__()
        if mode not in LEARNED_MODES:
            raise ValueError(f"LearnedFeatureKD: unknown mode {mode!r} (choose from {', '.join(LEARNED_MODES)})")
        self.mode = mode
        make = FGDLevel if mode == "fgd" else MGDLevel
        s_ch = {n: student_channels if isinstance(student_channels, int) else student_channels[n] for n in levels}
        t_ch = {n: teacher_channels if isinstance(teacher_channels, int) else teacher_channels[n] for n in levels}
        self.levels = nn.ModuleDict({name: make(s_ch[name], t_ch[name]) for name in levels})
        if seed is None:
            seed = int(torch.randint(2**62, ()).item()) if mode == "mgd" else 0
        self.generator = torch.Generator().manual_seed(seed)

    def forward(
        self,
        student_maps: Sequence[Tensor],
        teacher_maps: Sequence[Tensor],
        boxes: Sequence[Tensor],
        image_size: tuple[int, int],
        settings,
    ) -> dict[str, Tensor]:
        """The weighted loss keys of :data:`LEARNED_LOSS_KEYS` summed over the levels (in the order of
        ``levels``), weights and temperature read from ``settings`` (resolved: no ``None``)."""
        parts: dict[str, Tensor] = {}
        for module, student, teacher in zip(self.levels.values(), student_maps, teacher_maps):
            if self.mode == "fgd":
                fg, bg = fgd_masks(boxes, tuple(teacher.shape[-2:]), image_size)
                level = module(student, teacher, fg.to(teacher.device), bg.to(teacher.device), settings.fgd_temp)
            else:
                mask = mgd_mask((teacher.shape[0], *teacher.shape[-2:]), settings.mgd_lambda, self.generator)
                level = {"mgd": module(student, teacher, mask.to(student.device))}
            for name, value in level.items():
                parts[name] = parts[name] + value if name in parts else value
        if self.mode == "fgd":
            return {
                "loss_feat_fgd_fg": settings.fgd_alpha * parts["fg"],
                "loss_feat_fgd_bg": settings.fgd_beta * parts["bg"],
                "loss_feat_fgd_mask": settings.fgd_gamma * parts["mask"],
                "loss_feat_fgd_global": settings.fgd_lambda * parts["global"],
            }
        return {"loss_feat_mgd": settings.mgd_alpha * parts["mgd"]}
