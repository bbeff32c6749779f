"""The models' tensor ops: pure functions on tensors, no modules and no state.

* :func:`roi_align_matmul` - ``torchvision.ops.roi_align`` as dense matmuls (the same result; a much faster
  backward on CPU than torchvision's scalar scatter kernel). Used by the fast path's RoI pooler
  (:class:`defeat.engine.precision.MatmulRoIAlign`) where gradients flow.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _axis_weights(start: Tensor, size: Tensor, length: int, bins: int, samples: int) -> Tensor:
    """``A: (K, bins, length)``: torchvision's bilinear sampling along one axis, averaged over a bin's samples.

    Sample ``j`` (of ``S = bins * samples``) of RoI ``k`` sits at ``v = start_k + (j + 0.5) * size_k / S``; with
    ``l = floor(v)`` and ``f = v - l`` it puts weight ``1 - f`` on cell ``l`` and ``f`` on cell ``l + 1``, and
    ``A[k, b, :]`` is the mean over the ``samples`` samples of bin ``b``. As in torchvision's kernel a sample
    outside ``[-1, length]`` contributes 0, one in ``[-1, 0)`` is clamped to 0, and one at or beyond
    ``length - 1`` takes the last cell.
    """
    count = start.shape[0]
    j = (torch.arange(bins * samples, device=start.device, dtype=start.dtype) + 0.5) / (bins * samples)
    v = start[:, None] + j[None] * size[:, None]
    valid = ((v >= -1.0) & (v <= length)).to(v.dtype)
    v = v.clamp(min=0.0)
    low = v.floor().long()
    edge = low >= length - 1
    low = torch.where(edge, torch.full_like(low, length - 1), low)
    high = torch.where(edge, low, low + 1)
    frac = torch.where(edge, torch.zeros_like(v), v - low.to(v.dtype))
    weights = torch.zeros(count, bins * samples, length, device=start.device, dtype=start.dtype)
    weights.scatter_add_(2, low[..., None], ((1 - frac) * valid)[..., None])
    weights.scatter_add_(2, high[..., None], (frac * valid)[..., None])
    return weights.view(count, bins, samples, length).mean(2)


def roi_align_matmul(
    input: Tensor,
    boxes: Tensor,
    output_size,
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """``torchvision.ops.roi_align`` for ``(K, 5)`` RoIs ``(image, x1, y1, x2, y2)`` as dense matmuls.

    Bilinear sampling on a regular grid is separable, so RoI ``k``'s output on channel ``c`` is

        out[k, c] = A_y[k] @ F[n_k, c] @ A_x[k]^T,     A_y[k]: (PH, H),  A_x[k]: (PW, W)

    with the interpolation matrices of :func:`_axis_weights`; per image that is one GEMM over all its RoIs and
    one batched matmul, whose backward is matmuls too (torchvision's backward scatters sample by sample).
    Falls back to torchvision for what it does not cover (list boxes, adaptive ``sampling_ratio <= 0``).
    """
    from torchvision.ops import roi_align

    if isinstance(output_size, int):
        output_size = (output_size, output_size)
    if not torch.is_tensor(boxes) or sampling_ratio <= 0 or input.dim() != 4:
        return roi_align(input, boxes, output_size, spatial_scale, sampling_ratio, aligned)
    ph, pw = int(output_size[0]), int(output_size[1])
    n, channels, height, width = input.shape
    rois = boxes.to(input.dtype)
    offset = 0.5 if aligned else 0.0
    x1 = rois[:, 1] * spatial_scale - offset
    y1 = rois[:, 2] * spatial_scale - offset
    roi_w = rois[:, 3] * spatial_scale - offset - x1
    roi_h = rois[:, 4] * spatial_scale - offset - y1
    if not aligned:  # torchvision forces malformed RoIs to 1x1
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    ay = _axis_weights(y1, roi_h, height, ph, sampling_ratio)  # K, PH, H
    ax = _axis_weights(x1, roi_w, width, pw, sampling_ratio)  # K, PW, W
    batch = rois[:, 0].long()
    out = input.new_zeros((rois.shape[0], channels, ph, pw))
    parts, order = [], []
    for image in range(n):
        idx = torch.nonzero(batch == image).flatten()
        count = idx.numel()
        if count == 0:
            continue
        rows = input[image].transpose(0, 1).reshape(height, channels * width)  # H, C*W
        t = (ay[idx].reshape(count * ph, height) @ rows).view(count, ph * channels, width)
        pooled = torch.bmm(t, ax[idx].transpose(1, 2))  # k, PH*C, PW
        parts.append(pooled.view(count, ph, channels, pw).transpose(1, 2))
        order.append(idx)
    if not parts:
        return out
    return out.index_copy(0, torch.cat(order), torch.cat(parts))
