"""``defeat init``: a commented config for one's own COCO dataset, from its statistics.

The config gets the data paths, an image size from the images' sizes, anchors fitted to the boxes
(:mod:`defeat.data.anchors`) and a schedule of about ``epochs`` passes over the training images. With a family or
model it also writes a teacher config (the same family at depth 50, ``TEACHER_STEPS_FACTOR`` times the student's
steps: from scratch a bigger model needs a longer schedule to get ahead) and a distill config wired to both
runs' checkpoints (``distill.baseline_checkpoint`` = the student trained alone). The distill config's defaults
follow this project's measurements, each named in its comment (:data:`PROPOSAL_EVIDENCE`, ...): decoupled
features, no proposal term, the authors' fixed weights; on real photos none is decided yet
(:data:`REAL_DATA_EVIDENCE`).
Every config is rendered and validated before anything is written; each file is written atomically.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from defeat.api.data import DatasetReport, dataset_stats
from defeat.config import config_from_dict
from defeat.models.spec import FAMILIES, family_of_name, model_spec, resnet_fpn_name
from defeat.utils import atomic_write_text

TEACHER_STEPS_FACTOR = 3
# Each default of the distill config names the measurement behind it (the comment written next to it).
PROPOSAL_EVIDENCE = (
    "off: decoupled + proposals 27.6 AP (1 seed) vs 44.7 +- 0.9 without (3 seeds) in the paper's regime "
    "(embedded benchmark: benchmarks/results/reproduce_full/results.json), 17.0 +- 1.6 vs 22.3 +- 0.9 in the "
    "earlier run (reproduce_full_r34); the authors' released config leaves it out too"
)
WEIGHTS_EVIDENCE = (
    "the authors' alpha_obj 4 / alpha_bg 16: auto gave 13.9 AP vs 22.7 (embedded benchmark, seed 0: "
    "reproduce_full_r34/results.json, sensitivity) and no better in benchmarks/results/alpha_auto.json"
)
TEACHER_EVIDENCE = (
    "depth 50 at {factor}x the steps: not decided by a measurement here (embedded benchmark at 128 px from "
    "scratch: R34 16.6 AP vs R50 6.7 at 1440 steps, seed 0, docs/reproduce.md); try depth 34 if it lags"
)

# The real-photo check of these defaults could not decide any of them (registered pilots, no arms run).
REAL_DATA_EVIDENCE = (
    "On real photos nothing here is decided yet: from scratch on coco128's 96 person images, init's R18 reached "
    "0.2 val AP (benchmarks/results/init_defaults_coco128/pilot_r18.json), too little to decide a default on"
)


@dataclass
class InitResult:
    report: DatasetReport
    configs: dict[str, Path]  # "train" | "teacher" | "distill" -> the file (written unless dry_run)
    texts: dict[str, str] = field(default_factory=dict)  # the rendered YAML of each
    written: bool = False


def _line(key: str, value, comment: str = "", indent: int = 2) -> str:
    text = " " * indent + f"{key}: {json.dumps(value)}"  # JSON scalars and lists are YAML
    return f"{text:<52}  # {comment}" if comment else text


def _render(header: list[str], sections: list[tuple[str | None, list[tuple[str, object, str]]]]) -> str:
    lines = [f"# {h}" if h else "#" for h in header]
    for name, fields in sections:
        if name:
            lines.append(f"{name}:")
        lines += [_line(k, v, c, 2 if name else 0) for k, v, c in fields]
    return "\n".join(lines) + "\n"


def _model_fields(name: str, report: DatasetReport) -> list[tuple[str, object, str]]:
    fit = report.anchors
    anchor_note = (
        f"fitted: {100 * fit.coverage:.1f} % of train boxes have a best anchor (grid) IoU >= 0.5 "
        f"(the default {fit.given_sizes}: {100 * fit.given_coverage:.1f} %)"
    )
    return [
        ("name", name, "any name of docs/models.md, e.g. <family>_r<depth>_fpn (faster_rcnn | retinanet | fcos)"),
        ("norm", "auto", "auto: GroupNorm from scratch, FrozenBatchNorm with pretrained weights"),
        ("pretrained_backbone", False, "true: ImageNet weights (online once); helps a lot on small real sets"),
        ("min_size", report.min_size, f"resize: shorter side: {report.image_size_reason}"),
        ("max_size", report.max_size, "... and cap on the longer side (median aspect ratio)"),
        ("anchor_sizes", fit.sizes, anchor_note),
        ("anchor_ratios", fit.ratios, "anchor height/width on every level (FCOS ignores them)"),
    ]


def init_config(
    annotations: str | Path,
    images: str | Path,
    out: str | Path,
    *,
    val_annotations: str | Path | None = None,
    val_images: str | Path | None = None,
    family: str | None = None,
    model: str | None = None,
    teacher: str | None = None,
    image_size: int | None = None,
    batch_size: int = 4,
    epochs: float = 12.0,
    dry_run: bool = False,
    overwrite: bool = False,
    figure: str | Path | None = None,
) -> InitResult:
    """Measure the dataset (:func:`~defeat.api.data.dataset_stats`) and write ``out`` (a config for ``defeat
    train``); with ``family``, ``model`` or ``teacher`` also ``<out stem>_teacher.yaml`` and
    ``<out stem>_distill.yaml``. ``dry_run``: measure, render and validate, write no config (the figure, when
    asked, is still drawn)."""
    out = Path(out)
    if model is not None and family is not None and family_of_name(model) != family:
        raise ValueError(f"--model {model} is not of --family {family}")
    if family is not None and family not in FAMILIES:
        raise ValueError(f"--family: unknown family {family!r} (choose from {', '.join(FAMILIES)})")
    companions = family is not None or model is not None or teacher is not None
    family = family or (family_of_name(model) if model else "faster_rcnn")
    student = model or resnet_fpn_name(family, 18)
    teacher = teacher or resnet_fpn_name(family, 50)
    if family_of_name(teacher) != family:
        raise ValueError(f"--teacher {teacher}: must be a {family} like the student (the head term needs it)")
    if batch_size < 1 or epochs <= 0:
        raise ValueError(f"--batch-size / --epochs: must be positive, got {batch_size} / {epochs}")
    paths = {"train": out}
    if companions:
        paths["teacher"] = out.with_name(f"{out.stem}_teacher{out.suffix or '.yaml'}")
        paths["distill"] = out.with_name(f"{out.stem}_distill{out.suffix or '.yaml'}")
    if not dry_run and not overwrite:
        for path in paths.values():
            if path.exists():
                raise ValueError(f"{path}: exists (pass --force to overwrite)")
    report = dataset_stats(
        annotations,
        images,
        val_annotations=val_annotations,
        val_images=val_images,
        model=student,
        image_size=image_size,
        given_sizes=model_spec(student).default_anchor_sizes,
    )
    texts = render_configs(
        report, paths, annotations, images, val_annotations, val_images, student, teacher, batch_size, epochs
    )
    for kind, text in texts.items():  # what `defeat train/distill` will load: refuse here, before writing
        config_from_dict(yaml.safe_load(text), source=str(paths[kind]))
    if figure is not None:  # only once everything is known to be valid
        from defeat.analysis.dataset_figure import draw_dataset_figure

        report.figure = draw_dataset_figure(report, figure)
    if not dry_run:
        for kind, text in texts.items():
            atomic_write_text(paths[kind], text)
    return InitResult(report, paths, texts, written=not dry_run)


def render_configs(
    report: DatasetReport,
    paths: dict[str, Path],
    annotations,
    images,
    val_annotations,
    val_images,
    student: str,
    teacher: str,
    batch_size: int,
    epochs: float,
) -> dict[str, str]:
    """The YAML text of each config (see the module docstring)."""
    train = report.train
    steps = max(20, math.ceil(epochs * train.images / batch_size))
    no_val = val_annotations is None
    data = [
        ("train_images", str(images), ""),
        ("train_annotations", str(annotations), f"{train.images} images, {train.boxes} boxes"),
        (
            "val_images",
            str(val_images or images),
            "no val split given: evaluates on the TRAIN images" if no_val else "",
        ),
        (
            "val_annotations",
            str(val_annotations or annotations),
            "" if no_val else f"{report.val.images} images, {report.val.boxes} boxes",
        ),
        ("batch_size", batch_size, "per process"),
        ("workers", 2, "data-loading processes"),
    ]
    header = [
        f"Written by `defeat init` from {annotations}: {train.images} images, {train.boxes} boxes, "
        f"{len(train.boxes_per_class)} classes.",
        "Cost first: defeat {cmd} {path} --estimate   (times a few steps, writes nothing)",
        "",
    ]

    def one(kind: str, name: str, max_steps: int, run_dir: str, extra=()) -> str:
        cmd = "distill" if kind == "distill" else "train"
        what = {
            "train": "the student trained alone (the baseline)" if len(paths) > 1 else "the detector",
            "teacher": "the teacher",
            "distill": "the DeFeat student",
        }[kind]
        head = [f"Config for {what}: defeat {cmd} {paths[kind]}"] + [
            h.format(cmd=cmd, path=paths[kind]) for h in header
        ]
        if kind == "teacher":
            head.insert(1, f"The teacher: {TEACHER_EVIDENCE.format(factor=TEACHER_STEPS_FACTOR)}")
        if kind in ("teacher", "distill"):
            head.insert(1 + (kind == "teacher"), f"{REAL_DATA_EVIDENCE}.")
        sections = [
            (None, [("precision", "auto", "fast path: bf16 where the CPU/GPU has it, else fp32"), ("seed", 0, "")]),
            ("model", _model_fields(name, report)),
            ("data", data),
            ("optim", [("name", "sgd", ""), ("lr", 0.02, "for batch 4; scale with the global batch")]),
            (
                "schedule",
                [
                    (
                        "max_steps",
                        max_steps,
                        f"~{max_steps * batch_size / train.images:.0f} epochs "
                        f"of {train.images} images at batch {batch_size}",
                    ),
                    ("warmup_steps", min(100, max_steps // 10), ""),
                    ("policy", "cosine", ""),
                ],
            ),
            ("eval", [("every_steps", 0, "0 = only at the end")]),
            (
                "output",
                [("dir", run_dir, ""), ("checkpoint_every", max(50, max_steps // 4), ""), ("log_every", 20, "")],
            ),
            *extra,
        ]
        return _render(head, sections)

    stem = paths["train"].stem
    texts = {"train": one("train", student, steps, f"runs/{stem}")}
    if "teacher" in paths:
        teacher_steps = TEACHER_STEPS_FACTOR * steps
        texts["teacher"] = one("teacher", teacher, teacher_steps, f"runs/{stem}_teacher")
        distill = [
            ("teacher_checkpoint", f"runs/{stem}_teacher/model_final.pt", f"from defeat train {paths['teacher']}"),
            (
                "baseline_checkpoint",
                f"runs/{stem}/model_final.pt",
                f"from defeat train {paths['train']}: the teacher must beat it (warning otherwise)",
            ),
            ("feature_mode", "decoupled", "DeFeat: object and background features apart"),
            ("proposal_mode", "none", PROPOSAL_EVIDENCE),
            ("weights", "fixed", WEIGHTS_EVIDENCE),
        ]
        texts["distill"] = one("distill", student, steps, f"runs/{stem}_distill", [("distill", distill)])
    return texts
