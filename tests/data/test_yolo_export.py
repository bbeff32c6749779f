"""COCO JSON -> Ultralytics layout: labels by hand, images linked, class index -> COCO id kept, all or nothing."""

from __future__ import annotations

import json

import pytest
import yaml
from PIL import Image

from defeat.cli.main import main
from defeat.data.importers import import_yolo
from defeat.data.yolo_export import export_yolo, read_category_map


def make_split(root, name, boxes_by_image):
    """Images of 100x50 px and a COCO JSON with categories 7 'cat' and 3 'dog' (ids out of order)."""
    folder = root / name
    (folder / "sub").mkdir(parents=True)
    images, annotations = [], []
    for image_id, (file_name, boxes) in enumerate(boxes_by_image.items(), start=1):
        Image.new("RGB", (100, 50)).save(folder / file_name)
        images.append({"id": image_id, "file_name": file_name, "width": 100, "height": 50})
        for category_id, bbox, crowd in boxes:
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "category_id": category_id, "bbox": bbox,
                 "iscrowd": crowd, "area": bbox[2] * bbox[3]}
            )  # fmt: skip
    categories = [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}]
    path = root / f"{name}.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return folder, path


def test_export_writes_labels_links_and_the_category_map(tmp_path):
    train = make_split(
        tmp_path,
        "train",
        {
            "a.png": [(3, [10, 5, 20, 10], 0), (7, [0, 0, 100, 50], 0), (7, [1, 1, 2, 2], 1)],  # + a crowd box
            "sub/b.png": [(7, [90, 40, 20, 20], 0)],  # reaches outside: clipped to [90, 40, 100, 50]
        },
    )
    val = make_split(tmp_path, "val", {"c.png": []})
    with pytest.warns(UserWarning, match="clipped 1 boxes"):
        summary = export_yolo(tmp_path / "out", {"train": train, "val": val})
    out = tmp_path / "out"
    assert summary["splits"] == {
        "train": {"images": 2, "boxes": 3, "clipped": 1},
        "val": {"images": 1, "boxes": 0, "clipped": 0},
    }
    # class 0 = category 3 'dog' (sorted by id), class 1 = category 7 'cat'; cx cy w h over 100 x 50
    assert (out / "labels/train/a.txt").read_text() == (
        "0 0.200000 0.200000 0.200000 0.200000\n1 0.500000 0.500000 1.000000 1.000000\n"
    )
    assert (out / "labels/train/sub/b.txt").read_text() == "1 0.950000 0.900000 0.100000 0.200000\n"
    assert (out / "labels/val/c.txt").read_text() == ""
    link = out / "images/train/sub/b.png"
    assert link.is_symlink() and link.resolve() == (tmp_path / "train/sub/b.png").resolve()
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data == {
        "path": str(out.resolve()),
        "train": "images/train",
        "val": "images/val",
        "names": {0: "dog", 1: "cat"},
    }
    assert [(c["index"], c["id"], c["name"]) for c in read_category_map(out)] == [(0, 3, "dog"), (1, 7, "cat")]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp")]

    # back to COCO with the project's importer: the same boxes (category ids become 1..K in class order)
    (tmp_path / "classes.txt").write_text("dog\ncat\n")
    back = import_yolo(out / "images/train", out / "labels/train", tmp_path / "classes.txt", tmp_path / "back.json")
    assert back["annotations"] == 3
    back_json = json.loads((tmp_path / "back.json").read_text())
    boxes = sorted((a["category_id"], [round(v, 6) for v in a["bbox"]]) for a in back_json["annotations"])
    assert boxes == [(1, [10.0, 5.0, 20.0, 10.0]), (2, [0.0, 0.0, 100.0, 50.0]), (2, [90.0, 40.0, 10.0, 10.0])]


def test_bad_input_writes_nothing(tmp_path):
    folder, annotations = make_split(tmp_path, "train", {"a.png": [(3, [10, 5, 20, 10], 0)]})
    (folder / "a.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"train.json: image 'a.png' not found in .*train$"):
        export_yolo(tmp_path / "out", {"train": (folder, annotations)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train", "train.json"]  # no out, no temporary folder
    (tmp_path / "out").mkdir()
    with pytest.raises(ValueError, match="out: already exists"):
        export_yolo(tmp_path / "out", {"train": (folder, annotations)})


def test_cli_export_yolo(tmp_path, capsys):
    folder, annotations = make_split(tmp_path, "train", {"a.png": [(3, [10, 5, 20, 10], 0)]})
    argv = ["data", "export-yolo", "--images", str(folder), "--annotations", str(annotations), "--out"]
    assert main([*argv, str(tmp_path / "out")]) == 0
    assert json.loads(capsys.readouterr().out)["splits"]["train"] == {"images": 1, "boxes": 1, "clipped": 0}
    # no val split: the train images stand in for Ultralytics' required val entry
    assert yaml.safe_load((tmp_path / "out/data.yaml").read_text())["val"] == "images/train"
    assert main([*argv, str(tmp_path / "out2"), "--val-images", str(folder)]) == 2
    assert "give both or neither" in capsys.readouterr().err
