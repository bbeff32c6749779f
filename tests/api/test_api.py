"""The Python API (``defeat.api``): a documented surface, and a train -> evaluate -> distill -> analyse -> export
round trip driven by config objects and plain arguments only (no argv, no argparse)."""

from __future__ import annotations

import dataclasses
import inspect
import math
import pydoc
import shutil

import pytest
import torch

from defeat import api
from defeat.config import config_from_dict
from defeat.models import build_detector
from tests.conftest import tiny_overrides


def test_the_surface_is_documented():
    text = pydoc.render_doc(api, renderer=pydoc.plaintext)
    for name in (
        "train",
        "distill",
        "evaluate",
        "load_detector",
        "export",
        "channel_distance",
        "grad_norm",
        "analyze_errors",
        "synth",
        "import_yolo",
        "import_voc",
    ):
        function = getattr(api, name)
        assert name in api.__all__ and f"{name}(" in text, name
        assert inspect.getdoc(function) and len(inspect.getdoc(function)) > 40, name
        assert "argparse" not in str(inspect.signature(function)), name
    assert inspect.getdoc(api).startswith("The programmatic surface of defeat")


@pytest.fixture(scope="module")
def round_trip(tiny_coco, tmp_path_factory):
    out = tmp_path_factory.mktemp("api")
    teacher_cfg = config_from_dict({}, tiny_overrides(tiny_coco, out / "teacher", steps=2) + ["seed=3"])
    teacher = api.train(teacher_cfg)
    student_cfg = config_from_dict(
        {},
        tiny_overrides(tiny_coco, out / "student", steps=2)
        + [
            f"distill.teacher_checkpoint={teacher.final_checkpoint}",
            "distill.teacher_check_images=2",
            "distill.teacher_min_ap=0",
            "distill.proposal_mode=none",
        ],
    )
    student = api.distill(student_cfg)
    yield out, teacher_cfg, teacher, student_cfg, student
    shutil.rmtree(out, ignore_errors=True)  # ~2 GB of checkpoints; pytest keeps module dirs to the end


def test_train_evaluate_and_distill_from_config_objects(round_trip):
    out, teacher_cfg, teacher, student_cfg, student = round_trip
    assert isinstance(teacher, api.RunResult) and teacher.step == 2 and teacher.final_checkpoint.is_file()
    assert {"AP", "AP50", "per_class_AP"} <= set(teacher.metrics)
    stats = api.evaluate(teacher_cfg, teacher.final_checkpoint, out / "eval")
    assert stats["AP"] == pytest.approx(teacher.metrics["AP"])  # same model, same images
    assert (out / "eval" / "results.json").is_file() and (out / "eval" / "metrics.json").is_file()
    assert set(student.teacher_metrics) == {"teacher_AP", "teacher_AP50"}
    assert student.notes[0].startswith(f"teacher {teacher_cfg.model.name} from ") and "0 missing" in student.notes[0]


def test_load_detector_and_export(round_trip, tiny_coco):
    out, _, teacher, student_cfg, student = round_trip
    loaded = api.load_detector(student.final_checkpoint)
    assert loaded.kind == "distill" and loaded.feature_mode == "decoupled" and not loaded.model.training
    assert loaded.adapters is not None and loaded.adapters.levels == ["P2", "P3", "P4", "P5", "P6"]
    assert [c["name"] for c in loaded.categories] == ["square", "bar", "disc"]
    plain = api.load_detector(teacher.final_checkpoint)
    assert plain.kind == "detector" and plain.adapters is None and plain.feature_mode == "none"
    with pytest.raises(ValueError, match="class list"):
        api.load_detector(teacher.final_checkpoint, categories=loaded.categories[:2])
    meta = api.export(student.final_checkpoint, out / "student.pt")
    model = build_detector(student_cfg.model, meta["num_classes"])
    model.load_state_dict(torch.load(out / "student.pt", weights_only=True), strict=True)


def test_analyses_take_plain_arguments(round_trip, tiny_coco):
    out, _, teacher, _, student = round_trip
    summary = api.channel_distance(
        teacher.final_checkpoint,
        {"decoupled": student.final_checkpoint},
        tiny_coco["root"] / "val" / "images",
        tiny_coco["val_ann"],
        out / "cd",
        images=2,
        quiet=True,
    )
    assert {(r["student"], r["region"]) for r in summary["rows"]} == {
        ("decoupled", "object"),
        ("decoupled", "background"),
    }
    assert (out / "cd" / "channel_distance.png").is_file()
    grads = api.grad_norm(
        student.final_checkpoint,
        tiny_coco["root"] / "train" / "images",
        tiny_coco["train_ann"],
        out / "gn",
        teacher=teacher.final_checkpoint,
        images=1,
        train_steps=1,
        quiet=True,
    )
    assert grads["rows"][-1]["level"] == "all" and grads["meta"]["loss"] == "sum"
    # the same call after other work on the global generator: the same numbers (the fresh pre-training
    # adapters are drawn from a generator seeded by `seed`, not from whatever state the caller left)
    torch.manual_seed(999)
    torch.rand(100)
    again = api.grad_norm(
        student.final_checkpoint,
        tiny_coco["root"] / "train" / "images",
        tiny_coco["train_ann"],
        out / "gn2",
        teacher=teacher.final_checkpoint,
        images=1,
        train_steps=1,
        quiet=True,
    )
    assert again["rows"] == grads["rows"]


def test_settings_are_validated_once_when_made():
    settings = api.DistillSettings(feature_mode="background", alpha_bg=4.0)
    assert dataclasses.replace(settings, alpha_bg=8.0).alpha_bg == 8.0
    with pytest.raises(ValueError, match="alpha_bg: must be >= 0"):
        dataclasses.replace(settings, alpha_bg=-1.0)
    with pytest.raises(ValueError, match="proposal_mode: unknown value 'both'"):
        api.DistillSettings(proposal_mode="both")


def test_distill_weights_auto_writes_the_chosen_weights_into_the_run_config(round_trip, tiny_coco):
    """weights=auto measures the terms on the run's first batches, trains with the chosen weights and writes them
    into config.yaml (weights: fixed), so that config reproduces the run; auto_weights.json has the measurement."""
    import json

    from defeat.config import load_config

    out, _, teacher, _, _ = round_trip
    cfg = config_from_dict(
        {},
        tiny_overrides(tiny_coco, out / "auto", steps=1)
        + [
            f"distill.teacher_checkpoint={teacher.final_checkpoint}",
            "distill.teacher_check_images=0",
            "distill.weights=auto",
            "distill.auto_target=0.5",
            "distill.auto_batches=2",
            "distill.backbone_stages=[4]",
        ],
    )
    result = api.distill(cfg)
    record = json.loads((out / "auto" / "auto_weights.json").read_text())
    saved = load_config(out / "auto" / "config.yaml").distill
    assert saved.weights == "fixed" and saved.auto_target == 0.5
    for name, value in record["weights"].items():
        assert getattr(saved, name) == value
    assert set(record["weights"]) == {"alpha_obj", "alpha_bg", "alpha_bb_obj", "alpha_bb_bg", "beta_obj", "beta_bg"}
    assert saved.alpha_bg / saved.alpha_obj == pytest.approx(4.0, rel=1e-3)  # the authors' ratio kept
    assert saved.alpha_bb_bg / saved.alpha_bb_obj == pytest.approx(4.0, rel=1e-3)
    for term, fraction in record["starting_fractions"].items():
        assert fraction == pytest.approx(0.5, rel=1e-2), term
    assert any(n.startswith("weights=auto over 2 batches") for n in result.notes)
    # resuming reuses the recorded choice instead of measuring again
    again = api.distill(cfg, resume=True)
    assert any("reusing" in n for n in again.notes)


def test_the_error_analysis_does_not_import_torch():
    """``defeat analyze errors`` goes through ``defeat.api``; its submodules load on first use, so the command
    (and each of its drawing workers) does not pay torch's import for a training API it never calls."""
    import subprocess
    import sys

    code = (
        "import sys; from defeat import api; api.analyze_errors; from defeat.api import dataset_stats; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", "import sys; from defeat import api; api.analyze_errors; print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "False"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"  # a training-side name still imports what it needs
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        api.nonexistent  # noqa: B018


@pytest.mark.slow
def test_channel_distance_across_fpn_widths_goes_through_each_students_least_squares_map(tiny_coco, tmp_path):
    """A wider teacher (small: 128 FPN channels) and tiny students (64): raw maps cannot be compared channel by
    channel; ``auto`` and ``probe`` map every student's raw output (the baseline's too) by its own fitted map."""
    from defeat.cli.main import main
    from tests.conftest import tiny_overrides

    def trained(name, out):
        sets = tiny_overrides(tiny_coco, out, name=name, steps=1) + ["output.checkpoint_every=0"]
        assert main(["train", *[a for o in sets for a in ("--set", o)]]) == 0
        return out / "model_final.pt"

    teacher = trained("faster_rcnn_small_fpn", tmp_path / "teacher")
    student = trained("faster_rcnn_tiny_fpn", tmp_path / "student")
    args = (tiny_coco["root"] / "val" / "images", tiny_coco["val_ann"])
    with pytest.raises(ValueError, match=r"raw FPN\): FPN layout does not match the teacher's: 64 channels vs the "):
        api.channel_distance(teacher, {"none": student}, *args, tmp_path / "raw", images=2, student_feature="raw")
    for feature in ("auto", "probe"):
        summary = api.channel_distance(
            teacher, {"none": student}, *args, tmp_path / feature, images=2, quiet=True, student_feature=feature
        )
        assert "least-squares" in summary["meta"]["student_feature"]["none"]
        assert {r["region"] for r in summary["rows"]} == {"object", "background"}
        assert all(r["feature"] == "probe" and r["mean_distance"] >= 0 for r in summary["rows"]), summary["rows"]
        assert all(math.isfinite(r["mean_distance"]) for r in summary["rows"])
