"""Shared fixtures: a tiny COCO dataset drawn with PIL, tiny model configs, the ../shared data path."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"  # the team's data beside the repo; absent in a user's fresh clone
FIXTURES = REPO / "tests" / "fixtures"
#: real COCO val2014 ground truth for 100 images and perturbed-GT results (committed copy; see its README)
VAL100 = FIXTURES / "coco-val2014-100"

#: what one fast-tier test may leave in its tmp_path (the slow tier's real R18 checkpoints are ~115-230 MB each)
MAX_WRITTEN_BYTES = 100 * 2**20


@pytest.fixture(autouse=True)
def _written_bytes_stay_small(request):
    """A fast-tier test that leaves more than 100 MB in its tmp_path fails: tests train tiny models."""
    watched = "tmp_path" in request.fixturenames and not request.node.get_closest_marker("slow")
    root = request.getfixturevalue("tmp_path") if watched else None  # set up before the test, torn down after us
    yield
    if root is None:
        return
    written = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert written <= MAX_WRITTEN_BYTES, f"{request.node.nodeid} wrote {written / 2**20:.0f} MB to {root}"


TINY_CATEGORIES = [
    {"id": 3, "name": "square", "supercategory": "box"},
    {"id": 7, "name": "bar", "supercategory": "box"},
    {"id": 9, "name": "disc", "supercategory": "round"},
]


def write_tiny_coco(root: Path, num_images: int, seed: int, size: int = 64, empty_every: int = 0) -> Path:
    """Images with filled squares / bars / discs on noise; returns the annotation file path.

    ``empty_every=k`` leaves every k-th image without objects (images without annotations are legal).
    """
    rng = random.Random(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(num_images):
        img = Image.new("RGB", (size, size), tuple(rng.randrange(40, 90) for _ in range(3)))
        draw = ImageDraw.Draw(img)
        if not (empty_every and i % empty_every == 0):
            for _ in range(rng.randint(1, 3)):
                cat = rng.choice(TINY_CATEGORIES)
                w = rng.randint(10, 28)
                h = w if cat["name"] != "bar" else max(4, w // 3)
                x, y = rng.randint(0, size - w - 1), rng.randint(0, size - h - 1)
                colour = tuple(rng.randrange(150, 255) for _ in range(3))
                (draw.ellipse if cat["name"] == "disc" else draw.rectangle)([x, y, x + w, y + h], fill=colour)
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": i + 1,
                        "category_id": cat["id"],
                        "bbox": [x, y, w + 1, h + 1],
                        "area": (w + 1) * (h + 1),
                        "iscrowd": 0,
                    }
                )
        name = f"{i:04d}.png"
        img.save(root / "images" / name)
        images.append({"id": i + 1, "file_name": name, "width": size, "height": size})
    ann_file = root / "instances.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": TINY_CATEGORIES}))
    return ann_file


@pytest.fixture(scope="session")
def tiny_coco(tmp_path_factory) -> dict:
    """A tiny train (8 images, one empty) / val (4 images) split and override list pointing at it."""
    root = tmp_path_factory.mktemp("tiny_coco")
    train = write_tiny_coco(root / "train", 8, seed=1, empty_every=5)
    val = write_tiny_coco(root / "val", 4, seed=2)
    return {
        "root": root,
        "train_ann": train,
        "val_ann": val,
        "overrides": [
            f"data.train_images={root / 'train' / 'images'}",
            f"data.train_annotations={train}",
            f"data.val_images={root / 'val' / 'images'}",
            f"data.val_annotations={val}",
        ],
    }


def tiny_overrides(tiny: dict, out_dir: Path, name: str = "faster_rcnn_tiny_fpn", steps: int = 3) -> list[str]:
    """Config overrides for a few-step run of a tiny model (the toy backbone unless ``name`` says otherwise) on the
    tiny set."""
    return tiny["overrides"] + [
        f"model.name={name}",
        "model.min_size=64",
        "model.max_size=64",
        "model.anchor_sizes=[8,16,32,64,128]",
        "model.rpn_pre_nms_top_n_train=100",
        "model.rpn_post_nms_top_n_train=50",
        "model.rpn_pre_nms_top_n_test=50",
        "model.rpn_post_nms_top_n_test=50",
        "model.box_batch_size_per_image=32",
        "data.batch_size=2",
        "data.workers=0",
        f"schedule.max_steps={steps}",
        "schedule.warmup_steps=1",
        "optim.lr=0.01",
        "output.log_every=1",
        f"output.dir={out_dir}",
        "eval.batch_size=2",
    ]


@pytest.fixture(scope="session")
def tiny_teacher(tiny_coco, tmp_path_factory):
    """A tiny Faster R-CNN 'teacher' trained for one step on the tiny set (weights, not quality, matter)."""
    from defeat.cli.main import main

    out = tmp_path_factory.mktemp("teacher")
    overrides = tiny_overrides(tiny_coco, out, steps=1) + ["output.checkpoint_every=0", "seed=5"]
    assert main(["train", *[a for o in overrides for a in ("--set", o)]]) == 0
    return out / "model_final.pt"


def interrupt_after_step_1(stage_dir) -> None:
    """Leave ``stage_dir`` as a 2-step training stopped after step 1: train 1 step, then write the run's own
    schedule back into the config and the checkpoint (``--resume`` refuses a schedule that differs from the run's)."""
    import torch

    from defeat.cli.main import main as _main

    config = stage_dir / "config.yaml"
    text = config.read_text()
    steps = yaml.safe_load(text)["schedule"]["max_steps"]
    assert _main(["distill", str(config), "--resume", "--set", "schedule.max_steps=1"]) == 0
    config.write_text(text)
    path = stage_dir / "checkpoint_last.pt"
    state = torch.load(path, weights_only=True)
    state["config"]["schedule"]["max_steps"] = steps
    torch.save(state, path)
