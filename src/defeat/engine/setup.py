"""Building what a run needs from the config: datasets, the detector, a detector from a checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from defeat.config import Config, ModelConfig, config_from_dict
from defeat.data import CocoDetection
from defeat.engine.checkpoint import check_categories, detector_state, load_checkpoint
from defeat.models import build_detector


def load_datasets(cfg: Config, train: bool = True, val: bool = True) -> tuple[CocoDetection | None, CocoDetection | None]:
    """The train/val splits named by ``cfg.data``; the val split must share the train split's classes."""
    train_set = CocoDetection(cfg.data.train_images, cfg.data.train_annotations) if train else None
    val_set = CocoDetection(cfg.data.val_images, cfg.data.val_annotations) if val else None
    if train_set is not None and val_set is not None:
        if [c["id"] for c in train_set.categories] != [c["id"] for c in val_set.categories]:
            raise ValueError(f"{cfg.data.val_annotations}: categories differ from {cfg.data.train_annotations}")
    return train_set, val_set


def build_for_dataset(model_cfg: ModelConfig, categories: list[dict], seed: int) -> nn.Module:
    """A freshly initialised detector for these categories; the same seed gives the same weights."""
    torch.manual_seed(seed)
    return build_detector(model_cfg, len(categories))


def load_detector(checkpoint: str | Path, categories: list[dict] | None = None,
                  dataset_name: str | Path = "the dataset") -> tuple[nn.Module, Config]:
    """Rebuild the detector stored in a checkpoint (a trained model or a distilled student).

    Returns the model in eval mode and the checkpoint's config (as a ``Config``). With ``categories``
    the checkpoint's class list must equal them.
    """
    state = load_checkpoint(checkpoint)
    if categories is not None:
        check_categories(state, categories, checkpoint, dataset_name)
    cfg = config_from_dict(state["config"], source=str(checkpoint))
    model = build_detector(cfg.model, len(state["categories"]))
    missing, unexpected = model.load_state_dict(detector_state(state), strict=False)
    if missing or unexpected:
        raise ValueError(f"{checkpoint}: weights do not fit {cfg.model.name} "
                         f"({len(missing)} missing, {len(unexpected)} unexpected keys, e.g. {(missing + unexpected)[:2]})")
    return model.eval(), cfg
