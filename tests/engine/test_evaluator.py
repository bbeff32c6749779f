import json

import numpy as np
import torch

from defeat.engine.evaluator import STAT_NAMES, coco_stats, detections_to_coco, format_stats
from tests.conftest import VAL100

# pycocotools 2.0.11 on the pair, from ../shared/README.md
EXPECTED = [0.50458, 0.69697, 0.57298, 0.58563, 0.51940, 0.50140, 0.38681, 0.59368, 0.59535, 0.63981, 0.56642, 0.56429]


def test_coco_stats_match_pycocotools_reference():
    results = json.loads((VAL100 / "instances_val2014_fakebbox100_results.json").read_text())
    stats = coco_stats(VAL100 / "instances_val2014_100.json", results)
    assert np.allclose([stats[k] for k in STAT_NAMES], EXPECTED, atol=5e-6)
    per_class = stats["per_class_AP"]
    assert len(per_class) == 80
    assert sum(np.isnan(v) for v in per_class.values()) == 10  # 70 categories have ground truth
    assert "AP 50.5" in format_stats(stats)


def test_no_detections_scores_zero():
    stats = coco_stats(VAL100 / "instances_val2014_100.json", [])
    assert stats["AP"] == 0.0 and stats["per_class_AP"]["person"] == 0.0


def test_detections_map_labels_back_to_category_ids():
    categories = [{"id": 3, "name": "a"}, {"id": 7, "name": "b"}]
    out = {
        "boxes": torch.tensor([[1.0, 2.0, 11.0, 22.0], [0.0, 0.0, 5.0, 5.0]]),
        "labels": torch.tensor([2, 1]),
        "scores": torch.tensor([0.9, 0.01]),
    }
    results = detections_to_coco([out], [42], categories, score_thresh=0.05)
    assert results == [{"image_id": 42, "category_id": 7, "bbox": [1.0, 2.0, 10.0, 20.0], "score": 0.9}]
