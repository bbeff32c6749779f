"""The report of a ``defeat reproduce`` run: every number collected from the stage folders, ``results.json``,
``report.md`` / ``report.html`` and the figures they show (``figures/``)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import yaml

from defeat.config import config_to_dict
from defeat.study import claims, regime, render
from defeat.study.plan import GRAD_LOSSES, PLATEAU_RUN, Stage
from defeat.study.presets import (
    claims_settings,
    plateau_seeds,
    regime_settings,
    run_name,
    run_order,
    seeds_of,
    sensitivity_settings,
)
from defeat.utils import atomic_write_json, atomic_write_text, read_json


def say(message: str) -> None:
    """A progress line of the study (printed above any progress bar)."""
    from tqdm import tqdm

    tqdm.write(f"[reproduce] {message}")


def _read(path: Path) -> Any:
    try:
        return read_json(path) if path.is_file() else None
    except ValueError:
        return None


def _plot_ap(table: list[dict], path: Path) -> None:
    """Bar chart of AP (± seed std) per model, the teacher as a dashed line."""
    from defeat.analysis.plotting import plt, save_figure

    rows = [r for r in table if r["model"] != "teacher" and r.get("AP") is not None]
    teacher = next((r["AP"] for r in table if r["model"] == "teacher" and r.get("AP") is not None), None)
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(1.1 * len(rows) + 2, 3.2))
    x = range(len(rows))
    colors = ["tab:gray" if r["model"] == "baseline" else "tab:blue" for r in rows]
    ax.bar(x, [100 * r["AP"] for r in rows], color=colors, yerr=[100 * (r.get("AP_std") or 0) for r in rows], capsize=3)
    if teacher is not None:
        ax.axhline(100 * teacher, color="tab:red", ls="--", lw=1, label=f"teacher {100 * teacher:.1f}")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xticks(list(x), [r["model"] for r in rows], rotation=20, fontsize=8)
    ax.set_ylabel("COCO AP × 100")
    ax.set_title("students on the embedded benchmark (± seed std)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


#: report figures above this size are stored as 256-colour palette PNGs (small enough to commit)
FIGURE_MAX_BYTES = 300_000


def _copy(src: Path, dst: Path, max_bytes: int = FIGURE_MAX_BYTES) -> bool:
    """Copy a figure into the report's ``figures/`` (atomically); one above ``max_bytes`` is quantised to a
    256-colour palette PNG, which keeps plots legible at a third of the size (the full-colour original stays)."""
    if not src.is_file():
        return False
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    if src.suffix.lower() == ".png" and src.stat().st_size > max_bytes:
        from PIL import Image

        with Image.open(src) as image:
            image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(
                tmp, format="PNG", optimize=True
            )
    else:
        shutil.copyfile(src, tmp)
    tmp.replace(dst)
    return True


def eval_curve(metrics_path: Path) -> list[tuple[int, float]]:
    """``(step, AP)`` of every evaluation logged in a training log (``event: eval``; the last one of a step wins,
    as a resumed run may repeat a step)."""
    by_step: dict[int, float] = {}
    if not metrics_path.is_file():
        return []
    for line in metrics_path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("event") == "eval" and record.get("AP") is not None:
            by_step[int(record["step"])] = float(record["AP"])
    return sorted(by_step.items())


def _parameters(checkpoint: Path) -> int | None:
    """Parameter count of the detector of a checkpoint (None if it cannot be read)."""
    if not checkpoint.is_file():
        return None
    try:
        from defeat import api
        from defeat.models import count_parameters

        return count_parameters(api.load_detector(checkpoint).model)
    except Exception:
        return None


def _plot_curves(curves: dict, teacher_ap: float | None, student_steps: int, path: Path) -> None:
    """AP against training steps (mean over seeds, ± sample std) of the curve students, the teacher dashed."""
    from defeat.analysis.plotting import plt, save_figure

    if not any(curves.values()):
        return
    fig, ax = plt.subplots(figsize=(5.0, 3.2))
    for name, points in curves.items():
        if not points:
            continue
        x = [p["step"] for p in points]
        y = [100 * p["AP"] for p in points]
        err = [100 * (p["std"] or 0.0) for p in points]
        ax.errorbar(x, y, yerr=err, marker="o", ms=3, capsize=3, lw=1, label=f"{name} ({points[-1]['n']} seeds)")
    if teacher_ap is not None:
        ax.axhline(100 * teacher_ap, color="tab:red", ls="--", lw=1, label=f"teacher {100 * teacher_ap:.1f}")
    for f in (0.5, 0.75):
        ax.axvline(f * student_steps, color="0.8", lw=0.8, zorder=0)
    ax.set_xlabel("training step of the student")
    ax.set_ylabel("COCO AP × 100")
    ax.set_title("AP against steps (mean ± seed std); grey: 50 % and 75 % of the schedule", fontsize=8)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def _channel_seed_table(rows: list[dict] | None) -> list[dict]:
    """Fig. 1 over seeds: per student and region, the mean over seeds of the mean channel distance, its sample
    std over seeds and the number of seeds."""
    if not rows:
        return []
    out = []
    for name, regions in claims.channel_distance_groups(rows).items():
        for region in ("object", "background"):
            mean, std = claims.mean_std(regions[region]) if regions[region] else (None, None)
            out.append(
                {
                    "student": name,
                    "region": region,
                    "mean_distance": mean,
                    "std_over_seeds": std,
                    "seeds": len(regions[region]),
                }
            )
    return out


def _plot_channel_seeds(folder: Path, path: Path, title: str) -> bool:
    """Fig. 1 over seeds from a channel-distance stage's ``channel_distance_per_channel.json``."""
    import numpy as np

    from defeat.analysis.feature_plots import plot_channel_distance_seeds

    data = _read(folder / "channel_distance_per_channel.json")
    summary = _read(folder / "channel_distance_summary.json")
    if not data or not data.get("rows"):
        return False
    per_run: dict[str, dict[str, dict[int, float]]] = {}
    for r in data["rows"]:
        entry = per_run.setdefault(r["student"], {"object": {}, "background": {}})
        for region in ("object", "background"):
            entry[region][int(r["channel"])] = float("nan") if r[region] is None else float(r[region])
    groups: dict[str, dict[str, list]] = {}
    for run, regions in per_run.items():
        g = groups.setdefault(claims.student_of(run), {"object": [], "background": []})
        for region in ("object", "background"):
            g[region].append([regions[region][c] for c in sorted(regions[region])])
    arrays = {n: {k: np.asarray(v) for k, v in g.items()} for n, g in groups.items()}
    level = ((summary or {}).get("meta") or {}).get("level", "P2")
    plot_channel_distance_seeds(arrays, level, path, title=title)
    return True


def planned_seeds(preset: dict) -> dict[str, int]:
    """Seeds per student the preset plans (the arms of the claims' tests)."""
    return {s: len(seeds_of(preset, s)) for s in preset["students"]}


def power_plan_text(preset: dict) -> str:
    """The pre-registered power of every claim test, as the plan (``--dry-run``) prints it."""
    settings = claims.ClaimSettings.from_mapping(claims_settings(preset))
    return render.render_power_plan(claims.power_plan(planned_seeds(preset), settings))


def collect_results(
    preset: dict, run_dir: Path, stages: list[Stage], records: dict[str, dict], failed: dict[str, str]
) -> dict:
    """Every number of the run from the stage folders: metrics, analysis tables, stage times, configs."""
    teacher = _read(run_dir / "eval" / "teacher" / "metrics.json")
    students: dict[str, list[dict]] = {}
    for student, seed in run_order(preset):
        metrics = _read(run_dir / "eval" / run_name(student, seed) / "metrics.json")
        if metrics is not None:
            students.setdefault(student, []).append(dict(metrics, run=run_name(student, seed), seed=seed))
    students = {s: students[s] for s in preset["students"] if s in students}

    cd = _read(run_dir / "analysis" / "channel_distance" / "channel_distance_summary.json")
    cd_rows = cd["rows"] if cd else None
    cd_raw = _read(run_dir / "analysis" / "channel_distance_raw" / "channel_distance_summary.json")
    planned_raw = any(s.name == "channel_distance_raw" for s in stages)  # planned but failed: claim is n/a
    cd_raw_rows = cd_raw["rows"] if cd_raw else ([] if planned_raw else None)
    gn_rows, gn_ratio, gn_per_image = [], {}, {}
    for loss in GRAD_LOSSES:  # Fig. 2-3: detection alone, distillation alone, their sum
        gn = _read(run_dir / "analysis" / f"grad_norm_{loss}" / "grad_norm_ratio.json")
        rows = [dict(r, loss=loss) for r in (gn or {}).get("rows", []) if r.get("image_id") == "all"]
        gn_rows += rows
        per_image = [dict(r, loss=loss) for r in (gn or {}).get("rows", []) if r.get("image_id") != "all"]
        if per_image:
            gn_per_image[loss] = per_image
        ratio = next((r["ratio"] for r in rows if r.get("level") == "all"), None)
        if ratio is not None:
            gn_ratio[loss] = ratio
    er = _read(run_dir / "analysis" / "errors" / "errors_table.json")
    er_rows = er["rows"] if er else None
    bands = (
        {b: claims.error_bands(er_rows, b) for b in ("band_Loc", "band_Sim", "band_Oth", "band_BG")} if er_rows else {}
    )

    table = claims.results_table(teacher, students)
    settings = claims_settings(preset)
    reg = regime_settings(preset)

    # the regime: teacher vs student size and schedule, the doubling test, the students against the teacher
    curves = {
        s: [
            c
            for c in (
                eval_curve(run_dir / "models" / run_name(s, seed) / "metrics.jsonl") for seed in seeds_of(preset, s)
            )
            if c
        ]
        for s in reg["curve_students"]
    }
    doubled = plateau_seeds(preset)
    ap_s, ap_2s = [], []
    for seed in doubled:  # the same seeds at S and 2S steps: a seed missing at either end is left out of both
        at_s = _read(run_dir / "eval" / run_name("baseline", seed) / "metrics.json")
        at_2s = _read(run_dir / "eval" / run_name(PLATEAU_RUN, seed) / "metrics.json")
        if at_s and at_2s and at_s.get("AP") is not None and at_2s.get("AP") is not None:
            ap_s.append(float(at_s["AP"]))
            ap_2s.append(float(at_2s["AP"]))
    plateau_curves = [
        eval_curve(run_dir / "models" / run_name(PLATEAU_RUN, seed) / "metrics.jsonl") for seed in doubled
    ]
    groups = {name: claims.summarize_group(runs) for name, runs in students.items()}
    first_baseline = run_name("baseline", seeds_of(preset, "baseline")[0])
    regime_obj = regime.regime(
        curves,
        int(preset["teacher"]["steps"]),
        int(preset["student"]["steps"]),
        _parameters(run_dir / "models" / "teacher" / "model_final.pt"),
        _parameters(run_dir / "models" / first_baseline / "model_final.pt"),
        teacher_ap=(teacher or {}).get("AP"),
        baseline_aps=groups.get("baseline", {}).get("AP", {}).get("values", []),
        distilled_aps={n: g["AP"]["mean"] for n, g in groups.items() if n != "baseline" and "AP" in g},
        plateau_ap_s=ap_s,
        plateau_ap_2s=ap_2s,
        plateau_seeds=doubled,
        plateau_curves=[c for c in plateau_curves if c],
        plateau_gain_max=float(reg["plateau_gain_max"]),
        lead_min_ap=float(reg["teacher_lead_min_ap"]) / 100.0,
        lead_min_sd=float(reg["teacher_lead_min_sd"]),
    )
    claim_settings = claims.ClaimSettings.from_mapping(
        dict(settings, bootstrap_seed=int((preset.get("analysis") or {}).get("grad_norm", {}).get("seed", 0)))
    )
    claim_list = claims.compute_claims(
        teacher,
        students,
        cd_rows,
        gn_per_image or None,
        er_rows,
        channel_distance_raw=cd_raw_rows,
        regime=regime_obj,
        settings=claim_settings,
    )

    # the KD-weight sensitivity (apart from the reproduction, which keeps the authors' weights)
    sensitivity = []
    for entry in sensitivity_settings(preset):
        runs = [
            _read(run_dir / "eval" / run_name(f"sens_{entry['name']}", seed) / "metrics.json")
            for seed in entry.get("seeds") or seeds_of(preset, "decoupled")[:1]
        ]
        runs = [r for r in runs if r is not None]
        group = claims.summarize_group(runs) if runs else {"n": 0}
        sensitivity.append(
            {
                "name": entry["name"],
                "distill": dict(entry.get("distill") or {}),
                "seeds": group["n"],
                "AP": group.get("AP", {}).get("mean"),
                "AP_std": group.get("AP", {}).get("std"),
            }
        )
    stage_info = {}
    for s in stages:
        rec = records.get(s.name) or _read(s.folder / "done.json") or {}
        stage_info[s.name] = {
            "status": rec.get("status", "failed" if s.name in failed else "not run"),
            "seconds": rec.get("seconds"),
            "steps": s.steps or None,
            "sec_per_step": rec.get("sec_per_step"),
            "command": s.command,
        }
    configs = {}
    for s in stages:
        if s.config is not None and s.kind in ("train", "distill"):
            configs[s.name] = yaml.safe_dump(config_to_dict(s.config), sort_keys=False)
    return {
        "preset": preset["preset"],
        "description": preset.get("description", ""),
        "indicative": bool(preset.get("indicative", False)),
        "teacher": teacher,
        "students": students,
        "table": table,
        "claims": claim_list,
        "channel_distance": cd_rows,
        "channel_distance_raw": cd_raw_rows,
        "channel_distance_seeds": _channel_seed_table(cd_rows),
        "channel_distance_raw_seeds": _channel_seed_table(cd_raw_rows),
        "grad_norm": (
            {"ratio": gn_ratio, "rows": gn_rows, "per_image": gn_per_image, "tested": claims.GRAD_CLAIM_LOSS}
            if gn_rows
            else None
        ),
        "regime": regime_obj,
        "sensitivity": sensitivity or None,
        "statistics": {
            **settings,
            "beats": "Welch t-test, one-sided, scipy.stats.ttest_ind(equal_var=False, alternative='greater')",
            "comparable": "TOST: two one-sided Welch tests with the margin margin_ap (AP points)",
            "power": "at the pre-registered assumed_sd_ap: Welch at effect_ap, TOST at a true difference of 0; "
            "a test that does not pass with power < power_target is undecidable at this budget",
            "min_seeds": 2,
            "power_plan": claims.power_plan(planned_seeds(preset), claim_settings),
        },
        "errors": bands or None,
        "stages": stage_info,
        "seeds": {s: seeds_of(preset, s) for s in preset["students"]}
        | {"teacher": [int(preset["teacher"].get("seed", 0))], "benchmark": [preset["benchmark"].get("seed", 0)]},
        "failed": failed,
        "preset_yaml": yaml.safe_dump({k: v for k, v in preset.items() if k != "source"}, sort_keys=False),
        "configs": configs,
    }


def write_report(
    preset: dict,
    run_dir: Path,
    stages: list[Stage],
    records: dict[str, dict],
    failed: dict[str, str],
    versions: dict,
    wall_seconds: float,
) -> dict:
    """``report.md``, ``report.html``, ``results.json`` and ``figures/`` in the run folder."""
    results = collect_results(preset, run_dir, stages, records, failed)
    results["versions"] = versions
    results["wall_seconds"] = round(wall_seconds, 2)
    fig_dir = run_dir / "figures"
    figures: dict[str, str] = {}
    if results["table"]:
        _plot_ap(results["table"], fig_dir / "ap.png")
        if (fig_dir / "ap.png").is_file():
            figures["COCO AP of every student (± seed std), the teacher dashed"] = "figures/ap.png"
    reg = results["regime"]
    if reg and any(reg["curves"].values()):
        _plot_curves(
            reg["curves"], (results["teacher"] or {}).get("AP"), reg["student_steps"], fig_dir / "ap_vs_steps.png"
        )
        if (fig_dir / "ap_vs_steps.png").is_file():
            figures[
                "AP against training steps: baseline and decoupled students and the baseline on twice the steps "
                "(baseline_x2, the doubling test; mean ± seed std), the teacher dashed"
            ] = "figures/ap_vs_steps.png"
    for stage, name, caption in (
        (
            "channel_distance",
            "channel_distance.png",
            "Fig. 1: per-channel teacher–student distance (adapter output of distilled students), object (red) vs "
            "background (blue); line = mean over seeds, band = min–max over seeds",
        ),
        (
            "channel_distance_raw",
            "channel_distance_raw.png",
            "Fig. 1 on the raw FPN output (no adapter): per-channel teacher–student distance, mean and spread over "
            "seeds",
        ),
    ):
        if _plot_channel_seeds(run_dir / "analysis" / stage, fig_dir / name, caption.split(":")[0]):
            figures[caption] = f"figures/{name}"
    shown_maps = int(preset.get("analysis", {}).get("grad_norm", {}).get("figures", 2))
    for loss in GRAD_LOSSES:
        grad_maps = sorted((run_dir / "analysis" / f"grad_norm_{loss}").glob("grad_norm_*.png"))
        for src in grad_maps[:shown_maps]:
            dst = f"grad_norm_{loss}_{src.stem.replace('grad_norm_', '')}.png"
            if _copy(src, fig_dir / dst):
                figures[
                    f"Fig. 2–3: gradient-norm map of the FPN, {loss} loss, {src.stem.replace('grad_norm_', 'image ')}"
                ] = f"figures/{dst}"
    shown = preset.get("analysis", {}).get("errors", {}).get("figures", ["overall"])
    for category in shown:
        src = run_dir / "analysis" / "errors" / "comparison" / f"{category}.png"
        if _copy(src, fig_dir / f"errors_{category}.png"):
            figures[f"Fig. 4–9: error analysis, {category} (rows: baseline, object, background, decoupled)"] = (
                f"figures/errors_{category}.png"
            )
    results["figures"] = figures
    configs = {"preset": results.pop("preset_yaml")}
    for name in ("teacher", run_name("baseline", seeds_of(preset, "baseline")[0])):
        if name in results["configs"]:
            configs[name] = results["configs"][name]
    distilled = [n for n in results["configs"] if n.startswith(("defeat_", "decoupled_"))]
    if distilled:
        configs[distilled[0]] = results["configs"][distilled[0]]
    results["configs"] = results["configs"]  # every stage's config in results.json
    markdown = render.render_report(dict(results, configs=configs))
    markdown += (
        "\nEvery stage's config is in `models/<stage>/config.yaml` of the run folder and in "
        "`results.json` (`configs`).\n"
    )
    atomic_write_text(run_dir / "report.md", markdown)
    html = render.markdown_to_html(markdown, f"DeFeat reproduce {preset['preset']}")
    atomic_write_text(run_dir / "report.html", html)
    atomic_write_json(run_dir / "results.json", _json_safe(results))
    return {
        "report": str(run_dir / "report.md"),
        "results": str(run_dir / "results.json"),
        "table": results["table"],
        "claims": results["claims"],
    }


def _json_safe(obj: Any) -> Any:
    """NaN/inf -> None, recursively (strict JSON)."""
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else obj
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj
