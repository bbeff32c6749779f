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
    student = api.distill(load_config("configs/distill.yaml"))

Models: :func:`load_detector` (any checkpoint, or a torchvision detector by name with its weight file -> model,
config, classes, adapters), :func:`export`, :func:`predict` (a detector on an image, a folder or a COCO JSON's
images -> COCO results, pictures).
Data: :func:`synth`, :func:`import_yolo`, :func:`import_voc`, :func:`dataset_stats`, :func:`init_config`
(``defeat init``). Cost before a run: :func:`estimate` (``--estimate``).
Analyses: :func:`channel_distance` (Fig. 1), :func:`grad_norm` (Fig. 2-3), :func:`analyze_errors` (Fig. 4-9).

The method itself (masks, losses, the distiller) is in :mod:`defeat.distill`, usable in a plain PyTorch loop.
"""

from defeat.api.data import DatasetReport, dataset_stats, import_voc, import_yolo, synth
from defeat.api.errors import analyze_errors
from defeat.api.features import channel_distance, grad_norm
from defeat.api.init import InitResult, init_config
from defeat.api.models import export, load_detector
from defeat.api.predict import predict
from defeat.api.runs import RunResult, StepTiming, check_teacher, distill, estimate, evaluate, load_teacher, train
from defeat.config import Config, DistillSettings, config_from_dict, load_config
from defeat.engine import LoadedModel

__all__ = ["Config", "DatasetReport", "DistillSettings", "InitResult", "LoadedModel", "RunResult", "StepTiming",
           "analyze_errors", "channel_distance", "check_teacher", "config_from_dict", "dataset_stats", "distill",
           "estimate", "evaluate", "export", "grad_norm", "import_voc", "import_yolo", "init_config", "load_config",
           "load_detector", "load_teacher", "predict", "synth", "train"]
