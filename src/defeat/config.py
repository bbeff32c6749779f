"""One typed configuration for every command: YAML file + ``--set key=value`` overrides.

The config is a tree of dataclasses. Loading validates every key and type and fails with one line
that names the file and the offending key, e.g. ``cfg.yaml: unknown key 'optim.lrr'``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A config file or override is invalid; the message is one line naming the key."""


@dataclass
class ModelConfig:
    """Which detector to build (see ``defeat.models.build_detector``)."""

    # ``<family>_r<depth>_fpn`` (alias: torchvision's spelling ``fasterrcnn_resnet18_fpn``), ``<family>_tiny_fpn``
    # (a toy for tests) or one of torchvision's official builders such as ``fasterrcnn_resnet50_fpn_v2`` /
    # ``fasterrcnn_mobilenet_v3_large_fpn``; see defeat.models.spec
    name: str = "faster_rcnn_r18_fpn"
    # backbone normalisation of the ResNet-FPN names: auto = frozen_bn when weights are loaded, else gn (trainable
    # from scratch at small batches); torchvision's official builders use their own (syncbn converts them too)
    norm: Literal["auto", "gn", "bn", "syncbn", "frozen_bn"] = "auto"
    # whole-detector weights: a file as torchvision writes it (e.g. fasterrcnn_resnet50_fpn_v2_coco-dd69338a.pth),
    # DEFAULT (torchvision's COCO weights of this name, downloaded once) or none
    weights: str = "none"
    # ImageNet backbone weights: a file (e.g. resnet50-0676ba61.pth, mobilenet_v3_large-8738ca79.pth), DEFAULT or none
    backbone_weights: str = "none"
    pretrained_backbone: bool = False  # old spelling of backbone_weights=DEFAULT (zoo names)
    # backbone stages that train; None: torchvision's convention (3 with pretrained weights, all without)
    trainable_layers: int | None = None
    # one entry per level: a base size (RetinaNet: 3 octave scales from it) or a list of sizes (MobileNetV3-FPN: the
    # same 5 on each of its 3 levels); see defeat.models.spec. The default gives every builder its own anchors.
    anchor_sizes: list[int | list[int]] = field(default_factory=lambda: [32, 64, 128, 256, 512])
    anchor_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])  # anchor h/w on every level (not FCOS)
    min_size: int = 320  # GeneralizedRCNNTransform resize: shorter side
    max_size: int = 320  # ... and cap on the longer side
    # Two-stage sampling sizes: the RoI head dominates CPU cost, so these matter for speed.
    rpn_pre_nms_top_n_train: int = 1000
    rpn_post_nms_top_n_train: int = 500
    rpn_pre_nms_top_n_test: int = 500
    rpn_post_nms_top_n_test: int = 300
    rpn_batch_size_per_image: int = 256
    box_batch_size_per_image: int = 128
    box_detections_per_img: int = 100
    box_score_thresh: float = 0.01  # detections kept at inference (all families)


@dataclass
class DataConfig:
    """COCO-format data: an image folder and an instances JSON per split (YOLO models: or ``yolo_data``)."""

    train_images: str = "runs/synth/train"
    train_annotations: str = "runs/synth/train.json"
    val_images: str = "runs/synth/val"
    val_annotations: str = "runs/synth/val.json"
    batch_size: int = 4  # per process
    workers: int = 2
    hflip_prob: float = 0.5
    val_max_images: int = 0  # 0 = the whole split
    # Ultralytics YOLO models only: a YOLO-format dataset's data.yaml, used as it is (instead of the COCO splits
    # above, which a YOLO run otherwise converts to Ultralytics' layout in output.dir/yolo_data); docs/yolo.md
    yolo_data: str = ""


@dataclass
class OptimConfig:
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    clip_grad_norm: float = 10.0  # 0 disables clipping


@dataclass
class ScheduleConfig:
    max_steps: int = 2000
    warmup_steps: int = 200
    warmup_factor: float = 0.001
    policy: Literal["cosine", "step"] = "cosine"
    milestones: list[int] = field(default_factory=lambda: [1500, 1800])  # for policy=step
    gamma: float = 0.1


@dataclass
class EvalConfig:
    every_steps: int = 0  # 0 = only at the end
    score_thresh: float = 0.0  # drop detections below this score before COCO evaluation
    batch_size: int = 4


@dataclass
class YoloConfig:
    """Ultralytics YOLO runs (``model.name: yolo26n`` ...): Ultralytics' trainer with its own defaults (data pipeline,
    augmentation, optimizer, loss) except these; docs/yolo.md."""

    imgsz: int = 640  # training and evaluation image size (Ultralytics' imgsz)
    # 0: the run is schedule.max_steps training batches (Ultralytics' epochs = as many as they need, its schedule
    # over them); > 0: this many epochs, schedule.max_steps unused
    epochs: int = 0
    # any other Ultralytics training argument, passed as it is (e.g. {mosaic: 0.0, lr0: 0.01, optimizer: SGD});
    # Ultralytics checks the keys and values. The project sets model, data, epochs, batch, workers, seed, device,
    # deterministic, amp, imgsz, project/name, plots (false), val (false: validation only at the end)
    args: dict[str, Any] = field(default_factory=dict)
    # defeat distill with a YOLO student: defeat = the distiller in Ultralytics' loop (distill.feature_mode);
    # ultralytics = Ultralytics' own distillation (distill_model=, a YOLO teacher), the study's reference arm
    distill: Literal["defeat", "ultralytics"] = "defeat"


@dataclass
class OutputConfig:
    dir: str = "runs/train"
    checkpoint_every: int = 500
    log_every: int = 20
    tensorboard: bool = False


#: DeFeat's region modes, then other feature-KD methods on the same levels (defeat.distill.methods)
FeatureMode = Literal[
    "none", "object", "background", "all", "decoupled", "fgfi", "cwd", "pkd", "score_weighted", "fgd", "mgd"
]
ProposalMode = Literal["none", "positive", "negative", "all", "decoupled"]
FeatureNorm = Literal["per_level", "all_levels"]
KDSchedule = Literal["constant", "linear", "cosine"]
FgfiAssign = Literal["level", "global"]
ProposalSampling = Literal["student", "teacher"]
WeightsMode = Literal["fixed", "auto"]

FEATURE_MODES: tuple[str, ...] = typing.get_args(FeatureMode)
PROPOSAL_MODES: tuple[str, ...] = typing.get_args(ProposalMode)
FEATURE_NORMS: tuple[str, ...] = typing.get_args(FeatureNorm)
KD_SCHEDULES: tuple[str, ...] = typing.get_args(KDSchedule)
FGFI_ASSIGNS: tuple[str, ...] = typing.get_args(FgfiAssign)
PROPOSAL_SAMPLINGS: tuple[str, ...] = typing.get_args(ProposalSampling)
WEIGHTS_MODES: tuple[str, ...] = typing.get_args(WeightsMode)

#: ResNet stages that backbone KD can distil: torchvision's ``layer1..layer4`` (strides 4, 8, 16, 32; the
#: C2..C5 of the FPN paper; mmdetection's out_indices 0..3)
BACKBONE_STAGES: tuple[str, ...] = ("layer1", "layer2", "layer3", "layer4")


def backbone_stage_names(stages: list) -> list[str]:
    """``[3, "layer4"]`` -> ``["layer3", "layer4"]``: stage numbers k (1..4) or names ``layerk``, in the given
    order, duplicates refused. A ConfigError naming ``backbone_stages`` for anything else."""
    names: list[str] = []
    for stage in stages:
        if isinstance(stage, int) and not isinstance(stage, bool) and 1 <= stage <= len(BACKBONE_STAGES):
            name = f"layer{stage}"
        elif isinstance(stage, str) and stage in BACKBONE_STAGES:
            name = stage
        else:
            raise ConfigError(
                f"backbone_stages: unknown stage {stage!r} (use 1..4 or layer1..layer4: the ResNet "
                "stages of strides 4, 8, 16, 32)"
            )
        if name in names:
            raise ConfigError(f"backbone_stages: stage {name} listed twice")
        names.append(name)
    return names


@dataclass
class DistillSettings:
    """The DeFeat method's settings: which terms, their weights and temperatures, the KD-weight schedule.

    One object carries them to the distillers and the losses (``defeat.distill``). They are validated once,
    when the object is made (a config file, ``--set`` or ``DistillSettings(...)`` in Python); to change one,
    make a new object with ``dataclasses.replace`` (validated again).
    """

    feature_mode: FeatureMode = "decoupled"
    alpha_obj: float = 4.0
    alpha_bg: float = 16.0
    alpha_all: float = 8.0  # weight of the uniform MSE in feature_mode=all
    feature_norm: FeatureNorm = "per_level"  # per_level (official code) | all_levels (paper)
    proposal_mode: ProposalMode = "decoupled"  # DeFeat: decoupled
    beta_obj: float = 2.0
    beta_bg: float = 2.0
    beta_all: float = 2.0
    temperature_obj: float = 1.0  # softmax temperature of the KL on positive proposals
    temperature_bg: float = 1.0  # ... on negative proposals
    temperature_all: float = 1.0  # ... on all proposals in proposal_mode=all
    fgfi_phi: float = 0.5  # feature_mode=fgfi: cells whose anchors have IoU > phi * (best IoU of the box)
    fgfi_assign: FgfiAssign = "level"  # level: each box on its one level, best IoU there (official) | global: one max
    # feature_mode=cwd (channel-wise distillation): open-mmlab/mmrazor configs/distill/mmdet/cwd/
    # cwd_fpn_frcnn_r101_frcnn_r50_1x_coco.py and cwd_fpn_retina_r101_retina_r50_1x_coco.py: tau=1, loss_weight=10
    cwd_tau: float = 1.0  # softmax temperature over each channel's positions
    cwd_weight: float = 10.0  # weight of the CWD sum over the levels
    # feature_mode=pkd: mmrazor configs/distill/mmdet/pkd/pkd_fpn_faster-rcnn_r101_faster-rcnn_r50_2x_coco.py:
    # loss_weight=6 (their RetinaNet config pkd_fpn_retina_x101_retina_r50_2x_coco.py uses 10)
    pkd_weight: float = 6.0  # weight of the PKD sum over the levels
    # feature_mode=score_weighted: ultralytics/ultralytics ultralytics/cfg/default.yaml: dis=6.0
    score_weight: float = 6.0  # weight of the teacher-score-weighted MSE sum over the levels
    level_k0: int | None = None  # box of side s -> level floor(k0 + log2(s / 224)); null: 4 / from the anchors
    proposal_sampling: ProposalSampling = "student"  # proposal term on the student's samples | the teacher's RPN's
    backbone_stages: list[int | str] = field(default_factory=list)  # backbone KD on these ResNet stages ([] = off)
    alpha_bb_obj: float = 4.0  # backbone KD: object-region weight
    alpha_bb_bg: float = 16.0  # backbone KD: background-region weight
    weights: WeightsMode = "fixed"  # auto: scale the KD weights at the start so each term is auto_target x det. loss
    auto_target: float = 1.0  # weights=auto: each KD term's starting magnitude as a fraction of the detection loss
    auto_batches: int = 4  # weights=auto: training batches measured
    auto_keep_ratio: bool = True  # weights=auto: keep alpha_bg/alpha_obj (and beta_bg/beta_obj) as given
    weight_decay_policy: KDSchedule = "constant"  # KD weight over training
    stop_step: int = 0  # 0 = distil for the whole schedule
    # feature_mode=fgd / mgd (defeat.distill.learned_methods). null: the authors' value for the student's family, from
    # their COCO R50-student configs (models.families.LEARNED_KD_DEFAULTS names each file): yzd-v/FGD
    # configs/distillers/fgd/fgd_retina_r101_fpn_2x_distill_retina_r50_fpn_2x_coco.py,
    # fgd_faster_rcnn_r101_fpn_2x_distill_faster_rcnn_r50_fpn_2x_coco.py, fgd_fcos_r101_distill_fcos_r50_2x_coco.py;
    # yzd-v/MGD det/configs/distillers/mgd/retina_rx101_64x4d_distill_retina_r50_fpn_2x_coco.py,
    # cascade_mask_rcnn_rx101_32x4d_distill_faster_rcnn_r50_fpn_2x_coco.py
    fgd_temp: float | None = None  # FGD: attention temperature T (0.5; FCOS 0.8)
    fgd_alpha: float | None = None  # FGD: foreground weight (RetinaNet 1e-3, Faster R-CNN 5e-5, FCOS 1.6e-3)
    fgd_beta: float | None = None  # FGD: background weight (5e-4, 2.5e-5, 8e-4)
    fgd_gamma: float | None = None  # FGD: attention-loss weight (5e-4, 5e-5, 8e-4)
    fgd_lambda: float | None = None  # FGD: global (context) loss weight (5e-6, 5e-7, 8e-6)
    mgd_alpha: float | None = None  # MGD: generation-loss weight (one-stage 2e-5, Faster R-CNN 5e-7)
    mgd_lambda: float | None = None  # MGD: share of the student's pixels masked out (0.65, 0.45)
    mgd_seed: int | None = None  # MGD: seed of the mask generator; null: drawn from torch's RNG with the distiller

    def __post_init__(self) -> None:
        for key, allowed in (
            ("feature_mode", FEATURE_MODES),
            ("proposal_mode", PROPOSAL_MODES),
            ("feature_norm", FEATURE_NORMS),
            ("weight_decay_policy", KD_SCHEDULES),
            ("fgfi_assign", FGFI_ASSIGNS),
            ("proposal_sampling", PROPOSAL_SAMPLINGS),
            ("weights", WEIGHTS_MODES),
        ):
            _choice(getattr(self, key), allowed, key)
        for key in (
            "alpha_obj",
            "alpha_bg",
            "alpha_all",
            "beta_obj",
            "beta_bg",
            "beta_all",
            "stop_step",
            "alpha_bb_obj",
            "alpha_bb_bg",
            "cwd_weight",
            "pkd_weight",
            "score_weight",
        ):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key}: must be >= 0, got {getattr(self, key)}")
        for key in ("temperature_obj", "temperature_bg", "temperature_all", "fgfi_phi", "cwd_tau"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key}: must be > 0, got {getattr(self, key)}")
        for key in ("fgd_alpha", "fgd_beta", "fgd_gamma", "fgd_lambda", "mgd_alpha"):
            if getattr(self, key) is not None and getattr(self, key) < 0:
                raise ConfigError(f"{key}: must be >= 0, got {getattr(self, key)}")
        if self.fgd_temp is not None and self.fgd_temp <= 0:
            raise ConfigError(f"fgd_temp: must be > 0, got {self.fgd_temp}")
        if self.mgd_lambda is not None and not 0 <= self.mgd_lambda <= 1:
            raise ConfigError(f"mgd_lambda: the masked share must be in [0, 1], got {self.mgd_lambda}")
        if not isinstance(self.backbone_stages, list):
            raise ConfigError(f"backbone_stages: expected a list such as [3, 4], got {self.backbone_stages!r}")
        backbone_stage_names(self.backbone_stages)
        if not self.auto_target > 0:
            raise ConfigError(f"auto_target: must be > 0 (a fraction of the detection loss), got {self.auto_target}")
        if self.auto_batches < 1:
            raise ConfigError(f"auto_batches: must be >= 1, got {self.auto_batches}")

    @property
    def backbone_stage_names(self) -> list[str]:
        """The backbone stages to distil as torchvision layer names (``[]``: backbone KD off)."""
        return backbone_stage_names(self.backbone_stages)


@dataclass
class DistillConfig(DistillSettings):
    """The ``distill`` section of ``defeat distill``: the method's settings plus the teacher and its check."""

    teacher_config: str = ""  # the teacher's training config (model section is read from it)
    teacher_checkpoint: str = ""
    # or a torchvision detector and its weight file (a COCO file or DEFAULT; classes mapped to the data by name)
    teacher_model: str = ""  # e.g. fasterrcnn_resnet50_fpn_v2
    teacher_weights: str = ""  # e.g. fasterrcnn_resnet50_fpn_v2_coco-dd69338a.pth
    teacher_check_images: int = 50  # quick teacher/student evaluation before training (0 = skip)
    teacher_min_ap: float = 0.05  # refuse a teacher whose quick-check AP is below this (unless force)
    force: bool = False  # start even when the teacher check fails
    baseline_checkpoint: str = ""  # the student trained alone (defeat train): the teacher is compared with it
    teacher_min_lead: float = 0.01  # warn when teacher AP - baseline AP on the check images is below this

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.teacher_check_images < 0:
            raise ConfigError(f"teacher_check_images: must be >= 0, got {self.teacher_check_images}")

    def settings(self) -> DistillSettings:
        """The method's settings alone (what the distillers and losses read)."""
        return DistillSettings(**{f.name: getattr(self, f.name) for f in dataclasses.fields(DistillSettings)})


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    yolo: YoloConfig = field(default_factory=YoloConfig)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    deterministic: bool = False  # torch.use_deterministic_algorithms; needed for bit-exact resume on GPU
    # auto | fp32 | bf16 | fp16: the fast path (defeat.engine.precision). auto = bf16 on CPUs with AMX-BF16 /
    # AVX-512-BF16 and on bf16 GPUs, fp16 + grad scaler on older GPUs, else fp32 (one-line notice); an explicit
    # bf16/fp16 the hardware lacks is refused in one line.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    bf16: bool = False  # the old switch: true = precision bf16 (kept so that old configs load)
    # default | heap: glibc's allocator on CPU runs. heap (opt-in, Linux/glibc) keeps freed memory in the heap
    # instead of returning it to the OS (mallopt), which saves page faults on the big tensors a training step
    # allocates every step, at the cost of the process keeping its peak heap; process-wide
    # (defeat.engine.allocator). default leaves the allocator alone, also for the fast path.
    cpu_allocator: Literal["default", "heap"] = "default"


# --------------------------------------------------------------------------------------------------
# Loading, overriding, validating


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check ``value`` against a (simple) type annotation, converting int -> float where harmless."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(annotation):
            if option is type(None) and value is None:
                return None
            try:
                return _coerce(value, option, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[-1])
    if origin is Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed:
            raise ConfigError(f"{where}: unknown value {value!r} (choose from {', '.join(map(str, allowed))})")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        return dict(value)
    if origin is list:
        (item_type,) = typing.get_args(annotation)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        return [_coerce(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if annotation is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if annotation in (float, str) and not isinstance(value, annotation):
        raise ConfigError(f"{where}: expected {annotation.__name__}, got {value!r}")
    return value


def _accepts_none(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in typing.get_args(
        annotation
    )


def _build(cls: type, values: dict, prefix: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in known:
            raise ConfigError(f"unknown key '{prefix}{key}' (known: {', '.join(sorted(known))})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        hint = hints[f.name]
        if values[f.name] is None and not _accepts_none(hint):  # `key: null` / --set key=null: the default
            continue
        if dataclasses.is_dataclass(hint):
            kwargs[f.name] = _build(hint, values[f.name] or {}, f"{prefix}{f.name}.")
        else:
            kwargs[f.name] = _coerce(values[f.name], hint, f"{prefix}{f.name}")
    try:
        return cls(**kwargs)
    except ConfigError as err:  # a section's own checks (__post_init__) name the key without its section
        raise ConfigError(f"{prefix}{err}") from None


def apply_override(tree: dict, assignment: str) -> None:
    """Apply ``a.b.c=value`` to a nested dict; the value is parsed as YAML (``1e-3``, ``[1, 2]``, ``true``)."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected key=value")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {assignment!r}: '{part}' is not a section")
    node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""


def config_from_dict(values: dict, overrides: list[str] | None = None, source: str = "config") -> Config:
    tree = dict(values)
    for assignment in overrides or []:
        apply_override(tree, assignment)
    try:
        cfg = _build(Config, tree, "")
        validate(cfg)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    return cfg


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or the defaults when ``path`` is None) and apply ``--set`` overrides."""
    values: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        values = read_yaml_mapping(path)
    return config_from_dict(values, overrides, source=str(path) if path else "config")


def read_yaml_mapping(path: Path) -> dict:
    """A YAML file whose top level is a mapping (empty file: ``{}``); one-line ConfigError naming the file."""
    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return values


def config_to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


#: settings that say how a run goes, not what it learns: a resumed run may change them (another machine, device,
#: precision, logging, evaluation, the teacher's pre-flight check; the paths of data and teacher: a moved folder)
RESUME_MAY_CHANGE = (
    "output.",
    "eval.",
    "data.workers",
    "data.val_",
    "data.train_images",
    "data.train_annotations",
    "data.yolo_data",
    "distill.teacher_checkpoint",
    "distill.teacher_config",
    "device",
    "precision",
    "bf16",
    "cpu_allocator",
    "deterministic",
    "distill.teacher_check_images",
    "distill.teacher_min_ap",
    "distill.teacher_min_lead",
    "distill.force",
    "distill.baseline_checkpoint",
)


def changed_settings(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """``key saved -> current`` for every setting a resumed run may not change (not :data:`RESUME_MAY_CHANGE`)
    whose value differs between the run's saved config and the resuming one. A key present on one side only is a
    setting added or removed by another version of the toolkit: skipped."""
    changed = []
    for key in saved.keys() & current.keys():
        name = prefix + key
        if name.startswith(RESUME_MAY_CHANGE):
            continue
        old, new = saved[key], current[key]
        if isinstance(old, dict) and isinstance(new, dict):
            changed += changed_settings(old, new, name + ".")
        elif old != new:
            changed.append(f"{name} {old!r} -> {new!r}")
    return sorted(changed)


def save_config(cfg: Config, path: str | Path) -> None:
    from defeat.utils import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def _choice(value: str, allowed: tuple[str, ...], key: str) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}: unknown value {value!r} (choose from {', '.join(allowed)})")


def validate(cfg: Config) -> None:
    """Semantic checks beyond types (choices are checked by their ``Literal`` types, the distillation
    settings by :class:`DistillSettings` itself)."""
    if cfg.bf16 and cfg.precision not in ("auto", "bf16"):
        raise ConfigError(
            f"bf16: true contradicts precision: {cfg.precision} (bf16: true is the old name of "
            "precision: bf16; drop it)"
        )
    positive = {
        "data.batch_size": cfg.data.batch_size,
        "schedule.max_steps": cfg.schedule.max_steps,
        "model.min_size": cfg.model.min_size,
        "model.max_size": cfg.model.max_size,
        "eval.batch_size": cfg.eval.batch_size,
        "optim.lr": cfg.optim.lr,
        "yolo.imgsz": cfg.yolo.imgsz,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key}: must be > 0, got {value}")
    non_negative = {
        "data.workers": cfg.data.workers,
        "schedule.warmup_steps": cfg.schedule.warmup_steps,
        "optim.weight_decay": cfg.optim.weight_decay,
        "optim.clip_grad_norm": cfg.optim.clip_grad_norm,
        "output.checkpoint_every": cfg.output.checkpoint_every,
        "eval.every_steps": cfg.eval.every_steps,
        "data.val_max_images": cfg.data.val_max_images,
        "yolo.epochs": cfg.yolo.epochs,
    }
    for key, value in non_negative.items():
        if value < 0:
            raise ConfigError(f"{key}: must be >= 0, got {value}")
    if not 0.0 <= cfg.data.hflip_prob <= 1.0:
        raise ConfigError(f"data.hflip_prob: must be in [0, 1], got {cfg.data.hflip_prob}")
    if not cfg.model.anchor_ratios or min(cfg.model.anchor_ratios) <= 0:
        raise ConfigError(f"model.anchor_ratios: need at least one ratio, all > 0, got {cfg.model.anchor_ratios}")
    if cfg.model.trainable_layers is not None and cfg.model.trainable_layers not in range(0, 7):
        raise ConfigError(
            f"model.trainable_layers: must be 0..5 (ResNet), 0..6 (MobileNetV3) or null, "
            f"got {cfg.model.trainable_layers}"
        )
    for key in ("weights", "backbone_weights"):
        if not getattr(cfg.model, key).strip():
            raise ConfigError(f"model.{key}: empty (use a file path, DEFAULT or none)")
