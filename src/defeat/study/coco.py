"""The ``coco`` preset of ``defeat reproduce``: configs and torchrun commands for COCO on GPUs (nothing is run)."""

from __future__ import annotations

from pathlib import Path

from defeat.config import config_from_dict, save_config
from defeat.study.presets import _merge
from defeat.study.report import say
from defeat.utils import atomic_write_json, atomic_write_text


def write_coco_configs(preset: dict, out: Path) -> dict:
    """Write the COCO configs of every pair (teacher, baseline student, DeFeat student) and a README with the
    torchrun commands and the paper's expected numbers. Nothing is trained."""
    out = Path(out)
    configs = out / "configs"
    gpus = int(preset.get("gpus", 8))
    written, lines = [], []
    lines += [
        f"# DeFeat on COCO: configs and commands (preset `{preset['preset']}`)",
        "",
        "**Not run by `defeat reproduce`**: this preset only writes the configs below and this README. It needs "
        f"COCO 2017 at the paths in the configs ({preset['data']['train_images']}, ...) and GPUs (the commands "
        f"use {gpus} per node; `data.batch_size` is per GPU).",
        "",
        "Each pair: train the teacher (or point `distill.teacher_checkpoint` at a trained one), the baseline "
        "student, then the DeFeat student; compare with `defeat eval`.",
        "",
    ]
    expected = {}
    for pair in preset["pairs"]:
        name = pair["name"]
        pair_dir = configs / name
        base = _merge(_merge(preset["common"], {"data": preset["data"]}), pair.get("overrides"))
        trees = {
            "teacher": _merge(base, {"model": pair["teacher"], "output": {"dir": f"runs/coco/{name}/teacher"}}),
            "student": _merge(base, {"model": pair["student"], "output": {"dir": f"runs/coco/{name}/student"}}),
            "defeat": _merge(
                base,
                {
                    "model": pair["student"],
                    "output": {"dir": f"runs/coco/{name}/defeat"},
                    "distill": _merge(
                        preset.get("distill", {}),
                        {"teacher_checkpoint": f"runs/coco/{name}/teacher/model_final.pt", **pair.get("distill", {})},
                    ),
                },
            ),
        }
        for role, tree in trees.items():
            cfg = config_from_dict(tree, source=f"preset {preset['preset']} ({name}, {role})")
            path = pair_dir / f"{role}.yaml"
            save_config(cfg, path)
            written.append(str(path))
        run = f"torchrun --nproc_per_node={gpus} -m defeat.cli.main"
        lines += [
            f"## {name}: {pair['teacher']['name']} → {pair['student']['name']}",
            "",
            pair.get("note", ""),
            "",
            "```bash",
            f"{run} train {pair_dir / 'teacher.yaml'}      # teacher",
            f"{run} train {pair_dir / 'student.yaml'}      # baseline student (no KD)",
            f"{run} distill {pair_dir / 'defeat.yaml'}     # DeFeat student",
            f"defeat eval {pair_dir / 'defeat.yaml'} --checkpoint runs/coco/{name}/defeat/model_final.pt",
            "```",
            "",
        ]
        if pair.get("expected"):
            expected[name] = pair["expected"]
            numbers = ", ".join(f"{k} {v}" for k, v in pair["expected"].items())
            lines += [f"Expected (paper, COCO val2017 AP): {numbers}", ""]
    atomic_write_text(out / "README.md", "\n".join(lines))
    atomic_write_json(out / "expected.json", {"note": "the paper's COCO numbers; not run here", "pairs": expected})
    say(f"wrote {len(written)} configs and {out / 'README.md'} (nothing trained: coco is configs only)")
    return {"configs": written, "readme": str(out / "README.md"), "expected": expected}
