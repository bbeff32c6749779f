"""``defeat train`` / ``defeat distill`` with an Ultralytics YOLO model (the ``yolo`` extra; docs/yolo.md).

:func:`defeat.api.train` and :func:`defeat.api.distill` come here when ``model.name`` is a YOLO name. Training is
Ultralytics' own (:mod:`defeat.engine.yolo`); distillation puts :class:`~defeat.distill.yolo.YoloDistiller` in its
loop with a YOLO teacher (``distill.teacher_model: yolo26s`` + ``distill.teacher_weights: its .pt``) or a
torchvision teacher (the project's ``distill.teacher_checkpoint``, or ``teacher_model`` + ``teacher_weights`` of a
torchvision name), paired by stride. ``yolo.distill: ultralytics`` runs Ultralytics' own distillation
(``distill_model=``) instead, for side-by-side studies.
"""

from __future__ import annotations

from pathlib import Path

from defeat.config import Config
from defeat.engine import cleanup, init_distributed
from defeat.engine.rundir import claim_output_dir
from defeat.models.spec import is_yolo_name, model_spec


def _start(cfg: Config, resume: bool, force: bool, what: str) -> tuple[Path, list[str]]:
    from defeat.config import ModelConfig

    sizes = {k: getattr(cfg.model, k) for k in ("min_size", "max_size")}
    if any(v != getattr(ModelConfig, k) for k, v in sizes.items()):
        # a silent 640 px run where the user asked for 128 px costs ~25x the time and answers another question
        given = ", ".join(f"model.{k}={v}" for k, v in sizes.items())
        raise ValueError(
            f"{given}: the torchvision image sizes do not apply to YOLO models; set yolo.imgsz "
            f"(Ultralytics' image size, now {cfg.yolo.imgsz}) and leave model.min_size/max_size unset"
        )
    devices = cfg.yolo.args.get("device")
    if devices is not None and len(str(devices).strip("[]()").split(",")) > 1:
        # Ultralytics would re-launch the run as DDP workers from a pickled trainer: they would train without the
        # distiller and each rank would write the step log; one device until that path is wired and tested
        raise ValueError(
            f"yolo.args.device={devices}: a YOLO run here uses one device (Ultralytics' multi-GPU DDP is not "
            "wired for defeat runs: its workers would drop the distiller); name one GPU"
        )
    if resume:
        raise ValueError(f"--resume: a YOLO {what} does not resume (start it again, with --force to replace the run)")
    info = init_distributed("cpu")
    try:
        if info.world_size > 1:
            raise ValueError(
                "torchrun: a YOLO run is one process; Ultralytics' own multi-GPU training is not wired here"
            )
        moved = claim_output_dir(cfg.output.dir, info, resume=False, force=force)
    finally:
        cleanup(info)
    return Path(cfg.output.dir), [moved] if moved else []


def train_yolo(cfg: Config, *, resume: bool = False, force: bool = False):
    """Train the YOLO model of ``cfg.model`` alone (the baseline) with Ultralytics' trainer; see
    :func:`defeat.engine.yolo.run_yolo` for what it writes. Returns the :class:`~defeat.engine.yolo.YoloRun`
    (its ``student``: ``output.dir/student.pt``, a plain Ultralytics checkpoint) and the notes of the start."""
    from defeat.engine.yolo import prepare_data, run_yolo

    out_dir, notes = _start(cfg, resume, force, "training")
    data = prepare_data(cfg, out_dir)
    return run_yolo(cfg, out_dir, data), notes


def load_yolo_teacher(cfg: Config, categories: list[dict], dataset: str, load_teacher):
    """The frozen teacher of a YOLO student and a one-line report: an Ultralytics ``.pt`` when
    ``distill.teacher_model`` is a YOLO name, else a torchvision teacher as ``load_teacher``
    (:func:`defeat.api.runs.load_teacher`) loads it (classes checked against the data)."""
    from defeat.models.yolo import load_yolo_weights

    d = cfg.distill
    if is_yolo_name(d.teacher_model):
        if not d.teacher_weights:
            raise ValueError(f"distill.teacher_weights: not set (the Ultralytics .pt of the {d.teacher_model} teacher)")
        teacher = load_yolo_weights(d.teacher_weights, "distill.teacher_weights")
        return teacher, f"teacher {d.teacher_model} from {d.teacher_weights}"
    loaded, report = load_teacher(cfg, categories, dataset)
    return loaded.model, report


def distill_yolo(cfg: Config, load_teacher, *, resume: bool = False, force: bool = False):
    """Distil the teacher of ``cfg.distill`` into a fresh ``cfg.model`` YOLO student inside Ultralytics' training
    loop (``yolo.distill: defeat``, the default: the feature mode of ``distill.feature_mode``), or with
    Ultralytics' own distillation (``yolo.distill: ultralytics``: a YOLO teacher's ``.pt`` as ``distill_model``).
    Writes what :func:`train_yolo` writes (and returns what it returns); the student checkpoint holds neither
    teacher nor adapters. ``load_teacher``: :func:`defeat.api.runs.load_teacher` (torchvision teachers)."""
    from defeat.distill.yolo import YoloDistiller
    from defeat.engine.yolo import data_categories, prepare_data, run_yolo

    if not model_spec(cfg.model.name).is_yolo:
        raise ValueError(f"model.name: {cfg.model.name} is not a YOLO model")
    out_dir, notes = _start(cfg, resume, force, "distillation")
    categories = data_categories(cfg)
    if cfg.yolo.distill == "ultralytics":
        if not is_yolo_name(cfg.distill.teacher_model) or not cfg.distill.teacher_weights:
            raise ValueError(
                "yolo.distill=ultralytics: Ultralytics' own distillation needs a YOLO teacher "
                "(distill.teacher_model: yolo26s and distill.teacher_weights: its .pt)"
            )
        notes.append(f"Ultralytics' distillation: distill_model={cfg.distill.teacher_weights} (its dis weight)")
        builtin = {"distill_model": str(Path(cfg.distill.teacher_weights).resolve())}
        return run_yolo(cfg, out_dir, prepare_data(cfg, out_dir), extra_args=builtin), notes
    dataset = cfg.data.train_annotations or cfg.data.yolo_data
    teacher, report = load_yolo_teacher(cfg, categories, dataset, load_teacher)
    notes.append(report)
    where = f"teacher {cfg.distill.teacher_model or cfg.distill.teacher_checkpoint}"
    settings = cfg.distill.settings()
    max_steps = cfg.schedule.max_steps

    def wrap(student):
        try:
            distiller = YoloDistiller(student, teacher, settings, max_steps=max_steps, where=where)
        except ValueError as err:
            raise ValueError(f"{err} (student model.name={cfg.model.name})") from None
        return distiller.to(next(student.parameters()).device)

    wrap(_probe_student(cfg, len(categories)))  # a bad pair: refused in one line, before anything is written
    notes.append(
        f"DeFeat in Ultralytics' loop: feature_mode={settings.feature_mode} student {cfg.model.name} <- {where}"
    )
    return run_yolo(cfg, out_dir, prepare_data(cfg, out_dir), wrap=wrap), notes


def _probe_student(cfg: Config, num_classes: int):
    from defeat.models.yolo import build_yolo

    return build_yolo(cfg.model.name, num_classes)
