"""COCO error analysis: precision-recall curves broken down by error type (the DeFeat supplementary, Fig. 4-9).

For every category ``k`` and area range the analysis stacks seven PR curves (all at ``maxDets=100``):

* ``C75``, ``C50``, ``Loc`` -- ordinary COCO precision at IoU 0.75, 0.5 and 0.1 (one main COCOeval pass);
* ``Sim`` -- precision at IoU 0.1 once confusions with the *other classes of k's supercategory* are forgiven;
* ``Oth`` -- the same once confusions with *every* other class are forgiven;
* ``BG`` -- 1 wherever ``Oth`` > 0 (what is left is background false positives); ``FN`` -- 1 everywhere.

Semantics ``mmdet`` (default) matches mmdetection's ``tools/analysis_tools/coco_error_analysis.py``: the forgiven
ground truths are relabelled to ``k`` and marked ``iscrowd`` (pycocotools derives ``ignore`` from ``iscrowd``), so
they match with intersection over the *detection* area and absorb any number of detections. Semantics ``matlab``
matches the cocoapi MATLAB ``CocoEval.analyze()``: the forgiven ground truths are only *ignored* (ordinary IoU, an
ignored object matches one detection). Both passes only need category ``k``; they are restricted to ``k`` and to the
images where ``k`` has detections or ground truth, which gives the same numbers as mmdetection's full passes.

Unlike mmdetection, categories are indexed in sorted-id order everywhere (mmdetection mixes the file order of
``categories`` with COCOeval's sorted order; the two agree on COCO). The overall curve is the mean over *all*
categories, where a category without ground truth counts as 0 (mmdetection's convention; COCOeval's AP skips it).
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from defeat.utils import read_json

BANDS = ("C75", "C50", "Loc", "Sim", "Oth", "BG", "FN")
AREA_NAMES = ("all", "small", "medium", "large")
DEFAULT_AREAS = (32.0**2, 96.0**2, 1e5**2)
SEMANTICS = ("mmdet", "matlab")
ENGINES = ("faster", "pycocotools")
MAX_DETS = 100
REC_THRS = np.linspace(0.0, 1.0, 101)
MAIN_IOUS = (0.75, 0.5, 0.1)
CONFUSION_IOU = 0.1


# ----------------------------------------------------------------------------------------------- inputs


def area_ranges(areas: Sequence[float] = DEFAULT_AREAS) -> list[list[float]]:
    """COCOeval ``areaRng`` for all/small/medium/large from the three upper bounds (small, medium, all)."""
    if len(areas) != 3:
        raise ValueError(f"--areas needs 3 numbers (small max, medium max, all max), got {len(areas)}")
    a0, a1, a2 = (float(a) for a in areas)
    if not (0 < a0 < a1 < a2) or not all(math.isfinite(a) for a in (a0, a1, a2)):
        raise ValueError(f"--areas must be finite and increasing, 0 < small < medium < all; got {list(areas)}")
    return [[0.0, a2], [0.0, a0], [a0, a1], [a1, a2]]


def load_ground_truth(path: str | Path) -> dict:
    """Read a COCO ground-truth JSON and check the fields the analysis uses; ``ValueError('<file>: ...')`` if bad."""
    gt = read_json(path)
    if not isinstance(gt, dict) or not all(
        isinstance(gt.get(k), list) for k in ("images", "annotations", "categories")
    ):
        raise ValueError(f"{path}: not a COCO ground-truth file (needs 'images', 'annotations' and 'categories' lists)")
    if not gt["categories"]:
        raise ValueError(f"{path}: no categories")
    for what in ("images", "categories"):
        for i, item in enumerate(gt[what]):
            if not isinstance(item, dict) or not _is_int(item.get("id")):
                raise ValueError(f"{path}: {what}[{i}] has no integer 'id'")
    for i, ann in enumerate(gt["annotations"]):
        if not isinstance(ann, dict) or not all(_is_int(ann.get(k)) for k in ("id", "image_id", "category_id")):
            raise ValueError(f"{path}: annotations[{i}] needs integer 'id', 'image_id' and 'category_id'")
        if not _finite_box(ann.get("bbox")) or not _finite_number(ann.get("area")):
            raise ValueError(f"{path}: annotations[{i}] needs a finite 4-number 'bbox' and a finite 'area'")
    return gt


def supercategory_members(categories: Iterable[dict]) -> dict[int, frozenset[int]]:
    """Category id -> ids of all categories sharing its supercategory (itself included).

    A category without a (non-empty) ``supercategory`` is its own supercategory, so its Sim curve equals Loc.
    """
    groups: dict[Any, set[int]] = {}
    key_of: dict[int, Any] = {}
    for cat in categories:
        sup = cat.get("supercategory")
        key = ("sup", sup) if isinstance(sup, str) and sup else ("self", cat["id"])
        key_of[cat["id"]] = key
        groups.setdefault(key, set()).add(cat["id"])
    return {cid: frozenset(groups[key]) for cid, key in key_of.items()}


def validate_detections(dets: Any, gt: dict, source: str | Path, score_thr: float | None = None) -> list[dict]:
    """Check a COCO results list against the ground truth; return slim detection dicts as ``loadRes`` builds them.

    Each returned item has ``id`` (1-based position, as pycocotools' ``loadRes``), ``image_id``, ``category_id``,
    ``bbox``, ``score``, ``area = w*h`` and ``iscrowd = 0``; items scoring below ``score_thr`` are dropped.
    Raises ``ValueError('<source>: ...')`` naming the first bad item.
    """
    if isinstance(dets, dict):
        if "annotations" in dets and "images" in dets:
            raise ValueError(f"{source}: this is a COCO ground-truth file, not a detections list")
        keys = ", ".join(sorted(map(str, dets))[:6])
        raise ValueError(
            f"{source}: a JSON object (keys: {keys}) -- this looks like a metrics/log file, not a detections list "
            "[{image_id, category_id, bbox, score}, ...]"
        )
    if not isinstance(dets, list):
        raise ValueError(f"{source}: expected a list of detections, got {type(dets).__name__}")
    if not dets:
        raise ValueError(f"{source}: contains no detections (empty list); nothing to analyse")
    img_ids = {img["id"] for img in gt["images"]}
    cat_ids = {cat["id"] for cat in gt["categories"]}
    out = []
    for i, d in enumerate(dets):
        if not isinstance(d, dict):
            raise ValueError(f"{source}: item {i} is a {type(d).__name__}, not a detection object")
        missing = [k for k in ("image_id", "category_id", "bbox", "score") if k not in d]
        if missing:
            keys = ", ".join(sorted(map(str, d))[:6])
            hint = (
                " -- this looks like a metrics/log file, not detections" if not ({"bbox", "image_id"} & set(d)) else ""
            )
            raise ValueError(f"{source}: item {i} lacks {', '.join(missing)} (has: {keys}){hint}")
        img, cat = d["image_id"], d["category_id"]
        if isinstance(img, str):
            raise ValueError(f"{source}: item {i} has string image_id {img!r}; COCO image ids are integers")
        if not _is_int(img) or img not in img_ids:
            raise ValueError(f"{source}: item {i} has image_id {img!r}, which is not in the ground truth")
        if not _is_int(cat) or cat not in cat_ids:
            raise ValueError(f"{source}: item {i} has category_id {cat!r}, which is not in the ground truth")
        if not _finite_box(d["bbox"]):
            raise ValueError(f"{source}: item {i} has bbox {d['bbox']!r}; need 4 finite numbers [x, y, w, h]")
        if d["bbox"][2] < 0 or d["bbox"][3] < 0:
            raise ValueError(f"{source}: item {i} has a negative width or height in bbox {d['bbox']!r}")
        if not _finite_number(d["score"]):
            raise ValueError(f"{source}: item {i} has score {d['score']!r}; need a finite number")
        if score_thr is not None and d["score"] < score_thr:
            continue
        box = list(d["bbox"])
        out.append(
            {
                "id": i + 1,
                "image_id": img,
                "category_id": cat,
                "bbox": box,
                "score": d["score"],
                "area": box[2] * box[3],
                "iscrowd": 0,
            }
        )
    return out


def load_detections(path: str | Path, gt: dict, score_thr: float | None = None) -> list[dict]:
    """Read and validate a COCO results JSON (see :func:`validate_detections`).

    A JSON-lines file of objects (a training log such as mmdetection's ``*.log.json``) is named as such.
    """
    try:
        data = read_json(path)
    except ValueError:
        first = _first_json_line(path)
        if isinstance(first, dict):
            keys = ", ".join(sorted(map(str, first))[:6])
            raise ValueError(
                f"{path}: JSON lines of objects (keys: {keys}) -- this looks like a metrics/log file, "
                "not a detections list"
            ) from None
        raise
    return validate_detections(data, gt, path, score_thr)


def _first_json_line(path: str | Path) -> Any:
    import json

    try:
        with open(path) as handle:
            return json.loads(handle.readline())
    except (OSError, ValueError):
        return None


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _finite_number(x: Any) -> bool:
    return isinstance(x, (int, float, np.number)) and not isinstance(x, bool) and math.isfinite(x)


def _finite_box(b: Any) -> bool:
    return isinstance(b, (list, tuple)) and len(b) == 4 and all(_finite_number(v) for v in b)


# ----------------------------------------------------------------------------------------------- evaluation


def coco_precision(
    gt_anns: list[dict],
    dt_anns: list[dict],
    img_ids: Sequence[int],
    cat_ids: Sequence[int],
    iou_thrs: Sequence[float],
    area_rng: list[list[float]],
    engine: str = "faster",
) -> np.ndarray:
    """COCOeval (bbox, ``maxDets=[100]``) precision array ``[T, 101, K, A]`` for the given annotations.

    ``engine`` is ``faster`` (faster-coco-eval's C++ evaluator) or ``pycocotools``; both give identical arrays on
    the cases used here (checked by the tests). Entries are -1 where a category has no ground truth.
    """
    dataset = {"images": [{"id": int(i)} for i in img_ids], "categories": [{"id": int(c)} for c in cat_ids]}
    if engine == "faster":
        from faster_coco_eval import COCO, COCOeval_faster

        make_eval = lambda g, d: COCOeval_faster(g, d, "bbox", print_function=_silent)
    elif engine == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        make_eval = lambda g, d: COCOeval(g, d, "bbox")
    else:
        raise ValueError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}")
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt, coco_dt = COCO(), COCO()
        coco_gt.dataset = dict(dataset, annotations=gt_anns)
        coco_dt.dataset = dict(dataset, annotations=dt_anns)
        coco_gt.createIndex()
        coco_dt.createIndex()
        ev = make_eval(coco_gt, coco_dt)
        p = ev.params
        p.imgIds, p.catIds = [int(i) for i in img_ids], [int(c) for c in cat_ids]
        p.iouThrs = np.asarray(iou_thrs, dtype=np.float64)
        p.maxDets = [MAX_DETS]
        p.areaRng = [list(map(float, r)) for r in area_rng]
        p.areaRngLbl = list(AREA_NAMES[: len(area_rng)])
        p.useCats = 1
        ev.evaluate()
        ev.accumulate()
    return np.asarray(ev.eval["precision"], dtype=np.float64)[..., 0]


def _silent(*_args: Any, **_kwargs: Any) -> None:
    return None


def _slim(ann: dict) -> dict:
    """The fields of a ground truth a bbox evaluation reads (drops segmentations: less memory per copy)."""
    return {
        "id": ann["id"],
        "image_id": ann["image_id"],
        "category_id": ann["category_id"],
        "bbox": ann["bbox"],
        "area": ann["area"],
        "iscrowd": int(bool(ann.get("iscrowd", 0))),
    }


def forgive(ann: dict, cat_id: int, semantics: str) -> dict:
    """A copy of ground truth ``ann`` relabelled to ``cat_id`` whose matches are forgiven.

    ``mmdet``: ``iscrowd = ignore = 1`` (crowd matching: IoU over the detection's area, unlimited matches).
    ``matlab``: ignored with ordinary IoU and one match; expressed as ``area = -1``, which lies outside every area
    range, because pycocotools recomputes ``ignore`` from ``iscrowd`` (an original crowd stays crowd).
    """
    if semantics == "mmdet":
        return dict(ann, category_id=cat_id, iscrowd=1, ignore=1)
    if semantics == "matlab":
        return dict(ann, category_id=cat_id, area=-1.0)
    raise ValueError(f"unknown semantics {semantics!r}; choose from {', '.join(SEMANTICS)}")


@dataclass
class _Index:
    """Ground truth and detections grouped for the per-category passes (original order kept within an image)."""

    img_ids: list[int]
    cat_ids: list[int]
    gt: list[dict]
    gt_by_img: dict[int, list[dict]]
    gt_by_cat: dict[int, list[dict]]
    dt_by_cat: dict[int, list[dict]]
    members: dict[int, frozenset[int]]


def _build_index(gt: dict, dets: list[dict]) -> _Index:
    slim = [_slim(a) for a in gt["annotations"]]
    gt_by_img: dict[int, list[dict]] = {}
    gt_by_cat: dict[int, list[dict]] = {}
    dt_by_cat: dict[int, list[dict]] = {}
    for a in slim:
        gt_by_img.setdefault(a["image_id"], []).append(a)
        gt_by_cat.setdefault(a["category_id"], []).append(a)
    for d in dets:
        dt_by_cat.setdefault(d["category_id"], []).append(d)
    return _Index(
        img_ids=sorted({img["id"] for img in gt["images"]}),
        cat_ids=sorted({cat["id"] for cat in gt["categories"]}),
        gt=slim,
        gt_by_img=gt_by_img,
        gt_by_cat=gt_by_cat,
        dt_by_cat=dt_by_cat,
        members=supercategory_members(gt["categories"]),
    )


def confusion_ground_truth(
    index: _Index, cat_id: int, det_images: set[int], confusable: frozenset[int] | None, semantics: str
) -> list[dict]:
    """Ground truth of the Sim/Oth pass for ``cat_id``: its own objects plus forgiven copies of other classes.

    ``confusable`` is the set of classes to forgive (``None`` = every class). Forgiven copies are only needed in
    images where ``cat_id`` has detections: elsewhere an ignored object changes nothing.
    """
    out = [a for a in index.gt_by_cat.get(cat_id, ()) if a["image_id"] not in det_images]
    for img in det_images:
        for a in index.gt_by_img.get(img, ()):
            if a["category_id"] == cat_id:
                out.append(a)
            elif confusable is None or a["category_id"] in confusable:
                out.append(forgive(a, cat_id, semantics))
    return out


def confusion_curves(
    index: _Index, cat_id: int, area_rng: list[list[float]], semantics: str = "mmdet", engine: str = "faster"
) -> np.ndarray:
    """Sim and Oth precision ``[2, 101, A]`` for one category (IoU 0.1, only its own detections)."""
    dets = index.dt_by_cat.get(cat_id, [])
    if not dets:  # no detections: precision is 0 (or -1 without ground truth, which becomes 0 anyway)
        return np.zeros((2, len(REC_THRS), len(area_rng)))
    det_images = {d["image_id"] for d in dets}
    img_ids = sorted(det_images | {a["image_id"] for a in index.gt_by_cat.get(cat_id, ())})
    out = []
    for confusable in (index.members[cat_id], None):
        gts = confusion_ground_truth(index, cat_id, det_images, confusable, semantics)
        out.append(coco_precision(gts, dets, img_ids, [cat_id], [CONFUSION_IOU], area_rng, engine)[0, :, 0, :])
    return np.stack(out)


def finish_bands(ps: np.ndarray) -> np.ndarray:
    """From ``[7, R, K, A]`` with rows C75..Oth filled: -1 -> 0, ``BG = (Oth > 0)``, ``FN = 1`` (a new array)."""
    ps = np.where(ps == -1, 0.0, ps)
    ps[5] = ps[4] > 0
    ps[6] = 1.0
    return ps


@dataclass
class ErrorCurves:
    """Result of :func:`error_curves`: ``precision[band, recall, category, area]`` with bands :data:`BANDS`."""

    precision: np.ndarray
    cat_ids: list[int]
    cat_names: list[str]
    area_names: tuple[str, ...] = AREA_NAMES
    rec_thrs: np.ndarray = field(default_factory=REC_THRS.copy)

    def overall(self) -> np.ndarray:
        """``[7, R, A]``: mean over all categories (categories without ground truth count as 0)."""
        return self.precision.mean(axis=2)

    def values(self) -> np.ndarray:
        """``[7, K, A]``: each curve's legend value, its mean precision over the 101 recall points."""
        return self.precision.mean(axis=1)

    def overall_values(self) -> np.ndarray:
        """``[7, A]``: legend values of the overall curves."""
        return self.precision.mean(axis=(1, 2))


_WORKER_STATE: dict[str, Any] = {}


def _worker_init(index: _Index, area_rng: list[list[float]], semantics: str, engine: str) -> None:
    _WORKER_STATE.update(index=index, area_rng=area_rng, semantics=semantics, engine=engine)


def _worker_run(cat_id: int) -> np.ndarray:
    s = _WORKER_STATE
    return confusion_curves(s["index"], cat_id, s["area_rng"], s["semantics"], s["engine"])


def error_curves(
    gt: dict,
    dets: list[dict],
    areas: Sequence[float] = DEFAULT_AREAS,
    semantics: str = "mmdet",
    engine: str = "faster",
    workers: int = 1,
    progress: bool | str = False,
) -> ErrorCurves:
    """All seven bands for every category of ``gt`` (see the module docstring for the algorithm).

    ``dets`` come from :func:`validate_detections`. ``workers > 1`` runs the per-category passes in that many
    processes (each holds a copy of the index); ``progress`` shows a tqdm bar (a string is used as its label).
    """
    if semantics not in SEMANTICS:
        raise ValueError(f"unknown semantics {semantics!r}; choose from {', '.join(SEMANTICS)}")
    area_rng = area_ranges(areas)
    index = _build_index(gt, dets)
    K, A, R = len(index.cat_ids), len(area_rng), len(REC_THRS)
    ps = np.zeros((len(BANDS), R, K, A))
    ps[:3] = coco_precision(index.gt, dets, index.img_ids, index.cat_ids, MAIN_IOUS, area_rng, engine)
    from tqdm import tqdm

    bar = tqdm(
        total=K,
        desc=progress if isinstance(progress, str) else "categories",
        unit="cat",
        disable=not progress,
        leave=False,
    )
    try:
        if workers > 1 and K > 1:
            with ProcessPoolExecutor(
                workers, initializer=_worker_init, initargs=(index, area_rng, semantics, engine)
            ) as pool:
                for k, res in enumerate(pool.map(_worker_run, index.cat_ids, chunksize=max(1, K // (4 * workers)))):
                    ps[3:5, :, k, :] = res
                    bar.update()
        else:
            for k, cat_id in enumerate(index.cat_ids):
                ps[3:5, :, k, :] = confusion_curves(index, cat_id, area_rng, semantics, engine)
                bar.update()
    finally:
        bar.close()
    names = {c["id"]: str(c.get("name", c["id"])) for c in gt["categories"]}
    return ErrorCurves(finish_bands(ps), index.cat_ids, [names[c] for c in index.cat_ids])
