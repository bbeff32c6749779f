"""Wall time of one small study with ``--jobs 1`` and ``--jobs 2``: does running stages side by side pay on a CPU?

The study is a ``defeat compare`` of tiny detectors (``faster_rcnn_tiny_fpn``, 192 px, batch 2) on the embedded
benchmark: baseline and decoupled distillation x ``--seeds`` seeds, ``--steps`` steps each, so that the trainings
dominate. Set-up (not timed): ``defeat data synth`` and a teacher (the same tiny model trained ``--teacher-steps``
steps). Then the same compare runs into fresh folders, each as its own ``python -m defeat compare`` process:
``--jobs 1`` (the default threads), ``--jobs 1`` with ``OMP_NUM_THREADS=1`` (one run at a time on one thread: tells
the thread-count effect from the side-by-side one) and ``--jobs 2``. The script prints and writes the wall-time
ratio jobs 1 / jobs 2 (above 1 the parallel run is faster), the same against the 1-thread serial run, the load
average before and after each run, and each run's mean s/step (per process) and APs. The 1-thread serial run and
the ``--jobs 2`` run (1 thread each on 2 cores) must give the same APs (``same_APs_one_thread_vs_jobs_2``); the
run on all threads may differ in the last digits (another order of float sums).

    # ~5 min on 2 free cores (longer on busy ones); writes benchmarks/results/study_jobs.json
    python benchmarks/study_jobs.py
    python benchmarks/study_jobs.py --steps 20 --seeds 1 --out /tmp/study_jobs.json    # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def defeat(*args: str, log: Path) -> float:
    """Run ``python -m defeat ARGS`` (output to ``log``); returns its wall seconds. Exits on failure."""
    t0 = time.perf_counter()
    with open(log, "w") as out:
        code = subprocess.run([sys.executable, "-m", "defeat", *args], stdout=out, stderr=subprocess.STDOUT).returncode
    if code != 0:
        sys.exit(f"`defeat {' '.join(args[:2])} ...` failed (exit {code}); see {log}")
    return time.perf_counter() - t0


def model_overrides(data: Path, size: int) -> list[str]:
    return [
        f"data.train_images={data / 'train'}",
        f"data.train_annotations={data / 'train.json'}",
        f"data.val_images={data / 'val'}",
        f"data.val_annotations={data / 'val.json'}",
        "model.name=faster_rcnn_tiny_fpn",
        f"model.min_size={size}",
        f"model.max_size={size}",
        "model.anchor_sizes=[16,32,64,128,256]",
        "data.batch_size=2",
        "data.workers=0",
        "optim.lr=0.02",
        "output.log_every=10",
        "output.checkpoint_every=0",
        "eval.batch_size=4",
    ]


def sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150, help="training steps of each compared run")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per method")
    parser.add_argument("--teacher-steps", type=int, default=150)
    parser.add_argument("--size", type=int, default=192, help="image size (px)")
    parser.add_argument("--work", default=None, help="work folder (default: a temporary one, deleted)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "study_jobs.json"))
    args = parser.parse_args()
    os.environ.setdefault("PYTHONPATH", str(REPO / "src"))

    with tempfile.TemporaryDirectory(prefix="study_jobs_") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        data, teacher = work / "data", work / "teacher"
        base = model_overrides(data, args.size)
        print("set-up: data and teacher (not timed)", flush=True)
        defeat("data", "synth", "--out", str(data), "--num-train", "64", "--num-val", "16", "--image-size",
               str(args.size), "--seed", "0", log=work / "synth.log")  # fmt: skip
        defeat("train", *sets(base + [f"schedule.max_steps={args.teacher_steps}", "schedule.warmup_steps=20",
               f"output.dir={teacher}"]), log=work / "teacher.log")  # fmt: skip
        compare = sets(
            base
            + [
                f"schedule.max_steps={args.steps}",
                "schedule.warmup_steps=20",
                f"distill.teacher_checkpoint={teacher / 'model_final.pt'}",
                "distill.teacher_min_ap=0",
                "distill.teacher_min_lead=0",
                f"output.dir={work / 'unused'}",
            ]
        ) + ["--methods", "baseline,decoupled", "--seeds", str(args.seeds)]
        runs = {}
        for name, jobs, threads in (("jobs_1", 1, None), ("jobs_1_one_thread", 1, "1"), ("jobs_2", 2, None)):
            out = work / name
            load_before = os.getloadavg()
            print(f"compare {name} (load average {load_before[0]:.2f}) ...", flush=True)
            if threads:
                os.environ["OMP_NUM_THREADS"] = threads
            else:
                os.environ.pop("OMP_NUM_THREADS", None)
            wall = defeat("compare", *compare, "--out", str(out), "--jobs", str(jobs), log=work / f"{name}.log")
            results = json.loads((out / "results.json").read_text())
            runs[name] = {
                "wall_seconds": round(wall, 1),
                "loadavg_before": [round(x, 2) for x in load_before],
                "loadavg_after": [round(x, 2) for x in os.getloadavg()],
                "sec_per_step": {c["method"]: round(c["sec_per_step"], 4) for c in results["cost"]},
                "stage_seconds": {s["name"]: s["seconds"] for s in results["stages"]},
                "AP": {m["method"]: m["AP_per_seed"] for m in results["methods"]},
            }
            print(f"  {wall:.1f} s", flush=True)
    cpus = os.cpu_count() or 1
    load = max(r["loadavg_before"][0] for r in runs.values())
    busy = (
        f"yes: load average up to {load:.2f} on {cpus} cores before a run: the runs shared the cores with other "
        "jobs, so these timings measure that sharing, not a quiet machine"
        if load > 0.5 * cpus
        else f"no (load average at most {load:.2f} on {cpus} cores before a run)"
    )
    ratio = runs["jobs_1"]["wall_seconds"] / runs["jobs_2"]["wall_seconds"]
    ratio_one_thread = runs["jobs_1_one_thread"]["wall_seconds"] / runs["jobs_2"]["wall_seconds"]
    import torch

    record = {
        "what": "wall time of one defeat compare (tiny detectors; baseline + decoupled x seeds) with --jobs 1, "
        "--jobs 1 on one thread (OMP_NUM_THREADS=1) and --jobs 2 (2 processes of cores // 2 torch threads); "
        "ratio = jobs 1 / jobs 2 (> 1: parallel is faster)",
        "settings": {
            "model": "faster_rcnn_tiny_fpn",
            "size": args.size,
            "batch": 2,
            "steps": args.steps,
            "seeds": args.seeds,
            "methods": ["baseline", "decoupled"],
            "teacher_steps": args.teacher_steps,
        },
        "runs": runs,
        "busy_cores": busy,
        "ratio_jobs1_over_jobs2": round(ratio, 3),
        "ratio_jobs1_one_thread_over_jobs2": round(ratio_one_thread, 3),
        "same_APs_one_thread_vs_jobs_2": runs["jobs_1_one_thread"]["AP"] == runs["jobs_2"]["AP"],
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "command": "python benchmarks/study_jobs.py " + " ".join(sys.argv[1:]),
    }
    walls = ", ".join(f"{k} {v['wall_seconds']} s" for k, v in runs.items())
    print(f"wall: {walls} -> jobs 1 / jobs 2 {ratio:.2f}x (one-thread serial / jobs 2 {ratio_one_thread:.2f}x)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO / "src"))
    from defeat.utils import atomic_write_json

    atomic_write_json(Path(args.out), record)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
