"""Models from checkpoints: rebuild one, export a student for stock torchvision."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from defeat.config import ModelConfig
from defeat.engine import LoadedModel, load_model
from defeat.engine.export import export_onnx, export_student
from defeat.engine.weights import load_pretrained
from defeat.models.spec import is_torchvision_name
from defeat.models.torchvision_zoo import torchvision_defaults, torchvision_names


def load_detector(
    checkpoint: str | Path | None = None,
    categories: list[dict] | None = None,
    dataset: str | Path = "the dataset",
    *,
    model: str | ModelConfig | None = None,
    weights: str | None = None,
) -> LoadedModel:
    """A detector in eval mode on the CPU, with its config and class list:

    * ``checkpoint``: any checkpoint of ``defeat train`` / ``defeat distill`` (the student of a distillation, with
      its adapters);
    * ``model`` (+ ``weights``): a torchvision detector by name (``fasterrcnn_resnet50_fpn_v2``, ...) with its weight
      file as torchvision writes it (or ``DEFAULT``), with torchvision's own transform sizes and thresholds; or a
      full :class:`ModelConfig` (its ``weights`` used unless ``weights`` is given).

    With ``categories`` the classes must be the dataset's: a checkpoint's class list must equal them; a torchvision
    model's outputs are mapped onto them by name (COCO weights on COCO-named data). One-line ValueError otherwise.
    """
    if (checkpoint is None) == (model is None):
        raise ValueError("load_detector: give a checkpoint or a model (name or ModelConfig), not both or neither")
    if checkpoint is not None:
        return load_model(checkpoint, categories=categories, dataset=dataset)
    if isinstance(model, str):
        if not is_torchvision_name(model):
            raise ValueError(
                f"model {model!r}: not a torchvision detector name (choose from "
                f"{', '.join(torchvision_names())}); for this project's models pass their checkpoint"
            )
        model = ModelConfig(name=model, **torchvision_defaults(model))
    if weights is not None:
        model = dataclasses.replace(model, weights=str(weights))
    return load_pretrained(model, categories, dataset=str(dataset))


def export(checkpoint: str | Path, out: str | Path, *, onnx: str | Path | None = None) -> dict:
    """Write the student (or detector) of ``checkpoint`` as a plain torchvision state dict to ``out`` with a JSON
    sidecar ``out.json`` (model section, classes), and with ``onnx`` an ONNX file too. Returns the metadata
    (``tensors``, ``parameters``, ``model``, ``num_classes``, ``onnx``)."""
    meta = export_student(checkpoint, out)
    if onnx is not None:
        try:
            import onnx as _onnx  # noqa: F401  (torch.onnx needs it)
        except ImportError:
            raise ValueError("--onnx: the onnx package is not installed (pip install 'defeat[onnx]')") from None
        export_onnx(load_model(checkpoint).model, onnx, image_size=int(meta["model"]["min_size"]))
        meta = dict(meta, onnx=str(onnx))
    return meta
