"""Calibrate the full preset's time estimate (``reproduce_full.yaml`` → ``estimate``) with a SHORT measurement.

    python benchmarks/full_preset_estimate.py [--steps 4] [--warmup 2] [--data runs/full128_data]

For each role of the preset (R50-FPN teacher step, R18-FPN student step, distillation step = student + frozen
teacher with decoupled features and proposals), a few training steps on the engine's fast path
(``precision: auto``: bf16 on this CPU) with ONE torch thread, timed as **CPU time** (``time.process_time``), so
that other jobs on the shared 2-core machine do not inflate it; then the evaluation of a few validation batches.
Two free cores are taken as 1.4x one thread (the convention of the earlier presets, README "How the built-in
presets were sized"). The plan's estimate (``defeat reproduce --preset full --dry-run``) is printed with these
rates. Writes ``benchmarks/results/full_preset_estimate.json``. Untrained weights: the step costs the same.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_speed import build_batch, build_models, ensure_data, make_step

TWO_CORES = 1.4  # two free cores vs one thread (README: how the built-in presets were sized)


def cpu_seconds_per_step(role: str, data: str, steps: int, warmup: int) -> list[float]:
    step, dataset, cfg = make_step("fast", role, data)
    out = []
    for index in range(warmup + steps):
        images, targets = build_batch(dataset, cfg.data.batch_size, (index * cfg.data.batch_size) % 64)
        start = time.process_time()
        step(index, images, targets)
        if index >= warmup:
            out.append(time.process_time() - start)
    return out


def cpu_seconds_per_image(data: str, batches: int = 4) -> list[float]:
    from defeat.data import CocoDetection
    from defeat.engine.precision import resolve_precision

    cfg, model, _, _, _ = build_models("student", data, [])
    val = CocoDetection(cfg.data.val_images, cfg.data.val_annotations)
    model.eval()
    precision = resolve_precision("auto", "cpu")
    precision.prepare(model)
    out = []
    with torch.no_grad():
        for index in range(batches + 1):
            batch, _ = build_batch(val, cfg.eval.batch_size, index * cfg.eval.batch_size)
            start = time.process_time()
            with precision.autocast():
                model(batch)
            if index:
                out.append((time.process_time() - start) / len(batch))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="runs/full128_data")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "full_preset_estimate.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    ensure_data(args.data, "full")
    measured = {}
    for role, key in (("teacher", "teacher_step"), ("student", "student_step"), ("distill", "defeat_step")):
        values = cpu_seconds_per_step(role, args.data, args.steps, args.warmup)
        measured[key] = {"cpu_s_1_thread": [round(v, 3) for v in values], "median": round(statistics.median(values), 3)}
        print(f"{key}: CPU s/step (1 thread) {measured[key]['cpu_s_1_thread']}", flush=True)
    per_image = cpu_seconds_per_image(args.data)
    measured["student_image"] = {
        "cpu_s_1_thread": [round(v, 4) for v in per_image],
        "median": round(statistics.median(per_image), 4),
    }
    rates = {k: round(v["median"] / TWO_CORES, 3) for k, v in measured.items()}
    rates["distill_step"] = rates["defeat_step"]  # features only: at most the cost of features + proposals
    rates["teacher_image"] = round(rates["student_image"] * 1.3, 3)  # R50 vs R18 forward (earlier presets' ratio)

    from defeat.study import build_plan, load_preset
    from defeat.study.estimate import Estimator

    preset = load_preset("full")
    estimate = dict(preset.get("estimate", {}), **rates)
    estimator = Estimator(estimate)
    stages = build_plan(preset, Path("/tmp/full_estimate_plan"))
    total = sum(estimator.seconds(s) for s in stages) + estimate.get("report", 5)
    result = {
        "command": "python benchmarks/full_preset_estimate.py",
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "threads": 1,
        "steps": args.steps,
        "warmup": args.warmup,
        "measured": measured,
        "two_cores_factor": TWO_CORES,
        "estimate_rates": rates,
        "plan": {
            "stages": len(stages),
            "training_steps": sum(s.steps for s in stages),
            "estimated_minutes": round(total / 60, 1),
            "budget_minutes": preset.get("budget_minutes"),
        },
        "note": "CPU time of one thread on the shared machine (wall time there is meaningless); a few steps "
        "per role of untrained models, not a run of the preset",
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"estimate_rates": rates, "plan": result["plan"]}, indent=2))


if __name__ == "__main__":
    main()
