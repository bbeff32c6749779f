"""Weight files as torchvision writes them: whole detectors (``model.weights``, e.g. the COCO file
``fasterrcnn_resnet50_fpn_v2_coco-dd69338a.pth``) and ImageNet backbones (``model.backbone_weights``, e.g.
``resnet50-0676ba61.pth``, ``mobilenet_v3_large-8738ca79.pth``); ``DEFAULT`` takes torchvision's own files
(downloaded once into torch's hub folder).

:func:`build_pretrained` builds a detector for a dataset's categories from them:

* weights whose classes are known (torchvision's COCO classes for a 91-output file, an exported student's sidecar
  JSON) and include every dataset category by name: the class outputs are restricted to the dataset's
  (:func:`defeat.models.classes.keep_classes`), exactly;
* otherwise, for training (fine-tuning, torchvision's Penn-Fudan flow): everything but the class-dependent head
  layers is kept, those are re-initialised, and the report says which; for evaluation or a teacher: refused.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from defeat.config import ModelConfig
from defeat.data.category_map import normalize_name
from defeat.engine.checkpoint import LoadedModel
from defeat.models import build_detector
from defeat.models.classes import class_dependent, keep_classes, outputs_in_state
from defeat.models.spec import OFFICIAL, model_spec
from defeat.models.zoo import norm_in_state

Role = Literal["train", "eval", "teacher"]
#: the ImageNet weights torchvision's detection builders put under their backbones
BACKBONE_DEFAULT = "IMAGENET1K_V1"
COCO_OUTPUTS = 91


def is_set(value: str) -> bool:
    return value.strip().lower() not in ("", "none")


def coco_categories() -> list[dict]:
    """torchvision's COCO label space: output k (1..90) is COCO category id k ("N/A" for the ids COCO skips)."""
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

    names = FasterRCNN_ResNet50_FPN_Weights.DEFAULT.meta["categories"]
    return [{"id": k, "name": name} for k, name in enumerate(names) if k > 0]


@dataclass
class WeightFile:
    """A detector's weights and where they came from."""

    state: dict[str, Tensor]
    source: str  # how messages name it
    path: str | None = None  # the file (None: torchvision's DEFAULT, from its hub folder)
    categories: list[dict] | None = None  # the class list a checkpoint of this project carries


def read_state_dict(path: str | Path, key: str) -> dict[str, Tensor]:
    """A state dict from a file, loaded once with ``weights_only=True``: a plain one (torchvision's files, ``defeat
    export``), a ``{"model": ...}`` training checkpoint (torchvision's references) or a checkpoint of this project
    (its detector or student). One-line errors naming ``key`` and the file."""
    return read_weight_file(path, key).state


def read_weight_file(path: str | Path, key: str) -> WeightFile:
    """:func:`read_state_dict`, keeping a checkpoint's class list."""
    from defeat.engine.checkpoint import detector_state

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{key}: {path}: file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = (str(err).strip().splitlines() or [""])[0][:160]
        raise ValueError(
            f"{key}: {path}: refused by torch.load(weights_only=True): it pickles Python objects, not "
            f"only tensors ({first}); re-save its state_dict() with torch.save"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise ValueError(f"{key}: {path}: not a readable torch file (truncated or corrupt: {first})") from None
    categories = None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        if "kind" in obj:
            categories = obj.get("categories")
        obj = detector_state(obj) if "kind" in obj else obj["model"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{key}: {path}: not a state dict (expected a mapping of parameter names to tensors)")
    return WeightFile(dict(obj), str(path), str(path), list(categories) if categories else None)


def official_state_dict(name: str, key: str, backbone: bool = False) -> tuple[dict[str, Tensor], str]:
    """torchvision's own weights for ``name`` (COCO detector, or with ``backbone`` the ImageNet classifier), from
    torch's hub folder or downloaded there. Offline and not there: one line naming the file and the folder."""
    from torchvision.models import get_model_weights

    try:
        enum = get_model_weights(name)
    except ValueError:
        raise ValueError(f"{key}=DEFAULT: torchvision has no weights for {name!r}; use a file path") from None
    weights = enum[BACKBONE_DEFAULT] if backbone else enum.DEFAULT
    file = weights.url.rsplit("/", 1)[-1]
    try:
        return weights.get_state_dict(progress=True, check_hash=True), file
    except (OSError, RuntimeError) as err:  # URLError is an OSError
        folder = Path(torch.hub.get_dir()) / "checkpoints"
        raise FileNotFoundError(
            f"{key}=DEFAULT: could not get {file} ({type(err).__name__}: {str(err)[:120]}); offline? "
            f"put {file} in {folder} or set {key} to the file's path"
        ) from None


def known_classes(weights: WeightFile, outputs: int) -> tuple[list[dict] | None, str]:
    """The classes of a weight file in label order (output k is ``classes[k-1]``), or None when nothing says:
    a checkpoint of this project, an exported student's ``FILE.json`` sidecar, torchvision's COCO classes for 91
    outputs. Returns them and a description for messages."""
    if weights.categories is not None and len(weights.categories) == outputs - 1:
        return weights.categories, f"the checkpoint's {len(weights.categories)} classes"
    if weights.path is not None:
        sidecar = Path(f"{weights.path}.json")
        if sidecar.is_file():
            try:
                categories = json.loads(sidecar.read_text()).get("categories")
            except (OSError, ValueError, AttributeError):
                categories = None
            if isinstance(categories, list) and len(categories) == outputs - 1:
                return categories, f"{len(categories)} classes from {sidecar}"
    if outputs == COCO_OUTPUTS:
        return coco_categories(), "torchvision's 91 COCO outputs"
    return None, f"{outputs - 1} classes of unknown names"


def check_fit(model: nn.Module, state: dict[str, Tensor], what: str) -> None:
    """Refuse weights that do not fit ``model``: missing / unexpected keys and shape mismatches, with examples.
    (``num_batches_tracked`` is ignored both ways: FrozenBatchNorm has none, BatchNorm files carry them.)"""
    ours = {k: v.shape for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    theirs = {k: v.shape for k, v in state.items() if not k.endswith("num_batches_tracked")}
    missing = [k for k in ours if k not in theirs]
    unexpected = [k for k in theirs if k not in ours]
    shapes = [f"{k} {tuple(theirs[k])} vs {tuple(ours[k])}" for k in ours if k in theirs and theirs[k] != ours[k]]
    if missing or unexpected or shapes:
        examples = (missing[:2] + unexpected[:2] + shapes[:2])[:4]
        raise ValueError(
            f"{what} ({len(missing)} missing, {len(unexpected)} unexpected keys, {len(shapes)} shape "
            f"mismatches; e.g. {'; '.join(examples)})"
        )


def detector_weights(model_cfg: ModelConfig) -> WeightFile:
    """The weights ``model.weights`` names (a path or DEFAULT)."""
    if model_cfg.weights.strip().upper() == "DEFAULT":
        if model_cfg.name not in OFFICIAL:
            raise ValueError(
                f"model.weights=DEFAULT: torchvision publishes COCO weights only for {', '.join(OFFICIAL)}"
                f", not {model_cfg.name}; use a file path or model.backbone_weights"
            )
        state, file = official_state_dict(model_cfg.name, "model.weights")
        return WeightFile(state, f"torchvision's {file}")
    return read_weight_file(model_cfg.weights, "model.weights")


def build_pretrained(
    model_cfg: ModelConfig, categories: list[dict], *, role: Role = "train", dataset: str = "the dataset"
) -> tuple[nn.Module, list[str]]:
    """A detector of ``model_cfg`` for ``categories`` with the weights its config names, and what was done.

    Call it after seeding: re-initialised layers take their values from torch's RNG.
    """
    model, notes, _ = _build(model_cfg, categories, role, dataset)
    return model, notes


def load_pretrained(
    model_cfg: ModelConfig, categories: list[dict] | None = None, *, dataset: str = "the dataset"
) -> LoadedModel:
    """A detector from its weight files for evaluation or prediction, as a :class:`LoadedModel` (eval mode, CPU).

    With ``categories`` its outputs are mapped onto them by name (refused if they do not cover them); without,
    it keeps the weights' own classes (torchvision's COCO classes for a COCO file, ``class k`` when unknown).
    """
    from defeat.config import Config

    model, _, categories = _build(model_cfg, categories, "eval", dataset)
    source = model_cfg.weights if is_set(model_cfg.weights) else model_cfg.name
    return LoadedModel(model.eval(), Config(model=model_cfg), "detector", categories, source)


def _build(
    model_cfg: ModelConfig, categories: list[dict] | None, role: Role, dataset: str
) -> tuple[nn.Module, list[str], list[dict]]:
    notes: list[str] = []
    if categories is None and not is_set(model_cfg.weights):
        raise ValueError(
            f"model.weights: not set; {model_cfg.name} needs its weights (a file or DEFAULT) to know its classes"
        )
    if not is_set(model_cfg.weights):
        model = build_detector(model_cfg, len(categories))
        if is_set(model_cfg.backbone_weights):
            notes.append(load_backbone_weights(model, model_cfg))
        return model, notes, categories
    spec = model_spec(model_cfg.name)
    family = spec.family
    weights = detector_weights(model_cfg)
    state, source = weights.state, weights.source
    if model_cfg.norm == "auto" and spec.builder == "zoo":  # the file says: BatchNorm statistics or GroupNorm
        model_cfg = dataclasses.replace(model_cfg, norm="gn" if norm_in_state(state) == "gn" else "frozen_bn")
    outputs = outputs_in_state(state, family)
    if outputs is None:
        raise ValueError(f"model.weights: {source}: no {family} classifier in it (is it a {model_cfg.name}?)")
    model = build_detector(model_cfg, outputs - 1)
    check_fit(model, state, f"model.weights: {source} does not fit {model_cfg.name}")
    model.load_state_dict(state, strict=False)
    if is_set(model_cfg.backbone_weights):
        notes.append(f"model.backbone_weights ignored: the whole detector comes from {source}")
    names, described = known_classes(weights, outputs)
    if categories is None:  # the weights' own classes
        return model, notes, names or [{"id": k, "name": f"class {k}"} for k in range(1, outputs)]
    wanted = [c["name"] for c in categories]
    if names is not None:
        index = {}
        for label, category in enumerate(names, start=1):
            index.setdefault(normalize_name(category["name"]), label)
        keep = [index.get(normalize_name(n)) for n in wanted]
        if all(k is not None for k in keep):
            if keep != list(range(1, outputs)):
                keep_classes(model, keep, merge_background=role != "train")
                notes.append(
                    f"classes: the dataset's {len(wanted)} categories mapped by name onto {described} of {source}"
                )
            return model, notes, categories
        missing = [n for n, k in zip(wanted, keep) if k is None]
    elif outputs == len(categories) + 1:
        notes.append(
            f"classes: {source} has {outputs - 1} classes, as many as {dataset}; taken to be its categories in order"
        )
        return model, notes, categories
    else:
        missing = wanted
    if role != "train":
        raise ValueError(
            f"model.weights: {source}: its classes ({described}) do not cover {dataset}'s (e.g. "
            f"{', '.join(missing[:4])}); fine-tune it first: defeat train with model.weights={source}"
        )
    fresh = build_detector(model_cfg, len(categories))
    kept = {k: v for k, v in model.state_dict().items() if not class_dependent(k, family)}
    reset = [k for k in fresh.state_dict() if class_dependent(k, family)]
    fresh.load_state_dict(kept, strict=False)
    notes.append(
        f"fine-tuning {source} ({described}) to {dataset}'s {len(wanted)} classes: kept {len(kept)} tensors "
        f"(backbone, FPN, {'RPN, box head' if family == 'faster_rcnn' else 'box regression and towers'}), "
        f"re-initialised {len(reset)} class-dependent ones ({', '.join(reset)})"
    )
    return fresh, notes, categories


def load_backbone_weights(model: nn.Module, model_cfg: ModelConfig) -> str:
    """Load ImageNet classifier weights into the detector's backbone body; a one-line report.

    ResNet: the classifier's keys are the body's (``fc`` is dropped); MobileNetV3: ``features.N...`` is body ``N...``.
    """
    spec = model_spec(model_cfg.name)
    arch = spec.backbone
    if model_cfg.backbone_weights.strip().upper() == "DEFAULT":
        state, file = official_state_dict(arch, "model.backbone_weights", backbone=True)
        source = f"torchvision's {file}"
    else:
        state, source = (
            read_state_dict(model_cfg.backbone_weights, "model.backbone_weights"),
            model_cfg.backbone_weights,
        )
    body = model.backbone.body
    if spec.depth is not None:  # a ResNet
        mapped = {k: v for k, v in state.items() if not k.startswith("fc.")}
    else:
        mapped = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
    ours = {k for k in body.state_dict() if not k.endswith("num_batches_tracked")}
    used = {k: v for k, v in mapped.items() if k in ours}
    if not used:
        raise ValueError(
            f"model.backbone_weights: {source}: none of its keys is a {arch} key (e.g. {', '.join(list(state)[:2])})"
        )
    check_fit(body, used, f"model.backbone_weights: {source} does not fit the {arch} backbone of {model_cfg.name}")
    body.load_state_dict(used, strict=False)
    return f"backbone: {len(used)} tensors of ImageNet {arch} from {source}"
