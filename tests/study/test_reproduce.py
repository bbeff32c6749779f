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
from tests.conftest import interrupt_after_step_1


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
    # the raw FPN output: channel by channel, or through each student's least-squares map when the FPN widths differ
    # (full: the small teacher's 128 channels, the tiny student's 64)
    expected = "probe" if name == "full" else "raw"
    assert raw.params["student_feature"] == expected and by_name["channel_distance"].params["student_feature"] == "auto"
    assert f"--student-feature {expected}" in raw.command and raw.command.startswith("defeat analyze channel-distance ")
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
    extra = {f"sens_{e['name']}" for e in preset.get("sensitivity", [])} | {"baseline_x2"}
    assert students - {"teacher", *STUDENT_MODES} == extra
    for s in trainings:  # every derived config is valid and points into the run folder
        assert s.config.output.dir == str(s.folder) and s.config.data.train_annotations.startswith(str(tmp_path))
        assert (s.config.distill.teacher_checkpoint.endswith("teacher/model_final.pt")) == (s.kind == "distill")
        # baseline (also on 2S steps) and decoupled are evaluated during training, at quarters (or halves)
        curve = s.name.rsplit("_s", 1)[0] in ("baseline", "decoupled", "baseline_x2")
        points = preset["regime"]["eval_points"]
        assert s.config.eval.every_steps == (s.steps // points if curve else 0), s.name
    # the doubling test: the baseline again on 2S steps, the same schedule shape and seeds, after the students
    doubled = [s for s in trainings if s.name.startswith("baseline_x2_")]
    assert [s.name for s in doubled] == [f"baseline_x2_s{seed}" for seed in seeds_of(preset, "baseline")]
    for s in doubled:
        base = by_name[s.name.replace("baseline_x2", "baseline")]
        assert s.kind == "train" and s.deps == ["data"] and s.config.seed == base.config.seed
        assert s.config.schedule.max_steps == 2 * base.config.schedule.max_steps
        assert s.config.schedule.warmup_steps == 2 * base.config.schedule.warmup_steps
        assert s.config.schedule.policy == base.config.schedule.policy and s.config.model == base.config.model
        assert by_name[f"eval_{s.name}"].deps == [s.name]
    assert max(names.index(s.name) for s in trainings if s.name.rsplit("_s", 1)[0] in STUDENT_MODES) < min(
        names.index(s.name) for s in doubled
    )
    decoupled = next(s for s in trainings if s.name.startswith("decoupled_"))
    assert (decoupled.config.distill.feature_mode, decoupled.config.distill.proposal_mode) == ("decoupled", "none")
    assert (decoupled.config.distill.alpha_obj, decoupled.config.distill.alpha_bg) == (4.0, 16.0)  # the authors'
    full_defeat = next(s for s in trainings if s.name.startswith("defeat_"))
    assert full_defeat.config.distill.proposal_mode == "decoupled"
    teacher = trainings[0]
    if name != "tiny":  # tiny: the same backbone, for speed
        assert teacher.config.model.name != decoupled.config.model.name  # bigger teacher backbone
    if name == "full":
        tested = ("baseline", "object", "background", "all", "decoupled")  # the claims' arms: 3 seeds each
        assert all(len(seeds_of(preset, s)) >= 3 for s in tested)
        assert len([s for s in trainings if not s.name.startswith(("teacher", "sens_", "baseline_x2"))]) == 17
        # the regime: the teacher ahead by capacity alone, on the students' schedule
        assert teacher.steps == decoupled.steps and preset["regime"]["plateau_gain_max"] <= 0.1
        assert preset["jobs"] == 2 and preset["budget_minutes"] <= 150
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
    assert [s.name for s in stages if s.name.startswith("baseline_s")] == ["baseline_s3", "baseline_s4", "baseline_s5"]
    assert next(s for s in stages if s.name == "baseline_s3").config.schedule.max_steps == 6
    doubled = [s for s in stages if s.name.startswith("baseline_x2_")]  # default: the baseline's seeds
    assert [(s.name, s.steps) for s in doubled] == [
        ("baseline_x2_s3", 12),
        ("baseline_x2_s4", 12),
        ("baseline_x2_s5", 12),
    ]
    only = build_plan(load_preset("tiny", ["regime.plateau_seeds=[1]"]), tmp_path)
    assert [s.name for s in only if s.name.startswith("baseline_x2_")] == ["baseline_x2_s1"]
    none = build_plan(load_preset("tiny", ["regime.plateau_seeds=[]"]), tmp_path)
    assert not [s for s in none if "baseline_x2" in s.name]
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
        (["--preset", "tiny", "--set", "regime.plateau_seeds=[7]"], "seed 7 is not a baseline seed"),
        (["--preset", "tiny", "--set", "regime.teacher_lead_min_ap=-1"], "regime.teacher_lead_min_ap"),
        (["--preset", "tiny", "--set", "claims.assumed_sd_ap=0"], "claims.assumed_sd_ap: expected a number > 0"),
        (["--preset", "tiny", "--set", "claims.effect_ap={magic: 1}"], "claims.effect_ap.magic: not a claim"),
        (["--preset", "tiny", "--set", "claims.power_target=1.5"], "claims.power_target"),
        (["--preset", "tiny", "--set", "claims.distance_effect=null"], "go together"),
        (["--preset", "tiny", "--set", "claims.grad_levels=P2"], "claims.grad_levels"),
        (["--preset", "tiny", "--set", "claims.seeds_per_arm=2"], "pre-registers 2 seeds per arm but object has 1"),
        (["--preset", "full", "--set", "seeds.all=[0,1]"], "pre-registers 3 seeds per arm but all has 2"),
        (["--preset", "tiny", "--set", "jobs=0"], "jobs: must be an integer >= 1"),
    ]:
        with pytest.raises(ValueError, match=message.replace("[", r"\[")):
            load_preset(args[1], args[3:4])
    assert main(["reproduce", "--preset", "tiny", "--set", "bogus=1", "--out", str(tmp_path / "x")]) == 2
    assert main(["reproduce", "--preset", "tiny", "--jobs", "0", "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


def test_dry_run_prints_the_plan(tmp_path, capsys):
    assert main(["reproduce", "--preset", "full", "--out", str(tmp_path / "full"), "--dry-run"]) == 0
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "training steps to run" in text and "budget 150 min" in text and "baseline_x2_s2" in text
    assert "with 2 at once" in text  # the preset's jobs: 2, estimated as the runner schedules them
    # every claim's seeds, effect / margin and power at the pre-registered sd (1.0 AP, n = 3)
    assert "| defeat_lifts_student | decoupled > baseline | 3 vs 3 | +3.00 | 1.00 | 0.87 | 3 for 0.8 |" in text
    assert "| background_carries_knowledge | background ≈ object | 3 vs 3 | ±1.00 (true Δ 0) | 1.00 | 0.02 |" in text
    assert not (tmp_path / "full").exists()
    assert main(["reproduce", "--preset", "tiny", "--out", str(tmp_path / "tiny"), "--plan"]) == 0  # the alias
    captured = capsys.readouterr()
    assert "seeds per arm for the target" in captured.out + captured.err and not (tmp_path / "tiny").exists()


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
    keys = {"id", "claim", "value", "pass", "outcome", "seeds", "power", "power_target"}
    assert len(claims) == 6 and all(keys <= set(c) for c in claims.values())
    assert all(c["outcome"] in ("pass", "fail", "undecidable", None) for c in claims.values())
    fig1 = claims["fig1_channel_distance"]  # decided on the raw FPN output, the adapter output beside it
    assert "raw FPN" in fig1["claim"] and fig1["outcome"] is not None and fig1["value"]["adapter_output"]
    assert all(claims[k]["outcome"] is not None for k in ("fig2_3_gradients", "fig4_9_background_errors"))
    assert set(results["grad_norm"]["ratio"]) == {"detection", "distillation", "sum"}
    assert (
        all(r > 0 for r in results["grad_norm"]["ratio"].values()) and results["grad_norm"]["tested"] == "distillation"
    )
    grads = claims["fig2_3_gradients"]
    assert grads["tested_loss"] == "distillation" and grads["value"]["images"] == 2
    assert set(grads["value"]["control"]) == {"detection", "sum"} and "P2" in grads["value"]["levels"]
    assert len(results["grad_norm"]["per_image"]["distillation"]) == 2 * 5  # 2 images x 5 levels
    assert len(results["channel_distance"]) == 14  # every seed: 2 baseline + 2 decoupled + 3 single-seed, 2 regions
    seeds_table = {(r["student"], r["region"]): r for r in results["channel_distance_seeds"]}
    assert seeds_table[("decoupled", "object")]["seeds"] == 2 and seeds_table[("all", "object")]["seeds"] == 1
    # statistics: baseline/decoupled have 2 seeds (a test, with its power), the single-seed comparisons none
    lifts, vs_all = claims["defeat_lifts_student"], claims["decoupled_beats_all"]
    assert lifts["test"] == "Welch t-test, one-sided (A > B)" and lifts["p_value"] is not None
    assert lifts["seeds"] == {"decoupled": 2, "baseline": 2} and 0 < lifts["power"] < 0.8
    # the tiny teacher is the students' own R18 on a longer schedule: out of the regime, undecidable
    assert lifts["outcome"] == "undecidable" and "out of the paper's regime" in lifts["note"]
    assert vs_all["outcome"] == "undecidable" and vs_all["power"] == 0.0 and "needs >= 2 seeds" in vs_all["note"]
    assert results["statistics"]["margin_ap"] == 1.0 and results["statistics"]["assumed_sd_ap"] == 1.9
    assert [r["test"] for r in results["statistics"]["power_plan"]][:2] == ["decoupled > baseline", "decoupled > all"]
    # the regime: evaluations during training at 50 % and 100 % of the 2-step schedule, the doubling test
    regime = results["regime"]
    assert (regime["teacher_steps"], regime["student_steps"], regime["equal_schedule"]) == (4, 2, False)
    assert regime["teacher_params_m"] > 1 and regime["student_params_m"] > 1 and regime["teacher_bigger"] is False
    assert set(regime["baseline_ap_at"]) == {"50%", "75%", "100%"}
    assert all(v is not None for v in regime["baseline_ap_at"].values())
    assert regime["students"]["baseline"]["ap_at"]["50%"]["steps"] == [1, 1]
    assert [p["step"] for p in regime["curves"]["decoupled"]] == [1, 2]
    assert [p["step"] for p in regime["curves"]["baseline_x2"]] == [2, 4]  # 2S = 4 steps, evaluated at halves
    plateau = regime["plateau"]
    assert plateau["seeds"] == [0, 1] and len(plateau["values_s"]) == len(plateau["values_2s"]) == 2
    ap_2s = [json.loads((out / "eval" / f"baseline_x2_s{k}" / "metrics.json").read_text())["AP"] for k in (0, 1)]
    assert plateau["values_2s"] == pytest.approx(ap_2s) and regime["plateau_ap_2s"] == pytest.approx(sum(ap_2s) / 2)
    assert regime["plateau_gain_max"] == 0.10 and "plateau_gain" in regime and "teacher_lead_ap" in regime
    assert regime["in_regime"] is False and {c["name"] for c in regime["conditions"]} >= {"equal_schedule"}
    assert results["sensitivity"][0]["name"] == "alpha_bg_4"
    assert {r["feature"] for r in results["channel_distance_raw"]} == {"raw"}
    assert set(results["errors"]["band_BG"]) == {"baseline", "object", "background", "decoupled"}
    # teacher + 2 + 2 + 5 students + 2 baselines on 2S steps + 1 sens
    assert len(results["configs"]) == 13 and results["versions"]["torch"]
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
        "Doubling test (baseline, 2 and 4 steps",
        "| equal_schedule |",
        "In the regime: **no**",
        "Pre-registered power",
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
def test_tiny_with_jobs_2_writes_the_serial_results(tiny_run, tmp_path, monkeypatch):
    """``--jobs 2``: the same results.json as the serial run apart from the timings (the stage processes get this
    process's thread count here, so that the arithmetic is the same), every stage's output in its stage.log."""
    import defeat.study.runner as runner_module

    monkeypatch.setattr(runner_module, "threads_per_stage", lambda jobs, threads=None: torch.get_num_threads())
    out = tmp_path / "jobs2"
    assert main(["reproduce", "--preset", "tiny", "--out", str(out), "--jobs", "2"]) == 0
    timings = {"seconds", "sec_per_step", "wall_seconds", "git_commit"}

    def comparable(run):
        def strip(tree):
            if isinstance(tree, dict):
                return {k: strip(v) for k, v in tree.items() if k not in timings}
            return [strip(v) for v in tree] if isinstance(tree, list) else tree

        return strip(json.loads((run / "results.json").read_text().replace(str(run), "<run>")))

    assert comparable(out) == comparable(tiny_run)
    assert json.loads((out / "run.json").read_text())["jobs"] == 2
    assert "--- " in (out / "models" / "decoupled_s1" / "stage.log").read_text()


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
    interrupt_after_step_1(stage)
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
    assert [claims[k]["outcome"] for k in ("fig1_channel_distance", "fig2_3_gradients")] == [None, None]
    results = json.loads((out / "results.json").read_text())
    assert "Stages that did not finish" in (out / "report.md").read_text()
    assert not math.isnan(results["table"][0]["AP"])
