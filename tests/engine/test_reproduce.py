"""``defeat reproduce``: the claim logic of the report on hand-made numbers, the presets, and the whole pipeline
end to end with the tiny preset (every stage's outputs, the report, the cache and the resume of a stage)."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from defeat.analysis import report
from defeat.cli.main import main
from defeat.config import load_config
from defeat.engine import reproduce as rp


# ------------------------------------------------------------------------------------------ report: statistics
def runs(*aps, **other):
    return [{"AP": ap, "AP50": ap + 0.1, "AP75": ap, "APs": ap, "APm": ap, "APl": -1.0, **other} for ap in aps]


def test_mean_std_and_gap_closed():
    assert report.mean_std([0.1, 0.2, 0.3]) == (pytest.approx(0.2), pytest.approx(0.1))
    assert report.mean_std([0.25]) == (0.25, None)
    assert report.gap_closed(0.3, 0.2, 0.4) == pytest.approx(0.5)
    assert report.gap_closed(0.3, 0.2, 0.2) is None  # no gap
    assert report.gap_closed(0.3, 0.25, 0.2) is None  # teacher worse than the baseline
    assert report.gap_closed(0.1, 0.2, 0.4) == pytest.approx(-0.5)


def test_seed_noise_is_the_larger_std_and_single_runs_borrow_the_reference():
    groups = {"baseline": report.summarize_group(runs(0.20, 0.22, 0.24)),  # std 0.02
              "decoupled": report.summarize_group(runs(0.30, 0.31, 0.32)),  # std 0.01
              "all": report.summarize_group(runs(0.27))}
    ref = report.reference_noise(groups)
    assert ref == pytest.approx(0.02)
    assert report.seed_noise(groups["baseline"], groups["decoupled"], ref) == pytest.approx(0.02)
    assert report.seed_noise(groups["all"], groups["decoupled"], ref) == pytest.approx(0.02)  # borrowed
    assert report.seed_noise(groups["all"], groups["all"], None) is None
    assert report.beyond_noise(0.03, 0.02) and not report.beyond_noise(0.02, 0.02)
    assert report.beyond_noise(0.001, None) and not report.beyond_noise(0.0, None)


def test_coco_minus_one_is_no_value():
    g = report.summarize_group(runs(0.2, 0.3))
    assert "APl" not in g and g["APm"]["mean"] == pytest.approx(0.25)
    rows = report.results_table({"AP": 0.5, "APl": -1.0}, {"baseline": runs(0.2)})
    assert rows[0]["APl"] is None and "| – |" in report.render_results_table(rows)


# ------------------------------------------------------------------------------------------ report: claims
CD_ROWS = [{"student": s, "region": r, "mean_distance": d} for s, r, d in [
    ("baseline", "object", 1.0), ("baseline", "background", 0.8), ("object", "object", 0.5),
    ("object", "background", 0.7), ("background", "object", 0.9), ("background", "background", 0.4),
    ("all", "object", 0.6), ("all", "background", 0.5), ("decoupled", "object", 0.45),
    ("decoupled", "background", 0.35)]]


def error_rows(bg_band: dict) -> list[dict]:
    rows = []
    for model, (overall, per_cat) in bg_band.items():
        rows.append({"model": model, "category": "overall", "area": "all", "band_BG": overall})
        rows.append({"model": model, "category": "overall", "area": "small", "band_BG": 9.0})  # other area: ignored
        rows += [{"model": model, "category": c, "area": "all", "band_BG": v} for c, v in per_cat.items()]
    return rows


def good_study():
    teacher = {"AP": 0.40, "AP50": 0.6}
    students = {"baseline": runs(0.20, 0.21, 0.22), "object": runs(0.27), "background": runs(0.26),
                "all": runs(0.25), "decoupled": runs(0.33, 0.34, 0.35), "defeat": runs(0.36), "fgfi": runs(0.26)}
    errors = error_rows({"object": (0.10, {"a": 0.1, "b": 0.2}), "background": (0.08, {"a": 0.05, "b": 0.3})})
    return teacher, students, CD_ROWS, 1.7, errors


def by_name(claims):
    assert [c["claim"].split(":")[0] for c in claims] == [
        "DeFeat lifts the student toward the teacher", "decoupled beats treating all regions alike",
        "background regions carry knowledge too", "Fig. 1", "Fig. 2-3", "Fig. 4-9"]
    return claims


def test_claims_all_pass_on_a_study_that_shows_them():
    claims = by_name(report.compute_claims(*good_study()))
    assert [c["pass"] for c in claims] == [True] * 6
    first = claims[0]
    assert first["value"]["dAP"] == pytest.approx(0.13)
    assert first["value"]["gap_closed"] == pytest.approx(0.13 / 0.19)
    assert first["noise"] == pytest.approx(0.01) and not first["indicative"]
    assert claims[3]["value"]["object"]["best_other"] == "object"
    assert claims[5]["value"]["categories_lower"] == 1 and claims[5]["value"]["categories"] == 2
    json.dumps(claims)  # results.json material


def test_claims_fail_within_noise_or_below_the_gap_threshold():
    teacher, students, cd, ratio, errors = good_study()
    noisy = dict(students, baseline=runs(0.15, 0.25, 0.35))  # std 0.1 > the decoupled gain
    claims = report.compute_claims(teacher, noisy, cd, ratio, errors)
    assert claims[0]["pass"] is False and claims[0]["noise"] == pytest.approx(0.1)
    assert claims[1]["pass"] is False  # decoupled - all = 0.09 < borrowed noise 0.1
    small = dict(students, decoupled=runs(0.24, 0.245, 0.25))  # beyond noise but closes < 50 % of the gap
    claim = report.compute_claims(teacher, small, cd, ratio, errors)[0]
    assert claim["value"]["dAP"] > claim["noise"] and claim["value"]["gap_closed"] < 0.5 and claim["pass"] is False
    weak_teacher = report.compute_claims({"AP": 0.2}, students, cd, ratio, errors)[0]
    assert weak_teacher["pass"] is False and "no gap" in weak_teacher["note"]


def test_background_claim_needs_a_gain_comparable_to_object_only():
    teacher, students, cd, ratio, errors = good_study()
    weak_bg = dict(students, object=runs(0.33), background=runs(0.235))  # gain 0.025 > noise, < half of 0.12
    claim = report.compute_claims(teacher, weak_bg, cd, ratio, errors)[2]
    assert claim["value"]["dAP_vs_baseline"] > claim["noise"] and claim["pass"] is False
    better_bg = dict(students, object=runs(0.24), background=runs(0.30))
    assert report.compute_claims(teacher, better_bg, cd, ratio, errors)[2]["pass"] is True


def test_figure_claims_fail_when_the_numbers_say_so():
    teacher, students, cd, _, _ = good_study()
    cd_bad = [dict(r, mean_distance=0.3) if (r["student"], r["region"]) == ("background", "background") else r
              for r in cd]  # background-only student closer to the teacher in background regions
    swapped = error_rows({"object": (0.08, {"a": 0.1}), "background": (0.10, {"a": 0.2})})
    claims = report.compute_claims(teacher, students, cd_bad, 0.9, swapped)
    assert [c["pass"] for c in claims[3:]] == [False, False, False]
    assert claims[3]["value"]["object"]["best_other"] == "object"
    assert claims[3]["value"]["background"]["best_other"] == "background"


def test_raw_neck_channel_distance_is_a_seventh_claim_only_when_given():
    teacher, students, cd, ratio, errors = good_study()
    assert len(report.compute_claims(teacher, students, cd, ratio, errors)) == 6
    raw_bad = [dict(r, mean_distance=0.1) if r["student"] == "all" else r for r in cd]  # all-regions closest
    claims = report.compute_claims(teacher, students, cd, ratio, errors, channel_distance_raw=raw_bad)
    assert len(claims) == 7 and claims[3]["pass"] is True and claims[6]["pass"] is False
    assert claims[6]["value"]["object"]["best_other"] == "all" and "raw FPN" in claims[6]["claim"]
    assert report.compute_claims(teacher, students, cd, ratio, errors, channel_distance_raw=[])[6]["pass"] is None


def test_single_seed_claims_are_indicative_and_missing_inputs_are_na():
    teacher = {"AP": 0.4}
    students = {"baseline": runs(0.2), "decoupled": runs(0.32), "all": runs(0.25)}
    claims = report.compute_claims(teacher, students)
    assert claims[0]["pass"] is True and claims[0]["noise"] is None and claims[0]["indicative"]
    assert "indicative" in claims[0]["note"]
    assert claims[1]["pass"] is True
    assert [c["pass"] for c in claims[2:]] == [None] * 4
    assert all(c["note"].startswith("not computed") for c in claims[2:])
    assert report.compute_claims(None, {})[0]["pass"] is None
    assert report.compute_claims(teacher, students, grad_norm_ratio=float("nan"))[4]["pass"] is None


def test_rendered_tables_keep_their_columns():
    teacher, students, cd, ratio, errors = good_study()
    claims = report.compute_claims(teacher, students, cd, ratio, errors)
    for text in (report.render_claims_table(claims),
                 report.render_results_table(report.results_table(teacher, students))):
        lines = text.splitlines()
        assert len({line.count("|") for line in lines}) == 1, text  # no stray '|' inside a cell
    table = report.render_results_table(report.results_table(teacher, students))
    assert "| **baseline** | baseline (no KD) | 3 | 21.0 ± 1.0 |" in table
    assert "+13.0" in table and "68 %" in table
    claims_md = report.render_claims_table(claims)
    assert "dAP=+13.00 AP" in claims_md and claims_md.count("**pass**") == 6
    page = report.markdown_to_html("# t\n\n" + claims_md + "\n\n![f](figures/a.png)", "t")
    assert page.count("<tr>") == 7 and '<img alt="f" src="figures/a.png"' in page


def test_render_report_sections():
    teacher, students, cd, ratio, errors = good_study()
    results = {"preset": "x", "indicative": True, "table": report.results_table(teacher, students),
               "claims": report.compute_claims(teacher, students, cd, ratio, errors),
               "figures": {"AP": "figures/ap.png"}, "channel_distance": cd,
               "grad_norm": {"ratio": ratio, "rows": [{"level": "all", "object_mean": 2.0, "background_mean": 1.0,
                                                       "ratio": 2.0}]},
               "errors": {"band_BG": report.error_bands(errors)},
               "stages": {"teacher": {"status": "ran", "seconds": 90.0}, "data": {"status": "ran", "seconds": 30.0}},
               "versions": {"torch": "x"}, "configs": {"teacher": "model: {}\n"}, "failed": {"errors": "boom"}}
    text = report.render_report(results)
    for needle in ("Indicative only", "## Results", "## Claims", "![AP](figures/ap.png)", "## Channel distance",
                   "## Gradient norm", "## Error analysis", "`errors`: boom", "config: teacher", "Versions: torch x",
                   "Sum of the stages' wall times: 2.0 min."):
        assert needle in text, needle


# ------------------------------------------------------------------------------------------ presets
@pytest.mark.parametrize("name", ["tiny", "quick", "full"])
def test_builtin_presets_plan(name, tmp_path):
    preset = rp.load_preset(name)
    stages = rp.build_plan(preset, tmp_path)
    names = [s.name for s in stages]
    trainings = [s for s in stages if s.kind in ("train", "distill")]
    assert names[:3] == ["data", "teacher", "eval_teacher"]
    assert names[-4:] == ["channel_distance", "channel_distance_raw", "grad_norm", "errors"]
    raw = stages[-3]
    assert raw.argv[raw.argv.index("--student-feature") + 1] == "raw" and "--student-feature" not in stages[-4].argv
    assert {s.name.rsplit("_s", 1)[0] for s in trainings} == {"teacher", *rp.STUDENT_MODES}
    for s in trainings:  # every derived config is valid and points into the run folder
        assert s.config.output.dir == str(s.folder) and s.config.data.train_annotations.startswith(str(tmp_path))
        assert (s.config.distill.teacher_checkpoint.endswith("teacher/model_final.pt")) == (s.kind == "distill")
    decoupled = next(s for s in trainings if s.name.startswith("decoupled_"))
    assert (decoupled.config.distill.feature_mode, decoupled.config.distill.proposal_mode) == ("decoupled", "none")
    full_defeat = next(s for s in trainings if s.name.startswith("defeat_"))
    assert full_defeat.config.distill.proposal_mode == "decoupled"
    teacher = trainings[0]
    if name != "tiny":  # tiny: the same backbone, for speed
        assert teacher.config.model.name != decoupled.config.model.name  # bigger teacher backbone
    if name == "full":
        assert len(trainings) == 12  # teacher + 3 baseline + 3 decoupled + 5 single-seed students
        assert len(rp.seeds_of(preset, "baseline")) >= 3 and len(rp.seeds_of(preset, "decoupled")) >= 3
    assert len({s.key for s in stages}) == len(stages)
    again = rp.build_plan(preset, tmp_path)
    assert [s.key for s in again] == [s.key for s in stages]  # deterministic keys


def test_preset_overrides_and_errors(tmp_path):
    preset = rp.load_preset("tiny", ["student.steps=5", "seeds.baseline=[3,4,5]"])
    stages = rp.build_plan(preset, tmp_path)
    assert [s.name for s in stages if s.name.startswith("baseline_")] == ["baseline_s3", "baseline_s4", "baseline_s5"]
    assert next(s for s in stages if s.name == "baseline_s3").config.schedule.max_steps == 5
    # a changed setting changes the stage's key and the keys of everything downstream of it
    base = {s.name: s.key for s in rp.build_plan(rp.load_preset("tiny"), tmp_path)}
    changed = {s.name: s.key for s in rp.build_plan(rp.load_preset("tiny", ["teacher.steps=5"]), tmp_path)}
    assert changed["data"] == base["data"] and changed["teacher"] != base["teacher"]
    assert changed["decoupled_s0"] != base["decoupled_s0"] and changed["baseline_s0"] == base["baseline_s0"]
    for args, message in [(["--preset", "nope"], "not a preset name"),
                          (["--preset", "tiny", "--set", "bogus=1"], "unknown preset key 'bogus'"),
                          (["--preset", "tiny", "--set", "students=[baseline,magic]"], "unknown student 'magic'"),
                          (["--preset", "tiny", "--set", "common.model.min_sise=3"], "unknown key 'model.min_sise'"),
                          (["--preset", "tiny", "--set", "seeds.default=[]"], "seeds.default")]:
        with pytest.raises(ValueError, match=message.replace("[", r"\[")):
            rp.load_preset(args[1], args[3:4])
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
    return out


@pytest.mark.slow
def test_tiny_pipeline_writes_every_stage_and_the_report(tiny_run):
    out = tiny_run
    preset = rp.load_preset("tiny")
    stages = rp.build_plan(preset, out)
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
    assert [r["model"] for r in results["table"]] == ["teacher", "baseline", "object", "background", "all",
                                                      "decoupled", "defeat", "fgfi"]
    assert [len(results["students"][s]) for s in ("baseline", "decoupled", "object")] == [2, 2, 1]
    assert {"AP", "AP50", "AP75", "APs", "dAP", "gap_closed"} <= set(results["table"][2])
    claims = results["claims"]
    assert len(claims) == 7 and all({"claim", "value", "pass"} <= set(c) for c in claims)
    assert claims[6]["claim"].startswith("Fig. 1 (raw FPN output") and claims[6]["pass"] is not None
    assert all(c["pass"] in (True, False, None) for c in claims)
    assert claims[3]["pass"] is not None and claims[4]["pass"] is not None and claims[5]["pass"] is not None
    assert results["grad_norm"]["ratio"] > 0 and len(results["channel_distance"]) == 10
    assert {r["feature"] for r in results["channel_distance_raw"]} == {"raw"}
    assert set(results["errors"]["band_BG"]) == {"baseline", "object", "background", "decoupled"}
    assert len(results["configs"]) == 10 and results["versions"]["torch"]  # teacher + 2 + 2 + 5 students
    assert all(v["status"] == "ran" for v in results["stages"].values())

    text = (out / "report.md").read_text()
    for needle in ("preset `tiny`", "Indicative only", "## Results", "| **teacher** |", "| decoupled |",
                   "## Claims", "Fig. 1: decoupled distils best", "## Figures", "figures/channel_distance.png",
                   "## Error analysis", "config: teacher", "Versions:"):
        assert needle in text, needle
    for fig in ("ap.png", "channel_distance.png", "channel_distance_raw.png", "errors_overall.png",
                "errors_triangle.png"):
        assert (out / "figures" / fig).stat().st_size > 0, fig
    assert len(list((out / "figures").glob("grad_norm_*.png"))) == 1
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
    assert main(["distill", str(stage / "config.yaml"), "--set", "schedule.max_steps=1"]) == 0
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
    logged = [json.loads(line)["step"] for line in (stage / "metrics.jsonl").read_text().splitlines()
              if '"sec_per_step"' in line]
    assert logged == [1, 2]  # step 2 ran after the resume, step 1 did not run twice
    assert load_config(stage / "config.yaml").schedule.max_steps == 2  # the stage's own config again

    # a preset that asks for other settings refuses the finished stages instead of mixing results
    assert main(["reproduce", "--preset", "tiny", "--out", str(out), "--set", "student.steps=3"]) == 2
    assert "finished with other settings" in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_failed_stage_is_reported_and_dependants_skipped(tiny_run, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(tiny_run, out, ignore=shutil.ignore_patterns("*.pt"))  # the analyses fail: no usable models
    for stage in ("grad_norm", "channel_distance", "channel_distance_raw"):
        shutil.rmtree(out / "analysis" / stage)
    (out / "models" / "teacher" / "model_final.pt").write_bytes(b"broken")
    assert main(["reproduce", "--preset", "tiny", "--out", str(out)]) == 1
    run = json.loads((out / "run.json").read_text())
    assert set(run["failed"]) == {"channel_distance", "channel_distance_raw", "grad_norm"}
    results = json.loads((out / "results.json").read_text())
    assert results["claims"][3]["pass"] is None and results["claims"][4]["pass"] is None
    assert results["claims"][6]["pass"] is None
    assert "Stages that did not finish" in (out / "report.md").read_text()
    assert not math.isnan(results["table"][0]["AP"])
