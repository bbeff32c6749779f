import json

import pytest
import torch
from PIL import Image

from defeat.data import CocoDetection, TrainSampler, collate, epoch_order, load_coco_index
from tests.conftest import TINY_CATEGORIES, write_tiny_coco


@pytest.fixture()
def small(tmp_path):
    ann = write_tiny_coco(tmp_path, 4, seed=3)
    return tmp_path, json.loads(ann.read_text())


def _write(tmp_path, data):
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return path


def test_categories_map_to_contiguous_labels(tiny_coco):
    ds = CocoDetection(tiny_coco["root"] / "train" / "images", tiny_coco["train_ann"])
    assert [c["id"] for c in ds.categories] == [3, 7, 9]  # COCO ids, any integers
    data = json.loads(tiny_coco["train_ann"].read_text())
    label_of = {c["id"]: i + 1 for i, c in enumerate(TINY_CATEGORIES)}
    for i in range(len(ds)):
        image, target = ds[i]
        anns = [a for a in data["annotations"] if a["image_id"] == target["image_id"]]
        assert image.shape == (3, 64, 64) and image.min() >= 0 and image.max() <= 1
        assert target["labels"].tolist() == [label_of[a["category_id"]] for a in anns]
        assert target["boxes"].shape == (len(anns), 4)
    assert any(len(ds[i][1]["boxes"]) == 0 for i in range(len(ds)))  # images without annotations are fine


def test_horizontal_flip_moves_boxes_with_pixels(tiny_coco):
    ds = CocoDetection(tiny_coco["root"] / "train" / "images", tiny_coco["train_ann"])
    image, target = ds[1]
    flipped, flipped_target = ds[(1, True)]
    assert torch.equal(flipped, image.flip(-1))
    x1, y1, x2, y2 = target["boxes"][0].tolist()
    assert flipped_target["boxes"][0].tolist() == [64 - x2, y1, 64 - x1, y2]
    images, targets = collate([ds[0], ds[1]])
    assert len(images) == 2 and len(targets) == 2


def test_crowd_boxes_are_not_training_targets(small):
    root, data = small
    data["annotations"][0]["iscrowd"] = 1
    ds = CocoDetection(root / "images", _write(root, data))
    total = sum(len(ds[i][1]["boxes"]) for i in range(len(ds)))
    assert total == len(data["annotations"]) - 1


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["annotations"][0].update(image_id=999), "annotation 1 refers to unknown image id 999"),
        (lambda d: d["annotations"][0].update(category_id=42), "annotation 1 refers to unknown category id 42"),
        (lambda d: d["annotations"][0].update(bbox=[1, 1, 0, 5]), "annotation 1: bbox has non-positive width/height"),
        (lambda d: d["annotations"][0].update(bbox=[1, 1, float("nan"), 5]), "annotation 1: bbox has non-finite"),
        (lambda d: d["annotations"][0].update(bbox=[1, 1]), r"annotation 1: bbox must be \[x, y, width, height\]"),
        (
            lambda d: d["annotations"][0].update(bbox=[100, 100, 5, 5]),
            "annotation 1: bbox .* lies outside its 64x64 image",
        ),
        (lambda d: d.pop("categories"), "not a COCO instances file"),
    ],
)
def test_bad_annotations_get_one_line_errors(small, mutate, message):
    root, data = small
    mutate(data)
    path = _write(root, data)
    with pytest.raises(ValueError, match=f"instances.json: {message}") as err:
        load_coco_index(path)
    assert "\n" not in str(err.value)


def test_boxes_reaching_outside_are_clipped_and_counted(small):
    root, data = small
    data["annotations"][0]["bbox"] = [50, 50, 30, 30]
    with pytest.warns(UserWarning, match="clipped 1 boxes"):
        index = load_coco_index(_write(root, data))
    assert index.clipped == 1
    assert index.boxes[data["annotations"][0]["image_id"]][0] == [50, 50, 64, 64]


def test_invalid_json_missing_and_corrupt_images(small, tmp_path):
    root, data = small
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: invalid JSON"):
        load_coco_index(bad)
    ann = _write(root, data)
    ds = CocoDetection(root / "images", ann)
    (root / "images" / data["images"][0]["file_name"]).unlink()
    with pytest.raises(FileNotFoundError, match="0000.png: image file not found"):
        ds[0]
    (root / "images" / data["images"][1]["file_name"]).write_bytes(b"\x89PNG garbage")
    with pytest.raises(ValueError, match="0001.png: unreadable or corrupt image"):
        ds[1]
    Image.new("RGB", (32, 32)).save(root / "images" / data["images"][2]["file_name"])
    with pytest.raises(ValueError, match="0002.png: image is 32x32, the annotations say 64x64"):
        ds[2]


def test_sampler_slices_match_across_world_sizes_and_resume():
    one = TrainSampler(10, 4, seed=5, hflip_prob=0.5)
    r0 = TrainSampler(10, 2, world_size=2, rank=0, seed=5, hflip_prob=0.5)
    r1 = TrainSampler(10, 2, world_size=2, rank=1, seed=5, hflip_prob=0.5)
    it, i0, i1 = iter(one), iter(r0), iter(r1)
    for _ in range(6):  # 3 epochs of 2 steps: each step's global batch is identical
        assert [next(it) for _ in range(4)] == [next(i0) for _ in range(2)] + [next(i1) for _ in range(2)]
    resumed = iter(TrainSampler(10, 4, seed=5, hflip_prob=0.5, start_step=3))
    full = iter(TrainSampler(10, 4, seed=5, hflip_prob=0.5))
    for _ in range(12):
        next(full)
    assert [next(resumed) for _ in range(8)] == [next(full) for _ in range(8)]
    order, flips = epoch_order(10, 5, 0, 0.0)
    assert sorted(order) == list(range(10)) and not any(flips)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        TrainSampler(3, 2, world_size=2)
