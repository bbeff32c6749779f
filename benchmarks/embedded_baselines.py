"""How long Faster R-CNN R18-FPN / R50-FPN take to train on the embedded benchmark, and the AP they reach.

Trains each model with the embedded config (from scratch, GroupNorm) for ``--steps`` steps, evaluating
every ``--eval-every`` steps, and records the AP curve against steps and wall time. Each model's entry
is merged into the JSON (so several models can run as separate processes side by side).

    python benchmarks/embedded_baselines.py --data runs/synth --model faster_rcnn_r18_fpn --steps 600
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from defeat.config import config_from_dict
from defeat.data import CocoDetection
from defeat.engine import DistInfo, train
from defeat.engine.setup import build_for_dataset
from defeat.models import count_parameters
from defeat.utils import atomic_write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="runs/synth")
    parser.add_argument("--config", default="configs/embedded_faster_rcnn_r18.yaml")
    parser.add_argument("--model", default="faster_rcnn_r18_fpn")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--eval-every", type=int, default=150)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--out", default="benchmarks/results/embedded_baselines.json")
    args = parser.parse_args()

    values = yaml.safe_load(Path(args.config).read_text())
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config_from_dict(
            values,
            [
                f"data.train_images={args.data}/train",
                f"data.train_annotations={args.data}/train.json",
                f"data.val_images={args.data}/val",
                f"data.val_annotations={args.data}/val.json",
                f"model.name={args.model}",
                f"schedule.max_steps={args.steps}",
                "schedule.warmup_steps=50",
                f"model.min_size={args.image_size}",
                f"model.max_size={args.image_size}",
                f"eval.every_steps={args.eval_every}",
                "output.checkpoint_every=0",
                f"output.dir={tmp}/run",
                "output.log_every=10",
            ],
        )
        train_set = CocoDetection(cfg.data.train_images, cfg.data.train_annotations)
        val_set = CocoDetection(cfg.data.val_images, cfg.data.val_annotations)
        model = build_for_dataset(cfg.model, train_set.categories, cfg.seed)
        start = time.perf_counter()
        result = train(cfg, model, model, train_set, val_set, DistInfo(), progress=False)
        seconds = time.perf_counter() - start
        log = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]

    # Wall time at each evaluation: sum of the logged seconds per step up to that step (evaluation excluded).
    elapsed, curve, last_step = 0.0, [], 0
    for record in log:
        if "sec_per_step" in record:
            elapsed += record["sec_per_step"] * (record["step"] - last_step)
            last_step = record["step"]
        if record.get("event") == "eval":
            curve.append(
                {
                    "step": record["step"],
                    "train_minutes": round(elapsed / 60, 1),
                    "AP": round(record["AP"], 4),
                    "AP50": round(record["AP50"], 4),
                }
            )
    entry = {
        "AP": result.metrics["AP"],
        "AP50": result.metrics["AP50"],
        "AP75": result.metrics["AP75"],
        "APs": result.metrics["APs"],
        "APm": result.metrics["APm"],
        "APl": result.metrics["APl"],
        "curve": curve,
        "steps": args.steps,
        "images_seen": args.steps * cfg.data.batch_size,
        "epochs": round(args.steps * cfg.data.batch_size / len(train_set), 2),
        "wall_minutes_total": round(seconds / 60, 1),
        "sec_per_step": round(elapsed / max(last_step, 1), 3),
        "params_millions": round(count_parameters(model) / 1e6, 1),
        "image_size": args.image_size,
        "batch_size": cfg.data.batch_size,
        "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} torch thread(s)",
        "command": "python " + " ".join(sys.argv),
    }
    out = Path(args.out)
    merged = json.loads(out.read_text()) if out.is_file() else {}
    merged[args.model] = entry
    atomic_write_json(out, merged)
    print(json.dumps(entry, indent=2))


if __name__ == "__main__":
    main()
