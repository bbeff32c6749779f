"""``defeat train`` / ``defeat distill`` with YOLO models, end to end on a handful of 96-px images, 2 steps: the
baseline, DeFeat in Ultralytics' loop (YOLO teacher and torchvision teacher), Ultralytics' own distillation; the
student a plain Ultralytics checkpoint that ``YOLO(path)`` predicts with; the bad inputs refused in one line."""

# ruff: noqa: E402  (the imports after the skip need Ultralytics, imported offline first)
from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch

from defeat.models.yolo import ultralytics_module

if importlib.util.find_spec("ultralytics") is None:
    pytest.skip("the yolo extra (pip install 'defeat[yolo]') is not installed", allow_module_level=True)
ultralytics_module()  # imports Ultralytics offline, PIL.Image.open restored (before any ultralytics import)

from defeat import api
from defeat.cli.main import main
from defeat.config import config_from_dict
from defeat.models.yolo import build_yolo


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("yolo_synth")
    api.synth(out, num_train=6, num_val=3, image_size=96, workers=1)
    return out


def yolo_cfg(synth: Path, out: Path, **sections) -> object:
    values = {
        "model": {"name": "yolo26n"},
        "data": {
            "train_images": str(synth / "train"),
            "train_annotations": str(synth / "train.json"),
            "val_images": str(synth / "val"),
            "val_annotations": str(synth / "val.json"),
            "batch_size": 3,
            "workers": 0,
        },
        "schedule": {"max_steps": 2},
        "yolo": {"imgsz": 96},
        "output": {"dir": str(out), "log_every": 1},
        "device": "cpu",
    }
    for key, value in sections.items():
        values[key] = {**values.get(key, {}), **value}
    return config_from_dict(values)


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def yolo_teacher(tmp_path_factory, synth):
    """An (untrained) YOLO26n of the data's 9 classes saved as Ultralytics saves a model."""
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    torch.save({"model": build_yolo("yolo26n", 9), "train_args": {}}, path)
    return path


def test_baseline_trains_with_ultralytics_and_exports_a_plain_checkpoint(synth, tmp_path):
    from ultralytics import YOLO

    run = tmp_path / "base"
    result = api.train(yolo_cfg(synth, run))
    assert result.final_checkpoint == run / "student.pt" and result.step == 2
    assert {"config.yaml", "metrics.jsonl", "metrics.json", "results.json", "student.pt", "yolo_data"} <= {
        p.name for p in run.iterdir()
    }
    log = records(run)
    assert [r["step"] for r in log if "event" not in r] == [1, 2]
    assert {"box_loss", "cls_loss", "sec_per_step"} <= set(log[0]) and log[-1]["event"] == "eval"
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("AP", "AP50", "ultralytics_mAP50-95", "ultralytics_mAP50"):
        assert 0.0 <= metrics[key] <= 1.0
    # the student: Ultralytics loads and predicts with it as with any of its own checkpoints
    model = YOLO(str(result.final_checkpoint))
    assert model.task == "detect" and type(model.model).__name__ == "DetectionModel"
    prediction = model.predict(str(synth / "val" / sorted(p.name for p in (synth / "val").iterdir())[0]), imgsz=96)
    assert prediction[0].boxes is not None and prediction[0].orig_shape == (96, 96)


def test_defeat_distillation_in_ultralytics_loop(synth, tmp_path, yolo_teacher):
    from ultralytics import YOLO

    run = tmp_path / "defeat"
    cfg = yolo_cfg(synth, run, distill={"teacher_model": "yolo26n", "teacher_weights": str(yolo_teacher)})
    result = api.distill(cfg)
    log = [r for r in records(run) if "event" not in r]
    assert len(log) == 2 and all(r["loss_feat_obj"] > 0 and r["loss_feat_bg"] > 0 for r in log)
    assert any("DeFeat in Ultralytics' loop: feature_mode=decoupled" in n for n in result.notes)
    student = YOLO(str(result.final_checkpoint)).model
    assert type(student).__name__ == "DetectionModel"  # no distiller, no adapters, no teacher in the file
    assert not any("adapters" in k or "teacher" in k for k in student.state_dict())


def test_ultralytics_own_distillation_is_an_arm(synth, tmp_path, yolo_teacher):
    run = tmp_path / "ultralytics_arm"
    cfg = yolo_cfg(
        synth,
        run,
        distill={"teacher_model": "yolo26n", "teacher_weights": str(yolo_teacher)},
        yolo={"distill": "ultralytics"},
    )
    result = api.distill(cfg)
    assert all("dis_loss" in r for r in records(run) if "event" not in r)
    assert any("distill_model=" in n for n in result.notes)


def test_torchvision_teacher_into_a_yolo_student(synth, tmp_path):
    teacher_run = tmp_path / "retinanet"
    api.train(
        config_from_dict(
            {
                "model": {"name": "retinanet_tiny_fpn", "min_size": 96, "max_size": 96},
                "data": dataclasses.asdict(yolo_cfg(synth, teacher_run).data),
                "schedule": {"max_steps": 2, "warmup_steps": 1},
                "output": {"dir": str(teacher_run)},
                "device": "cpu",
            }
        ),
        progress=False,
    )
    run = tmp_path / "cross"
    cfg = yolo_cfg(synth, run, distill={"teacher_checkpoint": str(teacher_run / "model_final.pt")})
    api.distill(cfg)
    log = [r for r in records(run) if "event" not in r]
    assert len(log) == 2 and all(r["loss_feat_obj"] > 0 for r in log)


def test_bad_inputs_are_one_line_and_write_nothing(synth, tmp_path, yolo_teacher, capsys):
    from ultralytics.nn.tasks import SegmentationModel

    seg = tmp_path / "seg.pt"
    torch.save({"model": SegmentationModel("yolo26n-seg.yaml", nc=9, verbose=False)}, seg)
    base = ["--set", "model.name=yolo26n", "--set", "device=cpu", "--set", f"data.train_images={synth / 'train'}"]
    base += ["--set", f"data.train_annotations={synth / 'train.json'}", "--set", f"output.dir={tmp_path / 'run'}"]
    cases = {
        "segment teacher": (
            ["--set", "distill.teacher_model=yolo26s", "--set", f"distill.teacher_weights={seg}"],
            "distill.teacher_weights: .*seg.pt holds a YOLO segment model",
        ),
        "fgfi": (
            ["--set", "distill.teacher_model=yolo26n", "--set", f"distill.teacher_weights={yolo_teacher}"]
            + ["--set", "distill.feature_mode=fgfi"],
            "distill.feature_mode=fgfi: not for a YOLO student",
        ),
        "yolo teacher, torchvision student": (
            ["--set", "model.name=retinanet_tiny_fpn", "--set", "distill.teacher_model=yolo26n"],
            "a YOLO teacher distils into a YOLO student only",
        ),
        "builtin arm without a YOLO teacher": (
            ["--set", "yolo.distill=ultralytics", "--set", "distill.teacher_checkpoint=x.pt"],
            "Ultralytics' own distillation needs a YOLO teacher",
        ),
    }
    for name, (extra, message) in cases.items():
        assert main(["distill", *base, *extra]) == 2, name
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and re.search(message, err), (name, err)
        assert not (tmp_path / "run").exists(), name
    assert main(["train", *base, "--resume"]) == 2
    assert "a YOLO training does not resume" in capsys.readouterr().err
    # the torchvision image sizes would be silently ignored (Ultralytics' 640 px): refused, naming yolo.imgsz
    assert main(["train", *base, "--set", "model.min_size=128", "--set", "model.max_size=128"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "set yolo.imgsz" in err and "model.min_size=128" in err, err
    assert not (tmp_path / "run").exists()
    # several devices would start Ultralytics' DDP workers, which drop the distiller: refused, naming the setting
    for devices in ("0,1", "[0, 1]"):
        assert main(["distill", *base, *cases["fgfi"][0][:4], "--set", f"yolo.args.device={devices}"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "yolo.args.device=" in err and "one device" in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_the_side_by_side_study_records_every_arm_and_its_tests(synth, tmp_path):
    """benchmarks/yolo_distill.py, 2 steps, 2 seeds: every arm's per-seed AP, the Welch tests with Holm over the
    distilled arms, DeFeat vs Ultralytics', the plateau run at 2 S, step-time ratios; a rerun trains nothing."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    out, record = tmp_path / "study", tmp_path / "study.json"
    cmd = [sys.executable, str(root / "benchmarks" / "yolo_distill.py"), "--out", str(out), "--data", str(synth),
           "--steps", "2", "--seeds", "2", "--imgsz", "96", "--batch", "3", "--jobs", "2", "--quiet",
           "--arms", "baseline,ultralytics,decoupled", "--json", str(record)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True)
    d = json.loads(record.read_text())
    assert set(d["arms"]) == {"baseline", "ultralytics", "decoupled"}
    for arm, r in d["arms"].items():
        assert len(r["coco_AP"]["values"]) == 2 and r["sec_per_step"] > 0
        assert all(len(r["train_loss_last_epoch"][k]["values"]) == 2 for k in ("box", "cls"))
        assert r["train_loss_last_epoch"]["box"]["mean"] > 0  # read from Ultralytics' results.csv
        assert (out / arm / "seed1" / "student.pt").is_file()
        if arm != "baseline":
            assert r["holm_family"] == 2 and r["p_vs_baseline_holm"] >= r["vs_baseline"]["p_value"]
    assert d["arms"]["baseline"]["step_time_ratio"] == 1.0
    assert d["defeat_vs_ultralytics_test"]["n_a"] == 2 and d["defeat_vs_ultralytics_outcome"] in ("passes", "not shown")
    assert (
        d["plateau"]["steps"] == 2
        and json.loads((out / "baseline" / "seed0_2x" / "metrics.json").read_text())["steps"] == 4
    )
    assert (out / "teacher" / "student.pt").is_file() and d["teacher"]["model"] == "yolo26s"
    boxes = [a for a in json.loads((Path(synth) / "train.json").read_text())["annotations"] if not a.get("iscrowd")]
    # 96 px images at imgsz 96: every side < 112 px, so DeFeat's level rule (k0 = 5) puts every box on P3
    assert d["train_boxes_per_level"] == {"P3": len(boxes), "P4": 0, "P5": 0}
    stamp = (out / "decoupled" / "seed0" / "student.pt").stat().st_mtime_ns
    subprocess.run(cmd, check=True, capture_output=True)  # resumes: every run is finished
    assert (out / "decoupled" / "seed0" / "student.pt").stat().st_mtime_ns == stamp
