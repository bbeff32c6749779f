"""Overhead of DeFeat beyond the compute the method cannot avoid: step time and memory, for any pair.

One harness for every family: two-stage (zoo Faster R-CNN R50-FPN -> R18-FPN, the default), one-stage (RetinaNet,
FCOS; the head term on anchors / locations) and torchvision's names (e.g. ``fasterrcnn_resnet50_fpn_v2`` ->
``fasterrcnn_mobilenet_v3_large_fpn``, levels paired by stride). The family comes from the models
(``defeat.models.family_of``); the family's part of the head term is the distiller's own ``HeadTerm``, so nothing
here depends on the family. On one fixed batch, same models, optimisers with lr = 0 (same work every step):

* ``step_ratio`` = DeFeat training step (decoupled features, no head term) ÷ (student-only training step
  + teacher backbone+FPN no-grad forward + the adapters alone: forward, imitation loss, backward including the
  gradient they send into the student's FPN maps). Goal <= 1.05.
* ``head_step_ratio``: the same with the head term on (two-stage: decoupled proposals; one-stage: decoupled
  anchors); the teacher's head-term logits on the step's samples (two-stage: RoI head on the sampled proposals;
  one-stage: classification head on its FPN maps), timed alone, join the denominator.
* ``memory_ratio`` = (peak of DeFeat training - peak of student-only training) ÷ (peak of teacher inference -
  the process's idle baseline). Goal <= 1.1. Each peak comes from a fresh subprocess (CPU: peak RSS above the
  RSS after imports; CUDA: ``max_memory_allocated``). The stricter figure against the teacher's backbone+FPN alone
  is ``memory_ratio_vs_teacher_fpn``; with the head term on, ``memory_ratio_with_head``.

Every ratio is computed PER REPEAT: in each repeat all timed components run back to back (the order rotates from
repeat to repeat) and the repeat's ratio uses only that repeat's timings, so machine noise hits numerator and
denominator alike. Warm-up repeats are not recorded. For each ratio and component the JSON holds the per-repeat
list, median and quartiles, for wall time and this process's CPU time (on a shared machine wall time also measures
the neighbours' load). CPU runs use 1 thread by default (``--threads``): multi-threaded timings on a shared CPU
mostly measure the neighbours.

    python benchmarks/distill_overhead.py                                        # zoo Faster R-CNN R50 -> R18
    python benchmarks/distill_overhead.py --teacher retinanet_r50_fpn --student retinanet_r18_fpn \
        --out benchmarks/results/distill_overhead_one_stage.json
    python benchmarks/distill_overhead.py --teacher fasterrcnn_resnet50_fpn_v2 \
        --student fasterrcnn_mobilenet_v3_large_fpn --out benchmarks/results/distill_overhead_torchvision.json
    python benchmarks/distill_overhead.py --device cuda --batch 8
"""

from __future__ import annotations

import argparse
import copy
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
from defeat.data.synth import SYNTH_CATEGORIES
from defeat.distill import DeFeatDistiller
from defeat.models import build_detector, family_of, strides_of
from defeat.models.torchvision_zoo import is_torchvision_name
from defeat.utils import atomic_write_json

NUM_CLASSES = len(SYNTH_CATEGORIES)  # the embedded benchmark's class count (defeat.data.synth)
ANCHOR_SIZES = [16, 32, 64, 128, 256]  # the embedded benchmark's configs (configs/*.yaml) for the zoo's models
GOALS = {"step_ratio": 1.05, "memory_ratio": 1.1}
FEATURES_ONLY = DistillConfig(feature_mode="decoupled", proposal_mode="none")
WITH_HEAD = DistillConfig(feature_mode="decoupled", proposal_mode="decoupled")


def make_batch(batch: int, size: int, device: torch.device, seed: int = 0):
    """``batch`` size x size images (noise + bright rectangles), 2-8 boxes each of 12-160 px at 320 px (scaled)."""
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(batch):
        image = torch.rand(3, size, size, generator=g) * 0.4
        count = int(torch.randint(2, 9, (1,), generator=g))
        sides = (torch.randint(12, 161, (count, 2), generator=g).float() * size / 320).clamp(min=2)
        corners = torch.rand(count, 2, generator=g) * (size - sides)
        boxes = torch.cat([corners, corners + sides], dim=1).round()
        for x1, y1, x2, y2 in boxes.int().tolist():
            image[:, y1:y2, x1:x2] += 0.5
        images.append(image.clamp(0, 1).to(device))
        labels = torch.randint(1, NUM_CLASSES + 1, (count,), generator=g)
        targets.append({"boxes": boxes.to(device), "labels": labels.to(device)})
    return images, targets


def model_config(name: str, size: int, role: str) -> ModelConfig:
    """The zoo's names as the embedded benchmark builds them (GroupNorm from scratch, its anchor sizes); torchvision's
    names as a user runs them: the teacher as built for its COCO file, the student for an ImageNet backbone file
    (FrozenBatchNorm, 3 trainable stages), their own anchors. The weights stay random (same compute)."""
    if not is_torchvision_name(name):
        return ModelConfig(name=name, min_size=size, max_size=size, norm="gn", anchor_sizes=list(ANCHOR_SIZES))
    pretrained = {"weights": "coco.pth"} if role == "teacher" else {"backbone_weights": "imagenet.pth"}
    return ModelConfig(name=name, min_size=size, max_size=size, **pretrained)


def build(args, role: str, device):
    """The student (train mode, seed 0) or the teacher (seed 1), the same modules in every process."""
    torch.manual_seed(0 if role == "student" else 1)
    name = args.student if role == "student" else args.teacher
    model = build_detector(model_config(name, args.size, role), NUM_CLASSES).to(device)
    return model.train() if role == "student" else model


def train_step(module, optimizer, images, targets, seed):
    torch.manual_seed(seed)  # same RPN / RoI sampling in every variant of a repeat
    losses = module(images, targets)
    optimizer.zero_grad(set_to_none=True)
    sum(losses.values()).backward()
    optimizer.step()


def timed(fn, seed: int, device) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds over all its threads) of ``fn(seed)``."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start, start_cpu = time.perf_counter(), time.process_time()
    fn(seed)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - start_cpu


# ------------------------------------------------------------------------------------------- timing
def components(args, device) -> tuple[dict, dict]:
    """name -> fn(seed) of every timed component, and the pair's families. The "alone" components run on inputs
    computed once here: the transformed batch, both FPNs and the head term's samples (the distiller's own
    ``HeadTerm`` of the family)."""
    images, targets = make_batch(args.batch, args.size, device)
    student, teacher = build(args, "student", device), build(args, "teacher", device)
    defeat = DeFeatDistiller(student, teacher, FEATURES_ONLY)
    with_head = DeFeatDistiller(student, teacher, WITH_HEAD)
    with_head.adapters = defeat.adapters  # same adapters; only the head term differs
    opt_student = torch.optim.SGD(student.parameters(), lr=0.0, momentum=0.9)
    opt_defeat = torch.optim.SGD(defeat.parameters(), lr=0.0, momentum=0.9)

    with torch.no_grad():
        image_list, t_targets = student.transform(images, targets)
        s_maps = student.backbone(image_list.tensors)
        t_maps = teacher.backbone(image_list.tensors)
        torch.manual_seed(0)
        _, samples = defeat.head.student_step(student, image_list, s_maps, t_targets)
    s_all = dict(zip(strides_of(student), s_maps.values()))
    t_all = dict(zip(strides_of(teacher), t_maps.values()))
    s_leaves = {name: s_all[name].detach().requires_grad_(True) for name in defeat.levels}
    t_list = [t_all[defeat.pairs[name]] for name in defeat.levels]  # the teacher level of each student level
    adapters = copy.deepcopy(defeat.adapters)

    def adapters_alone():  # forward, loss, backward into the weights and into the student's FPN maps
        out = adapters(s_leaves)
        loss = sum((o - t).pow(2).sum() / o.numel() for o, t in zip(out.values(), t_list))
        adapters.zero_grad(set_to_none=True)
        for leaf in s_leaves.values():
            leaf.grad = None
        loss.backward()

    def teacher_fpn():
        with torch.no_grad():
            teacher.backbone(image_list.tensors)

    def teacher_head_term():
        with torch.no_grad():
            defeat.head.teacher_logits(teacher, image_list, t_maps, samples)

    steps = {
        "student_step": lambda seed: train_step(student, opt_student, images, targets, seed),
        "teacher_fpn_forward": lambda seed: teacher_fpn(),
        "adapters_forward_backward": lambda seed: adapters_alone(),
        "defeat_step": lambda seed: train_step(defeat, opt_defeat, images, targets, seed),
    }
    if with_head.proposal_mode != "none":  # a mixed-family pair has no head term
        steps["teacher_head_term_forward"] = lambda seed: teacher_head_term()
        steps["defeat_step_with_head"] = lambda seed: train_step(with_head, opt_defeat, images, targets, seed)
    return steps, {"teacher_family": family_of(teacher), "student_family": family_of(student)}


def repeat_ratios(t: dict[str, float]) -> dict[str, float]:
    """The ratios of ONE repeat, from that repeat's own timings."""
    irreducible = t["student_step"] + t["teacher_fpn_forward"] + t["adapters_forward_backward"]
    ratios = {"step_ratio": t["defeat_step"] / irreducible, "ratio_to_student": t["defeat_step"] / t["student_step"]}
    if "defeat_step_with_head" in t:
        ratios["head_step_ratio"] = t["defeat_step_with_head"] / (irreducible + t["teacher_head_term_forward"])
        ratios["head_term_added_seconds"] = t["defeat_step_with_head"] - t["defeat_step"]
    return ratios


def summary(values: list[float]) -> dict:
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return {
        "median": round(median, 4),
        "q25": round(q1, 4),
        "q75": round(q3, 4),
        "per_repeat": [round(v, 4) for v in values],
    }


def run_timing(args, device) -> dict:
    steps, families = components(args, device)
    names = list(steps)
    recorded = {"wall": [], "cpu": []}  # one dict name -> seconds per recorded repeat
    for rep in range(args.warmup + args.repeats):
        wall, cpu = {}, {}
        for i in range(len(names)):
            name = names[(rep + i) % len(names)]  # rotate the order so no component always follows another
            wall[name], cpu[name] = timed(steps[name], rep, device)
        if rep >= args.warmup:
            recorded["wall"].append(wall)
            recorded["cpu"].append(cpu)
            print(
                f"repeat {rep - args.warmup + 1}/{args.repeats}: step_ratio "
                f"{repeat_ratios(wall)['step_ratio']:.3f} (wall) {repeat_ratios(cpu)['step_ratio']:.3f} (cpu)",
                file=sys.stderr,
                flush=True,
            )
    out = {"families": families}
    for clock, repeats in recorded.items():
        per_repeat = [repeat_ratios(t) for t in repeats]
        out[clock] = {
            "ratios": {key: summary([r[key] for r in per_repeat]) for key in per_repeat[0]},
            "seconds": {name: summary([t[name] for t in repeats]) for name in names},
        }
    return out


def goal_check(ratio: dict, goal: float) -> str:
    """A description of where the median and the upper quartile of the per-repeat ratios lie against the goal."""

    def side(v):
        return "meets" if v <= goal else "misses"

    return (
        f"median {ratio['median']:.3f} {side(ratio['median'])} <= {goal}; upper quartile {ratio['q75']:.3f} "
        f"{side(ratio['q75'])} it"
    )


# ------------------------------------------------------------------------------------------- memory probes
PROBES = ("student", "defeat", "defeat_head", "teacher", "teacher_fpn")


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
    if probe.startswith("teacher"):  # teacher inference: full detector, or backbone+FPN only
        teacher = build(args, "teacher", device).eval()
        with torch.no_grad():
            for _ in range(2):
                if probe == "teacher":
                    teacher(images)
                else:
                    teacher.backbone(teacher.transform(images)[0].tensors)
    else:
        module = build(args, "student", device)
        if probe != "student":
            settings = FEATURES_ONLY if probe == "defeat" else WITH_HEAD
            module = DeFeatDistiller(module, build(args, "teacher", device), settings)
        optimizer = torch.optim.SGD(module.parameters(), lr=0.0, momentum=0.9)
        for seed in range(2):
            train_step(module, optimizer, images, targets, seed)
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {"probe": probe, "baseline_bytes": baseline, "peak_bytes": peak, "footprint_bytes": peak - baseline}


def run_memory(args) -> dict:
    results = {}
    for probe in PROBES:
        cmd = [
            sys.executable,
            __file__,
            "--memory-probe",
            probe,
            "--device",
            args.device,
            "--batch",
            str(args.batch),
            "--size",
            str(args.size),
            "--teacher",
            args.teacher,
            "--student",
            args.student,
            "--threads",
            str(args.threads),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results[probe] = json.loads(done.stdout.strip().splitlines()[-1])
    footprint = {name: r["footprint_bytes"] for name, r in results.items()}
    extra = footprint["defeat"] - footprint["student"]
    return {
        "memory_ratio": round(extra / footprint["teacher"], 4),
        "memory_ratio_vs_teacher_fpn": round(extra / footprint["teacher_fpn"], 4),
        "memory_ratio_with_head": round((footprint["defeat_head"] - footprint["student"]) / footprint["teacher"], 4),
        "defeat_minus_student_bytes": extra,
        "probes": results,
    }


# ------------------------------------------------------------------------------------------- report
def machine() -> dict:
    cpu_model = platform.processor()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu_model = next(
                (line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu_model
            )
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    parser.add_argument("--teacher", default="faster_rcnn_r50_fpn")
    parser.add_argument("--student", default="faster_rcnn_r18_fpn")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=320, help="image side (the embedded benchmark's: 320)")
    parser.add_argument("--repeats", type=int, default=20, help="recorded repeats (>= 2 for quartiles)")
    parser.add_argument("--warmup", type=int, default=2, help="repeats run first and not recorded")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (0 = torch's default); 1 by default: on a shared CPU, multi-threaded "
        "timings mostly measure the neighbours' load",
    )
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "distill_overhead.json"))
    parser.add_argument("--memory-probe", choices=PROBES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.repeats < 2:
        parser.error("--repeats must be >= 2 (quartiles)")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.memory_probe:
        print(json.dumps(memory_probe(args)))
        return 0

    command = "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:])
    load_start, start = os.getloadavg(), time.perf_counter()
    device = torch.device(args.device)
    memory = run_memory(args)
    timing = run_timing(args, device)
    wall = timing["wall"]["ratios"]
    report = {
        "step_ratio": wall["step_ratio"]["median"],
        "memory_ratio": memory["memory_ratio"],
        "goals": GOALS,
        "goal_check": {
            "step_ratio_wall": goal_check(wall["step_ratio"], GOALS["step_ratio"]),
            "step_ratio_cpu_time": goal_check(timing["cpu"]["ratios"]["step_ratio"], GOALS["step_ratio"]),
            "memory_ratio": f"{memory['memory_ratio']:.3f} "
            f"{'meets' if memory['memory_ratio'] <= GOALS['memory_ratio'] else 'misses'} "
            f"<= {GOALS['memory_ratio']} (one fresh-process peak per workload)",
            "note": "a description of the per-repeat distribution on this machine, not a statistical test",
        },
        "timing_wall": timing["wall"],
        "timing_cpu_time": timing["cpu"],
        "memory": memory,
        "settings": {
            "teacher": args.teacher,
            "student": args.student,
            **timing["families"],
            "image_size": args.size,
            "batch": args.batch,
            "num_classes": NUM_CLASSES,
            "anchor_sizes": None if is_torchvision_name(args.student) else ANCHOR_SIZES,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "device": args.device,
            "threads": torch.get_num_threads(),
            "ratios": "per repeat, from that repeat's own timings; median and quartiles over repeats",
        },
        "machine": {
            **machine(),
            "load_average_start": [round(x, 2) for x in load_start],
            "load_average_end": [round(x, 2) for x in os.getloadavg()],
        },
        "wall_seconds": round(time.perf_counter() - start, 1),
        "command": command,
    }
    atomic_write_json(Path(args.out), report)
    for clock in ("wall", "cpu"):
        r = timing[clock]["ratios"]
        line = (
            f"{clock:4s} step_ratio {r['step_ratio']['median']:.3f} [{r['step_ratio']['q25']:.3f}, "
            f"{r['step_ratio']['q75']:.3f}]"
        )
        if "head_step_ratio" in r:
            line += (
                f"   head_step_ratio {r['head_step_ratio']['median']:.3f} [{r['head_step_ratio']['q25']:.3f}, "
                f"{r['head_step_ratio']['q75']:.3f}]"
            )
        print(line)
    print(f"step_ratio (wall): {report['goal_check']['step_ratio_wall']}")
    print(
        f"memory_ratio {memory['memory_ratio']:.3f} (goal <= 1.1), vs teacher FPN "
        f"{memory['memory_ratio_vs_teacher_fpn']:.3f}, with head {memory['memory_ratio_with_head']:.3f}"
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
