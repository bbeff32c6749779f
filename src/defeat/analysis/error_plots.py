"""Figures and tables of the COCO error analysis (:mod:`defeat.analysis.coco_errors`).

* :func:`write_band_plots` -- per model, per category (and ``overall``), per area: the stacked-band PR plot
  (Loc blue, Sim red, Oth green, BG purple, FN orange, C75/C50 white; legend ``[0.585]C75``), as in mmdetection.
* :func:`write_comparison_figure` -- one row per model, one column per area (the supplementary's Fig. 4-9 layout).
* :func:`write_tables` -- every curve's value per model x category x area and the deltas between models (CSV, JSON,
  Markdown). Besides the curve values (``C75`` ... ``FN``) each row has the band widths (``band_Loc = Loc - C50``,
  ..., ``band_BG = BG - Oth``, ``band_FN = FN - BG``): how much precision each error type costs.

Every file is written atomically (``defeat.utils``: temporary name in the same folder, then rename).
"""

from __future__ import annotations

import csv
import io
import re
from itertools import combinations
from pathlib import Path
from typing import Iterable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from defeat.analysis.coco_errors import BANDS, ErrorCurves  # noqa: E402
from defeat.analysis.plotting import save_figure  # noqa: E402
from defeat.utils import atomic_write_bytes, atomic_write_json, atomic_write_text  # noqa: E402

#: fill colours of the bands, in :data:`BANDS` order (mmdetection's / cocoapi's palette)
BAND_COLORS = ((1.0, 1.0, 1.0), (1.0, 1.0, 1.0), (0.31, 0.51, 0.74), (0.75, 0.31, 0.30), (0.36, 0.90, 0.38),
               (0.50, 0.39, 0.64), (1.0, 0.6, 0.0))
AREA_TITLES = {"all": "all areas", "small": "small", "medium": "medium", "large": "large"}
OVERALL = "overall"


def safe_name(name: str) -> str:
    """A file-name-safe form of a category or model name (``teddy bear`` -> ``teddy_bear``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "unnamed"


def draw_bands(ax: plt.Axes, rec: np.ndarray, curves: np.ndarray, title: str, legend: bool = True,
               fontsize: float = 8) -> None:
    """Stack the seven curves ``curves[7, R]`` on ``ax``: band ``b`` fills between curve ``b-1`` and curve ``b``."""
    values = curves.mean(axis=1)
    lower = np.zeros_like(rec)
    for b, name in enumerate(BANDS):
        ax.plot(rec, curves[b], color="black", linewidth=0.5)
        ax.fill_between(rec, lower, curves[b], color=BAND_COLORS[b], label=f"[{values[b]:.3f}]{name}")
        lower = curves[b]
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("recall", fontsize=fontsize)
    ax.set_ylabel("precision", fontsize=fontsize)
    ax.set_title(title, fontsize=fontsize + 1)
    ax.tick_params(labelsize=fontsize - 1)
    if legend:
        ax.legend(loc="lower left", fontsize=fontsize - 1, framealpha=0.85)


def curves_for(result: ErrorCurves, category: str | None) -> np.ndarray:
    """``[7, R, A]`` curves of one category name, or the overall mean when ``category`` is None."""
    if category is None:
        return result.overall()
    return result.precision[:, :, result.cat_names.index(category), :]


def _band_plots_of(result: ErrorCurves, model: str, out_dir: Path, name: str | None,
                   formats: Sequence[str]) -> list[Path]:
    curves = curves_for(result, name)
    label = OVERALL if name is None else name
    written = []
    for a, area in enumerate(result.area_names):
        fig, ax = plt.subplots(figsize=(5, 4))
        draw_bands(ax, result.rec_thrs, curves[:, :, a], f"{model}: {label} ({AREA_TITLES.get(area, area)})")
        fig.tight_layout()
        for fmt in formats:
            path = Path(out_dir) / f"{safe_name(label)}-{area}.{fmt}"
            save_figure(fig, path, close=False)
            written.append(path)
        plt.close(fig)
    return written


def write_band_plots(result: ErrorCurves, model: str, out_dir: Path, categories: Sequence[str] | None,
                     formats: Sequence[str] = ("png", "pdf"), workers: int = 1) -> list[Path]:
    """``out_dir/<category>-<area>.<fmt>`` for the selected categories (all when None) and ``overall``.

    About 0.15 s per category and area for PNG + PDF; ``workers > 1`` renders in that many processes.
    """
    names: list[str | None] = list(result.cat_names if categories is None else categories) + [None]
    if workers > 1 and len(names) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            futures = [pool.submit(_band_plots_of, result, model, out_dir, n, formats) for n in names]
            return [p for f in futures for p in f.result()]
    return [p for n in names for p in _band_plots_of(result, model, out_dir, n, formats)]


def write_comparison_figure(results: dict[str, ErrorCurves], category: str | None, path_stem: Path,
                            formats: Sequence[str] = ("png", "pdf"), dpi: int = 100) -> list[Path]:
    """One row per model, one column per area for ``category`` (None: overall); returns the files written."""
    models = list(results)
    areas = next(iter(results.values())).area_names
    label = OVERALL if category is None else category
    fig, axes = plt.subplots(len(models), len(areas), figsize=(3.2 * len(areas), 2.9 * len(models)), squeeze=False)
    for r, model in enumerate(models):
        curves = curves_for(results[model], category)
        for a, area in enumerate(areas):
            draw_bands(axes[r, a], results[model].rec_thrs, curves[:, :, a],
                       f"{model}: {label} ({AREA_TITLES.get(area, area)})", fontsize=7)
    fig.tight_layout()
    written = []
    for fmt in formats:
        path = Path(f"{path_stem}.{fmt}")
        save_figure(fig, path, dpi=dpi, close=False)
        written.append(path)
    plt.close(fig)
    return written


# ----------------------------------------------------------------------------------------------- tables

BAND_WIDTHS = tuple(f"band_{b}" for b in BANDS[1:])


def table_rows(results: dict[str, ErrorCurves]) -> list[dict]:
    """One row per model x category (``overall`` last) x area: curve values and band widths."""
    rows = []
    for model, res in results.items():
        per_cat = res.values()  # [7, K, A]
        blocks = [(name, per_cat[:, k, :]) for k, name in enumerate(res.cat_names)]
        blocks.append((OVERALL, res.overall_values()))
        for name, vals in blocks:
            for a, area in enumerate(res.area_names):
                row = {"model": model, "category": name, "area": area}
                row.update({b: float(vals[i, a]) for i, b in enumerate(BANDS)})
                row.update({w: float(vals[i + 1, a] - vals[i, a]) for i, w in enumerate(BAND_WIDTHS)})
                rows.append(row)
    return rows


def delta_rows(rows: list[dict], models: Sequence[str]) -> list[dict]:
    """For every pair of models (``from`` listed before ``to``): ``to - from`` of each curve value and band width."""
    keyed = {(r["model"], r["category"], r["area"]): r for r in rows}
    cols = BANDS + BAND_WIDTHS
    out = []
    for m0, m1 in combinations(models, 2):
        for r in rows:
            if r["model"] != m0:
                continue
            other = keyed[(m1, r["category"], r["area"])]
            d = {"from": m0, "to": m1, "category": r["category"], "area": r["area"]}
            d.update({f"d_{c}": other[c] - r[c] for c in cols})
            out.append(d)
    return out


def _csv(rows: list[dict]) -> str:
    if not rows:
        return ""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def _markdown(rows: list[dict], title: str) -> str:
    if not rows:
        return f"# {title}\n\n(no rows)\n"
    cols = list(rows[0])
    lines = [f"# {title}", "", "| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[c]:+.3f}" if isinstance(r[c], float) and c.startswith("d_")
                                       else f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c])
                                       for c in cols) + " |")
    return "\n".join(lines) + "\n"


def write_tables(results: dict[str, ErrorCurves], out_dir: Path, meta: dict | None = None) -> dict[str, Path]:
    """``errors_table.{csv,json,md}`` and (with two or more models) ``errors_deltas.{csv,json,md}``."""
    out_dir = Path(out_dir)
    rows = table_rows(results)
    written = {}
    tables: Iterable[tuple[str, list[dict], str]] = [("errors_table", rows, "COCO error analysis: curve values")]
    if len(results) > 1:
        tables = [*tables, ("errors_deltas", delta_rows(rows, list(results)), "COCO error analysis: deltas (to - from)")]
    for stem, table, title in tables:
        atomic_write_text(out_dir / f"{stem}.csv", _csv(table))
        atomic_write_json(out_dir / f"{stem}.json", {"meta": meta or {}, "rows": table})
        atomic_write_text(out_dir / f"{stem}.md", _markdown(table, title))
        written[stem] = out_dir / f"{stem}.csv"
    return written


def save_curves(result: ErrorCurves, path: Path) -> None:
    """The raw arrays (``precision[7, 101, K, A]``, ids, names, areas) as an ``.npz``, atomically."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, precision=result.precision, cat_ids=np.asarray(result.cat_ids),
                        cat_names=np.asarray(result.cat_names), area_names=np.asarray(result.area_names),
                        rec_thrs=result.rec_thrs, bands=np.asarray(BANDS))
    atomic_write_bytes(Path(path), buffer.getvalue())
