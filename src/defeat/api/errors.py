"""The COCO error analysis (PR curves by error type) of one or more models on the same ground truth."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Mapping, Sequence

from defeat.utils import atomic_write_json


def analyze_errors(gt: str | Path, dets: Mapping[str, str | Path], out: str | Path, *,
                   categories: Sequence[str] | None = None, areas: Sequence[float] | None = None,
                   semantics: str = "mmdet", engine: str = "faster", workers: int = 1,
                   score_thr: float | None = None, formats: Sequence[str] = ("png", "pdf"),
                   progress: bool = True) -> dict:
    """C75, C50, Loc, Sim, Oth, BG and FN curves per model, category and area, as mmdetection's
    ``coco_error_analysis.py`` computes them, with per-model band plots, per-category comparison figures and
    tables (``errors_table.{csv,json,md}``).

    Args:
        gt: COCO ground-truth JSON.
        dets: ``{model name: COCO results JSON}``.
        categories: category names or ids to draw (default: all); the tables cover all.
        areas: upper area bounds of small, medium and all.
        semantics: ``mmdet`` (crowd ground truth forgiven, the script's) or ``matlab`` (cocoapi's analyze()).
        formats: band-plot formats (``png``, ``pdf``, ``svg``); empty for none.
    Returns:
        ``{model: overall values of the seven curves (all areas)}`` and the files' folder.
    """
    from defeat.analysis import coco_errors as ce
    from defeat.analysis import error_plots as ep

    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    areas = list(areas) if areas is not None else list(ce.DEFAULT_AREAS)
    area_rng = ce.area_ranges(areas)  # validates before any work
    ground_truth = ce.load_ground_truth(gt)
    names = select_categories(categories, ground_truth)
    loaded = {name: ce.load_detections(path, ground_truth, score_thr) for name, path in dets.items()}
    out = Path(out)
    results, timings = {}, {}
    for name, model_dets in loaded.items():
        t0 = time.perf_counter()
        results[name] = ce.error_curves(ground_truth, model_dets, areas, semantics, engine, workers,
                                        progress=f"{name}: categories" if progress else False)
        timings[name] = time.perf_counter() - t0
        ep.save_curves(results[name], out / name / "curves.npz")
    for name, res in results.items():
        if formats:
            ep.write_band_plots(res, name, out / name, names, list(formats), workers)
    comp_formats = list(formats) or ["png"]
    for cat in (names if names is not None else results[next(iter(results))].cat_names) + [None]:
        label = ep.OVERALL if cat is None else cat
        ep.write_comparison_figure(results, cat, out / "comparison" / ep.safe_name(label), comp_formats)
    meta = {"gt": str(gt), "dets": {n: str(p) for n, p in dets.items()}, "semantics": semantics,
            "engine": engine, "area_ranges": area_rng, "score_thr": score_thr,
            "note": "overall = mean over all categories; categories without ground truth count as 0"}
    ep.write_tables(results, out, meta)
    atomic_write_json(out / "run.json", dict(meta, seconds_per_model=timings))
    overall = {name: dict(zip(ce.BANDS, (float(v) for v in res.overall_values()[:, 0])))
               for name, res in results.items()}
    return {"overall": overall, "out": str(out)}


def select_categories(tokens: Sequence[str | int] | None, gt: dict) -> list[str] | None:
    """Category names or ids -> category names of the ground truth (in the order given); None means all."""
    if not tokens:
        return None
    by_name = {str(c.get("name", c["id"])): c for c in gt["categories"]}
    by_id = {str(c["id"]): c for c in gt["categories"]}
    names = []
    for token in (str(t).strip() for t in tokens):
        if not token:
            continue
        cat = by_name.get(token) or by_id.get(token)
        if cat is None:
            raise ValueError(f"--categories: {token!r} is not a category name or id of the ground truth")
        names.append(str(cat.get("name", cat["id"])))
    return list(dict.fromkeys(names)) or None
