"""Training, distillation and evaluation runs: a config in, checkpoints and metrics out."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn
from tqdm import tqdm

from defeat.config import Config, ModelConfig
from defeat.data import CocoDetection, collate
from defeat.engine import (
    DistInfo,
    LoadedModel,
    build_for_dataset,
    claim_output_dir,
    cleanup,
    init_distributed,
    load_datasets,
    load_model,
)
from defeat.engine import evaluate as evaluate_detector
from defeat.engine import train as train_loop
from defeat.engine.distributed import broadcast_from_main
from defeat.engine.precision import config_precision, resolve_precision
from defeat.engine.trainer import StepTiming, estimate_steps, train_sampler
from defeat.engine.weights import load_pretrained
from defeat.models.spec import is_yolo_name, model_spec
from defeat.utils import atomic_write_json


@dataclass
class RunResult:
    """What a training or distillation run produced (metrics on rank 0; empty elsewhere or without a val split)."""

    final_checkpoint: Path
    step: int
    metrics: dict = field(default_factory=dict)  # the final evaluation's COCO stats (fractions)
    teacher_metrics: dict = field(default_factory=dict)  # distill: the teacher's AP/AP50 on the same images
    notes: list[str] = field(default_factory=list)  # what the run reported before training (teacher load, ...)


def _say(message: str, info: DistInfo, verbose: bool) -> None:
    if verbose and info.is_main:
        tqdm.write(message)


def train(cfg: Config, *, resume: bool = False, force: bool = False, progress: bool = True) -> RunResult:
    """Train the detector of ``cfg.model`` on ``cfg.data`` (under torchrun: DDP over every process).

    Writes ``config.yaml``, ``metrics.jsonl``, ``checkpoint_last.pt`` and ``model_final.pt`` to ``cfg.output.dir``;
    ``resume`` continues from its ``checkpoint_last.pt``. A folder holding another run is refused unless
    ``resume``, or ``force`` (the old run is moved to ``<dir>.old-<date-time>``). SIGTERM / SIGINT stop after the
    current step with ``checkpoint_last.pt`` written and raise :class:`~defeat.engine.TrainingStopped`.

    A YOLO ``model.name`` trains with Ultralytics' own trainer instead (:func:`defeat.api.yolo.train_yolo`).
    """
    if model_spec(cfg.model.name).is_yolo:
        from defeat.api.yolo import train_yolo

        run, notes = train_yolo(cfg, resume=resume, force=force)
        return RunResult(run.student, run.steps, run.metrics, notes=notes)
    info = init_distributed(cfg.device)
    try:
        notes: list[str] = []
        _claim(cfg, info, resume, force, notes)
        train_set, val_set = load_datasets(cfg)
        model = build_for_dataset(cfg.model, train_set.categories, cfg.seed, notes)
        for line in notes:
            _say(line, info, True)
        result = train_loop(
            cfg, model, model, train_set, val_set, info, kind="detector", resume=resume, progress=progress
        )
        return RunResult(result.final_checkpoint, result.step, result.metrics, notes=notes)
    finally:
        cleanup(info)


def _claim(cfg: Config, info: DistInfo, resume: bool, force: bool, notes: list[str]) -> None:
    """One run per ``output.dir`` (:func:`~defeat.engine.claim_output_dir`), checked before anything is written."""
    moved = claim_output_dir(cfg.output.dir, info, resume=resume, force=force)
    if moved:
        notes.append(moved)
        _say(moved, info, True)


def load_teacher(cfg: Config, categories: list[dict], dataset: str | Path = "the dataset") -> tuple[LoadedModel, str]:
    """The frozen teacher named by ``cfg.distill``: weights from ``teacher_checkpoint``, the model section from
    ``teacher_config`` (or the checkpoint's own config). Returns it and a one-line load report; weights that
    do not fit are refused unless ``distill.force``."""
    from defeat.config import load_config

    path = cfg.distill.teacher_checkpoint
    if cfg.distill.teacher_model:
        if path:
            raise ValueError("distill.teacher_model and distill.teacher_checkpoint: set one of them, not both")
        return load_torchvision_teacher(cfg, categories, dataset)
    if not path:
        raise ValueError(
            "distill.teacher_checkpoint: not set (path to the teacher's model_final.pt, or set "
            "distill.teacher_model and distill.teacher_weights for a torchvision detector)"
        )
    model_cfg = load_config(cfg.distill.teacher_config).model if cfg.distill.teacher_config else None
    teacher = load_model(path, categories=categories, dataset=dataset, model_cfg=model_cfg, strict=False)
    bad = teacher.missing + teacher.unexpected
    report = (
        f"teacher {teacher.name} from {path}: {len(teacher.missing)} missing, {len(teacher.unexpected)} unexpected keys"
    )
    if bad:
        if not cfg.distill.force:
            raise ValueError(
                f"{path}: weights do not fit {teacher.name} ({report}, e.g. {bad[:3]}); "
                "check distill.teacher_config or pass --ignore-teacher-check"
            )
        report += f" (e.g. {bad[:3]}; continuing because of distill.force)"
    return teacher, report


def load_torchvision_teacher(
    cfg: Config, categories: list[dict], dataset: str | Path = "the dataset"
) -> tuple[LoadedModel, str]:
    """The teacher ``distill.teacher_model`` with ``distill.teacher_weights`` (torchvision's files), its class outputs
    mapped onto the dataset's by name; it sees the student's images (same transform sizes), with its own anchors."""
    if not cfg.distill.teacher_weights:
        raise ValueError(
            f"distill.teacher_weights: not set (the weight file of {cfg.distill.teacher_model}, e.g. "
            "its COCO file as torchvision writes it, or DEFAULT)"
        )
    defaults = ModelConfig()
    model_cfg = dataclasses.replace(
        cfg.model,
        name=cfg.distill.teacher_model,
        weights=cfg.distill.teacher_weights,
        backbone_weights="none",
        pretrained_backbone=False,
        trainable_layers=None,
        anchor_sizes=defaults.anchor_sizes,
        anchor_ratios=defaults.anchor_ratios,
    )
    teacher = load_pretrained(model_cfg, categories, dataset=str(dataset))
    return teacher, f"teacher {model_cfg.name} from {model_cfg.weights} ({len(categories)} classes mapped by name)"


def check_teacher(
    cfg: Config,
    teacher,
    student,
    val_set: CocoDetection | None,
    info: DistInfo,
    verbose: bool = True,
    notes: list[str] | None = None,
) -> dict:
    """The teacher check: teacher and (untrained) student on ``distill.teacher_check_images`` validation images;
    refuses a teacher below ``distill.teacher_min_ap`` unless ``distill.force``. With
    ``distill.baseline_checkpoint`` (the student trained alone) it also evaluates that baseline on the same images
    and **warns** (does not refuse) when ``teacher AP − baseline AP < distill.teacher_min_lead``: a teacher no
    better than the student can still regularise it, so this is the user's call, but it is rarely worth the
    run. Warnings are appended to ``notes``. Returns the teacher's (and the baseline's) AP/AP50 on the images the
    student will be evaluated on (empty when the check is off)."""
    n = cfg.distill.teacher_check_images
    if val_set is None or n <= 0:
        return {}
    precision = resolve_precision(config_precision(cfg), info.device)  # as the student will be evaluated
    quick = dict(
        batch_size=cfg.eval.batch_size,
        max_images=n,
        score_thresh=cfg.eval.score_thresh,
        progress=False,
        precision=precision,
    )
    t_stats = evaluate_detector(teacher, val_set, info, **quick)
    s_stats = evaluate_detector(student, val_set, info, **quick)
    baseline = None
    if cfg.distill.baseline_checkpoint:
        baseline = load_model(
            cfg.distill.baseline_checkpoint, categories=val_set.categories, dataset=cfg.data.val_annotations
        ).model.to(info.device)
        b_stats = evaluate_detector(baseline, val_set, info, **quick)
    checked = min(n, len(val_set))
    verdict, warning = None, None
    if info.is_main:
        side = (
            f" | baseline (student alone) AP {100 * b_stats['AP']:.1f} AP50 {100 * b_stats['AP50']:.1f}"
            if baseline is not None
            else ""
        )
        _say(
            f"teacher check on {checked} val images: teacher AP {100 * t_stats['AP']:.1f} "
            f"AP50 {100 * t_stats['AP50']:.1f} | student AP {100 * s_stats['AP']:.1f} "
            f"AP50 {100 * s_stats['AP50']:.1f}{side}",
            info,
            verbose,
        )
        if t_stats["AP"] < cfg.distill.teacher_min_ap:
            source = cfg.distill.teacher_checkpoint or f"{cfg.distill.teacher_model} ({cfg.distill.teacher_weights})"
            verdict = (
                f"{source}: teacher AP {100 * t_stats['AP']:.1f} on {checked} val "
                f"images is below distill.teacher_min_ap ({100 * cfg.distill.teacher_min_ap:.1f}); "
                "is it trained on this dataset?"
            )
        if baseline is not None and t_stats["AP"] - b_stats["AP"] < cfg.distill.teacher_min_lead:
            warning = (
                f"warning: the teacher ({100 * t_stats['AP']:.1f} AP) is not ahead of the baseline student "
                f"{cfg.distill.baseline_checkpoint} ({100 * b_stats['AP']:.1f} AP) by "
                f"distill.teacher_min_lead ({100 * cfg.distill.teacher_min_lead:.1f} AP) on {checked} val "
                "images: the distilled student is unlikely to beat the baseline. Train the teacher longer, "
                "make it larger or start it from pretrained weights"
            )
    verdict, warning = broadcast_from_main((verdict, warning), info)
    if verdict and not cfg.distill.force:
        raise ValueError(f"{verdict} Pass --ignore-teacher-check to distil anyway")
    if verdict:
        _say(f"warning: {verdict} (continuing because of distill.force)", info, verbose)
    if warning:
        _say(warning, info, verbose)
        if notes is not None:
            notes.append(warning)
    evaluated = min(cfg.data.val_max_images or len(val_set), len(val_set))
    if checked != evaluated:  # side-by-side numbers must come from the same images as the student's
        full = dict(quick, max_images=cfg.data.val_max_images)
        t_stats = evaluate_detector(teacher, val_set, info, **full)
        if baseline is not None:
            b_stats = evaluate_detector(baseline, val_set, info, **full)
    reference = {"teacher_AP": t_stats["AP"], "teacher_AP50": t_stats["AP50"]} if info.is_main else {}
    if baseline is not None and info.is_main:
        reference.update(baseline_AP=b_stats["AP"], baseline_AP50=b_stats["AP50"])
    return broadcast_from_main(reference, info)


def _distiller_for(cfg: Config, categories: list[dict], teacher: LoadedModel, notes: list[str] | None = None):
    """A fresh ``cfg.model`` student (built as :func:`~defeat.engine.build_for_dataset` does, what it did appended to
    ``notes``) and the DeFeat distiller around it and the frozen teacher."""
    from defeat.distill import build_distiller

    student = build_for_dataset(cfg.model, categories, cfg.seed, notes)
    try:
        distiller = build_distiller(
            student,
            teacher.model,
            cfg.distill.settings(),
            max_steps=cfg.schedule.max_steps,
            where=f"teacher {teacher.path}",
        )
    except ValueError as err:
        raise ValueError(f"{err} (student model.name={cfg.model.name})") from None
    return student, distiller


def given_teacher(cfg: Config, teacher: nn.Module, categories: list[dict]) -> tuple[LoadedModel, str]:
    """A detector instance the caller built, as the teacher (its classes must be the dataset's, in order)."""
    named = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name=type(teacher).__name__))
    return (
        LoadedModel(teacher.eval(), named, "detector", categories, "the given teacher"),
        f"teacher: the given {type(teacher).__name__}",
    )


def distill(
    cfg: Config,
    *,
    teacher: nn.Module | None = None,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    verbose: bool = True,
) -> RunResult:
    """Distil the teacher of ``cfg.distill`` into a fresh ``cfg.model`` student with DeFeat (under torchrun: DDP).

    Loads the teacher (:func:`load_teacher`), runs the teacher check (:func:`check_teacher`, with the baseline
    comparison when ``distill.baseline_checkpoint`` is set), then trains the
    :class:`~defeat.distill.DeFeatDistiller`; the checkpoints hold the student and the adapters, never the teacher.
    ``resume``, ``force`` and signals as in :func:`train`.

    A YOLO student distils inside Ultralytics' training loop (:func:`defeat.api.yolo.distill_yolo`).
    """
    if model_spec(cfg.model.name).is_yolo:
        if teacher is not None:
            raise ValueError("distill(teacher=...): a YOLO student takes its teacher from cfg.distill")
        from defeat.api.yolo import distill_yolo

        run, notes = distill_yolo(cfg, load_teacher, resume=resume, force=force)
        return RunResult(run.student, run.steps, run.metrics, notes=notes)
    if is_yolo_name(cfg.distill.teacher_model):
        raise ValueError(
            f"distill.teacher_model={cfg.distill.teacher_model}: a YOLO teacher distils into a YOLO student only "
            f"(model.name={cfg.model.name} is a torchvision detector)"
        )
    info = init_distributed(cfg.device)
    try:
        moved: list[str] = []
        _claim(cfg, info, resume, force, moved)
        train_set, val_set = load_datasets(cfg)
        categories = train_set.categories
        if teacher is None:
            teacher, report = load_teacher(cfg, categories, cfg.data.train_annotations)
        else:
            teacher, report = given_teacher(cfg, teacher, categories)
        built: list[str] = []
        student, distiller = _distiller_for(cfg, categories, teacher, built)
        distiller.to(info.device)
        notes = [
            *moved,
            report,
            *built,
            f"DeFeat: feature_mode={cfg.distill.feature_mode} "
            f"proposal_mode={cfg.distill.proposal_mode} student {cfg.model.name} <- teacher "
            f"{teacher.name}",
        ]
        for line in notes:
            _say(line, info, verbose)
        if cfg.distill.weights == "auto":
            cfg, line = calibrate_run(cfg, distiller, train_set, info, resume=resume)
            notes.append(line)
            _say(line, info, verbose)
        reference = check_teacher(cfg, teacher.model, student, val_set, info, verbose, notes)
        result = train_loop(
            cfg,
            distiller,
            student,
            train_set,
            val_set,
            info,
            kind="distill",
            resume=resume,
            before_step=distiller.before_step,
            reference_metrics=reference or None,
            progress=progress,
        )
        return RunResult(result.final_checkpoint, result.step, result.metrics, reference, notes)
    finally:
        cleanup(info)


def estimate(cfg: Config, *, distill: bool = False, warmup: int = 2, steps: int = 5) -> StepTiming:
    """The cost of ``cfg``'s schedule before committing to it: ``warmup`` + ``steps`` real steps of ``defeat train``
    (or, with ``distill``, of ``defeat distill``: teacher loaded, DeFeat losses on) timed after the warm-up
    (:func:`defeat.engine.trainer.estimate_steps`); s/step × ``schedule.max_steps`` and the peak memory. Writes
    nothing: no output folder, no log, no checkpoint (the teacher check and ``weights: auto`` do not run)."""
    info = init_distributed(cfg.device)
    try:
        train_set, _ = load_datasets(cfg, val=False)
        before = None
        if distill:
            teacher, _ = load_teacher(cfg, train_set.categories, cfg.data.train_annotations)
            _, model = _distiller_for(cfg, train_set.categories, teacher)
            before = model.before_step
        else:
            model = build_for_dataset(cfg.model, train_set.categories, cfg.seed)
        return estimate_steps(cfg, model, train_set, info, warmup=warmup, steps=steps, before_step=before)
    finally:
        cleanup(info)


AUTO_WEIGHTS_FILE = "auto_weights.json"


def calibration_batches(cfg: Config, train_set: CocoDetection, info: DistInfo) -> list:
    """The first ``distill.auto_batches`` training batches of this rank, exactly as the run will draw them at
    its start (same sampler, seed and flips), on the run's device."""
    sampler = train_sampler(cfg, len(train_set), info)
    batches, indices = [], iter(sampler)
    for _ in range(cfg.distill.auto_batches):
        items = [train_set[next(indices)] for _ in range(cfg.data.batch_size)]
        images, targets = collate(items)
        batches.append(
            (
                [im.to(info.device) for im in images],
                [{k: v.to(info.device) if hasattr(v, "to") else v for k, v in t.items()} for t in targets],
            )
        )
    return batches


def calibrate_run(
    cfg: Config, distiller, train_set: CocoDetection, info: DistInfo, *, resume: bool = False
) -> tuple[Config, str]:
    """``distill.weights: auto``: measure the KD terms on the run's first batches, choose the weights
    (:func:`defeat.distill.calibrate_weights`; rank 0's choice on every rank), set them on ``distiller`` and
    return the config with them written in (``weights: fixed``), so the run's ``config.yaml`` reproduces it,
    and a log line. The measurement goes to ``output.dir/auto_weights.json``; a resumed run reuses that file
    instead of measuring again."""
    from defeat.distill import calibrate_weights

    record_path = Path(cfg.output.dir) / AUTO_WEIGHTS_FILE
    if resume and record_path.is_file():
        record = json.loads(record_path.read_text())
        line = f"weights=auto: reusing {record_path}: " + ", ".join(f"{k}={v:g}" for k, v in record["weights"].items())
    else:  # every rank measures (SyncBatchNorm needs all of them in a forward); rank 0's choice is used
        calibration = calibrate_weights(distiller, calibration_batches(cfg, train_set, info))
        record, line = broadcast_from_main((calibration.as_dict(), calibration.summary()), info)
    distill_cfg = dataclasses.replace(cfg.distill, weights="fixed", **record["weights"])
    distiller.settings = distill_cfg.settings()
    if info.is_main:
        record_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(record_path, record)
    return dataclasses.replace(cfg, distill=distill_cfg), line


def evaluate(
    cfg: Config, checkpoint: str | Path | None = None, out: str | Path | None = None, *, progress: bool = True
) -> dict:
    """COCO metrics of a checkpoint on ``cfg.data``'s validation split, in ``cfg.precision`` (as training evaluates);
    writes ``results.json`` (detections) and ``metrics.json`` to ``out`` (default: the checkpoint's folder).
    Without a checkpoint it evaluates ``cfg.model`` with its ``model.weights`` (e.g. torchvision's COCO file on
    COCO-named data: classes mapped by name; ``out`` defaults to ``output.dir``). Returns the stats (rank 0)."""
    info = init_distributed(cfg.device)
    try:
        _, val_set = load_datasets(cfg, train=False)
        if checkpoint is not None:
            loaded = load_model(checkpoint, categories=val_set.categories, dataset=cfg.data.val_annotations)
        else:
            loaded = load_pretrained(cfg.model, val_set.categories, dataset=cfg.data.val_annotations)
        model = loaded.model.to(info.device)
        out = Path(out) if out else Path(checkpoint).parent if checkpoint is not None else Path(cfg.output.dir)
        # the precision the config trains with: `defeat eval` gives the numbers the training run's final eval gave
        precision = resolve_precision(config_precision(cfg), info.device)
        stats = evaluate_detector(
            model,
            val_set,
            info,
            batch_size=cfg.eval.batch_size,
            max_images=cfg.data.val_max_images,
            score_thresh=cfg.eval.score_thresh,
            results_file=out / "results.json",
            progress=progress,
            precision=precision,
        )
        if info.is_main:
            atomic_write_json(out / "metrics.json", stats)
        return stats or {}
    finally:
        cleanup(info)
