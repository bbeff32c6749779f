"""The numbers and claims of ``defeat reproduce``'s report on hand-made numbers, and its rendering."""

from __future__ import annotations

import json

import pytest

from defeat.study import claims as report
from defeat.study import regime, render
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


def test_coco_minus_one_is_no_value():
    g = report.summarize_group(runs(0.2, 0.3))
    assert "APl" not in g and g["APm"]["mean"] == pytest.approx(0.25)
    rows = report.results_table({"AP": 0.5, "APl": -1.0}, {"baseline": runs(0.2)})
    assert rows[0]["APl"] is None and "| – |" in render.render_results_table(rows)


# ------------------------------------------------------------------------------------------ report: claims
CD_ROWS = [
    {"student": s, "region": r, "mean_distance": d}
    for s, r, d in [
        ("baseline", "object", 1.0),
        ("baseline", "background", 0.8),
        ("object", "object", 0.5),
        ("object", "background", 0.7),
        ("background", "object", 0.9),
        ("background", "background", 0.4),
        ("all", "object", 0.6),
        ("all", "background", 0.5),
        ("decoupled", "object", 0.45),
        ("decoupled", "background", 0.35),
    ]
]


def error_rows(bg_band: dict) -> list[dict]:
    rows = []
    for model, (overall, per_cat) in bg_band.items():
        rows.append({"model": model, "category": "overall", "area": "all", "band_BG": overall})
        rows.append({"model": model, "category": "overall", "area": "small", "band_BG": 9.0})  # other area: ignored
        rows += [{"model": model, "category": c, "area": "all", "band_BG": v} for c, v in per_cat.items()]
    return rows


def seeded_cd(rows, offsets=(0.0, 0.01, -0.01)):
    """Channel-distance rows of three seeds per student (``<student>_s<seed>``), spread by ``offsets``."""
    return [
        dict(r, student=f"{r['student']}_s{k}", mean_distance=r["mean_distance"] + d)
        for k, d in enumerate(offsets)
        for r in rows
    ]


def three(ap, spread=0.005):
    return runs(ap - spread, ap, ap + spread)


def good_study():
    teacher = {"AP": 0.40, "AP50": 0.6}
    students = {
        "baseline": runs(0.20, 0.21, 0.22),
        "object": three(0.27),
        "background": three(0.27),
        "all": three(0.25),
        "decoupled": runs(0.33, 0.34, 0.35),
        "defeat": three(0.36),
        "fgfi": three(0.26),
    }
    errors = error_rows(
        {"object": (0.10, {"a": 0.1, "b": 0.2, "c": 0.3}), "background": (0.08, {"a": 0.05, "b": 0.3, "c": 0.2})}
    )
    grads = {"detection": 1.2, "distillation": 1.7, "sum": 1.5}
    return teacher, students, seeded_cd(CD_ROWS), grads, errors


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
    (test,) = first["tests"]
    assert (
        test["test"] == first["test"] == "Welch t-test, one-sided (A > B)" and test["label"] == "decoupled > baseline"
    )
    assert test["mean_a"] == pytest.approx(0.34) and test["mean_b"] == pytest.approx(0.21)
    assert first["p_value"] == pytest.approx(test["p_value"]) and first["p_value"] < 0.05 and first["decided"]
    assert test["ci"][0] < 0.13 < test["ci"][1] and test["ci_level"] == 0.95
    bg = claims["background_carries_knowledge"]
    assert [t["label"] for t in bg["tests"]] == ["background > baseline", "background ≈ object"]
    assert bg["tests"][1]["margin"] == pytest.approx(0.01) and bg["tests"][1]["ci_level"] == pytest.approx(0.90)
    assert bg["p_value"] == max(t["p_value"] for t in bg["tests"])
    assert claims["fig1_channel_distance"]["value"]["object"]["best_other"] == "object"
    assert claims["fig1_channel_distance"]["value"]["object"]["seeds"] == 3
    assert claims["fig2_3_gradients"]["tested_loss"] == "distillation"
    assert claims["fig2_3_gradients"]["value"]["ratio_detection"] == pytest.approx(1.2)
    assert claims["fig4_9_background_errors"]["value"]["categories_lower"] == 2
    assert claims["fig4_9_background_errors"]["value"]["categories"] == 3
    json.dumps(list(claims.values()))  # results.json material


def test_claims_fail_within_noise_or_below_the_gap_threshold():
    teacher, students, cd, ratio, errors = good_study()
    noisy = dict(students, baseline=runs(0.15, 0.25, 0.35))  # std 0.1: the decoupled gain is not significant
    claims = by_id(report.compute_claims(teacher, noisy, cd, ratio, errors))
    assert claims["defeat_lifts_student"]["pass"] is False and claims["defeat_lifts_student"]["decided"]
    assert claims["defeat_lifts_student"]["p_value"] > 0.05
    close = dict(students, all=runs(0.32, 0.34, 0.36))  # decoupled - all = 0 ± noise
    assert by_id(report.compute_claims(teacher, close, cd, ratio, errors))["decoupled_beats_all"]["pass"] is False
    small = dict(students, decoupled=runs(0.24, 0.245, 0.25))  # significant but closes < 50 % of the gap
    claim = by_id(report.compute_claims(teacher, small, cd, ratio, errors))["defeat_lifts_student"]
    assert claim["tests"][0]["pass"] and claim["value"]["gap_closed"] < 0.5 and claim["pass"] is False
    weak_teacher = by_id(report.compute_claims({"AP": 0.2}, students, cd, ratio, errors))["defeat_lifts_student"]
    assert weak_teacher["pass"] is False and "no gap" in weak_teacher["note"]


def test_background_claim_is_an_equivalence_test_with_the_stated_margin():
    teacher, students, cd, ratio, errors = good_study()
    # the recorded case: background-only 5.8 AP below object-only is not "comparable", whatever the object gain
    far = dict(students, object=three(0.30), background=three(0.242))
    claim = by_id(report.compute_claims(teacher, far, cd, ratio, errors))["background_carries_knowledge"]
    gain, same = claim["tests"]
    assert gain["pass"] and not same["pass"] and claim["pass"] is False
    assert "tolerance" not in claim["value"] and claim["value"]["margin"] == pytest.approx(0.01)
    # better than object-only by more than the margin is not "the same AP" either
    better = dict(students, object=three(0.24), background=three(0.30))
    assert (
        by_id(report.compute_claims(teacher, better, cd, ratio, errors))["background_carries_knowledge"]["pass"]
        is False
    )
    # the margin is the preset's: 7 AP makes the first case comparable
    wide = by_id(report.compute_claims(teacher, far, cd, ratio, errors, margin_ap=7.0))["background_carries_knowledge"]
    assert wide["pass"] is True and wide["tests"][1]["margin"] == pytest.approx(0.07)
    # a tie inside the margin but too noisy to show it: fails
    noisy = dict(students, background=runs(0.23, 0.27, 0.31))
    assert (
        by_id(report.compute_claims(teacher, noisy, cd, ratio, errors))["background_carries_knowledge"]["pass"] is False
    )


def test_figure_claims_fail_when_the_numbers_say_so():
    teacher, students, _, _, _ = good_study()
    cd_bad = seeded_cd(
        [
            dict(r, mean_distance=0.3) if (r["student"], r["region"]) == ("background", "background") else r
            for r in CD_ROWS
        ]
    )  # background-only student closer to the teacher in background
    swapped = error_rows({"object": (0.08, {"a": 0.1}), "background": (0.10, {"a": 0.2})})
    only_detection = {"detection": 1.8, "distillation": 0.9, "sum": 1.4}  # the sum's ratio comes from detection
    claims = by_id(report.compute_claims(teacher, students, cd_bad, only_detection, swapped))
    assert [claims[k]["pass"] for k in CLAIM_IDS[3:6]] == [False, False, False]
    assert claims["fig1_channel_distance"]["value"]["object"]["best_other"] == "object"
    assert claims["fig1_channel_distance"]["value"]["background"]["best_other"] == "background"
    # lower overall, but in a minority of the categories: not "in most cases"
    minority = error_rows(
        {
            "object": (0.10, {"a": 0.1, "b": 0.1, "c": 0.1, "d": 0.0}),
            "background": (0.08, {"a": 0.05, "b": 0.2, "c": 0.2, "d": 0.0}),
        }
    )
    claim = by_id(report.compute_claims(teacher, students, errors=minority))["fig4_9_background_errors"]
    assert claim["pass"] is False and claim["value"]["categories_lower"] == 1
    assert (claim["value"]["categories_higher"], claim["value"]["categories_tied"]) == (2, 1)
    # ties (both 0: no background false positive either way) do not count against "most"
    tied = error_rows(
        {"object": (0.10, {"a": 0.1, "b": 0.0, "c": 0.0}), "background": (0.08, {"a": 0.05, "b": 0.0, "c": 0.0})}
    )
    assert by_id(report.compute_claims(teacher, students, errors=tied))["fig4_9_background_errors"]["pass"] is True
    # only the summed loss measured: tested, but with a note that there is no detection-only control
    legacy = by_id(report.compute_claims(teacher, students, grad_norm=1.7))["fig2_3_gradients"]
    assert legacy["pass"] is True and legacy["tested_loss"] == "sum" and "no control" in legacy["note"]


def test_fig1_with_close_seeds_is_not_significant():
    teacher, students, _, ratio, errors = good_study()
    spread = seeded_cd(CD_ROWS, offsets=(0.0, 0.2, -0.2))  # seed spread larger than the gaps between students
    claim = by_id(report.compute_claims(teacher, students, spread, ratio, errors))["fig1_channel_distance"]
    assert claim["pass"] is False and claim["decided"] and claim["p_value"] > 0.05


def test_raw_neck_channel_distance_is_a_seventh_claim_only_when_given():
    teacher, students, cd, ratio, errors = good_study()
    assert len(report.compute_claims(teacher, students, cd, ratio, errors)) == 6
    raw_bad = seeded_cd([dict(r, mean_distance=0.1) if r["student"] == "all" else r for r in CD_ROWS])
    claims = by_id(report.compute_claims(teacher, students, cd, ratio, errors, channel_distance_raw=raw_bad))
    assert len(claims) == 7 and claims["fig1_channel_distance"]["pass"] is True
    assert claims["fig1_channel_distance_raw"]["pass"] is False
    assert claims["fig1_channel_distance_raw"]["value"]["object"]["best_other"] == "all"
    assert "raw FPN" in claims["fig1_channel_distance_raw"]["claim"]
    assert (
        by_id(report.compute_claims(teacher, students, cd, ratio, errors, channel_distance_raw=[]))[
            "fig1_channel_distance_raw"
        ]["pass"]
        is None
    )


def test_single_seed_claims_cannot_be_decided_and_missing_inputs_are_na():
    teacher = {"AP": 0.4}
    students = {"baseline": runs(0.2), "decoupled": runs(0.32), "all": runs(0.25)}
    claims = by_id(report.compute_claims(teacher, students, channel_distance=CD_ROWS))
    for key in ("defeat_lifts_student", "decoupled_beats_all", "fig1_channel_distance"):
        assert claims[key]["pass"] is False and claims[key]["decided"] is False, key
        assert "needs >= 2 seeds" in claims[key]["note"] and claims[key]["p_value"] is None
    assert claims["defeat_lifts_student"]["value"]["dAP"] == pytest.approx(0.12)  # the means are still shown
    assert [claims[k]["pass"] for k in CLAIM_IDS[2:3] + CLAIM_IDS[4:6]] == [None] * 3
    assert all(claims[k]["note"].startswith("not computed") for k in CLAIM_IDS[2:3] + CLAIM_IDS[4:6])
    assert by_id(report.compute_claims(None, {}))["defeat_lifts_student"]["pass"] is None
    assert (
        by_id(report.compute_claims(teacher, students, grad_norm={"sum": float("nan")}))["fig2_3_gradients"]["pass"]
        is None
    )
    md = render.render_claims_table(list(claims.values()))
    assert "**not decided**" in md and "needs >= 2 seeds" in md


def test_rendered_tables_keep_their_columns():
    teacher, students, cd, ratio, errors = good_study()
    claims = report.compute_claims(teacher, students, cd, ratio, errors)
    for text in (
        render.render_claims_table(claims),
        render.render_results_table(report.results_table(teacher, students)),
    ):
        lines = text.splitlines()
        assert len({line.count("|") for line in lines}) == 1, text  # no stray '|' inside a cell
    table = render.render_results_table(report.results_table(teacher, students))
    assert "| **baseline** | baseline (no KD) | 3 | 21.0 ± 1.0 |" in table
    assert "+13.0" in table and "68 %" in table
    claims_md = render.render_claims_table(claims)
    assert "decoupled > baseline: 34.00 (n=3) vs 21.00 (n=3), Δ +13.00 AP, 95 % CI [" in claims_md
    assert "margin ±1.00 AP" in claims_md and "90 % CI" in claims_md and "gap closed 68 %" in claims_md
    assert claims_md.count("**pass**") == 6
    page = render.markdown_to_html("# t\n\n" + claims_md + "\n\n![f](figures/a.png)", "t")
    assert page.count("<tr>") == 7 and '<img alt="f" src="figures/a.png"' in page and "<br>" in page


def test_render_report_sections():
    teacher, students, cd, ratio, errors = good_study()
    reg = regime.regime(
        {"baseline": [[(50, 0.1), (75, 0.1), (100, 0.2)]]}, 100, 100, 40_000_000, 20_000_000, teacher_ap=0.15
    )
    results = {
        "preset": "x",
        "indicative": True,
        "table": report.results_table(teacher, students),
        "claims": report.compute_claims(teacher, students, cd, ratio, errors),
        "figures": {"AP": "figures/ap.png"},
        "channel_distance_seeds": [
            {"student": "decoupled", "region": "object", "mean_distance": 0.4, "std_over_seeds": 0.01, "seeds": 3}
        ],
        "grad_norm": {
            "ratio": ratio,
            "tested": "distillation",
            "rows": [
                {"level": lv, "loss": loss, "object_mean": 2.0, "background_mean": 1.0, "ratio": r}
                for lv in ("P2", "all")
                for loss, r in ratio.items()
            ],
        },
        "errors": {"band_BG": report.error_bands(errors)},
        "regime": reg,
        "sensitivity": [{"name": "alpha_bg_4", "distill": {"alpha_bg": 4.0}, "seeds": 1, "AP": 0.3, "AP_std": None}],
        "statistics": {"margin_ap": 1.0, "alpha": 0.05},
        "stages": {"teacher": {"status": "ran", "seconds": 90.0}, "data": {"status": "ran", "seconds": 30.0}},
        "versions": {"torch": "x"},
        "configs": {"teacher": "model: {}\n"},
        "failed": {"errors": "boom"},
    }
    text = render.render_report(results)
    for needle in (
        "Indicative only",
        "## Results",
        "## Claims",
        "TOST",
        "±1 AP",
        "![AP](figures/ap.png)",
        "## Regime",
        "teacher: 100 steps, 40.0 M parameters",
        "equal schedule",
        "the bigger network",
        "AP at 50%",
        "50.0 %",
        "does NOT hold",
        "teacher AP 15.00, 5.00 AP below the baseline's final AP: the teacher is NOT ahead",
        "## Channel distance",
        "std_over_seeds",
        "## Gradient norm",
        "ratio (detection loss)",
        "The claim tests the **distillation** loss",
        "## Sensitivity to the KD weights (not part of the reproduction)",
        "sens_alpha_bg_4",
        "alpha_bg=4.0",
        "## Error analysis",
        "`errors`: boom",
        "config: teacher",
        "Versions: torch x",
        "Sum of the stages' wall times: 2.0 min.",
    ):
        assert needle in text, needle
    for line in text.splitlines():  # every table row has as many cells as its header
        assert not line.startswith("|") or "||" not in line.replace("|---|", ""), line
