"""The stages of a ``defeat reproduce`` run, derived from its preset: what each calls, needs, writes and costs.

Stages (each in its own folder of the run directory, in this order)::

    data                       api.synth                        -> data/
    teacher                    api.train   (the bigger network)  -> models/teacher/
    eval_teacher               api.evaluate                     -> eval/teacher/
    <student>_s<seed>          api.train (baseline) / distill   -> models/<student>_s<seed>/
    eval_<student>_s<seed>     api.evaluate                     -> eval/<student>_s<seed>/
    baseline_x2_s<seed>        api.train (baseline, 2S steps)   -> models/baseline_x2_s<seed>/   (+ eval_...)
    channel_distance(_raw)     api.channel_distance             -> analysis/channel_distance(_raw)/
    grad_norm_<loss>           api.grad_norm                    -> analysis/grad_norm_<loss>/
    errors                     api.analyze_errors               -> analysis/errors/
    sens_<name>_s<seed>        api.distill (other KD weights)   -> models/sens_<name>_s<seed>/   (+ eval_...)

Students (first seed of each first, then the extra seeds, so that an interrupted run has every comparison early):
``baseline`` (no KD), ``object``, ``background``, ``all``, ``decoupled`` (feature distillation only: the
supplementary's five students), ``defeat`` (decoupled features + decoupled proposals) and ``fgfi``. The
students of ``regime.curve_students`` (baseline and decoupled) are evaluated ``regime.eval_points`` times during
training (``eval.every_steps``: AP at 25/50/75/100 % of the schedule by default), for the AP-against-steps plot
(the picture). The doubling test trains the baseline again for twice the students' steps (cosine over 2S, warmup
doubled; ``regime.plateau_seeds``, default the baseline's seeds) in ``baseline_x2_s<seed>``: the plateau check.
Fig. 1 compares every seed of the five students; Fig. 2-3 back-propagates the detection
loss alone, the distillation loss alone and their sum (``grad_norm_detection``, ``_distillation``, ``_sum``).
The ``sensitivity`` students (decoupled, other KD weights, e.g. ``alpha_bg`` or ``weights: auto``) come last and
are reported apart: the reproduction keeps the authors' weights.

Each stage records the equivalent ``defeat`` command (``Stage.command``), so it can be rerun by hand.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from defeat.config import Config, ModelConfig, config_to_dict
from defeat.models.spec import model_spec
from defeat.study.estimate import Estimator, minutes
from defeat.study.presets import (
    STUDENT_MODES,
    data_paths,
    derive_config,
    plateau_seeds,
    regime_settings,
    run_name,
    run_order,
    seeds_of,
    sensitivity_settings,
)

#: the losses whose gradients Fig. 2-3 measures, each in its own stage ``grad_norm_<loss>``
GRAD_LOSSES = ("detection", "distillation", "sum")
#: the run name of the doubling test's baseline on twice the students' schedule (``baseline_x2_s<seed>``)
PLATEAU_RUN = "baseline_x2"


def curve_every_steps(steps: int, points: int) -> int:
    """``eval.every_steps`` that evaluates a run of ``steps`` steps at ``points`` evenly spaced points (the last
    one is the final evaluation): ``max(1, steps // points)``."""
    return max(1, int(steps) // max(1, int(points)))


@dataclass
class Stage:
    name: str
    folder: Path
    kind: str  # data | train | distill | eval | channel_distance | grad_norm | errors
    params: dict  # keyword arguments of the API call (paths as strings)
    command: str  # the equivalent `defeat ...` command line, for people
    deps: list[str] = field(default_factory=list)
    config: Config | None = None  # model stages: saved as folder/config.yaml before running
    steps: int = 0
    estimate: dict = field(default_factory=dict)  # {estimate key: units} parts of the time
    outputs: list[str] = field(default_factory=list)  # files (relative to folder) that must exist afterwards
    seed: int = 0  # the global torch seed set before the stage runs
    key: str = ""

    def spec(self, run_dir: Path) -> dict:
        """What defines the stage, with the run folder written as <run> (so a moved run folder stays cached)."""
        text = json.dumps(
            {
                "kind": self.kind,
                "params": self.params,
                "seed": self.seed,
                "config": config_to_dict(self.config) if self.config else None,
            },
            sort_keys=True,
            default=str,
        )
        return json.loads(text.replace(str(run_dir), "<run>"))


def _flags(params: dict, order: list[str]) -> str:
    """``--key value`` pairs of ``params`` for the command line shown to people."""
    parts = []
    for key in order:
        value = params.get(key)
        if value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            parts.append(flag)
        elif isinstance(value, dict):
            parts.append(flag + " " + " ".join(f"{k}={v}" for k, v in value.items()))
        elif isinstance(value, (list, tuple)):
            parts.append(f"{flag} {','.join(map(str, value))}")
        else:
            parts.append(f"{flag} {value}")
    return " ".join(parts)


def build_plan(preset: dict, run_dir: Path) -> list[Stage]:
    """The stage list of a run preset (see the module docstring), with keys and time-estimate parts."""
    run_dir = Path(run_dir)
    b = preset["benchmark"]
    an = preset.get("analysis", {})
    paths = data_paths(run_dir)
    num_val = int(b["num_val"])
    val_images = min(num_val, int(preset["common"].get("data", {}).get("val_max_images", 0)) or num_val)
    stages: list[Stage] = []

    data_dir = run_dir / "data"
    synth = {
        "out": str(data_dir),
        "seed": int(b.get("seed", 0)),
        "num_train": int(b["num_train"]),
        "num_val": num_val,
        "image_size": int(b["image_size"]),
        "min_objects": int(b.get("min_objects", 2)),
        "max_objects": int(b.get("max_objects", 8)),
        "workers": int(b.get("workers", 2)),
    }
    stages.append(
        Stage(
            "data",
            data_dir,
            "data",
            synth,
            "defeat data synth " + _flags(synth, list(synth)),
            estimate={"synth_image": int(b["num_train"]) + num_val},
            outputs=["train.json", "val.json"],
        )
    )

    regime = regime_settings(preset)
    points = int(regime["eval_points"])

    def add_model(
        name: str,
        role: str,
        seed: int,
        modes: tuple[str, str] | None,
        curve: bool = False,
        extra: dict | None = None,
        schedule_factor: int = 1,
    ) -> None:
        folder = run_dir / "models" / name
        steps = int(preset[role]["steps"]) * schedule_factor
        if curve:  # evaluated during training: AP against steps (the trainer's periodic evaluation)
            extra = {**(extra or {}), "eval": {"every_steps": curve_every_steps(steps, points)}}
        cfg = derive_config(preset, role, run_dir, folder, seed, modes, extra, schedule_factor)
        evals = 1 + (len(range(cfg.eval.every_steps, steps, cfg.eval.every_steps)) if curve else 0)
        kind = "train" if modes is None else "distill"
        cfg_path = folder / "config.yaml"
        step_key = (
            "teacher_step"
            if role == "teacher"
            else "student_step"
            if modes is None
            else "defeat_step"
            if modes[1] != "none"
            else "distill_step"
        )
        image_key = "teacher_image" if role == "teacher" else "student_image"
        deps = ["data"] + ([] if modes is None else ["teacher"])
        stages.append(
            Stage(
                name,
                folder,
                kind,
                {"resume": True},
                f"defeat {kind} {cfg_path} --resume",
                deps,
                cfg,
                cfg.schedule.max_steps,
                {step_key: cfg.schedule.max_steps, image_key: val_images * evals},
                ["model_final.pt"],
                seed=seed,
            )
        )
        ev = run_dir / "eval" / name
        checkpoint = str(folder / "model_final.pt")
        stages.append(
            Stage(
                f"eval_{name}",
                ev,
                "eval",
                {"checkpoint": checkpoint, "out": str(ev)},
                f"defeat eval {cfg_path} --checkpoint {checkpoint} --out {ev}",
                [name],
                cfg,
                estimate={image_key: val_images},
                outputs=["results.json", "metrics.json"],
            )
        )

    teacher_seed = int(preset["teacher"].get("seed", 0))
    add_model("teacher", "teacher", teacher_seed, None)
    curve_students = set(regime["curve_students"])
    for student, seed in run_order(preset):
        add_model(run_name(student, seed), "student", seed, STUDENT_MODES[student], student in curve_students)
    # the doubling test: the baseline again on twice the schedule (same shape, same seeds), its own stages
    for seed in plateau_seeds(preset):
        add_model(run_name(PLATEAU_RUN, seed), "student", seed, None, "baseline" in curve_students, schedule_factor=2)

    first = {s: run_name(s, seeds_of(preset, s)[0]) for s in preset["students"]}
    teacher_ckpt = str(run_dir / "models" / "teacher" / "model_final.pt")

    cd = an.get("channel_distance")
    fig1 = [s for s in ("baseline", "object", "background", "all", "decoupled") if s in first]
    # Fig. 1 twice: as the distiller compares the maps (distilled students through their adapters), and on the
    # raw FPN output of every student (what the student itself carries, without the adapter's help); FPNs of
    # different widths compare the raw output through each student's least-squares map ("probe")
    same_width = _fpn_width(preset, "teacher") == _fpn_width(preset, "student")
    for name, feature in (("channel_distance", "auto"), ("channel_distance_raw", "raw" if same_width else "probe")):
        if cd is None or len(fig1) < 2:
            break
        folder = run_dir / "analysis" / name
        n = min(int(cd.get("images", 20)), num_val)
        runs = [run_name(s, seed) for s in fig1 for seed in seeds_of(preset, s)]  # every seed: mean and spread
        params = {
            "teacher": teacher_ckpt,
            "students": {r: str(run_dir / "models" / r / "model_final.pt") for r in runs},
            "images_dir": paths["val_images"],
            "annotations": paths["val_annotations"],
            "out": str(folder),
            "level": str(cd.get("level", "P2")),
            "images": n,
            "seed": int(cd.get("seed", 0)),
            "student_feature": feature,
            "quiet": True,
        }
        shown = {**params, "student": params["students"]}
        stages.append(
            Stage(
                name,
                folder,
                "channel_distance",
                params,
                "defeat analyze channel-distance "
                + _flags(
                    shown,
                    [
                        "teacher",
                        "student",
                        "images",
                        "seed",
                        "level",
                        "student_feature",
                        "images_dir",
                        "annotations",
                        "out",
                        "quiet",
                    ],
                ),
                ["teacher", *runs],
                estimate={"teacher_image": n, "student_image": n * len(runs)},
                outputs=["channel_distance_summary.json", "channel_distance.png"],
                seed=int(cd.get("seed", 0)),
            )
        )

    gn = an.get("grad_norm")
    for loss in GRAD_LOSSES if gn is not None else ():
        # the same student, images and K steps of all-regions distillation for each loss: detection alone (the
        # control), distillation alone (what the claim tests) and their sum (what training back-propagates)
        folder = run_dir / "analysis" / f"grad_norm_{loss}"
        n = min(int(gn.get("images", 8)), int(b["num_train"]))
        k = int(gn.get("train_steps", 0))
        params = {
            "student": str(run_dir / "models" / first["baseline"] / "model_final.pt"),
            "teacher": teacher_ckpt,
            "mode": str(gn.get("mode", "all")),
            "loss": loss,
            "train_steps": k,
            "images": n,
            "seed": int(gn.get("seed", 0)),
            "images_dir": paths["train_images"],
            "annotations": paths["train_annotations"],
            "out": str(folder),
            "quiet": True,
        }
        stages.append(
            Stage(
                f"grad_norm_{loss}",
                folder,
                "grad_norm",
                params,
                "defeat analyze grad-norm " + _flags(params, list(params)),
                ["teacher", first["baseline"]],
                steps=k,
                estimate={"distill_step": k + n},
                outputs=["grad_norm_ratio.json"],
                seed=int(gn.get("seed", 0)),
            )
        )

    er = an.get("errors")
    compared = [s for s in ("baseline", "object", "background", "decoupled") if s in first]
    if er is not None and len(compared) >= 2:
        folder = run_dir / "analysis" / "errors"
        formats = str(er.get("formats", "png"))
        # the categories whose comparison figures the report shows get their own figures
        figured = list(er.get("categories") or [f for f in er.get("figures", []) if f != "overall"])
        params = {
            "gt": paths["val_annotations"],
            "dets": {s: str(run_dir / "eval" / first[s] / "results.json") for s in compared},
            "out": str(folder),
            "categories": figured or None,
            "formats": [] if formats == "none" else formats.split(","),
            "workers": int(er.get("workers", 1)),
            "quiet": True,
        }
        shown = {**params, "formats": formats}
        stages.append(
            Stage(
                "errors",
                folder,
                "errors",
                params,
                "defeat analyze errors "
                + _flags(shown, ["gt", "dets", "categories", "out", "formats", "workers", "quiet"]),
                ["data", *[f"eval_{first[s]}" for s in compared]],
                estimate={"errors": 1},
                outputs=["errors_table.json"],
            )
        )

    # the sensitivity of the result to the KD weights: decoupled students with other weights, reported apart
    for entry in sensitivity_settings(preset):
        for seed in entry.get("seeds") or seeds_of(preset, "decoupled")[:1]:
            add_model(
                run_name(f"sens_{entry['name']}", seed),
                "student",
                int(seed),
                STUDENT_MODES["decoupled"],
                extra={"distill": dict(entry.get("distill") or {})},
            )

    keys: dict[str, str] = {}
    for stage in stages:
        stage.estimate["stage_overhead"] = 1  # start-up: model builds, dataset loading
        payload = json.dumps({"spec": stage.spec(run_dir), "deps": [keys[d] for d in stage.deps]}, sort_keys=True)
        stage.key = keys[stage.name] = hashlib.sha256(payload.encode()).hexdigest()[:16]
    return stages


def wall_seconds(stages: list[Stage], seconds: dict[str, float], jobs: int) -> float:
    """Wall-clock seconds of ``stages`` run ``jobs`` at a time, scheduled as the parallel runner does: whenever a slot
    is free, the first waiting stage in plan order whose dependencies have all finished starts (``seconds``: each
    stage's own time; a dependency outside ``stages`` counts as finished)."""
    names = {s.name for s in stages}
    waiting, running, finished, now = list(stages), [], set(), 0.0  # running: (end time, name)
    while waiting or running:
        ready = [s for s in waiting if all(d in finished or d not in names for d in s.deps)]
        for stage in ready[: jobs - len(running)]:
            waiting.remove(stage)
            running.append((now + seconds[stage.name], stage.name))
        if not running:  # nothing can ever start (a dependency cycle): the plan builder never makes one
            raise ValueError(f"stages {[s.name for s in waiting]} wait on each other")
        running.sort()
        now, name = running.pop(0)
        finished.add(name)
    return now


def _fpn_width(preset: dict, role: str) -> int:
    """The FPN channels of the preset's teacher or student model (by name: no model is built)."""
    name = {**preset["common"].get("model", {}), **preset[role].get("model", {})}.get("name", ModelConfig.name)
    return model_spec(name).fpn_channels


def describe_plan(stages: list[Stage], estimator: Estimator, preset: dict, done: set[str], jobs: int = 1) -> str:
    """The plan as a table: stage, command, steps, estimated time (``cached`` for finished stages)."""
    lines = [f"{'stage':<26} {'command':<24} {'steps':>6} {'estimate':>10}"]
    total_steps, total = 0, 0.0
    for s in stages:
        est = 0.0 if s.name in done else estimator.seconds(s)
        total += est
        total_steps += s.steps if s.name not in done else 0
        words = s.command.split()[1:]
        command = " ".join(words[:2]) if words[0] in ("analyze", "data") else words[0]
        lines.append(
            f"{s.name:<26} {command:<24} {s.steps or '':>6} {'cached' if s.name in done else minutes(est):>10}"
        )
    report = estimator.apriori.get("report", 5.0)
    lines.append(f"{'report':<26} {'':<24} {'':>6} {minutes(report):>10}")
    budget = preset.get("budget_minutes")
    estimated = f"estimated {minutes(total + report)}"
    if jobs > 1:  # the rates are per stage; side by side the wall clock is the schedule's length
        each = {s.name: 0.0 if s.name in done else estimator.seconds(s) for s in stages}
        wall = wall_seconds(stages, each, jobs) + report
        estimated = f"{minutes(total + report)} of stage time, estimated {minutes(wall)} with {jobs} at once"
    lines.append(
        f"planned: {len(stages) + 1} stages ({len(done)} already done), {total_steps} training steps to run, "
        + estimated
        + (f" (budget {budget} min)" if budget else "")
    )
    return "\n".join(lines)
