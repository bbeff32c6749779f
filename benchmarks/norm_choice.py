"""BatchNorm vs GroupNorm for from-scratch detectors: same model, data, seed and steps; AP and step time.

Trains the embedded config's detector once with ``model.norm=gn`` and once with ``model.norm=bn``
(interleaved is not possible for whole trainings, so both run back to back in one process), evaluates
both on the validation split and writes the AP of each, the seconds per step and their ratio.

    python benchmarks/norm_choice.py --data runs/synth --steps 250 --image-size 256
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
from defeat.utils import atomic_write_json


def run(values: dict, overrides: list[str]) -> dict:
    cfg = config_from_dict(values, overrides)
    train_set = CocoDetection(cfg.data.train_images, cfg.data.train_annotations)
    val_set = CocoDetection(cfg.data.val_images, cfg.data.val_annotations)
    model = build_for_dataset(cfg.model, train_set.categories, cfg.seed)
    start = time.perf_counter()
    result = train(cfg, model, model, train_set, val_set, DistInfo(), progress=False)
    seconds = time.perf_counter() - start
    log = [json.loads(line) for line in (Path(cfg.output.dir) / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    steps = [r for r in log if "sec_per_step" in r]
    return {
        "AP": result.metrics["AP"],
        "AP50": result.metrics["AP50"],
        "seconds_total": round(seconds, 1),
        "sec_per_step": round(sum(r["sec_per_step"] for r in steps) / len(steps), 3),
        "final_loss": losses[-1] if losses else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="runs/synth")
    parser.add_argument("--config", default="configs/embedded_faster_rcnn_r18.yaml")
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--out", default="benchmarks/results/norm_choice.json")
    args = parser.parse_args()
    values = yaml.safe_load(Path(args.config).read_text())
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for norm in ("gn", "bn"):
            overrides = [
                f"data.train_images={args.data}/train",
                f"data.train_annotations={args.data}/train.json",
                f"data.val_images={args.data}/val",
                f"data.val_annotations={args.data}/val.json",
                f"model.norm={norm}",
                f"schedule.max_steps={args.steps}",
                "schedule.warmup_steps=50",
                f"model.min_size={args.image_size}",
                f"model.max_size={args.image_size}",
                "eval.every_steps=0",
                "output.checkpoint_every=0",
                f"output.dir={tmp}/{norm}",
                "output.log_every=10",
            ]
            results[norm] = run(values, overrides)
            print(norm, results[norm], flush=True)
    out = {
        "gn": results["gn"],
        "bn": results["bn"],
        "step_time_ratio_gn_over_bn": round(results["gn"]["sec_per_step"] / results["bn"]["sec_per_step"], 3),
        "steps": args.steps,
        "image_size": args.image_size,
        "config": args.config,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "command": "python " + " ".join(sys.argv),
    }
    atomic_write_json(Path(args.out), out)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
