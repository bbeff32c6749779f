"""``defeat analyze errors`` end to end, in-process: plots, comparison figures, tables, and one-line errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from defeat.cli.main import main
from tests.conftest import VAL100

DATA = VAL100  # the committed copy of the COCO val2014-100 pair (tests/fixtures)
GT_FILE = DATA / "instances_val2014_100.json"
RES_FILE = DATA / "instances_val2014_fakebbox100_results.json"
needs_data = pytest.mark.skipif(not GT_FILE.is_file(), reason="tests/fixtures/coco-val2014-100 missing")


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> Path:
    """A second model: the perturbed-GT results with every 4th detection dropped and lower scores."""
    res = json.loads(RES_FILE.read_text())
    out = [dict(d, score=d["score"] * (0.5 + (i % 7) / 14)) for i, d in enumerate(res) if i % 4]
    path = tmp_path_factory.mktemp("student") / "student.json"
    path.write_text(json.dumps(out))
    return path


@needs_data
def test_two_models_write_plots_figures_and_tables(tmp_path, student, capsys):
    out = tmp_path / "errors"
    rc = main(
        [
            "analyze",
            "errors",
            "--gt",
            str(GT_FILE),
            "--dets",
            f"baseline={RES_FILE}",
            f"student={student}",
            "--out",
            str(out),
            "--categories",
            "apple,62",
            "--formats",
            "png,pdf",
            "--workers",
            "2",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "baseline: C75=" in printed
    # the 100-image set has 10 categories without ground truth; 4 of them have no detection either
    assert (
        "skipped 4 empty categories (no ground truth, no detections): horse, keyboard, scissors, hair drier" in printed
    )
    for model in ("baseline", "student"):
        for name in ("apple", "chair", "overall"):
            for area in ("all", "small", "medium", "large"):
                for fmt in ("png", "pdf"):
                    assert (out / model / f"{name}-{area}.{fmt}").stat().st_size > 1000
        for area in ("all", "small", "medium", "large"):
            assert (out / model / f"grid-{area}.png").stat().st_size > 10000
        assert not (out / model / "spoon-all.png").exists()
        assert not (out / model / "horse-all.png").exists()
        with np.load(out / model / "curves.npz") as z:
            assert z["precision"].shape == (7, 101, 80, 4)
    for name in ("apple", "chair", "overall"):
        assert (out / "comparison" / f"{name}.png").is_file() and (out / "comparison" / f"{name}.pdf").is_file()
    assert {p.stem for p in (out / "comparison").iterdir()} == {"apple", "chair", "overall"}
    rows = list(csv.DictReader((out / "errors_table.csv").open()))
    assert len(rows) == 2 * 81 * 4
    overall = {r["model"]: r for r in rows if r["category"] == "overall" and r["area"] == "all"}
    assert float(overall["baseline"]["C50"]) > float(overall["student"]["C50"])
    deltas = json.loads((out / "errors_deltas.json").read_text())
    assert "categories without ground truth count as 0" in deltas["meta"]["note"]
    d = next(r for r in deltas["rows"] if r["category"] == "overall" and r["area"] == "all")
    assert (d["from"], d["to"]) == ("baseline", "student")
    assert d["d_band_BG"] == pytest.approx(
        (float(overall["student"]["BG"]) - float(overall["student"]["Oth"]))
        - (float(overall["baseline"]["BG"]) - float(overall["baseline"]["Oth"])),
        abs=1e-5,
    )
    assert (out / "errors_deltas.md").read_text().startswith("# COCO error analysis: deltas")
    index = (out / "index.md").read_text()
    assert "](baseline/grid-all.png)" in index and "](comparison/apple.pdf)" in index
    assert not list(out.rglob(".*.tmp*")) and not list(out.rglob(".*png"))


@needs_data
def test_formats_none_and_one_model_write_no_figure(tmp_path, capsys):
    out = tmp_path / "errors"
    rc = main(
        [
            "analyze",
            "errors",
            "--gt",
            str(GT_FILE),
            "--dets",
            f"baseline={RES_FILE}",
            "--out",
            str(out),
            "--formats",
            "none",
            "--per-category",
            "--quiet",
        ]
    )
    assert rc == 0 and capsys.readouterr().out == ""
    assert not [p for p in out.rglob("*") if p.suffix in (".png", ".pdf", ".svg")]
    assert not (out / "comparison").exists()
    assert (out / "errors_table.json").is_file() and (out / "index.md").is_file()
    run = json.loads((out / "run.json").read_text())
    assert run["empty_categories"] == ["horse", "keyboard", "scissors", "hair drier"] and run["formats"] == []


def write(tmp_path: Path, name: str, obj) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(obj))
    return str(path)


@needs_data
@pytest.mark.parametrize(
    "dets, message",
    [
        ({"bbox_mAP": 0.4}, "looks like a metrics/log file"),
        ([], "contains no detections"),
        ([{"image_id": "42", "category_id": 18, "bbox": [1, 2, 3, 4], "score": 0.5}], "string image_id '42'"),
        ([{"image_id": 7, "category_id": 18, "bbox": [1, 2, 3, 4], "score": 0.5}], "image_id 7, which is not in"),
    ],
)
def test_bad_results_exit_2_with_one_line(tmp_path, capsys, dets, message):
    path = write(tmp_path, "bad.json", dets)
    rc = main(["analyze", "errors", "--gt", str(GT_FILE), "--dets", f"m={path}", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and path in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


@needs_data
@pytest.mark.parametrize(
    "extra, message",
    [
        (["--dets", f"a={RES_FILE}", f"a={RES_FILE}"], "model name 'a' is given twice"),
        (["--dets", str(RES_FILE)], "expects NAME=RESULTS.json"),
        (["--dets", f"a={RES_FILE}", "--categories", "unicorn"], "'unicorn' is not a category"),
        (["--dets", f"a={RES_FILE}", "--areas", "96", "32", "1e10"], "--areas must be"),
        (["--dets", f"a={RES_FILE}", "--formats", "gif"], "--formats"),
    ],
)
def test_bad_arguments(tmp_path, capsys, extra, message):
    rc = main(["analyze", "errors", "--gt", str(GT_FILE), "--out", str(tmp_path / "o"), *extra])
    assert rc == 2 and message in capsys.readouterr().err


def test_analyze_group_lists_errors(capsys):
    with pytest.raises(SystemExit):
        main(["analyze", "--help"])
    assert "errors" in capsys.readouterr().out


def test_score_threshold_is_spelled_as_predict_spells_it_and_the_old_spelling_works():
    from defeat.cli.main import build_parser

    parser = build_parser()
    for flag in ("--score-thresh", "--score-thr"):
        args = parser.parse_args(
            ["analyze", "errors", "--gt", "gt.json", "--dets", "a=d.json", "--out", "x", flag, "0.3"]
        )
        assert args.score_thr == 0.3
