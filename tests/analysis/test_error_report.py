"""The error analysis end to end (:func:`write_error_analysis`) and its figures: which files, reuse, workers, index."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from defeat.analysis import error_plots as ep
from defeat.analysis.coco_errors import ErrorCurves
from defeat.analysis.error_report import check_formats, select_categories, write_error_analysis

CATS = [
    {"id": 1, "name": "apple", "supercategory": "fruit"},
    {"id": 2, "name": "orange", "supercategory": "fruit"},
    {"id": 3, "name": "car", "supercategory": "vehicle"},
    {"id": 4, "name": "bus", "supercategory": "vehicle"},
    {"id": 5, "name": "teddy bear", "supercategory": "toy"},
]
FIGURE_SUFFIXES = {".png", ".pdf", ".svg"}


def make_gt() -> dict:
    """4 images; apples, oranges and cars; 'bus' and 'teddy bear' have no ground truth."""
    boxes = [
        (1, 1, [10, 10, 100, 100]),
        (1, 2, [300, 10, 100, 100]),
        (2, 3, [10, 300, 200, 120]),
        (3, 1, [50, 50, 20, 20]),
        (4, 2, [400, 200, 150, 150]),
        (4, 3, [20, 20, 60, 40]),
    ]
    anns = [
        {"id": i + 1, "image_id": img, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
        for i, (img, c, b) in enumerate(boxes)
    ]
    return {
        "images": [{"id": i, "width": 640, "height": 480} for i in range(1, 5)],
        "categories": CATS,
        "annotations": anns,
    }


def make_dets(gt: dict, shift: float, teddy: bool = False) -> list[dict]:
    out = []
    for a in gt["annotations"]:
        x, y, w, h = a["bbox"]
        out.append(
            {
                "image_id": a["image_id"],
                "category_id": a["category_id"],
                "bbox": [x + shift, y, w, h],
                "score": 0.9 - 0.01 * a["id"],
            }
        )
        out.append(
            {
                "image_id": a["image_id"],
                "category_id": 2 if a["category_id"] == 1 else 1,
                "bbox": [x, y + shift, w, h],
                "score": 0.3,
            }
        )
    if teddy:  # a false positive of a class without ground truth: not empty
        out.append({"image_id": 1, "category_id": 5, "bbox": [500, 300, 40, 40], "score": 0.5})
    return out


@pytest.fixture()
def inputs(tmp_path) -> dict:
    gt = make_gt()
    paths = {"gt": tmp_path / "gt.json", "a": tmp_path / "a.json", "b": tmp_path / "b.json"}
    paths["gt"].write_text(json.dumps(gt))
    paths["a"].write_text(json.dumps(make_dets(gt, 2.0)))
    paths["b"].write_text(json.dumps(make_dets(gt, 30.0, teddy=True)))
    return paths


def figures(out: Path) -> set[str]:
    return {p.relative_to(out).as_posix() for p in out.rglob("*") if p.suffix in FIGURE_SUFFIXES}


def test_default_outputs_two_models(inputs, tmp_path):
    out = tmp_path / "out"
    s = write_error_analysis(inputs["gt"], {"a": inputs["a"], "b": inputs["b"]}, out, workers=1, quiet=True)
    areas = ("all", "small", "medium", "large")
    expected = {f"{m}/{kind}-{area}.png" for m in ("a", "b") for kind in ("overall", "grid") for area in areas}
    assert figures(out) == expected | {"comparison/overall.png"}
    for name in ("errors_table", "errors_deltas"):
        for ext in ("csv", "json", "md"):
            assert (out / f"{name}.{ext}").is_file()
    assert (out / "a" / "curves.npz").is_file() and (out / "index.md").is_file() and (out / "run.json").is_file()
    # bus: no ground truth, no detections in any model -> skipped and listed; teddy bear has a detection in b
    assert s["empty_categories"] == ["bus"]
    assert s["skipped_line"] == "skipped 1 empty categories (no ground truth, no detections): bus"
    assert "Skipped (no ground truth, no detections): bus." in (out / "index.md").read_text()
    assert sorted(str(p) for p in out.rglob("*") if p.is_file()) == sorted(s["files"])
    run = json.loads((out / "run.json").read_text())
    assert run["overall"]["a"]["FN"] == 1.0 and run["overall"]["a"]["C50"] > run["overall"]["b"]["C50"]
    assert not list(out.rglob(".*"))  # no temporary files left


def test_index_links_every_file_and_only_existing_ones(inputs, tmp_path):
    out = tmp_path / "out"
    s = write_error_analysis(
        inputs["gt"],
        {"a": inputs["a"], "b": inputs["b"]},
        out,
        workers=1,
        quiet=True,
        categories="apple",
        formats="png,pdf",
    )
    text = (out / "index.md").read_text()
    links = set(re.findall(r"\]\(([^)]+)\)", text))
    assert links and all((out / link).is_file() for link in links)
    linked_kinds = {p for p in map(Path, s["files"]) if p.suffix in FIGURE_SUFFIXES or p.name.startswith("errors_")}
    assert {p.relative_to(out).as_posix() for p in linked_kinds} <= links
    assert "![comparison/overall.png](comparison/overall.png)" in text


def test_formats_none_writes_no_figure(inputs, tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(ep.BandAxes, "update", lambda *a, **k: drawn.append(a))
    out = tmp_path / "out"
    s = write_error_analysis(
        inputs["gt"],
        {"a": inputs["a"], "b": inputs["b"]},
        out,
        formats="none",
        per_category=True,
        workers=1,
        quiet=True,
    )
    assert figures(out) == set() and not (out / "comparison").exists() and drawn == []
    assert (out / "errors_table.csv").is_file() and (out / "errors_deltas.csv").is_file()
    assert "No figures (formats: none)." in (out / "index.md").read_text()
    assert s["formats"] == []


def test_single_model_writes_no_comparison(inputs, tmp_path):
    out = tmp_path / "out"
    write_error_analysis(inputs["gt"], {"a": inputs["a"]}, out, per_category=True, workers=1, quiet=True)
    assert not (out / "comparison").exists()
    assert not (out / "errors_deltas.csv").exists()
    assert (out / "a" / "overall-all.png").is_file() and (out / "a" / "grid-all.png").is_file()


def test_per_category_flag_and_category_selection(inputs, tmp_path):
    models = {"a": inputs["a"], "b": inputs["b"]}
    every = write_error_analysis(inputs["gt"], models, tmp_path / "every", per_category=True, workers=1, quiet=True)
    got = figures(tmp_path / "every")
    for m in ("a", "b"):
        for stem in ("apple", "orange", "car", "teddy_bear"):
            for area in ("all", "small", "medium", "large"):
                assert f"{m}/{stem}-{area}.png" in got
        assert not any(f.startswith(f"{m}/bus-") for f in got)
    assert {f"comparison/{s}.png" for s in ("apple", "orange", "car", "teddy_bear", "overall")} == {
        f for f in got if f.startswith("comparison/")
    }
    assert every["per_category"] == ["apple", "orange", "car", "teddy bear"]
    # --categories (names or ids) gives figures of just those; without either flag, none
    chosen = write_error_analysis(
        inputs["gt"], models, tmp_path / "chosen", categories=["3", "apple"], workers=1, quiet=True
    )
    assert chosen["per_category"] == ["car", "apple"]
    got = figures(tmp_path / "chosen")
    assert "a/car-small.png" in got and "comparison/apple.png" in got and "a/orange-all.png" not in got
    write_error_analysis(inputs["gt"], models, tmp_path / "none", workers=1, quiet=True)
    assert not any(f.split("/")[-1].startswith(("apple", "car")) for f in figures(tmp_path / "none"))


def test_workers_give_the_same_files(inputs, tmp_path):
    models = {"a": inputs["a"], "b": inputs["b"]}
    write_error_analysis(inputs["gt"], models, tmp_path / "w1", per_category=True, workers=1, quiet=True)
    write_error_analysis(inputs["gt"], models, tmp_path / "w2", per_category=True, workers=2, quiet=True)
    one, two = figures(tmp_path / "w1"), figures(tmp_path / "w2")
    assert one == two and len(one) == 2 * 4 * (1 + 1 + 4) + 5
    for name in sorted(one):
        assert (tmp_path / "w1" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes(), name


def test_bad_arguments_raise_before_writing(inputs, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="--formats: choose from png,pdf,svg or none"):
        write_error_analysis(inputs["gt"], {"a": inputs["a"]}, out, formats=("png", "gif"))
    with pytest.raises(ValueError, match="--workers must be >= 1"):
        write_error_analysis(inputs["gt"], {"a": inputs["a"]}, out, workers=0)
    with pytest.raises(ValueError, match="model name 'a b'"):
        write_error_analysis(inputs["gt"], {"a b": inputs["a"]}, out)
    with pytest.raises(ValueError, match="'unicorn' is not a category"):
        write_error_analysis(inputs["gt"], {"a": inputs["a"]}, out, categories="apple,unicorn")
    with pytest.raises(ValueError, match=f"{re.escape(str(tmp_path / 'nope.json'))}: file not found"):
        write_error_analysis(inputs["gt"], {"a": tmp_path / "nope.json"}, out)
    assert not out.exists()
    assert check_formats("PNG, pdf") == ("png", "pdf") and check_formats(None) == () and check_formats([]) == ()
    assert select_categories(None, make_gt()) is None and select_categories(" , ", make_gt()) is None


# ------------------------------------------------------------------ figures


def curves(seed: int, k: int = 3) -> ErrorCurves:
    rng = np.random.default_rng(seed)
    ps = np.sort(rng.uniform(0, 1, (7, 101, k, 4)), axis=0)
    ps[6] = 1.0
    return ErrorCurves(ps, list(range(1, k + 1)), [f"c{i}" for i in range(1, k + 1)])


def test_reused_figure_draws_what_a_fresh_one_draws(tmp_path):
    """Category B drawn on the figure that just drew A is byte-identical to B drawn on a new figure."""
    a, b = curves(0), curves(1)
    args = lambda res, d: ("m", res.rec_thrs, res.area_names, [("c1", "c1", res.precision[:, :, 0])], d, ["png"])
    ep.close_pages()
    ep.draw_singles(*args(b, tmp_path / "fresh"))
    ep.close_pages()
    ep.draw_singles(*args(a, tmp_path / "reused"))
    ep.draw_singles(*args(b, tmp_path / "reused"))
    assert len(ep._PAGES) == 1  # one figure for both
    for area in ("all", "small", "medium", "large"):
        assert (tmp_path / "fresh" / f"c1-{area}.png").read_bytes() == (
            tmp_path / "reused" / f"c1-{area}.png"
        ).read_bytes()
    ep.close_pages()


def test_comparison_legends_do_not_cover_the_curves(tmp_path):
    res = curves(2)
    stacked = np.stack([res.overall(), res.overall() * 0.5])
    ep.close_pages()
    ep.draw_comparisons(
        ["m1", "m2"], res.rec_thrs, res.area_names, [("overall", "overall", stacked)], tmp_path, ["png"]
    )
    (page,) = ep._PAGES.values()
    renderer = page.fig.canvas.get_renderer()
    assert len(page.cells) == 8
    for cell in page.cells:
        box, legend = cell.ax.get_window_extent(renderer), cell.legend.get_window_extent(renderer)
        assert legend.x0 >= box.x1 and not box.overlaps(legend)
        assert page.fig.bbox.contains(legend.x1 - 1, legend.y0 + 1)  # inside the figure
        assert cell.legend.get_texts()[1].get_text().startswith("[") and cell.legend.get_texts()[1].get_text().endswith(
            "]C50"
        )
    ep.close_pages()


def test_category_stems_are_unique_and_never_reserved():
    stems = ep.category_stems([1, 2, 3, 4, 5], ["teddy bear", "teddy_bear", "overall", "grid", "cat"])
    assert stems == ["teddy_bear-id1", "teddy_bear-id2", "overall-id3", "grid-id4", "cat"]
    assert ep.chunks(list(range(5)), 2) == [[0, 1, 2], [3, 4]] and ep.chunks([1], 4) == [[1]] and ep.chunks([], 3) == []
    assert ep.grid_shape(80) == (8, 10) and ep.grid_shape(1) == (1, 1)


def grid_curves(k: int) -> ErrorCurves:
    """``k`` categories of smooth, decreasing curves (precision falls with recall)."""
    rng = np.random.default_rng(k)
    falls = np.linspace(1, 0, 101)[None, :, None, None] ** rng.uniform(0.3, 3, (7, 1, k, 4))
    ps = np.sort(falls * rng.uniform(0.2, 1, (7, 1, k, 4)), axis=0)
    ps[6] = 1.0
    return ErrorCurves(ps, list(range(1, k + 1)), [f"category {i}" for i in range(1, k + 1)])


def draw_one_grid(tmp_path: Path, k: int, model: str = "distill_r50_s") -> ep._GridPage:
    res = grid_curves(k)
    ep.draw_grid(model, res.rec_thrs, res.area_names, [0, 1], res.cat_names, res.precision, tmp_path, ["png"])
    (page,) = ep._PAGES.values()
    page.fig.canvas.draw()
    return page


@pytest.mark.parametrize("k", [1, 2, 5, 12, 40])
@pytest.mark.parametrize("model", ["m", "a_student_model_with_a_rather_long_name_" * 3])
def test_grid_title_and_legend_never_overlap(tmp_path, k, model):
    """The grid's title, its band legend and the cells (with their titles) never overlap or leave the page."""
    ep.close_pages()
    page = draw_one_grid(tmp_path, k, model)
    renderer = page.fig.canvas.get_renderer()
    title, legend = page.suptitle.get_window_extent(renderer), page.legend.get_window_extent(renderer)
    fig = page.fig.bbox
    assert not title.overlaps(legend) and title.y0 >= legend.y1
    for box in (title, legend):
        assert fig.x0 <= box.x0 and box.x1 <= fig.x1 and fig.y0 <= box.y0 and box.y1 <= fig.y1
    assert len(page.cells) == k and (tmp_path / "grid-all.png").is_file() and (tmp_path / "grid-small.png").is_file()
    for cell in page.cells:
        for box in (cell.ax.get_window_extent(renderer), cell.title.get_window_extent(renderer)):
            assert not box.overlaps(title) and not box.overlaps(legend) and box.y1 <= legend.y0
            assert fig.x0 <= box.x0 and box.x1 <= fig.x1 and fig.y0 <= box.y0 and box.y1 <= fig.y1
    squeezed = lambda s: "".join(s.split())  # the title is wrapped at spaces, or inside a word too long for a line
    assert squeezed(page.suptitle.get_text()).startswith(squeezed(f"{model}: every category, small"))
    ep.close_pages()


def test_grid_laid_out_again_draws_what_a_fresh_one_draws(tmp_path):
    """A grid page whose title needs more lines than the previous one's is laid out like a fresh page."""
    long = "a_student_model_with_a_rather_long_name_" * 3
    ep.close_pages()
    draw_one_grid(tmp_path / "fresh", 5, long)
    ep.close_pages()
    draw_one_grid(tmp_path / "reused", 5, "m")
    short_lines = ep._PAGES[next(iter(ep._PAGES))].title_lines
    page = draw_one_grid(tmp_path / "reused", 5, long)
    assert page.title_lines > short_lines
    for area in ("all", "small"):
        assert (tmp_path / "fresh" / f"grid-{area}.png").read_bytes() == (
            tmp_path / "reused" / f"grid-{area}.png"
        ).read_bytes()
    ep.close_pages()
