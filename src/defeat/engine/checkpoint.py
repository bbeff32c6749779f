"""Checkpoints: atomic writes, ``weights_only=True`` loads, one-line errors for bad files.

A checkpoint is a plain dict (only tensors, numbers, strings, lists and dicts, so ``weights_only``
loading works): ``kind`` ("detector" | "distill"), ``model`` (state dict of the trained module),
``categories`` (COCO category dicts in label order), ``config`` (the full config as a dict), ``step``,
and for resuming ``optimizer``, ``scheduler``, ``rng``.

:func:`load_model` is the one way a detector is rebuilt from such a file (training, evaluation, export,
distillation teachers and the analyses all use it).
"""

from __future__ import annotations

import dataclasses
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from defeat.config import Config, ModelConfig, config_from_dict
from defeat.utils import atomic_torch_save

KINDS = ("detector", "distill")


def save_checkpoint(state: dict, path: str | Path) -> None:
    if state.get("kind") not in KINDS:
        raise ValueError(f"checkpoint kind must be one of {KINDS}, got {state.get('kind')!r}")
    atomic_torch_save(state, Path(path))


def load_checkpoint(path: str | Path, kind: str | tuple[str, ...] | None = None) -> dict:
    """Load a checkpoint written by ``save_checkpoint`` on the CPU, safely (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path}: not a readable checkpoint (truncated or not a torch file: {first[:200]})") from None
    if not isinstance(state, dict) or "model" not in state or state.get("kind") not in KINDS:
        raise ValueError(f"{path}: not a defeat checkpoint (no 'kind'/'model' entries)")
    kinds = (kind,) if isinstance(kind, str) else kind
    if kinds and state["kind"] not in kinds:
        raise ValueError(f"{path}: is a {state['kind']!r} checkpoint, expected {' or '.join(kinds)}")
    return state


def check_categories(state: dict, categories: list[dict], path: str | Path, dataset: str | Path) -> None:
    """Refuse a checkpoint whose class list differs from the dataset's (labels would silently mean other classes)."""
    ours = [(c["id"], c["name"]) for c in state["categories"]]
    theirs = [(c["id"], c["name"]) for c in categories]
    if ours != theirs:
        diff = sorted(set(ours) ^ set(theirs))[:3]
        raise ValueError(
            f"{path}: class list ({len(ours)} classes) differs from {dataset} ({len(theirs)} classes), e.g. {diff}"
        )


def detector_state(state: dict) -> dict:
    """The detector's weights in a checkpoint: the model itself, or the student of a distillation."""
    if state["kind"] == "detector":
        return state["model"]
    prefix = "student."
    return {k[len(prefix) :]: v for k, v in state["model"].items() if k.startswith(prefix)}


# ------------------------------------------------------------------------------------------ rebuilding a model
@dataclass
class LoadedModel:
    """A detector rebuilt from a checkpoint of this project (see :func:`load_model`)."""

    model: nn.Module  # the detector (a distillation's student), eval mode, on the CPU
    config: Config  # the checkpoint's config (its model section replaced when load_model was given one)
    kind: str  # "detector" | "distill"
    categories: list[dict]  # COCO categories in label order
    path: str
    step: int | None = None
    adapters: nn.Module | None = None  # a distillation's FeatureAdapters (eval mode), else None (or none used)
    missing: list[str] = field(default_factory=list)  # keys the weights lacked (only with strict=False)
    unexpected: list[str] = field(default_factory=list)  # keys the model lacked (only with strict=False)

    @property
    def feature_mode(self) -> str:
        """The distillation's feature mode (``none`` for a plain detector)."""
        return "none" if self.kind == "detector" else self.config.distill.feature_mode

    @property
    def name(self) -> str:
        return self.config.model.name


def load_model(
    path: str | Path,
    *,
    kinds: str | tuple[str, ...] | None = None,
    categories: list[dict] | None = None,
    dataset: str | Path = "the dataset",
    model_cfg: ModelConfig | None = None,
    strict: bool = True,
    role: str = "",
) -> LoadedModel:
    """Rebuild the detector of any checkpoint this project writes (``train``/``distill``: last or final).

    Args:
        kinds: accept only these checkpoint kinds (``"detector"``, ``"distill"``).
        categories: the dataset's categories; the checkpoint's class list must equal them.
        dataset: how messages name the dataset.
        model_cfg: build this model section instead of the checkpoint's own (e.g. ``distill.teacher_config``).
        strict: refuse weights that do not fit the model (one line with the key counts and examples); with
            ``False`` they load partially and the mismatches are in ``missing`` / ``unexpected``.
        role: prefix of the messages (e.g. ``"--teacher"``).
    """
    from defeat.distill.adapters import adapters_from_state
    from defeat.models import build_detector, model_spec
    from defeat.models.zoo import norm_in_state

    prefix = f"{role}: " if role else ""
    try:
        state = load_checkpoint(path, kind=kinds)
    except ValueError as err:
        raise ValueError(f"{prefix}{err}") from None
    if categories is not None:
        check_categories(state, categories, path, dataset)
    cfg = config_from_dict(state["config"], source=str(path))
    if model_cfg is not None:
        cfg.model = model_cfg
    weights = detector_state(state)
    if not weights:
        raise ValueError(f"{prefix}{path}: no detector weights in this {state['kind']!r} checkpoint")
    if model_spec(cfg.model.name).builder == "zoo" and cfg.model.norm != "syncbn":
        # the weights say how the backbone was normalised (`auto`, and checkpoints of torchvision-spelled names
        # saved as BatchNorm models before those names became aliases of the zoo's)
        cfg.model = dataclasses.replace(cfg.model, norm=norm_in_state(weights))
    model = build_detector(cfg.model, len(state["categories"]))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if (missing or unexpected) and strict:
        raise ValueError(
            f"{prefix}{path}: weights do not fit {cfg.model.name} ({len(missing)} missing, "
            f"{len(unexpected)} unexpected keys, e.g. {(list(missing) + list(unexpected))[:3]})"
        )
    adapters = None
    adapter_weights = {k[len("adapters.") :]: v for k, v in state["model"].items() if k.startswith("adapters.")}
    if adapter_weights:
        adapters = adapters_from_state(adapter_weights).eval()
    return LoadedModel(
        model.eval(),
        cfg,
        state["kind"],
        list(state["categories"]),
        str(path),
        state.get("step"),
        adapters,
        list(missing),
        list(unexpected),
    )
