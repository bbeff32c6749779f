"""The YOLO distiller: object masks on YOLO strides against a hand count, every feature mode that applies through
one training step (loss, gradients), a torchvision teacher paired by stride, and the pairs and modes it refuses."""

# ruff: noqa: E402  (the imports after the skip need Ultralytics, imported offline first)
from __future__ import annotations

import importlib.util

import pytest
import torch

from defeat.models.yolo import ultralytics_module

if importlib.util.find_spec("ultralytics") is None:
    pytest.skip("the yolo extra (pip install 'defeat[yolo]') is not installed", allow_module_level=True)
ultralytics_module()  # imports Ultralytics offline, PIL.Image.open restored (before any ultralytics import)

from ultralytics.cfg import get_cfg

from defeat.config import DistillSettings, ModelConfig
from defeat.distill.yolo import YoloDistiller, batch_boxes
from defeat.models import build_detector
from defeat.models.families import pair_levels
from defeat.models.yolo import build_yolo

CLASSES = 3


def yolo(name: str = "yolo26n"):
    model = build_yolo(name, CLASSES)
    model.args = get_cfg()  # Ultralytics' trainer attaches its hyperparameters; the loss reads them
    return model


@pytest.fixture(scope="module")
def pair():
    """A YOLO26n student and a wider YOLO26s teacher (adapters map 64/128/256 -> 128/256/512), built once: each
    test makes its own distiller (fresh adapters) and clears the student's gradients."""
    return yolo("yolo26n"), yolo("yolo26s")


def batch(side: int = 64, images: int = 2) -> dict:
    """Two images, three boxes (Ultralytics' layout: cx cy w h normalised, the image of each box)."""
    torch.manual_seed(0)
    return {
        "img": torch.rand(images, 3, side, side),
        "bboxes": torch.tensor([[0.3, 0.3, 0.2, 0.3], [0.6, 0.5, 0.5, 0.4], [0.5, 0.5, 0.9, 0.9]]),
        "cls": torch.tensor([[0.0], [1.0], [2.0]]),
        "batch_idx": torch.tensor([0.0, 0.0, 1.0]),
    }


def test_batch_boxes_are_pixels_per_image():
    boxes = batch_boxes(torch.tensor([[0.5, 0.25, 0.5, 0.5]]), torch.tensor([1.0]), 2, height=64, width=128)
    assert boxes[0].shape == (0, 4)
    torch.testing.assert_close(boxes[1], torch.tensor([[32.0, 0.0, 96.0, 32.0]]))


def test_masks_on_yolo_strides_match_a_hand_count(pair):
    distiller = YoloDistiller(*pair, DistillSettings(feature_mode="decoupled"))
    assert distiller.strides == {"P3": 8, "P4": 16, "P5": 32} and distiller.level_k0 == 5
    # a 40 x 40 box: floor(5 + log2(40 / 224)) = 2 -> P3 (clamped); rows/cols int(8/8)=1 .. int(48/8)=6: 5 x 5
    # a 120 x 120 box: floor(5 + log2(120 / 224)) = 4 -> P4; cells int(0/16)=0 .. int(120/16)=7: 7 x 7
    # a 240 x 250 box: floor(5 + log2(sqrt(240 * 250) / 224)) = 5 -> P5; int(16/32)=0 .. int(256/32)=8: 8 x 7
    boxes = [torch.tensor([[8.0, 8.0, 48.0, 48.0], [0.0, 0.0, 120.0, 120.0]]), torch.tensor([[16.0, 6, 256, 256]])]
    masks = distiller.feature_masks(boxes, {"P3": (32, 32), "P4": (16, 16), "P5": (8, 8)})
    counts = {name: m.sum(dim=(1, 2)).tolist() for name, m in masks.items()}
    assert counts == {"P3": [25, 0], "P4": [49, 0], "P5": [0, 8 * 8]}
    assert masks["P3"][0, 1:6, 1:6].all() and masks["P5"][1, 0:8, 0:8].all()


MODES = ["object", "background", "all", "decoupled", "cwd", "pkd", "score_weighted", "fgd", "mgd"]


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_trains_a_yolo_student_from_a_yolo_teacher(mode, pair):
    student, teacher = pair
    student.zero_grad(set_to_none=True)
    distiller = YoloDistiller(student, teacher, DistillSettings(feature_mode=mode), max_steps=2)
    distiller.train()
    loss, items = distiller(batch())
    assert loss.shape == (4,)  # YOLO26's box, cls and l1 terms, then the KD term
    kd = [k for k in items if k.startswith("loss_feat_")]
    assert kd and all(torch.isfinite(items[k]) for k in kd)
    assert loss[-1] > 0 and torch.isclose(loss[-1], sum(items[k] for k in kd) * 2, rtol=1e-5)  # x batch size
    loss.sum().backward()
    learned = distiller.adapters if distiller.adapters is not None else distiller.feature_kd
    assert learned is not None and any(p.grad is not None and p.grad.abs().sum() > 0 for p in learned.parameters())
    assert all(p.grad is None for p in teacher.parameters())  # frozen, outside the module tree
    assert not any(n.startswith("_teacher") for n, _ in distiller.named_parameters())
    # Ultralytics' validation asks the loss in eval mode: the same keys, KD terms 0
    distiller.eval()
    with torch.no_grad():
        val_loss, val_items = distiller(batch())
    assert set(val_items) == set(items) and float(val_loss[-1]) == 0.0


def test_a_torchvision_teacher_pairs_by_stride(pair):
    teacher = build_detector(ModelConfig(name="retinanet_tiny_fpn", min_size=64, max_size=64), CLASSES)
    student = pair[0]
    student.zero_grad(set_to_none=True)
    distiller = YoloDistiller(student, teacher, DistillSettings(feature_mode="decoupled"))
    assert distiller.pairs == {"P3": "P3", "P4": "P4", "P5": "P5"} and not distiller.teacher_is_yolo
    distiller.train()
    loss, items = distiller(batch())
    assert items["loss_feat_obj"] > 0 and items["loss_feat_bg"] > 0
    loss.sum().backward()
    assert all(p.grad is None for p in teacher.parameters())
    faster = build_detector(ModelConfig(name="faster_rcnn_tiny_fpn", min_size=64, max_size=64), CLASSES)
    assert YoloDistiller(student, faster, DistillSettings(feature_mode="score_weighted")).pairs == {
        "P3": "P3",
        "P4": "P4",
        "P5": "P5",
    }


def test_refusals_are_one_line(pair):
    student, teacher = pair
    with pytest.raises(ValueError, match=r"^distill.feature_mode=fgfi: not for a YOLO student \(.*no anchors\)$"):
        YoloDistiller(student, teacher, DistillSettings(feature_mode="fgfi"))
    other = build_yolo("yolo26n", CLASSES + 1)
    with pytest.raises(ValueError, match="teacher: predicts 4 classes, the student 3"):
        YoloDistiller(student, other, DistillSettings())
    message = r"no FPN stride in common with the student \(teacher P6 \(stride 64\), P7 \(stride 128\); student P3"
    with pytest.raises(ValueError, match=message):
        pair_levels({"P3": 8, "P4": 16, "P5": 32}, {"P6": 64, "P7": 128})
    with pytest.raises(ValueError, match="expected a torchvision FasterRCNN, RetinaNet or FCOS, got Linear"):
        YoloDistiller(student, torch.nn.Linear(2, 2), DistillSettings())
