"""``defeat reproduce``: the DeFeat supplementary's study end to end on the embedded benchmark, with a report.

It orchestrates the toolkit's own commands, called in-process through :func:`defeat.cli.main.main`; it does not
reimplement training, evaluation or analysis. A **preset** (``defeat/configs/reproduce_<name>.yaml`` or any YAML
file of the same shape) gives the benchmark size, the teacher and student model sections, the steps per model,
the seeds and the analysis sizes; the orchestrator derives every stage's config from it and saves it into the
stage's folder (``config.yaml``), so each stage can be rerun by hand with the command printed in ``done.json``.

Stages (each in its own folder of the run directory, in this order)::

    data                       defeat data synth                         -> data/
    teacher                    defeat train   (bigger backbone, longer)   -> models/teacher/
    eval_teacher               defeat eval                               -> eval/teacher/
    <student>_s<seed>          defeat train (baseline) / defeat distill  -> models/<student>_s<seed>/
    eval_<student>_s<seed>     defeat eval                               -> eval/<student>_s<seed>/
    channel_distance           defeat analyze channel-distance           -> analysis/channel_distance/
    grad_norm                  defeat analyze grad-norm                  -> analysis/grad_norm/
    errors                     defeat analyze errors                     -> analysis/errors/
    report                     report.md, report.html, results.json, figures/   (always rewritten)

Students (first seed of each first, then the extra seeds, so that an interrupted run has every comparison early):
``baseline`` (no KD), ``object``, ``background``, ``all``, ``decoupled`` (feature distillation only: the
supplementary's five students), ``defeat`` (decoupled features + decoupled proposals) and ``fgfi``.

Caching: a stage that finished has ``done.json`` (written atomically, last) holding a key -- a hash of its
config/arguments and of its inputs' keys. A rerun skips a stage whose key matches, refuses one whose key differs
(the preset changed: use a new ``--out`` or delete that stage's folder) and resumes an interrupted training
stage from its ``checkpoint_last.pt`` (``--resume``); other interrupted stages rerun from the start.
A stage that fails is reported and skips the stages that depend on it; the others still run, and the report is
written with what exists (missing numbers are shown as n/a).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import platform
import shutil
import subprocess
import threading
import time
import traceback
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import yaml

from defeat.config import Config, ConfigError, apply_override, config_from_dict, config_to_dict, save_config
from defeat.utils import atomic_write_json, atomic_write_text, read_json

PRESETS = ("tiny", "quick", "full", "coco")

#: student name -> (distill.feature_mode, distill.proposal_mode); ``None`` = plain training (no KD)
STUDENT_MODES: dict[str, tuple[str, str] | None] = {
    "baseline": None,
    "object": ("object", "none"),
    "background": ("background", "none"),
    "all": ("all", "none"),
    "decoupled": ("decoupled", "none"),
    "defeat": ("decoupled", "decoupled"),
    "fgfi": ("fgfi", "none"),
}

RUN_KEYS = {"preset", "description", "indicative", "budget_minutes", "benchmark", "common", "teacher", "student",
            "distill", "students", "seeds", "analysis", "estimate", "keep_checkpoints"}
COCO_KEYS = {"preset", "description", "configs_only", "data", "common", "pairs", "distill", "gpus"}
ESTIMATE_KEYS = ("synth_image", "teacher_step", "student_step", "distill_step", "defeat_step", "teacher_image",
                 "student_image", "errors", "stage_overhead", "report")


class StageError(RuntimeError):
    """A stage's command failed; the message names the stage and the command."""


class StaleStageError(ValueError):
    """The run folder holds a stage made with other settings than the preset asks for (stops the whole run)."""


# ------------------------------------------------------------------------------------------ presets
def preset_file(name: str) -> Path:
    """The YAML of a built-in preset (``defeat/configs/reproduce_<name>.yaml``, shipped as package data)."""
    return Path(str(resources.files("defeat") / "configs" / f"reproduce_{name}.yaml"))


def _merge(base: dict, extra: dict | None) -> dict:
    """Deep merge: ``extra`` wins; nested mappings are merged, everything else replaced."""
    out = copy.deepcopy(base)
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_preset(spec: str, overrides: list[str] | None = None) -> dict:
    """A preset by name (``tiny``, ``quick``, ``full``, ``coco``) or path, with ``--set key=value`` overrides
    (e.g. ``teacher.steps=800``, ``seeds.baseline=[0,1,2,3]``). One-line ``ValueError`` on bad input."""
    path = preset_file(spec) if spec in PRESETS else Path(spec)
    if not path.is_file():
        raise ValueError(f"--preset {spec!r}: not a preset name ({', '.join(PRESETS)}) nor a YAML file")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(tree, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    for assignment in overrides or []:
        try:
            apply_override(tree, assignment)
        except ConfigError as err:
            raise ValueError(str(err)) from None
    tree.setdefault("preset", path.stem.replace("reproduce_", ""))
    tree["source"] = str(path)
    known = (COCO_KEYS if tree.get("configs_only") else RUN_KEYS) | {"source"}
    unknown = sorted(set(tree) - known)
    if unknown:
        raise ValueError(f"{path}: unknown preset key '{unknown[0]}' (known: {', '.join(sorted(known - {'source'}))})")
    if tree.get("configs_only"):
        return tree
    missing = sorted({"benchmark", "common", "teacher", "student", "students", "seeds"} - set(tree))
    if missing:
        raise ValueError(f"{path}: missing preset section '{missing[0]}'")
    bad = [s for s in tree["students"] if s not in STUDENT_MODES]
    if bad:
        raise ValueError(f"{path}: students: unknown student {bad[0]!r} (choose from {', '.join(STUDENT_MODES)})")
    if "baseline" not in tree["students"]:
        raise ValueError(f"{path}: students: the baseline student is required (every comparison refers to it)")
    for role in ("teacher", "student"):
        for key in ("model", "steps"):
            if key not in tree[role]:
                raise ValueError(f"{path}: {role}.{key}: missing")
    for name, seeds in tree["seeds"].items():
        if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
            raise ValueError(f"{path}: seeds.{name}: expected a non-empty list of integers, got {seeds!r}")
    if "default" not in tree["seeds"]:
        raise ValueError(f"{path}: seeds.default: missing (the seeds of students not listed in seeds)")
    probe = Path("<run>")  # derive one config per role now, so that a bad model/config key fails before any work
    derive_config(tree, "teacher", probe, probe / "teacher", 0)
    derive_config(tree, "student", probe, probe / "student", 0, ("decoupled", "decoupled"))
    unknown_est = sorted(set(tree.get("estimate", {})) - set(ESTIMATE_KEYS))
    if unknown_est:
        raise ValueError(f"{path}: unknown key 'estimate.{unknown_est[0]}' (known: {', '.join(ESTIMATE_KEYS)})")
    return tree


def seeds_of(preset: dict, student: str) -> list[int]:
    return list(preset["seeds"].get(student, preset["seeds"]["default"]))


def run_order(preset: dict) -> list[tuple[str, int]]:
    """(student, seed) pairs: the first seed of every student in preset order, then the extra seeds round-robin."""
    seeds = {s: seeds_of(preset, s) for s in preset["students"]}
    order = [(s, seeds[s][0]) for s in preset["students"]]
    for k in range(1, max(len(v) for v in seeds.values())):
        order += [(s, seeds[s][k]) for s in preset["students"] if k < len(seeds[s])]
    return order


def run_name(student: str, seed: int) -> str:
    return f"{student}_s{seed}"


# ------------------------------------------------------------------------------------------ derived configs
def data_paths(run_dir: Path) -> dict:
    data = run_dir / "data"
    return {"train_images": str(data / "train"), "train_annotations": str(data / "train.json"),
            "val_images": str(data / "val"), "val_annotations": str(data / "val.json")}


def derive_config(preset: dict, role: str, run_dir: Path, out_dir: Path, seed: int,
                  modes: tuple[str, str] | None = None) -> Config:
    """The full config of one model: ``common`` + the role's ``model``/``config`` sections + data paths, steps,
    output folder, seed (+ the ``distill`` section and teacher checkpoint for a distilled student)."""
    section = preset[role]
    tree = _merge(preset["common"], {"model": section["model"]})
    tree = _merge(tree, section.get("config"))
    tree["data"] = _merge(tree.get("data", {}), data_paths(run_dir))
    steps = int(section["steps"])
    warmup = int(section.get("warmup_steps", max(1, steps // 10)))
    tree["schedule"] = _merge(tree.get("schedule", {}), {"max_steps": steps, "warmup_steps": min(warmup, steps)})
    tree["output"] = _merge(tree.get("output", {}), {"dir": str(out_dir)})
    tree["seed"] = seed
    if modes is not None:
        tree["distill"] = _merge(preset.get("distill", {}), {
            "teacher_checkpoint": str(run_dir / "models" / "teacher" / "model_final.pt"), "teacher_config": "",
            "feature_mode": modes[0], "proposal_mode": modes[1]})
    return config_from_dict(tree, source=f"preset {preset['preset']} ({role}, {out_dir.name})")


# ------------------------------------------------------------------------------------------ stages
@dataclass
class Stage:
    name: str
    folder: Path
    kind: str  # data | train | distill | eval | channel_distance | grad_norm | errors
    argv: list[str]  # the defeat command it runs (without the leading 'defeat')
    deps: list[str] = field(default_factory=list)
    config: Config | None = None  # training stages: saved as folder/config.yaml before running
    steps: int = 0
    estimate: dict = field(default_factory=dict)  # {"kind": estimate key, "count": units} parts of the time
    outputs: list[str] = field(default_factory=list)  # files (relative to folder) that must exist afterwards
    key: str = ""

    def spec(self, run_dir: Path) -> dict:
        """What defines the stage, with the run folder written as <run> (so a moved run folder stays cached)."""
        text = json.dumps({"argv": self.argv, "config": config_to_dict(self.config) if self.config else None},
                          sort_keys=True, default=str)
        return json.loads(text.replace(str(run_dir), "<run>"))


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
    stages.append(Stage(
        "data", data_dir, "data",
        ["data", "synth", "--out", str(data_dir), "--seed", str(b.get("seed", 0)), "--num-train",
         str(b["num_train"]), "--num-val", str(num_val), "--image-size", str(b["image_size"]),
         "--min-objects", str(b.get("min_objects", 2)), "--max-objects", str(b.get("max_objects", 8)),
         "--workers", str(b.get("workers", 2))],
        estimate={"synth_image": int(b["num_train"]) + num_val}, outputs=["train.json", "val.json"]))

    def add_model(name: str, role: str, seed: int, modes: tuple[str, str] | None) -> None:
        folder = run_dir / "models" / name
        cfg = derive_config(preset, role, run_dir, folder, seed, modes)
        command = "train" if modes is None else "distill"
        cfg_path = str(folder / "config.yaml")
        step_key = ("teacher_step" if role == "teacher" else "student_step" if modes is None
                    else "defeat_step" if modes[1] != "none" else "distill_step")
        image_key = "teacher_image" if role == "teacher" else "student_image"
        deps = ["data"] + ([] if modes is None else ["teacher"])
        stages.append(Stage(name, folder, command, [command, cfg_path, "--resume"], deps, cfg,
                            cfg.schedule.max_steps, {step_key: cfg.schedule.max_steps, image_key: val_images},
                            ["model_final.pt"]))
        ev = run_dir / "eval" / name
        stages.append(Stage(f"eval_{name}", ev, "eval",
                            ["eval", cfg_path, "--checkpoint", str(folder / "model_final.pt"), "--out", str(ev)],
                            [name], estimate={image_key: val_images}, outputs=["results.json", "metrics.json"]))

    teacher_seed = int(preset["teacher"].get("seed", 0))
    add_model("teacher", "teacher", teacher_seed, None)
    for student, seed in run_order(preset):
        add_model(run_name(student, seed), "student", seed, STUDENT_MODES[student])

    first = {s: run_name(s, seeds_of(preset, s)[0]) for s in preset["students"]}
    teacher_ckpt = str(run_dir / "models" / "teacher" / "model_final.pt")

    cd = an.get("channel_distance")
    fig1 = [s for s in ("baseline", "object", "background", "all", "decoupled") if s in first]
    # Fig. 1 twice: as the distiller compares the maps (distilled students through their adapters), and on the
    # raw FPN output of every student (what the student itself carries, without the adapter's help)
    for name, feature in (("channel_distance", None), ("channel_distance_raw", "raw")):
        if cd is None or len(fig1) < 2:
            break
        folder = run_dir / "analysis" / name
        n = min(int(cd.get("images", 20)), num_val)
        stages.append(Stage(
            name, folder, "channel_distance",
            ["analyze", "channel-distance", "--teacher", teacher_ckpt,
             "--student", *[f"{s}={run_dir / 'models' / first[s] / 'model_final.pt'}" for s in fig1],
             "--images", str(n), "--seed", str(cd.get("seed", 0)), "--level", str(cd.get("level", "P2")),
             *(["--student-feature", feature] if feature else []),
             "--images-dir", paths["val_images"], "--annotations", paths["val_annotations"],
             "--out", str(folder), "--quiet"],
            ["teacher", *[first[s] for s in fig1]],
            estimate={"teacher_image": n, "student_image": n * len(fig1)},
            outputs=["channel_distance_summary.json", "channel_distance.png"]))

    gn = an.get("grad_norm")
    if gn is not None:
        folder = run_dir / "analysis" / "grad_norm"
        n = min(int(gn.get("images", 8)), int(b["num_train"]))
        k = int(gn.get("train_steps", 0))
        stages.append(Stage(
            "grad_norm", folder, "grad_norm",
            ["analyze", "grad-norm", "--student", str(run_dir / "models" / first["baseline"] / "model_final.pt"),
             "--teacher", teacher_ckpt, "--mode", str(gn.get("mode", "all")), "--train-steps", str(k),
             "--images", str(n), "--seed", str(gn.get("seed", 0)),
             "--images-dir", paths["train_images"], "--annotations", paths["train_annotations"],
             "--out", str(folder), "--quiet"],
            ["teacher", first["baseline"]], steps=k,
            estimate={"distill_step": k + n}, outputs=["grad_norm_ratio.json"]))

    er = an.get("errors")
    compared = [s for s in ("baseline", "object", "background", "decoupled") if s in first]
    if er is not None and len(compared) >= 2:
        folder = run_dir / "analysis" / "errors"
        stages.append(Stage(
            "errors", folder, "errors",
            ["analyze", "errors", "--gt", paths["val_annotations"],
             "--dets", *[f"{s}={run_dir / 'eval' / first[s] / 'results.json'}" for s in compared],
             *(["--categories", ",".join(er["categories"])] if er.get("categories") else []),
             "--out", str(folder), "--formats", str(er.get("formats", "none")),
             "--workers", str(er.get("workers", 1)), "--quiet"],
            ["data", *[f"eval_{first[s]}" for s in compared]],
            estimate={"errors": 1}, outputs=["errors_table.json"]))

    keys: dict[str, str] = {}
    for stage in stages:
        stage.estimate["stage_overhead"] = 1  # start-up: imports, model builds, dataset loading
        payload = json.dumps({"spec": stage.spec(run_dir), "deps": [keys[d] for d in stage.deps]}, sort_keys=True)
        stage.key = keys[stage.name] = hashlib.sha256(payload.encode()).hexdigest()[:16]
    return stages


# ------------------------------------------------------------------------------------------ time estimate
class Estimator:
    """Seconds per unit (``preset.estimate``: a training step of each kind, an evaluated image, ...), replaced by
    measured values as they come; kinds not measured yet are scaled by the measured/a-priori ratio of this machine."""

    def __init__(self, apriori: dict):
        self.apriori = {k: float(v) for k, v in apriori.items()}
        self.measured: dict[str, float] = {}

    def rate(self, kind: str) -> float:
        if kind in self.measured:
            return self.measured[kind]
        ratios = [self.measured[k] / self.apriori[k] for k in self.measured if self.apriori.get(k)]
        factor = sum(ratios) / len(ratios) if ratios else 1.0
        return self.apriori.get(kind, 0.0) * factor

    def seconds(self, stage: Stage) -> float:
        return sum(count * self.rate(kind) for kind, count in stage.estimate.items())


def _step_seconds(metrics_path: Path) -> list[float]:
    """The ``sec_per_step`` of every logged window of a training log (skipping unreadable lines)."""
    out = []
    if not metrics_path.is_file():
        return out
    for line in metrics_path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "sec_per_step" in record:
            out.append(float(record["sec_per_step"]))
    return out


class _FirstStepsWatcher(threading.Thread):
    """Waits for the first logged window of a training stage, then calls ``callback(sec_per_step)`` once."""

    def __init__(self, metrics_path: Path, skip: int, callback: Callable[[float], None]):
        super().__init__(daemon=True)
        self.path, self.skip, self.callback = metrics_path, skip, callback
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(2.0):
            seconds = _step_seconds(self.path)
            if len(seconds) > self.skip:
                self.callback(seconds[-1])
                return


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


# ------------------------------------------------------------------------------------------ running
def _say(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(f"[reproduce] {message}")


def _run_cli(argv: list[str], stage: str) -> None:
    from defeat.cli.main import main

    rc = main(argv)
    if rc != 0:
        raise StageError(f"stage {stage}: `defeat {' '.join(argv)}` exited with code {rc} (message above)")


def execute_stage(stage: Stage, run_dir: Path, estimator: Estimator | None = None,
                  on_measure: Callable[[], None] | None = None, keep_checkpoints: bool = False) -> dict:
    """Run one stage unless it is done; returns its ``done.json`` record (``status``: cached, ran or resumed).

    Once a training stage is done its ``checkpoint_last.pt`` (weights + optimizer state, only needed to resume) is
    deleted unless ``keep_checkpoints``; ``model_final.pt`` stays. The same goes for the short distillation run of
    the grad-norm analysis."""
    done_path, started_path = stage.folder / "done.json", stage.folder / "started.json"
    if done_path.is_file():
        record = read_json(done_path)
        if record.get("key") != stage.key:
            raise StaleStageError(f"{stage.folder}: stage {stage.name} finished with other settings than this preset "
                                  f"asks for (key {record.get('key')} != {stage.key}); use a new --out, or delete "
                                  "that folder to rerun the stage")
        return dict(record, status="cached")
    resumed = False
    if started_path.is_file():
        previous = read_json(started_path)
        if previous.get("key") != stage.key:
            raise StaleStageError(f"{stage.folder}: an interrupted stage {stage.name} was started with other "
                                  "settings than this preset asks for; use a new --out, or delete that folder")
        resumed = True
    stage.folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(started_path, {"stage": stage.name, "key": stage.key, "started": time.strftime("%FT%T")})

    watcher = None
    if stage.kind in ("train", "distill"):
        last = stage.folder / "checkpoint_last.pt"
        metrics = stage.folder / "metrics.jsonl"
        if not last.is_file() and metrics.is_file():
            metrics.unlink()  # an attempt that wrote no checkpoint restarts from step 0: drop its log lines
        resumed = resumed and last.is_file()
        save_config(stage.config, stage.folder / "config.yaml")
        kind = next(iter(stage.estimate))
        if estimator is not None and kind not in estimator.measured and not resumed:
            def measured(sec: float, kind=kind) -> None:
                estimator.measured.setdefault(kind, sec)
                if on_measure is not None:
                    on_measure()
            watcher = _FirstStepsWatcher(metrics, 0, measured)
            watcher.start()
    t0 = time.perf_counter()
    try:
        _run_cli(stage.argv, stage.name)
    finally:
        if watcher is not None:
            watcher.stop.set()
    seconds = time.perf_counter() - t0
    missing = [f for f in stage.outputs if not (stage.folder / f).is_file()]
    if missing:
        raise StageError(f"stage {stage.name}: `defeat {' '.join(stage.argv)}` wrote no {stage.folder / missing[0]}")
    record = {"stage": stage.name, "key": stage.key, "status": "resumed" if resumed else "ran",
              "seconds": round(seconds, 2), "finished": time.strftime("%FT%T"),
              "command": "defeat " + " ".join(stage.argv), "steps": stage.steps}
    if stage.kind in ("train", "distill"):
        windows = _step_seconds(stage.folder / "metrics.jsonl")
        steady = windows[1:] or windows
        if steady:
            record["sec_per_step"] = round(sum(steady) / len(steady), 4)
            if estimator is not None and not resumed:
                estimator.measured[next(iter(stage.estimate))] = record["sec_per_step"]
    atomic_write_json(done_path, record)
    if not keep_checkpoints:
        for path in (stage.folder / "checkpoint_last.pt", stage.folder / "pretrain" / "checkpoint_last.pt"):
            if path.is_file():
                path.unlink()
    return dict(record)


def describe_plan(stages: list[Stage], estimator: Estimator, preset: dict, done: set[str]) -> str:
    lines = [f"{'stage':<26} {'command':<18} {'steps':>6} {'estimate':>10}"]
    total_steps, total = 0, 0.0
    for s in stages:
        est = 0.0 if s.name in done else estimator.seconds(s)
        total += est
        total_steps += s.steps if s.name not in done else 0
        cmd = " ".join(s.argv[:2]) if s.argv[0] == "analyze" else s.argv[0]
        lines.append(f"{s.name:<26} {cmd:<18} {s.steps or '':>6} "
                     f"{'cached' if s.name in done else _minutes(est):>10}")
    report = estimator.apriori.get("report", 5.0)
    lines.append(f"{'report':<26} {'':<18} {'':>6} {_minutes(report):>10}")
    budget = preset.get("budget_minutes")
    lines.append(f"planned: {len(stages) + 1} stages ({len(done)} already done), {total_steps} training steps to run, "
                 f"estimated {_minutes(total + report)}" + (f" (budget {budget} min)" if budget else ""))
    return "\n".join(lines)


def _versions() -> dict:
    import numpy
    import torch
    import torchvision

    import defeat

    commit = None
    try:
        repo = Path(defeat.__file__).resolve().parents[2]
        if (repo / ".git").exists():
            commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                                    timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"defeat": getattr(defeat, "__version__", "unknown"), "git_commit": commit,
            "python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": numpy.__version__, "platform": platform.platform(), "processor": platform.machine(),
            "cpu_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()}


def run_reproduce(preset: dict, out: str | Path, *, dry_run: bool = False) -> dict:
    """Run (or continue) the study of ``preset`` in ``out``; returns the summary written to ``out/run.json``."""
    run_dir = Path(out).resolve()
    if preset.get("configs_only"):
        return write_coco_configs(preset, run_dir)
    stages = build_plan(preset, run_dir)
    estimator = Estimator(preset.get("estimate", {}))
    done = {s.name for s in stages if (s.folder / "done.json").is_file()}
    _say(f"preset {preset['preset']} -> {run_dir}")
    _say("plan (a-priori estimate; refined from the measured s/step of the first steps):\n"
         + describe_plan(stages, estimator, preset, done))
    if dry_run:
        return {"stages": [s.name for s in stages], "estimate_seconds": sum(estimator.seconds(s) for s in stages)}
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "preset.yaml", yaml.safe_dump({k: v for k, v in preset.items() if k != "source"},
                                                             sort_keys=False))
    t_start = time.perf_counter()
    records: dict[str, dict] = {}
    failed: dict[str, str] = {}
    current = {"index": 0}

    def remaining() -> float:
        return sum(estimator.seconds(s) for s in stages[current["index"]:]
                   if s.name not in records and s.name not in done)

    def on_measure() -> None:
        rates = ", ".join(f"{k} {v:.2f} s" for k, v in estimator.measured.items())
        _say(f"measured s/step: {rates} -> estimated remaining {_minutes(remaining())}, "
             f"total {_minutes(time.perf_counter() - t_start + remaining())}"
             + (f" (budget {preset['budget_minutes']} min)" if preset.get("budget_minutes") else ""))

    for index, stage in enumerate(stages):
        current["index"] = index
        blocked = [d for d in stage.deps if d in failed]
        if blocked:
            failed[stage.name] = f"skipped: depends on failed stage {blocked[0]}"
            _say(f"{stage.name}: {failed[stage.name]}")
            continue
        if stage.name not in done:
            _say(f"stage {index + 1}/{len(stages)} {stage.name}: defeat {' '.join(stage.argv[:2])} ... "
                 f"(estimated {_minutes(estimator.seconds(stage))})")
        try:
            record = execute_stage(stage, run_dir, estimator, on_measure, bool(preset.get("keep_checkpoints")))
        except StaleStageError:
            raise
        except Exception as err:  # report, skip the stages that depend on it, go on with the others
            failed[stage.name] = f"{type(err).__name__}: {err}"
            _say(f"stage {stage.name} FAILED: {failed[stage.name]}")
            if not isinstance(err, (StageError, ValueError)):
                traceback.print_exc()
            continue
        records[stage.name] = record
        if record["status"] != "cached":
            extra = f", {record['sec_per_step']:.2f} s/step" if "sec_per_step" in record else ""
            _say(f"{stage.name} {record['status']} in {_minutes(record['seconds'])}{extra}; "
                 f"estimated remaining {_minutes(remaining())}")
    summary = write_report(preset, run_dir, stages, records, failed, _versions(),
                           wall_seconds=time.perf_counter() - t_start)
    atomic_write_json(run_dir / "run.json", {"preset": preset["preset"], "stages": {
        s.name: {"status": records[s.name]["status"] if s.name in records else "failed",
                 "seconds": records.get(s.name, {}).get("seconds"), "note": failed.get(s.name)} for s in stages},
        "failed": failed, "wall_seconds": round(time.perf_counter() - t_start, 2)})
    _say(f"report: {run_dir / 'report.md'}  results: {run_dir / 'results.json'}"
         + (f"  ({len(failed)} stage(s) failed: {', '.join(failed)})" if failed else ""))
    return dict(summary, failed=failed, statuses={n: r["status"] for n, r in records.items()})


# ------------------------------------------------------------------------------------------ report
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
    from defeat.analysis import report

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
    bands = {b: report.error_bands(er_rows, b) for b in ("band_Loc", "band_Sim", "band_Oth", "band_BG")} \
        if er_rows else {}

    table = report.results_table(teacher, students)
    claims = report.compute_claims(teacher, students, cd_rows, gn_ratio, er_rows, channel_distance_raw=cd_raw_rows)
    stage_info = {}
    for s in stages:
        rec = records.get(s.name) or _read(s.folder / "done.json") or {}
        stage_info[s.name] = {"status": rec.get("status", "failed" if s.name in failed else "not run"),
                              "seconds": rec.get("seconds"), "steps": s.steps or None,
                              "sec_per_step": rec.get("sec_per_step"), "command": "defeat " + " ".join(s.argv)}
    configs = {}
    for s in stages:
        if s.config is not None:
            configs[s.name] = yaml.safe_dump(config_to_dict(s.config), sort_keys=False)
    return {"preset": preset["preset"], "description": preset.get("description", ""),
            "indicative": bool(preset.get("indicative", False)), "teacher": teacher, "students": students,
            "table": table, "claims": claims, "channel_distance": cd_rows,
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
    from defeat.analysis import report

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
    markdown = report.render_report(dict(results, configs=configs))
    markdown += ("\nEvery stage's config is in `models/<stage>/config.yaml` of the run folder and in "
                 "`results.json` (`configs`).\n")
    atomic_write_text(run_dir / "report.md", markdown)
    html = report.markdown_to_html(markdown, f"DeFeat reproduce {preset['preset']}")
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


# ------------------------------------------------------------------------------------------ coco (configs only)
def write_coco_configs(preset: dict, out: Path) -> dict:
    """Write the COCO configs of every pair (teacher, baseline student, DeFeat student) and a README with the
    torchrun commands and the paper's expected numbers. Nothing is trained."""
    out = Path(out)
    configs = out / "configs"
    gpus = int(preset.get("gpus", 8))
    written, lines = [], []
    lines += [f"# DeFeat on COCO: configs and commands (preset `{preset['preset']}`)", "",
              "**Not run by `defeat reproduce`**: this preset only writes the configs below and this README. It needs "
              f"COCO 2017 at the paths in the configs ({preset['data']['train_images']}, ...) and GPUs (the commands "
              f"use {gpus} per node; `data.batch_size` is per GPU).", "",
              "Each pair: train the teacher (or point `distill.teacher_checkpoint` at a trained one), the baseline "
              "student, then the DeFeat student; compare with `defeat eval`.", ""]
    expected = {}
    for pair in preset["pairs"]:
        name = pair["name"]
        pair_dir = configs / name
        base = _merge(_merge(preset["common"], {"data": preset["data"]}), pair.get("overrides"))
        trees = {
            "teacher": _merge(base, {"model": pair["teacher"], "output": {"dir": f"runs/coco/{name}/teacher"}}),
            "student": _merge(base, {"model": pair["student"], "output": {"dir": f"runs/coco/{name}/student"}}),
            "defeat": _merge(base, {"model": pair["student"], "output": {"dir": f"runs/coco/{name}/defeat"},
                                    "distill": _merge(preset.get("distill", {}), {
                                        "teacher_checkpoint": f"runs/coco/{name}/teacher/model_final.pt",
                                        **pair.get("distill", {})})}),
        }
        for role, tree in trees.items():
            cfg = config_from_dict(tree, source=f"preset {preset['preset']} ({name}, {role})")
            path = pair_dir / f"{role}.yaml"
            save_config(cfg, path)
            written.append(str(path))
        run = f"torchrun --nproc_per_node={gpus} -m defeat.cli.main"
        lines += [f"## {name}: {pair['teacher']['name']} → {pair['student']['name']}", "",
                  pair.get("note", ""), "", "```bash",
                  f"{run} train {pair_dir / 'teacher.yaml'}      # teacher",
                  f"{run} train {pair_dir / 'student.yaml'}      # baseline student (no KD)",
                  f"{run} distill {pair_dir / 'defeat.yaml'}     # DeFeat student",
                  f"defeat eval {pair_dir / 'defeat.yaml'} --checkpoint runs/coco/{name}/defeat/model_final.pt",
                  "```", ""]
        if pair.get("expected"):
            expected[name] = pair["expected"]
            numbers = ", ".join(f"{k} {v}" for k, v in pair["expected"].items())
            lines += [f"Expected (paper, COCO val2017 AP): {numbers}", ""]
    atomic_write_text(out / "README.md", "\n".join(lines))
    atomic_write_json(out / "expected.json", {"note": "the paper's COCO numbers; not run here", "pairs": expected})
    _say(f"wrote {len(written)} configs and {out / 'README.md'} (nothing trained: coco is configs only)")
    return {"configs": written, "readme": str(out / "README.md"), "expected": expected}
