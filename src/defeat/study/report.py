"""The report of a ``defeat reproduce`` run: every number collected from the stage folders, ``results.json``,
``report.md`` / ``report.html`` and the figures they show (``figures/``)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import yaml

from defeat.config import config_to_dict
from defeat.study import claims, render
from defeat.study.plan import Stage
from defeat.study.presets import run_name, run_order, seeds_of
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in table if r["model"] != "teacher" and r.get("AP") is not None]
    teacher = next((r["AP"] for r in table if r["model"] == "teacher" and r.get("AP") is not None), None)
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(1.1 * len(rows) + 2, 3.2))
    x = range(len(rows))
    colors = ["tab:gray" if r["model"] == "baseline" else "tab:blue" for r in rows]
    ax.bar(x, [100 * r["AP"] for r in rows], color=colors,
           yerr=[100 * (r.get("AP_std") or 0) for r in rows], capsize=3)
    if teacher is not None:
        ax.axhline(100 * teacher, color="tab:red", ls="--", lw=1, label=f"teacher {100 * teacher:.1f}")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xticks(list(x), [r["model"] for r in rows], rotation=20, fontsize=8)
    ax.set_ylabel("COCO AP × 100")
    ax.set_title("students on the embedded benchmark (± seed std)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


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
                tmp, format="PNG", optimize=True)
    else:
        shutil.copyfile(src, tmp)
    tmp.replace(dst)
    return True


def collect_results(preset: dict, run_dir: Path, stages: list[Stage], records: dict[str, dict],
                    failed: dict[str, str]) -> dict:
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
    gn = _read(run_dir / "analysis" / "grad_norm" / "grad_norm_ratio.json")
    gn_rows = [r for r in (gn or {}).get("rows", []) if r.get("image_id") == "all"]
    gn_ratio = next((r["ratio"] for r in gn_rows if r.get("level") == "all"), None)
    er = _read(run_dir / "analysis" / "errors" / "errors_table.json")
    er_rows = er["rows"] if er else None
    bands = {b: claims.error_bands(er_rows, b) for b in ("band_Loc", "band_Sim", "band_Oth", "band_BG")} \
        if er_rows else {}

    table = claims.results_table(teacher, students)
    claim_list = claims.compute_claims(teacher, students, cd_rows, gn_ratio, er_rows, channel_distance_raw=cd_raw_rows)
    stage_info = {}
    for s in stages:
        rec = records.get(s.name) or _read(s.folder / "done.json") or {}
        stage_info[s.name] = {"status": rec.get("status", "failed" if s.name in failed else "not run"),
                              "seconds": rec.get("seconds"), "steps": s.steps or None,
                              "sec_per_step": rec.get("sec_per_step"), "command": s.command}
    configs = {}
    for s in stages:
        if s.config is not None and s.kind in ("train", "distill"):
            configs[s.name] = yaml.safe_dump(config_to_dict(s.config), sort_keys=False)
    return {"preset": preset["preset"], "description": preset.get("description", ""),
            "indicative": bool(preset.get("indicative", False)), "teacher": teacher, "students": students,
            "table": table, "claims": claim_list, "channel_distance": cd_rows,
            "channel_distance_raw": cd_raw_rows,
            "grad_norm": {"ratio": gn_ratio, "rows": gn_rows} if gn_rows else None,
            "errors": bands or None, "stages": stage_info,
            "seeds": {s: seeds_of(preset, s) for s in preset["students"]} | {
                "teacher": [int(preset["teacher"].get("seed", 0))], "benchmark": [preset["benchmark"].get("seed", 0)]},
            "failed": failed, "preset_yaml": yaml.safe_dump({k: v for k, v in preset.items() if k != "source"},
                                                           sort_keys=False),
            "configs": configs}


def write_report(preset: dict, run_dir: Path, stages: list[Stage], records: dict[str, dict],
                 failed: dict[str, str], versions: dict, wall_seconds: float) -> dict:
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
    if _copy(run_dir / "analysis" / "channel_distance" / "channel_distance.png", fig_dir / "channel_distance.png"):
        figures["Fig. 1: per-channel teacher–student distance, object (red) vs background"] = \
            "figures/channel_distance.png"
    if _copy(run_dir / "analysis" / "channel_distance_raw" / "channel_distance.png",
             fig_dir / "channel_distance_raw.png"):
        figures["Fig. 1 on the raw FPN output (no adapter): per-channel teacher–student distance"] = \
            "figures/channel_distance_raw.png"
    grad_maps = sorted((run_dir / "analysis" / "grad_norm").glob("grad_norm_*.png"))
    for src in grad_maps[: int(preset.get("analysis", {}).get("grad_norm", {}).get("figures", 2))]:
        if _copy(src, fig_dir / src.name):
            figures[f"Fig. 2–3: gradient-norm map of the FPN, {src.stem.replace('grad_norm_', 'image ')}"] = \
                f"figures/{src.name}"
    shown = preset.get("analysis", {}).get("errors", {}).get("figures", ["overall"])
    for category in shown:
        src = run_dir / "analysis" / "errors" / "comparison" / f"{category}.png"
        if _copy(src, fig_dir / f"errors_{category}.png"):
            figures[f"Fig. 4–9: error analysis, {category} (rows: baseline, object, background, decoupled)"] = \
                f"figures/errors_{category}.png"
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
    markdown += ("\nEvery stage's config is in `models/<stage>/config.yaml` of the run folder and in "
                 "`results.json` (`configs`).\n")
    atomic_write_text(run_dir / "report.md", markdown)
    html = render.markdown_to_html(markdown, f"DeFeat reproduce {preset['preset']}")
    atomic_write_text(run_dir / "report.html", html)
    atomic_write_json(run_dir / "results.json", _json_safe(results))
    return {"report": str(run_dir / "report.md"), "results": str(run_dir / "results.json"),
            "table": results["table"], "claims": results["claims"]}


def _json_safe(obj: Any) -> Any:
    """NaN/inf -> None, recursively (strict JSON)."""
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else obj
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj
