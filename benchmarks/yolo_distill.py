"""Does DeFeat beat Ultralytics' own distillation on my data? The side-by-side study of issue 26 on YOLO.

Arms (each ``--seeds`` seeds, the seed list fixed before anything runs): ``baseline`` (the YOLO26n student alone,
Ultralytics' trainer), ``ultralytics`` (Ultralytics' ``distill_model=``: its projector and teacher-score-weighted
MSE, ``dis`` 6.0), ``decoupled`` (DeFeat in Ultralytics' loop) and the other feature modes given in ``--arms``
(``cwd``, ``pkd``, ``score_weighted``, ``fgd``, ``mgd``, ``all``, ...). The teacher (YOLO26s, from scratch) trains on
the *same* schedule as the students; the study warns when it is not ahead of the baseline. Every run is
``defeat train|distill`` in its own process with ``--threads`` torch threads; a finished run (``metrics.json`` in
its folder) is not run again, so an interrupted study resumes.

The plateau check (the doubling test): the baseline of the first seed also trains for 2 S steps; the schedule is at
its plateau when AP(2 S) is within 10 % of AP(S).

Writes ``--json`` (default ``benchmarks/results/yolo_distill.json``): per arm the per-seed COCO AP (the project's
evaluator) and Ultralytics' mAP50-95, mean, sd, s/step (the mean over seeds of each run's median logged s/step)
and its ratio to the baseline's, the detection training losses (box, cls) of the last epoch; the training boxes on
each level by DeFeat's level rule at ``--imgsz``; per arm a one-sided
Welch test against the baseline; ``welch_p_defeat_vs_ultralytics`` (one-sided, DeFeat better) with the difference
and its 95 % CI; the plateau check; the teacher's AP; the command and the machine.

    python benchmarks/yolo_distill.py --out runs/yolo_study --steps 600 --seeds 3 \\
        --arms baseline,ultralytics,decoupled,cwd,pkd,score_weighted,fgd,mgd
    python benchmarks/yolo_distill.py --out /tmp/yolo_smoke --steps 2 --seeds 2 --num-train 6 --num-val 3 \\
        --image-size 96 --imgsz 96 --batch 3 --arms baseline,ultralytics,decoupled --jobs 2 --json /tmp/yolo_smoke.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from defeat.distill.masks import assign_levels  # noqa: E402
from defeat.models.yolo import YOLO_LEVEL_K0  # noqa: E402
from defeat.study.compare_report import holm  # noqa: E402
from defeat.study.stats import ALPHA, beats  # noqa: E402
from defeat.utils import atomic_write_json  # noqa: E402

DEFEAT_MODES = ("decoupled", "object", "background", "all", "cwd", "pkd", "score_weighted", "fgd", "mgd")


def defeat(args, verb: str, sets: list[str]) -> tuple[list[str], float]:
    """Run ``defeat VERB`` (a child process, ``--threads`` threads); its command line and wall time."""
    cmd = [sys.executable, "-m", "defeat", verb, "--force"]
    for item in sets:
        cmd += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(ROOT / "src")}
    start = time.time()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL if args.quiet else None)
    return cmd, time.time() - start


def base_sets(args, data: Path, out: Path, name: str, seed: int, steps: int) -> list[str]:
    return [
        f"model.name={name}",
        f"data.train_images={data / 'train'}",
        f"data.train_annotations={data / 'train.json'}",
        f"data.val_images={data / 'val'}",
        f"data.val_annotations={data / 'val.json'}",
        f"data.batch_size={args.batch}",
        "data.workers=0",
        f"schedule.max_steps={steps}",
        f"yolo.imgsz={args.imgsz}",
        f"output.dir={out}",
        f"output.log_every={max(1, steps // 20)}",
        f"seed={seed}",
        f"device={args.device}",
    ]


def run(args, out: Path, verb: str, sets: list[str]) -> dict:
    """The metrics of the run in ``out`` (run first unless finished)."""
    if not (out / "metrics.json").is_file():
        defeat(args, verb, sets)
    return json.loads((out / "metrics.json").read_text())


def teacher_name(args) -> str:
    """``--teacher``, or the model name in the config that `defeat train` wrote beside ``--teacher-checkpoint``."""
    if not args.teacher_checkpoint:
        return args.teacher
    config = Path(args.teacher_checkpoint).parent / "config.yaml"
    return yaml.safe_load(config.read_text())["model"]["name"] if config.is_file() else "unknown (no config.yaml)"


def median_step_time(folder: Path) -> float:
    """The median of a run's logged s/step (each the mean of ``log_every`` batches): a time robust to the few
    intervals in which the machine was busy with something else."""
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return statistics.median(r["sec_per_step"] for r in records if "sec_per_step" in r and "event" not in r)


def last_epoch_train_loss(folder: Path) -> dict[str, float]:
    """The student's detection training losses (box, cls) of its last epoch, from Ultralytics' ``results.csv``: how
    far each arm fitted the detection objective (a distilled arm optimises a second term beside it)."""
    with open(folder / "ultralytics" / "results.csv", newline="") as handle:
        last = list(csv.DictReader(handle))[-1]
    return {key: float(last[f"train/{key}_loss"]) for key in ("box", "cls")}


def boxes_per_level(annotations: Path, imgsz: int) -> dict[str, int]:
    """The training boxes on each of YOLO's levels by DeFeat's level rule (k0 = ``YOLO_LEVEL_K0``), the images scaled
    as Ultralytics letterboxes them (long side to ``imgsz``): which levels get object cells at all."""
    coco = json.loads(annotations.read_text())
    long_side = {image["id"]: max(image["width"], image["height"]) for image in coco["images"]}
    kept = [a for a in coco["annotations"] if not a.get("iscrowd")]
    boxes = torch.tensor([a["bbox"] for a in kept], dtype=torch.float64).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy
    scale = torch.tensor([imgsz / long_side[a["image_id"]] for a in kept], dtype=torch.float64)
    levels = ["P3", "P4", "P5"]
    index = assign_levels(boxes * scale[:, None], levels, k0=YOLO_LEVEL_K0)
    return {name: int((index == i).sum()) for i, name in enumerate(levels)}


def summary(values: list[float]) -> dict:
    return {
        "values": values,
        "mean": statistics.fmean(values) if values else None,
        "sd": statistics.stdev(values) if len(values) > 1 else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder of the runs (data/, teacher/, <arm>/seed<k>/)")
    parser.add_argument("--json", default=str(ROOT / "benchmarks/results/yolo_distill.json"))
    parser.add_argument("--arms", default="baseline,ultralytics,decoupled")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per arm (0..N-1), fixed before the run")
    parser.add_argument("--steps", type=int, default=600, help="training batches of every student and the teacher")
    parser.add_argument("--student", default="yolo26n")
    parser.add_argument("--teacher", default="yolo26s")
    parser.add_argument(
        "--teacher-checkpoint",
        help="a trained torchvision teacher (`defeat train`'s model_final.pt on the same data) instead of training "
        "--teacher: the cross-family run, paired by stride (no `ultralytics` arm: it needs a YOLO teacher)",
    )
    parser.add_argument("--imgsz", type=int, default=192)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--num-train", type=int, default=600)
    parser.add_argument("--num-val", type=int, default=150)
    parser.add_argument("--image-size", type=int, default=192, help="embedded benchmark image side")
    parser.add_argument("--no-plateau", action="store_true", help="skip the 2S baseline run of the plateau check")
    parser.add_argument("--data", help="an existing embedded-benchmark folder (train/, val/, *.json) to use")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, each in its own process")
    parser.add_argument("--threads", type=int, help="torch threads per run (default: cores / --jobs)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quiet", action="store_true", help="hide the runs' own output")
    parser.add_argument("--registration", help="the study's pre-registration (recorded in the JSON)")
    args = parser.parse_args()
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ("baseline", "ultralytics", *DEFEAT_MODES)]
    if unknown or "baseline" not in arms:
        parser.error(f"--arms: needs baseline; unknown {unknown} (choose from baseline, ultralytics, {DEFEAT_MODES})")
    if args.teacher_checkpoint and "ultralytics" in arms:
        parser.error("--arms: ultralytics needs a YOLO teacher; drop it with --teacher-checkpoint")
    seeds = list(range(args.seeds))  # fixed before anything runs
    args.threads = args.threads or max(1, (os.cpu_count() or 1) // max(1, args.jobs))
    out = Path(args.out)
    data = Path(args.data) if args.data else out / "data"
    started = time.time()
    if not (data / "val.json").is_file():
        subprocess.run(
            [sys.executable, "-m", "defeat", "data", "synth", "--out", str(data), "--num-train", str(args.num_train),
             "--num-val", str(args.num_val), "--image-size", str(args.image_size), "--workers", "1"],
            check=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        )  # fmt: skip

    # the runs without a teacher (the baselines, the plateau's 2S baseline), then the distilled runs
    teacher_dir, long_dir = out / "teacher", out / "baseline" / "seed0_2x"
    first = [
        (out / "baseline" / f"seed{seed}", "train", base_sets(args, data, out / "baseline" / f"seed{seed}",
                                                              args.student, seed, args.steps))
        for seed in seeds
    ]  # fmt: skip
    if not args.no_plateau:
        first.append((long_dir, "train", base_sets(args, data, long_dir, args.student, 0, 2 * args.steps)))
    if args.teacher_checkpoint:  # trained already, with its own evaluation beside it (`defeat train`)
        checkpoint = Path(args.teacher_checkpoint)
        teacher = json.loads((checkpoint.parent / "metrics_final.json").read_text())
        teacher_sets = [f"distill.teacher_checkpoint={checkpoint}"]
    else:
        teacher_sets = [
            f"distill.teacher_model={args.teacher}",
            f"distill.teacher_weights={teacher_dir / 'student.pt'}",
        ]
    distilled = []  # seed-major: an interrupted study has every arm at the same number of seeds
    for seed in seeds:
        for arm in (a for a in arms if a != "baseline"):
            folder = out / arm / f"seed{seed}"
            sets = base_sets(args, data, folder, args.student, seed, args.steps)
            sets += teacher_sets
            sets += ["yolo.distill=ultralytics"] if arm == "ultralytics" else [f"distill.feature_mode={arm}"]
            distilled.append((folder, "distill", sets))
    # one pool (small YOLOs use 2 cores poorly: two 1-thread runs side by side do more work than one 2-thread run),
    # in this order: the teacher, the runs without one, the distilled runs, which wait for the teacher
    # (so a core that is done with the baselines starts distilling as soon as the teacher is ready)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        teacher_run = None
        if not args.teacher_checkpoint:
            teacher_sets_train = base_sets(args, data, teacher_dir, args.teacher, 0, args.steps)
            teacher_run = pool.submit(run, args, teacher_dir, "train", teacher_sets_train)

        def distil(task):
            if teacher_run is not None:
                teacher_run.result()
            return run(args, *task)

        first_runs = [pool.submit(run, args, *task) for task in first]
        distilled_runs = [pool.submit(distil, task) for task in distilled]
        first_metrics = [f.result() for f in first_runs]
        for f in distilled_runs:
            f.result()
        if teacher_run is not None:
            teacher = teacher_run.result()
    per_arm: dict[str, dict] = {}
    for arm in ["baseline", *(a for a in arms if a != "baseline")]:
        runs = [json.loads((out / arm / f"seed{seed}" / "metrics.json").read_text()) for seed in seeds]
        per_arm[arm] = {
            "coco_AP": summary([m["AP"] for m in runs]),
            "ultralytics_mAP50_95": summary([m["ultralytics_mAP50-95"] for m in runs]),
            "sec_per_step": statistics.fmean(median_step_time(out / arm / f"seed{seed}") for seed in seeds),
            "train_loss_last_epoch": {
                key: summary([last_epoch_train_loss(out / arm / f"seed{seed}")[key] for seed in seeds])
                for key in ("box", "cls")
            },
        }
    base_time = per_arm["baseline"]["sec_per_step"]
    for arm, record in per_arm.items():
        record["step_time_ratio"] = record["sec_per_step"] / base_time if base_time else None
        if arm != "baseline":
            record["vs_baseline"] = beats(record["coco_AP"]["values"], per_arm["baseline"]["coco_AP"]["values"])
    # every distilled arm vs the baseline is one family: decided on Holm-adjusted p (registered)
    adjusted = holm({arm: r["vs_baseline"]["p_value"] for arm, r in per_arm.items() if arm != "baseline"})
    family = sum(p is not None for p in adjusted.values())
    for arm, p_adj in adjusted.items():
        per_arm[arm].update(
            p_vs_baseline_holm=p_adj, holm_family=family, beats_baseline=p_adj is not None and p_adj < ALPHA
        )

    plateau = None
    if not args.no_plateau:
        long = first_metrics[-1]
        short = per_arm["baseline"]["coco_AP"]["values"][0]
        plateau = {
            "ap_S": short,
            "ap_2S": long["AP"],
            "steps": args.steps,
            "reached": bool(long["AP"] > 0 and abs(long["AP"] - short) <= 0.10 * long["AP"]),
            "change": (long["AP"] - short) / short if short else None,
            "rule": "AP at 2S within 10 % of AP at S (baseline, seed 0)",
        }
    lead = teacher["AP"] - (per_arm["baseline"]["coco_AP"]["mean"] or 0.0)
    defeat_vs = None
    if "decoupled" in per_arm and "ultralytics" in per_arm:
        defeat_vs = beats(per_arm["decoupled"]["coco_AP"]["values"], per_arm["ultralytics"]["coco_AP"]["values"])

    result = {
        "what": "issue 26: YOLO baseline vs Ultralytics' distillation vs DeFeat (and other modes) in Ultralytics' loop",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "seeds": seeds,
        "settings": {
            k: getattr(args, k)
            for k in (
                "steps",
                "student",
                "teacher",
                "imgsz",
                "batch",
                "num_train",
                "num_val",
                "image_size",
                "threads",
                "jobs",
                "device",
            )
        },  # fmt: skip
        "teacher": {
            "model": teacher_name(args),
            "checkpoint": args.teacher_checkpoint,
            "coco_AP": teacher["AP"],
            "ultralytics_mAP50_95": teacher.get("ultralytics_mAP50-95"),  # none for a torchvision teacher
        },
        "teacher_ahead_of_baseline": lead > 0,
        "teacher_lead_AP": lead,
        "teacher_ahead_by_3_AP": lead >= 0.03,
        "arms": per_arm,
        "welch_p_defeat_vs_ultralytics": defeat_vs["p_value"] if defeat_vs else None,
        "defeat_vs_ultralytics_outcome": None if not defeat_vs else "passes" if defeat_vs["pass"] else "not shown",
        "defeat_minus_ultralytics": {"diff": defeat_vs["diff"], "ci95": defeat_vs["ci"]} if defeat_vs else None,
        "defeat_vs_ultralytics_test": defeat_vs,
        "plateau": plateau,
        "train_boxes_per_level": boxes_per_level(data / "train.json", args.imgsz),  # DeFeat's object cells per level
        "registration": args.registration,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },  # fmt: skip
        "wall_s": round(time.time() - started, 1),
    }
    atomic_write_json(Path(args.json), result)
    print(json.dumps({arm: r["coco_AP"] for arm, r in per_arm.items()}, indent=1))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
