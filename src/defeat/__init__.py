"""defeat: distil object detectors with DeFeat (Guo et al., CVPR 2021), plus the analyses behind it."""

import os

__version__ = "0.1.0"

# OpenMP threads that wait at a barrier sleep instead of spinning: beside another job on the same cores, spinning
# threads take the CPU time the working ones need, and a step slows many times over
# (benchmarks/results/contention.json). It must be set before torch loads OpenMP, so it is here; a process that
# imported torch first, or that sets OMP_WAIT_POLICY itself, keeps its own.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
