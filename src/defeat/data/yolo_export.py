"""COCO JSON -> the Ultralytics dataset layout, and back to COCO category ids.

:func:`export_yolo` writes what Ultralytics' trainer reads (``defeat data export-yolo``, and ``defeat train`` with a
YOLO model on COCO-format data)::

    OUT/images/<split>/<file_name>   a symbolic link to the image (never a copy)
    OUT/labels/<split>/<stem>.txt    one line per box: ``class cx cy w h`` normalised to [0, 1]
    OUT/data.yaml                    path, train/val image folders, names (class index -> name)
    OUT/categories.json              class index -> COCO category id and name, and each split's source files

Class ``i`` is the ``i``-th category of the JSON sorted by id (the project's label ``i + 1``), so a YOLO
prediction of class ``i`` maps back to ``categories.json[i]["id"]`` (:func:`read_category_map`). Crowd boxes are
left out (as training leaves them out); boxes reaching outside their image are clipped (and counted) as the
COCO reader does. The folder appears whole or not at all: it is written next to ``OUT`` under a temporary name
and renamed when complete. Pure file work: no Ultralytics import.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import yaml

from defeat.data.coco import load_coco_index
from defeat.utils import atomic_write_json, atomic_write_text, read_json

CATEGORY_FILE = "categories.json"
DATA_YAML = "data.yaml"


def yolo_label_lines(boxes: list[list[float]], labels: list[int], width: int, height: int) -> list[str]:
    """``class cx cy w h`` lines (normalised, 6 decimals) of xyxy pixel boxes with labels ``1..K`` (class = label-1)."""
    lines = []
    for (x1, y1, x2, y2), label in zip(boxes, labels):
        cx, cy = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height
        w, h = (x2 - x1) / width, (y2 - y1) / height
        lines.append(f"{label - 1} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
    return lines


def export_yolo(out: str | Path, splits: dict[str, tuple[str | Path, str | Path]]) -> dict:
    """Write the Ultralytics layout of COCO splits to ``out`` (see the module docstring).

    Args:
        out: the dataset folder to create (must not exist yet).
        splits: split name (``train``, ``val``) -> ``(image folder, instances JSON)``; every split must have the
            same categories.
    Returns:
        ``{"out", "data_yaml", "splits": {name: {"images", "boxes", "clipped"}}, "categories"}``.
    """
    out = Path(out)
    if out.exists():
        raise ValueError(f"{out}: already exists (choose a new --out, or remove it)")
    if not splits:
        raise ValueError("export_yolo: no split given")
    indexes = {name: load_coco_index(annotations) for name, (_, annotations) in splits.items()}
    first_name, first = next(iter(indexes.items()))
    for name, index in indexes.items():
        if [c["id"] for c in index.categories] != [c["id"] for c in first.categories]:
            raise ValueError(f"{splits[name][1]}: categories differ from {splits[first_name][1]}")
    for name, index in indexes.items():
        folder = Path(splits[name][0])
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: image folder not found (split {name})")
        for image in index.images:
            if not (folder / image["file_name"]).is_file():
                raise FileNotFoundError(f"{splits[name][1]}: image {image['file_name']!r} not found in {folder}")

    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        summary = {}
        for name, index in indexes.items():
            folder = Path(splits[name][0]).resolve()
            boxes = 0
            for image in index.images:
                link = work / "images" / name / image["file_name"]
                link.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(folder / image["file_name"], link)
                label = (work / "labels" / name / image["file_name"]).with_suffix(".txt")
                label.parent.mkdir(parents=True, exist_ok=True)
                lines = yolo_label_lines(
                    index.boxes[image["id"]], index.labels[image["id"]], image["width"], image["height"]
                )
                label.write_text("".join(line + "\n" for line in lines))
                boxes += len(lines)
            summary[name] = {"images": len(index.images), "boxes": boxes, "clipped": index.clipped}
        names = {i: c["name"] for i, c in enumerate(first.categories)}
        data = {"path": str(out.resolve()), **{name: f"images/{name}" for name in splits}, "names": names}
        if "val" not in data:  # Ultralytics requires a val entry: the first split stands in
            data["val"] = f"images/{first_name}"
        atomic_write_text(work / DATA_YAML, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
        sources = {
            n: {"images": str(Path(i).resolve()), "annotations": str(Path(a).resolve())} for n, (i, a) in splits.items()
        }
        categories = [{"index": i, "id": c["id"], "name": c["name"]} for i, c in enumerate(first.categories)]
        atomic_write_json(work / CATEGORY_FILE, {"categories": categories, "splits": sources})
        os.replace(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return {"out": str(out), "data_yaml": str(out / DATA_YAML), "splits": summary, "categories": len(names)}


def read_category_map(folder: str | Path) -> list[dict]:
    """``categories.json`` of an export: per class index ``{"index", "id", "name"}`` (class i -> COCO id)."""
    path = Path(folder) / CATEGORY_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (not a folder written by defeat data export-yolo)")
    categories = read_json(path).get("categories")
    if not isinstance(categories, list) or [c.get("index") for c in categories] != list(range(len(categories))):
        raise ValueError(f"{path}: 'categories' must list the classes 0..K-1 in order")
    return categories
