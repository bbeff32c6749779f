"""Where the time of one training step goes: torch.profiler over a few steps of the full preset's models.

    python benchmarks/profile_step.py --data runs/train_speed_full_data --role student \
        --mode fp32 --mode autocast --mode fast

Modes: ``fp32`` (plain float32 step), ``autocast`` (the whole forward under bf16 autocast, nothing else),
``fast`` (the engine's fast path: ``defeat.engine.precision``). Prints the top ops by self CPU time and
their share of the step; with ``--json`` writes the tables.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_speed import build_batch, preset_config

from defeat.data import CocoDetection
from defeat.engine.setup import build_for_dataset


def make_step(mode: str, cfg, categories, images, targets):
    model = build_for_dataset(cfg.model, categories, cfg.seed).train()
    if mode == "fast":
        from defeat.engine.precision import resolve_precision
        from defeat.engine.trainer import build_optimizer

        precision = resolve_precision("auto", "cpu")
        precision.prepare(model)  # for the whole profile: never undone
        optimizer = build_optimizer(cfg, model, precision)
        ctx = precision.autocast()
    else:
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=0.002, momentum=0.9, weight_decay=1e-4)
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if mode == "autocast" else nullcontext()

    def step():
        with ctx:
            losses = model(images, targets)
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="runs/train_speed_full_data")
    parser.add_argument("--role", default="student", choices=["student", "teacher"])
    parser.add_argument("--mode", action="append", choices=["fp32", "autocast", "fast"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    cfg = preset_config(args.role)
    dataset = CocoDetection(f"{args.data}/train", f"{args.data}/train.json")
    images, targets = build_batch(dataset, cfg.data.batch_size)
    tables = {}
    for mode in args.mode or ["fp32", "autocast", "fast"]:
        step = make_step(mode, cfg, dataset.categories, images, targets)
        for _ in range(2):
            step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            seconds = (time.perf_counter() - start) / args.steps
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        rows = sorted(events, key=lambda e: -e.self_cpu_time_total)[: args.top]
        print(f"\n== {args.role} {mode}: {seconds:.3f} s/step (under the profiler) ==")
        table = []
        for e in rows:
            share = e.self_cpu_time_total / total
            table.append(
                {
                    "op": e.key,
                    "share": round(share, 4),
                    "calls_per_step": e.count // args.steps,
                    "ms_per_step": round(e.self_cpu_time_total / 1000 / args.steps, 2),
                }
            )
            print(
                f"{100 * share:5.1f}%  {e.self_cpu_time_total / 1000 / args.steps:8.1f} ms  "
                f"{e.count // args.steps:5d}x  {e.key}"
            )
        tables[mode] = {"sec_per_step_profiled": round(seconds, 4), "top_ops": table}
    if args.json:
        Path(args.json).write_text(json.dumps(tables, indent=2))


if __name__ == "__main__":
    main()
