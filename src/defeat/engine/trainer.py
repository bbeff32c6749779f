"""The training loop shared by ``defeat train`` and ``defeat distill``.

It trains any ``nn.Module`` whose ``forward(images, targets)`` returns a dict of scalar losses (a
torchvision detector, or the DeFeat distiller wrapping a student), evaluates ``detector`` (the model
itself, or the student) and handles the rest: DDP under torchrun, LR schedule, gradient clipping,
mixed precision (the fast path of :mod:`defeat.engine.precision`), JSONL/TensorBoard logs, atomic
checkpoints, exact resume, non-finite-loss stops and preemption (SIGTERM / SIGINT: finish the step, write
``checkpoint_last.pt``, raise :class:`~defeat.engine.stop.TrainingStopped`; see :mod:`defeat.engine.stop`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from defeat.config import Config, changed_settings, config_to_dict, save_config
from defeat.data import CocoDetection, TrainSampler, collate
from defeat.distill import is_kd_loss
from defeat.engine.allocator import tune_cpu_allocator
from defeat.engine.checkpoint import load_checkpoint, save_checkpoint
from defeat.engine.distributed import DistInfo, broadcast_from_main, gather_to_main
from defeat.engine.evaluator import evaluate, format_stats
from defeat.engine.precision import Precision, clipped_step, config_precision, resolve_precision
from defeat.engine.schedule import lr_factor
from defeat.engine.stop import StopSignals, TrainingStopped
from defeat.utils import WRITE_ERRNOS, WriteError, atomic_write_json, atomic_write_text, write_error

LAST_CHECKPOINT = "checkpoint_last.pt"
FINAL_CHECKPOINT = "model_final.pt"


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/inf loss; the message names the step and the last good checkpoint."""


@dataclass
class TrainResult:
    step: int
    final_checkpoint: Path
    metrics: dict = field(default_factory=dict)  # last evaluation's COCO stats (rank 0)


def build_optimizer(cfg: Config, model: nn.Module, precision: Precision | None = None) -> torch.optim.Optimizer:
    """SGD or AdamW; no weight decay on 1-D parameters (norm scales and biases), as is standard.

    With a fast-path ``precision`` (not fp32) the step is the fused kernel where the device has one.
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fast = precision.optimizer_kwargs() if precision is not None and precision.enabled else {}
    if cfg.optim.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.optim.lr, momentum=cfg.optim.momentum, **fast)
    return torch.optim.AdamW(groups, lr=cfg.optim.lr, **fast)


class MetricsLog:
    """Rank-0 JSONL log (one JSON object per line), optionally mirrored to TensorBoard."""

    def __init__(self, out_dir: Path, enabled: bool, tensorboard: bool):
        self.enabled = enabled
        self.path = out_dir / "metrics.jsonl"
        self.writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ValueError(
                    "output.tensorboard: the tensorboard package is not installed (pip install 'defeat[tensorboard]')"
                ) from None
            self.writer = SummaryWriter(str(out_dir / "tensorboard"))

    def restart(self, step: int) -> None:
        """One run per log: a run from step 0 starts an empty log; a resumed one drops the records after its
        checkpoint's ``step`` (written by the interrupted attempt, they would be repeated)."""
        if not self.enabled or not self.path.is_file():
            return
        if step == 0:
            self.path.unlink()
            return
        kept = [line for line in self.path.read_text().splitlines(keepends=True) if _record_step(line) <= step]
        atomic_write_text(self.path, "".join(kept))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        line = json.dumps(record) + "\n"
        try:
            with open(self.path, "a") as handle:
                handle.write(line)
        except OSError as err:
            if err.errno in WRITE_ERRNOS:
                raise write_error(self.path, err, len(line)) from None
            raise
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step":
                    self.writer.add_scalar(key, value, record["step"])


def _record_step(line: str) -> float:
    """The step of one metrics.jsonl line (a torn last line of a killed run counts as after every step)."""
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return float("inf")


def _on_main(info: DistInfo, write: Callable[[], None]) -> None:
    """Run ``write`` on rank 0 and share its :class:`WriteError` with every rank (it is also the barrier), so a
    full disk stops all ranks with the same one-line error instead of leaving them waiting."""
    failure = None
    if info.is_main:
        try:
            write()
        except WriteError as err:
            failure = (err.errno, str(err))
    failure = broadcast_from_main(failure, info)
    if failure is not None:
        raise WriteError(*failure)


def _all_finite(loss: torch.Tensor, info: DistInfo) -> bool:
    """Agree across ranks, so that every rank stops together instead of deadlocking."""
    ok = torch.isfinite(loss.detach()).to(torch.int32)
    if info.enabled:
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item())


def _module_generators(model: nn.Module) -> dict[str, torch.Generator]:
    """The random generators modules own (MGD's mask generator: ``LearnedFeatureKD.generator``), by module name."""
    return {
        name: m.generator
        for name, m in model.named_modules()
        if isinstance(getattr(m, "generator", None), torch.Generator)
    }


def _rng_state(model: nn.Module) -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    generators = {name: g.get_state() for name, g in _module_generators(model).items()}
    if generators:  # so that a resumed MGD run draws the masks the uninterrupted run would have drawn
        state["modules"] = generators
    return state


def _set_rng_state(state: dict, model: nn.Module) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, generator in _module_generators(model).items():
        if name in state.get("modules", {}):  # checkpoints written before generators were saved lack them
            generator.set_state(state["modules"][name])


class _Stepper:
    """One optimisation step as ``train`` and :func:`estimate_steps` both run it (precision, optimizer, LR
    scheduler and grad scaler set up once by :meth:`prepare`); the steps run inside
    ``stepper.precision.applied(model)``."""

    def __init__(
        self, cfg: Config, model: nn.Module, info: DistInfo, precision: Precision, optimizer, scaler, scheduler
    ):
        self.cfg, self.model, self.info, self.precision = cfg, model, info, precision
        self.optimizer, self.scaler, self.scheduler = optimizer, scaler, scheduler
        self.module: nn.Module = model

    @classmethod
    def prepare(cls, cfg: Config, model: nn.Module, info: DistInfo, verbose: bool = True) -> _Stepper:
        model.to(info.device)
        precision = resolve_precision(config_precision(cfg), info.device)
        if info.is_main and verbose:
            print(precision.notice)
        if info.device.type == "cpu" and cfg.cpu_allocator == "heap":
            tune_cpu_allocator()  # opt-in, process-wide; bit-identical results (see its docstring)
        if info.device.type == "cuda" and not cfg.deterministic:
            torch.backends.cudnn.benchmark = True  # fixed input sizes (min_size = max_size in the presets)
        optimizer = build_optimizer(cfg, model, precision)
        scaler = precision.grad_scaler()  # fp16 only
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg.schedule))
        return cls(cfg, model, info, precision, optimizer, scaler, scheduler)

    def wrap(self) -> nn.Module:
        """The module that trains: ``model``, in DDP under torchrun."""
        if self.info.enabled:
            device_ids = [self.info.device.index] if self.info.device.type == "cuda" else None
            self.module = DistributedDataParallel(self.model, device_ids=device_ids)
        return self.module

    def __call__(
        self, images, targets, step: int, before_step: Callable[[int], None] | None, last_path: Path | None
    ) -> tuple[dict, torch.Tensor]:
        info, cfg, optimizer, scaler = self.info, self.cfg, self.optimizer, self.scaler
        images = [im.to(info.device, non_blocking=True) for im in images]
        targets = [{k: v.to(info.device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]
        if before_step is not None:
            before_step(step)
        with self.precision.autocast():
            losses = self.module(images, targets)
        total = sum(losses.values())
        if not _all_finite(total, info):
            bad = {k: float(v.detach()) for k, v in losses.items()}
            good = last_path if last_path is not None and last_path.is_file() else "none written yet"
            raise NonFiniteLossError(
                f"non-finite loss at step {step} ({bad}); training stopped, last good checkpoint: {good}"
            )
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(total).backward()
            scaler.unscale_(optimizer)
            if cfg.optim.clip_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.clip_grad_norm)
            scaler.step(optimizer)
            scaler.update()
        else:  # clipping folded into the fused optimizer's step where there is one
            total.backward()
            clipped_step(optimizer, self.model.parameters(), cfg.optim.clip_grad_norm)
        self.scheduler.step()
        return losses, total


def train_sampler(cfg: Config, size: int, info: DistInfo, start_step: int = 0) -> TrainSampler:
    """This rank's batches of a run from ``start_step`` on: the one sampler the loop and its calibration share."""
    return TrainSampler(
        size,
        cfg.data.batch_size,
        world_size=info.world_size,
        rank=info.rank,
        seed=cfg.seed,
        hflip_prob=cfg.data.hflip_prob,
        start_step=start_step,
    )


def _loader(cfg: Config, train_set: CocoDetection, info: DistInfo, start_step: int) -> DataLoader:
    sampler = train_sampler(cfg, len(train_set), info, start_step)
    # A private generator keeps the loader from drawing on the global RNG that the model's samplers use.
    return DataLoader(
        train_set,
        batch_size=cfg.data.batch_size,
        sampler=sampler,
        num_workers=cfg.data.workers,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(cfg.seed),
        persistent_workers=cfg.data.workers > 0,
        pin_memory=info.device.type == "cuda",
    )


#: below this share of the CPU time its threads could use, an estimate says the cores were busy
BUSY_CPU_SHARE = 0.7
#: a KD term whose share of the first step's total loss exceeds this gets a note on what the measurements say
KD_DOMINANT_SHARE = 0.5


def loss_shares(losses: dict[str, float]) -> dict[str, float]:
    """Each loss term's share of the total, ``share_k = L_k / Σ_j L_j`` (all terms are >= 0)."""
    total = sum(losses.values())
    return {k: (v / total if total > 0 else 0.0) for k, v in losses.items()}


def _first_step_record(step: int, max_steps: int, seconds: float, losses: dict, total: torch.Tensor) -> dict:
    values = {k: float(v.detach()) for k, v in losses.items()}
    return {
        "step": step,
        "event": "first_step",
        "seconds": round(seconds, 3),
        "eta_s": round(seconds * (max_steps - step), 1),
        "total_loss": round(float(total.detach()), 5),
        "share": {k: round(v, 4) for k, v in loss_shares(values).items()},
    }


def format_first_step(record: dict) -> str:
    """The line printed after the first step: its time, the ETA at that pace, each term's share of the loss, and a
    note when a KD term dominates (> :data:`KD_DOMINANT_SHARE` of the total): with the authors' weights that is
    expected, and in this project's measurements scaling the weights down (``weights: auto``) did worse."""
    eta = record["eta_s"]
    shares = ", ".join(f"{k} {100 * v:.0f} %" for k, v in record["share"].items())
    line = (
        f"step {record['step']}: {record['seconds']:.2f} s (the first step is the slowest); ETA at this pace "
        f"{eta / 60:.1f} min | initial loss {record['total_loss']:.3g} = {shares}"
    )
    dominant = [k for k, v in record["share"].items() if is_kd_loss(k) and v > KD_DOMINANT_SHARE]
    if dominant:
        line += (
            f"\nnote: {', '.join(dominant)} is over {100 * KD_DOMINANT_SHARE:.0f} % of the loss at the start, as "
            "expected with the authors' weights; scaling them down (distill.weights: auto) did worse in this "
            "project's measurements (benchmarks/results/alpha_auto.json)"
        )
    return line


@dataclass
class StepTiming:
    """What :func:`estimate_steps` measured."""

    warmup_steps: int
    step_seconds: list[float]  # each timed step
    max_steps: int  # the schedule the projection is for
    peak_memory_gib: float
    memory_kind: str  # what the peak is: CUDA's max allocated, or the process's peak resident set (CPU)
    # CPU runs: this process's CPU seconds / (wall seconds x its torch threads) over the timed steps; low when other
    # jobs share the cores (the estimate is then pessimistic)
    cpu_share: float | None = None
    load_average: float | None = None  # the 1-minute load average when the measurement ended (CPU runs)
    cores: int | None = None

    @property
    def machine_was_busy(self) -> bool:
        """Whether this process got under :data:`BUSY_CPU_SHARE` of the CPU time its threads could use."""
        return self.cpu_share is not None and self.cpu_share < BUSY_CPU_SHARE

    @property
    def sec_per_step(self) -> float:
        """The median timed step."""
        ordered = sorted(self.step_seconds)
        mid = len(ordered) // 2
        return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2

    @property
    def projected_seconds(self) -> float:
        """sec_per_step × max_steps: the training steps alone (evaluations and checkpoints not included)."""
        return self.sec_per_step * self.max_steps

    def summary(self) -> str:
        low, high = min(self.step_seconds), max(self.step_seconds)
        total = self.projected_seconds
        span = f"{total / 3600:.1f} h" if total >= 3600 else f"{total / 60:.1f} min"
        line = (
            f"estimate: {self.sec_per_step:.3f} s/step (median of {len(self.step_seconds)} steps after "
            f"{self.warmup_steps} warm-up; {low:.3f}-{high:.3f}) -> {self.max_steps} steps ~ {span} of training "
            f"(evaluations and checkpoints not included); peak memory {self.peak_memory_gib:.2f} GiB "
            f"({self.memory_kind})"
        )
        if self.machine_was_busy:
            line += (
                f"\nnote: the cores were busy while measuring: this process got {100 * self.cpu_share:.0f} % of the "
                f"CPU time its threads could use (load average {self.load_average:.1f} on {self.cores} cores), so "
                "alone it runs faster than this; measure again on a quiet machine for the real figure"
            )
        return line

    def as_dict(self) -> dict:
        return {
            "warmup_steps": self.warmup_steps,
            "step_seconds": [round(s, 4) for s in self.step_seconds],
            "sec_per_step": round(self.sec_per_step, 4),
            "max_steps": self.max_steps,
            "projected_seconds": round(self.projected_seconds, 1),
            "peak_memory_gib": round(self.peak_memory_gib, 3),
            "memory_kind": self.memory_kind,
            "cpu_share": None if self.cpu_share is None else round(self.cpu_share, 3),
            "load_average": self.load_average,
            "machine_was_busy": self.machine_was_busy,
        }


def _peak_memory(info: DistInfo) -> tuple[float, str]:
    if info.device.type == "cuda":
        return torch.cuda.max_memory_allocated(info.device) / 2**30, "CUDA max allocated"
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "peak resident memory of the process"


def estimate_steps(
    cfg: Config,
    model: nn.Module,
    train_set: CocoDetection,
    info: DistInfo,
    *,
    warmup: int = 2,
    steps: int = 5,
    before_step: Callable[[int], None] | None = None,
) -> StepTiming:
    """Run ``warmup`` + ``steps`` real training steps of ``cfg`` (same precision, optimizer, data loading and
    order) and time the last ``steps``, each from loading its batch to the end of its update; writes nothing (no
    output folder, log or checkpoint). The model's weights change."""
    if warmup < 0 or steps < 1:
        raise ValueError(f"estimate: need warmup >= 0 and steps >= 1, got {warmup} and {steps}")
    torch.manual_seed(cfg.seed * 1000 + info.rank)
    if info.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(info.device)
    step_fn = _Stepper.prepare(cfg, model, info)
    with step_fn.precision.applied(model):
        step_fn.wrap().train()
        batches = iter(_loader(cfg, train_set, info, 0))
        seconds, cpu_start = [], 0.0
        for step in range(warmup + steps):  # timed from the batch's loading to the end of its update
            if step == warmup:
                cpu_start = time.process_time()
            if info.device.type == "cuda":
                torch.cuda.synchronize(info.device)
            start = time.perf_counter()
            images, targets = next(batches)
            step_fn(images, targets, step, before_step, None)
            if info.device.type == "cuda":
                torch.cuda.synchronize(info.device)
            if step >= warmup:
                seconds.append(time.perf_counter() - start)
    peak, kind = _peak_memory(info)
    timing = StepTiming(warmup, seconds, cfg.schedule.max_steps, peak, kind)
    if info.device.type == "cpu":
        timing.cpu_share = (time.process_time() - cpu_start) / (sum(seconds) * torch.get_num_threads())
        timing.load_average, timing.cores = round(os.getloadavg()[0], 2), os.cpu_count()
    return timing


def train(
    cfg: Config,
    model: nn.Module,
    detector: nn.Module,
    train_set: CocoDetection,
    val_set: CocoDetection | None,
    info: DistInfo,
    *,
    kind: str = "detector",
    resume: bool = False,
    before_step: Callable[[int], None] | None = None,
    reference_metrics: dict | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``model`` for ``cfg.schedule.max_steps`` steps; see the module docstring.

    ``before_step(step)`` runs before every step (e.g. a KD-weight schedule); ``reference_metrics``
    (e.g. the teacher's AP) is logged beside every evaluation. ``cfg.precision`` picks the fast path
    (:mod:`defeat.engine.precision`); its float32 islands are in ``model`` only while it trains.
    """
    step_fn = _Stepper.prepare(cfg, model, info)
    with step_fn.precision.applied(model):
        return _train(
            cfg,
            model,
            detector,
            train_set,
            val_set,
            info,
            step_fn,
            kind=kind,
            resume=resume,
            before_step=before_step,
            reference_metrics=reference_metrics,
            progress=progress,
        )


def _train(
    cfg: Config,
    model: nn.Module,
    detector: nn.Module,
    train_set: CocoDetection,
    val_set: CocoDetection | None,
    info: DistInfo,
    step_fn: _Stepper,
    *,
    kind: str,
    resume: bool,
    before_step: Callable[[int], None] | None,
    reference_metrics: dict | None,
    progress: bool,
) -> TrainResult:
    out_dir = Path(cfg.output.dir)
    last_path = out_dir / LAST_CHECKPOINT
    state = load_checkpoint(last_path, kind=kind) if resume and last_path.is_file() else None
    if state is not None and state.get("config"):  # before anything is written or loaded
        changed = changed_settings(state["config"], config_to_dict(cfg))
        if changed:
            raise ValueError(
                f"{last_path}: --resume with settings that differ from the run's ({'; '.join(changed[:4])}"
                f"{'; ...' if len(changed) > 4 else ''}); resume with its own config ({out_dir / 'config.yaml'}) "
                "or start a new run (--force, or another output.dir)"
            )
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "config.yaml")
    precision, optimizer, scaler, scheduler = step_fn.precision, step_fn.optimizer, step_fn.scaler, step_fn.scheduler
    categories = train_set.categories
    log = MetricsLog(out_dir, info.is_main, cfg.output.tensorboard)

    start_step = 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_step = int(state["step"])
        rngs = state["rng"]
        if len(rngs) == info.world_size:  # exact continuation needs each rank's own generator state
            _set_rng_state(rngs[info.rank], model)
        else:
            torch.manual_seed(cfg.seed * 1000 + 7919 * start_step + info.rank)
        if info.is_main:
            print(f"resumed from {last_path} at step {start_step}")
    else:
        if resume and info.is_main:
            print(f"no checkpoint at {last_path}; starting from scratch")
        torch.manual_seed(cfg.seed * 1000 + info.rank)
    log.restart(start_step)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)

    train_module = step_fn.wrap()
    loader = _loader(cfg, train_set, info, start_step)

    def checkpoint(step: int, path: Path, metrics: dict | None = None) -> None:
        rngs = gather_to_main(_rng_state(model), info)

        def write() -> None:
            state = {
                "kind": kind,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "step": step,
                "rng": rngs,
                "scaler": scaler.state_dict() if scaler is not None else None,
                "categories": categories,
                "config": config_to_dict(cfg),
                "metrics": metrics or {},
            }
            save_checkpoint(state, path)

        _on_main(info, write)

    def run_eval(step: int) -> dict:
        if val_set is None:
            return {}
        stats = evaluate(
            detector,
            val_set,
            info,
            batch_size=cfg.eval.batch_size,
            max_images=cfg.data.val_max_images,
            score_thresh=cfg.eval.score_thresh,
            progress=progress,
            precision=precision,
        )
        if info.is_main:
            extra = " | " + " ".join(f"{k} {100 * v:.1f}" for k, v in (reference_metrics or {}).items())
            tqdm.write(f"[step {step}] {format_stats(stats)}{extra if reference_metrics else ''}")
            log.write(
                {
                    "step": step,
                    "event": "eval",
                    **{k: v for k, v in stats.items() if k != "per_class_AP"},
                    "per_class_AP": stats["per_class_AP"],
                    **(reference_metrics or {}),
                }
            )
        return stats or {}

    max_steps = cfg.schedule.max_steps
    bar = tqdm(
        total=max_steps, initial=start_step, desc="train", disable=not (progress and info.is_main), dynamic_ncols=True
    )
    running: dict[str, torch.Tensor] = {}  # detached sums; converted to floats only when logged
    window_start, window_steps = time.perf_counter(), 0
    metrics: dict = {}
    train_module.train()
    with StopSignals() as signals:  # before the loader's workers start: they inherit the handlers
        batches = iter(loader)
        for step in range(start_step, max_steps):
            images, targets = next(batches)
            losses, total = step_fn(images, targets, step, before_step, last_path)

            for k, v in [*losses.items(), ("loss", total)]:
                running[k] = running.get(k, 0.0) + v.detach()
            window_steps += 1
            done = step + 1
            bar.update(1)
            if step == start_step and info.is_main:  # the first step: its cost, the ETA and each loss term's share
                first = _first_step_record(done, max_steps, time.perf_counter() - window_start, losses, total)
                log.write(first)
                tqdm.write(format_first_step(first))
            if done % cfg.output.log_every == 0 or done == max_steps:
                seconds = (time.perf_counter() - window_start) / window_steps
                record = {
                    "step": done,
                    "lr": optimizer.param_groups[0]["lr"],
                    "sec_per_step": round(seconds, 4),
                    "eta_s": round(seconds * (max_steps - done), 1),
                    **{k: round(float(v) / window_steps, 5) for k, v in running.items()},
                }
                if info.device.type == "cuda":
                    record["max_mem_gib"] = round(torch.cuda.max_memory_allocated(info.device) / 2**30, 3)
                log.write(record)
                bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2g}")
                running, window_start, window_steps = {}, time.perf_counter(), 0
            if cfg.eval.every_steps and done % cfg.eval.every_steps == 0 and done < max_steps:
                metrics = run_eval(done)
                train_module.train()
            saved = cfg.output.checkpoint_every and done % cfg.output.checkpoint_every == 0 and done < max_steps
            if saved:
                checkpoint(done, last_path)
            signum = signals.agreed(info)
            if signum:  # the step (with its evaluation) is complete: a resume continues exactly from here
                if not saved:
                    checkpoint(done, last_path)
                bar.close()
                raise TrainingStopped(signum, done, last_path)
        bar.close()

        # a signal from here on is deferred: the run finishes (the final evaluation and checkpoints) and returns
        metrics = run_eval(max_steps) if val_set is not None else metrics
        checkpoint(max_steps, last_path, metrics)
        final_path = out_dir / FINAL_CHECKPOINT

        def write_final() -> None:
            state = {
                "kind": kind,
                "model": model.state_dict(),
                "step": max_steps,
                "categories": categories,
                "config": config_to_dict(cfg),
                "metrics": metrics,
            }
            save_checkpoint(state, final_path)
            if metrics:
                atomic_write_json(out_dir / "metrics_final.json", metrics)

        _on_main(info, write_final)
    return TrainResult(max_steps, final_path, metrics)
