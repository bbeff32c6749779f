"""Running a ``defeat reproduce`` study: each stage calls the API (:mod:`defeat.api`) with its config, in order.

Caching: a stage that finished has ``done.json`` (written atomically, last) holding a key -- a hash of its
config/parameters and of its inputs' keys. A rerun skips a stage whose key matches, refuses one whose key differs
(the preset changed: use a new ``--out`` or delete that stage's folder) and resumes an interrupted training
stage from its ``checkpoint_last.pt``; other interrupted stages rerun from the start. A stage that fails is
reported and skips the stages that depend on it; the others still run, and the report is written with what
exists (missing numbers are shown as n/a).
"""

from __future__ import annotations

import platform
import subprocess
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import yaml

from defeat.config import save_config
from defeat.study.coco import write_coco_configs
from defeat.study.estimate import Estimator, FirstStepsWatcher, minutes, step_seconds
from defeat.study.plan import Stage, build_plan, describe_plan
from defeat.study.report import power_plan_text, say, write_report
from defeat.utils import atomic_write_json, atomic_write_text, read_json


class StageError(RuntimeError):
    """A stage's command failed; the message names the stage and the command."""


class StaleStageError(ValueError):
    """The run folder holds a stage made with other settings than the preset asks for (stops the whole run)."""


def run_stage(stage: Stage) -> None:
    """Call the API function of ``stage`` with its config / parameters.

    Every stage starts from the same process state whatever ran before it in this process (or whether earlier
    stages were cached): the global torch seed is set to ``stage.seed`` and deterministic algorithms to the
    stage config's ``deterministic`` (off for the analyses).
    """
    import torch

    from defeat import api

    torch.manual_seed(stage.seed)
    torch.use_deterministic_algorithms(bool(stage.config and stage.config.deterministic), warn_only=True)
    p = stage.params
    if stage.kind == "data":
        api.synth(**p)
    elif stage.kind == "train":
        api.train(stage.config, resume=p["resume"])
    elif stage.kind == "distill":
        api.distill(stage.config, resume=p["resume"])
    elif stage.kind == "eval":
        api.evaluate(stage.config, p["checkpoint"], p["out"])
    elif stage.kind == "channel_distance":
        api.channel_distance(**p)
    elif stage.kind == "grad_norm":
        api.grad_norm(**p)
    elif stage.kind == "errors":
        api.analyze_errors(**p)
    else:
        raise ValueError(f"stage {stage.name}: unknown kind {stage.kind!r}")


def execute_stage(
    stage: Stage,
    run_dir: Path,
    estimator: Estimator | None = None,
    on_measure: Callable[[], None] | None = None,
    keep_checkpoints: bool = False,
    run: Callable[[Stage], None] | None = None,
) -> dict:
    """Run one stage unless it is done; returns its ``done.json`` record (``status``: cached, ran or resumed).

    ``run`` calls the stage (default :func:`run_stage`; ``defeat compare`` passes its own for its extra kinds).

    Once a training stage is done its ``checkpoint_last.pt`` (weights + optimizer state, only needed to resume) is
    deleted unless ``keep_checkpoints``; ``model_final.pt`` stays. The same goes for the short distillation run of
    the grad-norm analysis."""
    done_path, started_path = stage.folder / "done.json", stage.folder / "started.json"
    if done_path.is_file():
        record = read_json(done_path)
        if record.get("key") != stage.key:
            raise StaleStageError(
                f"{stage.folder}: stage {stage.name} finished with other settings than this preset "
                f"asks for (key {record.get('key')} != {stage.key}); use a new --out, or delete "
                "that folder to rerun the stage"
            )
        return dict(record, status="cached")
    resumed = False
    if started_path.is_file():
        previous = read_json(started_path)
        if previous.get("key") != stage.key:
            raise StaleStageError(
                f"{stage.folder}: an interrupted stage {stage.name} was started with other "
                "settings than this preset asks for; use a new --out, or delete that folder"
            )
        resumed = True
    stage.folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(started_path, {"stage": stage.name, "key": stage.key, "started": time.strftime("%FT%T")})

    watcher = None
    if stage.kind in ("train", "distill"):
        last = stage.folder / "checkpoint_last.pt"
        metrics = stage.folder / "metrics.jsonl"
        if not last.is_file() and metrics.is_file():
            metrics.unlink()  # an attempt that wrote no checkpoint restarts from step 0: drop its log lines
        resumed = resumed and last.is_file()
        save_config(stage.config, stage.folder / "config.yaml")
        kind = next(iter(stage.estimate))
        if estimator is not None and kind not in estimator.measured and not resumed:

            def measured(sec: float, kind=kind) -> None:
                estimator.measured.setdefault(kind, sec)
                if on_measure is not None:
                    on_measure()

            watcher = FirstStepsWatcher(metrics, 0, measured)
            watcher.start()
    t0 = time.perf_counter()
    try:
        (run or run_stage)(stage)
    finally:
        if watcher is not None:
            watcher.stop.set()
    seconds = time.perf_counter() - t0
    missing = [f for f in stage.outputs if not (stage.folder / f).is_file()]
    if missing:
        raise StageError(f"stage {stage.name}: `{stage.command}` wrote no {stage.folder / missing[0]}")
    record = {
        "stage": stage.name,
        "key": stage.key,
        "status": "resumed" if resumed else "ran",
        "seconds": round(seconds, 2),
        "finished": time.strftime("%FT%T"),
        "command": stage.command,
        "steps": stage.steps,
    }
    if stage.kind in ("train", "distill"):
        windows = step_seconds(stage.folder / "metrics.jsonl")
        steady = windows[1:] or windows
        if steady:
            record["sec_per_step"] = round(sum(steady) / len(steady), 4)
            if estimator is not None and not resumed:
                estimator.measured[next(iter(stage.estimate))] = record["sec_per_step"]
    atomic_write_json(done_path, record)
    if not keep_checkpoints:
        for path in (stage.folder / "checkpoint_last.pt", stage.folder / "pretrain" / "checkpoint_last.pt"):
            if path.is_file():
                path.unlink()
    return dict(record)


def _versions() -> dict:
    import numpy
    import torch
    import torchvision

    import defeat

    commit = None
    try:
        repo = Path(defeat.__file__).resolve().parents[2]
        if (repo / ".git").exists():
            commit = (
                subprocess.run(
                    ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
                ).stdout.strip()
                or None
            )
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "defeat": getattr(defeat, "__version__", "unknown"),
        "git_commit": commit,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }


def run_reproduce(preset: dict, out: str | Path, *, dry_run: bool = False) -> dict:
    """Run (or continue) the study of ``preset`` in ``out``; returns the summary written to ``out/run.json``."""
    run_dir = Path(out).resolve()
    if preset.get("configs_only"):
        return write_coco_configs(preset, run_dir)
    stages = build_plan(preset, run_dir)
    estimator = Estimator(preset.get("estimate", {}))
    done = {s.name for s in stages if (s.folder / "done.json").is_file()}
    say(f"preset {preset['preset']} -> {run_dir}")
    say(
        "plan (a-priori estimate; refined from the measured s/step of the first steps):\n"
        + describe_plan(stages, estimator, preset, done)
    )
    say("claims: seeds, effect / margin and power at the pre-registered seed sd\n" + power_plan_text(preset))
    if dry_run:
        return {"stages": [s.name for s in stages], "estimate_seconds": sum(estimator.seconds(s) for s in stages)}
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        run_dir / "preset.yaml", yaml.safe_dump({k: v for k, v in preset.items() if k != "source"}, sort_keys=False)
    )
    t_start = time.perf_counter()
    records: dict[str, dict] = {}
    failed: dict[str, str] = {}
    current = {"index": 0}

    def remaining() -> float:
        return sum(
            estimator.seconds(s) for s in stages[current["index"] :] if s.name not in records and s.name not in done
        )

    def on_measure() -> None:
        rates = ", ".join(f"{k} {v:.2f} s" for k, v in estimator.measured.items())
        say(
            f"measured s/step: {rates} -> estimated remaining {minutes(remaining())}, "
            f"total {minutes(time.perf_counter() - t_start + remaining())}"
            + (f" (budget {preset['budget_minutes']} min)" if preset.get("budget_minutes") else "")
        )

    for index, stage in enumerate(stages):
        current["index"] = index
        blocked = [d for d in stage.deps if d in failed]
        if blocked:
            failed[stage.name] = f"skipped: depends on failed stage {blocked[0]}"
            say(f"{stage.name}: {failed[stage.name]}")
            continue
        if stage.name not in done:
            say(
                f"stage {index + 1}/{len(stages)} {stage.name}: {' '.join(stage.command.split()[:3])} ... "
                f"(estimated {minutes(estimator.seconds(stage))})"
            )
        try:
            record = execute_stage(stage, run_dir, estimator, on_measure, bool(preset.get("keep_checkpoints")))
        except StaleStageError:
            raise
        except Exception as err:  # report, skip the stages that depend on it, go on with the others
            failed[stage.name] = f"{type(err).__name__}: {err}"
            say(f"stage {stage.name} FAILED: {failed[stage.name]}")
            if not isinstance(err, (StageError, ValueError)):
                traceback.print_exc()
            continue
        records[stage.name] = record
        if record["status"] != "cached":
            extra = f", {record['sec_per_step']:.2f} s/step" if "sec_per_step" in record else ""
            say(
                f"{stage.name} {record['status']} in {minutes(record['seconds'])}{extra}; "
                f"estimated remaining {minutes(remaining())}"
            )
    summary = write_report(
        preset, run_dir, stages, records, failed, _versions(), wall_seconds=time.perf_counter() - t_start
    )
    atomic_write_json(
        run_dir / "run.json",
        {
            "preset": preset["preset"],
            "stages": {
                s.name: {
                    "status": records[s.name]["status"] if s.name in records else "failed",
                    "seconds": records.get(s.name, {}).get("seconds"),
                    "note": failed.get(s.name),
                }
                for s in stages
            },
            "failed": failed,
            "wall_seconds": round(time.perf_counter() - t_start, 2),
        },
    )
    say(
        f"report: {run_dir / 'report.md'}  results: {run_dir / 'results.json'}"
        + (f"  ({len(failed)} stage(s) failed: {', '.join(failed)})" if failed else "")
    )
    return dict(summary, failed=failed, statuses={n: r["status"] for n, r in records.items()})
