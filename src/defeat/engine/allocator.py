"""An opt-in glibc allocator setting for CPU training (config ``cpu_allocator: heap``).

glibc serves allocations above its mmap threshold with fresh ``mmap`` pages, so a big tensor allocated every
step (e.g. the box head's weight gradient, fresh after each ``zero_grad(set_to_none=True)``) page-faults on every
page of it every step. ``mallopt(M_MMAP_MAX=0)`` + a 1 GiB trim threshold make every allocation come from the
heap and be reused. It changes no result, but it is process-wide and the process keeps its peak heap, so it is
applied only when the config asks for it (``benchmarks/train_speed.py`` measures it).
"""

from __future__ import annotations

_TUNED = False


def tune_cpu_allocator() -> bool:
    """Keep freed memory in glibc's heap instead of handing it back to the OS (once per process; Linux).

    Returns whether the setting is in effect (False off glibc).
    """
    global _TUNED
    if _TUNED:
        return True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(-4, 0) == 1 and libc.mallopt(-1, 1 << 30) == 1  # M_MMAP_MAX, M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        return False
    _TUNED = ok
    return ok
