"""COCO-format detection data for torch: an image folder plus an instances JSON.

COCO category ids (any integers) map to contiguous labels ``1..K`` in id order, 0 being background;
``categories`` (the list of COCO category dicts) is that mapping and goes into every checkpoint.
Crowd regions are not training targets (COCOeval still uses them at evaluation, from the JSON).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.transforms.functional import pil_to_tensor

from defeat.utils import read_json


@dataclass
class CocoIndex:
    """The parts of an instances JSON that training needs, validated."""

    images: list[dict]
    boxes: dict[int, list[list[float]]]  # image id -> [[x1, y1, x2, y2], ...] (clipped, non-crowd)
    labels: dict[int, list[int]]  # image id -> contiguous labels 1..K
    categories: list[dict]  # sorted by COCO id; label = position + 1
    clipped: int  # boxes that reached outside their image and were clipped


def load_coco_index(annotation_file: str | Path) -> CocoIndex:
    """Read and validate an instances JSON. Raises ``ValueError('<file>: ...')`` naming the bad item.

    Rejected: invalid JSON, missing sections, annotations of unknown images or categories, boxes with
    non-positive width/height or non-finite numbers. Clipped (and counted): boxes reaching outside the image.
    """
    path = Path(annotation_file)
    data = read_json(path)
    if not isinstance(data, dict) or not all(k in data for k in ("images", "annotations", "categories")):
        raise ValueError(f"{path}: not a COCO instances file (needs 'images', 'annotations' and 'categories')")
    categories = sorted(data["categories"], key=lambda c: c["id"])
    if not categories:
        raise ValueError(f"{path}: no categories")
    label_of = {c["id"]: i + 1 for i, c in enumerate(categories)}
    images = {img["id"]: img for img in data["images"]}
    boxes: dict[int, list[list[float]]] = {i: [] for i in images}
    labels: dict[int, list[int]] = {i: [] for i in images}
    clipped = 0
    for ann in data["annotations"]:
        where = f"{path}: annotation {ann.get('id', '?')}"
        if ann.get("image_id") not in images:
            raise ValueError(f"{where} refers to unknown image id {ann.get('image_id')!r}")
        if ann.get("category_id") not in label_of:
            raise ValueError(f"{where} refers to unknown category id {ann.get('category_id')!r}")
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(isinstance(v, (int, float)) for v in bbox):
            raise ValueError(f"{where}: bbox must be [x, y, width, height], got {bbox!r}")
        x, y, w, h = map(float, bbox)
        if not all(math.isfinite(v) for v in (x, y, w, h)):
            raise ValueError(f"{where}: bbox has non-finite values {bbox}")
        if w <= 0 or h <= 0:
            raise ValueError(f"{where}: bbox has non-positive width/height {bbox}")
        if ann.get("iscrowd", 0):
            continue
        img = images[ann["image_id"]]
        x1, y1 = max(x, 0.0), max(y, 0.0)
        x2, y2 = min(x + w, float(img["width"])), min(y + h, float(img["height"]))
        if (x1, y1, x2, y2) != (x, y, x + w, y + h):
            clipped += 1
            if x2 - x1 < 1 or y2 - y1 < 1:
                raise ValueError(f"{where}: bbox {bbox} lies outside its {img['width']}x{img['height']} image")
        boxes[ann["image_id"]].append([x1, y1, x2, y2])
        labels[ann["image_id"]].append(label_of[ann["category_id"]])
    if clipped:
        warnings.warn(f"{path}: clipped {clipped} boxes that reached outside their image", stacklevel=2)
    ordered = sorted(images.values(), key=lambda im: im["id"])
    return CocoIndex(ordered, boxes, labels, categories, clipped)


def load_image(path: Path) -> torch.Tensor:
    """RGB image as a float tensor in [0, 1], shape (3, H, W); one-line errors for missing/corrupt files."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image file not found")
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"{path}: unreadable or corrupt image ({type(err).__name__}: {err})") from None
    return pil_to_tensor(img).float().div_(255.0)


class CocoDetection(Dataset):
    """Items are ``(image, target)`` with ``target = {boxes (N,4) xyxy, labels (N,), image_id}``.

    An index may be an ``int`` or ``(int, flip)``: the training sampler decides the horizontal flip so
    that augmentation is reproducible and resumable regardless of data-loader workers.
    """

    def __init__(self, images_dir: str | Path, annotation_file: str | Path):
        self.images_dir = Path(images_dir)
        self.annotation_file = Path(annotation_file)
        if not self.images_dir.is_dir():
            raise FileNotFoundError(f"{self.images_dir}: image folder not found")
        self.index = load_coco_index(self.annotation_file)

    @property
    def categories(self) -> list[dict]:
        return self.index.categories

    @property
    def class_names(self) -> list[str]:
        return [c["name"] for c in self.index.categories]

    def __len__(self) -> int:
        return len(self.index.images)

    def image_id(self, i: int) -> int:
        return self.index.images[i]["id"]

    def __getitem__(self, key: int | tuple[int, bool]):
        i, flip = key if isinstance(key, tuple) else (key, False)
        info = self.index.images[i]
        image = load_image(self.images_dir / info["file_name"])
        if tuple(image.shape[1:]) != (info["height"], info["width"]):
            raise ValueError(
                f"{self.images_dir / info['file_name']}: image is {image.shape[2]}x{image.shape[1]}, "
                f"the annotations say {info['width']}x{info['height']}"
            )
        boxes = torch.tensor(self.index.boxes[info["id"]], dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor(self.index.labels[info["id"]], dtype=torch.int64)
        if flip:
            image = image.flip(-1)
            boxes = torch.stack([info["width"] - boxes[:, 2], boxes[:, 1], info["width"] - boxes[:, 0], boxes[:, 3]], 1)
        return image, {"boxes": boxes, "labels": labels, "image_id": info["id"]}


def collate(batch):
    """Detection batches are lists: images differ in size and boxes in number."""
    images, targets = zip(*batch)
    return list(images), list(targets)
