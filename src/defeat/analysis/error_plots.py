"""Figures and tables of the COCO error analysis (:mod:`defeat.analysis.coco_errors`).

Figures (matplotlib, Agg), each a stack of seven PR curves with the error bands between them (Loc blue, Sim red,
Oth green, BG purple, FN orange, C75/C50 white; legend ``[0.585]C75`` = the curve's mean precision), as in
mmdetection's ``coco_error_analysis.py``:

* :func:`draw_singles` -- one model, one category (or ``overall``), one area per file: ``<stem>-<area>.<fmt>``;
* :func:`draw_comparisons` -- one category, rows = models, columns = areas (the supplementary's Fig. 4-9 layout);
* :func:`draw_grid` -- one model, one area, every given category as a small multiple on one page.

A figure is built once per worker process and kind, then reused: later categories only update the curves, bands,
legend texts and titles (no new figure, axes or artists). :func:`render` runs a list of drawing jobs in worker
processes. Legends sit outside the axes, so they never cover a curve; the grid's title is wrapped to the page
width, above its legend, above the cells (laid out in inches, for any category count).

Tables: :func:`write_tables` -- every curve's value per model x category x area and the deltas between models (CSV,
JSON, Markdown). Besides the curve values (``C75`` ... ``FN``) each row has the band widths (``band_Loc = Loc - C50``,
..., ``band_BG = BG - Oth``, ``band_FN = FN - BG``): how much precision each error type costs.

Every file is written atomically (``defeat.utils``).
"""

from __future__ import annotations

import csv
import io
import math
import multiprocessing
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from itertools import combinations
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.collections import LineCollection, PolyCollection
from matplotlib.patches import Patch

from defeat.analysis.coco_errors import BANDS, ErrorCurves
from defeat.utils import atomic_write_bytes, atomic_write_json, atomic_write_text

#: fill colours of the bands, in :data:`BANDS` order (mmdetection's / cocoapi's palette)
BAND_COLORS = (
    (1.0, 1.0, 1.0),
    (1.0, 1.0, 1.0),
    (0.31, 0.51, 0.74),
    (0.75, 0.31, 0.30),
    (0.36, 0.90, 0.38),
    (0.50, 0.39, 0.64),
    (1.0, 0.6, 0.0),
)
AREA_TITLES = {"all": "all areas", "small": "small", "medium": "medium", "large": "large"}
OVERALL = "overall"
GRID = "grid"
FORMATS = ("png", "pdf", "svg")
DPI = 100


def safe_name(name: str) -> str:
    """A file-name-safe form of a category or model name (``teddy bear`` -> ``teddy_bear``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "unnamed"


def category_stems(cat_ids: Sequence[int], cat_names: Sequence[str]) -> list[str]:
    """File stems of the categories, aligned with ``cat_ids``: :func:`safe_name`, made unique.

    A stem that two categories share, or that equals ``overall`` / ``grid``, gets ``-id<category id>`` appended.
    """
    counts = Counter(safe_name(n) for n in cat_names)
    return [
        f"{s}-id{c}" if counts[s] > 1 or s in (OVERALL, GRID) else s
        for c, s in zip(cat_ids, (safe_name(n) for n in cat_names))
    ]


def curves_for(result: ErrorCurves, category: str | None) -> np.ndarray:
    """``[7, R, A]`` curves of one category name, or the overall mean when ``category`` is None."""
    if category is None:
        return result.overall()
    return result.precision[:, :, result.cat_names.index(category), :]


def grid_shape(n: int) -> tuple[int, int]:
    """Rows and columns of a near-square page of ``n`` small multiples (a little wider than tall)."""
    cols = max(1, min(n, math.ceil(math.sqrt(n * 1.25))))
    return max(1, math.ceil(n / cols)), cols


# ----------------------------------------------------------------------------------------------- figures


class BandAxes:
    """The seven curves and bands of one axes: two artists (a polygon collection for the bands, a line collection for
    the curves) made once, then updated in place by :meth:`update`."""

    def __init__(
        self, ax: plt.Axes, rec: np.ndarray, fontsize: float = 8, legend: bool = True, labels: bool = True
    ) -> None:
        self.ax, self.rec = ax, np.asarray(rec, dtype=float)
        self.bands = PolyCollection([], facecolors=BAND_COLORS, edgecolors="none", antialiaseds=True)
        self.curves = LineCollection([], colors="black", linewidths=0.5)
        ax.add_collection(self.bands)
        ax.add_collection(self.curves)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        if labels:
            ax.set_xlabel("recall", fontsize=fontsize)
            ax.set_ylabel("precision", fontsize=fontsize)
        ax.tick_params(labelsize=fontsize - 1)
        self.title = ax.set_title(" ", fontsize=fontsize + 1)
        self.legend = (
            ax.legend(
                band_handles(),
                [f"[0.000]{b}" for b in BANDS],
                loc="center left",
                bbox_to_anchor=(1.01, 0.5),
                fontsize=fontsize - 1,
                frameon=False,
                borderaxespad=0.2,
                handlelength=1.5,
            )
            if legend
            else None
        )

    def update(self, curves: np.ndarray, title: str) -> None:
        """Show ``curves[7, R]``: band ``b`` fills between curve ``b-1`` and curve ``b``; legend = mean precision."""
        self.bands.set_verts(band_polygons(self.rec, curves))
        self.curves.set_segments([np.column_stack([self.rec, c]) for c in curves])
        if self.legend is not None:
            for text, value, name in zip(self.legend.get_texts(), curves.mean(axis=1), BANDS):
                text.set_text(f"[{value:.3f}]{name}")
        self.title.set_text(title)


def band_polygons(rec: np.ndarray, curves: np.ndarray) -> list[np.ndarray]:
    """The seven band outlines: band ``b`` runs along curve ``b`` and back along curve ``b-1`` (0 for the first)."""
    lower = np.vstack([np.zeros_like(rec), curves[:-1]])
    return [
        np.column_stack([np.concatenate([rec, rec[::-1]]), np.concatenate([up, lo[::-1]])])
        for up, lo in zip(curves, lower)
    ]


def band_handles() -> list[Patch]:
    """Legend swatches of the bands (white ones outlined, so that C75 and C50 show)."""
    return [Patch(facecolor=c, edgecolor="0.6" if c == (1.0, 1.0, 1.0) else c, linewidth=0.5) for c in BAND_COLORS]


class _Page:
    """A figure of ``rows x cols`` :class:`BandAxes`, laid out once (on its first save) and reused."""

    def __init__(
        self,
        rows: int,
        cols: int,
        cell: tuple[float, float],
        rec: np.ndarray,
        fontsize: float,
        legend: bool,
        labels: bool,
        used: int | None = None,
    ) -> None:
        self.fig, axes = plt.subplots(rows, cols, figsize=(cell[0] * cols, cell[1] * rows), squeeze=False)
        used = rows * cols if used is None else used
        self.cells = []
        for i, ax in enumerate(axes.flat):
            if i >= used:
                ax.set_axis_off()
                continue
            self.cells.append(BandAxes(ax, rec, fontsize, legend, labels))
        self.laid_out = False

    def save(self, stem: Path, formats: Sequence[str], rect: tuple | None = None) -> list[Path]:
        if not self.laid_out:  # lay out once; no layout engine afterwards (it would draw every figure twice)
            self.fig.tight_layout(rect=rect)
            self.fig.set_layout_engine(None)
            self.laid_out = True
        return [save_bulk_figure(self.fig, Path(f"{stem}.{fmt}")) for fmt in formats]


def save_bulk_figure(fig: plt.Figure, path: Path) -> Path:
    """Render ``fig`` in the format of ``path``'s suffix and write it atomically without fsync: a figure is one of
    many bulk files, made durable as a set by the run's final ``index.md`` / ``run.json`` (written with fsync).
    PNGs use zlib level 1: a tenth faster to write for files about a tenth larger."""
    fmt = path.suffix.lstrip(".")
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=DPI, **({"pil_kwargs": {"compress_level": 1}} if fmt == "png" else {}))
    atomic_write_bytes(path, buffer.getvalue(), fsync=False)
    return path


#: figures of this worker process, by kind and shape (a worker draws many categories on the same figure)
_PAGES: dict[tuple, Any] = {}


def _page(key: tuple, make: Callable[[], Any]) -> Any:
    if key not in _PAGES:
        _PAGES[key] = make()
    return _PAGES[key]


def area_title(area: str) -> str:
    return AREA_TITLES.get(area, area)


def draw_singles(
    model: str,
    rec: np.ndarray,
    area_names: Sequence[str],
    items: Sequence[tuple[str, str, np.ndarray]],
    out_dir: str | Path,
    formats: Sequence[str],
) -> list[Path]:
    """``out_dir/<stem>-<area>.<fmt>`` for each ``(label, stem, curves[7, R, A])`` of ``items``, one figure reused."""
    page = _page(("single", len(rec)), lambda: _Page(1, 1, (6.2, 4.0), rec, 8, True, True))
    cell = page.cells[0]
    written = []
    for label, stem, curves in items:
        for a, area in enumerate(area_names):
            cell.update(curves[:, :, a], f"{model}: {label} ({area_title(area)})")
            written += page.save(Path(out_dir) / f"{stem}-{area}", formats)
    return written


def draw_comparisons(
    models: Sequence[str],
    rec: np.ndarray,
    area_names: Sequence[str],
    items: Sequence[tuple[str, str, np.ndarray]],
    out_dir: str | Path,
    formats: Sequence[str],
) -> list[Path]:
    """``out_dir/<stem>.<fmt>`` per ``(label, stem, curves[M, 7, R, A])``: rows = models, columns = areas."""
    M, A = len(models), len(area_names)
    page = _page(("comparison", M, A, len(rec)), lambda: _Page(M, A, (4.3, 2.9), rec, 7, True, True))
    written = []
    for label, stem, curves in items:
        for r, model in enumerate(models):
            for a, area in enumerate(area_names):
                page.cells[r * A + a].update(curves[r, :, :, a], f"{model}: {label} ({area_title(area)})")
        written += page.save(Path(out_dir) / stem, formats)
    return written


def draw_grid(
    model: str,
    rec: np.ndarray,
    area_names: Sequence[str],
    areas: Sequence[int],
    labels: Sequence[str],
    curves: np.ndarray,
    out_dir: str | Path,
    formats: Sequence[str],
) -> list[Path]:
    """``out_dir/grid-<area>.<fmt>`` for each area index in ``areas``: every category of ``curves[7, R, K, A]``
    (titled by ``labels``, with its C50 value) as a small multiple on one page, one band legend for the page."""
    K = len(labels)
    rows, cols = grid_shape(K)
    page = _page(("grid", K, len(rec)), lambda: _GridPage(rows, cols, K, rec))
    c50 = curves[1].mean(axis=0)  # [K, A]
    written = []
    for a in areas:
        for k, cell in enumerate(page.cells):
            cell.update(curves[:, :, k, a], f"{labels[k]} ({c50[k, a]:.2f})")
        page.set_title(
            f"{model}: every category, {area_title(area_names[a])}",
            "each cell: recall 0-1 across, precision 0-1 up; title: category (C50); every value in errors_table.md",
        )
        written += page.save(Path(out_dir) / f"{GRID}-{area_names[a]}", formats)
    return written


#: the grid page, in inches: a small multiple's cell (its axes and title), the least page width (room for the band
#: legend on one row), the page's margin, the gap between header parts, and a cell's axes inset (left, right, top,
#: bottom; the top one holds the cell's title)
GRID_CELL = (1.7, 1.45)
GRID_MIN_WIDTH = 4.8
GRID_MARGIN = 0.08
GRID_GAP = 0.06
GRID_INSET = (0.08, 0.08, 0.24, 0.05)


class _GridPage(_Page):
    """The grid: a header (the title, wrapped to the page width, then the band legend below it) above ``rows x cols``
    small multiples. Laid out by hand in inches, so that header and cells never overlap whatever the category count;
    the layout depends only on the count and on the title's number of lines (redone when that changes)."""

    def __init__(self, rows: int, cols: int, used: int, rec: np.ndarray) -> None:
        scale = max(1.0, GRID_MIN_WIDTH / (cols * GRID_CELL[0]))  # few categories: larger cells, not a tiny page
        self.rows, self.cols, self.cell = rows, cols, (GRID_CELL[0] * scale, GRID_CELL[1] * scale)
        super().__init__(rows, cols, self.cell, rec, 5, False, False, used=used)
        self.fig.set_layout_engine(None)
        for cell in self.cells:  # axes 0..1 x 0..1 without ticks: a frame per cell is enough at this size
            cell.ax.set_xticks([])
            cell.ax.set_yticks([])
            cell.title.set_fontsize(6)
        self.width = cols * self.cell[0] + 2 * GRID_MARGIN
        self.fig.set_size_inches(self.width, rows * self.cell[1] + 2 * GRID_MARGIN)
        self.renderer = self.fig.canvas.get_renderer()
        self.suptitle = self.fig.text(GRID_MARGIN / self.width, 1, " ", ha="left", va="top", fontsize=9)
        self.legend = self._band_legend()
        self.title_lines = 0
        self.laid_out = True  # by set_title, never by a layout engine

    def _inches(self, artist: Any) -> tuple[float, float]:
        box = artist.get_window_extent(self.renderer)
        return box.width / self.fig.dpi, box.height / self.fig.dpi

    def _band_legend(self) -> Any:
        """The page's band legend, on as few rows as the page width allows."""
        for ncol in range(len(BANDS), 0, -1):
            legend = self.fig.legend(
                band_handles(), BANDS, loc="upper left", ncol=ncol, fontsize=7, frameon=False, borderaxespad=0
            )
            if ncol == 1 or self._inches(legend)[0] <= self.width - 2 * GRID_MARGIN:
                return legend
            legend.remove()
        raise AssertionError("unreachable")

    def wrap(self, text: str) -> list[str]:
        """``text`` cut into lines (at spaces, inside a word only when the word alone is too wide) that fit the page
        width in the title's font."""
        prop = self.suptitle.get_fontproperties()
        room = (self.width - 2 * GRID_MARGIN) * self.fig.dpi * 0.97  # a little slack for other backends' metrics
        fits = lambda s: self.renderer.get_text_width_height_descent(s, prop, ismath=False)[0] <= room
        lines: list[str] = []
        for word in text.split():
            if lines and fits(f"{lines[-1]} {word}"):
                lines[-1] = f"{lines[-1]} {word}"
                continue
            lines.append("")
            for ch in word:
                if lines[-1] and not fits(lines[-1] + ch):
                    lines.append("")
                lines[-1] += ch
        return lines or [" "]

    def set_title(self, *paragraphs: str) -> None:
        """Show the title (each paragraph on its own line(s)), laying the page out again when its line count changed."""
        lines = [line for p in paragraphs for line in self.wrap(p)]
        if len(lines) != self.title_lines:
            self._layout(len(lines))
        self.suptitle.set_text("\n".join(lines))

    def _layout(self, title_lines: int) -> None:
        """Figure height and every position, from the title's line count (measured on a stand-in of that many lines
        of tall and deep glyphs, so that the layout never depends on the text)."""
        self.suptitle.set_text("\n".join(["ÅÉ|()[]{}bdgjpqy_"] * title_lines))  # the tallest ascents and descents
        title_h, legend_h = self._inches(self.suptitle)[1], self._inches(self.legend)[1]
        header = GRID_MARGIN + title_h + GRID_GAP + legend_h + GRID_GAP
        (cw, ch), (left, right, top, bottom) = self.cell, GRID_INSET
        W, H = self.width, header + self.rows * ch + GRID_MARGIN
        self.fig.set_size_inches(W, H)
        self.suptitle.set_position((GRID_MARGIN / W, 1 - GRID_MARGIN / H))
        self.legend.set_bbox_to_anchor(
            (GRID_MARGIN / W, 1 - (GRID_MARGIN + title_h + GRID_GAP) / H), self.fig.transFigure
        )
        for i, ax in enumerate(self.fig.axes[: self.rows * self.cols]):
            r, c = divmod(i, self.cols)
            x0, y1 = GRID_MARGIN + c * cw, H - header - r * ch  # the cell's upper left corner
            ax.set_position([(x0 + left) / W, (y1 - ch + bottom) / H, (cw - left - right) / W, (ch - top - bottom) / H])
        self.title_lines = title_lines


# ----------------------------------------------------------------------------------------------- running jobs

#: a drawing job: one of the draw_* functions and its positional arguments; returns the files it wrote
Job = tuple[Callable[..., list[Path]], tuple]


def chunks(items: Sequence, n: int) -> list[list]:
    """``items`` cut into at most ``n`` contiguous, nearly equal, non-empty pieces."""
    n = max(1, min(n, len(items)))
    size, extra = divmod(len(items), n)
    out, start = [], 0
    for i in range(n):
        end = start + size + (i < extra)
        out.append(list(items[start:end]))
        start = end
    return [c for c in out if c]


def _run_job(job: Job) -> list[Path]:
    func, args = job
    return func(*args)


def render(jobs: Sequence[Job], workers: int = 1) -> list[Path]:
    """Run drawing jobs, in ``workers`` processes when more than one (forkserver: small, clean workers that have
    imported matplotlib once); returns every file written, in job order."""
    if workers <= 1 or len(jobs) <= 1:
        try:
            return [p for job in jobs for p in _run_job(job)]
        finally:
            close_pages()
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    if ctx.get_start_method() == "forkserver":
        ctx.set_forkserver_preload(["defeat.analysis.error_plots"])
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=ctx) as pool:
        return [p for paths in pool.map(_run_job, jobs) for p in paths]


def close_pages() -> None:
    """Close this process's reusable figures."""
    for page in _PAGES.values():
        plt.close(page.fig)
    _PAGES.clear()


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
        lines.append(
            "| "
            + " | ".join(
                f"{r[c]:+.3f}"
                if isinstance(r[c], float) and c.startswith("d_")
                else f"{r[c]:.3f}"
                if isinstance(r[c], float)
                else str(r[c])
                for c in cols
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


def write_tables(results: dict[str, ErrorCurves], out_dir: Path, meta: dict | None = None) -> dict[str, Path]:
    """``errors_table.{csv,json,md}`` and (with two or more models) ``errors_deltas.{csv,json,md}``."""
    out_dir = Path(out_dir)
    rows = table_rows(results)
    written = {}
    tables: Iterable[tuple[str, list[dict], str]] = [("errors_table", rows, "COCO error analysis: curve values")]
    if len(results) > 1:
        tables = [
            *tables,
            ("errors_deltas", delta_rows(rows, list(results)), "COCO error analysis: deltas (to - from)"),
        ]
    for stem, table, title in tables:
        atomic_write_text(out_dir / f"{stem}.csv", _csv(table))
        atomic_write_json(out_dir / f"{stem}.json", {"meta": meta or {}, "rows": table})
        atomic_write_text(out_dir / f"{stem}.md", _markdown(table, title))
        written[stem] = out_dir / f"{stem}.csv"
    return written


def save_curves(result: ErrorCurves, path: Path) -> None:
    """The raw arrays (``precision[7, 101, K, A]``, ids, names, areas) as an ``.npz``, atomically."""
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        precision=result.precision,
        cat_ids=np.asarray(result.cat_ids),
        cat_names=np.asarray(result.cat_names),
        area_names=np.asarray(result.area_names),
        rec_thrs=result.rec_thrs,
        bands=np.asarray(BANDS),
    )
    atomic_write_bytes(Path(path), buffer.getvalue())
