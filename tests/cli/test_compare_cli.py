"""``defeat compare``: bad input is refused in one line before anything is trained or written; the teacher is
checked before the runs; ``--dry-run`` prints the plan and its estimated time and writes nothing."""

from __future__ import annotations

import pytest

from defeat.cli.main import main
from tests.conftest import tiny_overrides


def _args(tiny_coco, teacher, tmp_path, *extra: str, model: str = "faster_rcnn_tiny_fpn") -> list[str]:
    overrides = tiny_overrides(tiny_coco, tmp_path / "unused", name=model, steps=2)
    if teacher is not None:
        overrides.append(f"distill.teacher_checkpoint={teacher}")
    return ["compare", *(a for o in overrides for a in ("--set", o)), "--out", str(tmp_path / "cmp"), *extra]


def _refused(capsys, args, message: str) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("defeat: error: ") and message in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--methods", "decoupled,magic"], "unknown method 'magic' (known: baseline, object, background, all"),
        (["--methods", "baseline"], "at least one distillation method"),
        (["--seeds", "0"], "--seeds: must be an integer >= 1, got 0"),
        (["--jobs", "0"], "--jobs: must be an integer >= 1, got 0"),
    ],
)
def test_bad_arguments_are_refused_in_one_line(tiny_coco, tiny_teacher, tmp_path, capsys, extra, message):
    _refused(capsys, _args(tiny_coco, tiny_teacher, tmp_path, *extra), message)
    assert not (tmp_path / "cmp").exists()


def test_a_config_without_a_teacher_is_refused(tiny_coco, tmp_path, capsys):
    _refused(capsys, _args(tiny_coco, None, tmp_path), "no teacher: set distill.teacher_checkpoint")
    assert not (tmp_path / "cmp").exists()


def test_a_method_that_does_not_fit_the_pair_is_refused(tiny_coco, tiny_teacher, tmp_path, capsys, monkeypatch):
    # a RetinaNet student of a Faster R-CNN teacher: no proposal term across head families
    args = _args(tiny_coco, tiny_teacher, tmp_path, "--methods", "decoupled_proposals", model="retinanet_tiny_fpn")
    _refused(capsys, args, "--methods: decoupled_proposals does not fit student retinanet_tiny_fpn and teacher")
    # whatever the distiller refuses for a pair is passed on, in one line, naming the method
    import defeat.distill

    def refuse(student, teacher, settings, **kwargs):
        if settings.feature_mode == "all":
            raise ValueError("teacher: this pair cannot do that")
        return real(student, teacher, settings, **kwargs)

    real = defeat.distill.build_distiller
    monkeypatch.setattr(defeat.distill, "build_distiller", refuse)
    args = _args(tiny_coco, tiny_teacher, tmp_path, "--methods", "decoupled,all")
    _refused(capsys, args, "--methods: all does not fit student faster_rcnn_tiny_fpn and teacher")
    assert not (tmp_path / "cmp").exists()


def test_a_teacher_below_the_minimum_stops_before_any_run(tiny_coco, tiny_teacher, tmp_path, capsys):
    args = _args(tiny_coco, tiny_teacher, tmp_path, "--set", "distill.teacher_min_ap=0.99", "--seeds", "1")
    _refused(capsys, args, "below distill.teacher_min_ap")
    assert (tmp_path / "cmp" / "teacher" / "metrics.json").is_file() and not (tmp_path / "cmp" / "runs").exists()


def test_dry_run_prints_the_plan_and_its_estimate(tiny_coco, tiny_teacher, tmp_path, capsys):
    args = _args(tiny_coco, tiny_teacher, tmp_path, "--methods", "decoupled,all", "--seeds", "2", "--dry-run")
    assert main([*args, "--estimate-steps", "1"]) == 0
    text = capsys.readouterr()
    printed = text.out + text.err
    for stage in ("teacher", "baseline_s0", "latency", "decoupled_s1", "all_s1"):
        assert stage in printed
    assert "12 training steps to run" in printed and "estimated" in printed and "s/step" in printed
    assert not (tmp_path / "cmp").exists()
