"""Datasets: the embedded synthetic benchmark and importers to COCO JSON."""

from __future__ import annotations

from pathlib import Path

from defeat.data.importers import import_voc, import_yolo


def synth(out: str | Path, *, seed: int = 0, num_train: int = 600, num_val: int = 150, image_size: int = 320,
          min_objects: int = 2, max_objects: int = 8, workers: int = 2) -> dict:
    """Generate the embedded benchmark (``train/``, ``val/``, ``train.json``, ``val.json`` in ``out``); the same
    seed gives the same images. Returns a summary (counts, classes, files)."""
    from defeat.data.synth import generate_synthetic_dataset

    sizes = {"num_train": num_train, "num_val": num_val, "image_size": image_size, "min_objects": min_objects,
             "max_objects": max_objects, "workers": workers}
    for name, value in sizes.items():
        if value < (0 if name in ("num_train", "num_val") else 1):
            raise ValueError(f"--{name.replace('_', '-')}: must be positive, got {value}")
    return generate_synthetic_dataset(out, seed=seed, **sizes)


__all__ = ["import_voc", "import_yolo", "synth"]
