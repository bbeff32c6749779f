"""The programmatic surface of defeat: every command of the ``defeat`` CLI as a typed function.

The CLI (``defeat.cli``) only parses arguments, calls these and prints; the ``defeat reproduce`` study
(``defeat.study``) calls them with config objects. They take a :class:`~defeat.config.Config` or plain
arguments, write their files atomically, raise ``ValueError`` / ``FileNotFoundError`` with one line naming the
file or item on bad input, and return what they computed.

Runs (``defeat train / distill / eval``)::

    from defeat import api
    from defeat.config import load_config

    cfg = load_config("configs/demo.yaml", ["output.dir=runs/r18"])
    result = api.train(cfg)                        # -> RunResult(final_checkpoint, step, metrics)
    stats = api.evaluate(cfg, result.final_checkpoint)
    student = api.distill(load_config("configs/distill_embedded_defeat.yaml"))

Models: :func:`load_detector` (any checkpoint, or a torchvision detector by name with its weight file -> model,
config, classes, adapters), :func:`export`, :func:`predict` (a detector on an image, a folder or a COCO JSON's
images -> COCO results, pictures).
Data: :func:`synth`, :func:`import_yolo`, :func:`export_yolo`, :func:`import_voc`, :func:`dataset_stats`,
:func:`init_config` (``defeat init``). Cost before a run: :func:`estimate` (``--estimate``).
Analyses: :func:`channel_distance` (Fig. 1), :func:`grad_norm` (Fig. 2-3), :func:`analyze_errors` (Fig. 4-9).

The method itself (masks, losses, the distiller) is in :mod:`defeat.distill`, usable in a plain PyTorch loop.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

#: each public name -> the module that defines it. The submodules are imported on first use (PEP 562), so that
#: ``defeat analyze errors`` (numpy, pycocotools, matplotlib) does not pay torch's import (~6 s, ~300 MB per
#: drawing worker) for the training API it never calls.
_EXPORTS = {
    "DatasetReport": "defeat.api.data",
    "dataset_stats": "defeat.api.data",
    "export_yolo": "defeat.api.data",
    "import_voc": "defeat.api.data",
    "import_yolo": "defeat.api.data",
    "synth": "defeat.api.data",
    "analyze_errors": "defeat.api.errors",
    "channel_distance": "defeat.api.features",
    "grad_norm": "defeat.api.features",
    "InitResult": "defeat.api.init",
    "init_config": "defeat.api.init",
    "export": "defeat.api.models",
    "load_detector": "defeat.api.models",
    "predict": "defeat.api.predict",
    "RunResult": "defeat.api.runs",
    "StepTiming": "defeat.api.runs",
    "check_teacher": "defeat.api.runs",
    "distill": "defeat.api.runs",
    "estimate": "defeat.api.runs",
    "evaluate": "defeat.api.runs",
    "load_teacher": "defeat.api.runs",
    "train": "defeat.api.runs",
    "Config": "defeat.config",
    "DistillSettings": "defeat.config",
    "config_from_dict": "defeat.config",
    "load_config": "defeat.config",
    "LoadedModel": "defeat.engine",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'defeat.api' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from defeat.api.data import DatasetReport, dataset_stats, export_yolo, import_voc, import_yolo, synth
    from defeat.api.errors import analyze_errors
    from defeat.api.features import channel_distance, grad_norm
    from defeat.api.init import InitResult, init_config
    from defeat.api.models import export, load_detector
    from defeat.api.predict import predict
    from defeat.api.runs import RunResult, StepTiming, check_teacher, distill, estimate, evaluate, load_teacher, train
    from defeat.config import Config, DistillSettings, config_from_dict, load_config
    from defeat.engine import LoadedModel
