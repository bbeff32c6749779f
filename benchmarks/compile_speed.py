"""Does ``torch.compile`` speed up the fast path? The student's training step, eager vs compiled backbone + FPN.

    python benchmarks/compile_speed.py            # the full preset's student, 1 thread (about 5 min on a quiet CPU)

The engine's fast path (``precision: auto``: bf16 autocast, the fused optimizer, ...) as
``benchmarks/train_speed.py`` builds it, once eager (``fast``) and once with ``model.backbone`` (ResNet body +
FPN: the convolutions, ~60 % of a step, and the only part with static shapes; the heads' proposal counts vary
from step to step) wrapped in ``torch.compile(dynamic=False)`` (``fast_compiled``, inductor). Same initial
weights, the same batches, steps interleaved (A B, B A, ...). Reported: the compile cost (the first compiled
step minus the median compiled step) and ``speedup_compiled_vs_eager`` = the median over steps of
(eager s/step) / (compiled s/step); > 1 means compile helps. The compile is cold (a fresh inductor cache
directory unless ``TORCHINDUCTOR_CACHE_DIR`` is set). Writes ``benchmarks/results/compile_speed.json``.
"""

from __future__ import annotations

import argparse
import atexit
import datetime
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

# a cold compile, as a user's first run sees it: inductor's on-disk cache (default /tmp/torchinductor_$USER) would
# hide the compile time of every run after the first; set before torch reads it
COLD = "TORCHINDUCTOR_CACHE_DIR" not in os.environ
if COLD:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="defeat_inductor_")
    atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_speed  # noqa: E402  (the same models, data and step as the speed benchmark)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="", help="the preset's benchmark (made if missing)")
    parser.add_argument("--role", default="student", choices=["student", "teacher"])
    parser.add_argument("--steps", type=int, default=24, help="interleaved steps per variant (>= 1)")
    parser.add_argument("--warmup", type=int, default=3, help="first steps not timed (the first compiles)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/compile_speed.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = args.data or train_speed.default_data()
    train_speed.ensure_data(data)

    # train_speed.interleaved's loop, keeping the warmup steps: the first compiled step is the compile cost
    variants = ("fast", "fast_compiled")
    built = {v: train_speed.make_step(v, args.role, data) for v in variants}
    _, dataset, cfg = built["fast"]
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0)).tolist()
    subset, bs = torch.utils.data.Subset(dataset, order), cfg.data.batch_size
    times: dict[str, list[float]] = {v: [] for v in variants}
    load_start = [round(x, 2) for x in os.getloadavg()]
    for index in range(args.steps + args.warmup):
        images, targets = train_speed.build_batch(subset, bs, (index * bs) % (len(order) - bs))
        for variant in variants if index % 2 == 0 else variants[::-1]:
            times[variant].append(built[variant][0](index, images, targets))
        print(f"step {index}: " + ", ".join(f"{v} {times[v][-1]:.3f} s" for v in variants), flush=True)

    timed = {v: times[v][args.warmup :] for v in variants}
    ratios = [e / c for e, c in zip(timed["fast"], timed["fast_compiled"])]
    compiled_median = statistics.median(timed["fast_compiled"])
    result = {
        "command": "python " + " ".join(sys.argv),
        "torch": torch.__version__,
        "threads": args.threads,
        "machine": train_speed._machine(),
        "date": datetime.date.today().isoformat(),
        "load_average_at_start": load_start,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "setup": train_speed.describe_setup() + f"; role {args.role}",
        "compiled": "model.backbone (ResNet body + FPN) under torch.compile(dynamic=False), default inductor, "
        + (
            "a fresh cache dir (cold compile)" if COLD else f"cache dir {os.environ['TORCHINDUCTOR_CACHE_DIR']} (given)"
        ),
        "sec_per_step_median": {v: round(statistics.median(timed[v]), 4) for v in variants},
        "first_step_seconds": {v: round(times[v][0], 2) for v in variants},
        "compile_seconds": round(times["fast_compiled"][0] - compiled_median, 1),
        "speedup_compiled_vs_eager": round(statistics.median(ratios), 3),
        "speedup_quartiles": (
            [round(q, 3) for q in statistics.quantiles(ratios, n=4)[::2]] if len(ratios) > 1 else None
        ),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(out)
    print(json.dumps({k: result[k] for k in ("sec_per_step_median", "compile_seconds", "speedup_compiled_vs_eager")}))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
