"""Small I/O helpers shared by every layer: atomic writes (temporary file, then rename) and JSON reading
with one-line errors."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

_UMASK = os.umask(0)
os.umask(_UMASK)


#: the errors of a write that the user fixes on the volume (no traceback): no space, quota, read-only, permissions
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


class WriteError(OSError, ValueError):
    """A file could not be written for a reason of its volume (full, over quota, read-only, no permission); the
    message is one line naming the file, the space it needs and has, and what was kept. A ``ValueError`` too, so
    every caller that prints one-line errors (the CLI, ``defeat reproduce``) prints it without a traceback."""

    def __init__(self, code: int, message: str):
        super().__init__(code, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def format_bytes(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def free_bytes(folder: Path) -> int | None:
    """Free space of the volume holding ``folder`` (its nearest existing parent); None when it cannot be read."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def write_error(path: Path, err: OSError, needed: int | None) -> WriteError:
    """The one-line error of a failed write of ``path``: what the volume said, the bytes needed and free, and that
    the previous version of the file (if any) is untouched."""
    path = Path(path)
    reason = {
        errno.ENOSPC: "no space left on the device",
        errno.EDQUOT: "disk quota exceeded",
        errno.EROFS: "read-only file system",
    }.get(err.errno, f"permission denied ({err.strerror or errno.errorcode.get(err.errno, err.errno)})")
    free = free_bytes(path.parent)
    space = f"needs {format_bytes(needed)}" if needed else "needs an unknown size"
    space += f", {format_bytes(free)} free in {path.parent}" if free is not None else ""
    if err.errno == errno.EDQUOT:
        space += " (the quota may allow less)"
    kept = f"the previous {path.name} is kept unchanged" if path.is_file() else f"no {path.name} was written"
    return WriteError(err.errno, f"{path}: cannot write it: {reason}; {space}; {kept}")


class _Recorder:
    """The open file as the writer sees it: remembers the first ``OSError`` of a write, which ``torch.save``
    would otherwise turn into an opaque ``RuntimeError`` ("unexpected pos")."""

    def __init__(self, handle):
        self.handle, self.error = handle, None

    def write(self, data):
        try:
            return _write_chunk(self.handle, data)
        except OSError as err:
            self.error = self.error or err
            raise

    def __getattr__(self, name):
        return getattr(self.handle, name)


def _write_chunk(handle, data):
    """The one low-level write of every atomic writer (a seam for tests injecting disk faults)."""
    return handle.write(data)


def check_free_space(path: Path, needed: int) -> None:
    """Refuse to start a write of ``needed`` bytes that cannot fit: the atomic write puts the new file beside the
    old one, so the whole new size must be free (the old file's space comes back only at the rename)."""
    free = free_bytes(Path(path).parent)
    if free is not None and needed > free:
        raise write_error(Path(path), OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), needed)


def _atomic_write(
    path: Path, write: Callable[[Any], None], mode: str, fsync: bool = True, needed: int | None = None
) -> None:
    """Write through a temporary file in the same folder, then rename: readers never see half a file. A full,
    read-only or over-quota volume is a :class:`WriteError` (one line); the previous file is never touched."""
    path = Path(path)
    recorder = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if needed:
            check_free_space(path, needed)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except WriteError:
        raise
    except OSError as err:
        if err.errno in WRITE_ERRNOS:
            raise write_error(path, err, needed) from None
        raise
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual permissions
        with os.fdopen(fd, mode) as handle:
            recorder = _Recorder(handle)
            write(recorder)
            if fsync:  # durable before the rename; skipped for bulk files that a final index makes valid
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        written = os.path.getsize(tmp) if os.path.exists(tmp) else 0
        if os.path.exists(tmp):
            os.unlink(tmp)
        cause = recorder.error if recorder is not None and recorder.error is not None else err
        if isinstance(cause, OSError) and cause.errno in WRITE_ERRNOS:
            raise write_error(path, cause, max(needed or 0, written) or None) from None
        raise


def atomic_write_text(path: Path, text: str) -> None:
    _atomic_write(path, lambda h: h.write(text), "w", needed=len(text.encode()))


def atomic_write_bytes(path: Path, data: bytes, fsync: bool = True) -> None:
    _atomic_write(path, lambda h: h.write(data), "wb", fsync, needed=len(data))


def atomic_write_json(path: Path, obj: Any, indent: int | None = 2) -> None:
    _atomic_write(path, lambda h: json.dump(obj, h, indent=indent), "w")


def tensor_bytes(obj: Any) -> int:
    """The bytes of the tensors in ``obj`` (nested dicts, lists, tuples), each storage counted once: about the size
    ``torch.save`` writes (plus small headers)."""
    import torch

    seen: dict[tuple, int] = {}

    def walk(value: Any) -> None:
        if torch.is_tensor(value):
            storage = value.untyped_storage()
            seen[(value.device.type, storage.data_ptr())] = storage.nbytes()
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)

    walk(obj)
    return sum(seen.values())


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` through the atomic write, after checking that the volume has room for the tensors."""
    import torch

    _atomic_write(path, lambda h: torch.save(obj, h), "wb", needed=tensor_bytes(obj) + 64 * 1024)


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
