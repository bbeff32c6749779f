"""The COCO error analysis of one or more models, end to end: :func:`write_error_analysis`.

It loads and checks the ground truth and every model's detections, computes the seven curves of every category
(:func:`defeat.analysis.coco_errors.error_curves`), and writes (``out/``)::

    index.md                         links to everything below; lists the categories skipped as empty
    errors_table.{csv,json,md}       every curve value and band width, per model x category x area (all categories)
    errors_deltas.{csv,json,md}      differences between models (two or more models)
    run.json                         inputs, settings, per-model overall values, timings, files written
    <model>/curves.npz               the raw arrays precision[7, 101, K, 4]
    <model>/overall-<area>.<fmt>     the mean over categories, one figure per area           (default)
    <model>/grid-<area>.<fmt>        every non-empty category as a small multiple, per area    (default)
    <model>/<category>-<area>.<fmt>  one figure per category and area                         (per_category)
    comparison/overall.<fmt>         rows = models, columns = areas                           (two or more models)
    comparison/<category>.<fmt>      the same per category                      (two or more models, per_category)

A category with no ground truth and no detection in any model is *empty*: it gets no figure and no grid cell
(its curves are all 0 except FN, and it still counts as 0 in ``overall`` and appears in the tables). Figures are
drawn in ``workers`` processes; ``formats=()`` draws nothing. Every file is written atomically.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from defeat.analysis import coco_errors as ce
from defeat.analysis import error_plots as ep
from defeat.utils import atomic_write_json, atomic_write_text

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def default_workers() -> int:
    """The CPUs this process may use (``os.sched_getaffinity`` where available, else ``os.cpu_count()``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def check_formats(formats: str | Iterable[str] | None) -> tuple[str, ...]:
    """Figure formats: a subset of png/pdf/svg (a comma-separated string works too); ``none``, ``()`` or None =
    no figures. ``ValueError`` on anything else."""
    if formats is None:
        return ()
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    fmts = [str(f).strip().lower() for f in items if str(f).strip()]
    if fmts == ["none"]:
        return ()
    bad = [f for f in fmts if f not in ep.FORMATS]
    if bad:
        raise ValueError(f"--formats: choose from {','.join(ep.FORMATS)} or none, got {','.join(fmts)!r}")
    return tuple(dict.fromkeys(fmts))


def check_model_names(names: Iterable[str]) -> list[str]:
    """Model names become folder names and figure rows: letters, digits, ``_``, ``-``, ``.``; at least one."""
    names = list(names)
    if not names:
        raise ValueError("--dets: give at least one NAME=RESULTS.json")
    for name in names:
        if not isinstance(name, str) or not _MODEL_NAME.match(name):
            raise ValueError(f"--dets: model name {name!r} may only use letters, digits, '_', '-' and '.'")
    return names


def select_categories(spec: str | Iterable[str | int] | None, gt: dict) -> list[int] | None:
    """Category names or ids (a list, or one comma-separated string) -> ids in the given order; None = none given."""
    if spec is None:
        return None
    tokens = spec.split(",") if isinstance(spec, str) else list(spec)
    by_name = {str(c.get("name", c["id"])): c["id"] for c in gt["categories"]}
    by_id = {str(c["id"]): c["id"] for c in gt["categories"]}
    ids = []
    for token in (str(t).strip() for t in tokens):
        if not token:
            continue
        cid = by_name.get(token, by_id.get(token))
        if cid is None:
            raise ValueError(f"--categories: {token!r} is not a category name or id of the ground truth")
        ids.append(cid)
    return list(dict.fromkeys(ids)) or None


def empty_categories(cat_ids: Sequence[int], gt: dict, dets: Iterable[list[dict]]) -> list[int]:
    """Ids of the categories with no ground truth and no detection in any of ``dets``."""
    used = {a["category_id"] for a in gt["annotations"]}
    for model_dets in dets:
        used.update(d["category_id"] for d in model_dets)
    return [c for c in cat_ids if c not in used]


def plan_figures(
    results: Mapping[str, ce.ErrorCurves],
    out: Path,
    shown: Sequence[int],
    per_category: Sequence[int],
    formats: Sequence[str],
    workers: int,
) -> list[ep.Job]:
    """The drawing jobs (see the module docstring for the files), the costliest first, per-category figures cut
    into one chunk per worker so that each worker reuses its figure across its categories."""
    if not formats:
        return []
    models = list(results)
    first = results[models[0]]
    rec, areas = first.rec_thrs, first.area_names
    col = {c: k for k, c in enumerate(first.cat_ids)}
    stems = dict(zip(first.cat_ids, ep.category_stems(first.cat_ids, first.cat_names)))
    label = dict(zip(first.cat_ids, first.cat_names))
    jobs: list[ep.Job] = []
    if shown:
        idx = [col[c] for c in shown]
        for model, res in results.items():
            sub = res.precision[:, :, idx, :]
            for a in range(len(areas)):
                jobs.append(
                    (ep.draw_grid, (model, rec, areas, [a], [label[c] for c in shown], sub, out / model, formats))
                )
    for model, res in results.items():
        items = [(ep.OVERALL, ep.OVERALL, res.overall())]
        items += [(label[c], stems[c], res.precision[:, :, col[c], :]) for c in per_category]
        for part in ep.chunks(items, workers):
            jobs.append((ep.draw_singles, (model, rec, areas, part, out / model, formats)))
    if len(models) > 1:
        both = lambda get: np.stack([get(results[m]) for m in models])
        items = [(ep.OVERALL, ep.OVERALL, both(lambda r: r.overall()))]
        items += [(label[c], stems[c], both(lambda r, k=col[c]: r.precision[:, :, k, :])) for c in per_category]
        for part in ep.chunks(items, workers):
            jobs.append((ep.draw_comparisons, (models, rec, areas, part, out / "comparison", formats)))
    return jobs


def index_markdown(summary: dict, out: Path) -> str:
    """``index.md``: what was run, the overall values, and a link to every file written."""
    rel = lambda p: Path(p).relative_to(out).as_posix()
    files = [Path(p) for p in summary["files"]]
    lines = [
        "# COCO error analysis",
        "",
        f"Ground truth `{summary['gt']}`; semantics `{summary['semantics']}`; "
        f"{summary['categories']} categories; areas {', '.join(summary['area_names'])}.",
        "",
        "Overall (all areas; mean over all categories, a category without ground truth counts as 0):",
        "",
        "| model | " + " | ".join(ce.BANDS) + " |",
        "|---|" + "---|" * len(ce.BANDS),
    ]
    for model, vals in summary["overall"].items():
        lines.append(f"| {model} | " + " | ".join(f"{vals[b]:.3f}" for b in ce.BANDS) + " |")
    lines += [
        "",
        "Tables: "
        + ", ".join(f"[{rel(p)}]({rel(p)})" for p in files if p.parent == out and p.name.startswith("errors_")),
        "",
    ]
    if summary["empty_categories"]:
        lines += [f"Skipped (no ground truth, no detections): {', '.join(summary['empty_categories'])}.", ""]
    figures = [p for p in files if p.suffix.lstrip(".") in ep.FORMATS]
    if not figures:
        lines += ["No figures (formats: none).", ""]
    groups: dict[str, list[Path]] = {}
    for p in figures:
        groups.setdefault(rel(p.parent), []).append(p)
    for folder, paths in groups.items():
        lines += [f"## {folder}", ""]
        for p in paths:
            if p.suffix == ".png" and (p.stem.startswith((ep.OVERALL, ep.GRID)) or folder == "comparison"):
                lines.append(f"![{rel(p)}]({rel(p)})")
            else:
                lines.append(f"- [{rel(p)}]({rel(p)})")
        lines.append("")
    return "\n".join(lines)


def write_error_analysis(
    gt: str | Path,
    dets: Mapping[str, str | Path],
    out: str | Path,
    *,
    categories: str | Sequence[str | int] | None = None,
    areas: Sequence[float] = ce.DEFAULT_AREAS,
    semantics: str = "mmdet",
    engine: str = "faster",
    workers: int | None = None,
    score_thr: float | None = None,
    formats: str | Sequence[str] | None = ("png",),
    per_category: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:
    """COCO error analysis of every model in ``dets`` (``{name: results.json}``) on ground truth ``gt``, into ``out``.

    ``categories``: names or ids that get their own figures (implies ``per_category`` for them); ``per_category``
    without ``categories``: every non-empty category. ``areas``: upper bounds of small, medium, all. ``semantics``:
    ``mmdet`` (mmdetection's script) or ``matlab``. ``engine``: ``faster`` or ``pycocotools``. ``workers``: processes
    for the per-category passes and the figures (default: the usable CPUs). ``score_thr``: drop detections scoring
    below it. ``formats``: figure formats (png, pdf, svg; empty = no figures). ``quiet``: no progress bars.

    Returns a summary: ``files`` (every path written), ``overall`` (``{model: {band: value}}``, all areas),
    ``empty_categories`` (names), ``skipped_line``, ``timings`` (seconds), and the settings. Raises a one-line
    ``ValueError`` naming the file or argument on bad input, before writing anything.
    """
    t0 = time.perf_counter()
    names = check_model_names(dets)
    fmts = check_formats(formats)
    workers = default_workers() if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    area_rng = ce.area_ranges(areas)  # validates before any work
    if semantics not in ce.SEMANTICS:
        raise ValueError(f"unknown semantics {semantics!r}; choose from {', '.join(ce.SEMANTICS)}")
    if engine not in ce.ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose from {', '.join(ce.ENGINES)}")
    gt_data = ce.load_ground_truth(gt)
    chosen = select_categories(categories, gt_data)
    model_dets = {name: ce.load_detections(dets[name], gt_data, score_thr) for name in names}
    out = Path(out)
    timings: dict[str, float] = {"load_s": time.perf_counter() - t0}

    results: dict[str, ce.ErrorCurves] = {}
    files: list[Path] = []
    for name in names:
        t1 = time.perf_counter()
        results[name] = ce.error_curves(
            gt_data,
            model_dets[name],
            areas,
            semantics,
            engine,
            workers,
            progress=False if quiet else f"{name}: categories",
        )
        timings[f"curves_{name}_s"] = time.perf_counter() - t1
    first = results[names[0]]
    empty = set(empty_categories(first.cat_ids, gt_data, model_dets.values()))
    del model_dets
    shown = [c for c in first.cat_ids if c not in empty]
    if chosen is not None:
        per_cat = [c for c in chosen if c not in empty]
    else:
        per_cat = shown if per_category else []

    t1 = time.perf_counter()
    files += ep.render(plan_figures(results, out, shown, per_cat, fmts, workers), workers)
    timings["figures_s"] = time.perf_counter() - t1

    names_of = dict(zip(first.cat_ids, first.cat_names))
    empty_names = [names_of[c] for c in first.cat_ids if c in empty]
    skipped_line = (
        f"skipped {len(empty_names)} empty categories (no ground truth, no detections): {', '.join(empty_names)}"
        if empty_names
        else ""
    )
    meta = {
        "gt": str(gt),
        "dets": {n: str(dets[n]) for n in names},
        "semantics": semantics,
        "engine": engine,
        "area_ranges": area_rng,
        "score_thr": score_thr,
        "note": "overall = mean over all categories; categories without ground truth count as 0",
    }
    for name, res in results.items():
        path = out / name / "curves.npz"
        ep.save_curves(res, path)
        files.append(path)
    tables = ep.write_tables(results, out, meta)
    files += [out / f"{stem}.{ext}" for stem in tables for ext in ("csv", "json", "md")]
    overall = {name: dict(zip(ce.BANDS, map(float, res.overall_values()[:, 0]))) for name, res in results.items()}
    files += [out / "run.json", out / "index.md"]
    summary: dict[str, Any] = {
        **meta,
        "out": str(out),
        "models": names,
        "categories": len(first.cat_ids),
        "area_names": list(first.area_names),
        "formats": list(fmts),
        "per_category": [names_of[c] for c in per_cat],
        "workers": workers,
        "empty_categories": empty_names,
        "skipped_line": skipped_line,
        "overall": overall,
        "files": [str(p) for p in files],
    }
    timings["total_s"] = time.perf_counter() - t0
    summary["timings"] = {k: round(v, 3) for k, v in timings.items()}
    atomic_write_text(out / "index.md", index_markdown(summary, out))
    atomic_write_json(out / "run.json", summary)
    return summary
