"""Do `defeat init`'s distillation defaults hold on real photos? The second data set of issue 28.

The embedded benchmark (synthetic shapes) decided init's KD defaults: decoupled features, no proposal term, the
authors' fixed weights. This study asks the same questions on real COCO photos: ``../shared/data/coco128`` (128
train2017 images), person class only (the one class with enough boxes: 254 in 61 images), split by a seeded
shuffle into ``--val`` validation images and the rest for training (images without a person stay: negatives).

Steps, each a ``defeat`` command a user runs (so the numbers are the commands' numbers), each skipped when its
output exists (an interrupted study resumes):

1. the data: ``defeat data import-yolo`` of coco128, then the person-only split (this script, plain JSON);
2. ``defeat init --val-annotations ... --image-size 256 --model STUDENT --teacher TEACHER --epochs E``: the three
   configs as a user gets them (student, teacher at 3x the steps, distill config with init's defaults);
3. ``defeat train <stem>_teacher.yaml``: the teacher, from scratch;
4. ``defeat compare <stem>_distill.yaml --methods baseline,decoupled,decoupled_proposals,decoupled_auto --seeds N``:
   init's defaults (``decoupled``) against the proposal term it no longer writes and ``weights: auto``, every arm
   over the same seeds, tests decided by compare's rules (one-sided Welch, Holm over the methods).

Writes ``--json`` (default ``benchmarks/results/init_defaults_coco128.json``): the commands, the data split, the
teacher's AP, compare's per-arm AP lists, tests and verdict, and the machine.

    python benchmarks/init_defaults_real.py --out /work/runs/init_coco128 --jobs 2
    python benchmarks/init_defaults_real.py --out /tmp/ic --epochs 1 --seeds 1 --jobs 1 --json /tmp/ic.json \\
        --methods baseline,decoupled_auto --compare-set distill.force=true   # a smoke run (~2 min)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from defeat.utils import atomic_write_json  # noqa: E402

COCO128 = ROOT.parent / "shared" / "data" / "coco128"
METHODS = "baseline,decoupled,decoupled_proposals,decoupled_auto"


def defeat(needed: bool, *argv: str) -> str:
    """Run ``defeat ARGV`` in a child process when ``needed`` (its output is missing); its command line as a user
    types it (recorded either way: the JSON lists every step, also those an earlier invocation ran)."""
    line = "defeat " + " ".join(argv)
    if needed:
        print(f"$ {line}", flush=True)
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        subprocess.run([sys.executable, "-m", "defeat", *argv], check=True, env=env)
    return line


def person_split(coco: dict, n_val: int, seed: int) -> tuple[dict, dict]:
    """``coco`` reduced to its ``person`` boxes and split into (train, val) by a seeded shuffle of the images."""
    person = next(c for c in coco["categories"] if c["name"] == "person")
    images = sorted(coco["images"], key=lambda im: im["file_name"])
    random.Random(seed).shuffle(images)
    val_ids = {im["id"] for im in images[:n_val]}

    def part(keep) -> dict:
        ims = [im for im in coco["images"] if keep(im["id"])]
        ids = {im["id"] for im in ims}
        anns = [a for a in coco["annotations"] if a["image_id"] in ids and a["category_id"] == person["id"]]
        return {**coco, "images": ims, "annotations": anns, "categories": [person]}

    return part(lambda i: i not in val_ids), part(lambda i: i in val_ids)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="study folder (data, configs, runs)")
    p.add_argument("--coco128", default=str(COCO128), help="the coco128 folder (images/, labels/, classes.txt)")
    p.add_argument("--val", type=int, default=32, help="validation images (the rest train)")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--student", default="faster_rcnn_tiny_fpn")
    p.add_argument("--teacher", default="faster_rcnn_small_fpn")
    p.add_argument("--epochs", type=float, default=100.0, help="student schedule (init --epochs)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--methods", default=METHODS)
    p.add_argument("--compare-set", action="append", default=[], help="KEY=VALUE passed to compare's --set")
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "init_defaults_coco128.json"))
    args = p.parse_args(argv)
    src, out = Path(args.coco128), Path(args.out)
    if not (src / "classes.txt").is_file():
        raise SystemExit(f"{src}: no coco128 here (classes.txt missing); pass --coco128")
    out.mkdir(parents=True, exist_ok=True)
    images = src / "images" / "train2017"
    commands, start = [], time.time()

    full = out / "coco128.json"
    labels = src / "labels" / "train2017"
    commands.append(
        defeat(not full.is_file(), "data", "import-yolo", "--images", str(images), "--labels", str(labels),
               "--classes", str(src / "classes.txt"), "--out", str(full))
    )  # fmt: skip
    train_json, val_json = out / "person_train.json", out / "person_val.json"
    if not val_json.is_file():
        train, val = person_split(json.loads(full.read_text()), args.val, args.split_seed)
        atomic_write_json(train_json, train)
        atomic_write_json(val_json, val)
    train, val = json.loads(train_json.read_text()), json.loads(val_json.read_text())
    split = {
        "train_images": len(train["images"]),
        "train_boxes": len(train["annotations"]),
        "val_images": len(val["images"]),
        "val_boxes": len(val["annotations"]),
        "val_images_with_a_person": len({a["image_id"] for a in val["annotations"]}),
        "split_seed": args.split_seed,
    }
    print(f"person-only split: {split}", flush=True)

    cfg = out / "person.yaml"
    stem = out / "person"
    commands.append(
        defeat(not cfg.is_file(), "init", "--annotations", str(train_json), "--images", str(images),
               "--val-annotations", str(val_json), "--val-images", str(images),
               "--image-size", str(args.image_size), "--model", args.student, "--teacher", args.teacher,
               "--epochs", str(args.epochs), "--out", str(cfg))
    )  # fmt: skip
    teacher_dir = out / "teacher"
    needed = not (teacher_dir / "metrics_final.json").is_file()
    commands.append(defeat(needed, "train", f"{stem}_teacher.yaml", "--set", f"output.dir={teacher_dir}", "--resume"))
    compare_dir = out / "compare"
    compare_sets = ["--set", f"distill.teacher_checkpoint={teacher_dir / 'model_final.pt'}"]
    compare_sets += ["--set", "distill.baseline_checkpoint="]
    for item in args.compare_set:
        compare_sets += ["--set", item]
    commands.append(
        defeat(True, "compare", f"{stem}_distill.yaml", *compare_sets, "--methods", args.methods,
               "--seeds", str(args.seeds), "--jobs", str(args.jobs), "--out", str(compare_dir))
    )  # fmt: skip

    results = json.loads((compare_dir / "results.json").read_text())
    teacher = json.loads((teacher_dir / "metrics_final.json").read_text())
    record = {
        "what": "defeat init's distillation defaults on real photos: coco128 person-only, the configs init writes "
        f"({args.student} student, {args.teacher} teacher, {args.image_size} px, {args.epochs:g} epochs), "
        "then defeat compare of init's default (decoupled) against the proposal term and weights auto",
        "command": "python benchmarks/init_defaults_real.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "commands": commands,
        "data": {"source": "../shared/data/coco128 (COCO train2017 images, YOLO labels)", **split},
        "teacher_AP": round(100 * float(teacher.get("AP", teacher.get("bbox", {}).get("AP", float("nan")))), 2),
        "compare": {k: results.get(k) for k in ("methods", "verdict", "statistics", "cost", "teacher", "seeds")},
        "compare_report": str(compare_dir / "report.md"),
        "wall_seconds_this_invocation": round(time.time() - start, 1),
        "machine": {
            "cpu_threads": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
    }
    atomic_write_json(Path(args.json), record)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
