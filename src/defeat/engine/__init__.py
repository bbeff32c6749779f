"""Engine: training loop, COCO evaluation, checkpoints (and rebuilding models from them), export and the
torchrun/DDP plumbing. Imports ``data``, ``models`` and ``distill``; nothing from ``api``, ``cli`` or ``study``."""

from defeat.engine.checkpoint import (
    LoadedModel,
    check_categories,
    detector_state,
    load_checkpoint,
    load_model,
    save_checkpoint,
)
from defeat.engine.distributed import DistInfo, cleanup, init_distributed
from defeat.engine.evaluator import coco_stats, detections_to_coco, evaluate, format_stats, predict
from defeat.engine.rundir import claim_output_dir
from defeat.engine.setup import build_for_dataset, load_datasets
from defeat.engine.stop import TrainingStopped
from defeat.engine.trainer import FINAL_CHECKPOINT, LAST_CHECKPOINT, NonFiniteLossError, TrainResult, train

__all__ = [
    "DistInfo",
    "FINAL_CHECKPOINT",
    "LAST_CHECKPOINT",
    "LoadedModel",
    "NonFiniteLossError",
    "TrainResult",
    "TrainingStopped",
    "build_for_dataset",
    "check_categories",
    "claim_output_dir",
    "cleanup",
    "coco_stats",
    "detections_to_coco",
    "detector_state",
    "evaluate",
    "format_stats",
    "init_distributed",
    "load_checkpoint",
    "load_datasets",
    "load_model",
    "predict",
    "save_checkpoint",
    "train",
]
