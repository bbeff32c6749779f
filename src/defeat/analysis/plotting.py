"""The one way figures are written: rendered in memory, then written atomically (``defeat.utils``)."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from defeat.utils import atomic_write_bytes


def save_figure(fig: plt.Figure, path: str | Path, dpi: int = 100, close: bool = True, tight: bool = False) -> Path:
    """Render ``fig`` (format from the suffix: png, pdf, ...) and write it atomically; close it unless asked not to."""
    path = Path(path)
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format=path.suffix.lstrip(".") or "png", dpi=dpi, bbox_inches="tight" if tight else None)
    finally:
        if close:
            plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path
