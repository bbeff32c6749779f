"""``defeat compare CONFIG --methods baseline,decoupled,all --seeds 3 --out DIR``: which distillation helps on
*your* data, by how much, at what cost -- answered over seeds, with tests.

CONFIG is a distillation config (the student's model, data and schedule, and ``distill.teacher_checkpoint`` or
``distill.teacher_model`` / ``teacher_weights``), e.g. the ``<stem>_distill.yaml`` of ``defeat init``. Stages, in
this order (each in its own folder of OUT, cached and resumed by the study's runner,
:func:`~defeat.study.runner.execute_stage`)::

    teacher               the teacher on the val split (refused below distill.teacher_min_ap unless
                          distill.force)                                        -> teacher/
    baseline_s<seed>      api.train: the student alone                          -> runs/baseline_s<seed>/
    latency               student and teacher inference latency (eager; ONNX Runtime for the student
                          where onnxruntime is installed), after the first baseline -> latency/
    <method>_s<seed>      api.distill with distill.feature_mode=<method>, proposal_mode none
                          (decoupled_proposals: + proposal_mode decoupled; decoupled_auto: + weights auto)
                                                                                -> runs/<method>_s<seed>/
    eval_<run>, errors    after every run: the baseline and the best distilled method (highest mean AP) on the
                          first seed both finished, evaluated (detections) and put through the COCO error
                          analysis                                              -> eval/<run>/, errors/

Seed-major order (every method of the first seed before the second seed), so that an interrupted compare has
every comparison early; the same seeds for every method (same initial weights, data order and schedule). After
the first baseline, the teacher's AP is compared with it and a warning printed when the teacher is not ahead by
``distill.teacher_min_lead``. The report (:mod:`~defeat.study.compare_report`): ``results.json``,
``report.md``, ``report.html``, ``figures/``.

Method runs skip ``api.distill``'s own teacher check (``teacher_check_images: 0``): the ``teacher`` stage did it
once on the whole val split. The baseline runs carry the default ``distill`` section (``api.train`` ignores it), so
that changing a KD setting does not retrain the baselines.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import shutil
import statistics
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from defeat.config import FEATURE_MODES, Config, config_from_dict, config_to_dict, save_config
from defeat.study.compare_report import BASELINE, decide, method_rows, statistics_note, write_report_files
from defeat.study.estimate import minutes, step_seconds
from defeat.study.plan import Stage
from defeat.study.report import eval_curve
from defeat.study.runner import (
    StaleStageError,
    check_jobs,
    execute_stage,
    run_parallel,
    run_stage,
    skip_if_blocked,
)
from defeat.utils import atomic_write_json, read_json

#: named methods beyond the feature modes: name -> the distill settings it changes (a feature mode's method is
#: ``{"feature_mode": <mode>, "proposal_mode": "none"}``; every other setting comes from the config)
EXTRA_METHODS = {
    "decoupled_proposals": {"feature_mode": "decoupled", "proposal_mode": "decoupled"},
    # the KD weights scaled at the start (distill.weights: auto) instead of the config's fixed alphas
    "decoupled_auto": {"feature_mode": "decoupled", "proposal_mode": "none", "weights": "auto"},
}
DEFAULT_METHODS = "baseline,decoupled"
#: the error analysis's curves, each the AP once the errors of its type and those before it are forgiven
ERROR_CURVES = ("C75", "C50", "Loc", "Sim", "Oth", "BG", "FN")


def say(message: str) -> None:
    """A progress line of the compare (printed above any progress bar)."""
    from tqdm import tqdm

    tqdm.write(f"[compare] {message}")


def known_methods() -> list[str]:
    """``baseline``, every ``distill.feature_mode`` but ``none`` (read from config.py, so new modes appear here) and
    the named extras (``decoupled_proposals``, ``decoupled_auto``)."""
    return [BASELINE, *(m for m in FEATURE_MODES if m != "none"), *EXTRA_METHODS]


def method_settings(name: str) -> dict[str, str] | None:
    """The ``distill`` settings a method sets (``feature_mode``, ``proposal_mode``, maybe ``weights``); None for the
    baseline."""
    if name == BASELINE:
        return None
    return dict(EXTRA_METHODS.get(name) or {"feature_mode": name, "proposal_mode": "none"})


def describe_method(name: str) -> str:
    settings = method_settings(name)
    if settings is None:
        return "the student alone"
    return " + ".join(f"{k}={v}" for k, v in settings.items() if k == "feature_mode" or v != "none")


def parse_methods(methods: str | Sequence[str]) -> list[str]:
    """The methods to compare, the baseline first (always trained: every method is compared with it); one-line
    ValueError for an unknown name or no distillation method."""
    names = [n.strip() for n in (methods.split(",") if isinstance(methods, str) else methods) if n.strip()]
    known = known_methods()
    for name in names:
        if name not in known:
            raise ValueError(f"--methods: unknown method {name!r} (known: {', '.join(known)})")
    ordered = [BASELINE, *(n for n in dict.fromkeys(names) if n != BASELINE)]
    if len(ordered) < 2:
        raise ValueError(
            f"--methods: name at least one distillation method besides baseline (known: {', '.join(known)})"
        )
    return ordered


def seed_list(cfg: Config, seeds: int) -> list[int]:
    """``seeds`` consecutive seeds from the config's ``seed``; ValueError for fewer than one."""
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"--seeds: must be an integer >= 1, got {seeds!r}")
    return [cfg.seed + i for i in range(seeds)]


def run_config(cfg: Config, method: str, seed: int, folder: Path) -> Config:
    """The config of one run: ``cfg`` with its seed, its output folder and the method's distillation modes."""
    tree = config_to_dict(cfg)
    tree["seed"] = int(seed)
    tree["output"]["dir"] = str(folder)
    settings = method_settings(method)
    if settings is None:  # api.train ignores the distill section: the default one keeps the baseline's key KD-free
        tree["distill"] = config_to_dict(Config())["distill"]
    else:
        tree["distill"].update(settings, teacher_check_images=0, baseline_checkpoint="")
    return config_from_dict(tree, source=f"{method} seed {seed}")


def teacher_config(cfg: Config, folder: Path) -> Config:
    """What the teacher and latency stages depend on: model, data, evaluation, device and the teacher's fields
    (not the schedule, the KD settings, the seed or ``distill.force``, so that changing those keeps them cached)."""
    full, tree = config_to_dict(cfg), config_to_dict(Config())
    for key in ("model", "data", "eval", "device", "precision", "bf16", "deterministic", "cpu_allocator"):
        tree[key] = full[key]
    for key in ("teacher_config", "teacher_checkpoint", "teacher_model", "teacher_weights"):
        tree["distill"][key] = full["distill"][key]
    tree["output"]["dir"] = str(folder)
    return config_from_dict(tree, source="teacher")


def check_inputs(cfg: Config, source: str = "config") -> None:
    """A teacher is named and exists; the val split exists (every run is evaluated on it). One line each."""
    d = cfg.distill
    if not d.teacher_checkpoint and not d.teacher_model:
        raise ValueError(
            f"{source}: no teacher: set distill.teacher_checkpoint (the teacher's model_final.pt) or "
            "distill.teacher_model and distill.teacher_weights (a torchvision detector); compare distils from it"
        )
    if d.teacher_checkpoint and not Path(d.teacher_checkpoint).is_file():
        raise FileNotFoundError(f"distill.teacher_checkpoint: {d.teacher_checkpoint}: not found")
    if not Path(cfg.data.val_annotations).is_file():
        raise FileNotFoundError(
            f"data.val_annotations: {cfg.data.val_annotations}: not found (compare evaluates every run on it)"
        )


def check_methods_fit(cfg: Config, methods: list[str]) -> list[str]:
    """Build the distiller of every method once on the student and the teacher (nothing trains) and turn its
    one-line ValueError into ``--methods: <method> does not fit ...``. A method with a proposal term on a pair of
    two head families (where the distiller turns the term off) is refused too: it would be its feature-only
    twin. Returns the teacher's load report."""
    from defeat import api
    from defeat.distill import build_distiller
    from defeat.engine import build_for_dataset, load_datasets

    train_set, _ = load_datasets(cfg)
    teacher, report = api.load_teacher(cfg, train_set.categories, cfg.data.train_annotations)
    student = build_for_dataset(cfg.model, train_set.categories, cfg.seed)
    pair = f"student {cfg.model.name} and teacher {teacher.name}"
    for method in methods:
        changes = method_settings(method)
        if changes is None:
            continue
        settings = dataclasses.replace(cfg.distill, **changes).settings()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                distiller = build_distiller(
                    copy.deepcopy(student), teacher.model, settings, max_steps=cfg.schedule.max_steps
                )
            except ValueError as err:
                raise ValueError(f"--methods: {method} does not fit {pair}: {err}") from None
        if changes["proposal_mode"] != "none" and not distiller.head_kd:
            why = distiller.notes[0] if distiller.notes else "the head term needs one head family on both sides"
            twin = changes["feature_mode"]
            raise ValueError(f"--methods: {method} does not fit {pair}: {why}; compare {twin} instead")
    return [report]


# ------------------------------------------------------------------------------------------ the plan
def build_compare_plan(cfg: Config, methods: list[str], seeds: list[int], run_dir: Path) -> list[Stage]:
    """The stages (see the module docstring) with their keys (a hash of each stage's spec and its inputs' keys)."""
    run_dir = Path(run_dir)
    stages: list[Stage] = []
    t_folder = run_dir / "teacher"
    t_cfg = teacher_config(cfg, t_folder)
    d = cfg.distill
    if d.teacher_checkpoint:
        t_command = f"defeat eval {t_folder / 'config.yaml'} --checkpoint {d.teacher_checkpoint} --out {t_folder}"
    else:
        t_command = (
            f"defeat eval {t_folder / 'config.yaml'} --set model.name={d.teacher_model} "
            f"--set model.weights={d.teacher_weights} --out {t_folder}"
        )
    stages.append(Stage("teacher", t_folder, "teacher", {}, t_command, [], t_cfg, outputs=["metrics.json"], key=""))
    first_baseline = f"{BASELINE}_s{seeds[0]}"
    for index, seed in enumerate(seeds):
        for method in methods:
            name = f"{method}_s{seed}"
            folder = run_dir / "runs" / name
            run_cfg = run_config(cfg, method, seed, folder)
            kind = "train" if method == BASELINE else "distill"
            steps = run_cfg.schedule.max_steps
            stages.append(
                Stage(
                    name,
                    folder,
                    kind,
                    {"resume": True},
                    f"defeat {kind} {folder / 'config.yaml'} --resume",
                    [] if kind == "train" else ["teacher"],
                    run_cfg,
                    steps,
                    {"student_step" if kind == "train" else "distill_step": steps},
                    ["model_final.pt", "metrics_final.json"],
                    seed=seed,
                )
            )
            if index == 0 and method == BASELINE:
                l_folder = run_dir / "latency"
                student = folder / "model_final.pt"
                stages.append(
                    Stage(
                        "latency",
                        l_folder,
                        "latency",
                        {"student": str(student), "images": 5, "repeats": 3},
                        f"defeat export --checkpoint {student} --out {l_folder / 'student.pt'} --onnx "
                        "(then timed in-process: eager PyTorch and ONNX Runtime)",
                        ["teacher", first_baseline],
                        teacher_config(cfg, l_folder),
                        outputs=["latency.json"],
                    )
                )
    _assign_keys(stages, run_dir, {})
    return stages


def _assign_keys(stages: list[Stage], run_dir: Path, keys: dict[str, str]) -> None:
    """Each stage's key: a hash of its spec and of its dependencies' keys (``keys``: name -> key, filled here)."""
    for stage in stages:
        payload = json.dumps({"spec": stage.spec(run_dir), "deps": [keys[x] for x in stage.deps]}, sort_keys=True)
        stage.key = keys[stage.name] = hashlib.sha256(payload.encode()).hexdigest()[:16]


def final_aps(run_dir: Path, methods: list[str], seeds: list[int]) -> dict[str, dict[int, float]]:
    """``{method: {seed: AP}}`` of the runs that finished (``metrics_final.json``)."""
    out: dict[str, dict[int, float]] = {}
    for method in methods:
        for seed in seeds:
            final = _read(run_dir / "runs" / f"{method}_s{seed}" / "metrics_final.json")
            if final and final.get("AP") is not None:
                out.setdefault(method, {})[seed] = float(final["AP"])
    return out


def build_error_stages(cfg: Config, methods: list[str], seeds: list[int], stages: list[Stage], run_dir: Path):
    """Where the baseline and the best distilled method (highest mean AP) differ: ``defeat eval`` of each on the
    first seed both finished (their detections), then ``defeat analyze errors`` of the pair (COCO error bands).
    Planned after the trainings, since the best method is known only then; ``[]`` when there is no such pair."""
    aps = final_aps(run_dir, methods, seeds)
    ranking = decide({m: list(v.values()) for m, v in aps.items()})["ranking"]
    best = next((m for m in ranking if m != BASELINE), None)
    seed = next((s for s in seeds if best and s in aps.get(BASELINE, {}) and s in aps[best]), None)
    if best is None or seed is None:
        return []
    by_name = {s.name: s for s in stages}
    evals = []
    for method in (BASELINE, best):
        run = by_name[f"{method}_s{seed}"]
        folder, checkpoint = run_dir / "eval" / run.name, run.folder / "model_final.pt"
        evals.append(
            Stage(
                f"eval_{run.name}",
                folder,
                "eval",
                {"checkpoint": str(checkpoint), "out": str(folder)},
                f"defeat eval {run.folder / 'config.yaml'} --checkpoint {checkpoint} --out {folder}",
                [run.name],
                run.config,
                outputs=["results.json"],
                seed=seed,
            )
        )
    folder = run_dir / "errors"
    dets = {BASELINE: str(evals[0].folder / "results.json"), best: str(evals[1].folder / "results.json")}
    params = {"gt": cfg.data.val_annotations, "dets": dets, "out": str(folder), "formats": ["png"], "quiet": True}
    command = (
        f"defeat analyze errors --gt {cfg.data.val_annotations} --dets "
        + " ".join(f"{k}={v}" for k, v in dets.items())
        + f" --out {folder}"
    )
    deps = [e.name for e in evals]
    errors = Stage("errors", folder, "errors", dict(params, workers=1), command, deps, outputs=["errors_table.json"])
    added = [*evals, errors]
    _assign_keys(added, run_dir, {s.name: s.key for s in stages})
    return added


def describe(stages: list[Stage], done: set[str], rates: dict[str, float] | None = None) -> str:
    """The plan as a table: stage, command, steps, estimated time of the training steps where ``rates`` (s/step
    of ``student_step`` / ``distill_step``) are known, ``cached`` for finished stages."""
    lines = [f"{'stage':<28} {'command':<10} {'steps':>6} {'estimate':>10}"]
    total, to_run = 0.0, 0
    for s in stages:
        est = sum(n * (rates or {}).get(k, math.nan) for k, n in s.estimate.items())
        if s.name in done:
            shown = "cached"
        else:
            to_run += s.steps
            total += 0.0 if math.isnan(est) else est
            shown = "" if not rates or not s.estimate else minutes(est)
        lines.append(f"{s.name:<28} {s.command.split()[1]:<10} {s.steps or '':>6} {shown:>10}")
    tail = f"planned: {len(stages)} stages ({len(done)} already done), {to_run} training steps to run"
    if rates:
        tail += f", estimated {minutes(total)} of training steps (evaluations not included)"
    return "\n".join(lines + [tail])


def estimate_rates(cfg: Config, methods: list[str], run_dir: Path, steps: int = 3) -> dict[str, float]:
    """s/step of the baseline and of one distillation method (the first named), measured with
    :func:`defeat.api.estimate` (a warm-up step + ``steps`` timed steps each; nothing written)."""
    from defeat import api

    base = api.estimate(run_config(cfg, BASELINE, cfg.seed, run_dir / "estimate"), warmup=1, steps=steps)
    method = methods[1]
    kd = api.estimate(run_config(cfg, method, cfg.seed, run_dir / "estimate"), distill=True, warmup=1, steps=steps)
    say(f"baseline: {base.summary()}")
    say(f"{method} (stands for every method): {kd.summary()}")
    return {"student_step": base.sec_per_step, "distill_step": kd.sec_per_step}


# ------------------------------------------------------------------------------------------ running the stages
def _evaluate_teacher(cfg: Config, out: Path) -> None:
    from defeat import api
    from defeat.engine import cleanup, evaluate, init_distributed, load_datasets
    from defeat.engine.precision import config_precision, resolve_precision

    save_config(cfg, out / "config.yaml")
    info = init_distributed(cfg.device)
    try:
        _, val_set = load_datasets(cfg, train=False)
        teacher, report = api.load_teacher(cfg, val_set.categories, cfg.data.val_annotations)
        stats = evaluate(
            teacher.model.to(info.device),
            val_set,
            info,
            batch_size=cfg.eval.batch_size,
            max_images=cfg.data.val_max_images,
            score_thresh=cfg.eval.score_thresh,
            results_file=out / "results.json",
            progress=False,
            precision=resolve_precision(config_precision(cfg), info.device),
        )
        if info.is_main:
            atomic_write_json(out / "metrics.json", {**stats, "teacher": teacher.name, "load_report": report})
    finally:
        cleanup(info)


def _median_ms(runs: dict, inputs: list, warmup: int, repeats: int, sync=None) -> dict[str, float]:
    """Median milliseconds of each callable of ``runs`` over ``inputs`` x ``repeats``, after ``warmup`` calls each;
    the callables take turns on every input, so that a busy moment of the machine costs them alike."""
    for run in runs.values():
        for _ in range(warmup):
            run(inputs[0])
    times: dict[str, list[float]] = {key: [] for key in runs}
    for x in inputs:
        for _ in range(repeats):
            for key, run in runs.items():
                if sync:
                    sync()
                t0 = time.perf_counter()
                run(x)
                if sync:
                    sync()
                times[key].append(time.perf_counter() - t0)
    return {key: 1000 * statistics.median(values) for key, values in times.items()}


def _onnx_session(model, out: Path, size: int):
    """The student as an ONNX Runtime session (CPU provider) and a note; ``(None, why)`` where there is none."""
    try:
        import onnx  # noqa: F401  (torch.onnx needs it)
        import onnxruntime as ort
    except ImportError:
        return None, "not measured: onnxruntime or onnx is not installed"
    from defeat.engine.export import export_onnx

    path = out / "student.onnx"
    try:
        export_onnx(copy.deepcopy(model).cpu(), path, image_size=size)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session, f"onnxruntime {ort.__version__}, CPUExecutionProvider"
    except Exception as err:  # an optional measurement: the report says why it is missing
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return None, f"not measured: the export failed ({type(err).__name__}: {first})"
    finally:
        path.unlink(missing_ok=True)  # `defeat export --onnx` remakes it; the session holds the model


def _measure_latency(cfg: Config, params: dict, out: Path) -> None:
    import torch

    from defeat import api
    from defeat.engine import load_datasets

    device = torch.device("cuda" if cfg.device != "cpu" and torch.cuda.is_available() else "cpu")
    _, val_set = load_datasets(cfg, train=False)
    n = min(int(params["images"]), cfg.data.val_max_images or len(val_set), len(val_set))  # of the evaluated ones
    images = [val_set[i][0] for i in range(n)]
    student = api.load_detector(params["student"]).model.eval()
    teacher = api.load_teacher(cfg, val_set.categories, cfg.data.val_annotations)[0].model.eval()
    session, note = _onnx_session(student, out, cfg.model.min_size)
    inputs = [(im.to(device), im.numpy()) for im in images]
    student, teacher = student.to(device), teacher.to(device)
    runs = {"student_ms": lambda x: student([x[0]]), "teacher_ms": lambda x: teacher([x[0]])}
    if session is not None:
        runs["student_onnx_ms"] = lambda x: session.run(None, {"image": x[1]})
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    with torch.inference_mode():
        record = _median_ms(runs, inputs, 3, int(params["repeats"]), sync)
    record = {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "images": n,
        "timed": n * int(params["repeats"]),
        "student_onnx_ms": None,
        **record,
        "onnx_note": note,
    }
    atomic_write_json(out / "latency.json", record)


def _peak_reset(device_cuda: bool) -> str:
    """Start measuring one stage's peak memory; returns what is measured."""
    import torch

    if device_cuda:
        torch.cuda.reset_peak_memory_stats()
        return "CUDA max allocated"
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: resets the process's peak resident set (VmHWM)
        return "peak resident memory of the process during the run"
    except OSError:
        return "peak resident memory of the process so far (could not be reset per run)"


def _peak_gib(device_cuda: bool, metrics: Path) -> float | None:
    if device_cuda:
        logged = [json.loads(x).get("max_mem_gib") for x in metrics.read_text().splitlines() if "max_mem_gib" in x]
        return max((v for v in logged if v is not None), default=None)
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_compare_stage(stage: Stage) -> None:
    """Run one stage of a compare: the teacher and latency stages here, the trainings through the study's
    :func:`~defeat.study.runner.run_stage` (with the run's peak memory written to ``resources.json``)."""
    import torch

    torch.manual_seed(stage.seed)
    if stage.kind == "teacher":
        _evaluate_teacher(stage.config, stage.folder)
    elif stage.kind == "latency":
        _measure_latency(stage.config, stage.params, stage.folder)
    elif stage.kind not in ("train", "distill"):  # the error analysis: eval and errors
        run_stage(stage)
    else:
        cuda = stage.config.device != "cpu" and torch.cuda.is_available()
        what = _peak_reset(cuda)
        run_stage(stage)
        peak = _peak_gib(cuda, stage.folder / "metrics.jsonl")
        atomic_write_json(stage.folder / "resources.json", {"peak_memory_gib": peak, "memory_kind": what})


def failure_note(type_name: str, message: str) -> str:
    """A failed run's note (the report, ``results.json``): its error's type and the first line of its message."""
    return f"{type_name}: {message.strip().splitlines()[0] if message.strip() else ''}"


def _read(path: Path) -> dict | None:
    try:
        return read_json(path) if path.is_file() else None
    except ValueError:
        return None


def run_compare(
    cfg: Config,
    out: str | Path,
    *,
    methods: str | Sequence[str] = DEFAULT_METHODS,
    seeds: int = 3,
    source: str = "config",
    dry_run: bool = False,
    estimate_steps: int = 3,
    keep_checkpoints: bool = False,
    jobs: int = 1,
) -> dict:
    """Train the baseline and every method of ``methods`` with ``seeds`` seeds each, evaluate them and write the
    report to ``out`` (see the module docstring); rerun with the same arguments to continue an interrupted
    compare. Bad input (unknown method, a method that does not fit the pair, ``seeds`` < 1, no teacher) raises a
    one-line ValueError / FileNotFoundError before anything is trained or written. ``dry_run``: print the plan
    and its estimated time (:func:`estimate_rates`), write nothing. ``jobs``: runs at once, each in its own process
    (:func:`~defeat.study.runner.run_parallel`; the teacher first and the latency alone). Returns the summary
    (``results.json``'s content) plus ``failed`` and ``statuses``."""
    check_jobs(jobs)
    seed_values = seed_list(cfg, seeds)
    names = parse_methods(methods)
    check_inputs(cfg, source)
    run_dir = Path(out).resolve()
    stages = build_compare_plan(cfg, names, seed_values, run_dir)
    notes = check_methods_fit(cfg, names)
    done = {s.name for s in stages if (s.folder / "done.json").is_file()}
    say(f"compare {source}: {', '.join(names)} x seeds {seed_values} -> {run_dir}")
    if dry_run:
        rates = estimate_rates(cfg, names, run_dir, estimate_steps)
        say("plan:\n" + describe(stages, done, rates))
        seconds = sum(n * rates.get(k, 0.0) for s in stages if s.name not in done for k, n in s.estimate.items())
        return {"stages": [s.name for s in stages], "estimate_seconds": seconds, "rates": rates}
    say("plan:\n" + describe(stages, done))
    run_dir.mkdir(parents=True, exist_ok=True)
    records: dict[str, dict] = {}
    failed: dict[str, str] = {}
    warnings_: list[str] = []
    first_baseline = f"{BASELINE}_s{seed_values[0]}"

    def stale(stage: Stage) -> StaleStageError:
        return StaleStageError(
            f"{stage.folder}: stage {stage.name} was made with other settings than {source} (with these --set) "
            "asks for now; use a new --out, or delete that folder to redo the stage"
        )

    def after(stage: Stage, record: dict) -> None:
        """The checks that follow a finished stage: the teacher's AP, the teacher's lead on the first baseline."""
        if stage.name == "teacher":
            teacher_ap = read_json(stage.folder / "metrics.json")["AP"]
            if teacher_ap < cfg.distill.teacher_min_ap and not cfg.distill.force:
                raise ValueError(
                    f"teacher AP {100 * teacher_ap:.1f} on the val split is below distill.teacher_min_ap "
                    f"({100 * cfg.distill.teacher_min_ap:.1f}): is it trained on this data? Nothing else was "
                    "trained; --set distill.force=true to compare anyway"
                )
        if stage.name == first_baseline:
            warning = teacher_lead_warning(run_dir, first_baseline, cfg.distill.teacher_min_lead)
            if warning:
                warnings_.append(warning)
                say(warning)

    # --jobs N: the teacher first, alone (nothing trains before its AP is checked), then the runs side by side
    serial = stages if jobs == 1 else stages[:1]
    for index, stage in enumerate(serial):
        if skip_if_blocked(stage, failed, say):
            continue
        if stage.name not in done:
            say(f"stage {index + 1}/{len(stages)} {stage.name}: {' '.join(stage.command.split()[:2])} ...")
        try:
            record = execute_stage(stage, run_dir, keep_checkpoints=keep_checkpoints, run=run_compare_stage)
        except StaleStageError:
            raise stale(stage) from None
        except Exception as err:  # a run that fails (diverged, ...) is reported; the other runs go on
            if stage.kind == "teacher":
                raise
            failed[stage.name] = failure_note(type(err).__name__, str(err))
            say(f"stage {stage.name} FAILED: {failed[stage.name]}")
            continue
        records[stage.name] = record
        if record["status"] != "cached":
            extra = f", {record['sec_per_step']:.3f} s/step" if "sec_per_step" in record else ""
            say(f"{stage.name} {record['status']} in {minutes(record['seconds'])}{extra}")
        after(stage, record)
    if jobs > 1:
        try:  # the latency alone, in this process: timed beside a training it would measure the sharing
            run_parallel(
                stages[1:],
                run_dir,
                jobs,
                records,
                failed,
                say=say,
                run=run_compare_stage,
                keep_checkpoints=keep_checkpoints,
                alone={"latency"},
                on_done=after,
                note=failure_note,
            )
        except StaleStageError as err:
            raise stale(err.stage) from None
    extra = build_error_stages(cfg, names, seed_values, stages, run_dir)
    for stage in extra:  # two evaluations and one analysis: short, in this process
        if skip_if_blocked(stage, failed, say):
            continue
        try:
            records[stage.name] = execute_stage(stage, run_dir, run=run_compare_stage)
        except StaleStageError:  # another best method than last time: its analysis is redone
            shutil.rmtree(stage.folder)
            records[stage.name] = execute_stage(stage, run_dir, run=run_compare_stage)
        except Exception as err:
            failed[stage.name] = failure_note(type(err).__name__, str(err))
            say(f"stage {stage.name} FAILED: {failed[stage.name]}")
    stages = stages + extra
    results = collect(cfg, source, names, seed_values, stages, records, failed, run_dir, warnings_, notes)
    results = write_report_files(results, run_dir)
    say(
        f"report: {run_dir / 'report.md'} (and report.html, results.json)"
        + (f"; {len(failed)} stage(s) failed: {', '.join(failed)}" if failed else "")
    )
    return dict(results, failed=failed, statuses={n: r["status"] for n, r in records.items()})


def teacher_lead_warning(run_dir: Path, baseline: str, min_lead: float) -> str | None:
    """The warning when the teacher is not ahead of the first baseline run by ``min_lead`` AP (None otherwise)."""
    teacher = _read(run_dir / "teacher" / "metrics.json")
    student = _read(run_dir / "runs" / baseline / "metrics_final.json")
    if not teacher or not student:
        return None
    lead = teacher["AP"] - student["AP"]
    if lead >= min_lead:
        return None
    return (
        f"warning: the teacher ({100 * teacher['AP']:.1f} AP) is not ahead of the baseline {baseline} "
        f"({100 * student['AP']:.1f} AP) by distill.teacher_min_lead ({100 * min_lead:.1f} AP): the distilled "
        "students are unlikely to beat the baseline; train the teacher longer, make it larger or start it from "
        "pretrained weights (the compare goes on)"
    )


def collect(
    cfg: Config,
    source: str,
    methods: list[str],
    seeds: list[int],
    stages: list[Stage],
    records: dict[str, dict],
    failed: dict[str, str],
    run_dir: Path,
    warnings_: list[str],
    notes: list[str],
) -> dict:
    """Every number of the report, from the stage folders (``results.json``'s content)."""
    finished = final_aps(run_dir, methods, seeds)
    aps = {method: list(finished.get(method, {}).values()) for method in methods}  # in seed order
    cost, curves = [], {}
    memory_kind = None
    for method in methods:
        folders = [run_dir / "runs" / f"{method}_s{seed}" for seed in seeds]
        windows = [
            w for f in folders for w in (step_seconds(f / "metrics.jsonl")[1:] or step_seconds(f / "metrics.jsonl"))
        ]
        resources = [r for r in (_read(f / "resources.json") for f in folders) if r]
        peaks = [r["peak_memory_gib"] for r in resources if r.get("peak_memory_gib") is not None]
        memory_kind = memory_kind or next((r["memory_kind"] for r in resources), None)
        cost.append(
            {
                "method": method,
                "sec_per_step": sum(windows) / len(windows) if windows else None,
                "peak_memory_gib": max(peaks) if peaks else None,
            }
        )
        by_step: dict[int, list[float]] = {}
        for f in folders:
            for step, ap in eval_curve(f / "metrics.jsonl"):
                by_step.setdefault(step, []).append(ap)
        curves[method] = [{"step": s, "AP": sum(v) / len(v), "n": len(v)} for s, v in sorted(by_step.items())]
    teacher = _read(run_dir / "teacher" / "metrics.json") or {}
    first = _read(run_dir / "runs" / f"{BASELINE}_s{seeds[0]}" / "metrics_final.json") or {}
    table = _read(run_dir / "errors" / "errors_table.json")
    errors = None
    if table:  # the curves' values over all categories and areas, one row per model
        models = list(table["meta"]["dets"])
        rows = {r["model"]: r for r in table["rows"] if r["category"] == "overall" and r["area"] == "all"}
        errors = {
            "models": models,
            "curves": {m: {k: rows[m][k] for k in ERROR_CURVES} for m in models if m in rows},
            "figure_source": str(run_dir / "errors" / "comparison" / "overall.png"),
            "folder": str(run_dir / "errors"),
            "seed": next((st.seed for st in stages if st.name.startswith(f"eval_{BASELINE}_s")), None),
        }
    lead = teacher["AP"] - first["AP"] if "AP" in teacher and "AP" in first else None
    import torch

    return {
        "config": source,
        "student": cfg.model.name,
        "teacher": teacher.get("teacher") or cfg.distill.teacher_model or cfg.distill.teacher_checkpoint,
        "seeds": seeds,
        "steps": cfg.schedule.max_steps,
        "val_annotations": cfg.data.val_annotations,
        "val_max_images": cfg.data.val_max_images,
        "device": "cuda" if cfg.device != "cpu" and torch.cuda.is_available() else "cpu",
        "alpha": 0.05,
        "statistics": statistics_note(0.05),
        "what": {m: describe_method(m) for m in methods},
        "methods": method_rows(aps, 0.05),
        "verdict": decide(aps, 0.05),
        "cost": cost,
        "memory_kind": memory_kind,
        "latency": _read(run_dir / "latency" / "latency.json"),
        "curves": curves,
        "errors": errors,
        "teacher_AP": teacher.get("AP"),
        "baseline_first_AP": first.get("AP"),
        "teacher_lead": lead,
        "teacher_min_lead": cfg.distill.teacher_min_lead,
        "warnings": warnings_,
        "notes": notes,
        "stages": [
            {
                "name": s.name,
                "status": records[s.name]["status"] if s.name in records else "failed",
                "seconds": (records.get(s.name) or _read(s.folder / "done.json") or {}).get("seconds"),
                "command": s.command,
                "note": failed.get(s.name),
            }
            for s in stages
        ],
    }
