"""Ultralytics YOLO runs: Ultralytics' own trainer (its data pipeline, augmentation, optimizer, loss), started from
the project's config, offline, with the distiller put in its loop, and the result scored by the project's COCO
evaluator with Ultralytics' own mAP recorded beside it.

This module and :mod:`defeat.models.yolo` are the only ones that import ``ultralytics`` (AGPL-3.0: imported and
subclassed here, none of its code copied); the engine imports this module only for a YOLO model.

What Ultralytics would fetch, and how each is avoided (docs/yolo.md "Offline"):

* telemetry events, the update check, online checks: ``YOLO_OFFLINE=1`` before Ultralytics is imported
  (:func:`defeat.models.yolo.ultralytics_module`);
* the Arial font its dataset check downloads (``check_det_dataset`` -> ``check_font``): replaced by a no-op while
  a run lasts (:func:`offline`); plots, which draw with it, are off (``plots=False``);
* the ``yolo26n.pt`` its AMP check downloads on a GPU (``check_amp``): replaced by "AMP on CUDA" while a run lasts;
  ``precision: fp32`` turns AMP off;
* ``pi-heif``, pip-installed by the ``PIL.Image.open`` Ultralytics puts in place for the whole process when an image
  cannot be identified: the original ``Image.open`` is put back when Ultralytics is imported;
* pretrained weights named by a bare model stem (``yolo26n`` -> ``yolo26n.pt``): models are built from the
  package's YAML config (``yolo26n.yaml``) or from the local ``model.weights`` file, never from a stem.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import torch
import yaml
from torch import nn

from defeat.config import Config, config_to_dict
from defeat.data.coco import load_coco_index
from defeat.data.importers import import_yolo
from defeat.data.yolo_export import export_yolo, read_category_map
from defeat.distill.yolo import YoloDistiller
from defeat.engine.evaluator import coco_stats
from defeat.models.spec import model_spec
from defeat.models.yolo import ultralytics_module
from defeat.utils import atomic_write_bytes, atomic_write_json, atomic_write_text

#: the student a YOLO run leaves in output.dir: a plain Ultralytics checkpoint (``YOLO(path)`` loads it)
STUDENT_FILE = "student.pt"
#: Ultralytics' own run folder inside output.dir (its weights/, results.csv, args.yaml)
ULTRALYTICS_DIR = "ultralytics"
#: the prediction settings of the COCO evaluation (Ultralytics' validation defaults)
EVAL_CONF, EVAL_IOU, EVAL_MAX_DET = 0.001, 0.7, 300
IMAGE_SUFFIXES = {".bmp", ".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".dng", ".mpo", ".pfm", ".heic"}


@contextmanager
def offline() -> Iterator[None]:
    """While the block runs, Ultralytics downloads nothing: its font check is a no-op and its AMP check (which would
    download yolo26n.pt to compare fp32 and AMP outputs) answers "AMP on CUDA" (see the module docstring)."""
    ultralytics_module()
    import ultralytics.data.utils
    import ultralytics.engine.trainer

    def amp_without_download(model: nn.Module) -> bool:
        return next(model.parameters()).device.type == "cuda"

    with (
        mock.patch.object(ultralytics.data.utils, "check_font", lambda *args, **kwargs: None),
        mock.patch.object(ultralytics.engine.trainer, "check_amp", amp_without_download),
    ):
        yield


# ------------------------------------------------------------------------------------------------------- data
@dataclass
class YoloData:
    """A run's dataset as Ultralytics reads it and as the COCO evaluator scores it."""

    data_yaml: Path
    categories: list[dict]  # class index i -> {"id": COCO category id, "name"}
    val_annotations: Path  # COCO ground truth of the val split
    val_images: Path  # the folder its file names are relative to
    train_images: int  # images in the train split


def prepare_data(cfg: Config, out_dir: Path) -> YoloData:
    """The run's data: ``data.yolo_data`` (a YOLO-format data.yaml) used as it is, with its val labels converted
    to a COCO JSON in ``out_dir`` for the evaluator; or the COCO splits of ``cfg.data`` exported to Ultralytics'
    layout in ``out_dir/yolo_data`` (kept for a resumed run)."""
    if cfg.data.yolo_data:
        return _yolo_format_data(Path(cfg.data.yolo_data), out_dir)
    folder = out_dir / "yolo_data"
    if not folder.is_dir():
        export_yolo(
            folder,
            {
                "train": (cfg.data.train_images, cfg.data.train_annotations),
                "val": (cfg.data.val_images, cfg.data.val_annotations),
            },
        )
    categories = [{"id": c["id"], "name": c["name"]} for c in read_category_map(folder)]
    return YoloData(
        folder / "data.yaml",
        categories,
        Path(cfg.data.val_annotations),
        Path(cfg.data.val_images),
        len(load_coco_index(cfg.data.train_annotations).images),
    )


def data_categories(cfg: Config) -> list[dict]:
    """The classes of the run's data in class-index order (``{"id", "name"}``), read without writing anything."""
    if cfg.data.yolo_data:
        names = _checked_yolo_data(Path(cfg.data.yolo_data))["names"]
        return [{"id": i + 1, "name": names[i]} for i in range(len(names))]
    return [{"id": c["id"], "name": c["name"]} for c in load_coco_index(cfg.data.train_annotations).categories]


def _checked_yolo_data(data_yaml: Path) -> dict:
    if not data_yaml.is_file():
        raise FileNotFoundError(f"data.yolo_data: {data_yaml} not found (a YOLO dataset's data.yaml)")
    ultralytics_module("data.yolo_data")
    from ultralytics.data.utils import check_det_dataset

    try:
        with offline():
            return check_det_dataset(str(data_yaml))
    except Exception as err:  # Ultralytics raises SyntaxError, FileNotFoundError, ... with multi-line texts
        raise ValueError(f"data.yolo_data: {data_yaml}: {str(err).strip().splitlines()[0]}") from None


def _yolo_format_data(data_yaml: Path, out_dir: Path) -> YoloData:
    data = _checked_yolo_data(data_yaml)
    val_dir = _one_folder(data["val"], data_yaml, "val")
    train = data["train"] if isinstance(data["train"], list) else [data["train"]]
    train_count = sum(_count_images(Path(p)) for p in train)
    names = [data["names"][i] for i in range(len(data["names"]))]
    out_dir.mkdir(parents=True, exist_ok=True)
    classes = out_dir / "yolo_classes.txt"
    atomic_write_text(classes, "".join(f"{name}\n" for name in names))
    labels = Path(str(val_dir).replace(f"{os.sep}images", f"{os.sep}labels"))
    gt = out_dir / "val_coco.json"
    import_yolo(val_dir, labels, classes, gt)
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(names)]  # import_yolo: class i -> id i+1
    return YoloData(data_yaml, categories, gt, val_dir, train_count)


def _one_folder(entry, data_yaml: Path, split: str) -> Path:
    folders = entry if isinstance(entry, list) else [entry]
    if len(folders) != 1 or not Path(folders[0]).is_dir():
        raise ValueError(f"data.yolo_data: {data_yaml}: '{split}' must be one image folder, got {entry!r}")
    return Path(folders[0])


def _count_images(path: Path) -> int:
    if path.is_dir():
        return sum(1 for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if path.is_file():  # a list of image paths, one a line
        return sum(1 for line in path.read_text().splitlines() if line.strip())
    raise FileNotFoundError(f"data.yolo_data: train images {path} not found")


# ---------------------------------------------------------------------------------------------------- trainer
def _trainer_class():
    """Ultralytics' ``DetectionTrainer`` with two changes: the model it trains can be wrapped in a
    :class:`~defeat.distill.yolo.YoloDistiller` (before its optimizer and EMA are built, where Ultralytics puts its
    own distillation model), and checkpoints hold the student alone (a plain Ultralytics checkpoint)."""
    ultralytics_module()
    from ultralytics.models.yolo.detect import DetectionTrainer

    class DefeatDetectionTrainer(DetectionTrainer):
        wrap: Callable[[nn.Module], nn.Module] | None = None

        def _build_train_pipeline(self):
            if self.wrap is not None and not isinstance(self.model, YoloDistiller):
                self.model = self.wrap(self.model)
            super()._build_train_pipeline()

        def save_model(self):
            ema = self.ema.ema
            if not isinstance(ema, YoloDistiller):
                return super().save_model()
            self.ema.ema = ema.student  # the checkpoint: the student's EMA alone (no adapters, no teacher)
            try:
                return super().save_model()
            finally:
                self.ema.ema = ema

    return DefeatDetectionTrainer


def _device_and_amp(cfg: Config) -> tuple[str, bool | str]:
    cuda = torch.cuda.is_available() and cfg.device != "cpu"
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: cuda, but torch sees no CUDA device")
    if not cuda:
        return "cpu", False
    if cfg.precision == "fp32":
        return "0", False
    return "0", "bf16" if cfg.precision == "bf16" or cfg.bf16 else True


def ultralytics_overrides(cfg: Config, data: YoloData, out_dir: Path) -> dict:
    """The arguments of Ultralytics' trainer for this run (``yolo.args`` last: they win)."""
    spec = model_spec(cfg.model.name)
    device, amp = _device_and_amp(cfg)
    batches = math.ceil(data.train_images / cfg.data.batch_size)
    epochs = cfg.yolo.epochs or max(1, math.ceil(cfg.schedule.max_steps / max(batches, 1)))
    weights = cfg.model.weights
    overrides = {
        "model": weights if weights.lower() != "none" else spec.yolo_config,
        "data": str(data.data_yaml),
        "epochs": epochs,
        "batch": cfg.data.batch_size,
        "workers": cfg.data.workers,
        "imgsz": cfg.yolo.imgsz,
        "seed": cfg.seed,
        "deterministic": cfg.deterministic,
        "device": device,
        "amp": amp,
        "project": str(out_dir.resolve()),
        "name": ULTRALYTICS_DIR,
        "exist_ok": True,
        "plots": False,
        "val": False,
        "pretrained": False,
        "verbose": False,
    }
    return {**overrides, **cfg.yolo.args}


@dataclass
class YoloRun:
    """What a YOLO run produced."""

    student: Path  # output.dir/student.pt
    steps: int  # training batches run
    metrics: dict  # COCO stats of the student (the decision metric) + Ultralytics' own mAP
    sec_per_step: float
    notes: list[str] = field(default_factory=list)


class _StepLog:
    """Ultralytics callbacks: the KD schedule before each batch; after it the step count, the stop at
    ``max_steps`` and a metrics.jsonl record every ``log_every`` batches (losses, s/step, lr)."""

    def __init__(self, path: Path, max_steps: int, log_every: int) -> None:
        self.path, self.max_steps, self.log_every = path, max_steps, max(1, log_every)
        self.step, self.window, self.sums, self.started = 0, 0, {}, None
        self.seconds: list[float] = []

    def before(self, trainer) -> None:
        model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
        if isinstance(model, YoloDistiller):
            model.before_step(self.step)
        self.started = time.perf_counter()

    def after(self, trainer) -> None:
        seconds = time.perf_counter() - (self.started or time.perf_counter())
        self.step += 1
        self.window += 1
        self.seconds.append(seconds)
        for key, value in (trainer.loss_items or {}).items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value)
        if self.step % self.log_every == 0 or self.step == self.max_steps:
            record = {
                "step": self.step,
                "lr": trainer.optimizer.param_groups[0]["lr"],
                "sec_per_step": round(sum(self.seconds[-self.window :]) / self.window, 4),
                **{key: float(f"{value / self.window:.6g}") for key, value in self.sums.items()},  # 6 digits
            }
            with open(self.path, "a") as handle:
                handle.write(json.dumps(record) + "\n")
            self.window, self.sums = 0, {}
        if self.max_steps and self.step >= self.max_steps:
            trainer.stop = True  # Ultralytics' loop breaks here, validates, saves and ends

    @property
    def sec_per_step(self) -> float:
        timed = self.seconds[1:] or self.seconds  # the first batch builds caches: left out when there are others
        return sum(timed) / len(timed) if timed else 0.0


def run_yolo(
    cfg: Config,
    out_dir: Path,
    data: YoloData,
    *,
    wrap: Callable[[nn.Module], nn.Module] | None = None,
    extra_args: dict | None = None,
) -> YoloRun:
    """Train ``cfg.model`` with Ultralytics' trainer (``wrap``: the distiller around the student; ``extra_args``:
    further trainer arguments, e.g. Ultralytics' own ``distill_model``), then score the student with the COCO
    evaluator. Writes ``config.yaml``, ``metrics.jsonl``, ``student.pt``, ``results.json``, ``metrics.json`` to
    ``out_dir`` and Ultralytics' own run folder to ``out_dir/ultralytics``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "config.yaml", yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    log_path = out_dir / "metrics.jsonl"
    if log_path.exists():
        log_path.unlink()
    overrides = {**ultralytics_overrides(cfg, data, out_dir), **(extra_args or {})}
    max_steps = 0 if cfg.yolo.epochs else cfg.schedule.max_steps
    steps = _StepLog(log_path, max_steps, cfg.output.log_every)
    with offline():
        try:
            trainer = _trainer_class()(overrides=overrides)
        except (SyntaxError, TypeError, KeyError) as err:  # Ultralytics' check of its arguments
            raise ValueError(f"yolo.args: {str(err).strip().splitlines()[0]}") from None
        trainer.wrap = wrap
        trainer.add_callback("on_train_batch_start", steps.before)
        trainer.add_callback("on_train_batch_end", steps.after)
        trainer.train()
    final = trainer.last if trainer.last.is_file() else trainer.best
    student = out_dir / STUDENT_FILE
    atomic_write_bytes(student, final.read_bytes())
    ultralytics_metrics = {
        "ultralytics_mAP50-95": float((trainer.metrics or {}).get("metrics/mAP50-95(B)", float("nan"))),
        "ultralytics_mAP50": float((trainer.metrics or {}).get("metrics/mAP50(B)", float("nan"))),
    }
    stats = evaluate_yolo(student, data, cfg, out_dir / "results.json")
    metrics = {**stats, **ultralytics_metrics, "sec_per_step": round(steps.sec_per_step, 4), "steps": steps.step}
    atomic_write_json(out_dir / "metrics.json", metrics)
    with open(log_path, "a") as handle:
        handle.write(json.dumps({"step": steps.step, "event": "eval", **metrics}) + "\n")
    return YoloRun(student, steps.step, metrics, steps.sec_per_step)


def predict_coco(
    checkpoint: Path, images: list[tuple[int, Path]], categories: list[dict], imgsz: int, device: str, batch: int = 8
) -> list[dict]:
    """COCO results (xywh boxes in image pixels, COCO category ids) of an Ultralytics checkpoint on
    ``(image id, path)`` pairs, with Ultralytics' own predictor (its letterbox and NMS) at its validation settings
    (conf 0.001, IoU 0.7, 300 detections); class i -> ``categories[i]["id"]``."""
    ultralytics_module()
    from ultralytics import YOLO

    model = YOLO(str(checkpoint), task="detect")
    results = []
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        outputs = model.predict(
            [str(p) for _, p in chunk],
            imgsz=imgsz,
            conf=EVAL_CONF,
            iou=EVAL_IOU,
            max_det=EVAL_MAX_DET,
            device=device,
            verbose=False,
        )
        for (image_id, _), output in zip(chunk, outputs):
            boxes = output.boxes
            for (x1, y1, x2, y2), cls, score in zip(boxes.xyxy.tolist(), boxes.cls.int().tolist(), boxes.conf.tolist()):
                results.append(
                    {
                        "image_id": int(image_id),
                        "category_id": int(categories[cls]["id"]),
                        "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                        "score": round(float(score), 5),
                    }
                )
    return results


def evaluate_yolo(checkpoint: Path, data: YoloData, cfg: Config, results_file: Path | None = None) -> dict:
    """The project's COCO metrics (faster-coco-eval, identical to pycocotools) of a YOLO checkpoint on the val
    split (``data.val_max_images`` first images when set); the detections to ``results_file``."""
    index = load_coco_index(data.val_annotations)
    chosen = index.images[: cfg.data.val_max_images] if cfg.data.val_max_images else index.images
    images = [(im["id"], data.val_images / im["file_name"]) for im in chosen]
    device, _ = _device_and_amp(cfg)
    with offline():
        results = predict_coco(checkpoint, images, data.categories, cfg.yolo.imgsz, device, cfg.eval.batch_size)
    if results_file is not None:
        atomic_write_json(results_file, results, indent=None)
    return coco_stats(data.val_annotations, results, image_ids=[i for i, _ in images])


def remove_ultralytics_run(out_dir: Path) -> None:
    """Drop Ultralytics' own run folder (its weights duplicate ``student.pt``); used by studies that keep many runs."""
    shutil.rmtree(out_dir / ULTRALYTICS_DIR, ignore_errors=True)
