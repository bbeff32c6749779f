"""Gradient-norm maps of the FPN outputs (DeFeat supplementary, Fig. 2-3), as pure tensor functions plus a hook.

During back-propagation of a loss, the gradient reaching FPN level ``l`` is ``G_l = dL/dP_l`` (``(N, C, H, W)``).
Its per-pixel L2 norm over channels is

    g_l[n, y, x] = sqrt( sum_c G_l[n, c, y, x]^2 )

and the statistic the supplementary draws its conclusion from is, with object mask ``M`` and valid
(non-padding) mask ``V``,

    ratio_l = mean_{M V} g_l  /  mean_{(1-M) V} g_l

(> 1: object pixels receive larger gradients than background pixels). Over several images the means are pooled
over all pixels of all images (:class:`RegionNorms` adds up sums and counts).

:class:`FeatureGradHook` records ``G_l`` with tensor hooks registered on the outputs of a module that returns a
dict of maps (a detector's ``backbone``, i.e. ResNet + FPN), so it sees exactly the gradient that flows into the
neck during an ordinary ``loss.backward()`` - of the detection loss, the distiller's loss, or their sum.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from defeat.distill import is_kd_loss


def loss_keys(names, which: str) -> list[str]:
    """The loss terms (of ``names``) that make up loss ``which``: ``detection`` (the detector's own terms),
    ``distillation`` (every KD term, :func:`defeat.distill.is_kd_loss`: FPN feature, head and backbone) or
    ``sum`` (all of them)."""
    names = list(names)
    if which == "sum":
        return names
    if which == "distillation":
        return [k for k in names if is_kd_loss(k)]
    if which == "detection":
        return [k for k in names if not is_kd_loss(k)]
    raise ValueError(f"unknown loss {which!r} (detection, distillation or sum)")


def pixel_grad_norm(grad: Tensor) -> Tensor:
    """``(N, C, H, W)`` gradient -> ``(N, H, W)`` per-pixel L2 norm over channels (float32)."""
    if grad.dim() != 4:
        raise ValueError(f"gradient: expected (N, C, H, W), got shape {tuple(grad.shape)}")
    return grad.float().pow(2).sum(dim=1).sqrt()


@dataclass
class RegionNorms:
    """Sums and pixel counts of a gradient-norm map in object and background regions (poolable with ``+``)."""

    obj_sum: float = 0.0
    obj_count: int = 0
    bg_sum: float = 0.0
    bg_count: int = 0

    def __add__(self, other: RegionNorms) -> RegionNorms:
        return RegionNorms(
            self.obj_sum + other.obj_sum,
            self.obj_count + other.obj_count,
            self.bg_sum + other.bg_sum,
            self.bg_count + other.bg_count,
        )

    @property
    def obj_mean(self) -> float:
        return self.obj_sum / self.obj_count if self.obj_count else math.nan

    @property
    def bg_mean(self) -> float:
        return self.bg_sum / self.bg_count if self.bg_count else math.nan

    @property
    def ratio(self) -> float:
        """Mean norm on object pixels / mean norm on background pixels (NaN if a region is empty or bg is 0)."""
        obj, bg = self.obj_mean, self.bg_mean
        if math.isnan(obj) or math.isnan(bg) or bg == 0:
            return math.nan
        return obj / bg


def region_norms(norm: Tensor, obj_mask: Tensor, valid: Tensor | None = None) -> RegionNorms:
    """Object / background sums and counts of a ``(N, H, W)`` (or ``(H, W)``) norm map.

    Args:
        norm: per-pixel gradient norm (:func:`pixel_grad_norm`).
        obj_mask: bool object mask of the same shape.
        valid: bool non-padding mask of the same shape; None = every pixel counts.
    """
    if norm.shape != obj_mask.shape or (valid is not None and valid.shape != norm.shape):
        raise ValueError(
            f"norm map {tuple(norm.shape)}, object mask {tuple(obj_mask.shape)} and valid mask "
            f"{None if valid is None else tuple(valid.shape)} must have one shape"
        )
    valid = torch.ones_like(obj_mask, dtype=torch.bool) if valid is None else valid.bool()
    obj = obj_mask.bool() & valid
    bg = ~obj_mask.bool() & valid
    norm = norm.detach().double()
    return RegionNorms(float(norm[obj].sum()), int(obj.sum()), float(norm[bg].sum()), int(bg.sum()))


class FeatureGradHook:
    """Capture the gradient of every output map of ``module`` (a dict-returning module such as an FPN backbone).

    A forward hook on ``module`` registers a tensor hook on each output that requires grad; the tensor hook
    stores the gradient under the level name. Use as a context manager around forward + backward::

        with FeatureGradHook(model.backbone, ["P2", ..., "P6"]) as hook:
            loss = sum(model(images, targets).values())
            loss.backward()
        hook.grads["P2"]  # (N, C, H, W)

    If the module runs several times inside the context, gradients of the same level are summed (as autograd
    would); ``features`` holds the outputs of the last forward. Tensor hooks also fire on ``torch.autograd.grad``
    through these maps, so call :meth:`clear` (or ``grads.clear()``) between backward passes you want apart.
    """

    def __init__(self, module: nn.Module, names: Sequence[str]) -> None:
        self.module = module
        self.names = list(names)
        self.grads: dict[str, Tensor] = {}
        self.features: dict[str, Tensor] = {}
        self._handle = None

    def _on_forward(self, module, inputs, output) -> None:
        maps = list(output.values()) if isinstance(output, dict) else list(output)
        if len(maps) != len(self.names):
            raise ValueError(
                f"FeatureGradHook: module returned {len(maps)} maps, expected {len(self.names)} "
                f"({'/'.join(self.names)})"
            )
        for name, tensor in zip(self.names, maps):
            self.features[name] = tensor
            if tensor.requires_grad:
                tensor.register_hook(self._saver(name))

    def _saver(self, name: str):
        def save(grad: Tensor) -> None:
            grad = grad.detach().clone()
            self.grads[name] = self.grads[name] + grad if name in self.grads else grad

        return save

    def clear(self) -> None:
        self.grads, self.features = {}, {}

    def __enter__(self) -> FeatureGradHook:
        self._handle = self.module.register_forward_hook(self._on_forward)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
