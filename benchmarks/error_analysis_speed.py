"""Benchmark: ``defeat analyze errors`` against the reference algorithm run the way mmdetection runs it.

The data set is COCO-shaped and synthetic (80 classes in 12 supercategories, ~7.2 ground truths per image, 100
detections per image: jittered true positives, look-alike and other-class confusions, badly localised boxes and
background false positives). The reference is mmdetection's ``coco_error_analysis.py`` algorithm on pycocotools:
deep copies, relabelling, and *full-category* COCOeval passes for every category (no restriction), run serially
(its 48-process pool only divides wall time; the CPU time is the same).

The full-scale reference takes hours on a small machine, so by default it runs on ``--ref-images`` images for
``--ref-categories`` of the 80 per-category jobs (each job costs the same: two full passes), and its time is
extrapolated linearly: x (80 / ref-categories) for the jobs, x (images / ref-images) for the image count (every
pass is linear in images at fixed density). Ours is timed both at the reference scale (same arrays checked to
``max_abs_diff``) and at full scale; the command's peak memory is measured in a subprocess.

    python benchmarks/error_analysis_speed.py            # writes benchmarks/results/error_analysis_speed.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SUPER_SIZES = (1, 8, 10, 5, 5, 10, 7, 10, 6, 5, 5, 8)  # COCO's 12 supercategories: 80 classes


def make_dataset(num_images: int, seed: int = 0, gt_per_image: float = 7.2, dets_per_image: int = 100):
    """Ground truth and results dicts, deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    cats, cid = [], 0
    for s, size in enumerate(SUPER_SIZES):
        for _ in range(size):
            cid += 1
            cats.append({"id": cid, "name": f"class{cid:02d}", "supercategory": f"super{s:02d}"})
    sup_of = {c["id"]: c["supercategory"] for c in cats}
    same_sup = {c["id"]: [d["id"] for d in cats if sup_of[d["id"]] == sup_of[c["id"]] and d["id"] != c["id"]]
                for c in cats}
    cat_p = rng.dirichlet(np.ones(80) * 0.7)
    images, anns, dets = [], [], []
    W, H = 640, 480

    def box(cx, cy, w, h):
        x, y = max(0.0, cx - w / 2), max(0.0, cy - h / 2)
        return [round(x, 2), round(y, 2), round(min(w, W - x), 2), round(min(h, H - y), 2)]

    for i in range(1, num_images + 1):
        images.append({"id": i, "width": W, "height": H, "file_name": f"{i:012d}.jpg"})
        n_gt = rng.poisson(gt_per_image)
        img_dets = []
        for _ in range(n_gt):
            c = int(rng.choice(80, p=cat_p)) + 1
            side = float(np.exp(rng.uniform(np.log(8), np.log(400))))
            w, h = side * rng.uniform(0.6, 1.4), side * rng.uniform(0.6, 1.4)
            cx, cy = rng.uniform(0, W), rng.uniform(0, H)
            b = box(cx, cy, w, h)
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3],
                         "iscrowd": int(rng.random() < 0.01)})
            for _ in range(rng.integers(1, 4)):  # detections of this object: correct, confused or mislocalised
                u = rng.random()
                dc = c if u < 0.7 else (int(rng.choice(same_sup[c])) if u < 0.85 and same_sup[c] else
                                        int(rng.integers(1, 81)))
                jit = 0.05 if rng.random() < 0.7 else 0.35
                img_dets.append((dc, box(cx + rng.normal(0, jit * w), cy + rng.normal(0, jit * h),
                                         w * np.exp(rng.normal(0, jit)), h * np.exp(rng.normal(0, jit))),
                                 float(rng.beta(5, 2))))
        while len(img_dets) < dets_per_image:  # background false positives
            side = float(np.exp(rng.uniform(np.log(8), np.log(300))))
            img_dets.append((int(rng.choice(80, p=cat_p)) + 1,
                             box(rng.uniform(0, W), rng.uniform(0, H), side, side * rng.uniform(0.5, 2)),
                             float(rng.beta(1.2, 6))))
        for dc, b, s in img_dets[:dets_per_image]:
            if b[2] > 0 and b[3] > 0:
                dets.append({"image_id": i, "category_id": dc, "bbox": b, "score": round(s, 5)})
    return {"images": images, "annotations": anns, "categories": cats}, dets


def reference(gt: dict, results: list[dict], cat_subset: list[int]) -> tuple[np.ndarray, float, float]:
    """mmdetection's algorithm (full-category passes, deep copies) for the main pass and ``cat_subset``.

    Returns the arrays, the CPU seconds of the main pass, and those of the per-category jobs.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    t0 = time.process_time()
    with contextlib.redirect_stdout(io.StringIO()):
        cg = COCO()
        cg.dataset = copy.deepcopy(gt)
        cg.createIndex()
        cd = cg.loadRes(copy.deepcopy(results))
        ev = COCOeval(copy.deepcopy(cg), copy.deepcopy(cd), "bbox")
        ev.params.iouThrs, ev.params.maxDets = np.array([0.75, 0.5, 0.1]), [100]
        ev.params.areaRng = [[0, 1e10], [0, 1024], [1024, 9216], [9216, 1e10]]
        ev.evaluate()
        ev.accumulate()
        ps = ev.eval["precision"][..., 0]
        ps = np.concatenate([ps, np.zeros((4, *ps.shape[1:]))])
        t_main = time.process_time() - t0
        cat_ids = cg.getCatIds()
        for k, c in enumerate(cat_ids):
            if c not in cat_subset:
                continue
            dt = copy.deepcopy(cd)
            dt.dataset["annotations"] = [a for a in dt.dataset["annotations"] if a["category_id"] == c]
            dt.createIndex()
            same = cg.getCatIds(supNms=[cg.loadCats(c)[0]["supercategory"]])
            for row, forgiven in ((3, same), (4, None)):
                g = copy.deepcopy(cg)
                for a in g.dataset["annotations"]:
                    if a["category_id"] != c and (forgiven is None or a["category_id"] in forgiven):
                        a["ignore"], a["iscrowd"], a["category_id"] = 1, 1, c
                e = COCOeval(g, copy.deepcopy(dt), "bbox")
                e.params.imgIds, e.params.maxDets, e.params.iouThrs = cg.getImgIds(), [100], [0.1]
                e.params.areaRng = ev.params.areaRng
                e.evaluate()
                e.accumulate()
                ps[row, :, k] = e.eval["precision"][0, :, k, :, 0]
    ps[ps == -1] = 0
    ps[5] = ps[4] > 0
    ps[6] = 1
    return ps, t_main, time.process_time() - t0 - t_main


def ours(gt: dict, results: list[dict]) -> tuple[np.ndarray, float, float]:
    from defeat.analysis import coco_errors as ce

    t0, c0 = time.perf_counter(), time.process_time()
    dets = ce.validate_detections(results, gt, "results.json")
    res = ce.error_curves(gt, dets)
    return res.precision, time.process_time() - c0, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--ref-images", type=int, default=500)
    ap.add_argument("--ref-categories", type=int, default=8, help="per-category jobs the reference runs (of 80)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "error_analysis_speed.json"))
    args = ap.parse_args()

    # 1) same arrays and speed at the reference scale
    gt_s, res_s = make_dataset(args.ref_images, seed=1)
    cat_subset = [c["id"] for c in gt_s["categories"]][:: max(1, 80 // args.ref_categories)][: args.ref_categories]
    ref_ps, ref_main, ref_jobs = reference(gt_s, res_s, cat_subset)
    ref_cpu = ref_main + ref_jobs
    our_ps, our_cpu_s, our_wall_s = ours(gt_s, res_s)
    cols = [k for k, c in enumerate(sorted(c["id"] for c in gt_s["categories"])) if c in cat_subset]
    diff = max(float(np.abs(our_ps[:3] - ref_ps[:3]).max()), float(np.abs(our_ps[:, :, cols] - ref_ps[:, :, cols]).max()))
    ref_cpu_all_cats = ref_main + ref_jobs * 80 / len(cat_subset)
    print(f"reference scale: {args.ref_images} images, {len(res_s)} detections, {len(gt_s['annotations'])} GT")
    print(f"  reference CPU {ref_cpu:.1f} s for main pass + {len(cat_subset)} categories; ours {our_cpu_s:.2f} s "
          f"CPU for all 80; max |diff| {diff:.3g}")

    # 2) ours at full scale, as the command (subprocess: peak RSS), and in-process
    gt_f, res_f = make_dataset(args.images, seed=2)
    with tempfile.TemporaryDirectory() as tmp:
        gp, rp = Path(tmp) / "gt.json", Path(tmp) / "res.json"
        gp.write_text(json.dumps(gt_f))
        rp.write_text(json.dumps(res_f))
        cmd = [sys.executable, "-m", "defeat.cli.main", "analyze", "errors", "--gt", str(gp), "--dets",
               f"model={rp}", "--out", str(Path(tmp) / "out"), "--categories", "class01", "--quiet"]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        cmd_wall = time.perf_counter() - t0
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    _, full_cpu, full_wall = ours(gt_f, res_f)
    print(f"full scale: {args.images} images, {len(res_f)} detections, {len(gt_f['annotations'])} GT")
    print(f"  ours: {full_wall:.1f} s wall / {full_cpu:.1f} s CPU in-process; command {cmd_wall:.1f} s, "
          f"peak RSS {peak_mb:.0f} MB")

    # 3) extrapolate the reference: all 80 jobs, then images (every pass is linear in images at fixed density)
    ref_full_cpu = ref_cpu_all_cats * args.images / args.ref_images
    speedup_small = ref_cpu_all_cats / our_cpu_s
    speedup = ref_full_cpu / full_cpu
    print(f"speedup at {args.ref_images} images: {speedup_small:.0f}x; extrapolated at {args.images}: {speedup:.0f}x")
    result = {
        "speedup": round(speedup, 1),
        "speedup_measured_at_ref_scale": round(speedup_small, 1),
        "max_abs_diff": diff,
        "peak_rss_mb": round(peak_mb, 1),
        "ours_full_scale": {"images": args.images, "detections": len(res_f), "gt": len(gt_f["annotations"]),
                            "compute_wall_s": round(full_wall, 2), "compute_cpu_s": round(full_cpu, 2),
                            "command_wall_s": round(cmd_wall, 2)},
        "ours_ref_scale": {"images": args.ref_images, "cpu_s": round(our_cpu_s, 3), "wall_s": round(our_wall_s, 3)},
        "reference_measured": {"images": args.ref_images, "detections": len(res_s), "gt": len(gt_s["annotations"]),
                               "categories_run": len(cat_subset), "main_pass_cpu_s": round(ref_main, 2),
                               "category_jobs_cpu_s": round(ref_jobs, 2)},
        "reference_extrapolated_cpu_s": {"all_80_categories_at_ref_scale": round(ref_cpu_all_cats, 1),
                                         f"at_{args.images}_images": round(ref_full_cpu, 1)},
        "method": ("reference = mmdetection's coco_error_analysis algorithm on pycocotools (deep copies, "
                   "full-category passes), serial CPU time; measured on main pass + categories_run jobs at "
                   "ref scale; jobs scaled x80/categories_run, then everything x images/ref_images. Ours = "
                   "defeat.analysis.coco_errors.error_curves (validation included), CPU time. Arrays compared on "
                   "the main pass and the categories the reference ran. peak_rss_mb = the full-scale command "
                   "(without per-category plots: --categories class01)."),
        "command": "python benchmarks/error_analysis_speed.py " + " ".join(sys.argv[1:]),
        "analyze_command": "defeat analyze errors --gt gt.json --dets model=res.json --out out "
                           "--categories class01 --quiet",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "processor": platform.processor() or platform.machine(), "note": "CPU shared with other jobs"},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
