"""Run a detector on your images: COCO results JSON (for ``defeat analyze errors``) and pictures with boxes."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from defeat.data.category_map import identity_map, map_by_name
from defeat.data.images import ImageList, list_inputs
from defeat.engine import LoadedModel
from defeat.engine.precision import config_precision, resolve_precision
from defeat.engine.predict import class_colours, draw_detections, run_detector, to_coco_results
from defeat.utils import atomic_write_json


def images_file_for(out: str | Path) -> Path:
    """Where the image list of a folder / single-image run goes: ``results.json`` -> ``results.images.json``."""
    out = Path(out)
    return out.with_name(f"{out.stem if out.suffix.lower() == '.json' else out.name}.images.json")


def _device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' requested but no CUDA device is available")
    return device


def _check_outputs(out: Path, draw_dir: Path | None, images: ImageList) -> None:
    """Refuse outputs that would overwrite the inputs or cannot be files, before anything runs."""
    if out.is_dir():
        raise ValueError(f"{out}: is a folder; out must be a file name (e.g. {out / 'results.json'})")
    inputs = {images.path(im).resolve() for im in images.images}
    if images.categories is not None:  # the COCO JSON itself
        inputs.add(Path(images.source).resolve())
    for path in (out, images_file_for(out)):
        if path.resolve() in inputs:
            raise ValueError(f"{path}: is one of the inputs; choose another output file")
    if draw_dir is not None:
        if draw_dir.exists() and not draw_dir.is_dir():
            raise ValueError(f"{draw_dir}: exists and is not a folder (draw_dir)")
        if draw_dir.resolve() == images.root.resolve():
            raise ValueError(f"{draw_dir}: is the input image folder; drawing there would overwrite the images")


def predict(
    model: LoadedModel | str | Path,
    inputs: str | Path,
    out: str | Path,
    *,
    images_dir: str | Path | None = None,
    score_thresh: float = 0.05,
    draw_dir: str | Path | None = None,
    draw_thresh: float = 0.3,
    batch_size: int = 2,
    device: str = "cpu",
    precision: str | None = None,
    workers: int = 0,
    progress: bool = True,
) -> dict:
    """Run a detector on an image file, a folder of images or a COCO JSON's images; write COCO results to ``out``.

    Args:
        model: a :class:`LoadedModel` (e.g. from :func:`defeat.api.load_detector`) or a checkpoint of this project.
        inputs: an image, a folder (its images in sorted file-name order get ids 1..N; non-image files are skipped
            and listed in ``skipped``), or a COCO JSON (``.json``; its image ids, with ``images_dir`` = the folder
            its ``file_name`` entries are relative to).
        out: the results JSON, ``[{image_id, category_id, bbox: [x, y, w, h], score}, ...]``. For a folder or an
            image also ``out``'s ``.images.json`` sidecar: a COCO file (``images`` with ids, file names and sizes,
            ``categories``, empty ``annotations``) that the results refer to.
        score_thresh: keep detections scoring at least this (the model's ``box_score_thresh`` is a floor).
        draw_dir: also write every image with its labelled boxes there (same relative file names).
        draw_thresh: draw only the detections scoring at least this (the pictures only: the results keep every
            detection of at least ``score_thresh``, as an evaluation needs).
        batch_size, workers: images per forward pass; data-loader processes (0: decode in this process).
        device: ``cpu``, ``cuda`` or ``auto``. precision: ``auto|fp32|bf16|fp16``; None: the model config's.

    Category ids are the model's own, except with a COCO JSON whose categories differ: then classes map by name
    (e.g. a COCO-trained model on coco128 imported from YOLO), detections of classes the dataset lacks are
    dropped and counted (``dropped``, ``unmatched``), and no name in common is a one-line ValueError.
    Every input is checked (missing, not an image, corrupt, not on disk, size unlike the JSON's) before any file
    is written; files are written atomically, the results last. Returns a summary: ``results``, ``images_file``,
    ``images``, ``detections``, ``dropped``, ``unmatched``, ``mapped_by_name``, ``skipped``, ``drawn``
    (images), ``boxes_drawn``, ``draw_dir``, ``precision`` (one line), ``seconds``.
    """
    start = time.perf_counter()
    out = Path(out)
    draw = Path(draw_dir) if draw_dir is not None else None
    if not score_thresh >= 0:
        raise ValueError(f"score_thresh must be >= 0, got {score_thresh}")
    if not draw_thresh >= 0:
        raise ValueError(f"draw_thresh must be >= 0, got {draw_thresh}")
    if batch_size < 1 or workers < 0:
        raise ValueError(f"batch_size must be >= 1 and workers >= 0, got {batch_size} and {workers}")
    images = list_inputs(inputs, images_dir)
    _check_outputs(out, draw, images)
    if not isinstance(model, LoadedModel):
        from defeat.api.models import load_detector

        model = load_detector(model)
    if images.categories is None:
        cmap, categories = identity_map(model.categories), list(model.categories)
    else:
        cmap, categories = map_by_name(model.categories, images.categories, images.source), images.categories

    dev = _device(device)
    plan = resolve_precision(precision or config_precision(model.config), dev)
    detector = model.model
    try:
        outputs = run_detector(
            detector.to(dev),
            [images.path(im) for im in images.images],
            batch_size=batch_size,
            device=dev,
            precision=plan,
            workers=workers,
            progress=progress,
        )
    finally:
        detector.to("cpu")
    results, dropped = to_coco_results(outputs, [im["id"] for im in images.images], cmap.label_to_id, score_thresh)

    drawn = boxes_drawn = 0
    if draw is not None:
        names = {c["id"]: c["name"] for c in categories}
        colours = dict(zip(names, class_colours(len(names))))
        per_image: dict[int, list[dict]] = {}
        for det in results:
            if det["score"] >= draw_thresh:
                per_image.setdefault(det["image_id"], []).append(det)
                boxes_drawn += 1
        for im in images.images:
            draw_detections(images.path(im), per_image.get(im["id"], []), names, colours, draw / im["file_name"])
            drawn += 1
    images_file = None
    if images.categories is None:
        images_file = images_file_for(out)
        atomic_write_json(images_file, {"images": images.images, "annotations": [], "categories": categories})
    atomic_write_json(out, results, indent=None)
    return {
        "results": str(out),
        "images_file": str(images_file) if images_file else None,
        "images": len(images.images),
        "detections": len(results),
        "dropped": dropped,
        "unmatched": list(dict.fromkeys(cmap.unmatched)),
        "mapped_by_name": cmap.by_name,
        "skipped": [str(p) for p in images.skipped or []],
        "drawn": drawn,
        "boxes_drawn": boxes_drawn,
        "draw_dir": str(draw) if draw is not None else None,
        "precision": plan.notice,
        "seconds": round(time.perf_counter() - start, 3),
    }
