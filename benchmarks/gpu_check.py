"""GPU check: train the teacher, the student and a DeFeat student on the embedded benchmark with the fast path
(AMP: bf16, or fp16 + grad scaler on GPUs without bf16), DDP over every visible GPU via torchrun, and record
step times, images/s and peak memory.

    python benchmarks/gpu_check.py                    # 300 steps each, all GPUs, the full preset's models
    python benchmarks/gpu_check.py --steps 100 --gpus 1

Without CUDA it prints one line and exits 0. Writes ``benchmarks/results/gpu_check.json``: per stage the median
seconds per step after ``--warmup`` steps, images/s over all GPUs (batch per GPU x GPUs / s per step), the
peak GPU memory of rank 0, the precision the trainer chose and the final AP on the validation split (few
steps: a smoke number, not a result). Models, batch and image size are the package's current full preset's
(``reproduce_full.yaml``: R18-FPN student, R34-FPN teacher, 128 px, batch 2, as ``benchmarks/train_speed.py``
builds them) unless overridden with ``--set`` (e.g. ``--set data.batch_size=8``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _stage_worker(args) -> None:
    """Runs under torchrun: one stage (teacher | student | defeat) on every rank."""
    from train_speed import preset_config

    from defeat.data import CocoDetection
    from defeat.engine import DistInfo, cleanup, init_distributed, train  # noqa: F401
    from defeat.engine.setup import build_for_dataset, load_detector

    role = "teacher" if args.worker == "teacher" else "student"
    overrides = [
        f"schedule.max_steps={args.steps}",
        f"schedule.warmup_steps={min(50, args.steps // 5)}",
        "output.checkpoint_every=0",
        "output.log_every=10",
        f"output.dir={args.out}/{args.worker}",
        f"device={args.device}",
        "precision=auto",
        *args.set,
    ]
    cfg = preset_config(role, data=args.data, overrides=overrides, defeat=args.worker == "defeat")
    info = init_distributed(cfg.device)
    try:
        train_set = CocoDetection(cfg.data.train_images, cfg.data.train_annotations)
        val_set = CocoDetection(cfg.data.val_images, cfg.data.val_annotations)
        student = build_for_dataset(cfg.model, train_set.categories, cfg.seed)
        if args.worker != "defeat":
            train(cfg, student, student, train_set, val_set, info, kind="detector", progress=False)
            return
        from defeat.distill import build_distiller

        teacher, _ = load_detector(Path(args.out) / "teacher" / "model_final.pt", train_set.categories)
        distiller = build_distiller(student, teacher, cfg.distill, max_steps=cfg.schedule.max_steps)
        train(
            cfg,
            distiller,
            student,
            train_set,
            val_set,
            info,
            kind="distill",
            before_step=distiller.before_step,
            progress=False,
        )
    finally:
        cleanup(info)


def _summary(out: Path, batch: int, gpus: int, warmup_steps: int) -> dict:
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in log if "sec_per_step" in r and r["step"] > warmup_steps]
    sec = statistics.median(r["sec_per_step"] for r in steps) if steps else float("nan")
    final = json.loads((out / "metrics_final.json").read_text()) if (out / "metrics_final.json").is_file() else {}
    return {
        "sec_per_step": round(sec, 4),
        "images_per_s": round(batch * gpus / sec, 1),
        "peak_mem_gib_rank0": max((r["max_mem_gib"] for r in log if "max_mem_gib" in r), default=None),
        "steps": log[-1]["step"] if log else 0,
        "AP": round(100 * final.get("AP", float("nan")), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20, help="steps left out of the median step time")
    parser.add_argument("--gpus", type=int, default=0, help="0 = every visible GPU")
    parser.add_argument("--data", default="runs/train_speed_full_data")
    parser.add_argument("--set", action="append", default=[], help="config override for every stage")
    parser.add_argument("--out", default="")
    parser.add_argument("--json", default=str(HERE / "results" / "gpu_check.json"))
    parser.add_argument("--worker", default="")
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # cpu: a smoke test of the stages
    args = parser.parse_args()
    if args.worker:
        return _stage_worker(args)
    if not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device on this machine (torch {torch.__version__}); nothing measured")
        return
    from train_speed import ensure_data, preset_config

    from defeat.engine.precision import resolve_precision

    gpus = args.gpus or torch.cuda.device_count()
    ensure_data(args.data)
    out = Path(args.out or tempfile.mkdtemp(prefix="gpu_check_"))
    precision = resolve_precision("auto", "cuda:0")
    result = {
        "command": "python " + " ".join(sys.argv),
        "date": datetime.date.today().isoformat(),
        "gpus": gpus,
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "precision": precision.notice,
        "steps": args.steps,
        "overrides": args.set,
        "stages": {},
    }
    for stage in ("teacher", "student", "defeat"):
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={gpus}",
            __file__,
            "--worker",
            stage,
            "--steps",
            str(args.steps),
            "--data",
            args.data,
            "--out",
            str(out),
            *[a for o in args.set for a in ("--set", o)],
        ]
        print(f"gpu_check: {stage} ({gpus} GPU{'s' if gpus > 1 else ''}, {args.steps} steps)", flush=True)
        subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "4")})
        cfg = preset_config("teacher" if stage == "teacher" else "student", data=args.data, overrides=args.set)
        result["stages"][stage] = _summary(out / stage, cfg.data.batch_size, gpus, args.warmup)
        print(f"gpu_check: {stage}: {result['stages'][stage]}", flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
