"""Overhead of DeFeat beyond the compute the method cannot avoid: step time and memory.

On one fixed batch, with the same models (teacher R50-FPN, student R18-FPN at the embedded benchmark's
320 px by default):

* ``step_ratio`` = DeFeat training step (decoupled features, no proposal term) ÷ (student-only training step
  + teacher backbone+FPN no-grad forward + the adapters' forward, imitation loss and backward alone).
  Goal <= 1.05. With the proposal term on, the teacher RoI head on the sampled proposals is timed alone
  and reported separately (``proposal_step_ratio`` adds it to the denominator).
* ``memory_ratio`` = (peak of DeFeat training - peak of student-only training) ÷ (peak of teacher inference -
  the process's idle baseline). Goal <= 1.1. Each peak comes from a fresh subprocess (CPU: peak RSS above the
  RSS after imports; CUDA: ``max_memory_allocated``). "Teacher inference" is the full detector in eval mode;
  the stricter figure against the teacher's backbone+FPN alone is reported as ``memory_ratio_vs_teacher_fpn``.

Timed components are interleaved (A, B, C, D, E, F, A, B, ...) so machine noise hits all alike; medians.
Optimisers use lr = 0 so every repeat does the same work on the same weights.

    python benchmarks/distill_overhead.py --threads 1          # CPU, batch 2, 5 repeats
    python benchmarks/distill_overhead.py --device cuda --batch 8 --repeats 20
    # torchvision's names: the R50-FPN-v2 COCO teacher -> MobileNetV3-FPN student (levels paired by stride)
    python benchmarks/distill_overhead.py --threads 1 --teacher fasterrcnn_resnet50_fpn_v2 \
        --student fasterrcnn_mobilenet_v3_large_fpn --out benchmarks/results/distill_overhead_torchvision.json

Keys: ``student_step_s``, ``teacher_features_s`` (teacher backbone+FPN, no grad), ``adapters_s``, ``defeat_step_s``
(medians, seconds), ``step_ratio`` (above) and ``ratio_to_student`` = DeFeat step ÷ student step.
"""

from __future__ import annotations

import argparse
import json
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
from defeat.models import build_detector, strides_of
from defeat.models.torchvision_zoo import is_torchvision_name

NUM_CLASSES = 10  # the embedded benchmark's class count


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


def model_config(name: str, size: int, role: str) -> ModelConfig:
    """The zoo's names from scratch (GroupNorm); torchvision's names as a user runs them: the teacher as built for its
    COCO file, the student for an ImageNet backbone file (FrozenBatchNorm, 3 trainable stages). Only the modules
    matter here: the weights stay random (same compute)."""
    if not is_torchvision_name(name):
        return ModelConfig(name=name, min_size=size, max_size=size, norm="gn")
    pretrained = {"weights": "coco.pth"} if role == "teacher" else {"backbone_weights": "imagenet.pth"}
    return ModelConfig(name=name, min_size=size, max_size=size, **pretrained)


def build(args, device):
    torch.manual_seed(0)
    student = build_detector(model_config(args.student, args.size, "student"), NUM_CLASSES).to(device).train()
    torch.manual_seed(1)
    teacher = build_detector(model_config(args.teacher, args.size, "teacher"), NUM_CLASSES).to(device)
    return student, teacher


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of ``fn()``."""
    sync(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - start, time.process_time() - cpu_start


def train_step(module, optimizer, images, targets, seed):
    torch.manual_seed(seed)  # same RPN / RoI sampling in every variant
    losses = module(images, targets)
    optimizer.zero_grad(set_to_none=True)
    sum(losses.values()).backward()
    optimizer.step()


def run_timing(args, device) -> dict:
    images, targets = make_batch(args.batch, args.size, device)
    student, teacher = build(args, device)
    defeat = DeFeatDistiller(student, teacher, DistillConfig(feature_mode="decoupled", proposal_mode="none"))
    with_proposals = DeFeatDistiller(student, teacher, DistillConfig(feature_mode="decoupled",
                                                                     proposal_mode="decoupled"))
    with_proposals.adapters = defeat.adapters  # same adapters; only the proposal term differs
    opt_student = torch.optim.SGD(student.parameters(), lr=0.0, momentum=0.9)
    opt_defeat = torch.optim.SGD(defeat.parameters(), lr=0.0, momentum=0.9)

    # Inputs of the "alone" components: the transformed batch, both FPNs, sampled proposals.
    with torch.no_grad():
        image_list, t_targets = student.transform(images, targets)
        s_maps = student.backbone(image_list.tensors)
        t_maps = teacher.backbone(image_list.tensors)
        torch.manual_seed(0)
        proposals, _ = student.rpn(image_list, s_maps, t_targets)
        proposals, _, _, _ = student.roi_heads.select_training_samples(proposals, t_targets)
    # The adapters' backward includes the gradient into the student's FPN maps (what the method sends back).
    s_all = dict(zip(strides_of(student), s_maps.values()))
    t_all = dict(zip(strides_of(teacher), t_maps.values()))
    s_named = {name: s_all[name].detach().requires_grad_(True) for name in defeat.levels}
    t_list = [t_all[defeat.pairs[name]] for name in defeat.levels]  # the teacher level of each student level
    adapters = FeatureAdapters(defeat.levels).to(device)

    def adapters_alone():
        out = adapters(s_named)
        loss = sum((o - t).pow(2).sum() / o.numel() for o, t in zip(out.values(), t_list))
        adapters.zero_grad(set_to_none=True)
        for m in s_named.values():
            m.grad = None
        loss.backward()

    def teacher_fpn():
        with torch.no_grad():
            teacher.backbone(image_list.tensors)

    def teacher_roi_head():
        with torch.no_grad():
            roi = teacher.roi_heads
            roi.box_predictor(roi.box_head(roi.box_roi_pool(t_maps, proposals, image_list.image_sizes)))

    components = {
        "student_step": lambda seed: train_step(student, opt_student, images, targets, seed),
        "teacher_fpn_forward": lambda seed: teacher_fpn(),
        "adapters_forward_backward": lambda seed: adapters_alone(),
        "defeat_step": lambda seed: train_step(defeat, opt_defeat, images, targets, seed),
        "teacher_roi_head_forward": lambda seed: teacher_roi_head(),
        "defeat_step_with_proposals": lambda seed: train_step(with_proposals, opt_defeat, images, targets, seed),
    }
    times: dict[str, list[float]] = {name: [] for name in components}
    cpu_times: dict[str, list[float]] = {name: [] for name in components}
    for rep in range(args.warmup + args.repeats):
        for name, fn in components.items():
            wall, cpu = timed(lambda: fn(rep), device)
            if rep >= args.warmup:
                times[name].append(wall)
                cpu_times[name].append(cpu)

    def ratios(samples: dict[str, list[float]]) -> dict:
        med = {name: statistics.median(v) for name, v in samples.items()}
        irreducible = med["student_step"] + med["teacher_fpn_forward"] + med["adapters_forward_backward"]
        return {
            "step_ratio": med["defeat_step"] / irreducible,
            "proposal_step_ratio": med["defeat_step_with_proposals"] / (irreducible + med["teacher_roi_head_forward"]),
            "teacher_roi_head_seconds": med["teacher_roi_head_forward"],
            "proposal_term_added_seconds": med["defeat_step_with_proposals"] - med["defeat_step"],
            "median_seconds": med, "all_seconds": samples,
        }

    return {"wall": ratios(times), "cpu": ratios(cpu_times)}


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
    if probe in ("student", "defeat"):
        torch.manual_seed(0)
        student = build_detector(model_config(args.student, args.size, "student"), NUM_CLASSES).to(device).train()
        module = student
        if probe == "defeat":
            torch.manual_seed(1)
            teacher = build_detector(model_config(args.teacher, args.size, "teacher"), NUM_CLASSES).to(device)
            module = DeFeatDistiller(student, teacher, DistillConfig(feature_mode="decoupled", proposal_mode="none"))
        optimizer = torch.optim.SGD(module.parameters(), lr=0.0, momentum=0.9)
        for seed in range(2):
            train_step(module, optimizer, images, targets, seed)
    else:  # teacher inference: full detector, or backbone+FPN only
        torch.manual_seed(1)
        teacher = build_detector(model_config(args.teacher, args.size, "teacher"), NUM_CLASSES).to(device).eval()
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
    for probe in ("student", "defeat", "teacher", "teacher_fpn"):
        cmd = [sys.executable, __file__, "--memory-probe", probe, "--device", args.device, "--batch", str(args.batch),
               "--threads", str(args.threads),
               "--size", str(args.size), "--teacher", args.teacher, "--student", args.student]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results[probe] = json.loads(done.stdout.strip().splitlines()[-1])
    extra = results["defeat"]["footprint_bytes"] - results["student"]["footprint_bytes"]
    return {
        "memory_ratio": extra / results["teacher"]["footprint_bytes"],
        "memory_ratio_vs_teacher_fpn": extra / results["teacher_fpn"]["footprint_bytes"],
        "defeat_minus_student_bytes": extra,
        "probes": results,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--teacher", default="faster_rcnn_r50_fpn")
    parser.add_argument("--student", default="faster_rcnn_r18_fpn")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "distill_overhead.json"))
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads (0 = torch's default); 1 gives steadier timings on a shared CPU")
    parser.add_argument("--memory-probe", choices=("student", "defeat", "teacher", "teacher_fpn"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_probe:
        print(json.dumps(memory_probe(args)))
        return 0
    device = torch.device(args.device)
    memory = run_memory(args)
    timing_both = run_timing(args, device)
    timing = timing_both["wall"]
    med = timing["median_seconds"]
    report = {
        "student_step_s": round(med["student_step"], 4),
        "teacher_features_s": round(med["teacher_fpn_forward"], 4),
        "adapters_s": round(med["adapters_forward_backward"], 4),
        "defeat_step_s": round(med["defeat_step"], 4),
        "ratio_to_student": round(med["defeat_step"] / med["student_step"], 4),
        "step_ratio": round(timing["step_ratio"], 4),
        "memory_ratio": round(memory["memory_ratio"], 4),
        "goals": {"step_ratio": 1.05, "memory_ratio": 1.1},
        "proposal_step_ratio": round(timing["proposal_step_ratio"], 4),
        "teacher_roi_head_seconds": round(timing["teacher_roi_head_seconds"], 4),
        "proposal_term_added_seconds": round(timing["proposal_term_added_seconds"], 4),
        "memory_ratio_vs_teacher_fpn": round(memory["memory_ratio_vs_teacher_fpn"], 4),
        "median_seconds": {k: round(v, 4) for k, v in timing["median_seconds"].items()},
        "all_seconds": {k: [round(x, 4) for x in v] for k, v in timing["all_seconds"].items()},
        "step_ratio_cpu_time": round(timing_both["cpu"]["step_ratio"], 4),
        "proposal_step_ratio_cpu_time": round(timing_both["cpu"]["proposal_step_ratio"], 4),
        "median_cpu_seconds": {k: round(v, 4) for k, v in timing_both["cpu"]["median_seconds"].items()},
        "memory": memory,
        "setup": {"teacher": args.teacher, "student": args.student, "image_size": args.size, "batch": args.batch,
                  "repeats": args.repeats, "warmup": args.warmup, "device": args.device,
                  "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.platform(),
                  "cpu_count": __import__("os").cpu_count()},
        "command": "python " + " ".join([str(Path(sys.argv[0]).as_posix())] + sys.argv[1:]),
    }
    from defeat.utils import atomic_write_json

    atomic_write_json(Path(args.out), report)
    print(f"step_ratio {report['step_ratio']:.3f} (goal <= 1.05; by CPU time {report['step_ratio_cpu_time']:.3f})   memory_ratio {report['memory_ratio']:.3f} "
          f"(goal <= 1.1)")
    print(f"with the proposal term: teacher RoI head {report['teacher_roi_head_seconds']:.3f} s, DeFeat step "
          f"+{report['proposal_term_added_seconds']:.3f} s, proposal_step_ratio {report['proposal_step_ratio']:.3f}")
    print(f"memory ratio against the teacher's backbone+FPN alone: {report['memory_ratio_vs_teacher_fpn']:.3f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
