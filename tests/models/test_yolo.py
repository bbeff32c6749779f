"""YOLO models by name (the ``yolo`` extra): the spec without Ultralytics, the built model's neck maps and strides,
weights files of the wrong task refused, and the one line a missing extra gives."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from defeat.models.spec import is_yolo_name, model_names, model_spec, yolo_model_names
from defeat.models.yolo import ultralytics_module

if importlib.util.find_spec("ultralytics") is None:
    pytest.skip("the yolo extra (pip install 'defeat[yolo]') is not installed", allow_module_level=True)
ultralytics_module()  # imports Ultralytics offline, PIL.Image.open restored (before any ultralytics import)

from defeat.models import yolo  # noqa: E402  (after the skip: the module's functions import ultralytics)


def test_spec_knows_yolo_names_without_ultralytics():
    spec = model_spec("yolo26n")
    assert (spec.family, spec.builder, spec.backbone) == ("yolo", "ultralytics", "yolo26")
    assert spec.levels == {"P3": 8, "P4": 16, "P5": 32} and spec.strides == (8, 16, 32)
    assert spec.yolo_config == "yolo26n.yaml" and spec.is_yolo
    assert yolo_model_names()[:5] == ["yolo26n", "yolo26s", "yolo26m", "yolo26l", "yolo26x"]
    assert len(yolo_model_names()) == 15 and all(is_yolo_name(n) for n in yolo_model_names())
    assert not any(is_yolo_name(n) for n in model_names())  # the torchvision list stays torchvision's
    with pytest.raises(ValueError, match="Ultralytics YOLO: .*yolo26"):
        model_spec("yolo26q")
    assert not model_spec("retinanet_r18_fpn").is_yolo


@pytest.mark.parametrize("name", ["yolo26n", "yolo11n", "yolov8n"])
def test_built_model_matches_its_spec(name):
    model = yolo.build_yolo(name, num_classes=3)
    assert yolo.yolo_levels(model) == model_spec(name).levels
    # the layers that feed Detect, as Ultralytics' configs list them (YOLOv8 has one layer less before the head)
    assert yolo.detect_inputs(model) == ([15, 18, 21] if name == "yolov8n" else [16, 19, 22])
    assert yolo.neck_channels(model) == {"P3": 64, "P4": 128, "P5": 256}
    model.train()
    maps, output = yolo.neck_features(model, torch.zeros(2, 3, 96, 64))
    assert {k: tuple(v.shape[-2:]) for k, v in maps.items()} == {"P3": (12, 8), "P4": (6, 4), "P5": (3, 2)}
    sizes = {k: tuple(v.shape[-2:]) for k, v in maps.items()}
    confidence = yolo.head_confidence(output, sizes)
    assert {k: tuple(v.shape) for k, v in confidence.items()} == {"P3": (2, 12, 8), "P4": (2, 6, 4), "P5": (2, 3, 2)}
    assert all(((c >= 0) & (c <= 1)).all() for c in confidence.values())
    assert not any(m._forward_hooks for m in model.modules())  # capture_neck leaves no hook behind


def test_weights_load_and_other_tasks_are_refused(tmp_path):
    from ultralytics.nn.tasks import SegmentationModel

    detector = yolo.build_yolo("yolo26n", num_classes=2)
    torch.save({"model": detector, "train_args": {}}, tmp_path / "det.pt")
    loaded = yolo.load_yolo_weights(tmp_path / "det.pt")
    assert yolo.yolo_levels(loaded) == {"P3": 8, "P4": 16, "P5": 32}
    rebuilt = yolo.build_yolo("yolo26n", num_classes=2, weights=tmp_path / "det.pt")
    for ours, theirs in zip(rebuilt.state_dict().values(), detector.state_dict().values()):
        torch.testing.assert_close(ours, theirs)

    torch.save({"model": SegmentationModel("yolo26n-seg.yaml", nc=2, verbose=False)}, tmp_path / "seg.pt")
    with pytest.raises(ValueError, match=r"^model.weights: .*seg.pt holds a YOLO segment model .*task detect"):
        yolo.load_yolo_weights(tmp_path / "seg.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"^model.weights: .*junk.pt is not an Ultralytics checkpoint"):
        yolo.load_yolo_weights(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError, match="model.weights: .*missing.pt not found"):
        yolo.load_yolo_weights(tmp_path / "missing.pt")


def test_a_yolo_name_without_the_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ultralytics", None)  # import ultralytics -> ImportError
    line = r'^model.name: Ultralytics YOLO needs the yolo extra: pip install "defeat\[yolo\]"$'
    with pytest.raises(ValueError, match=line):
        yolo.build_yolo("yolo26n", num_classes=3)


def test_torchvision_builder_refuses_a_yolo_name():
    from defeat.config import ModelConfig
    from defeat.models import build_detector

    with pytest.raises(ValueError, match="yolo26n is an Ultralytics YOLO model"):
        build_detector(ModelConfig(name="yolo26n"), num_classes=3)


def test_importing_ultralytics_leaves_pil_alone():
    """Ultralytics patches PIL.Image.open (a pip install of pi-heif on an unreadable image); the module undoes it, so
    a corrupt image keeps PIL's own error (the project's one-line image checks rely on it)."""
    from PIL import Image

    ultralytics_module()
    assert Image.open.__module__ == "PIL.Image"
