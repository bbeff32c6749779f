"""Presets of ``defeat reproduce`` and the configs derived from them.

A **preset** (``defeat/configs/reproduce_<name>.yaml`` or any YAML file of the same shape) gives the benchmark size,
the teacher and student model sections, the steps per model, the seeds and the analysis sizes. Every model's full
:class:`~defeat.config.Config` is derived from it here (:func:`derive_config`); the plan (:mod:`defeat.study.plan`)
saves it into the model's folder so each stage can be rerun by hand.
"""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path

from defeat.config import Config, ConfigError, apply_override, config_from_dict, read_yaml_mapping

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

RUN_KEYS = {
    "preset",
    "description",
    "indicative",
    "budget_minutes",
    "benchmark",
    "common",
    "teacher",
    "student",
    "distill",
    "students",
    "seeds",
    "analysis",
    "estimate",
    "keep_checkpoints",
    "jobs",
    "claims",
    "regime",
    "sensitivity",
}
COCO_KEYS = {"preset", "description", "configs_only", "data", "common", "pairs", "distill", "gpus"}
CLAIMS_KEYS = (
    "margin_ap",
    "alpha",
    "gap_closed_min",
    "assumed_sd_ap",
    "effect_ap",
    "power_target",
    "seeds_per_arm",
    "distance_sd",
    "distance_effect",
    "grad_levels",
    "bootstrap_resamples",
)
REGIME_KEYS = (
    "curve_students",
    "eval_points",
    "plateau_gain_max",
    "plateau_seeds",
    "teacher_lead_min_ap",
    "teacher_lead_min_sd",
)
#: the defaults of the preset's ``claims`` and ``regime`` sections (None: not pre-registered; ``plateau_seeds``
#: None = the baseline's seeds)
CLAIMS_DEFAULTS = {
    "margin_ap": 1.0,
    "alpha": 0.05,
    "gap_closed_min": 0.5,
    "assumed_sd_ap": None,
    "effect_ap": None,
    "power_target": 0.8,
    "seeds_per_arm": None,
    "distance_sd": None,
    "distance_effect": None,
    "grad_levels": None,
    "bootstrap_resamples": 2000,
}
REGIME_DEFAULTS = {
    "curve_students": ["baseline", "decoupled"],
    "eval_points": 4,
    "plateau_gain_max": 0.10,
    "plateau_seeds": None,
    "teacher_lead_min_ap": 3.0,
    "teacher_lead_min_sd": 2.0,
}
ESTIMATE_KEYS = (
    "synth_image",
    "teacher_step",
    "student_step",
    "distill_step",
    "defeat_step",
    "teacher_image",
    "student_image",
    "errors",
    "stage_overhead",
    "report",
)


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
    tree = read_yaml_mapping(path)
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
    for section, keys in (("claims", CLAIMS_KEYS), ("regime", REGIME_KEYS)):
        unknown_keys = sorted(set(tree.get(section) or {}) - set(keys))
        if unknown_keys:
            raise ValueError(f"{path}: unknown key '{section}.{unknown_keys[0]}' (known: {', '.join(keys)})")
    settings = claims_settings(tree)
    if not settings["margin_ap"] > 0 or not 0 < settings["alpha"] < 0.5:
        raise ValueError(f"{path}: claims.margin_ap must be > 0 and claims.alpha in (0, 0.5), got {settings}")
    _check_claims(tree, settings, path)
    _check_regime(tree, regime_settings(tree), path)
    points = int(regime_settings(tree)["eval_points"])
    if points < 1 or int(tree["student"]["steps"]) % points:
        raise ValueError(
            f"{path}: regime.eval_points ({points}) must be >= 1 and divide student.steps "
            f"({tree['student']['steps']}), so that the evaluations fall on 50/75/100 % of the schedule"
        )
    bad_curve = [s for s in regime_settings(tree)["curve_students"] if s not in tree["students"]]
    if bad_curve:
        raise ValueError(f"{path}: regime.curve_students: {bad_curve[0]!r} is not one of the students")
    for entry in sensitivity_settings(tree):
        unknown_keys = sorted(set(entry) - {"name", "distill", "seeds"})
        if "name" not in entry or unknown_keys:
            raise ValueError(
                f"{path}: sensitivity: each entry needs 'name' and may have 'distill', 'seeds' (got {sorted(entry)})"
            )
    jobs = tree.get("jobs", 1)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"{path}: jobs: must be an integer >= 1 (stages at once), got {jobs!r}")
    unknown_est = sorted(set(tree.get("estimate", {})) - set(ESTIMATE_KEYS))
    if unknown_est:
        raise ValueError(f"{path}: unknown key 'estimate.{unknown_est[0]}' (known: {', '.join(ESTIMATE_KEYS)})")
    return tree


def _positive(value, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{where}: expected a number > 0, got {value!r}")


def _check_claims(tree: dict, settings: dict, path: Path) -> None:
    """The pre-registration of the ``claims`` section: sd, effects, power target, seeds per arm, Fig. 1 and Fig. 2-3
    settings (one-line ``ValueError`` naming the key)."""
    from defeat.study.claims import POWERED_CLAIMS, SEED_ARMS

    if settings["assumed_sd_ap"] is not None:
        _positive(settings["assumed_sd_ap"], f"{path}: claims.assumed_sd_ap")
    effect = settings["effect_ap"]
    if isinstance(effect, dict):
        for key, value in effect.items():
            if key != "default" and key not in POWERED_CLAIMS:
                raise ValueError(
                    f"{path}: claims.effect_ap.{key}: not a claim with a Welch test on AP (known: default, "
                    f"{', '.join(POWERED_CLAIMS)})"
                )
            _positive(value, f"{path}: claims.effect_ap.{key}")
    elif effect is not None:
        _positive(effect, f"{path}: claims.effect_ap")
    if not 0 < float(settings["power_target"]) < 1:
        raise ValueError(f"{path}: claims.power_target must be in (0, 1), got {settings['power_target']!r}")
    if (settings["distance_sd"] is None) != (settings["distance_effect"] is None):
        raise ValueError(f"{path}: claims.distance_sd and claims.distance_effect go together (Fig. 1's power)")
    for key in ("distance_sd", "distance_effect"):
        if settings[key] is not None:
            _positive(settings[key], f"{path}: claims.{key}")
    levels = settings["grad_levels"]
    if levels is not None and (
        not isinstance(levels, list) or not levels or not all(isinstance(x, str) for x in levels)
    ):
        raise ValueError(f"{path}: claims.grad_levels: expected a non-empty list of FPN level names, got {levels!r}")
    resamples = settings["bootstrap_resamples"]
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 100:
        raise ValueError(f"{path}: claims.bootstrap_resamples: expected an integer >= 100, got {resamples!r}")
    per_arm = settings["seeds_per_arm"]
    if per_arm is not None:
        if isinstance(per_arm, bool) or not isinstance(per_arm, int) or per_arm < 1:
            raise ValueError(f"{path}: claims.seeds_per_arm: expected an integer >= 1, got {per_arm!r}")
        for student in (s for s in SEED_ARMS if s in tree["students"]):
            if len(seeds_of(tree, student)) != per_arm:
                raise ValueError(
                    f"{path}: claims.seeds_per_arm pre-registers {per_arm} seeds per arm but {student} has "
                    f"{len(seeds_of(tree, student))} ({seeds_of(tree, student)})"
                )


def _check_regime(tree: dict, settings: dict, path: Path) -> None:
    """The ``regime`` section's plateau seeds and teacher-lead thresholds (one-line ``ValueError``)."""
    seeds = settings["plateau_seeds"]
    if seeds is not None:
        if not isinstance(seeds, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in seeds):
            raise ValueError(f"{path}: regime.plateau_seeds: expected a list of integers, got {seeds!r}")
        extra = [x for x in seeds if x not in seeds_of(tree, "baseline")]
        if extra:
            raise ValueError(
                f"{path}: regime.plateau_seeds: seed {extra[0]} is not a baseline seed "
                f"({seeds_of(tree, 'baseline')}): the doubling test compares the same seeds at S and 2S steps"
            )
    for key in ("teacher_lead_min_ap", "teacher_lead_min_sd", "plateau_gain_max"):
        value = settings[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"{path}: regime.{key}: expected a number >= 0, got {value!r}")


def plateau_seeds(preset: dict) -> list[int]:
    """The seeds of the 2S baseline of the doubling test (``regime.plateau_seeds``; default the baseline's)."""
    seeds = regime_settings(preset)["plateau_seeds"]
    return list(seeds_of(preset, "baseline") if seeds is None else seeds)


def claims_settings(preset: dict) -> dict:
    """The preset's ``claims`` section: equivalence margin (AP points), test level, gap-closed threshold, and the
    pre-registered power inputs (seed sd, effects, power target, seeds per arm; Fig. 1's distance sd / effect;
    Fig. 2-3's levels and bootstrap resamples)."""
    return {**CLAIMS_DEFAULTS, **(preset.get("claims") or {})}


def regime_settings(preset: dict) -> dict:
    """The preset's ``regime`` section: the students evaluated during training (AP against steps) at
    ``eval_points`` evenly spaced points of the schedule (the picture), the doubling test's threshold and seeds
    (``plateau_gain_max``, ``plateau_seeds``) and the teacher-lead thresholds (AP points, multiples of the sd)."""
    return {**REGIME_DEFAULTS, **(preset.get("regime") or {})}


def sensitivity_settings(preset: dict) -> list[dict]:
    """The preset's ``sensitivity`` entries: extra decoupled students with other distill weights (``name``,
    ``distill`` overrides, ``seeds``), reported apart from the reproduction (which keeps the authors' weights)."""
    return list(preset.get("sensitivity") or [])


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
    return {
        "train_images": str(data / "train"),
        "train_annotations": str(data / "train.json"),
        "val_images": str(data / "val"),
        "val_annotations": str(data / "val.json"),
    }


def derive_config(
    preset: dict,
    role: str,
    run_dir: Path,
    out_dir: Path,
    seed: int,
    modes: tuple[str, str] | None = None,
    extra: dict | None = None,
    schedule_factor: int = 1,
) -> Config:
    """The full config of one model: ``common`` + the role's ``model``/``config`` sections + data paths, steps,
    output folder, seed (+ the ``distill`` section and teacher checkpoint for a distilled student) + ``extra``
    (config sections merged last, e.g. ``{"eval": {"every_steps": 100}}``). ``schedule_factor`` stretches the
    schedule: steps and warmup times the factor, the same policy (the doubling test's 2S baseline)."""
    section = preset[role]
    tree = _merge(preset["common"], {"model": section["model"]})
    tree = _merge(tree, section.get("config"))
    tree["data"] = _merge(tree.get("data", {}), data_paths(run_dir))
    steps = int(section["steps"])
    warmup = int(section.get("warmup_steps", max(1, steps // 10))) * int(schedule_factor)
    steps *= int(schedule_factor)
    tree["schedule"] = _merge(tree.get("schedule", {}), {"max_steps": steps, "warmup_steps": min(warmup, steps)})
    tree["output"] = _merge(tree.get("output", {}), {"dir": str(out_dir)})
    tree["seed"] = seed
    if modes is not None:
        tree["distill"] = _merge(
            preset.get("distill", {}),
            {
                "teacher_checkpoint": str(run_dir / "models" / "teacher" / "model_final.pt"),
                "teacher_config": "",
                "feature_mode": modes[0],
                "proposal_mode": modes[1],
            },
        )
    tree = _merge(tree, extra)
    return config_from_dict(tree, source=f"preset {preset['preset']} ({role}, {out_dir.name})")
