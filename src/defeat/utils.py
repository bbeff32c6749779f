"""Small I/O helpers shared by every layer: atomic writes (temporary file, then rename) and JSON reading
with one-line errors."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

_UMASK = os.umask(0)
os.umask(_UMASK)


def _atomic_write(path: Path, write: Callable[[Any], None], mode: str, fsync: bool = True) -> None:
    """Write through a temporary file in the same folder, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual permissions
        with os.fdopen(fd, mode) as handle:
            write(handle)
            if fsync:  # durable before the rename; skipped for bulk files that a final index makes valid
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    _atomic_write(path, lambda h: h.write(text), "w")


def atomic_write_bytes(path: Path, data: bytes, fsync: bool = True) -> None:
    _atomic_write(path, lambda h: h.write(data), "wb", fsync)


def atomic_write_json(path: Path, obj: Any, indent: int | None = 2) -> None:
    _atomic_write(path, lambda h: json.dump(obj, h, indent=indent), "w")


def atomic_torch_save(obj: Any, path: Path) -> None:
    import torch

    _atomic_write(path, lambda h: torch.save(obj, h), "wb")


def read_json(path: str | Path) -> Any:
    """Load a JSON file, raising ``ValueError('<path>: ...')`` for a missing or invalid file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    try:
        with open(path) as handle:
            return json.load(handle)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid JSON ({err.msg} at line {err.lineno} column {err.colno})") from None
