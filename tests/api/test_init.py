"""``defeat init`` / ``api.init_config``: configs that ``defeat train`` accepts, statistics, bad input."""

from __future__ import annotations

import json
import shutil

import pytest

from defeat import api
from defeat.cli.main import main
from defeat.engine import build_for_dataset, load_datasets
from tests.conftest import REPO, VAL100, write_tiny_coco


def _accepts(path, overrides=()):
    """What ``defeat train`` does with a config first: load it, read the data, build the model."""
    cfg = api.load_config(path, list(overrides))
    train_set, _ = load_datasets(cfg)
    build_for_dataset(cfg.model, train_set.categories, cfg.seed)
    return cfg


@pytest.mark.slow
def test_init_on_the_tiny_data_writes_configs_that_train_accepts(tiny_coco, tmp_path, capsys):
    root = tiny_coco["root"]
    out = tmp_path / "cfg" / "tiny.yaml"
    assert (
        main(
            [
                "init",
                "--annotations",
                str(tiny_coco["train_ann"]),
                "--images",
                str(root / "train" / "images"),
                "--val-annotations",
                str(tiny_coco["val_ann"]),
                "--val-images",
                str(root / "val" / "images"),
                "--out",
                str(out),
                "--family",
                "faster_rcnn",
                "--figure",
                str(tmp_path / "stats.png"),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "train: 8 images (2 without boxes)" in printed and "val: 4 images" in printed
    assert "anchor coverage" in printed and "COCO split" in printed
    paths = [out, tmp_path / "cfg" / "tiny_teacher.yaml", tmp_path / "cfg" / "tiny_distill.yaml"]
    assert all(p.is_file() for p in paths) and (tmp_path / "stats.png").stat().st_size > 10_000
    assert "# Config for" in out.read_text() and "anchor_sizes:" in out.read_text()
    student, teacher, distill = (_accepts(p) for p in paths)
    assert (student.model.min_size, student.model.max_size) == (64, 64)  # the images are 64 x 64
    assert student.model.name == distill.model.name == "faster_rcnn_r18_fpn"
    assert teacher.model.name == "faster_rcnn_r50_fpn" and teacher.schedule.max_steps == 3 * student.schedule.max_steps
    assert teacher.model.anchor_sizes == student.model.anchor_sizes  # the head term compares anchor by anchor
    assert distill.distill.teacher_checkpoint.endswith("tiny_teacher/model_final.pt")
    assert distill.distill.baseline_checkpoint.endswith("tiny/model_final.pt")
    # the defaults the project's measurements support, each comment naming its record (which exists)
    assert (distill.distill.weights, distill.distill.proposal_mode) == ("fixed", "none")
    text = paths[2].read_text()
    for record in ("benchmarks/results/reproduce_full/results.json", "benchmarks/results/alpha_auto.json"):
        assert record in text and (REPO / record).is_file(), record
    assert "reproduce_full_r34" in text and (REPO / "benchmarks/results/reproduce_full_r34/results.json").is_file()
    # and it trains: two steps of the written config
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                str(out),
                "--set",
                "schedule.max_steps=2",
                "--set",
                f"output.dir={run}",
                "--set",
                "data.workers=0",
                "--set",
                "model.rpn_post_nms_top_n_train=50",
            ]
        )
        == 0
    )
    assert (run / "model_final.pt").is_file()


def test_init_on_one_class_with_empty_images(tmp_path):
    ann = write_tiny_coco(tmp_path / "data", 9, seed=4, empty_every=2)
    data = json.loads(ann.read_text())
    data["categories"] = [{"id": 1, "name": "thing", "supercategory": "thing"}]
    for a in data["annotations"]:
        a["category_id"] = 1
    ann.write_text(json.dumps(data))
    result = api.init_config(ann, tmp_path / "data" / "images", tmp_path / "one.yaml")
    stats = result.report.train
    assert (stats.images, stats.empty_images, list(stats.boxes_per_class)) == (9, 5, ["thing"])
    assert list(result.configs) == ["train"] and result.written
    cfg = _accepts(tmp_path / "one.yaml")
    assert cfg.data.val_annotations == cfg.data.train_annotations  # no val split: evaluated on the train images
    assert "evaluates on the TRAIN images" in (tmp_path / "one.yaml").read_text()
    assert (
        cfg.model.anchor_sizes == result.report.anchors.sizes
        and result.report.anchors.coverage >= result.report.anchors.given_coverage
    )


def test_init_on_real_coco_boxes_dry_run_writes_nothing(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    data = json.loads((VAL100 / "instances_val2014_100.json").read_text())
    for img in data["images"]:  # init reads the sizes from the JSON: the files need only exist
        (images / img["file_name"]).touch()
    result = api.init_config(
        VAL100 / "instances_val2014_100.json", images, tmp_path / "x.yaml", family="retinanet", dry_run=True
    )
    assert not result.written and sorted(p.name for p in tmp_path.iterdir()) == ["images"]
    assert result.report.train.boxes == 830 and result.report.train.images == 100  # 839 minus 9 crowd
    assert set(result.texts) == {"train", "teacher", "distill"}
    assert result.report.anchors.coverage > result.report.anchors.given_coverage
    assert "retinanet_r50_fpn" in result.texts["teacher"]


def test_bad_input_is_one_line_and_writes_nothing(tiny_coco, tmp_path, capsys):
    images = tmp_path / "images"
    shutil.copytree(tiny_coco["root"] / "train" / "images", images)
    (images / "0003.png").unlink()
    out = tmp_path / "out" / "c.yaml"
    assert (
        main(
            [
                "init",
                "--annotations",
                str(tiny_coco["train_ann"]),
                "--images",
                str(images),
                "--out",
                str(out),
                "--family",
                "fcos",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "0003.png not found" in err and "image 4" in err
    assert not (tmp_path / "out").exists()
    no_boxes = tmp_path / "empty.json"
    no_boxes.write_text(json.dumps({**json.loads(tiny_coco["train_ann"].read_text()), "annotations": []}))
    assert (
        main(
            [
                "init",
                "--annotations",
                str(no_boxes),
                "--images",
                str(tiny_coco["root"] / "train" / "images"),
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert "no (non-crowd) boxes" in capsys.readouterr().err and not (tmp_path / "out").exists()
    out.parent.mkdir()
    out.write_text("keep")
    assert (
        main(
            [
                "init",
                "--annotations",
                str(tiny_coco["train_ann"]),
                "--images",
                str(tiny_coco["root"] / "train" / "images"),
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert "exists" in capsys.readouterr().err and out.read_text() == "keep"


def test_data_stats_writes_the_figure_and_json(tiny_coco, tmp_path, capsys):
    assert (
        main(
            [
                "data",
                "stats",
                "--annotations",
                str(tiny_coco["train_ann"]),
                "--images",
                str(tiny_coco["root"] / "train" / "images"),
                "--figure",
                str(tmp_path / "s.png"),
                "--json",
                str(tmp_path / "s.json"),
            ]
        )
        == 0
    )
    assert "anchor coverage" in capsys.readouterr().out and (tmp_path / "s.png").is_file()
    record = json.loads((tmp_path / "s.json").read_text())
    assert record["train"]["boxes"] == sum(record["train"]["boxes_per_class"].values())
    assert 0 <= record["anchors"]["given_coverage"] <= record["anchors"]["coverage"] <= 1


@pytest.fixture(scope="module")
def mobilenet_config(tiny_coco, tmp_path_factory):
    root = tiny_coco["root"]
    out = tmp_path_factory.mktemp("mobile") / "mobile.yaml"
    api.init_config(tiny_coco["train_ann"], root / "train" / "images", out, model="fasterrcnn_mobilenet_v3_large_fpn")
    return out


def test_init_fits_the_anchor_layout_of_a_mobilenet(mobilenet_config):
    """MobileNetV3-FPN shares five anchor sizes across its three levels: init fits that layout."""
    student = _accepts(mobilenet_config)  # loads, reads the data and builds the model
    sizes = student.model.anchor_sizes
    assert len(sizes) == 3 and all(isinstance(s, list) and len(s) == 5 and s == sizes[0] for s in sizes)
    assert sizes[0] == sorted(sizes[0]) and sizes[0][0] >= 32  # every size >= its finest stride (32)


@pytest.mark.slow  # a full-size MobileNetV3-FPN: ~230 MB of checkpoints
def test_a_mobilenet_config_from_init_trains(mobilenet_config, tmp_path):
    overrides = [
        f"output.dir={tmp_path / 'run'}",
        "schedule.max_steps=2",
        "schedule.warmup_steps=1",
        "data.workers=0",
        "data.batch_size=2",
        "output.checkpoint_every=0",
        "eval.batch_size=2",
    ]
    assert main(["train", str(mobilenet_config), *[a for o in overrides for a in ("--set", o)]]) == 0
    assert (tmp_path / "run" / "model_final.pt").is_file()


def test_the_evidence_comments_quote_their_records():
    """The numbers init writes next to its KD defaults are those of the results they cite (re-recording a run
    without updating the comment fails here)."""
    root = REPO / "benchmarks" / "results"

    def row(name: str, model: str) -> str:
        table = {r["model"]: r for r in json.loads((root / name / "results.json").read_text())["table"]}
        ap, sd = 100 * table[model]["AP"], table[model]["AP_std"]
        return f"{ap:.1f}" if sd is None else f"{ap:.1f} +- {100 * sd:.1f}"

    from defeat.api.init import PROPOSAL_EVIDENCE, WEIGHTS_EVIDENCE

    regime = f"proposals {row('reproduce_full', 'defeat')} AP (1 seed) vs {row('reproduce_full', 'decoupled')} without"
    earlier = f"{row('reproduce_full_r34', 'defeat')} vs {row('reproduce_full_r34', 'decoupled')} in the earlier run"
    assert regime in PROPOSAL_EVIDENCE and earlier in PROPOSAL_EVIDENCE
    r34 = json.loads((root / "reproduce_full_r34" / "results.json").read_text())
    auto = {s["name"]: s for s in r34["sensitivity"]}["weights_auto"]["AP"]
    fixed_s0 = next(s["AP"] for s in r34["students"]["decoupled"] if s["seed"] == 0)
    assert f"auto gave {100 * auto:.1f} AP vs {100 * fixed_s0:.1f}" in WEIGHTS_EVIDENCE


def test_the_real_photo_statement_follows_its_record():
    """init's configs say that the coco128 pilot decided nothing: its val AP and its no-go as recorded."""
    from defeat.api.init import REAL_DATA_EVIDENCE

    pilot = json.loads((REPO / "benchmarks/results/init_defaults_coco128/pilot_r18.json").read_text())
    assert pilot["go"] is False
    val_ap = 100 * list(pilot["val_AP_by_step_2S"].values())[-1]  # at 2 S, the end of the pilot
    assert f"reached {val_ap:.1f} val AP" in REAL_DATA_EVIDENCE and "nothing here is decided" in REAL_DATA_EVIDENCE
