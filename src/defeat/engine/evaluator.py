"""COCO evaluation: run a detector over a split (sharded across ranks), gather, score with COCOeval.

The scoring uses faster-coco-eval, which gives the same arrays as pycocotools (tested against the
numbers in ../shared/README.md) several times faster.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from defeat.data import CocoDetection, collate, shard_indices
from defeat.engine.distributed import DistInfo, gather_to_main
from defeat.engine.precision import Precision
from defeat.utils import atomic_write_json, read_json

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def detections_to_coco(
    outputs: list[dict], image_ids: list[int], categories: list[dict], score_thresh: float = 0.0
) -> list[dict]:
    """torchvision detections (xyxy boxes, labels 1..K) -> COCO results (xywh boxes, category ids)."""
    results = []
    for out, image_id in zip(outputs, image_ids):
        keep = out["scores"] >= score_thresh
        boxes = out["boxes"][keep].tolist()
        for (x1, y1, x2, y2), label, score in zip(boxes, out["labels"][keep].tolist(), out["scores"][keep].tolist()):
            results.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(categories[label - 1]["id"]),
                    "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                    "score": round(float(score), 5),
                }
            )
    return results


def coco_stats(gt: dict | str | Path, results: list[dict], image_ids: list[int] | None = None) -> dict:
    """COCO bbox metrics: the 12 standard stats by name plus ``per_class_AP`` (name -> AP, NaN-free).

    ``image_ids`` restricts evaluation to a subset of the ground truth (e.g. a quick check on N images).
    With no detections at all every stat is 0.
    """
    from faster_coco_eval import COCO, COCOeval_faster

    gt_data = read_json(gt) if isinstance(gt, (str, Path)) else gt
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(gt_data)
    names = {c["id"]: c["name"] for c in gt_data["categories"]}
    if not results:
        return {**{k: 0.0 for k in STAT_NAMES}, "per_class_AP": {n: 0.0 for n in names.values()}}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval_faster(coco_gt, coco_dt, "bbox", print_function=lambda *a, **k: None)
        if image_ids is not None:
            evaluator.params.imgIds = sorted(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = {k: float(v) for k, v in zip(STAT_NAMES, evaluator.stats[:12])}
    # precision[T, R, K, A, M]: all IoUs, all recalls, area "all", maxDets 100; -1 marks "no ground truth".
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    per_class = {}
    for k, cat_id in enumerate(evaluator.params.catIds):
        p = precision[:, :, k]
        per_class[names[cat_id]] = float(np.mean(p[p > -1])) if (p > -1).any() else float("nan")
    stats["per_class_AP"] = per_class
    return stats


@torch.no_grad()
def predict(
    detector: nn.Module,
    dataset: CocoDetection,
    info: DistInfo,
    *,
    batch_size: int = 4,
    max_images: int = 0,
    workers: int = 0,
    score_thresh: float = 0.0,
    progress: bool = True,
    precision: Precision | None = None,
) -> list[dict] | None:
    """Run ``detector`` over this rank's shard; return every rank's COCO results on rank 0, else None.

    ``precision`` (see :func:`defeat.engine.precision.resolve_precision`): the inference fast path, e.g. the
    training run's; None runs in float32. Detections come back in float32 either way. The detector comes back
    as it was given (the fast path's float32 islands are in place only during the pass).
    """
    was_training = detector.training
    detector.eval()
    try:
        with precision.applied(detector) if precision is not None else contextlib.nullcontext():
            results = _predict_shard(
                detector, dataset, info, batch_size, max_images, workers, score_thresh, progress, precision
            )
    finally:
        detector.train(was_training)
    gathered = gather_to_main(results, info)
    return None if gathered is None else [r for part in gathered for r in part]


def _predict_shard(
    detector, dataset, info, batch_size, max_images, workers, score_thresh, progress, precision
) -> list[dict]:
    indices = shard_indices(len(dataset), info.world_size, info.rank, max_images)
    loader = DataLoader(
        Subset(dataset, indices),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=info.device.type == "cuda",
    )
    results: list[dict] = []
    for images, targets in tqdm(loader, desc="eval", disable=not (progress and info.is_main), leave=False):
        with precision.autocast() if precision is not None else contextlib.nullcontext():
            outputs = detector([im.to(info.device, non_blocking=True) for im in images])
        outputs = [{k: v.float().cpu() if v.is_floating_point() else v.cpu() for k, v in o.items()} for o in outputs]
        results += detections_to_coco(outputs, [t["image_id"] for t in targets], dataset.categories, score_thresh)
    return results


def evaluate(
    detector: nn.Module,
    dataset: CocoDetection,
    info: DistInfo,
    *,
    batch_size: int = 4,
    max_images: int = 0,
    workers: int = 0,
    score_thresh: float = 0.0,
    results_file: str | Path | None = None,
    progress: bool = True,
    precision: Precision | None = None,
) -> dict | None:
    """Predict and score on rank 0 (returns the stats there, None on other ranks); ``precision`` as in predict."""
    results = predict(
        detector,
        dataset,
        info,
        batch_size=batch_size,
        max_images=max_images,
        workers=workers,
        score_thresh=score_thresh,
        progress=progress,
        precision=precision,
    )
    if results is None:
        return None
    if results_file is not None:
        atomic_write_json(Path(results_file), results, indent=None)
    total = min(len(dataset), max_images) if max_images else len(dataset)
    image_ids = [dataset.image_id(i) for i in range(total)]
    return coco_stats(dataset.annotation_file, results, image_ids=image_ids)


def format_stats(stats: dict) -> str:
    """The 12 COCO stats on one line, in percent (n/a where COCOeval has no ground truth, i.e. -1)."""
    return " ".join(f"{k} {100 * stats[k]:.1f}" if stats[k] >= 0 else f"{k} n/a" for k in STAT_NAMES)
