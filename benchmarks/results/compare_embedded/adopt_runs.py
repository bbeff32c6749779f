"""The one-off that adopted reproduce_full's finished baseline/decoupled runs (seeds 1, 2) into compare_embedded
(ADOPTED.md): same config and seed as the compare's stage (seed 0 of both arms, retrained by the compare, gave
bit-identical AP). Writes the compare's own config.yaml and a done.json with the compare's stage key, so the
compare counts the run as finished. Kept as the record of what was done; run as

    PYTHONPATH=src python benchmarks/results/compare_embedded/adopt_runs.py baseline_s1 baseline_s2 \\
        decoupled_s1 decoupled_s2
"""

import json
import shutil
import sys
from pathlib import Path

from defeat.config import config_to_dict, load_config, save_config
from defeat.study.compare import build_compare_plan, parse_methods
from defeat.utils import atomic_write_json

SOURCE = Path("/work/runs/reproduce_full/models")
COMPARE = Path("/work/runs/compare_embedded")
METHODS = "baseline,decoupled,fgd,mgd,cwd,pkd,score_weighted"
WHY = (
    "same config and seed as this stage (output.dir aside); seed 0 of baseline and decoupled, retrained by the "
    "compare, gave bit-identical AP"
)


def main(names: list[str]) -> None:
    cfg = load_config(SOURCE / "decoupled_s0" / "config.yaml")
    stages = {s.name: s for s in build_compare_plan(cfg, parse_methods(METHODS), [0, 1, 2], COMPARE)}
    for name in names:
        stage, source = stages[name], SOURCE / name
        assert not (stage.folder / "done.json").exists() and not (stage.folder / "started.json").exists(), name
        mine, theirs = config_to_dict(stage.config), config_to_dict(load_config(source / "config.yaml"))
        differ = {k for k in mine if mine[k] != theirs[k]}
        assert differ <= {"output"}, (name, differ)
        assert {k for k in mine["output"] if mine["output"][k] != theirs["output"][k]} <= {"dir"}, name
        stage.folder.mkdir(parents=True, exist_ok=True)
        save_config(stage.config, stage.folder / "config.yaml")
        for file in ("metrics.jsonl", "metrics_final.json", "model_final.pt"):
            shutil.copy2(source / file, stage.folder / file)
        done = json.loads((source / "done.json").read_text())
        record = {
            "stage": name,
            "key": stage.key,
            "status": "adopted",
            "seconds": done.get("seconds"),
            "finished": done.get("finished"),
            "command": stage.command,
            "steps": stage.steps,
            "sec_per_step": done.get("sec_per_step"),
            "adopted_from": str(source),
            "why": WHY,
        }
        atomic_write_json(stage.folder / "done.json", record)
        print("adopted", name)


if __name__ == "__main__":
    main(sys.argv[1:])
