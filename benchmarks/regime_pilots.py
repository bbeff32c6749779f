"""Pilots for the full reproduction's regime (issue 27): learning curves and cost per step of candidate students and
teachers on the embedded benchmark, before the preset is fixed.

Each pilot is one ``defeat train`` run (from scratch, GroupNorm, cosine schedule, evaluated at 8 evenly spaced
points) of a model for S steps; the doubling test compares a model's final AP at S and at 2S steps (the same
schedule shape stretched). Pilots run as separate 1-thread processes, ``--jobs`` at a time (two 1-thread
processes use 2 CPU cores better than one 2-thread process: benchmarks/results/contention.json, ``one_thread``).
Finished pilots (``metrics_final.json``) are kept, so an interrupted run resumes where it stopped.

    python benchmarks/regime_pilots.py --out runs/pilots [--only NAME,NAME] [--jobs 2]

writes ``benchmarks/results/regime_pilots.json``: per pilot its command, the AP curve ``[[step, AP %], ...]``,
the final AP, and the median s/step it measured (1 thread, with whatever else ran on the machine: the machine's
load average is recorded beside it, so compare s/step only between pilots of similar load).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from defeat.utils import atomic_write_json, atomic_write_text

#: the common config of every pilot: the full preset's 128-px Faster R-CNN settings (src/defeat/configs/
#: reproduce_full.yaml ``common``) and data from ``defeat data synth`` (800 train / 100 val unless the pilot says)
BASE_CONFIG = """\
precision: auto
model:
  name: faster_rcnn_r18_fpn
  norm: gn
  min_size: 128
  max_size: 128
  anchor_sizes: [12, 24, 48, 96, 192]
  rpn_pre_nms_top_n_train: 200
  rpn_post_nms_top_n_train: 100
  rpn_pre_nms_top_n_test: 100
  rpn_post_nms_top_n_test: 100
  rpn_batch_size_per_image: 128
  box_batch_size_per_image: 32
  box_detections_per_img: 50
data: {batch_size: 2, workers: 1}
optim: {lr: 0.02}
schedule: {policy: cosine}
eval: {batch_size: 4}
output: {checkpoint_every: 100000, log_every: 10}
"""

TINY, SMALL, R18, R34 = "faster_rcnn_tiny_fpn", "faster_rcnn_small_fpn", "faster_rcnn_r18_fpn", "faster_rcnn_r34_fpn"

#: name -> (model, steps, train images, seed, extra --set overrides); warmup = steps / 15
PILOTS: dict[str, tuple[str, int, int, int, list[str]]] = {
    # the student's plateau: doubling S on 800 images
    "tiny_1500": (TINY, 1500, 800, 0, []),
    "tiny_3000": (TINY, 3000, 800, 0, []),
    "tiny_6000": (TINY, 6000, 800, 0, []),
    "tiny_8000": (TINY, 8000, 800, 0, []),
    "tiny_12000": (TINY, 12000, 800, 0, []),
    "tiny_16000": (TINY, 16000, 800, 0, []),
    "tiny_24000": (TINY, 24000, 800, 0, []),
    # data size: fewer images (does overfitting bring the plateau sooner?)
    "tiny_3000_n200": (TINY, 3000, 200, 0, []),
    "tiny_3000_n400": (TINY, 3000, 400, 0, []),
    "tiny_6000_n400": (TINY, 6000, 400, 0, []),
    # optimiser: a faster start?
    "tiny_3000_adamw": (TINY, 3000, 800, 0, ["optim.name=adamw", "optim.lr=0.002", "optim.weight_decay=0.05"]),
    "tiny_3000_sgd06": (TINY, 3000, 800, 0, ["optim.lr=0.06"]),
    # seeds: the baseline's seed sd at the plateau's S
    "tiny_12000_s1": (TINY, 12000, 800, 1, []),
    "tiny_12000_s2": (TINY, 12000, 800, 2, []),
    # the teacher on the students' schedule
    "r18_12000": (R18, 12000, 800, 0, []),
    # a closer, cheaper teacher: the toy backbone at twice the width (the full preset's teacher)
    "small_12000": (SMALL, 12000, 800, 0, []),
    # distilled students on the plateau's schedule (below the teacher?): `defeat distill`, teacher r18_12000
    "tiny_12000_decoupled": (TINY, 12000, 800, 0, ["distill.feature_mode=decoupled"]),
    "tiny_12000_all": (TINY, 12000, 800, 0, ["distill.feature_mode=all"]),
}
#: distilled pilots -> their teacher pilot (authors' alpha 4 / 16, no proposal term, as the presets)
TEACHER_OF = {"tiny_12000_decoupled": "r18_12000", "tiny_12000_all": "r18_12000"}


def data_dir(out: Path, num_train: int) -> Path:
    return out / f"data_n{num_train}"


def synth(out: Path, num_train: int) -> None:
    """The pilots' data: ``defeat data synth`` at 128 px, 2-6 objects, 100 val images (made once)."""
    folder = data_dir(out, num_train)
    if not (folder / "val.json").is_file():
        cmd = ["defeat", "data", "synth", "--out", str(folder), "--seed", "0", "--num-train", str(num_train)]
        cmd += ["--num-val", "100", "--image-size", "128", "--min-objects", "2", "--max-objects", "6"]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def command(out: Path, name: str) -> list[str]:
    model, steps, num_train, seed, extra = PILOTS[name]
    data = data_dir(out, num_train)
    sets = [
        f"model.name={model}",
        f"schedule.max_steps={steps}",
        f"schedule.warmup_steps={max(1, steps // 15)}",
        f"eval.every_steps={steps // 8}",
        f"seed={seed}",
        f"data.train_images={data}/train",
        f"data.train_annotations={data}/train.json",
        f"data.val_images={data}/val",
        f"data.val_annotations={data}/val.json",
        f"output.dir={out / name}",
        *extra,
    ]
    verb = "train"
    if name in TEACHER_OF:
        verb = "distill"
        sets += [
            f"distill.teacher_checkpoint={out / TEACHER_OF[name] / 'model_final.pt'}",
            "distill.proposal_mode=none",
            "distill.teacher_check_images=0",
        ]
    return ["defeat", verb, str(out / "base.yaml"), *(a for s in sets for a in ("--set", s))]


def summary(out: Path, name: str) -> dict | None:
    """The recorded numbers of one finished pilot (None when it has not finished)."""
    metrics = out / name / "metrics.jsonl"
    if not (out / name / "metrics_final.json").is_file():
        return None
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    curve = sorted({r["step"]: round(100 * r["AP"], 2) for r in rows if r.get("event") == "eval"}.items())
    rates = sorted(r["sec_per_step"] for r in rows if "sec_per_step" in r and r["step"] > 20)
    model, steps, num_train, seed, extra = PILOTS[name]
    return {
        "model": model,
        "steps": steps,
        "train_images": num_train,
        "seed": seed,
        "overrides": extra,
        "curve": [list(p) for p in curve],
        "final_AP": curve[-1][1] if curve else None,
        "median_s_per_step_1_thread": rates[len(rates) // 2] if rates else None,
        "command": shlex.join(command(out, name)),
    }


def doubling(pilots: dict) -> list[dict]:
    """Every (S, 2S) pair of finished pilots that differ only in steps: gain = (AP(2S) - AP(S)) / AP(S), near the
    plateau when <= 0.10 (the doubling test of ``defeat.study.regime``, here on one seed)."""
    out = []
    for name, p in pilots.items():
        for other, q in pilots.items():
            same = (p["model"], p["train_images"], p["seed"], p["overrides"]) == (
                q["model"],
                q["train_images"],
                q["seed"],
                q["overrides"],
            )
            if same and q["steps"] == 2 * p["steps"] and p["final_AP"]:
                gain = (q["final_AP"] - p["final_AP"]) / p["final_AP"]
                out.append(
                    {
                        "S": name,
                        "2S": other,
                        "AP_S": p["final_AP"],
                        "AP_2S": q["final_AP"],
                        "gain": round(gain, 4),
                        "near_plateau": gain <= 0.10,
                    }
                )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/pilots", type=Path)
    parser.add_argument("--only", default="", help="comma-separated pilot names (default: all)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--collect-only", action="store_true", help="record the finished pilots, run nothing")
    parser.add_argument("--json", default="benchmarks/results/regime_pilots.json")
    parser.add_argument("--note", default="", help="how the pilots ran (threads, load), kept in the JSON")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "base.yaml", BASE_CONFIG)
    names = [n for n in (args.only.split(",") if args.only else PILOTS) if n]
    unknown = [n for n in names if n not in PILOTS]
    if unknown:
        sys.exit(f"regime_pilots: unknown pilot(s) {unknown}; known: {', '.join(PILOTS)}")
    load_before = os.getloadavg()
    if not args.collect_only:
        env = dict(os.environ, OMP_NUM_THREADS="1")
        todo = [n for n in names if summary(args.out, n) is None]
        todo.sort(key=lambda n: n in TEACHER_OF)  # teachers before their students
        running: list[tuple[str, subprocess.Popen]] = []
        while todo or running:
            while todo and len(running) < args.jobs:
                ready = [n for n in todo if n not in TEACHER_OF or summary(args.out, TEACHER_OF[n]) is not None]
                if not ready and not running:
                    sys.exit(f"regime_pilots: {todo} need their teacher pilots ({TEACHER_OF}): run those too")
                if not ready:  # the students wait for their teacher
                    break
                name = ready[0]
                todo.remove(name)
                log = open(args.out / f"{name}.log", "w")  # noqa: SIM115 -- closed with the process
                print(f"[pilots] start {name}", flush=True)
                synth(args.out, PILOTS[name][2])
                shutil.rmtree(args.out / name, ignore_errors=True)  # an unfinished pilot starts over
                running.append((name, subprocess.Popen(command(args.out, name), stdout=log, stderr=log, env=env)))
            time.sleep(5)
            for entry in list(running):
                if entry[1].poll() is not None:
                    running.remove(entry)
                    print(f"[pilots] end {entry[0]} rc={entry[1].returncode}", flush=True)
    pilots = {n: s for n in PILOTS if (s := summary(args.out, n)) is not None}
    record = {
        "what": __doc__.splitlines()[0],
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "command": "python " + shlex.join(sys.argv),
        "base_config": BASE_CONFIG,
        "note": args.note,
        "doubling": doubling(pilots),
        "pilots": pilots,
    }
    atomic_write_json(args.json, record)
    print(json.dumps({n: p["final_AP"] for n, p in record["pilots"].items()}, indent=1))


if __name__ == "__main__":
    main()
