"""``--jobs N`` (:func:`defeat.study.runner.run_parallel`) on fake stages: the dependency order, stages side by side
with their share of the threads, failures that skip only their dependants, a stop on SIGTERM that a rerun resumes.

The fake stage (:func:`fake_train`) behaves like a training for the runner: steps with a checkpoint, the trainer's
stop on SIGTERM / SIGINT after a step, ``metrics.jsonl`` with ``sec_per_step``, ``model_final.pt`` at the end."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from defeat.config import Config
from defeat.engine.stop import RunsStopped
from defeat.study.plan import Stage, wall_seconds
from defeat.study.runner import LOG_NAME, StaleStageError, check_jobs, run_parallel, threads_per_stage

#: how long a fake stage waits for the stage it must overlap with before it fails
MEET_SECONDS = 90


def _event(stage: Stage, event: str, **extra) -> None:
    """One line in the run's events.jsonl (O_APPEND: the processes' lines do not mix)."""
    line = json.dumps({"stage": stage.name, "event": event, "t": time.time(), **extra}) + "\n"
    fd = os.open(stage.folder.parent / "events.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def fake_train(stage: Stage) -> None:
    """A training-like stage (params: ``steps``, ``step_seconds``, ``meet``: a stage that must be running at the
    same time, ``fail``: raise, ``crash``: end the process without a word)."""
    import torch

    from defeat.engine.stop import StopSignals, TrainingStopped

    p, folder = stage.params, stage.folder
    deps_done = all((folder.parent / d / "done.json").is_file() for d in stage.deps)
    threads, omp = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    _event(stage, "start", deps_done=deps_done, threads=threads, omp=omp, pid=os.getpid())
    print(f"fake stage {stage.name} says hello")
    if p.get("fail"):
        raise FloatingPointError("loss is nan at step 1\nsecond line")
    if p.get("crash"):
        os._exit(3)
    if p.get("meet"):  # only passes when the other stage runs at the same time
        deadline = time.time() + MEET_SECONDS
        while not (folder.parent / p["meet"] / "started.json").is_file():
            if time.time() > deadline:
                raise TimeoutError(f"{p['meet']} did not start while {stage.name} ran")
            time.sleep(0.05)
    last = folder / "checkpoint_last.pt"
    step = int(last.read_text()) if last.is_file() else 0
    with StopSignals() as signals:
        while step < p.get("steps", 1):
            time.sleep(p.get("step_seconds", 0.01))
            step += 1
            _event(stage, "step", step=step)
            with open(folder / "metrics.jsonl", "a") as log:
                log.write(json.dumps({"step": step, "sec_per_step": p.get("step_seconds", 0.01)}) + "\n")
            if signals.signum:
                last.write_text(str(step))
                raise TrainingStopped(signals.signum, step, last)
    (folder / "model_final.pt").write_text("weights")
    _event(stage, "end")


def fake_stage(run_dir: Path, name: str, deps: list[str] | None = None, **params) -> Stage:
    return Stage(
        name,
        run_dir / name,
        "train",
        params,
        f"fake train {name}",
        deps or [],
        Config(),
        params.get("steps", 1),
        {"student_step": params.get("steps", 1)},
        ["model_final.pt"],
        key=f"key-{name}",
    )


def events(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]


def first(evts: list[dict], stage: str, event: str) -> dict:
    return next(e for e in evts if e["stage"] == stage and e["event"] == event)


def test_dependants_wait_for_their_deps_and_independent_stages_overlap(tmp_path, capsys):
    stages = [
        fake_stage(tmp_path, "a", meet="b", steps=3),
        fake_stage(tmp_path, "b", meet="a", steps=3),
        fake_stage(tmp_path, "c", ["a"], steps=2),
        fake_stage(tmp_path, "d", ["b", "c"]),
    ]
    records, failed = {}, {}
    omp = os.environ.get("OMP_NUM_THREADS")
    run_parallel(stages, tmp_path, 2, records, failed, say=print, run=fake_train, threads=4)
    assert failed == {} and {n: r["status"] for n, r in records.items()} == dict.fromkeys("abcd", "ran")
    evts = events(tmp_path)
    # a and b ran side by side: each started before the other ended
    assert first(evts, "a", "start")["t"] < first(evts, "b", "end")["t"]
    assert first(evts, "b", "start")["t"] < first(evts, "a", "end")["t"]
    # a dependant starts only once every stage it depends on is done (done.json written)
    assert all(first(evts, s, "start")["deps_done"] for s in "abcd")
    assert first(evts, "c", "start")["t"] > first(evts, "a", "end")["t"]
    assert first(evts, "d", "start")["t"] > max(first(evts, s, "end")["t"] for s in "bc")
    # each stage process had its share of the threads: 4 // 2
    assert {(first(evts, s, "start")["threads"], first(evts, s, "start")["omp"]) for s in "abcd"} == {(2, "2")}
    # two stage processes did the four stages (the imports are paid once per process), none of them this one
    pids = {first(evts, s, "start")["pid"] for s in "abcd"}
    assert len(pids) == 2 and os.getpid() not in pids
    assert os.environ.get("OMP_NUM_THREADS") == omp  # this process's own setting is unchanged
    # the child's output is in its stage's log; the parent prints a start and an end line per stage
    log = (tmp_path / "a" / LOG_NAME).read_text()
    assert "stage a, 2 torch thread(s): fake train a" in log and "fake stage a says hello" in log
    printed = capsys.readouterr().out
    assert "fake stage a says hello" not in printed
    for name in "abcd":
        assert f"start {name} (" in printed and f"{name} ran in " in printed
    assert json.loads((tmp_path / "a" / "done.json").read_text())["key"] == "key-a"

    # a rerun runs nothing: every stage is cached (checked in this process, no stage process started)
    records = {}
    run_parallel(stages, tmp_path, 2, records, {}, say=print, run=fake_train, threads=4)
    assert {r["status"] for r in records.values()} == {"cached"} and len(events(tmp_path)) == len(evts)
    # a finished stage with another key stops the run, as in a serial run
    (tmp_path / "c" / "done.json").write_text(json.dumps({"key": "other"}))
    with pytest.raises(StaleStageError, match="finished with other settings") as err:
        run_parallel(stages, tmp_path, 2, {}, {}, say=print, run=fake_train, threads=4)
    assert err.value.stage.name == "c"


def test_a_failed_stage_skips_its_dependants_and_the_others_finish(tmp_path, capsys):
    stages = [
        fake_stage(tmp_path, "bad", fail=True),
        fake_stage(tmp_path, "after_bad", ["bad"]),
        fake_stage(tmp_path, "crashed", crash=True),
        fake_stage(tmp_path, "good", steps=2),
        fake_stage(tmp_path, "after_good", ["good"]),
        fake_stage(tmp_path, "after_both", ["good", "after_bad"]),
    ]
    records, failed = {}, {}
    run_parallel(stages, tmp_path, 2, records, failed, say=print, run=fake_train, threads=2)
    assert set(records) == {"good", "after_good"} and all(r["status"] == "ran" for r in records.values())
    assert failed == {
        "bad": "FloatingPointError: loss is nan at step 1\nsecond line",
        "after_bad": "skipped: depends on failed stage bad",
        "crashed": "its process ended with exit code 3",
        "after_both": "skipped: depends on failed stage after_bad",
    }
    assert not (tmp_path / "after_bad").exists()  # never started
    assert "Traceback" in (tmp_path / "bad" / LOG_NAME).read_text()  # the whole error is in the stage's log
    printed = capsys.readouterr().out
    assert "stage bad FAILED: FloatingPointError: loss is nan" in printed and f"bad/{LOG_NAME}" in printed


@pytest.mark.slow  # 7 s of real stage processes
def test_sigterm_stops_the_running_stages_at_a_step_and_a_rerun_resumes(tmp_path, capsys):
    stages = [
        fake_stage(tmp_path, "a", steps=400, step_seconds=0.05),
        fake_stage(tmp_path, "b", steps=400, step_seconds=0.05),
        fake_stage(tmp_path, "c", ["a"], steps=2),
    ]

    def stop_once_both_step() -> None:
        deadline = time.time() + MEET_SECONDS
        while time.time() < deadline:
            path = tmp_path / "events.jsonl"
            stepping = {e["stage"] for e in events(tmp_path) if e["event"] == "step"} if path.is_file() else set()
            if stepping >= {"a", "b"}:
                os.kill(os.getpid(), signal.SIGTERM)  # as `kill -TERM <parent>`: the scheduler forwards it
                return
            time.sleep(0.05)

    handler = signal.getsignal(signal.SIGTERM)
    killer = threading.Thread(target=stop_once_both_step, daemon=True)
    killer.start()
    with pytest.raises(RunsStopped) as stop:
        run_parallel(stages, tmp_path, 2, {}, {}, say=print, run=fake_train, threads=2)
    killer.join()
    assert stop.value.code == 128 + signal.SIGTERM and sorted(stop.value.stages) == ["a", "b"]
    assert "stopped by SIGTERM" in str(stop.value)
    for name in "ab":  # stopped after a step, with its checkpoint, not done
        assert (tmp_path / name / "checkpoint_last.pt").is_file() and not (tmp_path / name / "done.json").exists()
    assert not (tmp_path / "c").exists()  # nothing new started
    assert signal.getsignal(signal.SIGTERM) == handler and "stopping on SIGTERM" in capsys.readouterr().out
    stopped_at = {n: int((tmp_path / n / "checkpoint_last.pt").read_text()) for n in "ab"}
    assert all(0 < s < 400 for s in stopped_at.values())

    records, failed = {}, {}
    for stage in stages[:2]:
        stage.params["steps"] = stopped_at[stage.name] + 3  # the rest of the run, short
    run_parallel(stages, tmp_path, 2, records, failed, say=print, run=fake_train, threads=2)
    assert failed == {} and {n: r["status"] for n, r in records.items()} == {"a": "resumed", "b": "resumed", "c": "ran"}
    for name in "ab":  # every step ran once: the rerun continued from the checkpoint
        steps = [e["step"] for e in events(tmp_path) if e["stage"] == name and e["event"] == "step"]
        assert steps == list(range(1, stopped_at[name] + 4))
        assert not (tmp_path / name / "checkpoint_last.pt").exists()  # deleted once done, as in a serial run


def test_jobs_must_be_a_positive_integer():
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match=r"--jobs: must be an integer >= 1"):
            check_jobs(bad)
    assert check_jobs(3) == 3
    assert (threads_per_stage(2, 2), threads_per_stage(3, 2), threads_per_stage(2, 16)) == (1, 1, 8)


def test_wall_seconds_schedules_like_the_runner():
    """Plan order, first free slot, a stage waits for its dependencies: the estimate of a ``--jobs N`` run."""

    def stage(name, *deps):
        return Stage(name, Path(name), "train", {}, "defeat train", deps=list(deps))

    plan = [stage("teacher"), stage("base0"), stage("base1"), stage("kd0", "teacher"), stage("kd1", "teacher")]
    seconds = {"teacher": 10.0, "base0": 3.0, "base1": 3.0, "kd0": 5.0, "kd1": 5.0}
    assert wall_seconds(plan, seconds, 1) == 26.0  # one after another: the sum
    # 2 at once: the baselines beside the teacher (0-3, 3-6); kd0 waits for the teacher (10-15), kd1 beside it
    assert wall_seconds(plan, seconds, 2) == 15.0
    assert wall_seconds(plan, seconds, 8) == 15.0  # the critical path: teacher then one distillation
    assert wall_seconds([], {}, 2) == 0.0
