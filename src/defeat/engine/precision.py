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

Placement (``with precision.applied(model): ...``, on a detector or a distiller's student and teacher; the
trainer and the evaluator's ``predict`` use it). The autocast region covers the whole forward pass (backbone,
FPN, RPN head, a distiller's adapters and the teacher's no-grad pass run in the low precision); inside it these
stay float32, each by a module of :mod:`defeat.engine.islands` put in place of the stock one for the duration:

* the RPN / one-stage heads' *outputs* are cast to float32, so box coding, proposal selection, NMS and every
  loss see float32 (autocast would keep e.g. softmax in bfloat16);
* RoI pooling and the Faster R-CNN box predictor (class logits, box deltas) run in float32 with autocast
  off. RoIAlign has no bfloat16 kernel; in training it runs as dense matmuls
  (:func:`defeat.models.ops.roi_align_matmul`, the same result as ``torchvision.ops.roi_align``), whose
  backward is much faster on CPU than torchvision's scatter kernel. The box head stays in the low precision;
* convolutions on inputs so small that a kernel tap sees only padding run in float32 (oneDNN's bfloat16
  weight gradient leaves those taps uninitialised; see :func:`~defeat.engine.islands.has_dead_taps`);
* the distillation losses cast their inputs with ``.float()`` themselves (``defeat.distill.losses``).

The state dict, the parameters (so the optimizer) and attribute paths stay what they were while applied; on
leaving, the original modules are back in place. A distiller's frozen teacher (outside the state dict and the
optimizer) keeps its convolution weights (and, for Faster R-CNN, its box head's linear weights) in the low
precision while applied: autocast caches its casts only for trainable weights, so it would otherwise cast the
teacher's weights again every step; the values it computes with are the same.

Left off: channels-last memory format (bfloat16 convolutions were no faster and GroupNorm's backward much
slower in it, on the CPU measured) and ``torch.compile`` (a compiled backbone + FPN made a fast-path step
slower on CPU; ``benchmarks/compile_speed.py``; not measured on a GPU). The optimizer step uses the fused
kernel (SGD/AdamW ``fused=True``) where torch has one for the device. On CUDA the trainer also sets
``cudnn.benchmark`` (unless ``deterministic``) and pins the loader's memory.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torchvision.ops import MultiScaleRoIAlign

from defeat.engine.islands import DeadTapSafeConv, Float32Region, FloatOutputs, Island, MatmulRoIAlign, view_of

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


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

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[nn.Module]:
        """The float32 islands placed in ``model`` (a detector, or a distiller's student and teacher) for the
        duration; leaving puts the original modules back and the teacher's weights in their dtype.

        Run the forward passes under :meth:`autocast` inside it. Nests: an inner ``applied`` on a model (or a
        part of one) already applied changes nothing and undoes nothing. A no-op for fp32.
        """
        placement = self.prepare(model)
        try:
            yield model
        finally:
            placement.undo()

    def prepare(self, model: nn.Module) -> Placement:
        """Place the float32 islands in ``model`` until :meth:`Placement.undo` (:meth:`applied` does both)."""
        placement = Placement()
        if self.enabled:
            placement.place(model, self.dtype)
        return placement

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
        raise PrecisionError(
            f"precision={requested}: no fast path for device type {kind!r}; use precision=auto or fp32"
        )
    if requested == "fp16":
        raise PrecisionError(
            "precision=fp16: float16 autocast is for CUDA GPUs; on a CPU use precision=bf16, auto or fp32"
        )
    ok, why = cpu_bf16_support()
    if ok:
        return Precision("bf16", kind, requested, why)
    if requested == "auto":
        return Precision("fp32", kind, requested, f"{why}, bfloat16 would be slower than float32")
    raise PrecisionError(
        f"precision=bf16: {why} (lscpu flags amx_bf16 / avx512_bf16), so bfloat16 runs emulated and "
        "slower than float32; use precision=auto or fp32"
    )


def config_precision(cfg) -> str:
    """The precision a config asks for: ``precision``, or ``bf16`` where the old ``bf16: true`` switch is set."""
    requested = getattr(cfg, "precision", "fp32")
    if getattr(cfg, "bf16", False) and requested == "auto":
        return "bf16"
    return requested


# ------------------------------------------------------------------------------------------ the step
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
@dataclass
class Placement:
    """What :meth:`Precision.prepare` changed in a model, to be undone: the modules it replaced by island views
    (``(parent, name, original)``) and the teacher weights it stored in the low precision (``(param, dtype)``)."""

    swaps: list[tuple[nn.Module, str, nn.Module]] = field(default_factory=list)
    converted: list[tuple[nn.Parameter, torch.dtype]] = field(default_factory=list)

    def place(self, model: nn.Module, dtype: torch.dtype) -> None:
        teacher = getattr(model, "teacher", None)
        roots = [model, teacher] if isinstance(teacher, nn.Module) else [model]
        for root in roots:
            for detector in [m for m in root.modules() if _family(m) is not None]:
                self._place_detector(detector)
            convs = [
                (parent, name, child)
                for parent in root.modules()
                for name, child in parent.named_children()
                if isinstance(child, nn.Conv2d)
            ]
            for parent, name, conv in convs:
                self._swap(parent, name, conv, DeadTapSafeConv)
        if len(roots) == 2:  # frozen, outside the state dict and the optimizer: see the module docstring
            low = [m for m in teacher.modules() if isinstance(m, nn.Conv2d)]
            if _family(teacher) == "faster_rcnn":
                low += [m for m in teacher.roi_heads.box_head.modules() if isinstance(m, nn.Linear)]
            for param in (p for m in low for p in m.parameters(recurse=False)):
                if param.dtype != dtype:
                    self.converted.append((param, param.dtype))
                    param.data = param.data.to(dtype)

    def _place_detector(self, detector: nn.Module) -> None:
        if _family(detector) == "faster_rcnn":
            self._swap(detector, "rpn.head", detector.rpn.head, FloatOutputs)
            pool = detector.roi_heads.box_roi_pool
            # the matmul pooler re-implements MultiScaleRoIAlign's forward: only for the stock class
            island = MatmulRoIAlign if type(pool) is MultiScaleRoIAlign else Float32Region
            self._swap(detector, "roi_heads.box_roi_pool", pool, island)
            self._swap(detector, "roi_heads.box_predictor", detector.roi_heads.box_predictor, Float32Region)
        else:
            self._swap(detector, "head", detector.head, FloatOutputs)

    def _swap(self, root: nn.Module, path: str, module: nn.Module, island: type[Island]) -> None:
        if isinstance(module, Island):  # already placed (an outer ``applied``)
            return
        parent_path, _, name = path.rpartition(".")
        parent = root.get_submodule(parent_path)
        setattr(parent, name, view_of(module, island))
        self.swaps.append((parent, name, module))

    def undo(self) -> None:
        """The original modules back in place (the same objects), the teacher's weights in their dtype."""
        for parent, name, module in reversed(self.swaps):
            setattr(parent, name, module)
        for param, dtype in self.converted:
            param.data = param.data.to(dtype)
        self.swaps, self.converted = [], []


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
