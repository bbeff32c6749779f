"""Overhead of one-stage DeFeat (``DeFeatDistiller``) beyond the compute it cannot avoid: step time and memory.

The method of ``benchmarks/distill_overhead.py`` (two-stage), on RetinaNet R50-FPN -> R18-FPN at the embedded
benchmark's 320 px by default, one fixed batch, same models:

* ``step_ratio`` = DeFeat training step (decoupled features, no head term) ÷ (student-only training step
  + teacher backbone+FPN no-grad forward + the adapters' forward, imitation loss and backward alone).
  Goal <= 1.05. With the head term on (decoupled anchors), the teacher's classification head on its FPN
  maps is timed alone and reported separately (``head_step_ratio`` adds it to the denominator).
  Wall-clock medians as in the two-stage benchmark; the same ratios on this process's CPU time
  (``*_cpu_time``, all threads) are reported beside them because on a shared machine wall time also
  measures the neighbours' load. ``step_ratio_adapters_with_input_grad`` counts in the denominator the
  gradient the adapters pass back into the student's FPN too (the two-stage benchmark's adapters-alone
  backward computes weight gradients only, and ``step_ratio`` keeps that definition).
  CPU runs use one thread by default (``--threads``): on a shared machine, 2-thread timings swung 5x.
* ``memory_ratio`` = (peak of DeFeat training - peak of student-only training) ÷ (peak of teacher inference -
  the process's idle baseline). Goal <= 1.1. Each peak comes from a fresh subprocess (CPU: peak RSS above the
  RSS after imports; CUDA: ``max_memory_allocated``). "Teacher inference" is the full detector in eval mode;
  the stricter figure against the teacher's backbone+FPN alone is ``memory_ratio_vs_teacher_fpn``, and the
  footprint with the head term on is ``memory_ratio_with_head``.

Timed components are interleaved (A, B, C, ..., A, B, ...) so machine noise hits all alike; medians.
Optimisers use lr = 0 so every repeat does the same work on the same weights.

    python benchmarks/distill_overhead_one_stage.py                      # CPU, batch 2, 9 repeats
    python benchmarks/distill_overhead_one_stage.py --teacher fcos_r50_fpn --student fcos_r18_fpn --out /tmp/x.json
    python benchmarks/distill_overhead_one_stage.py --device cuda --batch 8 --repeats 20
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from defeat.config import DistillConfig, ModelConfig
from defeat.distill import DeFeatDistiller, FeatureAdapters
from defeat.models import build_detector

NUM_CLASSES = 9  # the embedded benchmark's (defeat data synth) class count
ANCHOR_SIZES = [16, 32, 64, 128, 256]  # configs/distill_retinanet_r50_r18.yaml


def make_batch(batch: int, size: int, device: torch.device, seed: int = 0):
    """``batch`` size x size images (noise + bright rectangles) with 2-8 boxes of 12-160 px each."""
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(batch):
        image = torch.rand(3, size, size, generator=g) * 0.4
        count = int(torch.randint(2, 9, (1,), generator=g))
        sides = torch.randint(12, 161, (count, 2), generator=g).float()
        corners = torch.rand(count, 2, generator=g) * (size - sides)
        boxes = torch.cat([corners, corners + sides], dim=1).round()
        for x1, y1, x2, y2 in boxes.int().tolist():
            image[:, y1:y2, x1:x2] += 0.5
        images.append(image.clamp(0, 1).to(device))
        targets.append({"boxes": boxes.to(device), "labels": torch.randint(1, NUM_CLASSES + 1, (count,),
                                                                           generator=g).to(device)})
    return images, targets


def model_config(args, name: str) -> ModelConfig:
    return ModelConfig(name=name, min_size=args.size, max_size=args.size, norm="gn", anchor_sizes=list(ANCHOR_SIZES))


def build(args, device):
    torch.manual_seed(0)
    student = build_detector(model_config(args, args.student), NUM_CLASSES).to(device).train()
    torch.manual_seed(1)
    teacher = build_detector(model_config(args, args.teacher), NUM_CLASSES).to(device)
    return student, teacher


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds over all its threads) of one call."""
    sync(device)
    start, start_cpu = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - start, time.process_time() - start_cpu


def train_step(module, optimizer, images, targets, seed):
    torch.manual_seed(seed)
    losses = module(images, targets)
    optimizer.zero_grad(set_to_none=True)
    sum(losses.values()).backward()
    optimizer.step()


FEATURES_ONLY = DistillConfig(feature_mode="decoupled", proposal_mode="none")
WITH_HEAD = DistillConfig(feature_mode="decoupled", proposal_mode="decoupled")


def run_timing(args, device) -> dict:
    images, targets = make_batch(args.batch, args.size, device)
    student, teacher = build(args, device)
    defeat = DeFeatDistiller(student, teacher, FEATURES_ONLY)
    with_head = DeFeatDistiller(student, teacher, WITH_HEAD)
    with_head.adapters = defeat.adapters  # same adapters; only the head term differs
    opt_student = torch.optim.SGD(student.parameters(), lr=0.0, momentum=0.9)
    opt_defeat = torch.optim.SGD(defeat.parameters(), lr=0.0, momentum=0.9)

    # Inputs of the "alone" components: the transformed batch and both FPNs.
    with torch.no_grad():
        image_list, _ = student.transform(images, targets)
        s_maps = student.backbone(image_list.tensors)
        t_maps = teacher.backbone(image_list.tensors)
    s_named = dict(zip(defeat.levels, s_maps.values()))
    t_list = list(t_maps.values())
    adapters = FeatureAdapters(defeat.levels).to(device)

    def adapters_alone():
        out = adapters(s_named)
        loss = sum((o - t).pow(2).sum() / o.numel() for o, t in zip(out.values(), t_list))
        adapters.zero_grad(set_to_none=True)
        loss.backward()

    s_leaves = {name: f.detach().requires_grad_(True) for name, f in s_named.items()}

    def adapters_alone_with_input_grad():  # also the gradient the adapters pass back into the student's FPN
        out = adapters(s_leaves)
        loss = sum((o - t).pow(2).sum() / o.numel() for o, t in zip(out.values(), t_list))
        adapters.zero_grad(set_to_none=True)
        for leaf in s_leaves.values():
            leaf.grad = None
        loss.backward()

    def teacher_fpn():
        with torch.no_grad():
            teacher.backbone(image_list.tensors)

    def teacher_cls_head():
        with torch.no_grad():
            teacher.head.classification_head(t_list)

    components = {
        "student_step": lambda seed: train_step(student, opt_student, images, targets, seed),
        "teacher_fpn_forward": lambda seed: teacher_fpn(),
        "adapters_forward_backward": lambda seed: adapters_alone(),
        "adapters_forward_backward_with_input_grad": lambda seed: adapters_alone_with_input_grad(),
        "defeat_step": lambda seed: train_step(defeat, opt_defeat, images, targets, seed),
        "teacher_cls_head_forward": lambda seed: teacher_cls_head(),
        "defeat_step_with_head": lambda seed: train_step(with_head, opt_defeat, images, targets, seed),
    }
    times: dict[str, list[float]] = {name: [] for name in components}
    cpu_times: dict[str, list[float]] = {name: [] for name in components}
    for rep in range(args.warmup + args.repeats):
        for name, fn in components.items():
            seconds, cpu_seconds = timed(lambda: fn(rep), device)
            if rep >= args.warmup:
                times[name].append(seconds)
                cpu_times[name].append(cpu_seconds)

    def ratios(t: dict[str, list[float]], adapters_key: str = "adapters_forward_backward"):
        med = {name: statistics.median(v) for name, v in t.items()}
        irreducible = med["student_step"] + med["teacher_fpn_forward"] + med[adapters_key]
        return (med["defeat_step"] / irreducible,
                med["defeat_step_with_head"] / (irreducible + med["teacher_cls_head_forward"]), med)

    step_ratio, head_step_ratio, med = ratios(times)
    cpu_step_ratio, cpu_head_step_ratio, cpu_med = ratios(cpu_times)
    input_grad_step_ratio, _, _ = ratios(times, "adapters_forward_backward_with_input_grad")
    return {
        "step_ratio": step_ratio, "head_step_ratio": head_step_ratio,
        "step_ratio_adapters_with_input_grad": input_grad_step_ratio,
        # On a shared machine wall time also measures the neighbours' load; CPU time of this process does much less.
        "step_ratio_cpu_time": cpu_step_ratio, "head_step_ratio_cpu_time": cpu_head_step_ratio,
        "teacher_cls_head_seconds": med["teacher_cls_head_forward"],
        "head_term_added_seconds": med["defeat_step_with_head"] - med["defeat_step"],
        "median_seconds": med, "all_seconds": times, "median_cpu_seconds": cpu_med, "all_cpu_seconds": cpu_times,
    }


# ------------------------------------------------------------------------------------------- memory probes
def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()


def memory_probe(args) -> dict:
    """Runs in a fresh process: footprint of one workload above the idle baseline after imports."""
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.init()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    else:
        baseline = _rss_bytes()
    images, targets = make_batch(args.batch, args.size, device)
    probe = args.memory_probe
    if probe in ("student", "defeat", "defeat_head"):
        torch.manual_seed(0)
        student = build_detector(model_config(args, args.student), NUM_CLASSES).to(device).train()
        module = student
        if probe != "student":
            torch.manual_seed(1)
            teacher = build_detector(model_config(args, args.teacher), NUM_CLASSES).to(device)
            module = DeFeatDistiller(student, teacher, FEATURES_ONLY if probe == "defeat" else WITH_HEAD)
        optimizer = torch.optim.SGD(module.parameters(), lr=0.0, momentum=0.9)
        for seed in range(2):
            train_step(module, optimizer, images, targets, seed)
    else:  # teacher inference: full detector, or backbone+FPN only
        torch.manual_seed(1)
        teacher = build_detector(model_config(args, args.teacher), NUM_CLASSES).to(device).eval()
        with torch.no_grad():
            for _ in range(2):
                if probe == "teacher":
                    teacher(images)
                else:
                    image_list, _ = teacher.transform(images)
                    teacher.backbone(image_list.tensors)
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {"probe": probe, "baseline_bytes": baseline, "peak_bytes": peak, "footprint_bytes": peak - baseline}


def run_memory(args) -> dict:
    results = {}
    for probe in ("student", "defeat", "defeat_head", "teacher", "teacher_fpn"):
        cmd = [sys.executable, __file__, "--memory-probe", probe, "--device", args.device, "--batch", str(args.batch),
               "--size", str(args.size), "--teacher", args.teacher, "--student", args.student,
               "--threads", str(args.threads)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results[probe] = json.loads(done.stdout.strip().splitlines()[-1])
    extra = results["defeat"]["footprint_bytes"] - results["student"]["footprint_bytes"]
    extra_head = results["defeat_head"]["footprint_bytes"] - results["student"]["footprint_bytes"]
    return {
        "memory_ratio": extra / results["teacher"]["footprint_bytes"],
        "memory_ratio_vs_teacher_fpn": extra / results["teacher_fpn"]["footprint_bytes"],
        "memory_ratio_with_head": extra_head / results["teacher"]["footprint_bytes"],
        "defeat_minus_student_bytes": extra,
        "probes": results,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--teacher", default="retinanet_r50_fpn")
    parser.add_argument("--student", default="retinanet_r18_fpn")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (0 = torch's default). 1 by default: on a shared CPU, multi-threaded "
                             "timings mostly measure the neighbours' load")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "distill_overhead_one_stage.json"))
    parser.add_argument("--memory-probe", choices=("student", "defeat", "defeat_head", "teacher", "teacher_fpn"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.memory_probe:
        print(json.dumps(memory_probe(args)))
        return 0
    device = torch.device(args.device)
    memory = run_memory(args)
    timing = run_timing(args, device)
    report = {
        "step_ratio": round(timing["step_ratio"], 4),
        "memory_ratio": round(memory["memory_ratio"], 4),
        "goals": {"step_ratio": 1.05, "memory_ratio": 1.1},
        "head_step_ratio": round(timing["head_step_ratio"], 4),
        "step_ratio_cpu_time": round(timing["step_ratio_cpu_time"], 4),
        "step_ratio_adapters_with_input_grad": round(timing["step_ratio_adapters_with_input_grad"], 4),
        "head_step_ratio_cpu_time": round(timing["head_step_ratio_cpu_time"], 4),
        "teacher_cls_head_seconds": round(timing["teacher_cls_head_seconds"], 4),
        "head_term_added_seconds": round(timing["head_term_added_seconds"], 4),
        "memory_ratio_vs_teacher_fpn": round(memory["memory_ratio_vs_teacher_fpn"], 4),
        "memory_ratio_with_head": round(memory["memory_ratio_with_head"], 4),
        "median_seconds": {k: round(v, 4) for k, v in timing["median_seconds"].items()},
        "all_seconds": {k: [round(x, 4) for x in v] for k, v in timing["all_seconds"].items()},
        "median_cpu_seconds": {k: round(v, 4) for k, v in timing["median_cpu_seconds"].items()},
        "all_cpu_seconds": {k: [round(x, 4) for x in v] for k, v in timing["all_cpu_seconds"].items()},
        "memory": memory,
        "setup": {"teacher": args.teacher, "student": args.student, "image_size": args.size, "batch": args.batch,
                  "anchor_sizes": ANCHOR_SIZES, "num_classes": NUM_CLASSES, "repeats": args.repeats,
                  "warmup": args.warmup, "device": args.device, "torch": torch.__version__,
                  "threads": torch.get_num_threads(), "machine": platform.platform(), "cpu_count": os.cpu_count(),
                  "load_average_at_end": os.getloadavg()},
        "command": "python " + " ".join([str(Path(sys.argv[0]).as_posix())] + sys.argv[1:]),
    }
    from defeat.utils import atomic_write_json

    atomic_write_json(Path(args.out), report)
    print(f"step_ratio {report['step_ratio']:.3f} (goal <= 1.05; on CPU time {report['step_ratio_cpu_time']:.3f})   "
          f"memory_ratio {report['memory_ratio']:.3f} (goal <= 1.1)")
    print(f"with the head term: teacher classification head {report['teacher_cls_head_seconds']:.3f} s, DeFeat step "
          f"+{report['head_term_added_seconds']:.3f} s, head_step_ratio {report['head_step_ratio']:.3f}, "
          f"memory_ratio_with_head {report['memory_ratio_with_head']:.3f}")
    print(f"memory ratio against the teacher's backbone+FPN alone: {report['memory_ratio_vs_teacher_fpn']:.3f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
