"""Fidelity of the other feature-KD methods to their reference implementations: the same random inputs through
this package's loss (``defeat.distill.methods``, the authors' default weights) and through a test-only port of the
reference computation (``tests/distill/fidelity.py``), per method and seed; the largest relative difference.

The comparisons are the entries of ``tests.distill.fidelity.COMPARISONS`` (method -> function(seed)); a method
added there is recorded here without changing this script. CPU, float32, a few milliseconds.

    python benchmarks/methods_fidelity.py                          # every method
    python benchmarks/methods_fidelity.py --methods cwd pkd --out /tmp/fidelity.json
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the comparisons live in tests/ (test-only reference ports)

import torch  # noqa: E402

from defeat.utils import atomic_write_json  # noqa: E402
from tests.distill.fidelity import COMPARISONS, SEEDS, SOURCES  # noqa: E402

TOLERANCE = 1e-5


def run(methods: list[str], seeds: tuple[int, ...]) -> dict:
    out = {}
    for name in methods:
        runs = [COMPARISONS[name](seed) for seed in seeds]
        out[name] = {
            **SOURCES.get(name, {}),
            "seeds": list(seeds),
            "inputs": {k: v for k, v in runs[0]["inputs"].items() if k != "seed"},
            "runs": [
                {"seed": r["inputs"]["seed"], **{k: r[k] for k in ("ours", "reference", "rel_diff")}} for r in runs
            ],
            "max_rel_diff": max(r["rel_diff"] for r in runs),
        }
        out[name]["within_tolerance"] = out[name]["max_rel_diff"] < TOLERANCE
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=sorted(COMPARISONS), choices=sorted(COMPARISONS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/methods_fidelity.json"))
    args = parser.parse_args(argv)
    results = run(args.methods, tuple(args.seeds))
    record = {
        "methods": results,
        "tolerance": TOLERANCE,
        "note": "rel_diff = |ours - reference| / |reference| on the total weighted loss over five levels; the "
        "reference side is a test-only port (tests/distill/fidelity.py) of the file named per method",
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "device": "cpu"},
        "command": "python benchmarks/methods_fidelity.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.date.today().isoformat(),
    }
    atomic_write_json(Path(args.out), record)
    for name, r in results.items():
        print(f"{name:16s} max_rel_diff {r['max_rel_diff']:.3g}  ({'ok' if r['within_tolerance'] else 'FAIL'})")
    print(f"wrote {args.out}")
    return 0 if all(r["within_tolerance"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
