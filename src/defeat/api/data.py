"""Datasets: the embedded synthetic benchmark and importers to COCO JSON."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from defeat.data.anchors import AnchorFit, fit_anchors, training_scale
from defeat.data.coco import CocoIndex, load_coco_index
from defeat.data.importers import import_voc, import_yolo
from defeat.data.stats import DatasetStats, box_arrays, choose_image_size, dataset_statistics
from defeat.data.yolo_export import export_yolo as _export_yolo
from defeat.models.spec import model_spec


def synth(
    out: str | Path,
    *,
    seed: int = 0,
    num_train: int = 600,
    num_val: int = 150,
    image_size: int = 320,
    min_objects: int = 2,
    max_objects: int = 8,
    workers: int = 2,
) -> dict:
    """Generate the embedded benchmark (``train/``, ``val/``, ``train.json``, ``val.json`` in ``out``); the same
    seed gives the same images. Returns a summary (counts, classes, files)."""
    from defeat.data.synth import generate_synthetic_dataset

    sizes = {
        "num_train": num_train,
        "num_val": num_val,
        "image_size": image_size,
        "min_objects": min_objects,
        "max_objects": max_objects,
        "workers": workers,
    }
    for name, value in sizes.items():
        if value < (0 if name in ("num_train", "num_val") else 1):
            raise ValueError(f"--{name.replace('_', '-')}: must be positive, got {value}")
    return generate_synthetic_dataset(out, seed=seed, **sizes)


def export_yolo(
    out: str | Path,
    images: str | Path,
    annotations: str | Path,
    val_images: str | Path | None = None,
    val_annotations: str | Path | None = None,
) -> dict:
    """COCO JSON -> the Ultralytics dataset layout in ``out`` (``defeat data export-yolo``): images linked, labels
    ``.txt``, ``data.yaml``, ``categories.json`` (class index -> COCO category id). Written whole or not at all;
    see :mod:`defeat.data.yolo_export`. Returns a summary (counts per split, the data.yaml path)."""
    splits = {"train": (images, annotations)}
    if (val_images is None) != (val_annotations is None):
        raise ValueError("--val-images and --val-annotations: give both or neither")
    if val_images is not None:
        splits["val"] = (val_images, val_annotations)
    return _export_yolo(out, splits)


@dataclass
class DatasetReport:
    """What :func:`dataset_stats` measured: per-split statistics, the training size, the anchors and their fit."""

    train: DatasetStats
    val: DatasetStats | None
    model: str  # the detector the anchors are fitted for
    min_size: int
    max_size: int
    image_size_reason: str
    anchors: AnchorFit
    categories: list[dict]
    boxes_wh: np.ndarray = field(repr=False)  # training boxes at the training scale (N, 2)
    labels: np.ndarray = field(repr=False)  # their labels 1..K
    figure: Path | None = None

    def as_dict(self) -> dict:
        return {
            "train": self.train.as_dict(),
            "val": self.val.as_dict() if self.val else None,
            "model": self.model,
            "min_size": self.min_size,
            "max_size": self.max_size,
            "image_size_reason": self.image_size_reason,
            "anchors": self.anchors.as_dict(),
            "figure": str(self.figure) if self.figure else None,
        }


def read_split(annotations: str | Path, images: str | Path) -> CocoIndex:
    """A COCO split checked as training will read it: the JSON (one-line errors naming the item), the image folder
    and every image file named in it (existence only; pixels are read by training)."""
    index = load_coco_index(annotations)
    folder = Path(images)
    if not folder.is_dir():
        raise ValueError(f"{folder}: image folder not found")
    for img in index.images:
        if not (folder / img["file_name"]).is_file():
            raise ValueError(f"{annotations}: image {img['id']}: {folder / img['file_name']} not found")
    return index


def dataset_stats(
    annotations: str | Path,
    images: str | Path,
    *,
    val_annotations: str | Path | None = None,
    val_images: str | Path | None = None,
    model: str = "faster_rcnn_r18_fpn",
    image_size: int | None = None,
    given_sizes=(32, 64, 128, 256, 512),
    given_ratios=(0.5, 1.0, 2.0),
    figure: str | Path | None = None,
) -> DatasetReport:
    """Statistics of a COCO dataset (:mod:`defeat.data.stats`), the training image size (from the images' sizes
    unless ``image_size`` fixes the shorter side) and anchors fitted to the training boxes at that size, with
    their coverage against ``given_sizes``/``given_ratios`` (:mod:`defeat.data.anchors`). ``figure``: also draw
    the box-size histogram per class and the anchor coverage to that PNG. Reads only; bad input raises a
    one-line ``ValueError`` naming the file and item."""
    if (val_annotations is None) != (val_images is None):
        raise ValueError("--val-annotations and --val-images: give both or neither")
    train_index = read_split(annotations, images)
    val_index = read_split(val_annotations, val_images) if val_annotations else None
    if val_index is not None and [c["id"] for c in val_index.categories] != [c["id"] for c in train_index.categories]:
        raise ValueError(f"{val_annotations}: categories differ from {annotations}")
    wh, labels, image_wh = box_arrays(train_index)
    if len(wh) == 0:
        raise ValueError(f"{annotations}: no (non-crowd) boxes; nothing to train on or to fit anchors to")
    sizes = np.asarray([(img["width"], img["height"]) for img in train_index.images], float)
    min_size, max_size = choose_image_size(sizes)
    reason = "median shorter side of the images, capped at 512"
    if image_size is not None:
        if image_size < 32:
            raise ValueError(f"--image-size: must be >= 32, got {image_size}")
        aspect = max_size / min_size
        min_size, max_size, reason = image_size, int(32 * np.ceil(image_size * aspect / 32)), "from --image-size"
    scaled = wh * training_scale(image_wh, min_size, max_size)[:, None]
    fit = fit_anchors(scaled, model_spec(model), given_sizes, given_ratios)
    report = DatasetReport(
        dataset_statistics(train_index),
        dataset_statistics(val_index) if val_index else None,
        model,
        min_size,
        max_size,
        reason,
        fit,
        train_index.categories,
        scaled,
        labels,
    )
    if figure is not None:
        from defeat.analysis.dataset_figure import draw_dataset_figure

        report.figure = draw_dataset_figure(report, figure)
    return report


__all__ = ["DatasetReport", "dataset_stats", "import_voc", "import_yolo", "read_split", "synth"]
