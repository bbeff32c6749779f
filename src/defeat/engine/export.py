"""Export the student of a distillation (or any detector checkpoint) as a plain torchvision state dict / ONNX.

The exported ``.pt`` holds only the student's weights (no adapters, no teacher, no optimizer), keyed exactly
as the torchvision model of that architecture names them, so that::

    model = defeat.models.build_detector(ModelConfig(name=..., norm=...), num_classes)
    model.load_state_dict(torch.load("student.pt", weights_only=True), strict=True)

works; a student named by torchvision's name (``fasterrcnn_mobilenet_v3_large_fpn``, ...) also loads into the stock
builder ``torchvision.models.detection.<name>(weights=None, weights_backbone=None, num_classes=K + 1)`` (recorded in
the sidecar as ``torchvision_builder``). A JSON sidecar (``student.pt.json``) records the model section and the class
list needed to rebuild it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from defeat.config import config_to_dict
from defeat.engine.checkpoint import load_model
from defeat.models.spec import model_spec
from defeat.utils import atomic_torch_save, atomic_write_json


def student_from_checkpoint(checkpoint: str | Path) -> tuple[nn.Module, dict, dict]:
    """Rebuild the student (or detector) of a checkpoint, loaded with ``strict=True``.

    Returns ``(model in eval mode, its state dict, sidecar metadata)``.
    """
    loaded = load_model(checkpoint)
    meta = {
        "source": str(checkpoint),
        "kind": loaded.kind,
        "step": loaded.step,
        "model": config_to_dict(loaded.config)["model"],
        "num_classes": len(loaded.categories),
        "categories": loaded.categories,
    }
    if model_spec(loaded.name).official:  # the stock builder loads the exported state dict with strict=True
        meta["torchvision_builder"] = (
            f"torchvision.models.detection.{loaded.name}(weights=None, "
            f"weights_backbone=None, num_classes={len(loaded.categories) + 1})"
        )
    return loaded.model, loaded.model.state_dict(), meta


def export_student(checkpoint: str | Path, out: str | Path) -> dict:
    """Write the student-only state dict to ``out`` and metadata to ``out + '.json'``; return the metadata."""
    _, weights, meta = student_from_checkpoint(checkpoint)
    out = Path(out)
    atomic_torch_save({k: v.detach().cpu().contiguous() for k, v in weights.items()}, out)
    meta = {**meta, "tensors": len(weights), "parameters": int(sum(v.numel() for v in weights.values()))}
    atomic_write_json(Path(f"{out}.json"), meta)
    return meta


class _TensorOutputs(nn.Module):
    """ONNX wrapper: one CHW image in, ``(boxes, scores, labels)`` tensors out."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor):
        out = self.model([image])[0]
        return out["boxes"], out["scores"], out["labels"]


def export_onnx(model: nn.Module, out: str | Path, image_size: int, opset: int = 17) -> Path:
    """Export a torchvision detector to ONNX (one ``3 x H x W`` float image in [0, 1] -> boxes, scores, labels)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    example = torch.rand(3, image_size, image_size)
    wrapper = _TensorOutputs(model.eval())
    kwargs = dict(
        input_names=["image"],
        output_names=["boxes", "scores", "labels"],
        opset_version=opset,
        dynamic_axes={"image": {1: "height", 2: "width"}, "boxes": {0: "n"}, "scores": {0: "n"}, "labels": {0: "n"}},
    )
    with warnings.catch_warnings():  # tracing torchvision's detection code is noisy but correct for one image
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(wrapper, (example,), str(out), dynamo=False, **kwargs)
        except TypeError:  # torch versions without the dynamo switch
            torch.onnx.export(wrapper, (example,), str(out), **kwargs)
    return out
