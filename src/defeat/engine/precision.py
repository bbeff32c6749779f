"""The training/evaluation fast path: mixed precision placed where it pays, float32 where it must stay.

``precision`` (config key, default ``auto``) picks one of three modes:

* ``bf16``: ``torch.autocast(dtype=bfloat16)`` around the forward pass. On CPUs this needs AMX-BF16 or
  AVX-512-BF16 (oneDNN then runs convolutions and matmuls in bfloat16 several times faster); without them
  bfloat16 is emulated and slower than float32. On CUDA it needs a GPU with bfloat16 (Ampere or newer).
* ``fp16``: ``torch.autocast(dtype=float16)`` with a ``GradScaler``; CUDA only.
* ``fp32``: no autocast and the stock torchvision modules: exactly the engine before the fast path.

``auto`` is ``bf16`` on a CPU with AMX-BF16/AVX-512-BF16, ``bf16`` on a CUDA GPU with bfloat16 support, else
``fp16`` on CUDA, else ``fp32``; the choice and its reason are one line (:attr:`Precision.notice`) that the
trainer prints. Asking for ``bf16``/``fp16`` explicitly on hardware without it is *refused* with a one-line
``PrecisionError`` (a ValueError) rather than silently run slower; ``auto`` falls back with the notice.

Placement (:meth:`Precision.prepare`, applied to each detector, including a distiller's teacher). The
autocast region covers the whole forward pass (backbone, FPN, RPN head, a distiller's adapters and the
teacher's no-grad pass run in the low precision); inside it these stay float32:

* the RPN / one-stage heads' *outputs* are cast to float32, so box coding, proposal selection, NMS and every
  loss see float32 (autocast would keep e.g. softmax in bfloat16);
* RoI pooling and the Faster R-CNN box predictor (class logits, box deltas) run in float32 with autocast
  off. RoIAlign has no bfloat16 kernel; in training it runs as two dense matmuls per image and level
  (:func:`roi_align_matmul`, the same result as ``torchvision.ops.roi_align`` to ~1e-5), whose backward is
  2-7x faster on CPU than torchvision's scalar scatter kernel. The box head (``fc6``: 12544 x 1024, half the
  R18 detector's parameters, on only 64 RoIs) stays in bfloat16 although it gains little (1.2x measured:
  its weight is cast both ways every step);
* the distillation losses cast their inputs with ``.float()`` themselves (``defeat.distill.losses``).

A distiller's frozen teacher (outside the state dict and the optimizer) keeps its convolution weights in the
low precision after :meth:`Precision.prepare` (and, for Faster R-CNN, its box head's linear weights):
autocast caches its casts only for trainable weights, so it would otherwise cast the teacher's 27 M backbone
weights again every step; the values it computes with are the same. Convolutions on inputs so small that a kernel tap sees only padding run in float32 (oneDNN's
bfloat16 weight gradient leaves those taps uninitialised; see :func:`has_dead_taps`).

Measured and left off: channels-last memory format (on this CPU bfloat16 convolutions were no faster and
GroupNorm's backward 10x slower in channels-last). The optimizer step uses the fused kernel (SGD/AdamW
``fused=True``) where torch has one for the device. On CUDA the trainer also sets ``cudnn.benchmark`` (unless
``deterministic``) and pins the loader's memory. ``torch.compile`` is not used: on this CPU the student's compiled
backbone + FPN made a fast-path step slower (0.92x, after a 55-s cold compile; ``benchmarks/compile_speed.py``);
not measured on a GPU.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch
from torch import Tensor, nn

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_MARK = "_defeat_fast_path"
_LOW_PARAMS = "_defeat_low_precision_params"


class PrecisionError(ValueError):
    """The requested precision is not supported on this hardware (one line, with what to use instead)."""


# ------------------------------------------------------------------------------------------ capabilities
def cpu_bf16_support() -> tuple[bool, str]:
    """Whether this CPU runs bfloat16 natively (AMX-BF16 or AVX-512-BF16) and a few words on why."""
    try:
        amx = bool(torch.cpu._is_amx_tile_supported())
        avx512_bf16 = bool(torch.cpu._is_avx512_bf16_supported())
    except AttributeError:  # older torch: ask oneDNN
        amx, avx512_bf16 = False, bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)())
    if not torch.backends.mkldnn.is_available():
        return False, "torch was built without oneDNN"
    if amx:
        return True, "CPU with AMX-BF16"
    if avx512_bf16:
        return True, "CPU with AVX-512-BF16"
    return False, "this CPU has neither AMX-BF16 nor AVX-512-BF16"


def cuda_bf16_support(device: torch.device) -> tuple[bool, str]:
    """Whether this CUDA device runs bfloat16 natively (compute capability >= 8.0)."""
    major, minor = torch.cuda.get_device_capability(device)
    name = torch.cuda.get_device_name(device)
    if major >= 8:
        return True, f"{name} (sm_{major}{minor}) has bfloat16"
    return False, f"{name} (sm_{major}{minor}) has no bfloat16"


# ------------------------------------------------------------------------------------------ the plan
@dataclass(frozen=True)
class Precision:
    """A resolved precision: what runs in which dtype on ``device_type`` (see the module docstring)."""

    mode: str  # fp32 | bf16 | fp16
    device_type: str  # cpu | cuda
    requested: str = "fp32"
    reason: str = ""

    @property
    def enabled(self) -> bool:
        return self.mode != "fp32"

    @property
    def dtype(self) -> torch.dtype:
        return _DTYPES[self.mode]

    @property
    def notice(self) -> str:
        """One line for the log, e.g. ``precision: bf16 autocast (auto: CPU with AMX-BF16)``."""
        what = "fp32" if self.mode == "fp32" else f"{self.mode} autocast"
        if self.mode == "fp16":
            what += " + grad scaler"
        return f"precision: {what} ({self.requested}: {self.reason})" if self.reason else f"precision: {what}"

    def autocast(self):
        """The context the forward pass runs in (a no-op for fp32)."""
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def prepare(self, model: nn.Module) -> nn.Module:
        """Install the float32 islands on a detector (or on a distiller's student and teacher); idempotent.

        Changes no parameter or buffer of the trained model, so state dicts and checkpoints are the same as
        without it; a distiller's frozen teacher gets its convolution (and box-head) weights in the low
        precision, so after this it runs only under :meth:`autocast`. A no-op for fp32.
        """
        if not self.enabled:
            return model
        for module in _detectors_in(model):
            _place(module)
        for module in [*model.modules(), *(_teacher_modules(model))]:
            if isinstance(module, nn.Conv2d):
                _wrap(module, _guard_dead_taps(module))
        teacher_low = [m for m in _teacher_modules(model) if isinstance(m, nn.Conv2d)]
        teacher = getattr(model, "teacher", None)
        if isinstance(teacher, nn.Module) and _family(teacher) == "faster_rcnn":
            teacher_low += [m for m in teacher.roi_heads.box_head.modules() if isinstance(m, nn.Linear)]
        converted = getattr(model, _LOW_PARAMS, [])
        for module in teacher_low:  # frozen, outside the state dict and the optimizer
            # autocast would cast these weights again every step (it caches only trainable leaves)
            for param in module.parameters(recurse=False):
                if param.dtype != self.dtype:
                    converted.append((param, param.dtype))
                    param.data = param.data.to(self.dtype)
        if converted:
            setattr(model, _LOW_PARAMS, converted)
        return model

    @staticmethod
    def release(model: nn.Module) -> nn.Module:
        """Undo :meth:`prepare`: the stock forwards again and the teacher's weights back in their dtype.

        The trainer calls it when training ends, so that what it was given comes back as it was (e.g. a
        distiller whose teacher is used in float32 afterwards).
        """
        for module in [*model.modules(), *_teacher_modules(model)]:
            if getattr(module, _MARK, False):
                del module.forward
                delattr(module, _MARK)
        for param, dtype in getattr(model, _LOW_PARAMS, []):
            param.data = param.data.to(dtype)
        if hasattr(model, _LOW_PARAMS):
            delattr(model, _LOW_PARAMS)
        return model

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """A GradScaler for fp16 (whose gradients underflow without one); None otherwise."""
        if self.mode == "fp16":
            return torch.amp.GradScaler(self.device_type)
        return None

    def optimizer_kwargs(self) -> dict:
        """``fused=True`` where torch has fused SGD/AdamW kernels for the device (CPU, CUDA), else foreach."""
        if self.device_type in ("cpu", "cuda"):
            return {"fused": True}
        return {"foreach": True}


def resolve_precision(requested: str, device: torch.device | str = "cpu") -> Precision:
    """Turn the config's ``precision`` into a :class:`Precision` for ``device``.

    ``auto`` never fails (falls back to fp32, the reason in :attr:`Precision.notice`); an explicit ``bf16`` /
    ``fp16`` the hardware cannot run fast raises :class:`PrecisionError` with one line.
    """
    if requested not in PRECISIONS:
        raise PrecisionError(f"precision: unknown value {requested!r} (choose from {', '.join(PRECISIONS)})")
    device = torch.device(device)
    kind = device.type
    if requested == "fp32":
        return Precision("fp32", kind, requested, "")
    if kind == "cuda":
        bf16_ok, why = cuda_bf16_support(device)
        if requested == "auto":
            return Precision("bf16" if bf16_ok else "fp16", kind, requested, why)
        if requested == "bf16" and not bf16_ok:
            raise PrecisionError(f"precision=bf16: {why}; use precision=fp16 or auto (fp16 + grad scaler there)")
        return Precision(requested, kind, requested, why)
    if kind != "cpu":
        if requested == "auto":
            return Precision("fp32", kind, requested, f"no fast path for device type {kind!r}")
        raise PrecisionError(f"precision={requested}: no fast path for device type {kind!r}; use precision=auto or fp32")
    if requested == "fp16":
        raise PrecisionError("precision=fp16: float16 autocast is for CUDA GPUs; on a CPU use precision=bf16, "
                             "auto or fp32")
    ok, why = cpu_bf16_support()
    if ok:
        return Precision("bf16", kind, requested, why)
    if requested == "auto":
        return Precision("fp32", kind, requested, f"{why}, bfloat16 would be slower than float32")
    raise PrecisionError(f"precision=bf16: {why} (lscpu flags amx_bf16 / avx512_bf16), so bfloat16 runs emulated and "
                         "slower than float32; use precision=auto or fp32")


def config_precision(cfg) -> str:
    """The precision a config asks for: ``precision``, or ``bf16`` where the old ``bf16: true`` switch is set."""
    requested = getattr(cfg, "precision", "fp32")
    if getattr(cfg, "bf16", False) and requested == "auto":
        return "bf16"
    return requested


# ------------------------------------------------------------------------------------------ the step
_ALLOCATOR_TUNED = False


def tune_cpu_allocator() -> bool:
    """Keep freed memory in glibc's heap instead of handing it back to the OS (once per process; Linux).

    glibc serves allocations above its mmap threshold (at most 32 MB) with fresh ``mmap`` pages, so a big
    tensor allocated every step (the box head's 51 MB ``fc6`` weight gradient, fresh after each
    ``zero_grad(set_to_none=True)``) page-faults 12,500 times per step: on this CPU ``torch.empty(1024, 12544)
    .fill_(1)`` takes 51 ms instead of 11 ms. ``mallopt(M_MMAP_MAX=0)`` + a 1 GiB trim threshold make every
    allocation come from the heap and be reused. Changes no result; the process keeps its peak heap.
    Returns whether the setting was applied (False off glibc).
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(-4, 0) == 1 and libc.mallopt(-1, 1 << 30) == 1  # M_MMAP_MAX, M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        return False
    _ALLOCATOR_TUNED = ok
    return ok


def clipped_step(optimizer: torch.optim.Optimizer, parameters, max_norm: float) -> Tensor | None:
    """``clip_grad_norm_(parameters, max_norm)`` then ``optimizer.step()``, in one pass over the gradients for
    fused optimizers.

    A fused SGD/AdamW kernel divides the gradients by ``optimizer.grad_scale`` (the protocol GradScaler uses)
    while it updates, so the clip factor rides along instead of costing a separate read-modify-write of every
    gradient (28 M parameters for the R18 detector). Other optimizers clip as usual. Returns the total norm.
    """
    params = [p for p in parameters if p.grad is not None]
    if max_norm <= 0:
        optimizer.step()
        return None
    if not optimizer.defaults.get("fused") or hasattr(optimizer, "grad_scale"):
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        optimizer.step()
        return norm
    norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    # clip_grad_norm_ multiplies by min(1, max_norm / (norm + 1e-6)); dividing by its inverse is the same
    optimizer.grad_scale = torch.clamp((norm + 1e-6) / max_norm, min=1.0).to(torch.float32)
    try:
        optimizer.step()
    finally:
        del optimizer.grad_scale
    return norm


# ------------------------------------------------------------------------------------------ placement
def _detectors_in(model: nn.Module) -> list[nn.Module]:
    """The torchvision detectors of ``model``: itself, or a distiller's student and teacher."""
    found = [m for m in model.modules() if _family(m) is not None]
    teacher = getattr(model, "teacher", None)
    if isinstance(teacher, nn.Module):
        found += [m for m in teacher.modules() if _family(m) is not None]
    return found


def _teacher_modules(model: nn.Module) -> list[nn.Module]:
    teacher = getattr(model, "teacher", None)
    return list(teacher.modules()) if isinstance(teacher, nn.Module) else []


def _family(module: nn.Module) -> str | None:
    """``faster_rcnn`` / ``one_stage`` for a detector (:func:`defeat.models.family_of`), None for anything else."""
    from defeat.models.families import FAMILIES, family_of

    if not isinstance(module, nn.Module) or not hasattr(module, "backbone"):
        return None
    try:
        family = family_of(module)
    except ValueError:
        return None
    return "faster_rcnn" if family == FAMILIES[0] else "one_stage"


def _wrap(module: nn.Module, make) -> None:
    """Replace ``module.forward`` on the instance by ``make(original_forward)``, once."""
    if getattr(module, _MARK, False):
        return
    module.forward = make(module.forward)
    setattr(module, _MARK, True)


def _place(detector: nn.Module) -> None:
    if _family(detector) == "faster_rcnn":
        _wrap(detector.rpn.head, _float_outputs)
        _wrap(detector.roi_heads.box_roi_pool, _float32_roi_pool)
        _wrap(detector.roi_heads.box_predictor, _float32_region)
    else:
        _wrap(detector.head, _float_outputs)


def has_dead_taps(size: tuple[int, int], conv: nn.Conv2d) -> bool:
    """Whether some kernel tap of ``conv`` sees only padding on an input of spatial ``size``.

    oneDNN's bfloat16 weight-gradient kernel (torch 2.14, AMX) leaves the gradient of such taps uninitialised
    (NaN or garbage): seen on RetinaNet's P7 conv (3x3, stride 2) on a 1x1 P6 map of 64 px images.
    """
    if isinstance(conv.padding, str):
        return min(size) < max(conv.kernel_size)
    for length, k, s, p, d in zip(size, conv.kernel_size, conv.stride, conv.padding, conv.dilation):
        outputs = (length + 2 * p - d * (k - 1) - 1) // s + 1
        for tap in range(k):
            if not any(0 <= o * s - p + tap * d < length for o in range(outputs)):
                return True
    return False


def _guard_dead_taps(conv: nn.Conv2d):
    """Run a convolution in float32 where its input is so small that a kernel tap sees only padding.

    (The weight is cast too: a distiller's frozen teacher keeps its convolution weights in the low precision.)
    """
    def make(forward):
        @functools.wraps(forward)
        def run(x, *args, **kwargs):
            if (x.dim() == 4 and max(conv.kernel_size) > 1 and torch.is_autocast_enabled(x.device.type)
                    and has_dead_taps(tuple(x.shape[-2:]), conv)):
                with torch.autocast(x.device.type, enabled=False):
                    bias = conv.bias.float() if conv.bias is not None else None
                    return conv._conv_forward(x.float(), conv.weight.float(), bias)
            return forward(x, *args, **kwargs)
        return run
    return make


def _to_float(value):
    if torch.is_tensor(value):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, dict):
        return type(value)((k, _to_float(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(_to_float(v) for v in value)
    return value


def _float_outputs(forward):
    """Run as before (under autocast), return float32 outputs: box coding and losses then run in float32."""
    @functools.wraps(forward)
    def run(*args, **kwargs):
        return _to_float(forward(*args, **kwargs))
    return run


def _float32_region(forward):
    """Run with autocast off on float32 inputs."""
    @functools.wraps(forward)
    def run(*args, **kwargs):
        device_type = next((a.device.type for a in args if torch.is_tensor(a)), "cpu")
        with torch.autocast(device_type, enabled=False):
            return forward(*_to_float(args), **_to_float(kwargs))
    return run


def _float32_roi_pool(forward):
    """MultiScaleRoIAlign on float32 features, with autocast off; the matmul RoIAlign where gradients flow."""
    @functools.wraps(forward)
    def run(x, boxes, image_shapes):
        device_type = next(iter(x.values())).device.type
        with torch.autocast(device_type, enabled=False):
            x, boxes = _to_float(x), _to_float(boxes)
            if torch.is_grad_enabled() and any(v.requires_grad for v in x.values()):
                with _matmul_roi_align():
                    return forward(x, boxes, image_shapes)
            return forward(x, boxes, image_shapes)
    return run


@contextlib.contextmanager
def _matmul_roi_align():
    """Route torchvision's MultiScaleRoIAlign through :func:`roi_align_matmul` for the duration."""
    from torchvision.ops import poolers

    original = poolers.roi_align
    poolers.roi_align = roi_align_matmul
    try:
        yield
    finally:
        poolers.roi_align = original


# ------------------------------------------------------------------------------------------ RoIAlign
def _axis_weights(start: Tensor, size: Tensor, length: int, bins: int, samples: int) -> Tensor:
    """``(K, bins, length)``: torchvision's bilinear sampling along one axis, averaged over a bin's samples.

    Sample ``j`` of RoI ``k`` sits at ``start + (j + 0.5) * size / (bins * samples)``; as in torchvision's
    kernel a sample outside ``[-1, length]`` contributes 0, one in ``[-1, 0)`` is clamped to 0, and one at
    or beyond ``length - 1`` takes the last row.
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


def roi_align_matmul(input: Tensor, boxes: Tensor, output_size, spatial_scale: float = 1.0,
                     sampling_ratio: int = -1, aligned: bool = False) -> Tensor:
    """``torchvision.ops.roi_align`` for ``(K, 5)`` RoIs as dense matmuls (fast backward on CPU).

    Bilinear sampling on a regular grid is separable, so a RoI's ``(PH, PW)`` output is ``A_y F A_x^T`` per
    channel with ``A_y: (PH, H)``, ``A_x: (PW, W)`` interpolation matrices; per image that is one GEMM over all
    its RoIs and one batched matmul. Falls back to torchvision for what it does not cover (list boxes,
    adaptive ``sampling_ratio <= 0``).
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
    ax = _axis_weights(x1, roi_w, width, pw, sampling_ratio)   # K, PW, W
    batch = rois[:, 0].long()
    out = input.new_zeros((rois.shape[0], channels, ph, pw))
    parts, order = [], []
    for image in range(n):
        idx = torch.nonzero(batch == image).flatten()
        count = idx.numel()
        if count == 0:
            continue
        rows = input[image].transpose(0, 1).reshape(height, channels * width)           # H, C*W
        t = (ay[idx].reshape(count * ph, height) @ rows).view(count, ph * channels, width)
        pooled = torch.bmm(t, ax[idx].transpose(1, 2))                                    # k, PH*C, PW
        parts.append(pooled.view(count, ph, channels, pw).transpose(1, 2))
        order.append(idx)
    if not parts:
        return out
    return out.index_copy(0, torch.cat(order), torch.cat(parts))
