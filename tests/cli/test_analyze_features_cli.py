"""``defeat analyze channel-distance`` / ``grad-norm`` end to end on the tiny set with tiny (64 px) toy-backbone models.

The checkpoints are written directly (untrained weights): the commands' files and checks are under test here,
not the models' quality.
"""

import json

import pytest
import torch

from defeat.cli.main import main
from defeat.config import config_to_dict, load_config
from defeat.data import CocoDetection
from defeat.distill import DeFeatDistiller
from defeat.engine import build_for_dataset, save_checkpoint
from tests.conftest import tiny_overrides


@pytest.fixture(scope="module")
def ckpts(tiny_coco, tmp_path_factory):
    root = tmp_path_factory.mktemp("feature_ckpts")
    categories = CocoDetection(tiny_coco["root"] / "train" / "images", tiny_coco["train_ann"]).categories

    def save(name, kind, model, cfg):
        path = root / f"{name}.pt"
        save_checkpoint(
            {
                "kind": kind,
                "model": model.state_dict(),
                "categories": categories,
                "config": config_to_dict(cfg),
                "step": 0,
            },
            path,
        )
        return path

    def cfg_for(model_name="faster_rcnn_tiny_fpn", extra=()):
        return load_config(None, tiny_overrides(tiny_coco, root / "run", name=model_name) + list(extra))

    cfg = cfg_for()
    teacher = build_for_dataset(cfg.model, categories, seed=1)
    out = {
        "teacher": save("teacher", "detector", teacher, cfg),
        "none": save("none", "detector", build_for_dataset(cfg.model, categories, seed=2), cfg),
    }
    dcfg = cfg_for(extra=["distill.feature_mode=decoupled"])
    distiller = DeFeatDistiller(build_for_dataset(cfg.model, categories, seed=3), teacher, dcfg.distill)
    with torch.no_grad():
        for conv in distiller.adapters.convs.values():
            conv.weight.normal_(std=0.02)
    out["decoupled"] = save("decoupled", "distill", distiller, dcfg)
    rcfg = cfg_for("retinanet_tiny_fpn")
    out["retina"] = save("retina", "detector", build_for_dataset(rcfg.model, categories, seed=4), rcfg)
    return out


def data_args(tiny, split="val"):
    return [
        "--images-dir",
        str(tiny["root"] / split / "images"),
        "--annotations",
        str(tiny["val_ann"] if split == "val" else tiny["train_ann"]),
    ]


def test_channel_distance_writes_figure_and_tables(ckpts, tiny_coco, tmp_path):
    out = tmp_path / "cd"
    # given out of order: the panels and rows follow the supplementary's order (no KD first)
    args = [
        "analyze",
        "channel-distance",
        "--teacher",
        str(ckpts["teacher"]),
        "--student",
        f"dec={ckpts['decoupled']}",
        f"base={ckpts['none']}",
        *data_args(tiny_coco),
        "--images",
        "3",
        "--level",
        "P3",
        "--out",
        str(out),
        "--quiet",
    ]
    assert main(args) == 0
    for name in (
        "channel_distance.png",
        "channel_distance_summary.csv",
        "channel_distance_summary.md",
        "channel_distance_per_channel.csv",
        "run.json",
    ):
        assert (out / name).stat().st_size > 0, name
    summary = json.loads((out / "channel_distance_summary.json").read_text())
    rows = summary["rows"]
    assert [(r["student"], r["region"]) for r in rows] == [
        ("base", "object"),
        ("base", "background"),
        ("dec", "object"),
        ("dec", "background"),
    ]
    assert [r["feature"] for r in rows] == ["raw", "raw", "adapter", "adapter"]
    assert rows[0]["ratio_to_baseline"] == pytest.approx(1.0) and rows[0]["mean_distance"] > 0
    assert summary["meta"]["baseline"] == "base" and summary["meta"]["level"] == "P3"
    assert "adapter output" in summary["meta"]["student_feature"]["dec"]
    assert len(summary["meta"]["image_ids"]) == 3
    per_channel = (out / "channel_distance_per_channel.csv").read_text().splitlines()
    assert (
        per_channel[0] == "student,channel,object,background" and len(per_channel) == 1 + 2 * 64
    )  # two students x the tiny FPN's 64 channels
    assert "| student |" in (out / "channel_distance_summary.md").read_text()

    # same seed -> same images and numbers; raw features and the assigned-boxes mask are supported
    again = tmp_path / "cd2"
    assert main(args[:-3] + ["--out", str(again), "--quiet", "--student-feature", "raw", "--mask", "assigned"]) == 0
    rows2 = json.loads((again / "channel_distance_summary.json").read_text())["rows"]
    assert rows2[0]["mean_distance"] != rows[0]["mean_distance"] or rows2[0]["pixels"] != rows[0]["pixels"]
    assert rows2[2]["feature"] == "raw"
    assert json.loads((again / "run.json").read_text())["image_ids"] == summary["meta"]["image_ids"]


def test_grad_norm_with_teacher_and_pretraining(ckpts, tiny_coco, tmp_path):
    out = tmp_path / "gn"
    assert (
        main(
            [
                "analyze",
                "grad-norm",
                "--student",
                str(ckpts["none"]),
                "--teacher",
                str(ckpts["teacher"]),
                "--mode",
                "decoupled",
                "--train-steps",
                "1",
                *data_args(tiny_coco, "train"),
                "--images",
                "2",
                "--seed",
                "1",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    table = json.loads((out / "grad_norm_ratio.json").read_text())
    meta, rows = table["meta"], table["rows"]
    assert meta["loss"] == "sum" and meta["feature_mode"] == "decoupled"
    assert meta["adapters"] == "1 steps of all-regions distillation"
    assert {"loss_feat_obj", "loss_feat_bg", "loss_classifier"} <= set(meta["loss_terms"])
    assert (out / "pretrain" / "model_final.pt").is_file()
    overall = [r for r in rows if r["image_id"] == "all"]
    assert [r["level"] for r in overall] == ["P2", "P3", "P4", "P5", "P6", "all"]
    assert len(rows) == 6 + 2 * 5
    for image_id in meta["image_ids"]:
        assert (out / f"grad_norm_{image_id}.png").stat().st_size > 0
    for suffix in (".csv", ".md"):
        assert (out / f"grad_norm_ratio{suffix}").is_file()
    p2 = overall[0]
    assert p2["background_mean"] > 0 and p2["ratio"] == pytest.approx(p2["object_mean"] / p2["background_mean"])
    # the per-image rows carry what `defeat reproduce` bootstraps over images: their pixel sums pool to the overall
    for level in ("P2", "P3"):
        per_image = [r for r in rows if r["image_id"] != "all" and r["level"] == level]
        pooled = next(r for r in overall if r["level"] == level)
        for region in ("object", "background"):
            pixels = sum(r[f"{region}_pixels"] for r in per_image)
            total = sum(r[f"{region}_mean"] * r[f"{region}_pixels"] for r in per_image if r[f"{region}_pixels"])
            assert pixels == pooled[f"{region}_pixels"] > 0
            assert total / pixels == pytest.approx(pooled[f"{region}_mean"])


def test_grad_norm_detection_loss_without_teacher(ckpts, tiny_coco, tmp_path):
    out = tmp_path / "det"
    assert (
        main(
            [
                "analyze",
                "grad-norm",
                "--student",
                str(ckpts["decoupled"]),
                "--levels",
                "P2,P3",
                *data_args(tiny_coco, "train"),
                "--images",
                "1",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    table = json.loads((out / "grad_norm_ratio.json").read_text())
    assert table["meta"]["loss"] == "detection" and table["meta"]["levels"] == ["P2", "P3"]
    assert not any(k.startswith("loss_feat") for k in table["meta"]["loss_terms"])


@pytest.mark.parametrize(
    "case, message",
    [
        ("layout", "FPN layout does not match the teacher's: levels P3/P4/P5/P6/P7 vs the teacher's P2/P3/P4/P5/P6"),
        ("level", "--level 'P9': the teacher's FPN has levels P2, P3, P4, P5, P6"),
        ("images", "--images 99: .* has only 4 images"),
        ("kind", "--teacher: .*decoupled.pt: is a 'distill' checkpoint, expected detector"),
        ("no_adapter", "has no distillation adapters"),
        ("gn_level", "--levels P7: the student's FPN has levels P2, P3, P4, P5, P6"),
        ("gn_loss", "--loss distillation needs --teacher"),
        ("gn_kind", "--teacher: .*decoupled.pt: is a 'distill' checkpoint"),
        ("gn_mode", "--mode: unknown value 'everything'"),
    ],
)
def test_bad_input_is_one_line(ckpts, tiny_coco, tmp_path, capsys, case, message):
    cd = [
        "analyze",
        "channel-distance",
        "--teacher",
        str(ckpts["teacher"]),
        *data_args(tiny_coco),
        "--images",
        "1",
        "--out",
        str(tmp_path / "x"),
        "--quiet",
    ]
    gn = [
        "analyze",
        "grad-norm",
        "--student",
        str(ckpts["none"]),
        *data_args(tiny_coco, "train"),
        "--images",
        "1",
        "--out",
        str(tmp_path / "y"),
        "--quiet",
    ]
    argv = {
        "layout": cd + ["--student", f"r={ckpts['retina']}"],
        "level": cd + ["--student", f"a={ckpts['none']}", "--level", "P9"],
        "images": cd + ["--images", "99", "--student", f"a={ckpts['none']}"],  # the last --images counts
        "kind": [
            "analyze",
            "channel-distance",
            "--teacher",
            str(ckpts["decoupled"]),
            "--student",
            f"a={ckpts['none']}",
            *data_args(tiny_coco),
            "--images",
            "1",
            "--out",
            str(tmp_path / "x"),
        ],
        "no_adapter": cd + ["--student", f"a={ckpts['none']}", "--student-feature", "adapter"],
        "gn_level": gn + ["--levels", "P2,P7"],
        "gn_loss": gn + ["--loss", "distillation"],
        "gn_kind": gn + ["--teacher", str(ckpts["decoupled"])],
        "gn_mode": gn + ["--teacher", str(ckpts["teacher"]), "--mode", "everything"],
    }[case]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("defeat: error: ")
    import re

    assert re.search(message, err), err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
