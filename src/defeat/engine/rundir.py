"""One run per output folder: a new ``train``/``distill`` run refuses a folder that holds another run, so that
config, logs and checkpoints never mix two runs; ``resume`` continues the run there, ``force`` moves it aside."""

from __future__ import annotations

import time
from pathlib import Path

from defeat.engine.distributed import DistInfo, broadcast_from_main
from defeat.engine.trainer import FINAL_CHECKPOINT, LAST_CHECKPOINT

#: the files that say a folder holds a run
RUN_FILES = ("config.yaml", "metrics.jsonl", LAST_CHECKPOINT, FINAL_CHECKPOINT)


def run_files(out_dir: Path) -> list[str]:
    """The :data:`RUN_FILES` present in ``out_dir``."""
    return [name for name in RUN_FILES if (Path(out_dir) / name).is_file()]


def aside_path(out_dir: Path) -> Path:
    """Where ``force`` moves a previous run: the sibling ``<dir>.old-<YYYYmmdd-HHMMSS>`` (``-2``, ... if taken)."""
    out_dir = Path(out_dir).absolute()
    base = out_dir.with_name(f"{out_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
    target, n = base, 1
    while target.exists():
        n += 1
        target = base.with_name(f"{base.name}-{n}")
    return target


def _claim(out_dir: Path, resume: bool, force: bool) -> str | None:
    found = run_files(out_dir)
    if resume or not found:
        return None
    if not force:
        raise ValueError(
            f"{out_dir}: holds a run already ({', '.join(found)}); --resume continues it, --force moves it to "
            f"{out_dir.name}.old-<date-time> beside it and starts over, or set another output.dir"
        )
    target = aside_path(out_dir)
    try:
        out_dir.rename(target)
    except OSError as err:
        raise ValueError(f"{out_dir}: cannot move the previous run to {target} ({err.strerror})") from None
    return f"moved the previous run in {out_dir} to {target}"


def claim_output_dir(out_dir: str | Path, info: DistInfo, *, resume: bool, force: bool) -> str | None:
    """Make ``out_dir`` this run's (rank 0 decides, every rank gets the verdict): refuse a folder holding another
    run unless ``resume`` (continue it; it wins over ``force``) or ``force`` (move it aside). Returns a line saying
    what was moved, or None."""
    verdict = None
    if info.is_main:
        try:
            verdict = ("ok", _claim(Path(out_dir), resume, force))
        except ValueError as err:
            verdict = ("error", str(err))
    status, text = broadcast_from_main(verdict, info)
    if status == "error":
        raise ValueError(text)
    return text
