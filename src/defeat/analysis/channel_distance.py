"""Per-channel teacher-student distance in object and background regions (DeFeat supplementary, Fig. 1).

Pure functions on tensors; the ``defeat analyze channel-distance`` command (:mod:`defeat.cli.analyze_features`)
feeds them FPN maps and the plots live in :mod:`defeat.analysis.feature_plots`.

For one FPN level with teacher map ``T`` and student map ``S`` (both ``(N, C, H, W)``, computed from the same
transformed input), object mask ``M`` and valid (non-padding) mask ``V`` (both ``(N, H, W)``):

    d_obj[c] = sum_{n,y,x} M V |T - S|[n,c,y,x]  /  sum_{n,y,x} M V
    d_bg[c]  = sum_{n,y,x} (1-M) V |T - S|[n,c,y,x]  /  sum_{n,y,x} (1-M) V

i.e. the mean absolute difference over all object (background) pixels of all images pooled, per channel. The
padding that batches the image to a multiple of 32 is neither object nor background. A region with no pixels
gives NaN.

When teacher and student FPNs differ in width (``C_t != C_s``) the raw maps cannot be compared channel by channel.
The ``probe`` comparison maps each student's raw map into the teacher's channels with the least-squares linear map
(1x1, with bias) fitted on the analysis images' valid pixels of that student alone, both regions pooled:

    W = argmin_W  sum_{n,y,x} V |T[n,:,y,x] - W^T [S[n,:,y,x]; 1]|^2  =  (X^T X + lambda I)^-1 X^T Y

(``X``: the valid pixels' ``[S; 1]`` rows, ``Y``: the teacher's), then measures ``d_obj`` / ``d_bg`` on ``W^T [S; 1]``.
Every student, the baseline included, gets the same procedure; no region is weighted, so the map favours no
distillation loss (unlike the distillation adapter, trained with the student's own weights).

Object masks reuse :mod:`defeat.distill.masks` (there is one mask implementation in the project):

* ``rule="all"`` - every GT box marks the cells it covers on the level (:func:`~defeat.distill.masks.box_cells`);
* ``rule="assigned"`` - only the boxes DeFeat's level rule assigns to the level
  (:func:`~defeat.distill.masks.object_masks`), i.e. exactly the distiller's object mask.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from defeat.distill.masks import box_cells, object_masks

MASK_RULES = ("all", "assigned")

#: the supplementary's order of students: no KD, object only, background only, all regions, decoupled (DeFeat)
SEED_ORDER = ("none", "object", "background", "all", "decoupled")


def region_masks(
    boxes: Sequence[Tensor],
    feature_sizes: Mapping[str, tuple[int, int]],
    strides: Mapping[str, int],
    rule: str = "all",
    k0: int = 4,
) -> dict[str, Tensor]:
    """Object masks, one ``(N, H_l, W_l)`` bool tensor per level, for either :data:`MASK_RULES` rule.

    Args:
        boxes: per image, ``(G_i, 4)`` xyxy in the padded-tensor frame.
        feature_sizes: level name -> ``(H_l, W_l)``, every level of the FPN in increasing-stride order
            (the ``assigned`` rule needs all levels to assign boxes to one).
        strides: level name -> stride.
        rule: ``all`` (every box on every level) or ``assigned`` (DeFeat's one level per box, rule constant ``k0``).
    """
    if rule not in MASK_RULES:
        raise ValueError(f"mask rule: unknown value {rule!r} (choose from {', '.join(MASK_RULES)})")
    if rule == "assigned":
        return object_masks(boxes, feature_sizes, strides, k0=k0)
    out = {}
    for name, (height, width) in feature_sizes.items():
        per_image = [box_cells(b.reshape(-1, 4).float(), strides[name], height, width).any(dim=0) for b in boxes]
        out[name] = torch.stack(per_image) if per_image else torch.zeros(0, height, width, dtype=torch.bool)
    return out


def valid_mask(image_sizes: Sequence[tuple[int, int]], stride: int, height: int, width: int) -> Tensor:
    """``(N, H, W)`` bool: cells of a stride-``stride`` map that hold image, not batch padding.

    Cell ``(y, x)`` covers input pixels from ``(y * stride, x * stride)``; it is valid when that corner lies
    inside the ``(h_n, w_n)`` image, i.e. ``y < ceil(h_n / stride)`` and ``x < ceil(w_n / stride)``.
    """
    ys = torch.arange(height)[:, None]
    xs = torch.arange(width)[None, :]
    rows = [(ys < math.ceil(h / stride)) & (xs < math.ceil(w / stride)) for h, w in image_sizes]
    return torch.stack(rows) if rows else torch.zeros(0, height, width, dtype=torch.bool)


@dataclass
class RegionSums:
    """Running per-channel sums of ``|T - S|`` and pixel counts in object and background regions."""

    obj_sum: Tensor  # (C,) float64
    bg_sum: Tensor  # (C,) float64
    obj_count: int = 0
    bg_count: int = 0

    @classmethod
    def zeros(cls, channels: int) -> RegionSums:
        return cls(torch.zeros(channels, dtype=torch.float64), torch.zeros(channels, dtype=torch.float64))

    def __add__(self, other: RegionSums) -> RegionSums:
        if self.obj_sum.shape != other.obj_sum.shape:
            raise ValueError(f"RegionSums: channel counts differ ({self.obj_sum.numel()} vs {other.obj_sum.numel()})")
        return RegionSums(
            self.obj_sum + other.obj_sum,
            self.bg_sum + other.bg_sum,
            self.obj_count + other.obj_count,
            self.bg_count + other.bg_count,
        )

    def means(self) -> tuple[Tensor, Tensor]:
        """``(d_obj, d_bg)``, each ``(C,)`` float64; NaN for a region without pixels."""
        nan = float("nan")
        obj = self.obj_sum / self.obj_count if self.obj_count else torch.full_like(self.obj_sum, nan)
        bg = self.bg_sum / self.bg_count if self.bg_count else torch.full_like(self.bg_sum, nan)
        return obj, bg


def region_channel_sums(teacher: Tensor, student: Tensor, obj_mask: Tensor, valid: Tensor | None = None) -> RegionSums:
    """Per-channel sums of ``|T - S|`` over object and background pixels of one level (see module docstring).

    Args:
        teacher, student: ``(N, C, H, W)``; same shape (compare the adapter's output when channels differ).
        obj_mask: ``(N, H, W)`` bool object mask.
        valid: ``(N, H, W)`` bool non-padding mask; None = every pixel is valid.
    """
    if teacher.shape != student.shape:
        raise ValueError(f"feature shapes differ: teacher {tuple(teacher.shape)} vs student {tuple(student.shape)}")
    n, c, h, w = teacher.shape
    if tuple(obj_mask.shape) != (n, h, w):
        raise ValueError(f"object mask shape {tuple(obj_mask.shape)} does not fit features {tuple(teacher.shape)}")
    valid = torch.ones_like(obj_mask, dtype=torch.bool) if valid is None else valid.bool()
    obj = (obj_mask.bool() & valid).to(torch.float64)
    bg = (~obj_mask.bool() & valid).to(torch.float64)
    diff = (teacher.detach().double() - student.detach().double()).abs()
    return RegionSums(
        torch.einsum("nchw,nhw->c", diff, obj),
        torch.einsum("nchw,nhw->c", diff, bg),
        int(obj.sum().item()),
        int(bg.sum().item()),
    )


@dataclass
class NormalEquations:
    """Running ``X^T X`` and ``X^T Y`` of the least-squares map from student pixels ``[S; 1]`` to teacher pixels
    (module docstring), accumulated image by image in float64."""

    xtx: Tensor  # (C_s + 1, C_s + 1)
    xty: Tensor  # (C_s + 1, C_t)

    @classmethod
    def zeros(cls, student_channels: int, teacher_channels: int) -> NormalEquations:
        k = student_channels + 1
        return cls(torch.zeros(k, k, dtype=torch.float64), torch.zeros(k, teacher_channels, dtype=torch.float64))

    def add(self, teacher: Tensor, student: Tensor, valid: Tensor | None = None) -> NormalEquations:
        """Add the valid pixels of ``teacher`` ``(N, C_t, H, W)`` and ``student`` ``(N, C_s, H, W)``."""
        x, y = _pixels(student, valid), _pixels(teacher, valid)
        x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
        return NormalEquations(self.xtx + x.T @ x, self.xty + x.T @ y)

    def solve(self, ridge: float = 1e-6) -> Tensor:
        """``W`` ``(C_s + 1, C_t)``; ``ridge`` (relative to the mean diagonal of ``X^T X``) keeps a dead channel
        from making the system singular."""
        k = self.xtx.shape[0]
        scale = float(self.xtx.diagonal().mean()) or 1.0
        return torch.linalg.solve(self.xtx + ridge * scale * torch.eye(k, dtype=self.xtx.dtype), self.xty)


def _pixels(maps: Tensor, valid: Tensor | None) -> Tensor:
    """``(P, C)`` float64: the pixels of ``(N, C, H, W)`` maps where ``valid`` ``(N, H, W)`` holds (all if None)."""
    rows = maps.detach().double().permute(0, 2, 3, 1).reshape(-1, maps.shape[1])
    return rows if valid is None else rows[valid.reshape(-1).bool()]


def apply_linear_map(student: Tensor, weights: Tensor) -> Tensor:
    """``W^T [S; 1]`` per pixel: ``(N, C_s, H, W)`` -> ``(N, C_t, H, W)`` float64 (``weights`` from
    :meth:`NormalEquations.solve`)."""
    mapped = torch.einsum("nchw,ct->nthw", student.detach().double(), weights[:-1])
    return mapped + weights[-1].view(1, -1, 1, 1)


def channel_distance(
    teacher: Tensor, student: Tensor, obj_mask: Tensor, valid: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """``(d_obj, d_bg)``: per-channel mean ``|T - S|`` over object / background pixels, each ``(C,)`` float64."""
    return region_channel_sums(teacher, student, obj_mask, valid).means()


@dataclass
class StudentDistance:
    """The result for one student: per-channel distances and what was compared."""

    name: str
    mode: str  # the student's feature-distillation mode ('none' for a plain detector)
    feature: str  # 'raw' (neck output), 'adapter' (the distillation adapter's output) or 'probe' (least-squares map)
    obj: Tensor  # (C,)
    bg: Tensor  # (C,)
    obj_pixels: int = 0
    bg_pixels: int = 0
    notes: list[str] = field(default_factory=list)


def seed_order(students: Sequence[StudentDistance]) -> list[StudentDistance]:
    """Students sorted as the supplementary's panels (no KD, object, background, all, decoupled); others
    (e.g. ``fgfi``) follow in the order given. The sort is stable."""
    rank = {mode: i for i, mode in enumerate(SEED_ORDER)}
    return sorted(students, key=lambda s: rank.get(s.mode, len(SEED_ORDER)))


def _mean(values: Tensor) -> float:
    finite = values[~torch.isnan(values)]
    return float(finite.mean()) if finite.numel() else float("nan")


def summary_rows(students: Sequence[StudentDistance], baseline: str | None) -> list[dict]:
    """One row per student x region: mean over channels and its ratio to the baseline (no-KD) student.

    ``ratio_to_baseline`` is ``mean / baseline's mean`` for the same region (None without a baseline).
    """
    means = {s.name: {"object": _mean(s.obj), "background": _mean(s.bg)} for s in students}
    if baseline is not None and baseline not in means:
        raise ValueError(f"baseline {baseline!r} is not one of the students {list(means)}")
    rows = []
    for s in students:
        for region in ("object", "background"):
            value = means[s.name][region]
            ratio = None
            if baseline is not None:
                ref = means[baseline][region]
                ratio = value / ref if ref and not math.isnan(ref) else float("nan")
            rows.append(
                {
                    "student": s.name,
                    "mode": s.mode,
                    "feature": s.feature,
                    "region": region,
                    "mean_distance": value,
                    "ratio_to_baseline": ratio,
                    "pixels": s.obj_pixels if region == "object" else s.bg_pixels,
                }
            )
    return rows


def check_layout(
    teacher_levels: Sequence[str],
    teacher_channels: int,
    student_levels: Sequence[str],
    student_channels: int,
    what: str = "student",
) -> None:
    """Refuse a student whose FPN levels or channel count differ from the teacher's, saying what differs."""
    problems = []
    if list(teacher_levels) != list(student_levels):
        problems.append(f"levels {'/'.join(student_levels)} vs the teacher's {'/'.join(teacher_levels)}")
    if teacher_channels != student_channels:
        problems.append(f"{student_channels} channels vs the teacher's {teacher_channels}")
    if problems:
        raise ValueError(f"{what}: FPN layout does not match the teacher's: {'; '.join(problems)}")
