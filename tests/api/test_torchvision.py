"""Bring your own detector: torchvision weight files (made offline by torchvision's builders, saved under the
official file names) as teacher, as the thing evaluated, as the start of fine-tuning; DeFeat across
R50-FPN-v2 -> MobileNetV3-FPN and a RetinaNet pair; export into the stock builder; predict with --model/--weights."""

from __future__ import annotations

import json

import pytest
import torch
from pycocotools.coco import COCO
from torchvision.models import detection

from defeat import api
from defeat.cli.main import main
from defeat.config import config_from_dict
from tests.conftest import tiny_overrides

#: the tiny set's shapes renamed to COCO classes (ids stay 3/7/9: COCO's are 1/3/18, so mapping is by name)
COCO_NAMES = {"square": "person", "bar": "car", "disc": "dog"}


@pytest.fixture(scope="module")
def coco_named(tiny_coco, tmp_path_factory):
    root = tmp_path_factory.mktemp("coco_named")
    paths = {}
    for split in ("train", "val"):
        data = json.loads(tiny_coco[f"{split}_ann"].read_text())
        for category in data["categories"]:
            category["name"] = COCO_NAMES[category["name"]]
        paths[split] = root / f"{split}.json"
        paths[split].write_text(json.dumps(data))
    overrides = [o for o in tiny_coco["overrides"] if "annotations" not in o] + [
        f"data.train_annotations={paths['train']}",
        f"data.val_annotations={paths['val']}",
    ]
    return {**tiny_coco, "overrides": overrides, "root": root}


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("tv_weights")
    torch.manual_seed(0)
    files = {
        "fasterrcnn_resnet50_fpn_v2": root / "fasterrcnn_resnet50_fpn_v2_coco-dd69338a.pth",
        "retinanet_resnet50_fpn_v2": root / "retinanet_resnet50_fpn_v2_coco-5905b1c5.pth",
        "fasterrcnn_mobilenet_v3_large_fpn": root / "fasterrcnn_mobilenet_v3_large_fpn-fb6a3cc7.pth",
    }
    for name, path in files.items():
        torch.save(getattr(detection, name)(weights=None, weights_backbone=None).state_dict(), path)
    return files


def distill_cfg(data, out, student, teacher, teacher_file, extra=()):
    return config_from_dict(
        {},
        tiny_overrides(data, out, name=student, steps=2)
        + [
            "model.anchor_sizes=[32,64,128,256,512]",
            f"distill.teacher_model={teacher}",
            f"distill.teacher_weights={teacher_file}",
            "distill.teacher_check_images=2",
            "distill.teacher_min_ap=0",
            *extra,
        ],
    )


@pytest.mark.slow
def test_r50_fpn_v2_coco_file_teaches_a_mobilenet_v3_student(coco_named, weight_files, tmp_path):
    cfg = distill_cfg(
        coco_named,
        tmp_path / "mobile",
        "fasterrcnn_mobilenet_v3_large_fpn",
        "fasterrcnn_resnet50_fpn_v2",
        weight_files["fasterrcnn_resnet50_fpn_v2"],
        ["distill.proposal_mode=decoupled"],
    )
    result = api.distill(cfg)
    assert result.step == 2 and result.final_checkpoint.is_file()
    assert "mapped by name" in result.notes[0]
    loaded = api.load_detector(result.final_checkpoint)
    # both MobileNet maps of stride 32 imitate the teacher's P5; P6 imitates P6
    assert loaded.adapters.levels == ["P5", "P5b", "P6"]
    history = [json.loads(line) for line in (tmp_path / "mobile" / "metrics.jsonl").read_text().splitlines()]
    logged = {k for row in history for k in row}
    assert {"loss_feat_obj", "loss_feat_bg", "loss_kd_pos", "loss_kd_neg"} <= logged, logged
    # export loads into torchvision's own builder with strict=True
    meta = api.export(result.final_checkpoint, tmp_path / "student.pt")
    stock = detection.fasterrcnn_mobilenet_v3_large_fpn(
        weights=None, weights_backbone=None, num_classes=meta["num_classes"] + 1
    )
    stock.load_state_dict(torch.load(tmp_path / "student.pt", weights_only=True), strict=True)
    assert meta["torchvision_builder"].startswith("torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn(")


@pytest.mark.slow
def test_a_retinanet_pair_distils_features_and_anchors(coco_named, weight_files, tmp_path):
    cfg = distill_cfg(
        coco_named,
        tmp_path / "retina",
        "retinanet_resnet18_fpn",
        "retinanet_resnet50_fpn_v2",
        weight_files["retinanet_resnet50_fpn_v2"],
        ["distill.proposal_mode=decoupled"],
    )
    result = api.distill(cfg)
    assert result.step == 2
    assert api.load_detector(result.final_checkpoint).adapters.levels == ["P3", "P4", "P5", "P6", "P7"]


def test_a_teacher_whose_classes_do_not_cover_the_data_is_refused(tiny_coco, weight_files, tmp_path):
    cfg = distill_cfg(
        tiny_coco,
        tmp_path / "bad",
        "fasterrcnn_mobilenet_v3_large_fpn",
        "fasterrcnn_mobilenet_v3_large_fpn",
        weight_files["fasterrcnn_mobilenet_v3_large_fpn"],
    )
    with pytest.raises(ValueError, match="do not cover .*square.*fine-tune it first"):
        api.distill(cfg)
    assert not (tmp_path / "bad" / "model_final.pt").exists()


@pytest.mark.slow
def test_fine_tune_evaluate_and_predict_with_torchvision_files(coco_named, tiny_coco, weight_files, tmp_path, capsys):
    mobile = weight_files["fasterrcnn_mobilenet_v3_large_fpn"]
    # fine-tuning a COCO file on other classes: keep/reset printed
    overrides = tiny_overrides(tiny_coco, tmp_path / "ft", name="fasterrcnn_mobilenet_v3_large_fpn", steps=1) + [
        "model.anchor_sizes=[32,64,128,256,512]",
        f"model.weights={mobile}",
    ]
    assert main(["train", *[a for o in overrides for a in ("--set", o)]]) == 0
    printed = capsys.readouterr()
    assert "re-initialised 4 class-dependent" in printed.out + printed.err
    # evaluating the COCO file itself on COCO-named data, no checkpoint
    cfg = config_from_dict(
        {},
        tiny_overrides(coco_named, tmp_path / "eval", name="fasterrcnn_mobilenet_v3_large_fpn")
        + ["model.anchor_sizes=[32,64,128,256,512]", f"model.weights={mobile}"],
    )
    stats = api.evaluate(cfg)
    assert set(stats["per_class_AP"]) == {"person", "car", "dog"} and (tmp_path / "eval" / "metrics.json").is_file()
    # predict with --model/--weights: COCO results with the COCO ids of torchvision's label space
    out = tmp_path / "pred" / "results.json"
    args = [
        "predict",
        str(tiny_coco["root"] / "val" / "images"),
        "--out",
        str(out),
        "--model",
        "fasterrcnn_mobilenet_v3_large_fpn",
        "--weights",
        str(mobile),
        "--score-thresh",
        "0",
        "--quiet",
    ]
    assert main(args) == 0
    images = COCO(str(out).replace(".json", ".images.json"))
    results = json.loads(out.read_text())
    assert results and {r["category_id"] for r in results} <= set(range(1, 91))
    images.loadRes(str(out))
