"""Dataset statistics from a COCO index: counts, image sizes, box sizes, COCO's size split. Pure: no I/O.

Box sizes are those training sees (crowd boxes excluded, boxes clipped to their image, as
:func:`defeat.data.coco.load_coco_index` reads them). COCO's split uses the box area ``a = w·h`` in original
pixels: small ``a < 32²``, medium ``32² ≤ a < 96²``, large ``a ≥ 96²`` (COCOeval uses the annotation's ``area``
field, the segment area, so on COCO itself the split differs slightly).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from defeat.data.coco import CocoIndex

#: quantiles reported for widths, heights and areas
QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)
SMALL, MEDIUM = 32**2, 96**2


def box_arrays(index: CocoIndex) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(wh (N, 2), labels (N,) 1..K, image_wh (N, 2))`` of every training box, with its image's size."""
    wh, labels, image_wh = [], [], []
    for img in index.images:
        for (x1, y1, x2, y2), label in zip(index.boxes[img["id"]], index.labels[img["id"]]):
            wh.append((x2 - x1, y2 - y1))
            labels.append(label)
            image_wh.append((img["width"], img["height"]))
    return (np.asarray(wh, float).reshape(-1, 2), np.asarray(labels, int), np.asarray(image_wh, float).reshape(-1, 2))


def quantiles(values: np.ndarray) -> dict[str, float]:
    """``{"q0": min, "q5": ..., "q50": median, ..., "q100": max}`` (empty input: {})."""
    if len(values) == 0:
        return {}
    return {f"q{round(100 * q)}": round(float(np.quantile(values, q)), 2) for q in QUANTILES}


@dataclass
class DatasetStats:
    """What ``defeat init`` and ``defeat data stats`` print."""

    images: int
    empty_images: int  # images without a (non-crowd) box
    boxes: int
    boxes_per_class: dict[str, int]  # every category, in label order (0 for a category without boxes)
    boxes_per_image: dict[str, float]  # min, median, mean, max over all images (empty ones included)
    image_sizes: dict[str, int]  # "WxH" -> images, the 5 most common
    image_width: dict[str, float]
    image_height: dict[str, float]
    box_width: dict[str, float]  # quantiles, original pixels
    box_height: dict[str, float]
    box_area: dict[str, float]
    coco_split: dict[str, int]  # small / medium / large box counts

    def as_dict(self) -> dict:
        return asdict(self)


def dataset_statistics(index: CocoIndex) -> DatasetStats:
    """The statistics of one split (see the module docstring for the definitions)."""
    wh, labels, _ = box_arrays(index)
    per_image = np.asarray([len(index.boxes[img["id"]]) for img in index.images], float)
    sizes: dict[str, int] = {}
    for img in index.images:
        key = f"{img['width']}x{img['height']}"
        sizes[key] = sizes.get(key, 0) + 1
    common = dict(sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0]))[:5])
    area = wh[:, 0] * wh[:, 1]
    names = [c["name"] for c in index.categories]
    return DatasetStats(
        images=len(index.images),
        empty_images=int((per_image == 0).sum()),
        boxes=len(wh),
        boxes_per_class={name: int((labels == i + 1).sum()) for i, name in enumerate(names)},
        boxes_per_image={
            "min": float(per_image.min(initial=0)),
            "max": float(per_image.max(initial=0)),
            "median": float(np.median(per_image)) if len(per_image) else 0.0,
            "mean": round(float(per_image.mean()), 2) if len(per_image) else 0.0,
        },
        image_sizes=common,
        image_width=quantiles(np.asarray([img["width"] for img in index.images], float)),
        image_height=quantiles(np.asarray([img["height"] for img in index.images], float)),
        box_width=quantiles(wh[:, 0]),
        box_height=quantiles(wh[:, 1]),
        box_area=quantiles(area),
        coco_split={
            "small": int((area < SMALL).sum()),
            "medium": int(((area >= SMALL) & (area < MEDIUM)).sum()),
            "large": int((area >= MEDIUM).sum()),
        },
    )


def choose_image_size(image_wh: np.ndarray, cap: int = 512, multiple: int = 32) -> tuple[int, int]:
    """``(min_size, max_size)`` for torchvision's resize from the images' sizes.

    min_size = the median shorter side rounded to ``multiple``, clamped to [64, ``cap``] (the cap bounds the
    cost on a CPU; larger images are scaled down), max_size = min_size × the median long/short ratio, rounded up
    to ``multiple``. Images are not upscaled beyond their typical size.
    """
    image_wh = np.asarray(image_wh, float).reshape(-1, 2)
    if len(image_wh) == 0:
        raise ValueError("no images to choose an image size from")
    short, long = image_wh.min(1), image_wh.max(1)
    min_size = int(np.clip(multiple * round(float(np.median(short)) / multiple), 64, cap))
    aspect = float(np.median(long / short))
    max_size = max(min_size, int(multiple * np.ceil(min_size * aspect / multiple - 1e-9)))
    return min_size, max_size


def format_statistics(stats: DatasetStats, title: str = "train") -> list[str]:
    """Human-readable lines of :class:`DatasetStats`."""

    def q(d: dict) -> str:
        return " ".join(f"{k}={v:g}" for k, v in d.items()) if d else "-"

    split = stats.coco_split
    total = max(1, stats.boxes)
    width = max([len(n) for n in stats.boxes_per_class] + [5])
    lines = [
        f"{title}: {stats.images} images ({stats.empty_images} without boxes), {stats.boxes} boxes, "
        f"{len(stats.boxes_per_class)} classes",
        "  boxes per image: " + " ".join(f"{k} {v:g}" for k, v in stats.boxes_per_image.items()),
        "  image sizes (most common): " + ", ".join(f"{k} ×{v}" for k, v in stats.image_sizes.items()),
        f"  image width  {q(stats.image_width)}",
        f"  image height {q(stats.image_height)}",
        f"  box width    {q(stats.box_width)}",
        f"  box height   {q(stats.box_height)}",
        f"  box area     {q(stats.box_area)}",
        f"  COCO split (box area, original pixels): small {split['small']} ({100 * split['small'] / total:.0f} %)"
        f", medium {split['medium']} ({100 * split['medium'] / total:.0f} %), large {split['large']} "
        f"({100 * split['large'] / total:.0f} %)",
        "  boxes per class:",
    ]
    lines += [f"    {name:<{width}} {count}" for name, count in stats.boxes_per_class.items()]
    return lines
