"""Running a study's stages: each stage calls the API (:mod:`defeat.api`) with its config; one after another in
plan order, or up to N at once (``--jobs N``, :func:`run_parallel`).

Caching: a stage that finished has ``done.json`` (written atomically, last) holding a key -- a hash of its
config/parameters and of its inputs' keys. A rerun skips a stage whose key matches, refuses one whose key differs
(the preset changed: use a new ``--out`` or delete that stage's folder) and resumes an interrupted training
stage from its ``checkpoint_last.pt``; other interrupted stages rerun from the start. A stage that fails is
reported and skips the stages that depend on it; the others still run, and the report is written with what
exists (missing numbers are shown as n/a).

``--jobs N`` (:func:`run_parallel`) runs independent stages side by side, each in its own process. Why: a small
detector uses several CPU cores poorly; two 1-thread trainings side by side get 2.0x (tiny detector) or 1.2x
(R18-FPN) the work of one 2-thread training done (``benchmarks/results/contention.json``, variant ``one_thread``).

- Up to N stages run at once, each in a spawned process with ``max(1, threads // N)`` torch threads (``threads``:
  this process's ``torch.get_num_threads()``, so ``OMP_NUM_THREADS`` still caps the whole study).
- A stage starts once every stage of its ``deps`` is done; among the ready stages the plan order decides.
- Each process calls :func:`execute_stage`, so caching, resume and ``done.json`` are those of a serial run; a
  finished stage (``done.json``) is checked in the parent, without a process. The process's stdout and stderr go to
  ``<stage folder>/stage.log`` (appended: a resumed stage adds to it); the parent prints one line when a stage
  starts and one when it ends.
- A failed stage skips the stages that depend on it; the others still run. A stale stage (other settings than the
  plan's) stops the whole run, as in a serial run.
- ``alone`` stages (``defeat compare``'s latency measurement) run in the parent while no other stage runs, with all
  its threads: a timing taken beside a training would measure the sharing.
- SIGTERM / SIGINT: no new stage starts, the signal is forwarded to the running stages (a training stops after its
  current step and writes ``checkpoint_last.pt``, as a single run does: engine/stop.py), and once they have ended
  :class:`~defeat.engine.stop.RunsStopped` is raised (exit code 128 + the signal in the CLI). The same command
  resumes. A stage stopped by a signal sent to it alone stops the study the same way.
- The live estimate: the estimated seconds of the stages not finished (a-priori rates, replaced by the s/step of
  finished training stages as they come) divided by N.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Collection
from dataclasses import dataclass
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


# ------------------------------------------------------------------------------------------ --jobs N
#: the file in each stage folder that takes the output of the stage's process
LOG_NAME = "stage.log"
#: how often the scheduler looks at its signals while it waits for a stage to end
POLL_SECONDS = 0.25


def skip_if_blocked(stage: Stage, failed: dict[str, str], say) -> bool:
    """Record ``stage`` as skipped (and say so) when one of its deps failed; True when it was skipped."""
    blocked = [d for d in stage.deps if d in failed]
    if blocked:
        failed[stage.name] = f"skipped: depends on failed stage {blocked[0]}"
        say(f"{stage.name}: {failed[stage.name]}")
    return bool(blocked)


def check_jobs(jobs, where: str = "--jobs") -> int:
    """``jobs`` as an int >= 1; a one-line ValueError otherwise."""
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"{where}: must be an integer >= 1, got {jobs!r}")
    return jobs


def threads_per_stage(jobs: int, threads: int | None = None) -> int:
    """Torch threads of each stage process: ``max(1, threads // jobs)``, ``threads`` defaulting to this process's
    ``torch.get_num_threads()``."""
    if threads is None:
        import torch

        threads = torch.get_num_threads()
    return max(1, int(threads) // int(jobs))


def _log_to(path: Path) -> None:
    """This process's stdout and stderr (file descriptors 1 and 2: C libraries and child processes too) appended to
    ``path`` from now on."""
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    for target in (1, 2):
        os.dup2(fd, target)
    os.close(fd)
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(line_buffering=True)


def _stage_worker(conn, threads: int) -> None:
    """A stage process: takes ``(stage, run_dir, keep_checkpoints, run)`` from ``conn`` until None, runs each with
    :func:`execute_stage` and ``threads`` torch threads, its output in the stage's log, and answers each with one
    message: ``{"outcome": "done", "record"}``, ``{"outcome": "stopped", "text", "code"}`` (then it ends) or
    ``{"outcome": "failed", "type", "text", "stale", "ends"}``. Like the serial loop it reuses the process from stage
    to stage: every stage sets its own seed (:func:`run_stage`); the imports are paid once per worker."""
    import torch  # after OMP_NUM_THREADS was set (by the parent, in this process's environment)

    from defeat.engine.stop import TrainingStopped

    while (job := conn.recv()) is not None:
        stage, run_dir, keep_checkpoints, run = job
        _log_to(stage.folder / LOG_NAME)
        print(f"--- {time.strftime('%FT%T')} stage {stage.name}, {threads} torch thread(s): {stage.command}")
        torch.set_num_threads(threads)  # a stage that changed it does not change the next one's
        try:
            record = execute_stage(stage, run_dir, keep_checkpoints=keep_checkpoints, run=run)
        except TrainingStopped as stop:
            print(f"defeat: {stop}")
            conn.send({"outcome": "stopped", "text": str(stop), "code": int(stop.code)})
            return
        except BaseException as err:  # every failure goes back to the scheduler as one message
            traceback.print_exc()
            ends = not isinstance(err, Exception)  # KeyboardInterrupt, SystemExit: this process ends
            stale = isinstance(err, StaleStageError)
            conn.send({"outcome": "failed", "type": type(err).__name__, "text": str(err), "stale": stale, "ends": ends})
            if ends:
                return
            continue
        conn.send({"outcome": "done", "record": record})


@dataclass
class _Worker:
    process: multiprocessing.process.BaseProcess
    conn: multiprocessing.connection.Connection
    stage: Stage | None = None  # the stage it runs; None: idle


def _spawn_worker(context, threads: int) -> _Worker:
    mine, theirs = context.Pipe()
    process = context.Process(target=_stage_worker, args=(theirs, threads), name="defeat stage worker")
    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    os.environ.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))  # the child starts with them
    try:
        process.start()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    theirs.close()  # only the child holds its end: its death reads as EOF here
    return _Worker(process, mine)


def _answer(worker: _Worker):
    """The worker's message about its stage, or None where it ended without one (killed, crashed)."""
    try:
        return worker.conn.recv() if worker.conn.poll() else None
    except (EOFError, OSError):
        return None


def default_note(type_name: str, message: str) -> str:
    """The failure note of a stage (``run.json``, the report): ``Type: message``."""
    return f"{type_name}: {message}"


def run_parallel(
    stages: list[Stage],
    run_dir: Path,
    jobs: int,
    records: dict[str, dict],
    failed: dict[str, str],
    *,
    say: Callable[[str], None],
    run: Callable[[Stage], None] | None = None,
    keep_checkpoints: bool = False,
    alone: Collection[str] = (),
    on_done: Callable[[Stage, dict], None] | None = None,
    note: Callable[[str, str], str] = default_note,
    estimator: Estimator | None = None,
    threads: int | None = None,
) -> None:
    """Run ``stages`` (see the module docstring), filling ``records`` (name -> done.json record) and ``failed``
    (name -> note) as the serial loops do; stages named in ``records`` before the call count as done.

    ``run``: the stage function for the processes (a module-level function: it is pickled; default
    :func:`~defeat.study.runner.run_stage`). ``alone``: stage kinds run in this process with nothing beside them.
    ``on_done(stage, record)`` is called in this process after each finished stage (cached ones too); what it raises
    stops the run. Raises :class:`~defeat.engine.stop.RunsStopped` on SIGTERM / SIGINT and :class:`StaleStageError`
    for a stage made with other settings."""
    from defeat.engine.stop import RunsStopped, StopSignals

    check_jobs(jobs)
    context = multiprocessing.get_context("spawn")
    each = threads_per_stage(jobs, threads)
    waiting = list(stages)  # plan order
    workers: list[_Worker] = []  # at most `jobs`, started when a stage needs one
    total, t_start = len(stages), time.perf_counter()
    say(f"running up to {jobs} stages at once, {each} torch thread(s) each; a stage's output: <its folder>/{LOG_NAME}")

    def busy() -> list[_Worker]:
        return [w for w in workers if w.stage is not None]

    def remaining() -> float:
        left = [s for s in stages if s.name not in records and s.name not in failed]
        return sum(estimator.seconds(s) for s in left) / jobs if estimator is not None else 0.0

    def finished(stage: Stage, record: dict) -> None:
        records[stage.name] = record
        if record["status"] != "cached":
            if estimator is not None and "sec_per_step" in record and record["status"] == "ran":
                estimator.measured[next(iter(stage.estimate))] = record["sec_per_step"]
            extra = f", {record['sec_per_step']:.3f} s/step" if "sec_per_step" in record else ""
            left = f"; estimated remaining {minutes(remaining())}" if estimator is not None else ""
            done = sum(1 for s in stages if s.name in records or s.name in failed)
            say(f"{stage.name} {record['status']} in {minutes(record['seconds'])}{extra} ({done}/{total} done){left}")
        if on_done is not None:
            on_done(stage, record)

    def in_process(stage: Stage) -> None:
        try:
            record = execute_stage(stage, run_dir, keep_checkpoints=keep_checkpoints, run=run)
        except StaleStageError as err:
            err.stage = stage
            raise
        except Exception as err:  # as in the serial loops: noted, its dependants skipped, the others go on
            failed[stage.name] = note(type(err).__name__, str(err))
            say(f"stage {stage.name} FAILED: {failed[stage.name]}")
            return
        finished(stage, record)

    interrupted: list[str] = []  # stages that ended on a signal

    def collect(worker: _Worker, message: dict | None, stopping: bool = False) -> int | None:
        """Take the outcome of a worker's stage; returns the signal that stopped it, if one did."""
        stage, worker.stage = worker.stage, None
        outcome = (message or {}).get("outcome")
        if outcome not in ("done", "failed") or message.get("ends"):  # the worker ended (or ends now)
            worker.process.join()
            worker.conn.close()
            workers.remove(worker)
        if outcome == "done":
            finished(stage, message["record"])
        elif outcome == "stopped":
            interrupted.append(stage.name)
            say(f"{stage.name}: {message['text']}")
            return message["code"] - 128
        elif stopping:  # killed by the forwarded signal outside a training (an evaluation, an analysis): reruns
            interrupted.append(stage.name)
            say(f"{stage.name}: stopped; it reruns from its start (or its checkpoint) next time")
        elif outcome == "failed" and message["stale"]:  # the run's settings and the folder disagree: stop the run
            err = StaleStageError(message["text"])
            err.stage = stage
            raise err
        else:
            code = worker.process.exitcode
            why = (
                note(message["type"], message["text"])
                if outcome == "failed"
                else f"its process ended with exit code {code}"
                + (f" ({signal.Signals(-code).name})" if code is not None and code < 0 else "")
            )
            failed[stage.name] = why
            say(f"stage {stage.name} FAILED: {why} (see {stage.folder / LOG_NAME})")
        return None

    def wait_for_answers(stopping: bool = False) -> int | None:
        """Wait (at most POLL_SECONDS) for busy workers to answer or end; collect those that did."""
        stop = None
        handles = {h: w for w in busy() for h in (w.conn, w.process.sentinel)}
        ready = multiprocessing.connection.wait(list(handles), timeout=POLL_SECONDS)
        for worker in {id(handles[h]): handles[h] for h in ready}.values():
            if worker.conn.poll() or not worker.process.is_alive():
                stop = collect(worker, _answer(worker), stopping) or stop
        return stop

    stop: int | None = None
    with StopSignals() as signals:
        try:
            while waiting or busy():
                stop = stop or signals.signum
                if stop is not None:
                    break
                progressed = False
                for stage in list(waiting):
                    if skip_if_blocked(stage, failed, say):
                        waiting.remove(stage)
                        progressed = True
                        continue
                    if any(d not in records for d in stage.deps):
                        continue
                    if (stage.folder / "done.json").is_file():  # cached (or stale): no process needed
                        waiting.remove(stage)
                        in_process(stage)
                        progressed = True
                        break  # a finished stage may make earlier ones in plan order ready
                    if stage.kind in alone:
                        if busy():
                            continue  # waits for a moment when nothing runs
                        waiting.remove(stage)
                        say(f"start {stage.name} ({total - len(waiting)}/{total}, alone, in this process)")
                        in_process(stage)
                        progressed = True
                        break
                    if len(busy()) >= jobs:
                        continue
                    waiting.remove(stage)
                    est = f" (estimated {minutes(estimator.seconds(stage))})" if estimator is not None else ""
                    say(
                        f"start {stage.name} ({total - len(waiting)}/{total}, {len(busy()) + 1} running): "
                        f"{' '.join(stage.command.split()[:3])} ...{est}"
                    )
                    worker = next((w for w in workers if w.stage is None), None)
                    if worker is None:
                        worker = _spawn_worker(context, each)
                        workers.append(worker)
                    worker.stage = stage
                    worker.conn.send((stage, run_dir, keep_checkpoints, run))
                    progressed = True
                if progressed:
                    continue
                if not busy():  # nothing runs and nothing can start: only stages waiting on absent deps remain
                    for stage in waiting:
                        failed[stage.name] = "skipped: depends on a stage that did not run"
                        say(f"{stage.name}: {failed[stage.name]}")
                    waiting.clear()
                    break
                stop = wait_for_answers() or stop
            stop = stop or signals.signum
            if stop is not None:
                names = [w.stage.name for w in busy()]
                say(
                    f"stopping on {signal.Signals(stop).name}: no new stage starts; "
                    + (f"{', '.join(names)} stop (trainings after their current step)" if names else "none running")
                )
                for worker in busy():
                    with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                        os.kill(worker.process.pid, stop)
                while busy():
                    wait_for_answers(stopping=True)
                raise RunsStopped(stop, interrupted)
        finally:
            for worker in workers:  # idle ones end; busy ones (an error here) stop at a step boundary
                if worker.stage is None:
                    with contextlib.suppress(OSError):
                        worker.conn.send(None)
                elif worker.process.is_alive():
                    worker.process.terminate()
            for worker in workers:
                worker.process.join()
                worker.conn.close()
            workers.clear()
    say(f"all stages ended in {minutes(time.perf_counter() - t_start)} ({jobs} at once)")


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


def run_reproduce(preset: dict, out: str | Path, *, dry_run: bool = False, jobs: int | None = None) -> dict:
    """Run (or continue) the study of ``preset`` in ``out``; returns the summary written to ``out/run.json``.

    ``jobs``: stages at once (:func:`run_parallel`); None takes the preset's ``jobs`` (default 1: one after another,
    in this process)."""
    run_dir = Path(out).resolve()
    if preset.get("configs_only"):
        return write_coco_configs(preset, run_dir)
    jobs = check_jobs(preset.get("jobs", 1) if jobs is None else jobs, "--jobs" if jobs is not None else "jobs")
    stages = build_plan(preset, run_dir)
    estimator = Estimator(preset.get("estimate", {}))
    done = {s.name for s in stages if (s.folder / "done.json").is_file()}
    say(f"preset {preset['preset']} -> {run_dir}")
    say(
        "plan (a-priori estimate; refined from the measured s/step of the first steps):\n"
        + describe_plan(stages, estimator, preset, done, jobs)
    )
    say("claims: seeds, effect / margin and power at the pre-registered seed sd\n" + power_plan_text(preset))
    if jobs > 1:
        say(f"jobs {jobs}: up to {jobs} stages at once; the stage estimates above are each stage's own time")
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

    if jobs > 1:
        run_parallel(
            stages,
            run_dir,
            jobs,
            records,
            failed,
            say=say,
            keep_checkpoints=bool(preset.get("keep_checkpoints")),
            estimator=estimator,
        )
    else:
        for index, stage in enumerate(stages):
            current["index"] = index
            if skip_if_blocked(stage, failed, say):
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
            "jobs": jobs,
            "wall_seconds": round(time.perf_counter() - t_start, 2),
        },
    )
    say(
        f"report: {run_dir / 'report.md'}  results: {run_dir / 'results.json'}"
        + (f"  ({len(failed)} stage(s) failed: {', '.join(failed)})" if failed else "")
    )
    return dict(summary, failed=failed, statuses={n: r["status"] for n, r in records.items()})
