"""Compare two results.json files number by number (exact), leaving out timings, versions and commands.

Usage: python benchmarks/compare_results.py A/results.json B/results.json
"""

import json
import math
import sys
from pathlib import Path

a = json.loads(Path(sys.argv[1]).read_text())
b = json.loads(Path(sys.argv[2]).read_text())
SKIP = {"wall_seconds", "versions", "stages", "configs", "preset_yaml", "id", "seconds"}
diffs = []


def walk(x, y, path):
    if isinstance(x, dict) and isinstance(y, dict):
        for k in set(x) | set(y):
            if k in SKIP:
                continue
            if k not in x or k not in y:
                diffs.append((path + "/" + k, "missing"))
                continue
            walk(x[k], y[k], path + "/" + k)
    elif isinstance(x, list) and isinstance(y, list):
        if len(x) != len(y):
            diffs.append((path, f"len {len(x)} vs {len(y)}"))
            return
        for i, (u, v) in enumerate(zip(x, y)):
            walk(u, v, f"{path}[{i}]")
    elif x != y and not (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y)):
        diffs.append((path, f"{x!r} vs {y!r}"))


walk(a, b, "")
print(len(diffs), "differences")
for d in diffs[:40]:
    print(d)
