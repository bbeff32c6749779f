"""Anchors fitted by ``defeat init`` vs the zoo's default anchors: coverage, and AP after the same short training.

On the embedded benchmark (``defeat data synth``) and on ``../shared/data/coco128`` (imported with ``defeat data
import-yolo``; it has no separate val split, so it is evaluated on its 128 training images), this measures the
anchor coverage (fraction of training boxes whose best grid IoU is >= 0.5 at the training size,
:mod:`defeat.data.anchors`; entries recorded before 2026-12-02 without the ``_grid_iou`` suffix used the centred
shape IoU, which ignores the anchors' spacing) of the default anchors (sizes [32, 64, 128, 256, 512], ratios [0.5,
1, 2]) and of the fitted ones, then trains Faster R-CNN R18-FPN from scratch with each (same schedule, seed, data
order and precision) and evaluates it. Results are written after every run.

    python benchmarks/init_anchor_fit.py --work runs/bench_init --steps 200
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

from defeat import api
from defeat.utils import atomic_write_json, read_json

DEFAULT_SIZES, DEFAULT_RATIOS = [32, 64, 128, 256, 512], [0.5, 1.0, 2.0]


def machine() -> dict:
    cpu = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else ""
    )
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "load_average_at_start": os.getloadavg(),
    }


def datasets(work: Path, shared: Path) -> dict[str, dict]:
    synth = work / "synth"
    if not (synth / "val.json").is_file():
        api.synth(synth)
    coco = work / "coco128.json"
    if not coco.is_file():
        root = shared / "data" / "coco128"
        api.import_yolo(root / "images" / "train2017", root / "labels" / "train2017", root / "classes.txt", coco)
    images = shared / "data" / "coco128" / "images" / "train2017"
    return {
        "embedded_synth": {
            "train_images": synth / "train",
            "train_annotations": synth / "train.json",
            "val_images": synth / "val",
            "val_annotations": synth / "val.json",
        },
        "coco128": {"train_images": images, "train_annotations": coco, "val_images": images, "val_annotations": coco},
    }


def train_once(
    data: dict, sizes: list[int], ratios: list[float], min_size: int, max_size: int, args, out: Path
) -> dict:
    overrides = [f"data.{k}={v}" for k, v in data.items()] + [
        "model.name=faster_rcnn_r18_fpn",
        f"model.min_size={min_size}",
        f"model.max_size={max_size}",
        f"model.anchor_sizes={sizes}",
        f"model.anchor_ratios={ratios}",
        "model.rpn_pre_nms_top_n_train=600",
        "model.rpn_post_nms_top_n_train=300",
        "model.rpn_pre_nms_top_n_test=300",
        "model.rpn_post_nms_top_n_test=150",
        f"data.batch_size={args.batch_size}",
        "data.workers=1",
        f"data.val_max_images={args.val_images}",
        f"schedule.max_steps={args.steps}",
        f"schedule.warmup_steps={min(50, args.steps // 4)}",
        "optim.lr=0.02",
        "output.checkpoint_every=0",
        "output.log_every=25",
        f"output.dir={out}",
        "seed=0",
        "precision=auto",
    ]
    cfg = api.load_config(None, overrides)
    start = time.perf_counter()
    result = api.train(cfg, progress=False)
    keys = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")
    return {**{k: round(100 * result.metrics[k], 2) for k in keys}, "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="runs/bench_init")
    parser.add_argument("--shared", default="../shared")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--val-images", type=int, default=100, help="validation images evaluated (0 = all)")
    parser.add_argument("--sizes", default="embedded_synth=192,coco128=256", help="training shorter side per set")
    parser.add_argument("--only", help="comma-separated data sets (default: both)")
    parser.add_argument("--no-train", action="store_true", help="coverage only")
    parser.add_argument("--key-suffix", default="", help="store under '<data set><suffix>' (e.g. a longer schedule)")
    parser.add_argument("--out", default="benchmarks/results/init_anchor_fit.json")
    args = parser.parse_args()
    work = Path(args.work)
    sizes = dict(item.split("=") for item in args.sizes.split(","))
    out = Path(args.out)
    record = read_json(out) if out.is_file() else {}
    for entry in record.get("datasets", {}).values():  # older files kept one run's settings at the top level
        for key in ("command", "machine", "schedule"):
            if key in record and key not in entry:
                entry[key] = record[key]
    run = {
        "command": "python " + " ".join(sys.argv),
        "machine": machine(),
        "schedule": {
            "model": "faster_rcnn_r18_fpn",
            "norm": "gn",
            "steps": args.steps,
            "batch_size": args.batch_size,
            "warmup_steps": min(50, args.steps // 4),
            "lr": 0.02,
            "seed": 0,
            "precision": "auto",
            "val_max_images": args.val_images,
        },
    }
    record = {"what": __doc__.split("\n\n")[1].replace("\n", " "), "datasets": record.get("datasets", {})}
    for set_name, data in datasets(work, Path(args.shared)).items():
        if args.only and set_name not in args.only.split(","):
            continue
        name = set_name + args.key_suffix
        report = api.dataset_stats(
            data["train_annotations"],
            data["train_images"],
            image_size=int(sizes[set_name]),
            given_sizes=DEFAULT_SIZES,
            given_ratios=DEFAULT_RATIOS,
        )
        at_init_size = api.dataset_stats(
            data["train_annotations"], data["train_images"], given_sizes=DEFAULT_SIZES, given_ratios=DEFAULT_RATIOS
        )
        fit = report.anchors
        entry = {
            **run,
            "boxes": report.train.boxes,
            "images": report.train.images,
            "min_size": report.min_size,
            "max_size": report.max_size,
            "default": {
                "sizes": fit.given_sizes,
                "ratios": fit.given_ratios,
                "coverage": round(fit.given_coverage, 4),
                "mean_best_iou": round(fit.given_mean_best_iou, 4),
            },
            "fitted": {
                "sizes": fit.sizes,
                "ratios": fit.ratios,
                "coverage": round(fit.coverage, 4),
                "mean_best_iou": round(fit.mean_best_iou, 4),
            },
            "at_init_default_size": {
                "min_size": at_init_size.min_size,
                "max_size": at_init_size.max_size,
                **{k: v for k, v in at_init_size.anchors.as_dict().items() if k != "notes"},
            },
        }
        print(f"{name}: {fit.summary()}", flush=True)
        previous = record["datasets"].get(name, {})
        same = all(previous.get(k) == entry[k] for k in ("fitted", "schedule", "min_size", "max_size"))
        entry["training"] = previous.get("training", {}) if same else {}  # kept only for the same settings
        record["datasets"][name] = entry
        atomic_write_json(out, record)
        if args.no_train:
            continue
        for which in ("default", "fitted"):
            anchors = entry[which]
            result = train_once(
                data,
                anchors["sizes"],
                anchors["ratios"],
                report.min_size,
                report.max_size,
                args,
                work / f"{name}_{which}",
            )
            print(f"{name} {which}: {result}", flush=True)
            entry["training"][which] = result
            atomic_write_json(out, record)


if __name__ == "__main__":
    main()
