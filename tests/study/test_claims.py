"""The numbers and claims of ``defeat reproduce``'s report on hand-made numbers, and its rendering."""

from __future__ import annotations

import json

import pytest

from defeat.study import claims as report
from defeat.study import render
from defeat.study.claims import CLAIM_IDS, claims_by_id

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
    assert rows[0]["APl"] is None and "| – |" in render.render_results_table(rows)


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


def by_id(claims):
    """The claims by id; the report keeps the supplementary's order."""
    assert [c["id"] for c in claims] == list(CLAIM_IDS[: len(claims)])
    return claims_by_id(claims)


def test_claims_all_pass_on_a_study_that_shows_them():
    claims = by_id(report.compute_claims(*good_study()))
    assert [c["pass"] for c in claims.values()] == [True] * 6
    first = claims["defeat_lifts_student"]
    assert first["value"]["dAP"] == pytest.approx(0.13)
    assert first["value"]["gap_closed"] == pytest.approx(0.13 / 0.19)
    assert first["noise"] == pytest.approx(0.01) and not first["indicative"]
    assert claims["fig1_channel_distance"]["value"]["object"]["best_other"] == "object"
    assert claims["fig4_9_background_errors"]["value"]["categories_lower"] == 1 and claims["fig4_9_background_errors"]["value"]["categories"] == 2
    json.dumps(list(claims.values()))  # results.json material


def test_claims_fail_within_noise_or_below_the_gap_threshold():
    teacher, students, cd, ratio, errors = good_study()
    noisy = dict(students, baseline=runs(0.15, 0.25, 0.35))  # std 0.1 > the decoupled gain
    claims = by_id(report.compute_claims(teacher, noisy, cd, ratio, errors))
    assert claims["defeat_lifts_student"]["pass"] is False and claims["defeat_lifts_student"]["noise"] == pytest.approx(0.1)
    assert claims["decoupled_beats_all"]["pass"] is False  # decoupled - all = 0.09 < borrowed noise 0.1
    small = dict(students, decoupled=runs(0.24, 0.245, 0.25))  # beyond noise but closes < 50 % of the gap
    claim = by_id(report.compute_claims(teacher, small, cd, ratio, errors))["defeat_lifts_student"]
    assert claim["value"]["dAP"] > claim["noise"] and claim["value"]["gap_closed"] < 0.5 and claim["pass"] is False
    weak_teacher = by_id(report.compute_claims({"AP": 0.2}, students, cd, ratio, errors))["defeat_lifts_student"]
    assert weak_teacher["pass"] is False and "no gap" in weak_teacher["note"]


def test_background_claim_needs_a_gain_comparable_to_object_only():
    teacher, students, cd, ratio, errors = good_study()
    weak_bg = dict(students, object=runs(0.33), background=runs(0.235))  # gain 0.025 > noise, < half of 0.12
    claim = by_id(report.compute_claims(teacher, weak_bg, cd, ratio, errors))["background_carries_knowledge"]
    assert claim["value"]["dAP_vs_baseline"] > claim["noise"] and claim["pass"] is False
    better_bg = dict(students, object=runs(0.24), background=runs(0.30))
    assert by_id(report.compute_claims(teacher, better_bg, cd, ratio, errors))["background_carries_knowledge"]["pass"]


def test_figure_claims_fail_when_the_numbers_say_so():
    teacher, students, cd, _, _ = good_study()
    cd_bad = [dict(r, mean_distance=0.3) if (r["student"], r["region"]) == ("background", "background") else r
              for r in cd]  # background-only student closer to the teacher in background regions
    swapped = error_rows({"object": (0.08, {"a": 0.1}), "background": (0.10, {"a": 0.2})})
    claims = by_id(report.compute_claims(teacher, students, cd_bad, 0.9, swapped))
    assert [claims[k]["pass"] for k in CLAIM_IDS[3:6]] == [False, False, False]
    assert claims["fig1_channel_distance"]["value"]["object"]["best_other"] == "object"
    assert claims["fig1_channel_distance"]["value"]["background"]["best_other"] == "background"


def test_raw_neck_channel_distance_is_a_seventh_claim_only_when_given():
    teacher, students, cd, ratio, errors = good_study()
    assert len(report.compute_claims(teacher, students, cd, ratio, errors)) == 6
    raw_bad = [dict(r, mean_distance=0.1) if r["student"] == "all" else r for r in cd]  # all-regions closest
    claims = by_id(report.compute_claims(teacher, students, cd, ratio, errors, channel_distance_raw=raw_bad))
    assert len(claims) == 7 and claims["fig1_channel_distance"]["pass"] is True and claims["fig1_channel_distance_raw"]["pass"] is False
    assert claims["fig1_channel_distance_raw"]["value"]["object"]["best_other"] == "all" and "raw FPN" in claims["fig1_channel_distance_raw"]["claim"]
    assert by_id(report.compute_claims(teacher, students, cd, ratio, errors, channel_distance_raw=[]))[
        "fig1_channel_distance_raw"]["pass"] is None


def test_single_seed_claims_are_indicative_and_missing_inputs_are_na():
    teacher = {"AP": 0.4}
    students = {"baseline": runs(0.2), "decoupled": runs(0.32), "all": runs(0.25)}
    claims = by_id(report.compute_claims(teacher, students))
    assert claims["defeat_lifts_student"]["pass"] is True and claims["defeat_lifts_student"]["noise"] is None and claims["defeat_lifts_student"]["indicative"]
    assert "indicative" in claims["defeat_lifts_student"]["note"]
    assert claims["decoupled_beats_all"]["pass"] is True
    assert [claims[k]["pass"] for k in CLAIM_IDS[2:6]] == [None] * 4
    assert all(claims[k]["note"].startswith("not computed") for k in CLAIM_IDS[2:6])
    assert by_id(report.compute_claims(None, {}))["defeat_lifts_student"]["pass"] is None
    assert by_id(report.compute_claims(teacher, students, grad_norm_ratio=float("nan")))["fig2_3_gradients"][
        "pass"] is None


def test_rendered_tables_keep_their_columns():
    teacher, students, cd, ratio, errors = good_study()
    claims = report.compute_claims(teacher, students, cd, ratio, errors)
    for text in (render.render_claims_table(claims),
                 render.render_results_table(report.results_table(teacher, students))):
        lines = text.splitlines()
        assert len({line.count("|") for line in lines}) == 1, text  # no stray '|' inside a cell
    table = render.render_results_table(report.results_table(teacher, students))
    assert "| **baseline** | baseline (no KD) | 3 | 21.0 ± 1.0 |" in table
    assert "+13.0" in table and "68 %" in table
    claims_md = render.render_claims_table(claims)
    assert "dAP=+13.00 AP" in claims_md and claims_md.count("**pass**") == 6
    page = render.markdown_to_html("# t\n\n" + claims_md + "\n\n![f](figures/a.png)", "t")
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
    text = render.render_report(results)
    for needle in ("Indicative only", "## Results", "## Claims", "![AP](figures/ap.png)", "## Channel distance",
                   "## Gradient norm", "## Error analysis", "`errors`: boom", "config: teacher", "Versions: torch x",
                   "Sum of the stages' wall times: 2.0 min."):
        assert needle in text, needle
