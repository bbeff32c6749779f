"""Tests of the synthetic detection benchmark generator (defeat.data.synth)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defeat.data import synth
from defeat.data.synth import SIZE_BUCKETS, SYNTH_CATEGORIES, generate_synthetic_dataset, render_examples

SMALL = dict(num_train=14, num_val=6, progress=False)


def _bucket(area: float) -> str:
    return next(name for name, lo, hi in SIZE_BUCKETS if lo <= area < hi)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth_a")
    return out, generate_synthetic_dataset(out, seed=0, workers=1, **SMALL)


def _load(root: Path, split: str) -> dict:
    return json.loads((root / f"{split}.json").read_text())


def test_same_seed_same_bytes_whatever_the_worker_count(small_set, tmp_path):
    root, _ = small_set
    summary = generate_synthetic_dataset(tmp_path, seed=0, workers=2, **SMALL)
    assert _files(tmp_path) == _files(root)
    assert summary["splits"]["train"]["num_images"] == 14


def test_different_seed_differs(small_set, tmp_path):
    root, _ = small_set
    generate_synthetic_dataset(tmp_path, seed=1, workers=1, num_train=2, num_val=1, progress=False)
    assert (tmp_path / "train.json").read_bytes() != (root / "train.json").read_bytes()
    assert (tmp_path / "train" / "000000.jpg").read_bytes() != (root / "train" / "000000.jpg").read_bytes()
    assert (tmp_path / "val" / "000000.jpg").read_bytes() != (root / "val" / "000000.jpg").read_bytes()


def test_categories_have_look_alike_groups():
    assert [c["id"] for c in SYNTH_CATEGORIES] == list(range(1, len(SYNTH_CATEGORIES) + 1))
    assert len({c["name"] for c in SYNTH_CATEGORIES}) == len(SYNTH_CATEGORIES) >= 8
    per_super = Counter(c["supercategory"] for c in SYNTH_CATEGORIES)
    assert len(per_super) >= 3 and min(per_super.values()) >= 2


def test_json_is_valid_coco_and_boxes_are_sane(small_set):
    from pycocotools.coco import COCO

    root, summary = small_set
    for split in ("train", "val"):
        coco = COCO(str(root / f"{split}.json"))
        data = _load(root, split)
        assert data["categories"] == SYNTH_CATEGORIES
        assert len(coco.getImgIds()) == summary["splits"][split]["num_images"]
        assert len(coco.getAnnIds()) == summary["splits"][split]["num_boxes"] > 0
        assert len({a["id"] for a in data["annotations"]}) == len(data["annotations"])
        sizes = {img["id"]: (img["width"], img["height"]) for img in data["images"]}
        for a in data["annotations"]:
            x, y, w, h = a["bbox"]
            width, height = sizes[a["image_id"]]
            assert all(isinstance(v, float) for v in a["bbox"])
            assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= width and y + h <= height
            assert 0 < a["area"] <= w * h + 1e-6
            assert a["iscrowd"] == 0 and 1 <= a["category_id"] <= len(SYNTH_CATEGORIES)
            assert 0.0 <= a["occlusion"] <= synth.MAX_OCCLUSION


def test_ground_truth_scores_perfect_ap(small_set, capsys):
    """The JSON works end to end with COCOeval (area buckets, ids): GT as detections gives AP 1."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    root, _ = small_set
    gt = COCO(str(root / "val.json"))
    dets = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
        for a in gt.dataset["annotations"]
    ]
    ev = COCOeval(gt, gt.loadRes(dets), "bbox")
    ev.evaluate(), ev.accumulate(), ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)


def test_images_open_at_declared_size(small_set):
    root, _ = small_set
    for split in ("train", "val"):
        for img in _load(root, split)["images"]:
            with Image.open(root / split / img["file_name"]) as im:
                assert im.format == "JPEG" and im.size == (img["width"], img["height"]) and im.mode == "RGB"


def test_sizes_overlaps_and_counts(small_set):
    root, summary = small_set
    anns = _load(root, "train")["annotations"] + _load(root, "val")["annotations"]
    assert {_bucket(a["area"]) for a in anns} == {"small", "medium", "large"}
    assert sum(summary["splits"][s]["per_size"]["large"] for s in ("train", "val")) > 0
    by_image: dict[int, list] = {}
    for a in _load(root, "train")["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a["bbox"])

    def overlaps(a, b):
        return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]

    pairs = sum(overlaps(a, b) for boxes in by_image.values() for i, a in enumerate(boxes) for b in boxes[:i])
    assert pairs > 0
    assert any(a["occlusion"] > 0.1 for a in anns)
    per_image = [len(v) for v in by_image.values()]
    assert 2 <= np.mean(per_image) <= 8


def test_visible_box_is_tight_and_occlusion_measured():
    size = 100
    square = [("body", synth._rect(-0.5, -0.5, 0.5, 0.5), 0.0)]
    lower = synth.rasterize(square, 20.0, 20.0, 0.0, 50.0, 50.0)  # covers pixels [40, 60)
    ys, xs, py, px = lower.clip(size)
    obj = synth.PlacedObject(
        0, lower, lower.body[py, px].copy(), ys.start, xs.start, float(lower.body.sum()), 50.0, 50.0, 10.0
    )
    (ann,) = synth.annotate([obj], size)
    # PIL fills polygon edges inclusively: one extra sub-pixel row/column (+1/4 px), hence the tolerance.
    assert ann["bbox"] == [40.0, 40.0, 20.0, 20.0] and ann["area"] == pytest.approx(400.0, rel=0.03)
    synth.occlude([obj], synth.rasterize(square, 20.0, 20.0, 0.0, 60.0, 50.0))  # hides the right half
    (ann,) = synth.annotate([obj], size)
    assert ann["bbox"] == [40.0, 40.0, 10.0, 20.0] and ann["occlusion"] == pytest.approx(0.5, abs=0.02)
    synth.occlude([obj], synth.rasterize(square, 20.0, 20.0, 0.0, 45.0, 45.0))  # and most of the left half
    assert synth.annotate([obj], size) == []  # 87.5% hidden: not annotated


def test_interrupted_rerun_leaves_no_stale_json(small_set, tmp_path, monkeypatch):
    generate_synthetic_dataset(tmp_path, seed=0, workers=1, num_train=3, num_val=2, progress=False)
    calls = []

    def failing(task):
        calls.append(task)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(task)

    real = synth._make_image
    monkeypatch.setattr(synth, "_make_image", failing)
    with pytest.raises(KeyboardInterrupt):
        generate_synthetic_dataset(tmp_path, seed=5, workers=1, num_train=3, num_val=2, progress=False)
    assert not (tmp_path / "train.json").exists()
    assert not list((tmp_path / "train").glob(".*.tmp"))


def test_bad_arguments_raise_value_error(tmp_path):
    with pytest.raises(ValueError):
        generate_synthetic_dataset(tmp_path, min_objects=5, max_objects=2, progress=False)
    with pytest.raises(ValueError):
        generate_synthetic_dataset(tmp_path, image_size=32, progress=False)


def test_image_size_is_configurable(tmp_path):
    generate_synthetic_dataset(tmp_path, seed=0, num_train=2, num_val=1, image_size=256, workers=1, progress=False)
    data = _load(tmp_path, "train")
    assert all(img["width"] == img["height"] == 256 for img in data["images"])
    with Image.open(tmp_path / "train" / "000000.jpg") as im:
        assert im.size == (256, 256)


def test_render_examples(small_set, tmp_path):
    root, _ = small_set
    out = render_examples(root, tmp_path / "fig.png", n=6)
    assert out.stat().st_size <= 300_000
    with Image.open(out) as im:
        assert im.size == (3 * 320 + 8, 2 * 320 + 4)


@pytest.mark.slow
def test_default_size_covers_all_size_buckets(tmp_path):
    # no wall-clock bound here: timings on shared machines are noise (README "Measured results" records the speed)
    summary = generate_synthetic_dataset(tmp_path, seed=0, progress=False)
    train = summary["splits"]["train"]
    assert train["num_images"] == 600 and summary["splits"]["val"]["num_images"] == 150
    assert min(train["per_size"].values()) >= 0.08 * train["num_boxes"]
    assert min(train["per_class"].values()) >= 0.07 * train["num_boxes"]
