"""Convert other annotation formats (YOLO txt, Pascal VOC xml) to a COCO instances JSON.

Both importers validate everything first and write the output once, atomically, at the end:
bad input raises a one-line ``ValueError`` naming the file (and line / object) and nothing is
written.

Conventions shared by both importers
------------------------------------
* Images are the files under ``images_dir`` (searched recursively, hidden files and folders
  skipped) whose extension is one of ``.jpg .jpeg .png .bmp`` (case-insensitive); anything
  else (``.DS_Store``, ``labels.cache``...) is ignored.  Images get ids ``1..N`` in sorted
  order of their ``file_name``, which is the POSIX path relative to ``images_dir``.
* ``width``/``height`` come from the image header (``PIL.Image.open(p).size``; the pixels
  are not decoded, and EXIF orientation is *not* applied, i.e. the stored pixel size).  A file
  PIL cannot identify is an error.
* An image without a label/annotation file is kept with no annotations.
* Annotations get ids ``1..M`` in image order, then file order.  ``bbox`` is absolute
  ``[x, y, w, h]`` (floats), ``area = w * h``, ``iscrowd = 0``.
* Boxes that stick out of the image are clipped to it; the summary's ``"clipped"`` counts
  them.  YOLO overshoots up to 1e-6 (normalised) are treated as rounding noise: still clipped,
  not counted.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from PIL import Image

from defeat.utils import atomic_write_json

__all__ = ["IMAGE_EXTENSIONS", "import_yolo", "import_voc"]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp"})
_TOL = 1e-6  # tolerance on normalised YOLO values (range checks and "clipped" counting)


# --------------------------------------------------------------------------- helpers


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


def _require_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        raise ValueError(f"{path}: {what} directory not found")


def _list_images(images_dir: Path) -> list[tuple[str, Path]]:
    """Sorted ``(file_name, path)`` pairs for every image file under ``images_dir``."""
    _require_dir(images_dir, "images")
    found = []
    for path in images_dir.rglob("*"):
        rel = path.relative_to(images_dir)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
            found.append((rel.as_posix(), path))
    if not found:
        exts = " ".join(sorted(IMAGE_EXTENSIONS))
        raise ValueError(f"{images_dir}: no image files found (looked for {exts})")
    found.sort(key=lambda item: item[0])
    return found


def _image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` from the header; corrupt or unreadable files raise ``ValueError``."""
    try:
        with Image.open(path) as img:
            width, height = img.size
    except Exception as err:  # PIL raises UnidentifiedImageError, OSError, SyntaxError...
        raise ValueError(f"{path}: cannot read image ({_one_line(err) or type(err).__name__})") from None
    if width <= 0 or height <= 0:
        raise ValueError(f"{path}: image has invalid size {width}x{height}")
    return int(width), int(height)


def _categories(names: list[str], supercategories: dict[str, str] | None, source: str) -> list[dict]:
    supercategories = dict(supercategories or {})
    unknown = sorted(set(supercategories) - set(names))
    if unknown:
        raise ValueError(f"supercategories: unknown class name(s) {', '.join(map(repr, unknown))} (not in {source})")
    return [
        {"id": i, "name": name, "supercategory": supercategories.get(name, name)}
        for i, name in enumerate(names, start=1)
    ]


def _clip(x1: float, y1: float, x2: float, y2: float, width: int, height: int) -> tuple[float, float, float, float]:
    return max(0.0, x1), max(0.0, y1), min(float(width), x2), min(float(height), y2)


def _annotation(ann_id: int, image_id: int, category_id: int, x1: float, y1: float, x2: float, y2: float) -> dict:
    w, h = x2 - x1, y2 - y1
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": [x1, y1, w, h],
        "area": w * h,
        "iscrowd": 0,
    }


def _dataset(images: list[dict], annotations: list[dict], categories: list[dict], description: str) -> dict:
    return {
        "info": {"description": description},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def _summary(dataset: dict, out: Path, **extra: int) -> dict:
    return {
        "images": len(dataset["images"]),
        "annotations": len(dataset["annotations"]),
        "categories": len(dataset["categories"]),
        "out": str(out),
        **extra,
    }


# --------------------------------------------------------------------------- YOLO


def _read_class_file(classes_file: Path) -> list[str]:
    if not classes_file.is_file():
        raise ValueError(f"{classes_file}: classes file not found")
    try:
        lines = classes_file.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{classes_file}: cannot read classes file ({_one_line(err)})") from None
    while lines and not lines[-1].strip():
        lines.pop()
    names: list[str] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(lines, start=1):
        name = line.strip()
        if not name:
            raise ValueError(f"{classes_file} line {lineno}: empty class name (would shift every later class index)")
        if name in seen:
            raise ValueError(
                f"{classes_file} line {lineno}: duplicate class name {name!r} (first on line {seen[name]})"
            )
        seen[name] = lineno
        names.append(name)
    if not names:
        raise ValueError(f"{classes_file}: no class names")
    return names


def _parse_yolo_line(label: Path, lineno: int, line: str, num_classes: int) -> tuple[int, float, float, float, float]:
    where = f"{label} line {lineno}"
    fields = line.split()
    if len(fields) != 5:
        raise ValueError(f"{where}: expected 5 fields 'class xc yc w h', got {len(fields)}")
    try:
        values = [float(f) for f in fields]
    except ValueError:
        raise ValueError(f"{where}: non-numeric value in {line.strip()!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{where}: non-finite value in {line.strip()!r}")
    cls_value, xc, yc, w, h = values
    if cls_value != int(cls_value):
        raise ValueError(f"{where}: class index {fields[0]!r} is not an integer")
    cls = int(cls_value)
    if not 0 <= cls < num_classes:
        raise ValueError(f"{where}: class index {cls} outside the class list (0..{num_classes - 1})")
    for name, value, text in zip(("xc", "yc", "w", "h"), (xc, yc, w, h), fields[1:]):
        if not -_TOL <= value <= 1 + _TOL:
            raise ValueError(f"{where}: {name}={text} outside [0, 1]")
    if w <= 0 or h <= 0:
        raise ValueError(f"{where}: non-positive box size w={fields[3]} h={fields[4]}")
    return cls, xc, yc, w, h


def import_yolo(
    images_dir: str | Path,
    labels_dir: str | Path,
    classes_file: str | Path,
    out_json: str | Path,
    supercategories: dict[str, str] | None = None,
) -> dict:
    """Convert a YOLO-format dataset to a COCO instances JSON at ``out_json``.

    ``labels_dir`` mirrors ``images_dir``: image ``a/b.jpg`` has labels ``a/b.txt``, one box per
    line ``class xc yc w h`` normalised to [0, 1] (blank lines are skipped).  Category ids are
    ``1..K`` in ``classes_file`` order (class index ``i`` -> category id ``i + 1``);
    ``supercategory`` is ``supercategories[name]`` or the name itself.  A ``.txt`` file with no
    matching image is an error, except a top-level ``classes.txt`` (LabelImg convention) or
    ``classes_file`` itself; files with other extensions in ``labels_dir`` are ignored.

    Returns ``{"images", "annotations", "categories", "out", "clipped"}``.
    """
    images_dir, labels_dir, classes_file, out_json = map(Path, (images_dir, labels_dir, classes_file, out_json))
    names = _read_class_file(classes_file)
    categories = _categories(names, supercategories, str(classes_file))
    image_files = _list_images(images_dir)
    _require_dir(labels_dir, "labels")

    # Pair label files with images by relative path without extension.
    by_key: dict[str, str] = {}
    for file_name, _ in image_files:
        key = str(Path(file_name).with_suffix(""))
        if key in by_key:
            raise ValueError(
                f"{images_dir}: images {by_key[key]!r} and {file_name!r} would share the label file {key}.txt"
            )
        by_key[key] = file_name
    classes_resolved = classes_file.resolve()
    for label in sorted(labels_dir.rglob("*.txt")):
        rel = label.relative_to(labels_dir)
        if any(part.startswith(".") for part in rel.parts) or not label.is_file():
            continue
        if str(rel.with_suffix("")) in by_key:
            continue
        if label.resolve() == classes_resolved or rel.as_posix() == "classes.txt":
            continue
        raise ValueError(f"{label}: label file has no matching image in {images_dir}")

    images: list[dict] = []
    annotations: list[dict] = []
    clipped = 0
    for image_id, (file_name, path) in enumerate(image_files, start=1):
        width, height = _image_size(path)
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        label = labels_dir / Path(file_name).with_suffix(".txt")
        if not label.is_file():
            continue
        try:
            text = label.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"{label}: cannot read label file ({_one_line(err)})") from None
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            cls, xc, yc, w, h = _parse_yolo_line(label, lineno, line, len(names))
            nx1, ny1, nx2, ny2 = xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2
            overshoot = max(-nx1, -ny1, nx2 - 1, ny2 - 1)
            x1, y1, x2, y2 = _clip(nx1 * width, ny1 * height, nx2 * width, ny2 * height, width, height)
            if x2 <= x1 or y2 <= y1:
                raise ValueError(f"{label} line {lineno}: box lies outside the image after clipping")
            if overshoot > _TOL:
                clipped += 1
            annotations.append(_annotation(len(annotations) + 1, image_id, cls + 1, x1, y1, x2, y2))

    dataset = _dataset(images, annotations, categories, f"imported from YOLO labels {labels_dir}")
    atomic_write_json(out_json, dataset)
    return _summary(dataset, out_json, clipped=clipped)


# --------------------------------------------------------------------------- Pascal VOC


def _text(parent: ET.Element, tag: str) -> str | None:
    node = parent.find(tag)
    if node is None or node.text is None or not node.text.strip():
        return None
    return node.text.strip()


def _number(parent: ET.Element, tag: str, where: str, path: str) -> float:
    text = _text(parent, tag)
    if text is None:
        raise ValueError(f"{where}: missing <{path}>")
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{where}: <{path}> is not a number ({text!r})") from None
    if not math.isfinite(value):
        raise ValueError(f"{where}: <{path}> is not finite ({text!r})")
    return value


def _parse_voc(xml_path: Path) -> dict:
    """Parse one VOC file into ``{"filename", "size", "objects": [(name, difficult, box, where)]}``."""
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as err:
        raise ValueError(f"{xml_path}: invalid XML ({_one_line(err)})") from None
    except OSError as err:
        raise ValueError(f"{xml_path}: cannot read ({_one_line(err)})") from None
    size = root.find("size")
    if size is None:
        raise ValueError(f"{xml_path}: missing <size>")
    width = _number(size, "width", str(xml_path), "size><width")
    height = _number(size, "height", str(xml_path), "size><height")
    objects = []
    for index, obj in enumerate(root.findall("object"), start=1):
        name = _text(obj, "name")
        where = f"{xml_path} object {index}" + (f" ({name})" if name else "")
        if name is None:
            raise ValueError(f"{where}: missing <name>")
        difficult_text = _text(obj, "difficult") or "0"
        if difficult_text not in ("0", "1"):
            raise ValueError(f"{where}: <difficult> must be 0 or 1, got {difficult_text!r}")
        box = obj.find("bndbox")
        if box is None:
            raise ValueError(f"{where}: missing <bndbox>")
        xmin, ymin, xmax, ymax = (_number(box, t, where, f"bndbox><{t}") for t in ("xmin", "ymin", "xmax", "ymax"))
        if xmax <= xmin:
            raise ValueError(f"{where}: xmax={xmax:g} <= xmin={xmin:g}")
        if ymax <= ymin:
            raise ValueError(f"{where}: ymax={ymax:g} <= ymin={ymin:g}")
        objects.append((name, difficult_text == "1", (xmin, ymin, xmax, ymax), where))
    return {"filename": _text(root, "filename"), "size": (width, height), "objects": objects}


def import_voc(
    annotations_dir: str | Path,
    images_dir: str | Path,
    out_json: str | Path,
    classes: list[str] | None = None,
    skip_difficult: bool = True,
) -> dict:
    """Convert Pascal VOC xml files (``annotations_dir/*.xml``) to a COCO instances JSON.

    * Each xml's ``<filename>`` is looked up relative to ``images_dir`` (falling back to an image
      with the xml's stem when ``<filename>`` is missing or not found).  An xml whose image cannot
      be found, or two xml files for one image, is an error.  Images without an xml are kept with
      no annotations.  ``<size>`` must be present and match the image's real size.
    * Categories: ``classes`` order when given (an object with another name is an error),
      otherwise every name seen, sorted.  Ids ``1..K``; ``supercategory`` = the name.
    * VOC pixel coordinates are 1-based and inclusive, so ``x = xmin - 1``, ``y = ymin - 1``,
      ``w = xmax - xmin + 1``, ``h = ymax - ymin + 1``; boxes beyond the image are clipped and
      counted.  ``xmax <= xmin`` (or ``ymax <= ymin``) is an error.
    * COCO has no "difficult" flag: with ``skip_difficult=True`` (default) difficult objects are
      dropped (counted in ``"skipped_difficult"``); with ``False`` they are kept as ordinary
      boxes (``iscrowd: 0``) carrying an extra ``"difficult": 1`` field, which COCO tools ignore.

    Returns ``{"images", "annotations", "categories", "out", "clipped", "skipped_difficult"}``.
    """
    annotations_dir, images_dir, out_json = map(Path, (annotations_dir, images_dir, out_json))
    _require_dir(annotations_dir, "annotations")
    if classes is not None:
        classes = [str(c).strip() for c in classes]
        if not classes or any(not c for c in classes):
            raise ValueError(f"classes: empty class name in {classes!r}")
        duplicates = sorted({c for c in classes if classes.count(c) > 1})
        if duplicates:
            raise ValueError(f"classes: duplicate class name(s) {', '.join(map(repr, duplicates))}")
    image_files = _list_images(images_dir)
    by_name = dict(image_files)
    by_stem: dict[str, list[str]] = {}
    for file_name, _ in image_files:
        by_stem.setdefault(str(Path(file_name).with_suffix("")), []).append(file_name)

    xml_files = sorted(
        p
        for p in annotations_dir.iterdir()
        if p.suffix.lower() == ".xml" and not p.name.startswith(".") and p.is_file()
    )
    parsed: dict[str, tuple[Path, dict]] = {}  # image file_name -> (xml path, parsed)
    for xml_path in xml_files:
        record = _parse_voc(xml_path)
        file_name = record["filename"]
        if file_name is None or file_name not in by_name:
            candidates = by_stem.get(Path(file_name).stem if file_name else xml_path.stem, [])
            if len(candidates) != 1:
                wanted = f"<filename> {file_name!r}" if file_name else f"an image named {xml_path.stem}.*"
                problem = "is ambiguous" if candidates else "not found"
                raise ValueError(f"{xml_path}: image for {wanted} {problem} in {images_dir}")
            file_name = candidates[0]
        if file_name in parsed:
            raise ValueError(f"{xml_path}: image {file_name!r} is already annotated by {parsed[file_name][0]}")
        if classes is not None:
            for name, _, _, where in record["objects"]:
                if name not in classes:
                    raise ValueError(f"{where}: unknown class name {name!r} (not in the given classes)")
        parsed[file_name] = (xml_path, record)

    names = classes if classes is not None else sorted({o[0] for _, r in parsed.values() for o in r["objects"]})
    categories = _categories(names, None, "classes")
    category_id = {c["name"]: c["id"] for c in categories}

    images: list[dict] = []
    annotations: list[dict] = []
    clipped = skipped = 0
    for image_id, (file_name, path) in enumerate(image_files, start=1):
        width, height = _image_size(path)
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        if file_name not in parsed:
            continue
        xml_path, record = parsed[file_name]
        if record["size"] != (width, height):
            w, h = record["size"]
            raise ValueError(f"{xml_path}: <size> {w:g}x{h:g} does not match image {path} ({width}x{height})")
        for name, difficult, (xmin, ymin, xmax, ymax), where in record["objects"]:
            if difficult and skip_difficult:
                skipped += 1
                continue
            x1, y1, x2, y2 = xmin - 1, ymin - 1, xmax, ymax  # 1-based inclusive -> 0-based edges
            cx1, cy1, cx2, cy2 = _clip(x1, y1, x2, y2, width, height)
            if cx2 <= cx1 or cy2 <= cy1:
                raise ValueError(f"{where}: box lies outside the {width}x{height} image")
            if (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2):
                clipped += 1
            ann = _annotation(len(annotations) + 1, image_id, category_id[name], cx1, cy1, cx2, cy2)
            if difficult:
                ann["difficult"] = 1
            annotations.append(ann)

    dataset = _dataset(images, annotations, categories, f"imported from Pascal VOC {annotations_dir}")
    atomic_write_json(out_json, dataset)
    return _summary(dataset, out_json, clipped=clipped, skipped_difficult=skipped)
