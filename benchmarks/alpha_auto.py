"""``distill.weights: auto`` against the authors' fixed weights: decoupled students (DeFeat features, no proposal
term, as the study's ``decoupled`` student), same teacher, data and schedule, several seeds each.

Every run is ``defeat distill BASE --set distill.teacher_checkpoint=TEACHER --set seed=S ...`` in its own process
(``--parallel`` at a time, each with ``--threads`` torch threads); ``fixed`` keeps alpha_obj = 4 / alpha_bg = 16,
``auto`` calibrates them (``distill.weights=auto``, ``distill.auto_target``). Writes the per-seed AP, mean ± std,
the chosen weights and the wall time of every run to ``--out``.

    defeat data synth --out runs/q/data --num-train 160 --num-val 40 --image-size 192 --max-objects 6
    defeat train BASE --set output.dir=runs/aa/teacher                   # the teacher (see the JSON's "teacher")
    python benchmarks/alpha_auto.py --base BASE --teacher runs/aa/teacher/model_final.pt --steps 40 --seeds 0 1 2

A finished run (``metrics_final.json`` in its folder) is not run again, so an interrupted benchmark resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch


def command(args, mode: str, seed: int, out: Path) -> list[str]:
    sets = [
        f"distill.teacher_checkpoint={args.teacher}",
        "distill.teacher_check_images=0",
        "distill.feature_mode=decoupled",
        "distill.proposal_mode=none",
        "distill.alpha_obj=4.0",
        "distill.alpha_bg=16.0",
        f"distill.weights={mode}",
        f"distill.auto_target={args.target}",
        f"distill.auto_batches={args.auto_batches}",
        f"seed={seed}",
        f"schedule.max_steps={args.steps}",
        f"schedule.warmup_steps={args.warmup}",
        f"output.dir={out}",
        "output.checkpoint_every=0",
        "device=cpu",
    ]
    return [sys.executable, "-m", "defeat", "distill", args.base, *[a for s in sets for a in ("--set", s)]]


def summary(values: list[float]) -> dict:
    return {
        "mean": round(statistics.mean(values), 2),
        "std": round(statistics.stdev(values), 2) if len(values) > 1 else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the student's config (model, data, optimiser)")
    parser.add_argument("--teacher", required=True, help="the teacher's checkpoint")
    parser.add_argument("--teacher-note", default="", help="how the teacher was trained (recorded as is)")
    parser.add_argument("--teacher-metrics", default="", help="metrics.json of `defeat eval` on the teacher (optional)")
    parser.add_argument("--note", default="", help="a conclusion or caveat recorded in the JSON")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--target", type=float, default=1.0, help="distill.auto_target")
    parser.add_argument("--auto-batches", type=int, default=4)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", default="runs/alpha_auto", help="folder of the runs")
    parser.add_argument("--out", default="benchmarks/results/alpha_auto.json")
    args = parser.parse_args()

    runs = Path(args.runs)
    jobs = [(mode, seed) for seed in args.seeds for mode in ("fixed", "auto")]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    pending, running, walls = list(jobs), {}, {}
    started = time.perf_counter()
    while pending or running:
        while pending and len(running) < args.parallel:
            mode, seed = pending.pop(0)
            out = runs / f"{mode}_s{seed}"
            if (out / "metrics_final.json").is_file():
                print(f"{mode} seed {seed}: done before, skipped", flush=True)
                continue
            out.mkdir(parents=True, exist_ok=True)
            log = open(out / "run.log", "w")  # noqa: SIM115  (the child writes to it; closed when it ends)
            print(f"{mode} seed {seed}: started", flush=True)
            running[(mode, seed)] = (
                subprocess.Popen(command(args, mode, seed, out), stdout=log, stderr=log, env=env),
                time.perf_counter(),
                log,
            )
        time.sleep(5)
        for key, (proc, t0, log) in list(running.items()):
            if proc.poll() is not None:
                log.close()
                walls[key] = round(time.perf_counter() - t0, 1)
                print(f"{key[0]} seed {key[1]}: exit {proc.returncode} after {walls[key]} s", flush=True)
                if proc.returncode:
                    raise SystemExit(f"{key}: failed, see {runs / f'{key[0]}_s{key[1]}' / 'run.log'}")
                del running[key]

    # runs finished by an earlier invocation keep the wall times that invocation recorded
    prior = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {}
    for mode, seed in jobs:
        recorded = prior.get(f"decoupled_{mode}_AP", {}).get("wall_seconds", {}).get(str(seed))
        if (mode, seed) not in walls and recorded is not None:
            walls[(mode, seed)] = recorded
    result: dict = {
        "what": (
            "decoupled feature distillation (DeFeat features, proposal_mode=none) with the authors' fixed weights "
            "(alpha_obj 4, alpha_bg 16) vs distill.weights=auto (alpha_bg/alpha_obj = 4 kept, scaled so the "
            f"feature term starts at auto_target = {args.target} x the detection loss, measured on the first "
            f"{args.auto_batches} training batches); same teacher, data, schedule and seeds"
        ),
        "command": " ".join(["python benchmarks/alpha_auto.py", *sys.argv[1:]]),
        "run_command": " ".join(command(args, "<fixed|auto>", 0, runs / "<mode>_s<seed>")[1:]).replace(
            "seed=0", "seed=<seed>"
        ),
        "teacher": {
            "checkpoint": args.teacher,
            "note": args.teacher_note,
            **(
                {"AP": round(100 * json.loads(Path(args.teacher_metrics).read_text())["AP"], 2)}
                if args.teacher_metrics
                else {}
            ),
        },
        "schedule": {"steps": args.steps, "warmup_steps": args.warmup, "seeds": args.seeds},
        "machine": {
            "cpu_threads": os.cpu_count(),
            "torch_threads_per_run": args.threads,
            "parallel_runs": args.parallel,
            "platform": platform.platform(),
            "torch": torch.__version__,
            "gpu": torch.cuda.is_available(),
        },
        "metric": "COCO box AP x 100 on the validation split of --base",
        "wall_seconds_total": round(
            time.perf_counter()
            - started
            + prior.get("wall_seconds_total", prior.get("wall_seconds_total_this_invocation", 0.0)),
            1,
        ),
    }
    for mode in ("fixed", "auto"):
        per_seed, chosen, wall, final_losses = {}, {}, {}, {}
        for seed in args.seeds:
            out = runs / f"{mode}_s{seed}"
            metrics = json.loads((out / "metrics_final.json").read_text())
            per_seed[str(seed)] = round(100 * metrics["AP"], 2)
            log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
            train_records = [r for r in log if "loss" in r]
            if train_records:
                last = train_records[-1]
                final_losses[str(seed)] = {k: v for k, v in last.items() if k.startswith("loss")}
            if (mode, seed) in walls:
                wall[str(seed)] = walls[(mode, seed)]
            weights_file = out / "auto_weights.json"
            if weights_file.is_file():
                record = json.loads(weights_file.read_text())
                chosen[str(seed)] = {
                    "weights": record["weights"],
                    "detection_loss": round(record["detection_loss"], 4),
                    "unweighted": {k: round(v, 5) for k, v in record["magnitudes"].items()},
                }
        entry = {
            "per_seed": per_seed,
            **summary(list(per_seed.values())),
            "last_logged_losses": final_losses,
            "wall_seconds": wall,
        }
        if chosen:
            entry["chosen_weights"] = chosen
        result[f"decoupled_{mode}_AP"] = entry
    # the feature term's start as a fraction of the detection loss: measured in the auto runs (same seed, same
    # first batches, same initial student as the fixed run), evaluated at both weight choices
    fractions = {}
    for seed, record in result["decoupled_auto_AP"].get("chosen_weights", {}).items():
        m, d, w = record["unweighted"], record["detection_loss"], record["weights"]
        start = {
            "fixed_4_16": 4.0 * m["loss_feat_obj"] + 16.0 * m["loss_feat_bg"],
            "auto": w["alpha_obj"] * m["loss_feat_obj"] + w["alpha_bg"] * m["loss_feat_bg"],
        }
        fractions[seed] = {k: round(v / d, 3) for k, v in start.items()}
    result["feature_term_start_fraction_of_detection_loss"] = fractions
    if args.note:
        result["note"] = args.note
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in result if k.endswith("_AP")}, indent=2))


if __name__ == "__main__":
    main()
