"""``defeat reproduce``: the presets, the plan, and the whole pipeline end to end with the tiny preset (every
stage's outputs, the report, the cache, the resume of a stage, stages independent of the process's state)."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from defeat.cli.main import main
from defeat.config import load_config
from defeat.study import STUDENT_MODES, build_plan, claims_by_id, load_preset
from defeat.study.presets import seeds_of


# ------------------------------------------------------------------------------------------ presets
@pytest.mark.parametrize("name", ["tiny", "quick", "full"])
def test_builtin_presets_plan(name, tmp_path):
    preset = load_preset(name)
    stages = build_plan(preset, tmp_path)
    names = [s.name for s in stages]
    trainings = [s for s in stages if s.kind in ("train", "distill")]
    assert names[:3] == ["data", "teacher", "eval_teacher"]
    analyses = [
        "channel_distance",
        "channel_distance_raw",
        "grad_norm_detection",
        "grad_norm_distillation",
        "grad_norm_sum",
        "errors",
    ]
    assert [n for n in names if n in analyses] == analyses
    by_name = {s.name: s for s in stages}
    raw = by_name["channel_distance_raw"]
    assert raw.params["student_feature"] == "raw" and by_name["channel_distance"].params["student_feature"] == "auto"
    assert "--student-feature raw" in raw.command and raw.command.startswith("defeat analyze channel-distance ")
    # Fig. 1 on every seed of the five students
    fig1 = {(s, seed) for s in ("baseline", "object", "background", "all", "decoupled") for seed in seeds_of(preset, s)}
    assert set(raw.params["students"]) == {f"{s}_s{seed}" for s, seed in fig1}
    # Fig. 2-3: the detection loss alone, the distillation loss alone, their sum; same student, images, K steps
    grads = [by_name[f"grad_norm_{loss}"] for loss in ("detection", "distillation", "sum")]
    assert [g.params["loss"] for g in grads] == ["detection", "distillation", "sum"]
    assert len({(g.params["student"], g.params["train_steps"], g.params["images"]) for g in grads}) == 1
    assert all(f"--loss {g.params['loss']}" in g.command for g in grads)
    students = {s.name.rsplit("_s", 1)[0] for s in trainings}
    assert {"teacher", *STUDENT_MODES} <= students
    assert students - {"teacher", *STUDENT_MODES} == {f"sens_{e['name']}" for e in preset.get("sensitivity", [])}
    for s in trainings:  # every derived config is valid and points into the run folder
        assert s.config.output.dir == str(s.folder) and s.config.data.train_annotations.startswith(str(tmp_path))
        assert (s.config.distill.teacher_checkpoint.endswith("teacher/model_final.pt")) == (s.kind == "distill")
        # baseline and decoupled are evaluated during training, at quarters (or halves) of the schedule
        curve = s.name.rsplit("_s", 1)[0] in ("baseline", "decoupled")
        points = preset["regime"]["eval_points"]
        assert s.config.eval.every_steps == (s.steps // points if curve else 0), s.name
    decoupled = next(s for s in trainings if s.name.startswith("decoupled_"))
    assert (decoupled.config.distill.feature_mode, decoupled.config.distill.proposal_mode) == ("decoupled", "none")
    assert (decoupled.config.distill.alpha_obj, decoupled.config.distill.alpha_bg) == (4.0, 16.0)  # the authors'
    full_defeat = next(s for s in trainings if s.name.startswith("defeat_"))
    assert full_defeat.config.distill.proposal_mode == "decoupled"
    teacher = trainings[0]
    if name != "tiny":  # tiny: the same backbone, for speed
        assert teacher.config.model.name != decoupled.config.model.name  # bigger teacher backbone
    if name == "full":
        assert all(len(seeds_of(preset, s)) >= 3 for s in STUDENT_MODES)  # 3 seeds for every student
        assert len([s for s in trainings if not s.name.startswith(("teacher", "sens_"))]) == 21
        # never a shorter teacher; equal schedules left the from-scratch R50 behind the R18 (the preset's header)
        assert teacher.steps >= decoupled.steps and preset["regime"]["plateau_gain_max"] <= 0.1
        assert preset["claims"]["margin_ap"] > 0
        sens = {s.name: s.config.distill for s in trainings if s.name.startswith("sens_")}
        assert sens["sens_alpha_bg_4_s0"].alpha_bg == 4.0 and sens["sens_weights_auto_s0"].weights == "auto"
        assert names.index("errors") < names.index("sens_alpha_bg_4_s0")  # sensitivity after the reproduction
    assert len({s.key for s in stages}) == len(stages)
    again = build_plan(preset, tmp_path)
    assert [s.key for s in again] == [s.key for s in stages]  # deterministic keys


def test_preset_overrides_and_errors(tmp_path):
    preset = load_preset("tiny", ["student.steps=6", "seeds.baseline=[3,4,5]"])
    stages = build_plan(preset, tmp_path)
    assert [s.name for s in stages if s.name.startswith("baseline_")] == ["baseline_s3", "baseline_s4", "baseline_s5"]
    assert next(s for s in stages if s.name == "baseline_s3").config.schedule.max_steps == 6
    # a changed setting changes the stage's key and the keys of everything downstream of it
    base = {s.name: s.key for s in build_plan(load_preset("tiny"), tmp_path)}
    changed = {s.name: s.key for s in build_plan(load_preset("tiny", ["teacher.steps=5"]), tmp_path)}
    assert changed["data"] == base["data"] and changed["teacher"] != base["teacher"]
    assert changed["decoupled_s0"] != base["decoupled_s0"] and changed["baseline_s0"] == base["baseline_s0"]
    for args, message in [
        (["--preset", "nope"], "not a preset name"),
        (["--preset", "tiny", "--set", "bogus=1"], "unknown preset key 'bogus'"),
        (["--preset", "tiny", "--set", "students=[baseline,magic]"], "unknown student 'magic'"),
        (["--preset", "tiny", "--set", "common.model.min_sise=3"], "unknown key 'model.min_sise'"),
        (["--preset", "tiny", "--set", "seeds.default=[]"], "seeds.default"),
        (["--preset", "tiny", "--set", "claims.margin=1"], "unknown key 'claims.margin'"),
        (["--preset", "tiny", "--set", "claims.margin_ap=0"], "claims.margin_ap must be > 0"),
        (["--preset", "tiny", "--set", "regime.eval_points=3"], "must be >= 1 and divide"),
        (["--preset", "tiny", "--set", "regime.curve_students=[magic]"], "curve_students"),
        (["--preset", "tiny", "--set", "sensitivity=[{distill: {}}]"], "sensitivity"),
    ]:
        with pytest.raises(ValueError, match=message.replace("[", r"\[")):
            load_preset(args[1], args[3:4])
    assert main(["reproduce", "--preset", "tiny", "--set", "bogus=1", "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


def test_dry_run_prints_the_plan(tmp_path, capsys):
    assert main(["reproduce", "--preset", "full", "--out", str(tmp_path / "full"), "--dry-run"]) == 0
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "training steps to run" in text and "budget 120 min" in text
    assert not (tmp_path / "full").exists()


def test_coco_preset_writes_configs_and_commands_only(tmp_path):
    out = tmp_path / "coco"
    assert main(["reproduce", "--preset", "coco", "--out", str(out)]) == 0
    readme = (out / "README.md").read_text()
    assert "Not run" in readme and "torchrun --nproc_per_node=" in readme
    assert "37.4" in readme and "40.9" in readme and "36.5" in readme and "39.7" in readme
    configs = sorted(out.glob("configs/*/*.yaml"))
    assert len(configs) >= 9
    names = {p.parent.name for p in configs}
    assert any("r152" in n for n in names) and any("retinanet" in n for n in names)
    defeat_cfg = load_config(out / "configs" / sorted(names)[0] / "defeat.yaml")
    assert (defeat_cfg.distill.alpha_obj, defeat_cfg.distill.alpha_bg) == (4.0, 16.0)
    assert not (out / "models").exists()


# ------------------------------------------------------------------------------------------ the pipeline (tiny)
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce") / "run"
    assert main(["reproduce", "--preset", "tiny", "--out", str(out)]) == 0
    yield out
    shutil.rmtree(out.parent, ignore_errors=True)  # pytest keeps module dirs to the end of the session


@pytest.mark.slow
def test_tiny_pipeline_writes_every_stage_and_the_report(tiny_run):
    out = tiny_run
    preset = load_preset("tiny")
    stages = build_plan(preset, out)
    for stage in stages:
        done = json.loads((stage.folder / "done.json").read_text())
        assert done["key"] == stage.key and done["status"] == "ran" and done["seconds"] > 0, stage.name
        for name in stage.outputs:
            assert (stage.folder / name).stat().st_size > 0, (stage.name, name)
        if stage.kind in ("train", "distill"):
            saved = load_config(stage.folder / "config.yaml")
            assert saved.schedule.max_steps == stage.steps and saved.seed == stage.config.seed
            assert done["sec_per_step"] > 0 and done["command"].startswith(f"defeat {stage.kind} ")
    assert (out / "data" / "train.json").is_file() and len(list((out / "data" / "train").iterdir())) == 16

    results = json.loads((out / "results.json").read_text())
    assert results["preset"] == "tiny" and results["indicative"] is True
    assert [r["model"] for r in results["table"]] == [
        "teacher",
        "baseline",
        "object",
        "background",
        "all",
        "decoupled",
        "defeat",
        "fgfi",
    ]
    assert [len(results["students"][s]) for s in ("baseline", "decoupled", "object")] == [2, 2, 1]
    assert {"AP", "AP50", "AP75", "APs", "dAP", "gap_closed"} <= set(results["table"][2])
    claims = claims_by_id(results["claims"])
    assert len(claims) == 7 and all({"id", "claim", "value", "pass"} <= set(c) for c in claims.values())
    raw = claims["fig1_channel_distance_raw"]
    assert raw["claim"].startswith("Fig. 1 (raw FPN output") and raw["pass"] is not None
    assert all(c["pass"] in (True, False, None) for c in claims.values())
    assert all(
        claims[k]["pass"] is not None for k in ("fig1_channel_distance", "fig2_3_gradients", "fig4_9_background_errors")
    )
    assert set(results["grad_norm"]["ratio"]) == {"detection", "distillation", "sum"}
    assert (
        all(r > 0 for r in results["grad_norm"]["ratio"].values()) and results["grad_norm"]["tested"] == "distillation"
    )
    assert claims["fig2_3_gradients"]["tested_loss"] == "distillation"
    assert len(results["channel_distance"]) == 14  # every seed: 2 baseline + 2 decoupled + 3 single-seed, 2 regions
    seeds_table = {(r["student"], r["region"]): r for r in results["channel_distance_seeds"]}
    assert seeds_table[("decoupled", "object")]["seeds"] == 2 and seeds_table[("all", "object")]["seeds"] == 1
    # statistics: baseline/decoupled have 2 seeds (decided), the single-seed comparisons are not
    lifts, vs_all = claims["defeat_lifts_student"], claims["decoupled_beats_all"]
    assert lifts["decided"] and lifts["test"] == "Welch t-test, one-sided (A > B)" and lifts["p_value"] is not None
    assert vs_all["pass"] is False and not vs_all["decided"] and "needs >= 2 seeds" in vs_all["note"]
    assert results["statistics"]["margin_ap"] == 1.0
    # the regime: evaluations during training at 50 % and 100 % of the 2-step schedule
    regime = results["regime"]
    assert (regime["teacher_steps"], regime["student_steps"]) == (4, 2)
    assert regime["teacher_params_m"] > 1 and regime["student_params_m"] > 1
    assert set(regime["baseline_ap_at"]) == {"50%", "75%", "100%"}
    assert all(v is not None for v in regime["baseline_ap_at"].values())
    assert regime["students"]["baseline"]["ap_at"]["50%"]["steps"] == [1, 1]
    assert [p["step"] for p in regime["curves"]["decoupled"]] == [1, 2]
    assert "near" in regime["plateau"] and results["sensitivity"][0]["name"] == "alpha_bg_4"
    assert {r["feature"] for r in results["channel_distance_raw"]} == {"raw"}
    assert set(results["errors"]["band_BG"]) == {"baseline", "object", "background", "decoupled"}
    assert len(results["configs"]) == 11 and results["versions"]["torch"]  # teacher + 2 + 2 + 5 students + 1 sens
    assert all(v["status"] == "ran" for v in results["stages"].values())

    text = (out / "report.md").read_text()
    for needle in (
        "preset `tiny`",
        "Indicative only",
        "## Results",
        "| **teacher** |",
        "| decoupled |",
        "## Claims",
        "Fig. 1: decoupled distils best",
        "## Figures",
        "figures/channel_distance.png",
        "## Regime",
        "figures/ap_vs_steps.png",
        "## Gradient norm",
        "ratio (detection loss)",
        "## Sensitivity to the KD weights",
        "## Error analysis",
        "config: teacher",
        "Versions:",
    ):
        assert needle in text, needle
    for fig in (
        "ap.png",
        "ap_vs_steps.png",
        "channel_distance.png",
        "channel_distance_raw.png",
        "errors_overall.png",
        "errors_triangle.png",
    ):
        assert (out / "figures" / fig).stat().st_size > 0, fig
    assert len(list((out / "figures").glob("grad_norm_*.png"))) == 3  # one map per loss
    assert "<table>" in (out / "report.html").read_text()
    run = json.loads((out / "run.json").read_text())
    assert run["failed"] == {} and len(run["stages"]) == len(stages)


@pytest.mark.slow
def test_tiny_rerun_skips_finished_stages_and_resumes_an_interrupted_one(tiny_run, capsys):
    out = tiny_run
    before = {p: p.stat().st_mtime_ns for p in out.glob("models/*/model_final.pt")}
    assert main(["reproduce", "--preset", "tiny", "--out", str(out)]) == 0
    statuses = json.loads((out / "run.json").read_text())["stages"]
    assert {v["status"] for v in statuses.values()} == {"cached"}
    assert {p: p.stat().st_mtime_ns for p in out.glob("models/*/model_final.pt")} == before

    # finished training stages keep model_final.pt only (checkpoint_last.pt is for resuming)
    assert not list(out.glob("models/*/checkpoint_last.pt")) and not list(out.glob("analysis/*/*/checkpoint_last.pt"))

    # the last student interrupted after step 1 of 2: its checkpoint at step 1, no final model, no done marker
    stage = out / "models" / "decoupled_s1"
    for name in ("done.json", "model_final.pt", "metrics.jsonl"):
        (stage / name).unlink()
    # (--resume: the folder holds the stage's config.yaml, and a new run would be refused there)
    assert main(["distill", str(stage / "config.yaml"), "--resume", "--set", "schedule.max_steps=1"]) == 0
    (stage / "model_final.pt").unlink()
    assert (stage / "checkpoint_last.pt").is_file()
    capsys.readouterr()
    assert main(["reproduce", "--preset", "tiny", "--out", str(out)]) == 0
    statuses = json.loads((out / "run.json").read_text())["stages"]
    assert statuses["decoupled_s1"]["status"] == "resumed"
    assert {v["status"] for k, v in statuses.items() if k != "decoupled_s1"} == {"cached"}
    printed = capsys.readouterr().out
    assert "resumed from" in printed and "at step 1" in printed
    assert (stage / "model_final.pt").is_file() and not (stage / "checkpoint_last.pt").exists()
    logged = [
        json.loads(line)["step"]
        for line in (stage / "metrics.jsonl").read_text().splitlines()
        if '"sec_per_step"' in line
    ]
    assert logged == [1, 2]  # step 2 ran after the resume, step 1 did not run twice
    assert load_config(stage / "config.yaml").schedule.max_steps == 2  # the stage's own config again

    # a stage rerun in a process in another state gives the same numbers: every stage sets its own seed
    ratio = json.loads((out / "results.json").read_text())["grad_norm"]["ratio"]
    shutil.rmtree(out / "analysis" / "grad_norm_sum")
    torch.manual_seed(12345)
    torch.rand(1000)
    assert main(["reproduce", "--preset", "tiny", "--out", str(out)]) == 0
    assert json.loads((out / "results.json").read_text())["grad_norm"]["ratio"] == ratio

    # a preset that asks for other settings refuses the finished stages instead of mixing results
    assert main(["reproduce", "--preset", "tiny", "--out", str(out), "--set", "student.steps=4"]) == 2
    assert "finished with other settings" in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_failed_stage_is_reported_and_dependants_skipped(tiny_run, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(tiny_run, out, ignore=shutil.ignore_patterns("*.pt"))  # the analyses fail: no usable models
    for stage in (
        "grad_norm_detection",
        "grad_norm_distillation",
        "grad_norm_sum",
        "channel_distance",
        "channel_distance_raw",
    ):
        shutil.rmtree(out / "analysis" / stage)
    (out / "models" / "teacher" / "model_final.pt").write_bytes(b"broken")
    assert main(["reproduce", "--preset", "tiny", "--out", str(out)]) == 1
    run = json.loads((out / "run.json").read_text())
    assert set(run["failed"]) == {
        "channel_distance",
        "channel_distance_raw",
        "grad_norm_detection",
        "grad_norm_distillation",
        "grad_norm_sum",
    }
    claims = claims_by_id(json.loads((out / "results.json").read_text())["claims"])
    assert [claims[k]["pass"] for k in ("fig1_channel_distance", "fig2_3_gradients", "fig1_channel_distance_raw")] == [
        None,
        None,
        None,
    ]
    results = json.loads((out / "results.json").read_text())
    assert "Stages that did not finish" in (out / "report.md").read_text()
    assert not math.isnan(results["table"][0]["AP"])
