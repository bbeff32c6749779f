"""Step time on shared cores: a training run alone vs the same run beside one equal competing job.

Each measurement starts fresh worker processes (``python benchmarks/contention.py --worker ...``) that build one
detector, run ``--warmup`` untimed training steps and then ``--steps`` timed ones on a fixed batch, and print their
seconds per step. For each variant of the process settings:

* ``alone``: one worker; ``shared``: two identical workers started together (the "equal competing job");
* ``slowdown`` = median s/step of the shared workers ÷ median s/step alone. On 2 cores a fair share is 2x; the goal
  is <= 2.5x. ``cpu_share`` = the worker's CPU seconds ÷ (wall seconds × its threads): how much of the cores it
  asked for it got.

Variants (``--variants``): ``openmp_default`` (torch's defaults: one thread per core, libgomp's default wait: spin
300k iterations at a barrier before sleeping), ``toolkit_default`` (``GOMP_SPINCOUNT=10000``: what importing
``defeat`` sets unless the environment sets an OpenMP wait policy), ``passive`` (``OMP_WAIT_POLICY=PASSIVE``: sleep
at once), ``one_thread`` (the toolkit's default with ``torch.set_num_threads(1)``), ``spin_100k`` and ``spin_1k``.
Workers of a variant run in the same environment, so the competitor behaves like the run it competes with.

    # ~10 min on 2 cores; writes benchmarks/results/contention.json
    python benchmarks/contention.py
    python benchmarks/contention.py --models faster_rcnn_tiny_fpn --steps 5 --warmup 1 --out /tmp/c.json   # smoke
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

#: environment of each variant's workers (None: unset; importing defeat sets GOMP_SPINCOUNT in this process)
VARIANTS = {
    "openmp_default": {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": None},
    "toolkit_default": {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": "10000"},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": None},
    "one_thread": {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": "10000", "DEFEAT_BENCH_THREADS": "1"},
    "spin_100k": {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": "100000"},
    "spin_1k": {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": "1000"},
}


def worker(args) -> None:
    """One training run on a fixed batch; prints a JSON line with its per-step seconds and CPU time."""
    import torch

    if os.environ.get("DEFEAT_BENCH_THREADS"):
        torch.set_num_threads(int(os.environ["DEFEAT_BENCH_THREADS"]))
    from defeat.config import ModelConfig
    from defeat.models import build_detector

    torch.manual_seed(0)
    size = args.size
    model = build_detector(ModelConfig(name=args.model, min_size=size, max_size=size), 9).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, size, size, generator=g) for _ in range(args.batch)]
    targets = [
        {
            "boxes": torch.tensor([[10.0, 20.0, 90.0, 120.0], [100.0, 40.0, 200.0, 180.0]]) * size / 256,
            "labels": torch.tensor([1, 2]),
        }
        for _ in images
    ]
    seconds = []
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            cpu_start, wall_start = time.process_time(), time.perf_counter()
        start = time.perf_counter()
        losses = model(images, targets)
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()
        if step >= args.warmup:
            seconds.append(time.perf_counter() - start)
    cpu, wall = time.process_time() - cpu_start, time.perf_counter() - wall_start
    print(json.dumps({"seconds": seconds, "cpu_s": cpu, "wall_s": wall, "threads": torch.get_num_threads()}))


def run_workers(count: int, env_extra: dict, args) -> list[dict]:
    """``count`` workers started together in the variant's environment; their JSON results."""
    env = {k: v for k, v in {**os.environ, **env_extra}.items() if v is not None}
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        "--model",
        args.model,
        "--size",
        str(args.size),
        "--batch",
        str(args.batch),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
    ]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True) for _ in range(count)]
    results = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"worker failed (rc {proc.returncode})")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def summary(results: list[dict]) -> dict:
    medians = [statistics.median(r["seconds"]) for r in results]
    return {
        "median_s_per_step": round(statistics.median(medians), 4),
        "per_worker_median_s": [round(m, 4) for m in medians],
        "cpu_share": [round(r["cpu_s"] / (r["wall_s"] * r["threads"]), 3) for r in results],
        "threads": results[0]["threads"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", default="faster_rcnn_r18_fpn", help=argparse.SUPPRESS)  # a worker's model
    parser.add_argument(
        "--models",
        nargs="+",
        default=["faster_rcnn_r18_fpn", "faster_rcnn_tiny_fpn"],
        help="models measured, one after another (large ops vs many small ones)",
    )
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", default="benchmarks/results/contention.json")
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    from defeat.utils import atomic_write_json

    started = time.perf_counter()
    load_start = os.getloadavg()
    runs = {}
    for model in args.models:
        args.model, variants = model, {}
        for name in args.variants:
            alone = summary(run_workers(1, VARIANTS[name], args))
            shared = summary(run_workers(2, VARIANTS[name], args))
            slowdown = shared["median_s_per_step"] / alone["median_s_per_step"]
            variants[name] = {"env": VARIANTS[name], "alone": alone, "shared": shared, "slowdown": round(slowdown, 3)}
            print(
                f"{model} {name:>10}: alone {alone['median_s_per_step']:.3f} s/step, beside one equal job "
                f"{shared['median_s_per_step']:.3f} s/step: {slowdown:.2f}x (goal <= 2.5x; fair share 2x)",
                flush=True,
            )
        runs[model] = variants
    record = {
        "what": "median s/step of one training run alone vs two identical runs started together (one competitor), "
        "per process-settings variant; slowdown = shared / alone (fair share on 2 cores: 2x; goal <= 2.5x)",
        "goal": "slowdown <= 2.5 with one equal competitor on 2 cores",
        "models": runs,  # model -> variant -> alone / shared / slowdown
        "settings": {
            "size": args.size,
            "batch": args.batch,
            "steps": args.steps,
            "warmup": args.warmup,
            "optimizer": "SGD lr 0 (same work every step)",
            "precision": "fp32",
        },
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": __import__("torch").__version__,
            "loadavg_start": load_start,
            "loadavg_end": os.getloadavg(),
        },
        "wall_seconds": round(time.perf_counter() - started, 1),
        "command": "python benchmarks/contention.py " + " ".join(sys.argv[1:]),
    }
    atomic_write_json(Path(args.out), record)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
