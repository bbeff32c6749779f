"""Building what a run needs from the config: the datasets and a fresh detector (from a checkpoint:
:func:`defeat.engine.checkpoint.load_model`)."""

from __future__ import annotations

import torch
from torch import nn

from defeat.config import Config, ModelConfig
from defeat.data import CocoDetection
from defeat.engine.weights import build_pretrained


def load_datasets(
    cfg: Config, train: bool = True, val: bool = True
) -> tuple[CocoDetection | None, CocoDetection | None]:
    """The train/val splits named by ``cfg.data``; the val split must share the train split's classes."""
    train_set = CocoDetection(cfg.data.train_images, cfg.data.train_annotations) if train else None
    val_set = CocoDetection(cfg.data.val_images, cfg.data.val_annotations) if val else None
    if (
        train_set is not None
        and val_set is not None
        and [c["id"] for c in train_set.categories] != [c["id"] for c in val_set.categories]
    ):
        raise ValueError(f"{cfg.data.val_annotations}: categories differ from {cfg.data.train_annotations}")
    return train_set, val_set


def build_for_dataset(
    model_cfg: ModelConfig, categories: list[dict], seed: int, notes: list[str] | None = None
) -> nn.Module:
    """A detector for these categories: freshly initialised, or from the weight files ``model.weights`` /
    ``model.backbone_weights`` name (classes mapped by name or fine-tuned, see
    :func:`defeat.engine.weights.build_pretrained`; what was done is appended to ``notes``). The same seed gives
    the same weights."""
    torch.manual_seed(seed)
    model, done = build_pretrained(model_cfg, categories, role="train")
    if notes is not None:
        notes.extend(done)
    return model
