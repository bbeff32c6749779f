"""Training throughput of the defeat engine vs a minimal plain torchvision training loop.

Same model (seeded identically), same data, same batch, same optimiser; the plain loop is what a user would write in
15 lines (DataLoader + SGD). Runs are interleaved (plain, engine, plain, engine, ...) so that machine noise hits
both alike. ``ratio_vs_plain_torchvision`` = the median over the interleaved pairs of plain seconds per step ÷
engine seconds per step in the steady state (the first ``--warmup`` steps of each run excluded; the engine's
per-step work — sampler, loss check, clipping, logging, progress bar — included). The whole-run ratio, which also
counts the engine's setup and its two final checkpoint writes, is reported beside it.

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


def plain_loop(cfg, dataset, steps: int, warmup: int) -> tuple[float, float]:
    """The minimal torchvision loop; returns (steady seconds per step, whole-run seconds)."""
    model = build_for_dataset(cfg.model, dataset.categories, cfg.seed).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.optim.lr * 0.1, momentum=0.9, weight_decay=cfg.optim.weight_decay)
    loader = DataLoader(
        dataset,
        batch_size=cfg.data.batch_size,
        shuffle=True,
        num_workers=cfg.data.workers,
        collate_fn=collate,
        drop_last=True,
    )
    start = time.perf_counter()
    steady_start = start
    done = 0
    while done < steps:
        for images, targets in loader:
            losses = model(images, targets)
            loss = sum(losses.values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            done += 1
            if done == warmup:
                steady_start = time.perf_counter()
            if done == steps:
                break
    end = time.perf_counter()
    return (end - steady_start) / (steps - warmup), end - start


def engine_loop(cfg, dataset, steps: int, warmup: int) -> tuple[float, float]:
    """The engine (log every step); returns (steady seconds per step from its log, whole-run seconds)."""
    model = build_for_dataset(cfg.model, dataset.categories, cfg.seed)
    start = time.perf_counter()
    train(cfg, model, model, dataset, None, DistInfo(), kind="detector", progress=False)
    whole = time.perf_counter() - start
    log = [json.loads(line) for line in (Path(cfg.output.dir) / "metrics.jsonl").read_text().splitlines()]
    (Path(cfg.output.dir) / "metrics.jsonl").unlink()
    steady = [r["sec_per_step"] for r in log if "sec_per_step" in r and r["step"] > warmup]
    return sum(steady) / len(steady), whole


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="runs/synth", help="output of `defeat data synth`")
    parser.add_argument("--config", default="configs/embedded_faster_rcnn_r18.yaml")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2, help="first steps of each run not timed")
    parser.add_argument("--out", default="benchmarks/results/train_throughput.json")
    args = parser.parse_args()

    import yaml

    with tempfile.TemporaryDirectory() as tmp:
        values = yaml.safe_load(Path(args.config).read_text())
        cfg = config_from_dict(
            values,
            [
                f"data.train_images={args.data}/train",
                f"data.train_annotations={args.data}/train.json",
                f"schedule.max_steps={args.steps}",
                "schedule.warmup_steps=0",
                "eval.every_steps=0",
                "output.checkpoint_every=0",
                f"output.dir={tmp}/engine",
                "data.workers=1",
                "output.log_every=1",
            ],
        )
        dataset = CocoDetection(cfg.data.train_images, cfg.data.train_annotations)
        plain, engine = [], []
        for _ in range(args.repeats):
            plain.append(plain_loop(cfg, dataset, args.steps, args.warmup))
            engine.append(engine_loop(cfg, dataset, args.steps, args.warmup))
            print(
                f"plain {plain[-1][0]:.2f} s/step ({plain[-1][1]:.1f} s run)  "
                f"engine {engine[-1][0]:.2f} s/step ({engine[-1][1]:.1f} s run)",
                flush=True,
            )
    # Each (plain, engine) pair ran back to back under the same machine load: compare within pairs.
    ratio = statistics.median(p[0] / e[0] for p, e in zip(plain, engine))
    whole = statistics.median(p[1] / e[1] for p, e in zip(plain, engine))
    print(f"ratio_vs_plain_torchvision = {ratio:.3f} (>= 1.0 means the engine is no slower); whole run {whole:.3f}")
    result = {
        "ratio_vs_plain_torchvision": round(ratio, 4),
        "ratio_whole_run": round(whole, 4),
        "plain_sec_per_step": [round(p[0], 3) for p in plain],
        "engine_sec_per_step": [round(e[0], 3) for e in engine],
        "plain_run_seconds": [round(p[1], 1) for p in plain],
        "engine_run_seconds": [round(e[1], 1) for e in engine],
        "warmup_steps_excluded": args.warmup,
        "steps": args.steps,
        "model": cfg.model.name,
        "batch_size": cfg.data.batch_size,
        "image_size": cfg.model.min_size,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, {platform.processor() or 'cpu'}",
        "command": "python " + " ".join(sys.argv),
    }
    atomic_write_json(Path(args.out), result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
