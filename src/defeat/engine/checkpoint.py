"""Checkpoints: atomic writes, ``weights_only=True`` loads, one-line errors for bad files.

A checkpoint is a plain dict (only tensors, numbers, strings, lists and dicts, so ``weights_only``
loading works): ``kind`` ("detector" | "distill"), ``model`` (state dict of the trained module),
``categories`` (COCO category dicts in label order), ``config`` (the full config as a dict), ``step``,
and for resuming ``optimizer``, ``scheduler``, ``rng``.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

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
        raise ValueError(f"{path}: class list ({len(ours)} classes) differs from {dataset} ({len(theirs)} classes), "
                         f"e.g. {diff}")


def detector_state(state: dict) -> dict:
    """The detector's weights in a checkpoint: the model itself, or the student of a distillation."""
    if state["kind"] == "detector":
        return state["model"]
    prefix = "student."
    return {k[len(prefix):]: v for k, v in state["model"].items() if k.startswith(prefix)}
