"""One run per output folder: a rerun without --resume is refused in one line; --force moves the old run aside;
the metrics never mix two runs."""

import json

import pytest

from defeat.cli.main import main
from tests.conftest import tiny_overrides
from tests.engine.test_train import _sets


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_rerun_into_a_used_folder_is_refused_and_force_moves_the_old_run_aside(tiny_coco, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", *_sets(tiny_overrides(tiny_coco, out, steps=2) + ["output.checkpoint_every=0"])]
    assert main(args) == 0
    first_log = (out / "metrics.jsonl").read_text()
    capsys.readouterr()

    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"defeat: error: {out}: holds a run already (config.yaml, metrics.jsonl") and "\n" not in err
    assert "--resume continues it" in err and "--force moves it to run.old-" in err
    assert (out / "metrics.jsonl").read_text() == first_log  # untouched

    assert main([*args, "--force"]) == 0
    (old,) = tmp_path.glob("run.old-*")
    assert (old / "metrics.jsonl").read_text() == first_log and (old / "model_final.pt").is_file()
    steps = [r["step"] for r in _records(out / "metrics.jsonl") if "lr" in r]
    assert steps == [1, 2]  # the new run's log alone
    assert "moved the previous run" in capsys.readouterr().out


def test_resume_continues_a_finished_or_empty_folder(tiny_coco, tmp_path):
    out = tmp_path / "run"
    args = ["train", *_sets(tiny_overrides(tiny_coco, out, steps=2)), "--resume"]
    assert main(args) == 0  # nothing to resume: starts from scratch
    assert main(args) == 0  # finished: resumes at the last step, evaluates and writes the final files again
    assert [r["step"] for r in _records(out / "metrics.jsonl") if "lr" in r] == [1, 2]


@pytest.mark.slow
def test_resume_with_other_learning_settings_is_refused_in_one_line(tiny_coco, tmp_path, capsys):
    out = tmp_path / "run"
    base = tiny_overrides(tiny_coco, out, steps=2)
    assert main(["train", *_sets(base)]) == 0
    config_before = (out / "config.yaml").read_text()
    capsys.readouterr()
    changed = base + ["optim.lr=0.5", "schedule.max_steps=4"]
    assert main(["train", *_sets(changed), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--resume with settings that differ from the run's" in err
    assert "optim.lr 0.01 -> 0.5; schedule.max_steps 2 -> 4)" in err
    assert "start a new run (--force, or another output.dir)" in err
    assert (out / "config.yaml").read_text() == config_before  # nothing written
    # how the run goes (logging, evaluation, workers) may change
    assert main(["train", *_sets(base + ["output.log_every=1", "data.workers=0"]), "--resume"]) == 0


def test_changed_settings_skips_how_a_run_goes_and_keys_of_other_versions():
    from defeat.config import changed_settings

    saved = {"optim": {"lr": 0.02}, "output": {"dir": "a"}, "device": "cpu", "model": {"name": "x", "old_key": 1}}
    now = {"optim": {"lr": 0.01}, "output": {"dir": "b"}, "device": "cuda", "model": {"name": "x", "new_key": 2}}
    assert changed_settings(saved, now) == ["optim.lr 0.02 -> 0.01"]
    assert changed_settings(saved, saved) == []
