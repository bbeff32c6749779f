"""Fidelity of the learned feature-KD methods (``fgd``, ``mgd``) to the authors' code.

For each method, ``defeat.distill.learned_methods`` and a test-only port of the authors' loss
(tests/distill/reference_learned.py) get the same random features, boxes, module weights and random mask;
the record is the largest relative difference of the loss (and of FGD's four parts) over the seeds, with and
without the ``align`` conv. Same fields as benchmarks/methods_fidelity.py's records (to be merged there).

    PYTHONPATH=src python benchmarks/methods_fidelity_learned.py
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the comparisons and the ports live in tests/distill

from defeat.utils import atomic_write_json  # noqa: E402
from tests.distill.test_learned_methods import compare_fgd, compare_mgd, fgd_inputs  # noqa: E402

SEEDS = (0, 1, 2, 3, 4)
CHANNELS = (6, 8)  # student channels; the teacher has 8: with align (6) and without (8)


def _shapes(seed: int, student_channels: int) -> dict:
    student, teacher, boxes, image = fgd_inputs(seed, student_channels)
    return {
        "student": list(student.shape),
        "teacher": list(teacher.shape),
        "boxes_per_image": [len(b) for b in boxes],
        "image_size": list(image),
    }


def fgd() -> dict:
    runs = [(s, c, compare_fgd(s, c)) for s in SEEDS for c in CHANNELS]
    return {
        "reference_repository": "https://github.com/yzd-v/FGD",
        "reference_commit": "c03a6cf3b3cb3cbfd5554dbf4766e7135747d22d",
        "reference_file": "mmdet/distillation/losses/fgd.py",
        "reference_port": "tests/distill/reference_learned.py::fgd_reference",
        "ours": "defeat.distill.learned_methods.FGDLevel + fgd_masks",
        "inputs": {
            "shapes": {f"student_channels={c}": _shapes(0, c) for c in CHANNELS},
            "seeds": list(SEEDS),
            "weights": "module weights N(0, 0.2^2) (+1 on norm scales) from seed + 1, shared by both",
            "settings": {"temp": 0.5, "alpha_fgd": 1e-3, "beta_fgd": 5e-4, "gamma_fgd": 5e-4, "lambda_fgd": 5e-6},
        },
        "max_rel_diff": max(r["max_rel_diff"] for _, _, r in runs),
        "max_rel_diff_per_part": {
            part: max(r["parts"][part] for _, _, r in runs) for part in ("fg", "bg", "mask", "global", "loss")
        },
        "losses": {f"seed={s},student_channels={c}": r["loss"] for s, c, r in runs},
    }


def mgd() -> dict:
    runs = [(s, c, compare_mgd(s, c)) for s in SEEDS for c in CHANNELS]
    return {
        "reference_repository": "https://github.com/yzd-v/MGD",
        "reference_commit": "2c9da0b28625eb948db57afc02c824452c3910fe",
        "reference_file": "det/mmdet/distillation/losses/mgd.py",
        "reference_port": "tests/distill/reference_learned.py::mgd_reference",
        "ours": "defeat.distill.learned_methods.MGDLevel + mgd_mask",
        "inputs": {
            "shapes": {f"student_channels={c}": _shapes(0, c) for c in CHANNELS},
            "seeds": list(SEEDS),
            "mask": "uniform draw torch.Generator().manual_seed(seed + 2), the same for both sides",
            "settings": {"alpha_mgd": 2e-5, "lambda_mgd": 0.65},
        },
        "max_rel_diff": max(r["max_rel_diff"] for _, _, r in runs),
        "losses": {f"seed={s},student_channels={c}": r["loss"] for s, c, r in runs},
    }


#: method name -> comparison function (the shape of benchmarks/methods_fidelity.py's table)
METHODS = {"fgd": fgd, "mgd": mgd}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/methods_fidelity_learned.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = {name: compare() for name, compare in METHODS.items()}
    out["_meta"] = {
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, float32 on CPU",
        "command": "PYTHONPATH=src python benchmarks/methods_fidelity_learned.py",
    }
    atomic_write_json(Path(args.out), out)
    print(json.dumps({k: v["max_rel_diff"] for k, v in out.items() if k != "_meta"}, indent=2))


if __name__ == "__main__":
    main()
