"""README's results table against the JSON records it cites: every number of a row's result must be one that the
row's record gives (rounded as printed), so a re-recorded JSON or an edited README that drift apart fail here.

Each row of the table has a checker below (keyed by the start of its "what" cell) that computes, from the JSON,
the strings the row must contain; the numbers of the "result" cell must all come from those strings. A new row
needs a checker (the test says so), a row whose record changed needs its README text updated.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
NUMBER = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?(?:e-\d+)?")


def load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def readme_rows() -> dict[str, tuple[str, str]]:
    """The results table of README.md: what -> (result, record)."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Results") :]
    section = section[: section.index("\n## ", 1)]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] not in ("what", "---"):
            rows[cells[0]] = (cells[1], cells[2])
    return rows


def results_intro() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Results") :]
    return section[: section.index("| what |")]


# ------------------------------------------------------------------------------------------ formatting
def ap(x: float) -> str:
    return f"{100 * x:.1f}"


def signed(x: float, digits: int = 1) -> str:
    return f"{x:+.{digits}f}".replace("-", "−")


def ci(bounds: list[float], scale: float = 100, digits: int = 1) -> str:
    return f"[{signed(scale * bounds[0], digits)}, {signed(scale * bounds[1], digits)}]"


def level(test: dict) -> str:
    return f"{round(100 * test['ci_level'])} %"


# ------------------------------------------------------------------------------------------ one checker per row
def _full(name: str = "reproduce_full/results.json") -> tuple[dict, dict, dict]:
    r = load(name)
    return r, {row["model"]: row for row in r["table"]}, {c["id"]: c for c in r["claims"]}


def outcome(claim_or_test: dict) -> str:
    """How the README words a pre-registered outcome."""
    o = claim_or_test["outcome"]
    if o == "undecidable":
        return f"**undecidable** at this budget (power {claim_or_test['power']:.2f})"
    return {"pass": "**passes**", "fail": "**fails**", None: "n/a"}[o]


def mean_sd(row: dict) -> str:
    return f"{ap(row['AP'])} ± {ap(row['AP_std'])}" if row["AP_std"] is not None else f"{ap(row['AP'])} (1 seed)"


def welch(t: dict) -> str:
    return f"{signed(100 * t['diff'])} AP, {level(t)} CI {ci(t['ci'])}, p = {t['p_value']:.2g}"


def row_defeat() -> list[str]:
    _, table, claims = _full()
    c = claims["defeat_lifts_student"]
    return [
        f"**{mean_sd(table['decoupled'])}** vs {mean_sd(table['baseline'])} AP (teacher {ap(table['teacher']['AP'])})",
        welch(c["tests"][0]),
        outcome(c),
    ]


def row_regime() -> list[str]:
    r, _, _ = _full()
    g = r["regime"]
    return [
        f"teacher {g['teacher_params_m']:.2f} M vs student {g['student_params_m']:.2f} M parameters, "
        f"{g['teacher_steps']:,} steps each",
        f"teacher lead {100 * g['teacher_lead_ap']:.1f} AP",
        f"baseline {ap(g['plateau_ap_s'])} → {ap(g['plateau_ap_2s'])} AP at twice the steps "
        f"({signed(100 * g['plateau_gain'])} %)",
        "distilled students below the teacher"
        if g["students_below_teacher"]
        else "a distilled student not below the teacher",
        "**in the regime**" if g["in_regime"] else "**not in the regime**",
    ]


def row_others() -> list[str]:
    _, table, _ = _full()
    names = {
        "object-only": "object",
        "background-only": "background",
        "all regions": "all",
        "FGFI": "fgfi",
        "decoupled + proposals": "defeat",
    }
    return [f"{label} {mean_sd(table[m])}" for label, m in names.items()]


def row_beats_all() -> list[str]:
    _, _, claims = _full()
    c = claims["decoupled_beats_all"]
    return [welch(c["tests"][0]), outcome(c)]


def row_background() -> list[str]:
    _, _, claims = _full()
    c = claims["background_carries_knowledge"]
    beats = next(t for t in c["tests"] if t["margin"] is None)
    tost = next(t for t in c["tests"] if t["margin"] is not None)
    return [
        f"vs the baseline {welch(beats)}",
        f"vs object-only {signed(100 * tost['diff'])} AP, {level(tost)} CI {ci(tost['ci'])} "
        f"(margin ±{100 * tost['margin']:.0f})",
        outcome(c),
    ]


def row_fig1() -> list[str]:
    _, _, claims = _full()
    c = claims["fig1_channel_distance"]
    v = c["value"]
    return [
        f"object {v['object']['decoupled']:.3f} vs {v['object']['best_other_distance']:.3f} "
        f"({v['object']['best_other']})",
        f"background {v['background']['decoupled']:.3f} vs {v['background']['best_other_distance']:.3f} "
        f"({v['background']['best_other']})",
        outcome(c),
    ]


def row_claims() -> list[str]:
    r, _, _ = _full()
    counts = {o: sum(c["outcome"] == o for c in r["claims"]) for o in ("pass", "fail", "undecidable")}
    return [f"{counts['pass']} pass, {counts['fail']} fail, {counts['undecidable']} undecidable of {len(r['claims'])}"]


def row_previous() -> list[str]:
    _, table, _ = _full("reproduce_full_r34/results.json")
    dec, base = table["decoupled"], table["baseline"]
    return [f"decoupled {mean_sd(dec)} vs baseline {mean_sd(base)} AP", f"teacher {ap(table['teacher']['AP'])}"]


def row_fast_path() -> list[str]:
    s = load("train_speed.json")
    x = s["speedup_vs_fp32_plain"]
    return [
        f"student step {x['student']:.2f}×",
        f"DeFeat step {x['distill_step']:.2f}×",
        f"evaluation {s['eval_speedup_vs_fp32']:.2f}×",
    ]


def row_fast_path_ap() -> list[str]:
    s = load("train_speed_ap24.json")
    t, multi = s["ap_equivalence"], s["multiplicity"]
    looks = round(t["alpha"] / multi["bonferroni_alpha"])
    out = [
        f"{signed(t['diff'], 2)} AP",
        f"{level(t)} CI {ci(t['ci'], 1, 2)}",
        ("equivalent" if t["pass"] else "not shown equivalent") + f" within ±{t['margin']:.0f} AP",
    ]
    if not multi["bonferroni_pass"]:
        out.append(f"not at α/{looks} for {('two', 'three', 'four')[looks - 2]} looks")
    return out


def row_overhead() -> list[str]:
    d = load("distill_overhead.json")
    r = d["timing_wall"]["ratios"]["step_ratio"]
    return [
        f"`step_ratio` {r['median']:.3f}",
        f"quartiles {r['q25']:.3f}–{r['q75']:.3f} over {len(r['per_repeat'])} repeats",
        f"(goal ≤ {d['goals']['step_ratio']})",
        f"`memory_ratio` {d['memory_ratio']:.2f} (goal ≤ {d['goals']['memory_ratio']})",
    ]


def row_compare() -> list[str]:
    r = load("compare_embedded/results.json")
    rows = {row["method"]: row for row in r["methods"]}
    base = rows.pop("baseline")
    best = max(rows, key=lambda m: rows[m]["AP"])
    cost = {c["method"]: c["sec_per_step"] for c in r["cost"]}
    ratios = [cost[m] / cost["baseline"] for m in rows]
    ahead = [m for m, row in rows.items() if row["beats_baseline"]]
    family = rows[best]["holm_family"]
    lat = r["latency"]
    out = [
        f"baseline {ap(base['AP'])} ± {ap(base['AP_sd'])} AP",
        *(f"{m} {ap(row['AP'])} ± {ap(row['AP_sd'])}" for m, row in rows.items()),
        f"after Holm over the {family} methods",
        f"best: {best} {signed(100 * rows[best]['dAP'])} AP, {round(100 * rows[best]['dAP_ci_level'])} % CI "
        f"{ci(rows[best]['dAP_ci'])}, adjusted p = {rows[best]['p_vs_baseline_holm']:.2g}",
        f"best vs runner-up **{r['verdict']['outcome']}** (p = {r['verdict']['test']['p_value']:.1g})",
        f"{min(ratios):.2f}–{max(ratios):.2f}× the baseline's s/step",
        f"{lat['student_ms']:.1f} ms eager, {lat['student_onnx_ms']:.1f} ms ONNX Runtime vs the teacher's "
        f"{lat['teacher_ms']:.1f} ms",
    ]
    if ahead:
        return out + [f"{m} **beats** it" for m in ahead] + [f"the other {family - len(ahead)} **undecided**"]
    return out + ["none **beats** the baseline", f"all {family} **undecided**"]


def row_yolo() -> list[str]:
    d = load("yolo_distill.json")
    arms, test, plateau = d["arms"], d["defeat_vs_ultralytics_test"], d["plateau"]
    names = {"baseline": "baseline", "ultralytics": "Ultralytics' distillation", "decoupled": "DeFeat decoupled"}
    distilled = [a for a in arms if a != "baseline"]
    ahead = [a for a in distilled if arms[a]["beats_baseline"]]
    out = [
        *(f"{names.get(a, a)} {ap(r['coco_AP']['mean'])} ± {ap(r['coco_AP']['sd'])}" for a, r in arms.items()),
        f"(teacher {ap(d['teacher']['coco_AP'])})",
        f"DeFeat vs Ultralytics' {signed(100 * test['diff'])} AP, {level(test)} CI {ci(test['ci'])}, "
        f"p = {test['p_value']:.2g}: **{d['defeat_vs_ultralytics_outcome']}**",
        f"after Holm over the {arms[distilled[0]]['holm_family']} distilled arms",
        f"AP(2S) {ap(plateau['ap_2S'])} vs AP(S) {ap(plateau['ap_S'])} ({signed(100 * plateau['change'])} %)",
        "**reached**" if plateau["reached"] else "**not reached**",
        *(f"{names.get(a, a)} {arms[a]['step_time_ratio']:.2f}×" for a in distilled),
    ]
    if ahead:
        return out + [f"{names.get(a, a)} **beats** it" for a in ahead]
    return out + ["none **beats** the baseline"]


def row_contention() -> list[str]:
    d, busy = load("contention.json"), load("contention_busy_cores.json")["variants"]
    r18, tiny = d["models"]["faster_rcnn_r18_fpn"], d["models"]["faster_rcnn_tiny_fpn"]
    fair, goal = re.search(r"fair share on 2 cores: ([\d.]+)x; goal <= ([\d.]+)x", d["what"]).groups()
    return [
        f"R18-FPN {r18['toolkit_default']['slowdown']:.1f}× its step time alone with the toolkit's OpenMP default, "
        f"{r18['openmp_default']['slowdown']:.1f}× with libgomp's",
        f"tiny detector {tiny['toolkit_default']['slowdown']:.1f}× and {tiny['openmp_default']['slowdown']:.1f}×",
        f"(fair share {fair}×, goal ≤ {goal}×)",
        f"on busy cores the tiny detector {busy['toolkit_default']['slowdown']:.1f}× and "
        f"{busy['openmp_default']['slowdown']:.1f}×",
    ]


def row_errors() -> list[str]:
    d = load("error_analysis_speed.json")
    large, small = d["sets"]["large"], d["sets"]["small"]

    def ours(s: dict) -> float:
        runs = s["ours"]["same_figures"]
        return sum(x["wall_s"] for x in runs) / len(runs)

    return [
        f"{large['speedup_same_figures']:.1f}× faster on {large['data']['images']:,} generated images "
        f"({large['reference']['wall_s']:,.0f} s vs {ours(large):.1f} s)",
        f"{small['speedup_same_figures']:.1f}× on {small['data']['images']} COCO images "
        f"({small['reference']['wall_s']:.1f} s vs {ours(small):.1f} s)",
        f"arrays equal to {d['max_abs_diff']:.1e}",
    ]


CHECKERS: dict[str, Callable[[], list[str]]] = {
    # start of the row's "what" cell -> its checker
    "is it the paper's regime?": row_regime,
    "DeFeat features (decoupled) vs the student alone": row_defeat,
    "other students": row_others,
    "decoupled beats all regions alike?": row_beats_all,
    "background carries knowledge?": row_background,
    "Fig. 1: decoupled closest": row_fig1,
    "the paper's claims": row_claims,
    "the previous full run": row_previous,
    "fast path (`precision: auto`": row_fast_path,
    "does the fast path change AP?": row_fast_path_ap,
    "DeFeat's overhead": row_overhead,
    "`defeat compare`": row_compare,
    "a run beside one equal job": row_contention,
    "YOLO26n in Ultralytics' own loop": row_yolo,
    "`analyze errors --per-category`": row_errors,
}


def check_row(start: str, rows: dict[str, tuple[str, str]]) -> None:
    """The row starting with ``start`` contains every string its checker computes, and no other number."""
    matching = {what: cells for what, cells in rows.items() if what.startswith(start)}
    assert len(matching) == 1, f"no single README results row starts with {start!r}"
    ((what, (result, _)),) = matching.items()
    expected = CHECKERS[start]()
    for text in expected:
        assert text in result, f"{what!r}: expected {text!r} (from its JSON) in {result!r}"
    allowed = {n for text in expected for n in NUMBER.findall(text)}
    stray = [n for n in NUMBER.findall(result) if n not in allowed]
    assert not stray, f"{what!r}: numbers {stray} are not from its JSON (expected strings: {expected})"


def test_every_results_row_has_a_checker_and_an_existing_record():
    rows = readme_rows()
    assert len(rows) >= len(CHECKERS)
    for what, (_, record) in rows.items():
        if not any(what.startswith(start) for start in CHECKERS):
            pytest.fail(f"README results row {what!r} has no checker in tests/test_docs_numbers.py")
        links = re.findall(r"\]\(([^)#]+)", record)
        assert links, what
        for link in links:
            assert (ROOT / link).exists(), f"{what}: {link} does not exist"


@pytest.mark.parametrize("start", list(CHECKERS))
def test_a_results_row_says_what_its_json_says(start):
    check_row(start, readme_rows())


def test_the_setup_numbers_of_the_rows_match_their_json():
    rows = readme_rows()
    contention = load("contention.json")
    what = next(w for w in rows if w.startswith("a run beside one equal job"))
    settings = contention["settings"]
    assert f"{settings['size']} px" in what and settings["precision"] in what
    assert ("quiet cores" in what) == contention["cores"].startswith("quiet")
    compare = load("compare_embedded/results.json")
    what = next(w for w in rows if w.startswith("`defeat compare`"))
    assert f"× {len(compare['seeds'])} seeds" in what and f"{compare['steps']:,} steps" in what
    assert f"teacher {ap(compare['teacher_AP'])} AP" in what
    assert ("tiny student" in what) == ("tiny" in compare["student"])
    stages = load("reproduce_full/results.json")["stages"]
    minutes = sum(s["seconds"] for s in stages.values()) / 60
    assert f"{minutes:.0f} min of stage time on 2 CPU cores" in results_intro()


@pytest.mark.parametrize(
    ("start", "old", "new"),
    [
        ("decoupled beats all regions alike?", "CI [", "CI [0"),  # a number the JSON does not give
        ("the previous full run", "22.3", "22.4"),
        ("`defeat compare`", "p = 0.2)", "p = 0.2, n = 7)"),  # an extra number with no source
    ],
)
def test_the_check_catches_a_stale_number(start, old, new):
    rows = readme_rows()
    what, (result, record) = next((w, c) for w, c in rows.items() if w.startswith(start))
    assert old in result
    check_row(start, {what: (result, record)})  # as recorded: passes
    with pytest.raises(AssertionError):
        check_row(start, {what: (result.replace(old, new), record)})


def test_the_compare_summary_is_its_record():
    """compare_embedded.json (the issue's summary) says what compare_embedded/results.json says."""
    summary, full = load("compare_embedded.json"), load("compare_embedded/results.json")
    assert summary["seeds"] == full["seeds"] and summary["steps"] == full["steps"]
    for row in full["methods"]:
        mine = summary["methods"][row["method"]]
        assert mine["AP_per_seed"] == row["AP_per_seed"] and mine["mean"] == row["AP"]
        assert mine["welch_p_vs_baseline_holm"] == row.get("p_vs_baseline_holm")
        assert mine["beats_baseline"] == row.get("beats_baseline")
    assert summary["best_vs_runner_up"]["outcome"] == full["verdict"]["outcome"]
