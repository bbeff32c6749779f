"""The fast path's float32 islands as modules: what stays float32 inside the autocast region, and why.

* :class:`FloatOutputs` - runs as before (under autocast) and returns float32 outputs; on the RPN and one-stage
  heads, so that box coding, proposal selection, NMS and every loss see float32 (autocast would keep e.g.
  softmax in bfloat16).
* :class:`Float32Region` - runs with autocast off on float32 inputs; on the Faster R-CNN box predictor.
* :class:`MatmulRoIAlign` - torchvision's ``MultiScaleRoIAlign`` in float32 with autocast off (RoIAlign has
  no bfloat16 kernel) that pools with :func:`defeat.models.ops.roi_align_matmul` where gradients flow (its
  backward is much faster on CPU than torchvision's scatter kernel; same result).
* :class:`DeadTapSafeConv` - a convolution that runs in float32 where its input is so small that a kernel tap
  sees only padding (:func:`has_dead_taps`).

How they are put in place: :func:`view_of` makes, from a model's module, an instance of the island subclass of
that module's class that *shares the module's state* (its ``__dict__``: parameters, buffers, submodules, hooks,
train/eval). Placing it where the module was changes only which ``forward`` runs: the parameter names (so the
state dict and checkpoints), the Parameter objects (so the optimizer), attribute access
(``roi_heads.box_predictor.cls_score``) and ``isinstance`` checks are what they were, and ``copy.deepcopy``
copies the view like any module, so a copy computes with its own weights. Nothing replaces ``forward`` on an
instance or swaps a library function globally. Wrappers around the module were the alternative; they would need
state-dict hooks to keep the keys and would still change parameter names and attribute paths.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn
from torchvision.ops.poolers import MultiScaleRoIAlign, _convert_to_roi_format, _filter_input, _setup_scales

from defeat.models.ops import roi_align_matmul


class Island(nn.Module):
    """Base of the island classes; an island's ``forward`` changes dtypes around the class's own forward."""


@functools.cache
def island_class(island: type[Island], base: type[nn.Module]) -> type[nn.Module]:
    """The class of ``island`` over ``base``: ``island`` itself where it already subclasses ``base`` (e.g.
    :class:`DeadTapSafeConv` for ``nn.Conv2d``), else a subclass of both whose ``forward`` is the island's
    around ``base``'s (e.g. ``Float32Region[FastRCNNPredictor]``)."""
    if issubclass(island, base):
        return island
    return type(f"{island.__name__}[{base.__name__}]", (island, base), {"__module__": island.__module__})


def view_of(module: nn.Module, island: type[Island]) -> nn.Module:
    """``module`` as an ``island``: a new object of :func:`island_class` sharing ``module``'s ``__dict__``
    (see the module docstring)."""
    cls = island_class(island, type(module))
    view = cls.__new__(cls)
    object.__setattr__(view, "__dict__", module.__dict__)
    return view


def to_float(value):
    """``value`` with every floating-point tensor (also inside dicts, lists and tuples) in float32."""
    if torch.is_tensor(value):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, dict):
        return type(value)((k, to_float(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(to_float(v) for v in value)
    return value


def _device_type(value) -> str | None:
    """The device type of the first tensor in ``value`` (searching dicts, lists and tuples)."""
    if torch.is_tensor(value):
        return value.device.type
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    return next((kind for kind in map(_device_type, items) if kind is not None), None)


class FloatOutputs(Island):
    """Runs as before (under autocast) and returns float32 outputs."""

    def forward(self, *args, **kwargs):
        return to_float(super().forward(*args, **kwargs))


class Float32Region(Island):
    """Runs with autocast off on float32 inputs."""

    def forward(self, *args, **kwargs):
        with torch.autocast(_device_type((args, kwargs)) or "cpu", enabled=False):
            return super().forward(*to_float(args), **to_float(kwargs))


class MatmulRoIAlign(Island, MultiScaleRoIAlign):
    """``MultiScaleRoIAlign`` on float32 features with autocast off, pooling with :func:`roi_align_matmul` where
    gradients flow into the features (torchvision's kernel otherwise, e.g. in evaluation)."""

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        with torch.autocast(_device_type(x) or "cpu", enabled=False):
            x, boxes = to_float(x), to_float(boxes)
            if not (torch.is_grad_enabled() and any(v.requires_grad for v in x.values())):
                return super().forward(x, boxes, image_shapes)
            return self._pool_matmul(x, boxes, image_shapes)

    def _pool_matmul(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes) -> Tensor:
        """torchvision's ``_multiscale_roi_align`` with :func:`roi_align_matmul` (no tracing branch)."""
        features = _filter_input(x, self.featmap_names)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(
                features, image_shapes, self.canonical_scale, self.canonical_level
            )
        rois = _convert_to_roi_format(boxes)
        if len(features) == 1:
            return roi_align_matmul(features[0], rois, self.output_size, self.scales[0], self.sampling_ratio)
        levels = self.map_levels(boxes)
        result = features[0].new_zeros((len(rois), features[0].shape[1], *self.output_size))
        for level, (feature, scale) in enumerate(zip(features, self.scales)):
            idx = torch.where(levels == level)[0]
            pooled = roi_align_matmul(feature, rois[idx], self.output_size, scale, self.sampling_ratio)
            result[idx] = pooled.to(result.dtype)
        return result


class DeadTapSafeConv(Island, nn.Conv2d):
    """A convolution that runs in float32 (autocast off, weights cast too: a distiller's frozen teacher keeps
    them in the low precision) where, under autocast, a kernel tap sees only padding (:func:`has_dead_taps`)."""

    def forward(self, x: Tensor) -> Tensor:
        if (
            x.dim() == 4
            and max(self.kernel_size) > 1
            and torch.is_autocast_enabled(x.device.type)
            and has_dead_taps(tuple(x.shape[-2:]), self)
        ):
            with torch.autocast(x.device.type, enabled=False):
                bias = self.bias.float() if self.bias is not None else None
                return self._conv_forward(x.float(), self.weight.float(), bias)
        return super().forward(x)


def has_dead_taps(size: tuple[int, int], conv: nn.Conv2d) -> bool:
    """Whether some kernel tap of ``conv`` sees only padding on an input of spatial ``size``.

    oneDNN's bfloat16 weight-gradient kernel leaves the gradient of such taps uninitialised (NaN or garbage),
    e.g. on RetinaNet's P7 conv (3x3, stride 2) on the 1x1 P6 map of a small image.
    """
    if isinstance(conv.padding, str):
        return min(size) < max(conv.kernel_size)
    for length, k, s, p, d in zip(size, conv.kernel_size, conv.stride, conv.padding, conv.dilation):
        outputs = (length + 2 * p - d * (k - 1) - 1) // s + 1
        for tap in range(k):
            if not any(0 <= o * s - p + tap * d < length for o in range(outputs)):
                return True
    return False
