"""What a model name means, in one place: family, backbone, FPN levels and strides, anchor layout, widths, norm.

Every module that needs to know something about a detector *by its name* asks :func:`model_spec` (the zoo's
builder, torchvision's builders, weight files, anchor fitting, ``defeat init``); questions about a *built* model
go to :mod:`defeat.models.families`. This module imports no torch, so the pure-numpy layers can use its answers.

Names (one scheme per architecture; the other spelling is an alias of it):

* ``<family>_r<depth>_fpn`` (family ``faster_rcnn | retinanet | fcos``, depth 18/34/50/101/152): a ResNet-FPN
  detector built by this project (:mod:`defeat.models.zoo`). torchvision's spelling of the same architecture,
  ``fasterrcnn_resnet18_fpn``, ``retinanet_resnet101_fpn``, ... (any depth torchvision publishes no COCO file
  for) is an alias: the same spec, the same model.
* ``<family>_tiny_fpn``: the same detector on a 4-stage toy backbone with a 64-channel FPN and a narrow box head
  (~0.5 M parameters): for tests and smoke runs of a config, and the student of the regime preset.
* ``<family>_small_fpn``: the toy backbone at twice the tiny widths, a 128-channel FPN and box head: a teacher
  ahead of the tiny student by capacity at a fraction of an R18's cost (the regime preset's teacher).
* torchvision's seven builders with COCO weights (:data:`OFFICIAL`), built by torchvision itself so that the
  official files load: ``fasterrcnn_resnet50_fpn[_v2]``, ``fasterrcnn_mobilenet_v3_large[_320]_fpn``,
  ``retinanet_resnet50_fpn[_v2]``, ``fcos_resnet50_fpn``.
* Ultralytics YOLO detectors (family ``yolo``, builder ``ultralytics``; the ``yolo`` extra builds and trains them,
  :mod:`defeat.models.yolo`): ``yolo26{n,s,m,l,x}``, ``yolo11{n,s,m,l,x}``, ``yolov8{n,s,m,l,x}``, from the
  package's own model configs. Their Detect head reads three neck maps of strides 8, 16, 32 (named ``P3..P5``
  here, as the FPN levels of the same strides); there are no anchors.

Anchor layout (torchvision's ``AnchorGenerator``; ``model.anchor_sizes`` gives one entry per level): an entry that
is one base size ``s`` becomes ``(s,)`` for Faster R-CNN and FCOS and RetinaNet's three octave scales
``(s, ⌊s·2^(1/3)⌋, ⌊s·2^(2/3)⌋)``; an entry that is a list is that level's sizes as given. Every level needs the
same number of sizes (a head predicts a fixed number of anchors per location). Every size is combined with every
ratio ``r = h/w`` (FCOS: only ``r = 1``, one point per location). MobileNetV3-FPN shares five sizes across its
three levels (torchvision's 32..512 on each): its anchors are a list of sizes per level.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

FAMILIES = ("faster_rcnn", "retinanet", "fcos")
#: the Ultralytics family (not a torchvision detector: built and trained by Ultralytics, defeat.models.yolo)
YOLO_FAMILY = "yolo"
#: YOLO generations (the package's model config of each: ``<generation>.yaml``) and their scales
YOLO_GENERATIONS = ("yolo26", "yolo11", "yolov8")
YOLO_SCALES = ("n", "s", "m", "l", "x")
#: the neck maps that feed a YOLO Detect head (P3/P4/P5 configs: every name above)
YOLO_LEVELS = {"P3": 8, "P4": 16, "P5": 32}
DEPTHS = (18, 34, 50, 101, 152)
#: torchvision's spelling of each family (``fasterrcnn_resnet50_fpn``)
TORCHVISION_PREFIX = {"faster_rcnn": "fasterrcnn", "retinanet": "retinanet", "fcos": "fcos"}
#: the builders torchvision publishes COCO weights for
OFFICIAL = (
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_mobilenet_v3_large_320_fpn",
    "retinanet_resnet50_fpn",
    "retinanet_resnet50_fpn_v2",
    "fcos_resnet50_fpn",
)

#: FPN levels of the ResNet-FPN detectors, in torchvision's feature-dict order (level Pk: stride 2**k)
RESNET_LEVELS = {
    "faster_rcnn": {"P2": 4, "P3": 8, "P4": 16, "P5": 32, "P6": 64},
    "retinanet": {"P3": 8, "P4": 16, "P5": 32, "P6": 64, "P7": 128},
    "fcos": {"P3": 8, "P4": 16, "P5": 32, "P6": 64, "P7": 128},
}
#: torchvision's MobileNetV3-FPN: two maps at stride 32 (the last two stages) and a max-pooled one
MOBILENET_LEVELS = {"P5": 32, "P5b": 32, "P6": 64}
MOBILENET_ANCHOR_SIZES = (32, 64, 128, 256, 512)  # on every level
#: ``model.anchor_sizes``' default: one base size per level
DEFAULT_BASE_SIZES = (32, 64, 128, 256, 512)
#: the base anchor size per level torchvision's builders use (FCOS: its "anchors" set the scale ranges)
TORCHVISION_ANCHOR_BASE = {
    "faster_rcnn": (32, 64, 128, 256, 512),
    "retinanet": (32, 64, 128, 256, 512),
    "fcos": (8, 16, 32, 64, 128),
}

_ZOO = re.compile(r"^(faster_rcnn|retinanet|fcos)_(r\d+|tiny|small)_fpn$")
#: FPN (and Faster R-CNN box head) width of the toy backbones
TOY_CHANNELS = {"tiny": 64, "small": 128}
_TORCHVISION = re.compile(r"^(fasterrcnn|retinanet|fcos)_resnet(\d+)_fpn$")
_YOLO = re.compile(r"^(yolo26|yolo11|yolov8)([nsmlx])$")


@dataclass(frozen=True)
class ModelSpec:
    """Everything a detector's name determines before it is built."""

    name: str  # as the user wrote it
    canonical: str  # the one name of this architecture (an alias resolves to it)
    family: str  # faster_rcnn | retinanet | fcos | yolo
    # resnet18 .. resnet152 | mobilenet_v3_large | tiny | small | yolo26 / yolo11 / yolov8 (the generation)
    backbone: str
    # "zoo" (this project's builder) | "torchvision" (torchvision's own, official weights fit) | "ultralytics"
    builder: str
    levels: dict[str, int] = field(hash=False)  # FPN output level -> stride, in the backbone's output order
    fpn_channels: int = 256
    box_head_size: int = 1024  # Faster R-CNN's TwoMLPHead width
    octaves: int = 1  # anchor sizes per base size (RetinaNet on ResNet: 3)
    shared_anchor_sizes: int = 0  # > 0: this many sizes, the same on every level (MobileNetV3-FPN: 5)
    norm_default: str = "gn"  # the backbone's normalisation from scratch (zoo builder; see resolved_norm)

    @property
    def depth(self) -> int | None:
        """ResNet depth (``None`` for MobileNet and the toy backbones)."""
        return int(self.backbone[len("resnet") :]) if self.backbone.startswith("resnet") else None

    @property
    def strides(self) -> tuple[int, ...]:
        return tuple(self.levels.values())

    @property
    def is_yolo(self) -> bool:
        """Whether Ultralytics builds and trains this model (the ``yolo`` extra), not torchvision."""
        return self.family == YOLO_FAMILY

    @property
    def yolo_config(self) -> str:
        """The Ultralytics model config of a YOLO name (``yolo26n.yaml``: the generation's YAML at scale n)."""
        if not self.is_yolo:
            raise ValueError(f"model.name: {self.name} is not an Ultralytics YOLO model")
        return f"{self.canonical}.yaml"

    @property
    def official(self) -> bool:
        """Whether torchvision publishes COCO weights for this name."""
        return self.canonical in OFFICIAL

    @property
    def default_anchor_sizes(self) -> list:
        """``model.anchor_sizes`` that gives the builder's own anchors (the config's default unless sizes are shared
        across levels, as MobileNetV3-FPN's)."""
        if self.shared_anchor_sizes:
            return [list(MOBILENET_ANCHOR_SIZES) for _ in self.levels]
        return list(DEFAULT_BASE_SIZES)

    def anchor_sizes(self, entries) -> tuple[tuple[int, ...], ...]:
        """The generator's sizes per level from ``model.anchor_sizes`` (one base size or a list of sizes per level,
        see the module docstring). A ValueError naming ``model.anchor_sizes`` when the count of levels or of sizes
        per level does not fit."""
        entries = list(entries)
        if len(entries) != len(self.levels):
            raise ValueError(
                f"model.anchor_sizes: {self.name} needs {len(self.levels)} entries (one per level "
                f"{'/'.join(self.levels)}), got {entries}"
            )
        sizes = tuple(
            tuple(int(v) for v in e) if isinstance(e, (list, tuple)) else self._expand(int(e)) for e in entries
        )
        if len({len(level) for level in sizes}) != 1:
            raise ValueError(
                f"model.anchor_sizes: every level needs the same number of sizes (the head predicts a "
                f"fixed number of anchors per location), got {[list(s) for s in sizes]}"
            )
        return sizes

    def _expand(self, size: int) -> tuple[int, ...]:
        """One base size -> the level's sizes: RetinaNet's three octave scales, else the size itself."""
        if self.octaves == 3:
            return (size, int(size * 2 ** (1 / 3)), int(size * 2 ** (2 / 3)))
        return (size,)

    def anchor_ratios(self, ratios) -> tuple[float, ...]:
        """The aspect ratios (h/w) every level uses: the given ones, FCOS only ``1.0``."""
        return (1.0,) if self.family == "fcos" else tuple(float(r) for r in ratios)

    def resolved_norm(self, norm: str, pretrained: bool) -> str:
        """``model.norm`` with ``auto`` resolved: FrozenBatchNorm when ImageNet weights are loaded (their statistics,
        torchvision's convention), else the spec's default (GroupNorm: trainable from scratch at small batches).
        (Whole-detector weight files resolve ``auto`` by what they hold: :mod:`defeat.engine.weights`.)"""
        if norm != "auto":
            return norm
        return "frozen_bn" if pretrained else self.norm_default


def _resnet_fpn(name: str, family: str, backbone: str) -> ModelSpec:
    depth = backbone[len("resnet") :]
    return ModelSpec(
        name,
        f"{family}_r{depth}_fpn",
        family,
        backbone,
        "zoo",
        RESNET_LEVELS[family],
        octaves=3 if family == "retinanet" else 1,
    )


def model_spec(name: str) -> ModelSpec:
    """The spec of a model name (see the module docstring); a ValueError naming ``model.name`` and the choices."""
    if name in OFFICIAL:
        family = {v: k for k, v in TORCHVISION_PREFIX.items()}[name.split("_", 1)[0]]
        if "mobilenet" in name:
            return ModelSpec(
                name,
                name,
                family,
                "mobilenet_v3_large",
                "torchvision",
                MOBILENET_LEVELS,
                norm_default="bn",
                shared_anchor_sizes=len(MOBILENET_ANCHOR_SIZES),
            )
        base = _resnet_fpn(name, family, "resnet50")
        return ModelSpec(
            name, name, family, "resnet50", "torchvision", base.levels, octaves=base.octaves, norm_default="bn"
        )
    match = _ZOO.match(name)
    if match:
        family, body = match.groups()
        if body in TOY_CHANNELS:
            # tiny: 64 FPN channels, so that GroupNorm(32) in the heads keeps 2 channels a group (a 1x1 P7 map trains
            # at batch 1); small: twice as wide everywhere
            return ModelSpec(
                name,
                name,
                family,
                body,
                "zoo",
                RESNET_LEVELS[family],
                fpn_channels=TOY_CHANNELS[body],
                box_head_size=TOY_CHANNELS[body],
                octaves=3 if family == "retinanet" else 1,
            )
        if int(body[1:]) in DEPTHS:
            return _resnet_fpn(name, family, f"resnet{body[1:]}")
    match = _TORCHVISION.match(name)
    if match and int(match.group(2)) in DEPTHS:
        family = {v: k for k, v in TORCHVISION_PREFIX.items()}[match.group(1)]
        return _resnet_fpn(name, family, f"resnet{match.group(2)}")
    match = _YOLO.match(name)
    if match:
        return ModelSpec(name, name, YOLO_FAMILY, match.group(1), "ultralytics", dict(YOLO_LEVELS), fpn_channels=0)
    raise ValueError(
        f"model.name: unknown detector {name!r} (choose from {', '.join(model_names())}; "
        f"torchvision's spelling {{fasterrcnn,retinanet,fcos}}_resnet{{{','.join(map(str, DEPTHS))}}}"
        f"_fpn is accepted too; Ultralytics YOLO: {{{','.join(YOLO_GENERATIONS)}}}{{{','.join(YOLO_SCALES)}}})"
    )


def yolo_model_names() -> list[str]:
    """The Ultralytics YOLO names (``yolo26n`` .. ``yolov8x``): built by the ``yolo`` extra (defeat.models.yolo)."""
    return [f"{g}{s}" for g in YOLO_GENERATIONS for s in YOLO_SCALES]


def is_yolo_name(name: str) -> bool:
    """Whether ``name`` is an Ultralytics YOLO model (any other name: torchvision's detectors or unknown)."""
    return bool(_YOLO.match(name))


def resnet_fpn_name(family: str, depth: int) -> str:
    """The canonical name of a ResNet-FPN detector: ``('retinanet', 50)`` -> ``'retinanet_r50_fpn'``."""
    return model_spec(f"{family}_r{depth}_fpn").canonical


def model_names() -> list[str]:
    """The canonical names: the ResNet-FPN and toy (tiny, small) detectors of every family, then torchvision's
    official ones."""
    ours = [f"{f}_r{d}_fpn" for f in FAMILIES for d in DEPTHS] + [
        f"{f}_{toy}_fpn" for f in FAMILIES for toy in TOY_CHANNELS
    ]
    return ours + [n for n in OFFICIAL if n not in ours]


def family_of_name(name: str) -> str:
    """``'retinanet_r18_fpn'`` -> ``'retinanet'``, ``'yolo26n'`` -> ``'yolo'`` (any accepted spelling)."""
    return model_spec(name).family


def is_torchvision_name(name: str) -> bool:
    """Whether ``name`` is spelled as torchvision spells detectors (an official builder or an alias of ours):
    such names run with torchvision's own transform sizes and thresholds where a command offers that."""
    return name in OFFICIAL or bool(_TORCHVISION.match(name))
