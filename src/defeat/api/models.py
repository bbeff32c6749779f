"""Models from checkpoints: rebuild one, export a student for stock torchvision."""

from __future__ import annotations

from pathlib import Path

from defeat.engine import LoadedModel, load_model
from defeat.engine.export import export_onnx, export_student


def load_detector(checkpoint: str | Path, categories: list[dict] | None = None,
                  dataset: str | Path = "the dataset") -> LoadedModel:
    """Rebuild the detector of any checkpoint of ``defeat train`` / ``defeat distill`` (the student of a
    distillation), in eval mode on the CPU, with its config, class list and (for a distillation) its adapters.

    With ``categories`` the checkpoint's class list must equal them (one-line ValueError otherwise).
    """
    return load_model(checkpoint, categories=categories, dataset=dataset)


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
