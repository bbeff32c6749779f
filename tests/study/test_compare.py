"""``defeat compare``: the decided/undecided logic on hand-made AP lists (pure), the methods it knows, and the
whole compare end to end on the tiny data (2 methods x 2 seeds besides the baseline), its report, and its resume
after an interruption."""

from __future__ import annotations

import json
import shutil

import pytest

from defeat.cli.main import main
from defeat.config import FEATURE_MODES, Config, config_from_dict, load_config
from defeat.study import stats
from defeat.study.compare import describe_method, known_methods, parse_methods, run_config
from defeat.study.compare_report import decide, holm, method_rows, render_markdown, rerender
from tests.conftest import interrupt_after_step_1, tiny_overrides


# ------------------------------------------------------------------------------------------ pure: the verdict
def test_a_clear_winner_is_decided():
    aps = {"baseline": [0.30, 0.31, 0.29], "decoupled": [0.40, 0.41, 0.39], "all": [0.33, 0.34, 0.32]}
    verdict = decide(aps)
    assert verdict["ranking"] == ["decoupled", "all", "baseline"]
    assert (verdict["best"], verdict["runner_up"], verdict["outcome"]) == ("decoupled", "all", "decided")
    assert verdict["test"]["p_value"] < 0.05 and verdict["test"]["diff"] == pytest.approx(0.07)
    assert "ahead of the runner-up all" in verdict["sentence"]


def test_overlapping_arms_are_undecided_never_a_silent_ranking():
    aps = {"baseline": [0.30, 0.32, 0.31], "decoupled": [0.315, 0.33, 0.30], "all": [0.29, 0.33, 0.31]}
    verdict = decide(aps)
    assert verdict["best"] == "decoupled" and verdict["outcome"] == "undecided"
    assert verdict["test"]["p_value"] >= 0.05
    assert "not distinguishable" in verdict["sentence"] and "not a result" in verdict["sentence"]


@pytest.mark.parametrize(
    ("aps", "why"),
    [
        ({"baseline": [0.30], "decoupled": [0.40]}, "needs >= 2 seeds"),  # one seed: no variance, no test
        ({"baseline": [0.30, 0.30], "decoupled": [0.30, 0.30]}, "zero variance"),  # a tie is never decided
    ],
)
def test_too_few_seeds_or_a_tie_is_undecided(aps, why):
    verdict = decide(aps)
    assert verdict["outcome"] == "undecided" and why in verdict["sentence"]


def test_the_baseline_can_win_and_a_single_arm_has_no_verdict():
    verdict = decide({"baseline": [0.40, 0.41, 0.42], "fgfi": [0.30, 0.31, 0.29]})
    assert (verdict["best"], verdict["outcome"]) == ("baseline", "decided")
    assert decide({"baseline": [0.3, 0.31], "all": []})["outcome"] == "single arm"


def test_rows_carry_the_welch_ci_and_p_against_the_baseline():
    rows = {r["method"]: r for r in method_rows({"baseline": [0.30, 0.31, 0.29], "all": [0.33, 0.35, 0.34]})}
    assert "dAP" not in rows["baseline"] and rows["baseline"]["AP_sd"] == pytest.approx(0.01)
    row = rows["all"]
    assert row["AP_per_seed"] == [0.33, 0.35, 0.34] and row["dAP"] == pytest.approx(0.04)
    assert row["dAP_ci"][0] < row["dAP"] < row["dAP_ci"][1] and row["dAP_ci"][0] > 0
    assert row["p_vs_baseline"] < 0.05 and row["beats_baseline"] is True


# ------------------------------------------------------------------------------------------ pure: multiplicity
def test_holm_matches_a_hand_computed_family():
    # sorted: a 0.01, c 0.03, b 0.04, d 0.20; m = 4 -> 4*0.01 = 0.04, 3*0.03 = 0.09, max(0.09, 2*0.04) = 0.09,
    # max(0.09, 1*0.20) = 0.20; e has no test and is not in the family
    adjusted = holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.20, "e": None})
    assert adjusted == pytest.approx({"a": 0.04, "b": 0.09, "c": 0.09, "d": 0.20, "e": None})
    assert holm({"x": 0.6, "y": 0.7}) == {"x": 1.0, "y": 1.0}  # capped at 1
    assert holm({"only": 0.03}) == {"only": 0.03}  # a family of one is the raw test


def test_a_raw_p_below_alpha_is_undecided_after_holm():
    aps = {
        "baseline": [0.30, 0.32, 0.31],
        "a": [0.33, 0.34, 0.325],
        "b": [0.32, 0.335, 0.33],
        "c": [0.30, 0.33, 0.31],
    }
    rows = {r["method"]: r for r in method_rows(aps)}
    a = rows["a"]
    assert a["p_vs_baseline"] < 0.05 and a["dAP_ci"][0] > 0  # alone, a would beat the baseline ...
    assert a["holm_family"] == 3 and a["p_vs_baseline_holm"] >= 0.05 and a["beats_baseline"] is False  # not here
    assert a["p_vs_baseline_holm"] == pytest.approx(3 * a["p_vs_baseline"])  # the smallest p of three
    alone = method_rows({"baseline": aps["baseline"], "a": aps["a"]})[1]
    assert alone["beats_baseline"] is True and alone["p_vs_baseline_holm"] == alone["p_vs_baseline"]


@pytest.mark.parametrize(
    "arm", [[0.33, 0.34, 0.325], [0.32, 0.335, 0.33], [0.30, 0.33, 0.31], [0.31, 0.36, 0.30], [0.29, 0.30, 0.28]]
)
def test_the_ci_is_the_90_percent_welch_ci_that_matches_the_one_sided_test(arm):
    base = [0.30, 0.32, 0.31]
    row = method_rows({"baseline": base, "m": arm})[1]
    assert row["dAP_ci_level"] == pytest.approx(0.90)
    assert row["dAP_ci"] == pytest.approx(stats.welch(arm, base, 0.90)["ci"])
    assert (row["dAP_ci"][0] > 0) == (row["p_vs_baseline"] < 0.05)


def test_rerender_recomputes_the_statistics_from_the_stored_aps(tmp_path):
    aps = {
        "baseline": [0.30, 0.32, 0.31],
        "a": [0.33, 0.34, 0.325],
        "b": [0.32, 0.335, 0.33],
        "c": [0.30, 0.33, 0.31],
    }
    old_rows = [dict(r, dAP_ci=[0.0, 0.0], beats_baseline=True) for r in method_rows(aps)]
    for r in old_rows:
        for key in ("p_vs_baseline_holm", "holm_family", "dAP_ci_level"):
            r.pop(key, None)
    stored = {
        "command": "defeat compare c.yaml --seeds 3",
        "config": "c.yaml",
        "student": "s",
        "teacher": "t",
        "seeds": [0, 1, 2],
        "steps": 10,
        "val_annotations": "val.json",
        "device": "cpu",
        "alpha": 0.05,
        "what": {},
        "methods": old_rows,
        "verdict": {"outcome": "decided", "sentence": "stale", "best": "a"},
        "cost": [{"method": "baseline", "sec_per_step": 1.0}],
        "latency": {"student_ms": 5.0},
        "stages": [],
    }
    (tmp_path / "results.json").write_text(json.dumps(stored))
    rerender(tmp_path)
    again = rerender(tmp_path)
    rows = {r["method"]: r for r in again["methods"]}
    assert rows["a"]["beats_baseline"] is False and rows["a"]["holm_family"] == 3
    assert again["verdict"]["sentence"] != "stale" and again["latency"] == {"student_ms": 5.0}
    assert again["command"].count("re-rendered") == 1 and "nothing retrained" in again["rendered"]
    text = (tmp_path / "report.md").read_text()
    assert "p Holm" in text and "90 % CI" in text and "undecided" in text


# ------------------------------------------------------------------------------------------ methods
def test_known_methods_follow_the_config_feature_modes():
    assert set(known_methods()) == {"baseline", "decoupled_proposals", "decoupled_auto", *FEATURE_MODES} - {"none"}
    assert parse_methods("decoupled, all,decoupled,baseline") == ["baseline", "decoupled", "all"]
    with pytest.raises(ValueError, match="unknown method 'magic' \\(known: baseline, object"):
        parse_methods("baseline,magic")
    with pytest.raises(ValueError, match="at least one distillation method"):
        parse_methods("baseline")


def test_each_method_changes_only_its_own_distill_settings(tmp_path):
    cfg = config_from_dict({"distill": {"alpha_bg": 8.0, "weights": "fixed", "proposal_mode": "decoupled"}})
    methods = ("baseline", "cwd", "decoupled_proposals", "decoupled_auto")
    runs = {m: run_config(cfg, m, 3, tmp_path / m) for m in methods}
    assert runs["baseline"].distill == Config().distill  # KD-free: a KD setting never retrains the baselines
    assert (runs["cwd"].distill.feature_mode, runs["cwd"].distill.proposal_mode) == ("cwd", "none")
    assert runs["decoupled_proposals"].distill.proposal_mode == "decoupled"
    auto = runs["decoupled_auto"].distill
    assert (auto.feature_mode, auto.proposal_mode, auto.weights, auto.alpha_bg) == ("decoupled", "none", "auto", 8.0)
    assert runs["cwd"].distill.weights == "fixed" and runs["decoupled_auto"].seed == 3
    assert describe_method("decoupled_auto") == "feature_mode=decoupled + weights=auto"
    assert describe_method("cwd") == "feature_mode=cwd"


# ------------------------------------------------------------------------------------------ end to end (tiny)
def compare_args(tiny_coco, tiny_teacher, tmp_path, *extra: str) -> list[str]:
    overrides = tiny_overrides(tiny_coco, tmp_path / "unused", steps=2) + [
        f"distill.teacher_checkpoint={tiny_teacher}",
        "distill.teacher_min_ap=0",
        "data.val_max_images=2",
        "eval.every_steps=1",
        "output.checkpoint_every=0",
    ]
    return [*(a for o in overrides for a in ("--set", o)), *extra]


@pytest.fixture(scope="module")
def tiny_compare(tiny_coco, tiny_teacher, tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    out = root / "cmp"
    args = compare_args(tiny_coco, tiny_teacher, root, "--methods", "decoupled,all", "--seeds", "2", "--out", str(out))
    assert main(["compare", *args]) == 0
    yield out, args
    shutil.rmtree(root, ignore_errors=True)


STAGES = ["teacher", "baseline_s0", "latency", "decoupled_s0", "all_s0", "baseline_s1", "decoupled_s1", "all_s1"]


def test_compare_end_to_end_writes_every_run_and_the_report(tiny_compare, capsys):
    out, _ = tiny_compare
    results = json.loads((out / "results.json").read_text())
    # after the runs: the error analysis of the baseline and the best distilled method, on seed 0
    best = next(m for m in results["verdict"]["ranking"] if m != "baseline")
    errors = ["eval_baseline_s0", f"eval_{best}_s0", "errors"]
    assert [s["name"] for s in results["stages"]] == STAGES + errors
    for stage in results["stages"]:
        name = stage["name"]
        folder = out / ("runs" if name in STAGES[1:] and name != "latency" else "") / name
        if name.startswith("eval_"):
            folder = out / "eval" / name[len("eval_") :]
        done = json.loads((folder / "done.json").read_text())
        assert done["status"] == "ran" and done["command"] == stage["command"]
    assert results["stages"][1]["command"].startswith("defeat train ") and "--resume" in results["stages"][1]["command"]
    # the same seeds for every method; the method's modes in its run config
    for method, modes in (("baseline", None), ("decoupled", ("decoupled", "none")), ("all", ("all", "none"))):
        for seed in (0, 1):
            cfg = load_config(out / "runs" / f"{method}_s{seed}" / "config.yaml")
            assert cfg.seed == seed and cfg.schedule.max_steps == 2
            if modes:
                assert (cfg.distill.feature_mode, cfg.distill.proposal_mode) == modes
    rows = {r["method"]: r for r in results["methods"]}
    assert list(rows) == ["baseline", "decoupled", "all"]
    assert all(len(r["AP_per_seed"]) == 2 and r["AP"] is not None for r in rows.values())
    assert "dAP_ci" in rows["decoupled"] and "p_vs_baseline" in rows["all"]
    assert results["verdict"]["outcome"] in ("decided", "undecided")
    cost = {c["method"]: c for c in results["cost"]}
    assert all(c["sec_per_step"] > 0 and c["peak_memory_gib"] > 0 for c in cost.values())
    lat = results["latency"]
    assert lat["student_ms"] > 0 and lat["teacher_ms"] > 0 and lat["images"] == 2
    assert lat["student_onnx_ms"] is None or lat["student_onnx_ms"] > 0, lat["onnx_note"]
    assert not (out / "latency" / "student.onnx").exists()
    assert [p["step"] for p in results["curves"]["decoupled"]] == [1, 2]  # AP against steps (eval.every_steps=1)
    # a one-step teacher is not ahead of the baseline: the compare warns and goes on
    assert results["warnings"] and "not ahead of the baseline" in results["warnings"][0]
    report = (out / "report.md").read_text()
    for heading in ("## Verdict", "## AP per method", "## Cost", "## AP against latency", "## AP against steps"):
        assert heading in report
    assert "ONNX Runtime" in report and (out / "report.html").read_text().startswith("<!DOCTYPE html>")
    assert results["errors"]["models"] == ["baseline", best] and results["errors"]["seed"] == 0
    for curve in results["errors"]["curves"].values():  # each curve forgives more than the one before it
        values = [curve[k] for k in ("C75", "C50", "Loc", "Sim", "Oth", "BG", "FN")]
        assert values == sorted(values) and values[-1] == 1.0
    assert "## Where the errors are" in report and f"| {best} | " in report
    assert set(results["figures"]) == {"ap.png", "ap_latency.png", "ap_steps.png", "errors_overall.png"}
    assert all((out / "figures" / f).stat().st_size > 0 for f in results["figures"])
    assert not list(out.glob("runs/*/checkpoint_last.pt"))


#: what differs from one run to the next: times, memory of the process, latency
TIMINGS = {"seconds", "sec_per_step", "peak_memory_gib", "latency"}


def without_timings(results: dict, out) -> dict:
    """``results.json`` without the timing fields, with the run folder written as <out>."""

    def strip(tree):
        if isinstance(tree, dict):
            return {k: strip(v) for k, v in tree.items() if k not in TIMINGS}
        if isinstance(tree, list):
            return [strip(v) for v in tree]
        return tree

    return json.loads(json.dumps(strip(results)).replace(str(out), "<out>"))


@pytest.mark.slow  # two whole compares (13 s): the fast tier keeps the runner's fake-stage tests
def test_jobs_2_gives_the_serial_results_with_the_latency_alone(tiny_coco, tiny_teacher, tmp_path, capsys):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the serial run with the threads of each run side by side: the same arithmetic
    try:
        runs = {}
        for jobs in (1, 2):
            out = tmp_path / f"jobs{jobs}"
            args = compare_args(tiny_coco, tiny_teacher, tmp_path, "--seeds", "2", "--out", str(out))
            assert main(["compare", *args, "--jobs", str(jobs)]) == 0
            runs[jobs] = without_timings(json.loads((out / "results.json").read_text()), out)
    finally:
        torch.set_num_threads(threads)
    assert runs[2] == runs[1] and runs[2]["methods"][0]["AP"] is not None
    assert [s["status"] for s in runs[2]["stages"]] == ["ran"] * 9  # 6 runs, 2 evaluations, the error analysis
    printed = [x for x in capsys.readouterr().out.splitlines() if x.startswith("[compare]")]
    parallel = printed[next(i for i, x in enumerate(printed) if "running up to 2 stages at once" in x) :]
    assert "1 torch thread(s) each" in parallel[0]
    # the latency was measured with nothing beside it: every run started before it had ended
    at = next(i for i, x in enumerate(parallel) if x.startswith("[compare] start latency"))
    started = sum(x.startswith("[compare] start ") for x in parallel[:at])
    ended = sum(" ran in " in x for x in parallel[:at])
    assert started == ended >= 1 and " ran in " in parallel[at + 1] and "latency" in parallel[at + 1]
    out = tmp_path / "jobs2"
    for name in ("baseline_s0", "decoupled_s1"):  # each run's output in its folder's stage.log
        assert "stopped" not in (log := (out / "runs" / name / "stage.log").read_text()) and name in log
    assert not (out / "teacher" / "stage.log").exists()  # the teacher ran first, in the compare's process


def test_compare_resumes_an_interrupted_run_and_skips_finished_ones(tiny_compare, capsys):
    out, args = tiny_compare
    finals = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/model_final.pt")}
    # the last run interrupted after step 1 of 2: its checkpoint at step 1, no final model, no done marker
    stage = out / "runs" / "all_s1"
    for name in ("done.json", "model_final.pt", "metrics_final.json", "metrics.jsonl"):
        (stage / name).unlink()
    interrupt_after_step_1(stage)
    (stage / "model_final.pt").unlink()
    (stage / "metrics_final.json").unlink()
    assert (stage / "checkpoint_last.pt").is_file()
    capsys.readouterr()
    assert main(["compare", *args]) == 0
    statuses = {s["name"]: s["status"] for s in json.loads((out / "results.json").read_text())["stages"]}
    assert statuses.pop("all_s1") == "resumed" and set(statuses.values()) == {"cached"}
    assert "resumed from" in capsys.readouterr().out
    logged = [json.loads(x)["step"] for x in (stage / "metrics.jsonl").read_text().splitlines() if "sec_per_step" in x]
    assert logged == [1, 2]  # step 2 ran after the resume, step 1 did not run twice
    # other settings in the same folder: refused (not mixed with the finished runs)
    assert main(["compare", *args, "--set", "schedule.max_steps=3"]) == 2
    assert "was made with other settings than config" in capsys.readouterr().err
    assert all(p.stat().st_mtime_ns == t for p, t in finals.items() if p.parent != stage)


def test_report_renders_an_undecided_verdict():
    aps = {"baseline": [0.30, 0.32], "decoupled": [0.31, 0.315]}
    results = {
        "config": "c.yaml",
        "student": "s",
        "teacher": "t",
        "seeds": [0, 1],
        "steps": 10,
        "val_annotations": "val.json",
        "device": "cpu",
        "alpha": 0.05,
        "what": {"baseline": "the student alone", "decoupled": "feature_mode=decoupled"},
        "methods": method_rows(aps),
        "verdict": decide(aps),
        "cost": [{"method": "baseline", "sec_per_step": 1.0}, {"method": "decoupled", "sec_per_step": 1.5}],
        "stages": [],
    }
    text = render_markdown(results)
    assert "**undecided**" in text and "1.50×" in text and "(reference)" in text


@pytest.mark.slow  # a compare stopped and resumed (3 s): the fast tier keeps the resume of a killed run
def test_a_compare_killed_by_sigterm_resumes_where_it_stopped(tiny_coco, tiny_teacher, tmp_path, capsys, monkeypatch):
    """A real SIGTERM in the middle of a distillation run: the CLI stops with 143 and prints the command that
    continues; that command resumes the run from its checkpoint and reruns no finished stage."""
    import os
    import signal

    from defeat.distill.base import TeacherStudentModule

    out = tmp_path / "cmp"
    args = ["compare", *compare_args(tiny_coco, tiny_teacher, tmp_path, "--seeds", "1", "--out", str(out))]
    real = TeacherStudentModule.before_step

    def kill_at_first_step(self, step):
        if step == 0:
            os.kill(os.getpid(), signal.SIGTERM)  # handled by the training loop: it stops after this step
        return real(self, step)

    monkeypatch.setattr(TeacherStudentModule, "before_step", kill_at_first_step)
    assert main(args) == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert "stopped by SIGTERM at step 1" in err and "resume with: defeat compare" in err
    stage = out / "runs" / "decoupled_s0"
    assert (stage / "checkpoint_last.pt").is_file() and not (stage / "done.json").exists()
    finished = {p: p.stat().st_mtime_ns for p in out.glob("*/done.json")} | {
        p: p.stat().st_mtime_ns for p in out.glob("runs/baseline_s0/*.pt")
    }
    monkeypatch.setattr(TeacherStudentModule, "before_step", real)
    assert main(args) == 0
    statuses = {s["name"]: s["status"] for s in json.loads((out / "results.json").read_text())["stages"]}
    assert statuses == {
        "teacher": "cached",
        "baseline_s0": "cached",
        "latency": "cached",
        "decoupled_s0": "resumed",
        **{name: "ran" for name in ("eval_baseline_s0", "eval_decoupled_s0", "errors")},  # after the last run
    }
    assert all(p.stat().st_mtime_ns == t for p, t in finished.items())
    logged = [json.loads(x)["step"] for x in (stage / "metrics.jsonl").read_text().splitlines() if "sec_per_step" in x]
    assert logged == [1, 2]


@pytest.mark.slow  # a whole compare with a failing run (3 s)
def test_a_failed_run_is_reported_and_the_others_go_on(tiny_coco, tiny_teacher, tmp_path, capsys, monkeypatch):
    import defeat.study.compare as compare_module

    real = compare_module.run_stage

    def fail_decoupled(stage):
        if stage.name == "decoupled_s0":
            raise FloatingPointError("loss is nan at step 1")
        return real(stage)

    monkeypatch.setattr(compare_module, "run_stage", fail_decoupled)
    out = tmp_path / "cmp"
    args = compare_args(tiny_coco, tiny_teacher, tmp_path, "--methods", "decoupled,all", "--seeds", "1")
    assert main(["compare", *args, "--out", str(out)]) == 1  # the report is written; the exit code says a run failed
    results = json.loads((out / "results.json").read_text())
    stages = {s["name"]: s for s in results["stages"]}
    assert stages["decoupled_s0"]["status"] == "failed" and "loss is nan" in stages["decoupled_s0"]["note"]
    assert stages["all_s0"]["status"] == "ran"
    rows = {r["method"]: r for r in results["methods"]}
    assert rows["decoupled"]["AP"] is None and rows["decoupled"]["AP_per_seed"] == []
    assert results["verdict"]["outcome"] == "undecided" and "needs >= 2 seeds" in results["verdict"]["sentence"]
    report = (out / "report.md").read_text()
    assert "failed (FloatingPointError: loss is nan at step 1)" in report
