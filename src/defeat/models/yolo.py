"""Ultralytics YOLO detectors (the ``yolo`` extra): built by name from the package's own model configs, loaded from
an Ultralytics ``.pt``, and the questions the distiller asks of a built one (the neck maps that feed its Detect
head, their strides, the head's per-position class scores).

This module and :mod:`defeat.engine.yolo` (the training loop) are the only ones that import ``ultralytics``, and
only when a YOLO model is asked for: without the extra a YOLO name gets one line naming it. Ultralytics is
AGPL-3.0; this module imports and calls it, it copies none of its code.

Names (:mod:`defeat.models.spec`): ``yolo26{n,s,m,l,x}``, ``yolo11{n..x}``, ``yolov8{n..x}``. A built model is
Ultralytics' ``DetectionModel``: ``model.model`` is its list of layers, the last one the Detect head, whose ``f``
lists the layers it reads (YOLO26 / YOLO11: 16, 19, 22; YOLOv8: 15, 18, 21) and whose ``stride`` the strides of
those maps (8, 16, 32), named ``P3..P5`` here as the FPN levels of the same strides.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn

from defeat.models.spec import model_spec

#: the pip line that installs the extra, named in every "not installed" message
INSTALL = 'pip install "defeat[yolo]"'
#: the Ultralytics release this integration was written and tested against (pyproject: the ``yolo`` extra)
TESTED_VERSION = "8.4.190"
#: k0 of the box-to-level rule ``floor(k0 + log2(sqrt(wh) / 224))`` on YOLO's P3-P5 when ``distill.level_k0`` is not
#: set: the one-stage rule of the project's RetinaNet (side < 112 -> P3, < 224 -> P4, else P5); docs/yolo.md
YOLO_LEVEL_K0 = 5


def ultralytics_module(what: str = "model.name"):
    """The ``ultralytics`` package, imported on first use with its network checks off (``YOLO_OFFLINE=1`` unless the
    environment says otherwise: no telemetry, no update check; docs/yolo.md); a one-line ValueError naming the extra
    when it is not installed.

    Importing Ultralytics replaces ``PIL.Image.open`` for the whole process with a wrapper that, on an image PIL
    cannot identify, pip-installs ``pi-heif`` (HEIC support) and retries: a download, and on an offline machine a
    ``ModuleNotFoundError`` where PIL would raise its own error (which the project's image checks report in one
    line). The original ``Image.open`` is put back here."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    try:
        import ultralytics
    except ImportError:
        raise ValueError(f"{what}: Ultralytics YOLO needs the yolo extra: {INSTALL}") from None
    _put_back_pil_image_loader()
    return ultralytics


def _put_back_pil_image_loader() -> None:
    from PIL import Image

    original = getattr(sys.modules.get("ultralytics.utils.patches"), "_image_open", None)
    if original is not None and Image.open is not original:
        Image.open = original


def build_yolo(name: str, num_classes: int, weights: str | Path | None = None, verbose: bool = False) -> nn.Module:
    """A fresh Ultralytics ``DetectionModel`` of YOLO name ``name`` (``yolo26n``, ...) for ``num_classes`` classes
    from the package's model config; with ``weights`` (an Ultralytics ``.pt``), the weights that fit loaded into it
    (Ultralytics' own transfer: layers whose shapes match, so a COCO ``.pt`` gives a new head for other classes)."""
    spec = model_spec(name)
    if not spec.is_yolo:
        raise ValueError(f"model.name: {name} is not an Ultralytics YOLO model")
    ultralytics_module()
    from ultralytics.nn.tasks import DetectionModel

    model = DetectionModel(spec.yolo_config, nc=num_classes, verbose=verbose)
    if weights is not None:
        model.load(load_yolo_weights(weights))
    return model


def load_yolo_weights(path: str | Path, what: str = "model.weights") -> nn.Module:
    """The detector in an Ultralytics ``.pt`` (its EMA or model, float32, eval mode). A one-line ValueError for a
    missing file, a file Ultralytics cannot read, or a model of another task (segment, pose, obb, classify, ...):
    the distiller and the evaluator need a plain detector.

    Ultralytics' checkpoints are pickled modules, not state dicts, so PyTorch's weights-only loading (the project's
    rule for its own checkpoints) cannot read them: Ultralytics' own loader does (it unpickles: load only files you
    trust)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: {path} not found (an Ultralytics .pt such as a run's weights/last.pt)")
    ultralytics_module(what)
    from ultralytics.nn.tasks import guess_model_task
    from ultralytics.nn.tasks import load_checkpoint as read_ultralytics_checkpoint  # not the project's loader

    try:
        model, _ = read_ultralytics_checkpoint(str(path))
    except Exception as err:  # Ultralytics raises TypeError, KeyError, pickle errors, ... for a foreign file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{what}: {path} is not an Ultralytics checkpoint ({first})") from None
    # from the head its config names (the loader's model.task falls back to the default args' "detect")
    yaml = getattr(model, "yaml", None)
    task = guess_model_task(yaml) if isinstance(yaml, dict) else guess_model_task(model)
    if task != "detect":
        raise ValueError(
            f"{what}: {path} holds a YOLO {task} model ({type(model).__name__}); only detection (task detect) "
            "checkpoints can be trained or distilled here"
        )
    return model


def is_yolo_model(model: nn.Module) -> bool:
    """Whether ``model`` is an Ultralytics detection model (a list of layers ending in a Detect head that reads
    ``f``), asked without importing Ultralytics."""
    layers = getattr(model, "model", None)
    head = layers[-1] if isinstance(layers, nn.Sequential) and len(layers) else None
    return head is not None and isinstance(getattr(head, "f", None), (list, tuple)) and hasattr(head, "stride")


def _check(model: nn.Module, where: str) -> None:
    if not is_yolo_model(model):
        raise ValueError(f"{where}: expected an Ultralytics YOLO detection model, got {type(model).__name__}")


def detect_inputs(model: nn.Module, where: str = "model") -> list[int]:
    """Indices (in ``model.model``) of the neck layers whose outputs feed the Detect head, finest first."""
    _check(model, where)
    return [int(i) for i in model.model[-1].f]


def yolo_levels(model: nn.Module, where: str = "model") -> dict[str, int]:
    """Level name -> stride of the maps that feed the Detect head (``{"P3": 8, "P4": 16, "P5": 32}``): the head's
    strides (Ultralytics measures them when it builds the model), named ``P<log2 stride>``."""
    _check(model, where)
    strides = [int(s) for s in model.model[-1].stride.tolist()]
    if len(strides) != len(detect_inputs(model, where)) or any(s < 1 or s & (s - 1) for s in strides):
        raise ValueError(f"{where}: Detect head strides {strides} are not one power of two per input map")
    return {f"P{s.bit_length() - 1}": s for s in strides}


@contextmanager
def capture_neck(model: nn.Module, where: str = "model", head: bool = False) -> Iterator[dict[str, object]]:
    """Within the block, every forward of ``model`` records the maps that feed its Detect head into the yielded
    dict, keyed by level (``P3..``), and with ``head`` the head's own output under ``"head"``. Forward hooks,
    removed on exit (nothing stays on the model: it pickles, copies and saves as it was)."""
    levels = list(yolo_levels(model, where))
    captured: dict[str, object] = {}
    hooks = [
        model.model[index].register_forward_hook(lambda _m, _i, output, name=name: captured.__setitem__(name, output))
        for name, index in zip(levels, detect_inputs(model, where))
    ]
    if head:
        hooks.append(model.model[-1].register_forward_hook(lambda _m, _i, out: captured.__setitem__("head", out)))
    try:
        yield captured
    finally:
        for hook in hooks:
            hook.remove()


def neck_features(model: nn.Module, images: Tensor, where: str = "model") -> tuple[dict[str, Tensor], object]:
    """One forward of ``model`` on an image batch: the maps that feed Detect (level -> ``(N, C, H, W)``) and the
    model's own output (the head's: what Ultralytics' loss takes in training mode)."""
    with capture_neck(model, where) as maps:
        output = model(images)
    return {name: maps[name] for name in yolo_levels(model, where)}, output


def neck_channels(model: nn.Module, where: str = "model", side: int = 64) -> dict[str, int]:
    """Level -> channel count of the maps that feed Detect, measured on one blank ``side``-px image (eval mode, no
    gradient; the model's mode is restored)."""
    parameter = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            maps, _ = neck_features(model, torch.zeros(1, 3, side, side, device=parameter.device), where)
    finally:
        model.train(was_training)
    return {name: int(m.shape[1]) for name, m in maps.items()}


def head_class_logits(output: object) -> Tensor:
    """The Detect head's class logits ``(N, K, A)`` over all A positions of its levels (finest level first, each
    row-major), from the head output of either mode (training: a dict; eval: ``(decoded, dict)``). YOLO26's two
    branches (one-to-many and one-to-one) are averaged, as Ultralytics' own distillation does."""
    if isinstance(output, (tuple, list)):
        output = output[1]
    if not isinstance(output, dict):
        raise ValueError(f"YOLO Detect output: expected a dict of branches or scores, got {type(output).__name__}")
    if "scores" in output:
        return output["scores"]
    branches = [output[b]["scores"] for b in ("one2many", "one2one") if b in output]
    if not branches:
        raise ValueError(f"YOLO Detect output: no class scores among {sorted(output)}")
    return torch.stack(branches).mean(dim=0)


def head_confidence(output: object, sizes: dict[str, tuple[int, int]]) -> dict[str, Tensor]:
    """Level -> ``(N, H, W)`` confidence of the head at each position: the highest sigmoid class probability
    (:func:`head_class_logits` split over the levels of ``sizes``, finest first). No gradient, float32."""
    logits = head_class_logits(output).detach().float()
    counts = [h * w for h, w in sizes.values()]
    if sum(counts) != logits.shape[-1]:
        raise ValueError(f"YOLO Detect output: {logits.shape[-1]} positions, the maps {dict(sizes)} have {sum(counts)}")
    parts = torch.split(logits, counts, dim=-1)
    return {
        name: torch.sigmoid(part).amax(dim=1).view(part.shape[0], h, w)
        for (name, (h, w)), part in zip(sizes.items(), parts)
    }
