"""The COCO error analysis (PR curves by error type) of one or more models on the same ground truth."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from defeat.analysis.coco_errors import DEFAULT_AREAS
from defeat.analysis.error_report import write_error_analysis


def analyze_errors(
    gt: str | Path,
    dets: Mapping[str, str | Path],
    out: str | Path,
    *,
    categories: str | Sequence[str | int] | None = None,
    areas: Sequence[float] = DEFAULT_AREAS,
    semantics: str = "mmdet",
    engine: str = "faster",
    workers: int | None = None,
    score_thr: float | None = None,
    formats: str | Sequence[str] | None = ("png",),
    per_category: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:
    """C75, C50, Loc, Sim, Oth, BG and FN curves per model, category and area, as mmdetection's
    ``coco_error_analysis.py`` computes them, written to ``out``: ``index.md``, ``errors_table.{csv,json,md}``,
    per model the overall figure and a one-page grid of all categories per area, ``comparison/overall`` (two or
    more models), and per-category figures for ``categories`` (names or ids) or, with ``per_category``, every
    non-empty category. ``formats``: png, pdf, svg (empty: no figures at all). ``workers``: processes (default:
    the CPUs). Returns a summary (``files``, ``overall`` = {model: {band: value}}, ``empty_categories``,
    ``timings``). See :func:`defeat.analysis.error_report.write_error_analysis`.
    """
    return write_error_analysis(
        gt,
        dets,
        out,
        categories=categories,
        areas=areas,
        semantics=semantics,
        engine=engine,
        workers=workers,
        score_thr=score_thr,
        formats=formats,
        per_category=per_category,
        quiet=quiet,
    )
