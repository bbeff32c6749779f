"""``api.predict`` / ``defeat predict``: COCO results that pycocotools and ``analyze errors`` accept, image folders
with deterministic ids, class mapping by name, pictures, and one-line refusals that write nothing."""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import pytest
from PIL import Image

from defeat import api
from defeat.cli.main import main
from defeat.data.category_map import map_by_name, normalize_name
from tests.conftest import TINY_CATEGORIES, VAL100


@pytest.fixture(scope="module")
def loaded(tiny_teacher):
    return api.load_detector(tiny_teacher)


@pytest.fixture(scope="module")
def val(tiny_coco):
    return tiny_coco["val_ann"], tiny_coco["root"] / "val" / "images"


def run(loaded, inputs, out, **kw):
    kw.setdefault("score_thresh", 0.0)
    return api.predict(loaded, inputs, out, precision="fp32", progress=False, **kw)


def write_coco(path, data):
    path.write_text(json.dumps(data))
    return path


# ------------------------------------------------------------------------------------------ results
def test_coco_json_input_writes_results_that_pycocotools_and_analyze_errors_accept(loaded, val, tmp_path):
    from pycocotools.coco import COCO

    ann, images = val
    summary = run(loaded, ann, tmp_path / "results.json", images_dir=images)
    dets = json.loads((tmp_path / "results.json").read_text())
    assert summary["detections"] == len(dets) > 0 and summary["images"] == 4 and summary["images_file"] is None
    assert not summary["mapped_by_name"] and summary["dropped"] == 0 and summary["unmatched"] == []
    assert {d["category_id"] for d in dets} <= {c["id"] for c in TINY_CATEGORIES}
    assert {d["image_id"] for d in dets} <= {1, 2, 3, 4}
    assert all(len(d["bbox"]) == 4 and d["bbox"][2] >= 0 and 0 <= d["score"] <= 1 for d in dets)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = COCO(str(ann)).loadRes(str(tmp_path / "results.json"))
    assert len(coco_dt.getAnnIds()) == len(dets)
    report = api.analyze_errors(
        ann, {"teacher": tmp_path / "results.json"}, tmp_path / "errors", formats=(), workers=1, quiet=True
    )
    assert set(report["overall"]) == {"teacher"}
    # the score threshold drops exactly the low-scoring detections
    high = run(loaded, ann, tmp_path / "high.json", images_dir=images, score_thresh=0.3)
    assert high["detections"] == sum(d["score"] >= 0.3 for d in dets)


def test_folder_gets_sorted_ids_a_coco_sidecar_and_pictures(loaded, val, tmp_path):
    from pycocotools.coco import COCO

    _, images = val
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, src in enumerate(sorted(images.iterdir())[:3]):
        shutil.copy(src, folder / f"{'cba'[i]}.png")  # c.png, b.png, a.png: ids follow the sorted names
    (folder / "notes.txt").write_text("not an image")
    (folder / ".DS_Store").write_bytes(b"\0")
    summary = run(loaded, folder, tmp_path / "out" / "dets.json", draw_dir=tmp_path / "drawn", draw_thresh=0.0)
    sidecar = tmp_path / "out" / "dets.images.json"
    assert summary["images_file"] == str(sidecar) and summary["skipped"] == [str(folder / "notes.txt")]
    meta = json.loads(sidecar.read_text())
    assert [(im["id"], im["file_name"], im["width"]) for im in meta["images"]] == [
        (1, "a.png", 64),
        (2, "b.png", 64),
        (3, "c.png", 64),
    ]
    assert meta["categories"] == loaded.categories and meta["annotations"] == []
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = COCO(str(sidecar)).loadRes(str(tmp_path / "out" / "dets.json"))
    assert len(coco_dt.getAnnIds()) == summary["detections"] > 0
    assert summary["drawn"] == 3 and sorted(p.name for p in (tmp_path / "drawn").iterdir()) == [
        "a.png",
        "b.png",
        "c.png",
    ]
    with Image.open(tmp_path / "drawn" / "a.png") as img:
        assert img.size == (64, 64)
    with Image.open(folder / "a.png") as a, Image.open(tmp_path / "drawn" / "a.png") as b:
        assert a.convert("RGB").tobytes() != b.convert("RGB").tobytes()  # boxes were drawn
    # a single image: id 1, same detections as in the folder run
    one = run(loaded, folder / "b.png", tmp_path / "one.json")
    folder_dets = [d for d in json.loads((tmp_path / "out" / "dets.json").read_text()) if d["image_id"] == 2]
    single = json.loads((tmp_path / "one.json").read_text())
    assert [(d["image_id"], d["category_id"]) for d in single] == [(1, d["category_id"]) for d in folder_dets]
    # batched and single-image convolutions may differ in the last float bits: rounded outputs agree to that
    assert [v for d in single for v in d["bbox"]] == pytest.approx(
        [v for d in folder_dets for v in d["bbox"]], abs=0.02
    )
    assert [d["score"] for d in single] == pytest.approx([d["score"] for d in folder_dets], abs=1e-4)
    assert one["images"] == 1 and json.loads((tmp_path / "one.images.json").read_text())["images"][0]["id"] == 1


def test_classes_map_by_name_to_a_dataset_with_other_ids(loaded, val, tmp_path):
    ann, images = val
    data = json.loads(ann.read_text())
    # renumbered ids, names in another case, 'bar' absent, an extra category the model does not know
    new_ids = {3: 21, 9: 20}
    data["categories"] = [{"id": 20, "name": "Disc"}, {"id": 21, "name": "square"}, {"id": 22, "name": "triangle"}]
    data["annotations"] = [
        dict(a, category_id=new_ids[a["category_id"]]) for a in data["annotations"] if a["category_id"] in new_ids
    ]
    renumbered = write_coco(tmp_path / "renumbered.json", data)
    plain = run(loaded, ann, tmp_path / "plain.json", images_dir=images)
    mapped = run(loaded, renumbered, tmp_path / "mapped.json", images_dir=images)
    assert mapped["mapped_by_name"] and mapped["unmatched"] == ["bar"]
    plain_dets = json.loads((tmp_path / "plain.json").read_text())
    expected = [dict(d, category_id=new_ids[d["category_id"]]) for d in plain_dets if d["category_id"] in new_ids]
    assert json.loads((tmp_path / "mapped.json").read_text()) == expected
    assert mapped["dropped"] == plain["detections"] - len(expected)
    api.analyze_errors(renumbered, {"m": tmp_path / "mapped.json"}, tmp_path / "e", formats=(), workers=1, quiet=True)


def test_map_by_name_pure():
    model = [{"id": 1, "name": "person"}, {"id": 2, "name": "N/A"}, {"id": 3, "name": "traffic light"}]
    assert map_by_name(model, [dict(c) for c in model]).label_to_id == {1: 1, 2: 2, 3: 3}
    cmap = map_by_name(model, [{"id": 0, "name": "Traffic_Light"}, {"id": 5, "name": "person"}])
    assert cmap.by_name and cmap.label_to_id == {1: 5, 3: 0} and cmap.unmatched == ["N/A"]
    assert normalize_name("  Potted_plant ") == "potted plant"
    with pytest.raises(ValueError, match="occurs twice"):
        map_by_name(model, [{"id": 0, "name": "person"}, {"id": 1, "name": "Person"}])
    with pytest.raises(ValueError, match="none of its 1 category names"):
        map_by_name(model, [{"id": 0, "name": "zebra"}], "z.json")


# ------------------------------------------------------------------------------------------ bad input
def truncated_png(path):
    import random

    rng = random.Random(0)
    img = Image.new("RGB", (64, 64))
    img.putdata([tuple(rng.randrange(256) for _ in range(3)) for _ in range(64 * 64)])
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "empty_folder",
        "only_text",
        "corrupt",
        "truncated",
        "truncated_workers",
        "json_no_images_dir",
        "images_missing",
        "no_common_name",
        "size_mismatch",
        "out_is_folder",
        "draw_over_inputs",
        "out_over_json",
        "not_an_image_file",
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(loaded, val, tmp_path, case):
    ann, images = val
    folder = tmp_path / "in"
    folder.mkdir()
    kw = {}
    if case == "missing":
        inputs, match = tmp_path / "nope", "nope: not found"
    elif case == "empty_folder":
        inputs, match = folder, "in: no images in this folder"
    elif case == "only_text":
        (folder / "readme.txt").write_text("x")
        inputs, match = folder, r"no images in this folder \(1 other files, e.g. readme.txt\)"
    elif case == "corrupt":
        shutil.copy(next(images.iterdir()), folder / "a.png")
        (folder / "b.png").write_bytes(b"this is not a png")
        inputs, match = folder, "b.png: unreadable or corrupt image"
    elif case.startswith("truncated"):
        shutil.copy(next(images.iterdir()), folder / "a.png")
        truncated_png(folder / "b.png")
        inputs, match = folder, "b.png: unreadable or corrupt image"
        kw = {"workers": 1} if case == "truncated_workers" else {}
    elif case == "json_no_images_dir":
        inputs, match = ann, "needs images_dir"
    elif case == "images_missing":
        inputs, match, kw = (
            VAL100 / "instances_val2014_100.json",
            "100 of the 100 images of .* are missing",
            {"images_dir": folder},
        )
    elif case == "no_common_name":
        data = json.loads(ann.read_text())
        data["categories"] = [{"id": 1, "name": "person"}, {"id": 2, "name": "car"}]
        data["annotations"] = []
        inputs, match, kw = (
            write_coco(tmp_path / "coco.json", data),
            "none of its 2 category names",
            {"images_dir": images},
        )
    elif case == "size_mismatch":
        data = json.loads(ann.read_text())
        data["images"][1]["width"] = 65
        inputs, match, kw = (
            write_coco(tmp_path / "coco.json", data),
            "image is 64x64, coco.json says 65x64",
            {"images_dir": images},
        )
    elif case == "out_is_folder":
        (tmp_path / "results.json").mkdir()
        inputs, match = images, "is a folder"
    elif case == "draw_over_inputs":
        inputs, match, kw = images, "would overwrite the images", {"draw_dir": images}
    elif case == "out_over_json":
        shutil.copy(ann, tmp_path / "results.json")
        inputs, match, kw = tmp_path / "results.json", "results.json: is one of the inputs", {"images_dir": images}
    else:
        (folder / "x.txt").write_text("x")
        inputs, match = folder / "x.txt", "x.txt: not an image file"
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises((ValueError, FileNotFoundError), match=match) as err:
        run(loaded, inputs, tmp_path / "results.json", draw_dir=kw.pop("draw_dir", tmp_path / "drawn"), **kw)
    assert "\n" not in str(err.value)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written


def test_draw_thresh_thins_the_pictures_never_the_results(loaded, val, tmp_path):
    """The pictures hold only the boxes scoring >= draw_thresh; the results JSON is the same whatever it is."""
    _, images = val
    every = run(loaded, images, tmp_path / "every.json", draw_dir=tmp_path / "every", draw_thresh=0.0)
    dets = json.loads((tmp_path / "every.json").read_text())
    scores = sorted(d["score"] for d in dets)
    thresh = scores[len(scores) // 2]  # the median score: about half the boxes drawn
    some = run(loaded, images, tmp_path / "some.json", draw_dir=tmp_path / "some", draw_thresh=thresh)
    none = run(loaded, images, tmp_path / "none.json", draw_dir=tmp_path / "none", draw_thresh=1.5)
    for name in ("some", "none"):
        assert json.loads((tmp_path / f"{name}.json").read_text()) == dets  # every detection >= score_thresh
    assert every["detections"] == some["detections"] == none["detections"] == len(dets) > 1
    assert every["boxes_drawn"] == len(dets) > some["boxes_drawn"] == sum(s >= thresh for s in scores) > 0
    assert none["boxes_drawn"] == 0 and every["drawn"] == some["drawn"] == none["drawn"] == 4

    def pixels(path):
        with Image.open(path) as img:
            return img.convert("RGB").tobytes()

    names = sorted(p.name for p in images.iterdir())
    assert all(pixels(tmp_path / "none" / n) == pixels(images / n) for n in names)  # no box above 1.5
    assert any(pixels(tmp_path / "some" / n) != pixels(tmp_path / "every" / n) for n in names)  # fewer boxes
    with pytest.raises(ValueError, match="draw_thresh must be >= 0"):
        run(loaded, images, tmp_path / "bad.json", draw_dir=tmp_path / "bad", draw_thresh=-0.1)


# ------------------------------------------------------------------------------------------ CLI
def test_cli_predict(tiny_teacher, val, tmp_path, capsys):
    _, images = val
    args = [
        "predict",
        str(images),
        "--checkpoint",
        str(tiny_teacher),
        "--out",
        str(tmp_path / "r.json"),
        "--score-thresh",
        "0",
        "--precision",
        "fp32",
        "--draw",
        str(tmp_path / "draw"),
        "--batch-size",
        "3",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'r.json'} and {tmp_path / 'r.images.json'}" in out and "on 4 images" in out
    assert "drew 4 images" in out and len(list((tmp_path / "draw").iterdir())) == 4
    assert "boxes (score >= 0.3)" in out  # the pictures' default threshold, not --score-thresh's
    drawn = int(out.split("drew 4 images with ")[1].split()[0])
    assert drawn < len(json.loads((tmp_path / "r.json").read_text()))
    assert main(args + ["--draw-thresh", "0", "--out", str(tmp_path / "r0.json")]) == 0
    assert f"with {len(json.loads((tmp_path / 'r0.json').read_text()))} boxes (score >= 0.0)" in capsys.readouterr().out
    assert main(["predict", str(tmp_path / "nope"), "--checkpoint", str(tiny_teacher), "--out", "x.json"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope: not found" in err
    assert main(["predict", str(images), "--out", str(tmp_path / "x.json")]) == 2
    assert "give --checkpoint FILE" in capsys.readouterr().err


def test_cli_model_and_weights_bad_input(tmp_path, val, capsys):
    """--model/--weights go through api.load_detector (end to end in tests/api/test_torchvision.py)."""
    _, images = val
    args = [
        "predict",
        str(images),
        "--model",
        "fasterrcnn_resnet50_fpn_v2",
        "--weights",
        str(tmp_path / "w.pth"),
        "--out",
        str(tmp_path / "r.json"),
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "w.pth: file not found" in err
    bad_name = ["predict", str(images), "--model", "fasterrcnn_r50", "--weights", "w.pth", "--out", "r.json"]
    assert main(bad_name) == 2 and "not a torchvision detector name" in capsys.readouterr().err
    assert main(args + ["--checkpoint", "c.pt"]) == 2 and "not both" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_predict_is_part_of_the_documented_api():
    import inspect

    assert "predict" in api.__all__ and len(inspect.getdoc(api.predict)) > 200
    assert "argparse" not in str(inspect.signature(api.predict))


def test_a_torchvision_coco_model_maps_to_yolo_style_ids(val, tmp_path):
    """Any LoadedModel works: a stock torchvision COCO detector (random weights, 91 outputs with 'N/A' slots)
    on a dataset with COCO names and YOLO-style ids 0..79, as coco128 imported with ``import-yolo``."""
    import torch
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights, fasterrcnn_mobilenet_v3_large_320_fpn

    from defeat.config import Config

    names = FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"]  # '__background__', 'person', ..., 'N/A'
    torch.manual_seed(0)
    detector = fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=91).eval()
    detector.roi_heads.score_thresh = 0.0  # random weights: every score is about 1/91
    detector.transform.min_size, detector.transform.max_size = (128,), 128  # fast
    model = api.LoadedModel(
        detector, Config(), "detector", [{"id": k, "name": names[k]} for k in range(1, 91)], "torchvision"
    )
    ann, images = val
    data = json.loads(ann.read_text())
    coco80 = [n for n in names[1:] if n != "N/A"]
    data["categories"] = [{"id": i, "name": n} for i, n in enumerate(coco80)]
    data["annotations"], data["images"] = [], data["images"][:2]  # 2 images (ids 1, 2: 0000.png, 0001.png)
    yolo = write_coco(tmp_path / "yolo.json", data)
    folder = tmp_path / "two"
    folder.mkdir()
    for im in data["images"]:
        shutil.copy(images / im["file_name"], folder / im["file_name"])
    run(model, folder, tmp_path / "own.json")  # the model's own ids, images 1, 2 in sorted name order
    mapped = run(model, yolo, tmp_path / "mapped.json", images_dir=images)
    assert mapped["mapped_by_name"] and mapped["unmatched"] == ["N/A"]
    own_dets = json.loads((tmp_path / "own.json").read_text())
    na_ids = {k for k in range(1, 91) if names[k] == "N/A"}
    assert mapped["dropped"] == sum(d["category_id"] in na_ids for d in own_dets)
    expected = [
        dict(d, category_id=coco80.index(names[d["category_id"]])) for d in own_dets if d["category_id"] not in na_ids
    ]
    assert json.loads((tmp_path / "mapped.json").read_text()) == expected and expected
