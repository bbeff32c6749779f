"""Training throughput of the defeat engine vs a minimal plain torchvision training loop.

Same model (seeded identically), same data, same batch, same optimiser; the plain loop is what a user
would write in 15 lines (DataLoader + SGD + warm-up-free LR). Runs are interleaved (plain, engine,
plain, engine, ...) so that machine noise hits both alike; the ratio is plain seconds ÷ engine
seconds over the timed steps (>= 1.0: the engine is no slower).

    python benchmarks/train_throughput.py --data runs/synth --steps 30 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from defeat.config import config_from_dict
from defeat.data import CocoDetection, collate
from defeat.engine import DistInfo, train
from defeat.engine.setup import build_for_dataset
from defeat.utils import atomic_write_json


def plain_loop(cfg, dataset, steps: int) -> float:
    """The minimal torchvision loop; returns wall seconds for ``steps`` steps (loader start included)."""
    model = build_for_dataset(cfg.model, dataset.categories, cfg.seed).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.optim.lr * 0.1, momentum=0.9, weight_decay=cfg.optim.weight_decay)
    loader = DataLoader(dataset, batch_size=cfg.data.batch_size, shuffle=True, num_workers=cfg.data.workers,
                        collate_fn=collate, drop_last=True)
    start = time.perf_counter()
    done = 0
    while done < steps:
        for images, targets in loader:
            losses = model(images, targets)
            loss = sum(losses.values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            done += 1
            if done == steps:
                break
    return time.perf_counter() - start


def engine_loop(cfg, dataset, steps: int) -> float:
    model = build_for_dataset(cfg.model, dataset.categories, cfg.seed)
    start = time.perf_counter()
    train(cfg, model, model, dataset, None, DistInfo(), kind="detector", progress=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="runs/synth", help="output of `defeat data synth`")
    parser.add_argument("--config", default="configs/embedded_faster_rcnn_r18.yaml")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/train_throughput.json")
    args = parser.parse_args()

    import yaml
    with tempfile.TemporaryDirectory() as tmp:
        values = yaml.safe_load(Path(args.config).read_text())
        cfg = config_from_dict(values, [
            f"data.train_images={args.data}/train", f"data.train_annotations={args.data}/train.json",
            f"schedule.max_steps={args.steps}", "schedule.warmup_steps=0", "eval.every_steps=0",
            "output.checkpoint_every=0", f"output.dir={tmp}/engine", "data.workers=1"])
        dataset = CocoDetection(cfg.data.train_images, cfg.data.train_annotations)
        plain, engine = [], []
        for _ in range(args.repeats):
            plain.append(plain_loop(cfg, dataset, args.steps))
            engine.append(engine_loop(cfg, dataset, args.steps))
            print(f"plain {plain[-1]:.1f}s  engine {engine[-1]:.1f}s")
    ratio = statistics.median(plain) / statistics.median(engine)
    print(f"ratio_vs_plain_torchvision = {ratio:.3f} (>= 1.0 means the engine is no slower)")
    result = {"ratio_vs_plain_torchvision": round(ratio, 4), "plain_seconds": plain, "engine_seconds": engine,
              "steps": args.steps, "model": cfg.model.name, "batch_size": cfg.data.batch_size,
              "image_size": cfg.model.min_size, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, {platform.processor() or 'cpu'}",
              "command": "python " + " ".join(sys.argv)}
    atomic_write_json(Path(args.out), result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
