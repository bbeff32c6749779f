"""Tests for defeat.data.importers: YOLO and Pascal VOC -> COCO instances JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from defeat.data.importers import import_voc, import_yolo

COCO128 = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "coco128"
needs_coco128 = pytest.mark.skipif(not (COCO128 / "classes.txt").is_file(), reason="shared coco128 data not present")


# --------------------------------------------------------------------------- helpers


def _image(path: Path, size=(64, 48), fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (120, 30, 200)).save(path, format=fmt)
    return path


def _yolo_tree(tmp_path: Path, labels: dict[str, str], images=("a.jpg", "b.png"), classes=("cat", "dog", "bird")):
    """images/<name> (64x48), labels/<stem>.txt from ``labels``, classes.txt; returns the four paths."""
    for name in images:
        _image(tmp_path / "images" / name)
    (tmp_path / "labels").mkdir()
    for stem, text in labels.items():
        (tmp_path / "labels" / f"{stem}.txt").write_text(text)
    (tmp_path / "classes.txt").write_text("\n".join(classes) + "\n")
    return tmp_path / "images", tmp_path / "labels", tmp_path / "classes.txt", tmp_path / "out" / "coco.json"


def _voc_xml(filename, width, height, objects, path: Path) -> Path:
    parts = [f"<annotation><folder>VOC</folder><filename>{filename}</filename>"]
    parts.append(f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>")
    for name, box, difficult in objects:
        xmin, ymin, xmax, ymax = box
        parts.append(
            f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
            f"<difficult>{difficult}</difficult><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
            f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>"
        )
    parts.append("</annotation>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts))
    return path


def _voc_tree(tmp_path: Path):
    imgs, anns = tmp_path / "JPEGImages", tmp_path / "Annotations"
    _image(imgs / "000001.jpg", size=(100, 80))
    _image(imgs / "000002.jpg", size=(50, 40))
    _image(imgs / "000003.JPG", size=(30, 30))  # no xml -> image without annotations
    _voc_xml("000001.jpg", 100, 80, [("dog", (11, 21, 50, 60), 0), ("cat", (1, 1, 100, 80), 0)], anns / "000001.xml")
    _voc_xml("000002.jpg", 50, 40, [("person", (5, 5, 20, 30), 1), ("dog", (30, 10, 60, 40), 0)], anns / "000002.xml")
    return anns, imgs, tmp_path / "out" / "voc.json"


def _raises(match_file: str, fragment: str, fn, *args, out: Path, **kwargs) -> str:
    with pytest.raises(ValueError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert match_file in msg, msg
    assert fragment in msg, msg
    assert not out.exists()
    assert not out.parent.exists() or not list(out.parent.iterdir())
    return msg


# --------------------------------------------------------------------------- YOLO on coco128


@needs_coco128
def test_coco128_counts_and_pycocotools(tmp_path):
    from pycocotools.coco import COCO

    out = tmp_path / "coco128.json"
    summary = import_yolo(
        COCO128 / "images" / "train2017",
        COCO128 / "labels" / "train2017",
        COCO128 / "classes.txt",
        out,
        supercategories={"person": "human"},
    )
    assert summary == {"images": 128, "annotations": 929, "categories": 80, "out": str(out), "clipped": 0}
    coco = COCO(str(out))
    assert len(coco.getImgIds()) == 128 and len(coco.getAnnIds()) == 929 and len(coco.getCatIds()) == 80
    data = json.loads(out.read_text())
    names = (COCO128 / "classes.txt").read_text().split("\n")
    assert [c["id"] for c in data["categories"]] == list(range(1, 81))
    assert [c["name"] for c in data["categories"]] == names[:80]
    assert data["categories"][0]["supercategory"] == "human"
    assert data["categories"][1]["supercategory"] == names[1]
    file_names = [im["file_name"] for im in data["images"]]
    assert file_names == sorted(file_names) and all(f.endswith(".jpg") for f in file_names)  # .DS_Store ignored
    assert [im["id"] for im in data["images"]] == list(range(1, 129))
    assert [a["id"] for a in data["annotations"]] == list(range(1, 930))
    for ann in data["annotations"]:
        img = coco.imgs[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        assert x >= 0 and y >= 0 and w > 0 and h > 0
        assert x + w <= img["width"] + 1e-9 and y + h <= img["height"] + 1e-9
        assert ann["area"] == pytest.approx(w * h) and ann["iscrowd"] == 0

    # Spot-check: a manual conversion of label lines of the first and last image.
    for image in (data["images"][0], data["images"][-1]):
        label = COCO128 / "labels" / "train2017" / (Path(image["file_name"]).stem + ".txt")
        lines = [ln.split() for ln in label.read_text().splitlines() if ln.strip()]
        with Image.open(COCO128 / "images" / "train2017" / image["file_name"]) as im:
            W, H = im.size
        assert (image["width"], image["height"]) == (W, H)
        anns = [a for a in data["annotations"] if a["image_id"] == image["id"]]
        assert len(anns) == len(lines)
        for fields, ann in zip(lines, anns):
            c, xc, yc, w, h = int(fields[0]), *map(float, fields[1:])
            expected = [(xc - w / 2) * W, (yc - h / 2) * H, w * W, h * H]
            assert ann["category_id"] == c + 1
            assert ann["bbox"] == pytest.approx(expected, abs=1e-3)
    first = data["annotations"][0]  # 000000000009.txt line 1: "45 0.479492 0.688771 0.955609 0.5955" on 640x480
    assert data["images"][0] == {"id": 1, "file_name": "000000000009.jpg", "width": 640, "height": 480}
    assert first["category_id"] == 46
    assert first["bbox"] == pytest.approx([1.08, 187.69008, 611.58976, 285.84], abs=1e-4)


# --------------------------------------------------------------------------- YOLO on small trees


def test_yolo_small_tree_conversion_and_clipping(tmp_path):
    labels = {
        "a": "0 0.5 0.5 0.5 0.5\n\n2 0.1 0.5 0.4 0.2\n",  # second box sticks out on the left -> clipped
        "b": "1 0.25 0.75 0.5 0.5\n",
    }
    images, labels_dir, classes, out = _yolo_tree(tmp_path, labels, images=("a.jpg", "b.png", "c.bmp"))
    (tmp_path / "images" / ".DS_Store").write_bytes(b"\0junk")
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    (labels_dir / "labels.cache").write_bytes(b"ignored")
    summary = import_yolo(images, labels_dir, classes, out)
    assert summary == {"images": 3, "annotations": 3, "categories": 3, "out": str(out), "clipped": 1}
    data = json.loads(out.read_text())
    assert [(i["id"], i["file_name"], i["width"], i["height"]) for i in data["images"]] == [
        (1, "a.jpg", 64, 48),
        (2, "b.png", 64, 48),
        (3, "c.bmp", 64, 48),
    ]
    anns = data["annotations"]
    assert anns[0]["bbox"] == pytest.approx([16, 12, 32, 24]) and anns[0]["category_id"] == 1
    assert anns[1]["bbox"] == pytest.approx([0, 19.2, 0.3 * 64, 9.6])  # x from -6.4 clipped to 0
    assert anns[1]["area"] == pytest.approx(0.3 * 64 * 9.6) and anns[1]["category_id"] == 3
    assert anns[2]["image_id"] == 2 and anns[2]["bbox"] == pytest.approx([0, 24, 32, 24])
    assert data["categories"] == [
        {"id": 1, "name": "cat", "supercategory": "cat"},
        {"id": 2, "name": "dog", "supercategory": "dog"},
        {"id": 3, "name": "bird", "supercategory": "bird"},
    ]


def test_yolo_uppercase_extension_nested_dirs_and_classes_txt_in_labels(tmp_path):
    _image(tmp_path / "images" / "sub" / "X.JPEG")
    _image(tmp_path / "images" / "top.Png")
    (tmp_path / "labels" / "sub").mkdir(parents=True)
    (tmp_path / "labels" / "sub" / "X.txt").write_text("0 0.5 0.5 1.0000005 1\n")  # tiny overshoot: tolerated
    (tmp_path / "labels" / "classes.txt").write_text("thing\n")
    out = tmp_path / "o.json"
    summary = import_yolo(tmp_path / "images", tmp_path / "labels", tmp_path / "labels" / "classes.txt", out)
    assert summary["images"] == 2 and summary["annotations"] == 1 and summary["clipped"] == 0
    data = json.loads(out.read_text())
    assert [i["file_name"] for i in data["images"]] == ["sub/X.JPEG", "top.Png"]
    assert data["annotations"][0]["bbox"] == pytest.approx([0, 0, 64, 48])


@pytest.mark.parametrize(
    "line, fragment",
    [
        ("0 0.5 0.5 0.5", "line 3: expected 5 fields 'class xc yc w h', got 4"),
        ("0 0.5 0.5 0.5 0.5 0.1", "line 3: expected 5 fields 'class xc yc w h', got 6"),
        ("0 0.5 abc 0.5 0.5", "line 3: non-numeric value"),
        ("0 0.5 nan 0.5 0.5", "line 3: non-finite value"),
        ("0 1.2 0.5 0.5 0.5", "line 3: xc=1.2 outside [0, 1]"),
        ("0 0.5 -0.01 0.5 0.5", "line 3: yc=-0.01 outside [0, 1]"),
        ("3 0.5 0.5 0.5 0.5", "line 3: class index 3 outside the class list"),
        ("-1 0.5 0.5 0.5 0.5", "line 3: class index -1 outside the class list"),
        ("1.5 0.5 0.5 0.5 0.5", "line 3: class index '1.5' is not an integer"),
        ("0 0.5 0.5 0 0.5", "line 3: non-positive box size"),
        ("0 0.5 0.5 0.5 -0.0", "line 3: non-positive box size"),
    ],
)
def test_yolo_bad_label_line(tmp_path, line, fragment):
    images, labels, classes, out = _yolo_tree(tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n1 0.5 0.5 0.3 0.3\n" + line + "\n"})
    _raises(str(labels / "a.txt"), fragment, import_yolo, images, labels, classes, out, out=out)


def test_yolo_label_without_image(tmp_path):
    images, labels, classes, out = _yolo_tree(tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n", "ghost": "0 0.5 0.5 0.2 0.2\n"})
    _raises(str(labels / "ghost.txt"), "no matching image", import_yolo, images, labels, classes, out, out=out)


def test_yolo_corrupt_image(tmp_path):
    images, labels, classes, out = _yolo_tree(tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n"})
    (images / "b.png").write_bytes(b"this is not a png")
    _raises(str(images / "b.png"), "cannot read image", import_yolo, images, labels, classes, out, out=out)


def test_yolo_bad_classes_and_dirs(tmp_path):
    images, labels, classes, out = _yolo_tree(tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n"})
    classes.write_text("cat\n\ndog\n")
    _raises(str(classes), "line 2: empty class name", import_yolo, images, labels, classes, out, out=out)
    classes.write_text("cat\ndog\ncat\n")
    _raises(str(classes), "line 3: duplicate class name 'cat'", import_yolo, images, labels, classes, out, out=out)
    classes.write_text("cat\ndog\n")
    _raises(
        "supercategories",
        "'cow'",
        import_yolo,
        images,
        labels,
        classes,
        out,
        out=out,
        supercategories={"cow": "animal"},
    )
    _raises(str(tmp_path / "nope.txt"), "not found", import_yolo, images, labels, tmp_path / "nope.txt", out, out=out)
    empty = tmp_path / "empty"
    empty.mkdir()
    _raises(str(empty), "no image files", import_yolo, empty, labels, classes, out, out=out)


def test_yolo_error_leaves_existing_output_untouched(tmp_path):
    images, labels, classes, out = _yolo_tree(tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n"})
    import_yolo(images, labels, classes, out)
    before = out.read_bytes()
    (labels / "b.txt").write_text("7 0.5 0.5 0.2 0.2\n")
    with pytest.raises(ValueError, match="b.txt line 1"):
        import_yolo(images, labels, classes, out)
    assert out.read_bytes() == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["coco.json"]  # no temp files left behind


# --------------------------------------------------------------------------- Pascal VOC


def test_voc_round_trip(tmp_path):
    from pycocotools.coco import COCO

    anns, imgs, out = _voc_tree(tmp_path)
    summary = import_voc(anns, imgs, out)
    assert summary == {
        "images": 3,
        "annotations": 3,
        "categories": 3,
        "out": str(out),
        "clipped": 1,
        "skipped_difficult": 1,
    }
    data = json.loads(out.read_text())
    assert [(i["id"], i["file_name"], i["width"], i["height"]) for i in data["images"]] == [
        (1, "000001.jpg", 100, 80),
        (2, "000002.jpg", 50, 40),
        (3, "000003.JPG", 30, 30),
    ]
    assert [c["name"] for c in data["categories"]] == ["cat", "dog", "person"]  # sorted names (incl. skipped)
    a = data["annotations"]
    # 1-based inclusive: xmin=11..xmax=50 -> x=10, w=40
    assert (a[0]["image_id"], a[0]["category_id"], a[0]["bbox"]) == (1, 2, [10.0, 20.0, 40.0, 40.0])
    assert a[0]["area"] == 1600.0 and a[0]["iscrowd"] == 0 and "difficult" not in a[0]
    assert a[1]["bbox"] == [0.0, 0.0, 100.0, 80.0] and a[1]["category_id"] == 1  # full image, not clipped
    assert a[2]["bbox"] == [29.0, 9.0, 21.0, 31.0]  # xmax=60 > width 50: clipped
    coco = COCO(str(out))
    assert len(coco.getAnnIds(imgIds=[2])) == 1

    # Reverse conversion reproduces the VOC coordinates of unclipped boxes.
    x, y, w, h = a[0]["bbox"]
    assert (x + 1, y + 1, x + w, y + h) == (11, 21, 50, 60)


def test_voc_keep_difficult_and_given_classes(tmp_path):
    anns, imgs, out = _voc_tree(tmp_path)
    summary = import_voc(anns, imgs, out, classes=["person", "dog", "cat", "horse"], skip_difficult=False)
    assert summary["annotations"] == 4 and summary["skipped_difficult"] == 0 and summary["categories"] == 4
    data = json.loads(out.read_text())
    assert [(c["id"], c["name"]) for c in data["categories"]] == [(1, "person"), (2, "dog"), (3, "cat"), (4, "horse")]
    difficult = [a for a in data["annotations"] if a.get("difficult")]
    assert len(difficult) == 1
    assert difficult[0]["category_id"] == 1 and difficult[0]["iscrowd"] == 0 and difficult[0]["difficult"] == 1
    assert difficult[0]["bbox"] == [4.0, 4.0, 16.0, 26.0]


@pytest.mark.parametrize(
    "xml, fragment",
    [
        ("<annotation><filename>000002.jpg</filename><size>", "invalid XML"),
        ("<annotation><filename>000002.jpg</filename></annotation>", "missing <size>"),
        (
            "<annotation><filename>000002.jpg</filename><size><width>50</width></size></annotation>",
            "missing <size><height>",
        ),
        (
            "<annotation><filename>000002.jpg</filename><size><width>50</width><height>40</height></size>"
            "<object><name>dog</name></object></annotation>",
            "object 1 (dog): missing <bndbox>",
        ),
        (
            "<annotation><filename>000002.jpg</filename><size><width>50</width><height>40</height></size>"
            "<object><name>dog</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax></bndbox></object></annotation>",
            "object 1 (dog): missing <bndbox><ymax>",
        ),
        (
            "<annotation><filename>000002.jpg</filename><size><width>50</width><height>40</height></size>"
            "<object><name>dog</name><bndbox><xmin>1</xmin><ymin>a</ymin><xmax>9</xmax><ymax>9</ymax></bndbox>"
            "</object></annotation>",
            "<bndbox><ymin> is not a number",
        ),
    ],
    ids=["unparsable", "no-size", "no-height", "no-bndbox", "no-ymax", "non-numeric"],
)
def test_voc_bad_xml(tmp_path, xml, fragment):
    anns, imgs, out = _voc_tree(tmp_path)
    (anns / "000002.xml").write_text(xml)
    _raises(str(anns / "000002.xml"), fragment, import_voc, anns, imgs, out, out=out)


@pytest.mark.parametrize(
    "objects, kwargs, fragment",
    [
        ([("dog", (20, 5, 20, 30), 0)], {}, "object 1 (dog): xmax=20 <= xmin=20"),
        ([("dog", (2, 5, 8, 9), 0), ("dog", (5, 30, 20, 10), 0)], {}, "object 2 (dog): ymax=10 <= ymin=30"),
        (
            [("cow", (5, 5, 20, 30), 0)],
            {"classes": ["dog", "person", "cat"]},
            "object 1 (cow): unknown class name 'cow'",
        ),
    ],
)
def test_voc_bad_objects(tmp_path, objects, kwargs, fragment):
    anns, imgs, out = _voc_tree(tmp_path)
    _voc_xml("000002.jpg", 50, 40, objects, anns / "000002.xml")
    _raises(str(anns / "000002.xml"), fragment, import_voc, anns, imgs, out, out=out, **kwargs)


def test_voc_image_problems(tmp_path):
    anns, imgs, out = _voc_tree(tmp_path)
    _voc_xml("missing.jpg", 50, 40, [], anns / "missing.xml")
    _raises(str(anns / "missing.xml"), "not found", import_voc, anns, imgs, out, out=out)
    (anns / "missing.xml").unlink()
    _voc_xml("000002.jpg", 51, 40, [], anns / "000002.xml")
    _raises(str(anns / "000002.xml"), "does not match image", import_voc, anns, imgs, out, out=out)
    _voc_xml("000002.jpg", 50, 40, [], anns / "000002.xml")
    (imgs / "000001.jpg").write_bytes(b"\xff\xd8 truncated garbage")
    _raises(str(imgs / "000001.jpg"), "cannot read image", import_voc, anns, imgs, out, out=out)


def test_voc_filename_fallback_to_xml_stem(tmp_path):
    anns, imgs, out = _voc_tree(tmp_path)
    (anns / "000002.xml").write_text(
        "<annotation><size><width>50</width><height>40</height></size><object><name>dog</name>"
        "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>10</xmax><ymax>10</ymax></bndbox></object></annotation>"
    )
    summary = import_voc(anns, imgs, out)
    assert summary["annotations"] == 3 and summary["clipped"] == 0
    data = json.loads(out.read_text())
    assert data["annotations"][-1]["image_id"] == 2 and data["annotations"][-1]["bbox"] == [0.0, 0.0, 10.0, 10.0]
    _voc_xml("000002.jpg", 50, 40, [], anns / "copy.xml")
    other = tmp_path / "out2" / "x.json"
    _raises(str(anns / "copy.xml"), "already annotated by", import_voc, anns, imgs, other, out=other)
