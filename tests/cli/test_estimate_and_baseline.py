"""``defeat train/distill --estimate`` (times steps, writes nothing), the first-step line (ETA, loss shares) and
the teacher-vs-baseline comparison of ``defeat distill``."""

from __future__ import annotations

import json

import pytest

from defeat.cli.main import main
from tests.conftest import tiny_overrides


def _sets(overrides):
    return [a for o in overrides for a in ("--set", o)]


def _files(*roots):
    return {p for root in roots for p in root.rglob("*")}


@pytest.mark.parametrize("command", ["train", "distill"])
def test_estimate_runs_a_few_steps_and_writes_nothing(command, tiny_coco, tiny_teacher, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    overrides = tiny_overrides(tiny_coco, out, steps=1000)
    if command == "distill":
        overrides += [f"distill.teacher_checkpoint={tiny_teacher}", "distill.weights=auto"]
    before = _files(tmp_path, tiny_coco["root"], tiny_teacher.parent)
    assert main([command, "--estimate", "--estimate-steps", "2", *_sets(overrides)]) == 0
    printed = capsys.readouterr().out
    assert "s/step (median of 2 steps after 2 warm-up" in printed and "1000 steps ~" in printed
    assert "peak memory" in printed
    from defeat import api

    timing = api.estimate(api.load_config(None, overrides), steps=2, warmup=1) if command == "train" else None
    assert timing is None or 0 < timing.cpu_share < 1.5  # measured on CPU runs
    assert not out.exists() and _files(tmp_path, tiny_coco["root"], tiny_teacher.parent) == before


def test_first_step_prints_the_eta_and_the_loss_shares(tiny_coco, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *_sets(tiny_overrides(tiny_coco, out, steps=2) + ["output.checkpoint_every=0"])]) == 0
    printed = capsys.readouterr().out
    assert "step 1:" in printed and "ETA at this pace" in printed and "loss_classifier" in printed
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    first = [r for r in records if r.get("event") == "first_step"]
    assert len(first) == 1 and first[0]["step"] == 1 and first[0]["eta_s"] >= 0
    assert sum(first[0]["share"].values()) == pytest.approx(1.0, abs=1e-3)
    assert all("eta_s" in r for r in records if "sec_per_step" in r)


def test_baseline_comparison_warns_on_a_teacher_equal_to_the_student(tiny_coco, tiny_teacher, tmp_path, capsys):
    out = tmp_path / "run"
    overrides = tiny_overrides(tiny_coco, out, steps=1) + [
        "output.checkpoint_every=0",
        "data.val_max_images=2",
        f"distill.teacher_checkpoint={tiny_teacher}",
        f"distill.baseline_checkpoint={tiny_teacher}",
        "distill.teacher_check_images=2",
        "distill.teacher_min_ap=0",
        "distill.proposal_mode=none",
    ]
    assert main(["distill", *_sets(overrides)]) == 0  # a warning, not a refusal
    printed = capsys.readouterr().out
    assert "baseline (student alone) AP" in printed
    assert "warning: the teacher" in printed and "is not ahead of the baseline student" in printed
    summary = [line for line in printed.splitlines() if line.startswith("teacher AP")]
    assert len(summary) == 1 and "baseline AP" in summary[0] and "vs baseline" in summary[0]
    evals = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines() if '"eval"' in r]
    assert evals and all("baseline_AP" in r and "teacher_AP" in r for r in evals)
    assert evals[-1]["baseline_AP"] == evals[-1]["teacher_AP"]  # the same weights, the same images


def test_an_estimate_on_busy_cores_says_so():
    """The estimate compares the CPU time its threads got with what they could use; under 70 % it adds a note."""
    from defeat.engine.trainer import StepTiming

    quiet = StepTiming(2, [1.0, 1.0], 100, 0.5, "peak RSS", cpu_share=0.95, load_average=1.9, cores=2)
    busy = StepTiming(2, [1.0, 1.0], 100, 0.5, "peak RSS", cpu_share=0.4, load_average=4.2, cores=2)
    assert "busy" not in quiet.summary() and not quiet.machine_was_busy
    assert busy.machine_was_busy and "the cores were busy while measuring" in busy.summary()
    assert "40 %" in busy.summary() and "load average 4.2 on 2 cores" in busy.summary()
    assert busy.as_dict()["machine_was_busy"] is True and busy.as_dict()["cpu_share"] == 0.4
