"""Data: COCO-format datasets, the training sampler, importers and the synthetic embedded benchmark."""

from defeat.data.coco import CocoDetection, CocoIndex, collate, load_coco_index, load_image
from defeat.data.samplers import TrainSampler, epoch_order, shard_indices

__all__ = [
    "CocoDetection",
    "CocoIndex",
    "TrainSampler",
    "collate",
    "epoch_order",
    "load_coco_index",
    "load_image",
    "shard_indices",
]
