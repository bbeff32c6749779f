"""Preemption-safe training: SIGTERM / SIGINT ask the loop to stop after the current step.

Clusters (SLURM, Kubernetes, spot instances) send SIGTERM some seconds before they kill; a user presses Ctrl-C
(SIGINT). Either one only sets a flag here; the training loop finishes its step, all ranks agree on the flag (one
all-reduce of a scalar per step), rank 0 writes ``checkpoint_last.pt`` atomically and the loop raises
:class:`TrainingStopped`, whose exit code is the shell's for that signal (128 + number: 143 for SIGTERM, 130 for
SIGINT). Further signals are ignored until training returns, so a second Ctrl-C cannot interrupt the save
(``kill -9`` still ends the process at once; the atomic write then leaves the previous checkpoint intact).
"""

from __future__ import annotations

import signal
import threading

import torch
import torch.distributed as dist

from defeat.engine.distributed import DistInfo

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingStopped(SystemExit):
    """Training stopped on a signal after writing its checkpoint; ``code`` is 128 + the signal number, so an
    uncaught one exits the interpreter with the shell's convention (and no traceback)."""

    def __init__(self, signum: int, step: int, checkpoint):
        super().__init__(128 + signum)
        self.signum, self.step, self.checkpoint = signum, step, checkpoint

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    def __str__(self) -> str:
        return f"stopped by {self.signal_name} at step {self.step}; {self.checkpoint} written"


class RunsStopped(TrainingStopped):
    """Runs side by side (``defeat reproduce`` / ``compare --jobs N``: one process each) stopped on one signal, each
    training after its current step with its checkpoint written; ``code`` is 128 + the signal number, as for one
    run. ``stages``: the runs that were stopped."""

    def __init__(self, signum: int, stages: list[str]):
        SystemExit.__init__(self, 128 + signum)
        self.signum, self.step, self.checkpoint, self.stages = signum, None, None, list(stages)

    def __str__(self) -> str:
        return (
            f"stopped by {self.signal_name}; the stages that were running ({', '.join(self.stages) or 'none'}) "
            "stopped, trainings after their current step with checkpoint_last.pt written"
        )


class StopSignals:
    """Context manager: while it is entered, SIGTERM and SIGINT set :attr:`signum` (the first one wins) instead of
    ending the process; the previous handlers come back on exit. Outside the main thread (where Python cannot set
    handlers) it does nothing and signals keep their usual effect."""

    def __init__(self):
        self.signum: int | None = None
        self.ignored = 0  # signals received after the first one
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum
        else:
            self.ignored += 1

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def agreed(self, info: DistInfo) -> int | None:
        """The signal every rank acts on: the largest number any rank received (0 if none), all-reduced so that
        every rank stops at the same step. One scalar per step."""
        if not info.enabled:
            return self.signum
        flag = torch.tensor([self.signum or 0], dtype=torch.int32, device=info.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item()) or None
