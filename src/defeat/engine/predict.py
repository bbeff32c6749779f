"""Inference on image files: the detector over a list of images (eval mode, no grad, optional fast path), COCO
results with mapped category ids, and pictures with labelled boxes.

Used by :func:`defeat.api.predict`; the images come from :mod:`defeat.data.images` (already checked), the
label -> category id map from :mod:`defeat.data.category_map`.
"""

from __future__ import annotations

import colorsys
import contextlib
import inspect
import io
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from defeat.data.coco import load_image
from defeat.engine.evaluator import detections_to_coco
from defeat.engine.precision import Precision
from defeat.utils import atomic_write_bytes


class _Images(Dataset):
    """Decoded images; a failure comes back as a message (raised in the main process as one line, also when
    data-loader workers are used, which would otherwise wrap it in a traceback)."""

    def __init__(self, paths: list[Path]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return i, load_image(self.paths[i]), None
        except (ValueError, FileNotFoundError) as err:
            return i, None, err


def _collate(batch):
    return list(batch)


@torch.no_grad()
def run_detector(
    detector: nn.Module,
    paths: list[Path],
    *,
    batch_size: int = 2,
    device: torch.device | str = "cpu",
    precision: Precision | None = None,
    workers: int = 0,
    progress: bool = True,
) -> list[dict]:
    """Detections (``boxes`` xyxy in image pixels, ``labels`` 1..K, ``scores``; float32 on the CPU) per path.

    ``detector`` must already be on ``device``; ``precision``'s float32 islands are in place during the pass
    (:meth:`defeat.engine.precision.Precision.applied`). A missing or corrupt image raises a one-line
    ``ValueError`` / ``FileNotFoundError`` naming it.
    """
    device = torch.device(device)
    was_training = detector.training
    detector.eval()
    loader = DataLoader(
        _Images(paths),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
    )
    outputs: list[dict] = [{}] * len(paths)
    placed = precision.applied(detector) if precision is not None else contextlib.nullcontext()
    try:
        with placed, tqdm(total=len(paths), desc="predict", unit="img", disable=not progress, leave=False) as bar:
            for batch in loader:
                for _, _image, error in batch:
                    if error is not None:
                        raise type(error)(str(error)) from None
                images = [image.to(device, non_blocking=True) for _, image, _ in batch]
                with precision.autocast() if precision is not None else contextlib.nullcontext():
                    results = detector(images)
                for (i, _, _), out in zip(batch, results):
                    outputs[i] = {k: v.float().cpu() if v.is_floating_point() else v.cpu() for k, v in out.items()}
                bar.update(len(batch))
    finally:
        detector.train(was_training)
    return outputs


def to_coco_results(
    outputs: list[dict], image_ids: list[int], label_to_id: dict[int, int], score_thresh: float = 0.0
) -> tuple[list[dict], int]:
    """COCO results (``image_id``, ``category_id``, ``bbox`` xywh, ``score``) of the detections whose label is in
    ``label_to_id``; returns them and how many detections at or above ``score_thresh`` were dropped for a
    label the map lacks."""
    kept, dropped = [], 0
    labels = sorted(label_to_id)
    for out in outputs:
        keep = torch.isin(out["labels"], torch.tensor(labels, dtype=out["labels"].dtype))
        dropped += int(((~keep) & (out["scores"] >= score_thresh)).sum())
        kept.append({k: v[keep] for k, v in out.items()})
    # detections_to_coco reads categories[label - 1]["id"]: a dense list with the mapped ids
    dense = [{"id": label_to_id.get(k, -1)} for k in range(1, max(labels) + 1)]
    return detections_to_coco(kept, image_ids, dense, score_thresh), dropped


def class_colours(count: int) -> list[tuple[int, int, int]]:
    """``count`` well-separated RGB colours (golden-ratio hues), the same for every run."""
    colours = []
    for k in range(count):
        r, g, b = colorsys.hsv_to_rgb((k * 0.618033988749895) % 1.0, 0.85, 0.95)
        colours.append((int(r * 255), int(g * 255), int(b * 255)))
    return colours


def draw_detections(
    image_path: Path, dets: list[dict], names: dict[int, str], colours: dict[int, tuple], out_path: Path
) -> Path:
    """Write ``image_path`` with ``dets`` (COCO results) as labelled boxes (``"name 0.87"``) to ``out_path``,
    atomically, in the format its suffix names (PNG when PIL cannot write that format); returns the path."""
    from torchvision.utils import draw_bounding_boxes

    image = (load_image(image_path) * 255).round().to(torch.uint8)
    if dets:
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in dets)], dtype=torch.float32)
        labels = [f"{names.get(d['category_id'], d['category_id'])} {d['score']:.2f}" for d in dets]
        colour = [colours.get(d["category_id"], (255, 255, 255)) for d in dets]
        width = max(1, round(max(image.shape[1:]) / 320))
        extra = {}
        if "fill_labels" in inspect.signature(draw_bounding_boxes).parameters:  # torchvision >= 0.21
            extra = {"fill_labels": True, "label_colors": "white"}  # white text on the box's colour
        image = draw_bounding_boxes(image, boxes, labels=labels, colors=colour, width=width, **extra)
    picture = Image.fromarray(image.permute(1, 2, 0).numpy())
    fmt = Image.registered_extensions().get(out_path.suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        out_path, fmt = out_path.with_suffix(".png"), "PNG"
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt)
    atomic_write_bytes(out_path, buffer.getvalue(), fsync=False)
    return out_path
