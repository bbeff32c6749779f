"""Weight files as torchvision writes them (made offline with torchvision's builders, saved under the official
names): whole detectors, ImageNet backbones, DEFAULT offline, class mapping by name, fine-tuning, bad files."""

from __future__ import annotations

import dataclasses
import urllib.error

import pytest
import torch
from torchvision.models import detection, mobilenet_v3_large, resnet18

from defeat.config import ModelConfig
from defeat.engine.checkpoint import load_model
from defeat.engine.weights import build_pretrained, load_pretrained
from defeat.models import num_classes_of

MOBILE = "fasterrcnn_mobilenet_v3_large_fpn"
COCO_NAMED = [{"id": 3, "name": "Dog"}, {"id": 7, "name": "traffic_light"}]  # COCO names, other ids and spelling
OTHER = [{"id": 1, "name": "pedestrian"}, {"id": 2, "name": "cyclist"}]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    made = {
        "coco": (
            root / "fasterrcnn_mobilenet_v3_large_fpn-fb6a3cc7.pth",
            detection.fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None),
        ),
        "resnet18": (root / "resnet18-f37072fd.pth", resnet18()),
        "mobilenet": (root / "mobilenet_v3_large-8738ca79.pth", mobilenet_v3_large()),
    }
    for path, model in made.values():
        torch.save(model.state_dict(), path)
    return {key: path for key, (path, _) in made.items()} | {"root": root, "coco_state": made["coco"][1].state_dict()}


def test_a_coco_file_maps_its_classes_onto_coco_named_data_by_name(files):
    loaded = load_pretrained(ModelConfig(name=MOBILE, weights=str(files["coco"])), COCO_NAMED)
    assert num_classes_of(loaded.model) == 3 and loaded.categories == COCO_NAMED
    state = loaded.model.state_dict()
    torch.testing.assert_close(state["backbone.body.0.0.weight"], files["coco_state"]["backbone.body.0.0.weight"])
    # COCO id 18 is dog, 10 traffic light: the kept outputs, in the dataset's order
    predictor = loaded.model.roi_heads.box_predictor
    assert predictor.keep.tolist() == [18, 10]
    # without categories: torchvision's COCO classes (output k = COCO id k)
    own = load_pretrained(ModelConfig(name=MOBILE, weights=str(files["coco"])))
    assert len(own.categories) == 90 and own.categories[17] == {"id": 18, "name": "dog"}
    # training starts from the same outputs as plain layers
    model, notes = build_pretrained(ModelConfig(name=MOBILE, weights=str(files["coco"])), COCO_NAMED, role="train")
    assert model.roi_heads.box_predictor.cls_score.out_features == 3 and "mapped by name" in notes[0]


def test_fine_tuning_to_other_classes_keeps_all_but_the_class_layers(files):
    torch.manual_seed(1)
    model, notes = build_pretrained(ModelConfig(name=MOBILE, weights=str(files["coco"])), OTHER, role="train")
    assert num_classes_of(model) == 3
    assert "kept" in notes[0] and "re-initialised 4 class-dependent" in notes[0]
    assert "roi_heads.box_predictor.cls_score.weight" in notes[0]
    state = model.state_dict()
    for key in ("backbone.fpn.inner_blocks.0.0.weight", "rpn.head.conv.0.0.weight", "roi_heads.box_head.fc6.weight"):
        torch.testing.assert_close(state[key], files["coco_state"][key])
    with pytest.raises(ValueError, match="do not cover .*pedestrian.*fine-tune it first"):
        load_pretrained(ModelConfig(name=MOBILE, weights=str(files["coco"])), OTHER)


def test_imagenet_backbone_files_load_into_the_body(files):
    model, notes = build_pretrained(
        ModelConfig(name="fasterrcnn_resnet18_fpn", backbone_weights=str(files["resnet18"])), OTHER
    )
    reference = torch.load(files["resnet18"], weights_only=True)
    torch.testing.assert_close(model.backbone.body.layer3[1].conv2.weight, reference["layer3.1.conv2.weight"])
    assert "ImageNet resnet18" in notes[0]
    mobile, _ = build_pretrained(ModelConfig(name=MOBILE, backbone_weights=str(files["mobilenet"])), OTHER)
    reference = torch.load(files["mobilenet"], weights_only=True)
    torch.testing.assert_close(
        getattr(mobile.backbone.body, "4").block[0][0].weight, reference["features.4.block.0.0.weight"]
    )
    with pytest.raises(ValueError, match="none of its keys is a resnet18 key"):
        build_pretrained(ModelConfig(name="fasterrcnn_resnet18_fpn", backbone_weights=str(files["mobilenet"])), OTHER)


def test_bad_weight_files_get_one_line(files, tmp_path):
    wrong = ModelConfig(name="fasterrcnn_resnet50_fpn", weights=str(files["coco"]))
    with pytest.raises(ValueError, match=r"does not fit fasterrcnn_resnet50_fpn \(\d+ missing, \d+ unexpected"):
        build_pretrained(wrong, COCO_NAMED)
    truncated = tmp_path / "fasterrcnn_resnet50_fpn_v2_coco-dd69338a.pth"
    truncated.write_bytes(files["coco"].read_bytes()[:4096])
    with pytest.raises(ValueError, match="not a readable torch file"):
        build_pretrained(ModelConfig(name=MOBILE, weights=str(truncated)), COCO_NAMED)
    pickled = tmp_path / "pickled.pth"
    torch.save({"model": torch.nn.Linear(2, 2)}, pickled)
    with pytest.raises(ValueError, match=r"refused by torch.load\(weights_only=True\)"):
        build_pretrained(ModelConfig(name=MOBILE, weights=str(pickled)), COCO_NAMED)
    with pytest.raises(FileNotFoundError, match="model.weights: .*missing.pth: file not found"):
        build_pretrained(ModelConfig(name=MOBILE, weights=str(tmp_path / "missing.pth")), COCO_NAMED)


def test_default_offline_names_the_file_and_the_folder(monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(
        FileNotFoundError,
        match=r"model.weights=DEFAULT: could not get "
        r"fasterrcnn_mobilenet_v3_large_fpn-fb6a3cc7.pth .*put it|"
        r"put fasterrcnn_mobilenet_v3_large_fpn-fb6a3cc7.pth in .*checkpoints",
    ):
        build_pretrained(ModelConfig(name=MOBILE, weights="DEFAULT"), COCO_NAMED)
    with pytest.raises(FileNotFoundError, match="put resnet18-f37072fd.pth in"):
        build_pretrained(ModelConfig(name="fasterrcnn_resnet18_fpn", backbone_weights="DEFAULT"), OTHER)
    with pytest.raises(ValueError, match="COCO weights only for"):
        build_pretrained(ModelConfig(name="fasterrcnn_resnet18_fpn", weights="DEFAULT"), OTHER)


def test_a_checkpoint_of_this_project_says_its_classes(tiny_teacher):
    loaded = load_model(tiny_teacher)
    model_cfg = dataclasses.replace(loaded.config.model, weights=str(tiny_teacher))
    model, notes = build_pretrained(model_cfg, loaded.categories, role="eval")
    assert notes == []  # the same classes: nothing to map
    for key, value in loaded.model.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value)
    names = [c["name"] for c in loaded.categories]
    shuffled = [{"id": c["id"], "name": n} for c, n in zip(loaded.categories, names[1:] + names[:1])]
    model, notes = build_pretrained(model_cfg, shuffled, role="eval")  # mapped by name, from the checkpoint's list
    assert model.roi_heads.box_predictor.keep.tolist() == [2, 3, 1] and "the checkpoint's 3 classes" in notes[0]


@pytest.mark.parametrize("saved_norm", ["bn", "frozen_bn", "gn"])
def test_checkpoints_are_rebuilt_with_the_normalisation_their_weights_have(tmp_path, saved_norm):
    """`norm: auto` and the checkpoints of torchvision-spelled names saved as BatchNorm models while their config
    said `gn` (before those names became aliases of the zoo's): the weights decide."""
    from defeat.config import Config, config_to_dict
    from defeat.engine.checkpoint import save_checkpoint
    from defeat.models import build_detector

    torch.manual_seed(0)
    model = build_detector(ModelConfig(name="faster_rcnn_tiny_fpn", norm=saved_norm), 2)
    path = tmp_path / "old.pt"
    cfg = Config(model=ModelConfig(name="faster_rcnn_tiny_fpn", norm="gn" if saved_norm == "bn" else "auto"))
    categories = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    save_checkpoint(
        {
            "kind": "detector",
            "model": model.state_dict(),
            "categories": categories,
            "config": config_to_dict(cfg),
            "step": 1,
        },
        path,
    )
    loaded = load_model(path)
    state = loaded.model.state_dict()
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
