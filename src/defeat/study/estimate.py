"""The time estimate of a ``defeat reproduce`` run: a-priori seconds per unit, refined by measured step times."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path


class Estimator:
    """Seconds per unit (``preset.estimate``: a training step of each kind, an evaluated image, ...), replaced by
    measured values as they come; kinds not measured yet are scaled by the measured/a-priori ratio of this machine."""

    def __init__(self, apriori: dict):
        self.apriori = {k: float(v) for k, v in apriori.items()}
        self.measured: dict[str, float] = {}

    def rate(self, kind: str) -> float:
        if kind in self.measured:
            return self.measured[kind]
        ratios = [self.measured[k] / self.apriori[k] for k in self.measured if self.apriori.get(k)]
        factor = sum(ratios) / len(ratios) if ratios else 1.0
        return self.apriori.get(kind, 0.0) * factor

    def seconds(self, stage) -> float:
        """Estimated seconds of a :class:`~defeat.study.plan.Stage` (its ``estimate`` units times the rates)."""
        return sum(count * self.rate(kind) for kind, count in stage.estimate.items())


def step_seconds(metrics_path: Path) -> list[float]:
    """The ``sec_per_step`` of every logged window of a training log (skipping unreadable lines)."""
    out = []
    if not metrics_path.is_file():
        return out
    for line in metrics_path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "sec_per_step" in record:
            out.append(float(record["sec_per_step"]))
    return out


class FirstStepsWatcher(threading.Thread):
    """Waits for the first logged window of a training stage, then calls ``callback(sec_per_step)`` once."""

    def __init__(self, metrics_path: Path, skip: int, callback: Callable[[float], None]):
        super().__init__(daemon=True)
        self.path, self.skip, self.callback = metrics_path, skip, callback
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(2.0):
            seconds = step_seconds(self.path)
            if len(seconds) > self.skip:
                self.callback(seconds[-1])
                return


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"
