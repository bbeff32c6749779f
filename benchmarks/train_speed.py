"""Training speed of the engine's fast path (bf16 autocast etc.) vs a plain float32 torchvision loop.

(work in progress)
"""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path

import torch
import yaml

from defeat.config import Config, config_from_dict


def _merge(base: dict, extra: dict | None) -> dict:
    out = copy.deepcopy(base)
    for key, value in (extra or {}).items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_preset(name: str = "full") -> dict:
    path = Path(str(resources.files("defeat") / "configs" / f"reproduce_{name}.yaml"))
    return yaml.safe_load(path.read_text())


def preset_config(role: str, preset: str = "full", data: str = "runs/full_data", **top: object) -> Config:
    """The preset's config of ``role`` (teacher | student): common + the role's model + its schedule."""
    tree = load_preset(preset)
    section = tree[role]
    cfg = _merge(tree["common"], {"model": section["model"]})
    cfg = _merge(cfg, section.get("config"))
    cfg["data"] = _merge(cfg.get("data", {}), {
        "train_images": f"{data}/train", "train_annotations": f"{data}/train.json",
        "val_images": f"{data}/val", "val_annotations": f"{data}/val.json"})
    cfg["schedule"] = _merge(cfg.get("schedule", {}), {"max_steps": int(section["steps"]),
                                                       "warmup_steps": int(section.get("warmup_steps", 0))})
    cfg.update(top)
    return config_from_dict(cfg, source=f"preset {preset} ({role})")


def build_batch(dataset, batch_size: int, start: int = 0) -> tuple[list, list]:
    """A fixed batch: images ``start .. start + batch_size`` of ``dataset``."""
    items = [dataset[i] for i in range(start, start + batch_size)]
    return [im for im, _ in items], [t for _, t in items]
