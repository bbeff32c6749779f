"""COCO error analysis: exact agreement with a plain reference of the algorithm, hand-made cases, bad input."""

from __future__ import annotations

import contextlib
import copy
import io
import json

import numpy as np
import pytest

from defeat.analysis import coco_errors as ce
from tests.conftest import VAL100

DATA = VAL100  # the committed copy of the COCO val2014-100 pair (tests/fixtures)
GT_FILE = DATA / "instances_val2014_100.json"
RES_FILE = DATA / "instances_val2014_fakebbox100_results.json"
needs_data = pytest.mark.skipif(not GT_FILE.is_file(), reason="tests/fixtures/coco-val2014-100 missing")


# ------------------------------------------------------------------ straightforward reference (pycocotools)


def reference_curves(
    gt: dict,
    results: list[dict],
    semantics: str = "mmdet",
    restrict: bool = True,
    only: set[int] | None = None,
    areas=ce.DEFAULT_AREAS,
) -> np.ndarray:
    """mmdetection's algorithm written out on pycocotools with deep copies (``restrict``: catIds=[k] passes).

    Segmentations are dropped first: a bbox evaluation never reads them, and deep-copying them is slow.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = [[0, areas[2]], [0, areas[0]], [areas[0], areas[1]], [areas[1], areas[2]]]

    def run(cg, cd, ious, cat_ids=None):
        ev = COCOeval(cg, cd, "bbox")
        ev.params.iouThrs, ev.params.maxDets, ev.params.areaRng = np.array(ious), [100], rng
        if cat_ids is not None:
            ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        return ev.eval["precision"][..., 0]

    gt = dict(gt, annotations=[{k: v for k, v in a.items() if k != "segmentation"} for a in gt["annotations"]])
    with contextlib.redirect_stdout(io.StringIO()):
        cg = COCO()
        cg.dataset = copy.deepcopy(gt)
        cg.createIndex()
        cd = cg.loadRes(copy.deepcopy(results))
        ps = run(cg, cd, [0.75, 0.5, 0.1])
        ps = np.concatenate([ps, np.zeros((4, *ps.shape[1:]))])
        cat_ids = sorted(cg.getCatIds())
        for k, c in enumerate(cat_ids):
            if only is not None and c not in only:
                continue
            dt = copy.deepcopy(cd)
            dt.dataset["annotations"] = [a for a in dt.dataset["annotations"] if a["category_id"] == c]
            dt.createIndex()
            sup = cg.loadCats(c)[0].get("supercategory")
            same = set(cg.getCatIds(supNms=[sup])) if sup else {c}
            for row, forgiven in ((3, same), (4, None)):
                g = copy.deepcopy(cg)
                for a in g.dataset["annotations"]:
                    if a["category_id"] != c and (forgiven is None or a["category_id"] in forgiven):
                        if semantics == "mmdet":
                            a["ignore"], a["iscrowd"] = 1, 1
                        else:  # ignored, ordinary IoU, one match: outside every area range
                            a["area"] = -1.0
                        a["category_id"] = c
                g.createIndex()
                p = run(g, copy.deepcopy(dt), [0.1], [c] if restrict else None)
                ps[row, :, k, :] = p[0, :, 0 if restrict else k, :]
    ps[ps == -1] = 0
    ps[5] = ps[4] > 0
    ps[6] = 1
    return ps


@pytest.fixture(scope="module")
def real():
    gt = json.loads(GT_FILE.read_text())
    results = json.loads(RES_FILE.read_text())
    return gt, results, ce.validate_detections(results, gt, RES_FILE)


@needs_data
@pytest.mark.parametrize("semantics", ce.SEMANTICS)
def test_real_data_equals_reference(real, semantics):
    gt, results, dets = real
    ref = reference_curves(gt, results, semantics)
    for engine in ce.ENGINES:
        ours = ce.error_curves(gt, dets, semantics=semantics, engine=engine)
        assert ours.precision.shape == (7, 101, 80, 4)
        np.testing.assert_allclose(ours.precision, ref, rtol=0, atol=1e-12)
    assert ours.cat_ids == sorted(c["id"] for c in gt["categories"])
    # the data exercise every band: confusions inside a supercategory, across, and background
    vals = ours.overall_values()[:, 0]
    assert vals[0] < vals[1] < vals[2] <= vals[3] < vals[4] <= vals[5] < vals[6] == 1


@needs_data
def test_main_pass_matches_pycocotools_stats(real):
    """C75/C50 of the main pass are COCOeval's AP@0.75/AP@0.5 (over categories with ground truth)."""
    gt, _, dets = real
    ours = ce.error_curves(gt, dets)
    has_gt = np.isin(ours.cat_ids, [a["category_id"] for a in gt["annotations"]])
    ap = ours.values()[:, has_gt, 0].mean(axis=1)
    assert abs(ap[1] - 0.69697) < 5e-6 and abs(ap[0] - 0.57298) < 5e-6
    # overall counts the 10 categories without ground truth as 0
    np.testing.assert_allclose(ours.overall_values()[1, 0], ap[1] * has_gt.sum() / len(has_gt), atol=1e-12)


@needs_data
def test_restricted_passes_equal_full_passes(real):
    """Restricting Sim/Oth to category k (and its images) changes nothing against mmdetection's full passes."""
    gt, results, dets = real
    cats = {53, 31}  # apple, backpack
    full = reference_curves(gt, results, restrict=False, only=cats)
    ours = ce.error_curves(gt, dets).precision
    for k, c in enumerate(sorted(x["id"] for x in gt["categories"])):
        if c in cats:
            np.testing.assert_allclose(ours[:, :, k], full[:, :, k], rtol=0, atol=1e-12)


@needs_data
def test_workers_and_areas(real):
    gt, results, dets = real
    one = ce.error_curves(gt, dets, areas=(20.0**2, 80.0**2, 1e10))
    two = ce.error_curves(gt, dets, areas=(20.0**2, 80.0**2, 1e10), workers=2)
    np.testing.assert_array_equal(one.precision, two.precision)
    ref = reference_curves(gt, results, areas=(20.0**2, 80.0**2, 1e10), only={1, 62})
    for k, c in enumerate(one.cat_ids):
        if c in (1, 62):
            np.testing.assert_allclose(one.precision[:, :, k], ref[:, :, k], rtol=0, atol=1e-12)


# ------------------------------------------------------------------ hand-made cases with known bands

CATS = [
    {"id": 1, "name": "apple", "supercategory": "fruit"},
    {"id": 2, "name": "orange", "supercategory": "fruit"},
    {"id": 3, "name": "car", "supercategory": "vehicle"},
    {"id": 4, "name": "bus", "supercategory": "vehicle"},
]


def tiny_gt(anns, cats=CATS):
    full = [
        dict(
            id=i + 1,
            image_id=a[0],
            category_id=a[1],
            bbox=list(a[2]),
            area=a[2][2] * a[2][3],
            iscrowd=a[3] if len(a) > 3 else 0,
        )
        for i, a in enumerate(anns)
    ]
    return {
        "images": [{"id": 1, "width": 640, "height": 480}, {"id": 2, "width": 640, "height": 480}],
        "categories": copy.deepcopy(cats),
        "annotations": full,
    }


def det(cat, box, score, img=1):
    return {"image_id": img, "category_id": cat, "bbox": list(box), "score": score}


APPLE, ORANGE, CAR = (10, 10, 100, 100), (300, 10, 100, 100), (10, 300, 100, 100)


def apple_bands(gt, results, semantics="mmdet", engine="faster"):
    dets = ce.validate_detections(results, gt, "t.json")
    res = ce.error_curves(gt, dets, semantics=semantics, engine=engine)
    ref = reference_curves(gt, results, semantics)
    np.testing.assert_allclose(res.precision, ref, rtol=0, atol=1e-12)
    return res.precision[:, :, 0, 0]  # apple, all areas: [7, 101]


@pytest.mark.parametrize("engine", ce.ENGINES)
def test_each_error_moves_area_into_its_band(engine):
    """Higher-scored false positives on a look-alike, on another class and on background, then the true apple."""
    gt = tiny_gt([(1, 1, APPLE), (1, 2, ORANGE), (1, 3, CAR)])
    results = [det(1, ORANGE, 0.9), det(1, CAR, 0.8), det(1, (500, 300, 60, 60), 0.7), det(1, APPLE, 0.6)]
    ps = apple_bands(gt, results, engine=engine)
    expected = [1 / 4, 1 / 4, 1 / 4, 1 / 3, 1 / 2, 1, 1]  # C75 C50 Loc Sim Oth BG FN, flat in recall
    for b, value in enumerate(expected):
        np.testing.assert_allclose(ps[b], value, atol=1e-12, err_msg=ce.BANDS[b])


def test_poor_localisation_is_loc_not_c50():
    gt = tiny_gt([(1, 1, APPLE)])
    ps = apple_bands(gt, [det(1, (10, 10, 100, 30), 0.9)])  # IoU 0.3
    np.testing.assert_allclose(ps[:3].mean(axis=1), [0, 0, 1], atol=1e-12)


def test_crowd_forgiveness_absorbs_many_detections_mmdet_only():
    """Two apple detections on one orange: mmdet forgives both (crowd); matlab forgives one (ignored, one match)."""
    gt = tiny_gt([(1, 1, APPLE), (1, 2, ORANGE)])
    results = [det(1, ORANGE, 0.9), det(1, (302, 12, 98, 98), 0.8), det(1, APPLE, 0.6)]
    mm = apple_bands(gt, results, "mmdet")
    ml = apple_bands(gt, results, "matlab")
    np.testing.assert_allclose(mm[2], 1 / 3, atol=1e-12)
    np.testing.assert_allclose(mm[3], 1.0, atol=1e-12)
    np.testing.assert_allclose(ml[3], 1 / 2, atol=1e-12)


def test_crowd_iou_is_over_detection_area():
    """A small apple box inside a large car: IoU 0.04 < 0.1, but intersection over the detection is 1."""
    gt = tiny_gt([(1, 1, APPLE), (1, 3, (300, 200, 300, 250))])
    results = [det(1, (400, 300, 50, 60), 0.9), det(1, APPLE, 0.6)]
    np.testing.assert_allclose(apple_bands(gt, results, "mmdet")[4], 1.0, atol=1e-12)
    np.testing.assert_allclose(apple_bands(gt, results, "matlab")[4], 0.5, atol=1e-12)


def test_missed_objects_and_missing_categories():
    """Half the apples found: precision 1 up to recall 0.5 then 0; 'bus' has no ground truth and counts as 0."""
    gt = tiny_gt([(1, 1, APPLE), (2, 1, APPLE)])
    ps = apple_bands(gt, [det(1, APPLE, 0.9), det(1, (400, 300, 50, 50), 0.1, img=2)])
    np.testing.assert_allclose(ps[2], np.where(np.linspace(0, 1, 101) <= 0.5, 1.0, 0.0), atol=1e-12)
    dets = ce.validate_detections([det(1, APPLE, 0.9), det(4, CAR, 0.5)], gt, "t.json")
    res = ce.error_curves(gt, dets)
    bus = res.precision[:, :, res.cat_names.index("bus"), 0]
    np.testing.assert_array_equal(bus.mean(axis=1), [0, 0, 0, 0, 0, 0, 1])
    np.testing.assert_allclose(res.overall_values()[2, 0], res.values()[2, :, 0].sum() / 4, atol=1e-12)


def test_without_supercategory_sim_equals_loc():
    cats = [{"id": c["id"], "name": c["name"]} for c in CATS]
    gt = tiny_gt([(1, 1, APPLE), (1, 2, ORANGE)], cats)
    dets = ce.validate_detections([det(1, ORANGE, 0.9), det(1, APPLE, 0.6)], gt, "t.json")
    res = ce.error_curves(gt, dets)
    np.testing.assert_array_equal(res.precision[3], res.precision[2])
    assert res.precision[4, :, 0, 0].mean() == 1.0
    assert ce.supercategory_members(cats)[1] == frozenset({1})
    assert ce.supercategory_members(CATS)[1] == frozenset({1, 2})


def test_score_threshold_drops_detections():
    gt = tiny_gt([(1, 1, APPLE)])
    dets = ce.validate_detections([det(1, ORANGE, 0.2), det(1, APPLE, 0.6)], gt, "t.json", score_thr=0.5)
    assert [d["score"] for d in dets] == [0.6] and dets[0]["id"] == 2 and dets[0]["area"] == 100 * 100


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "results, message",
    [
        ([det(1, APPLE, 0.9, img=99)], "item 0 has image_id 99, which is not in the ground truth"),
        ([det(1, APPLE, 0.9, img="1")], "item 0 has string image_id '1'"),
        ([det(1, APPLE, 0.9), det(42, APPLE, 0.9)], "item 1 has category_id 42, which is not in the ground truth"),
        ([], "contains no detections"),
        ({"bbox_mAP": 0.39, "bbox_mAP_50": 0.6}, "looks like a metrics/log file"),
        ([{"mode": "val", "epoch": 12, "bbox_mAP": 0.39}], "looks like a metrics/log file"),
        ([det(1, [1, 2, float("nan"), 4], 0.9)], "item 0 has bbox"),
        ([det(1, [1, 2, float("inf"), 4], 0.9)], "need 4 finite numbers"),
        ([det(1, APPLE, float("nan"))], "item 0 has score nan"),
        ([det(1, [1, 2, 3], 0.9)], "item 0 has bbox"),
        ([det(1, [1, 2, -3, 4], 0.9)], "negative width"),
        ("hello", "expected a list of detections"),
    ],
)
def test_bad_results_raise_one_line_errors(results, message):
    with pytest.raises(ValueError) as err:
        ce.validate_detections(results, tiny_gt([(1, 1, APPLE)]), "model.json")
    assert str(err.value).startswith("model.json: ") and message in str(err.value)
    assert "\n" not in str(err.value)


def test_ground_truth_given_as_results_is_named(tmp_path):
    gt = tiny_gt([(1, 1, APPLE)])
    with pytest.raises(ValueError, match="ground-truth file, not a detections list"):
        ce.validate_detections(gt, gt, "x.json")
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="not a COCO ground-truth file"):
        ce.load_ground_truth(path)
    bad = tiny_gt([(1, 1, APPLE)])
    bad["annotations"][0]["bbox"] = [0, 0, float("nan"), 1]
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"annotations\[0\] needs a finite"):
        ce.load_ground_truth(path)


def test_jsonl_training_log_is_named(tmp_path):
    path = tmp_path / "20240101.log.json"
    path.write_text('{"mode": "train", "epoch": 1, "loss": 1.2}\n{"mode": "val", "epoch": 1, "bbox_mAP": 0.3}\n')
    with pytest.raises(ValueError, match="JSON lines of objects .* looks like a metrics/log file"):
        ce.load_detections(path, tiny_gt([(1, 1, APPLE)]))
    path.write_text("[{")
    with pytest.raises(ValueError, match="invalid JSON"):
        ce.load_detections(path, tiny_gt([(1, 1, APPLE)]))


@pytest.mark.parametrize("areas", [(32, 96), (96, 32, 1e10), (0, 32, 96), (32, 96, float("inf"))])
def test_bad_areas(areas):
    with pytest.raises(ValueError, match="--areas"):
        ce.area_ranges(areas)
