"""End to end: ``defeat distill`` in every mode on the tiny set, the teacher check, bad input, export, torchrun."""

import json
import os
import subprocess
import sys

import pytest
import torch

from defeat.cli.main import main
from defeat.config import ModelConfig
from defeat.engine import load_checkpoint
from defeat.models import build_detector
from tests.conftest import tiny_overrides


def _sets(overrides):
    return [a for o in overrides for a in ("--set", o)]


def distill_overrides(tiny_coco, teacher, out, steps=1, **distill):
    settings = {"teacher_checkpoint": teacher, "teacher_check_images": 0, **distill}
    return (
        tiny_overrides(tiny_coco, out, steps=steps)
        + ["output.checkpoint_every=0", "data.val_max_images=2"]
        + [f"distill.{k}={v}" for k, v in settings.items()]
    )


@pytest.mark.parametrize(
    "feature_mode,proposal_mode",
    [
        ("none", "none"),
        ("object", "positive"),
        ("background", "negative"),
        ("all", "all"),
        ("fgfi", "none"),
    ],
)
def test_distill_runs_every_mode(tiny_coco, tiny_teacher, tmp_path, feature_mode, proposal_mode):
    out = tmp_path / "run"
    args = distill_overrides(tiny_coco, tiny_teacher, out, feature_mode=feature_mode, proposal_mode=proposal_mode)
    assert main(["distill", *_sets(args)]) == 0
    state = load_checkpoint(out / "model_final.pt", kind="distill")
    prefixes = {k.split(".")[0] for k in state["model"]}
    assert prefixes == ({"student"} if feature_mode == "none" else {"student", "adapters"})
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    keys = set().union(*(r.keys() for r in logged))
    expected = {
        "none": set(),
        "object": {"loss_feat_obj"},
        "background": {"loss_feat_bg"},
        "all": {"loss_feat_all"},
        "fgfi": {"loss_feat_obj"},
    }[feature_mode]
    expected |= {"none": set(), "positive": {"loss_kd_pos"}, "negative": {"loss_kd_neg"}, "all": {"loss_kd_all"}}[
        proposal_mode
    ]
    assert expected <= keys and not ({k for k in keys if k.startswith(("loss_feat", "loss_kd"))} - expected)


@pytest.mark.parametrize(
    "feature_mode,key,prefixes",
    [
        ("cwd", "loss_feat_cwd", {"student"}),  # same FPN channels: no adapter (as mmrazor's configs)
        ("pkd", "loss_feat_pkd", {"student"}),
        ("score_weighted", "loss_feat_score", {"student", "adapters"}),  # Ultralytics' projector
    ],
)
def test_distill_runs_the_other_feature_methods(tiny_coco, tiny_teacher, tmp_path, feature_mode, key, prefixes):
    from defeat import api
    from defeat.distill.adapters import Projector

    out = tmp_path / "run"
    args = distill_overrides(tiny_coco, tiny_teacher, out, feature_mode=feature_mode, proposal_mode="none")
    assert main(["distill", *_sets(args)]) == 0
    state = load_checkpoint(out / "model_final.pt", kind="distill")
    assert {k.split(".")[0] for k in state["model"]} == prefixes
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    keys = set().union(*(r.keys() for r in logged))
    assert {k for k in keys if k.startswith(("loss_feat", "loss_kd"))} == {key}
    loaded = api.load_detector(out / "model_final.pt")
    assert (loaded.adapters is None) == ("adapters" not in prefixes)
    if loaded.adapters is not None:
        assert all(isinstance(m, Projector) for m in loaded.adapters.convs.values())


def test_decoupled_distill_with_teacher_check_side_by_side_eval_and_export(tiny_coco, tiny_teacher, tmp_path, capsys):
    out = tmp_path / "run"
    args = distill_overrides(
        tiny_coco,
        tiny_teacher,
        out,
        steps=2,
        teacher_check_images=2,
        teacher_min_ap=0.0,
        feature_mode="decoupled",
        proposal_mode="decoupled",
        weight_decay_policy="cosine",
    )
    assert main(["distill", *_sets(args + ["eval.every_steps=1"])]) == 0
    printed = capsys.readouterr().out
    assert "0 missing, 0 unexpected keys" in printed and "teacher check on 2 val images: teacher AP" in printed
    evals = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines() if '"eval"' in r]
    assert len(evals) == 2 and all("teacher_AP" in r and "AP" in r for r in evals)
    # export -> a stock zoo model loads it strictly; the .json sidecar says how to build it
    exported = tmp_path / "student.pt"
    assert main(["export", "--checkpoint", str(out / "model_final.pt"), "--out", str(exported)]) == 0
    weights = torch.load(exported, weights_only=True)
    meta = json.loads((tmp_path / "student.pt.json").read_text())
    model = build_detector(ModelConfig(**meta["model"]), meta["num_classes"])
    model.load_state_dict(weights, strict=True)
    assert not any(k.startswith("adapters") for k in weights)
    distilled = load_checkpoint(out / "model_final.pt")["model"]
    assert all(torch.equal(weights[k], distilled["student." + k]) for k in weights)


def test_onnx_export_matches_pytorch(tiny_coco, tiny_teacher, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    out = tmp_path / "student.pt"
    assert main(["export", "--checkpoint", str(tiny_teacher), "--out", str(out), "--onnx"]) == 0
    from defeat.engine.export import student_from_checkpoint

    model, _, _ = student_from_checkpoint(tiny_teacher)
    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model([image])[0]
    session = ort.InferenceSession(str(tmp_path / "student.onnx"), providers=["CPUExecutionProvider"])
    boxes, scores, labels = session.run(None, {"image": image.numpy()})
    assert boxes.shape == tuple(ref["boxes"].shape)
    assert torch.allclose(torch.from_numpy(boxes), ref["boxes"], atol=1e-3)
    assert torch.allclose(torch.from_numpy(scores), ref["scores"], atol=1e-4)
    assert torch.equal(torch.from_numpy(labels), ref["labels"])


def test_bad_input_is_refused_in_one_line(tiny_coco, tiny_teacher, tmp_path, capsys):
    out = tmp_path / "run"
    base = distill_overrides(tiny_coco, tiny_teacher, out)
    other = tmp_path / "other_classes.pt"
    state = load_checkpoint(tiny_teacher)
    state["categories"] = state["categories"][:2]
    torch.save(state, other)
    cases = [
        (["distill.teacher_checkpoint="], "distill.teacher_checkpoint: not set"),
        ([f"distill.teacher_checkpoint={tmp_path / 'nope.pt'}"], "nope.pt: checkpoint not found"),
        ([f"distill.teacher_checkpoint={other}"], "class list (2 classes) differs"),
        (["model.name=faster_rcnn_r19_fpn"], "unknown detector 'faster_rcnn_r19_fpn'"),
        (["distill.feature_mode=objects"], "distill.feature_mode: unknown value 'objects'"),
        (["distill.proposal_mode=pos"], "distill.proposal_mode: unknown value"),
        (["distill.alpha_bg=-1"], "distill.alpha_bg: must be >= 0"),
        (["distill.temperature_obj=0"], "distill.temperature_obj: must be > 0"),
        # a one-step teacher is clearly broken: the sanity check refuses it unless --force
        (["distill.teacher_check_images=2", "distill.teacher_min_ap=0.5"], "below distill.teacher_min_ap"),
    ]
    for extra, message in cases:
        code = main(["distill", *_sets(base + extra)])
        err = capsys.readouterr().err.strip()
        assert code == 2 and message in err and "\n" not in err, (extra, err)
    assert not (out / "model_final.pt").exists()


@pytest.mark.slow
def test_force_starts_over_and_ignore_teacher_check_skips_the_check(tiny_coco, tiny_teacher, tmp_path, capsys):
    """--force only starts over in a used folder; skipping the teacher's check has its own flag."""
    out = tmp_path / "run"
    base = distill_overrides(tiny_coco, tiny_teacher, out)
    weak = _sets(base + ["distill.teacher_check_images=2", "distill.teacher_min_ap=0.5"])
    assert main(["distill", *weak, "--force"]) == 2
    assert "Pass --ignore-teacher-check to distil anyway" in capsys.readouterr().err
    assert main(["distill", *weak, "--ignore-teacher-check"]) == 0
    assert (out / "model_final.pt").is_file() and "continuing because of distill.force" in capsys.readouterr().out


@pytest.mark.slow
def test_torchrun_two_process_distill(tiny_coco, tiny_teacher, tmp_path):
    out = tmp_path / "ddp"
    args = distill_overrides(
        tiny_coco, tiny_teacher, out, steps=2, feature_mode="decoupled", proposal_mode="decoupled"
    ) + ["data.batch_size=1"]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--standalone",
        "-m",
        "defeat.cli.main",
        "distill",
        *_sets(args),
    ]
    result = subprocess.run(
        cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    state = load_checkpoint(out / "model_final.pt", kind="distill")
    assert state["step"] == 2 and any(k.startswith("adapters.") for k in state["model"])
    assert not any(k.startswith(("module.", "teacher")) for k in state["model"])
