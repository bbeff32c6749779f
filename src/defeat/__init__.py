"""defeat: distil object detectors with DeFeat (Guo et al., CVPR 2021), plus the analyses behind it."""

import os

__version__ = "0.1.0"

# OpenMP threads that wait at a barrier spin for at most ~10k iterations, then sleep. libgomp's default (300k) lets
# the waiting threads of two jobs on the same cores take the CPU time the working ones need: a step beside one
# equal job took 8x its time alone; with 10k it takes ~2x, the fair share, and alone it is as fast as before
# (benchmarks/results/contention.json). It must be set before torch loads OpenMP, so it is here; a process that
# imported torch first, or that sets its own OpenMP wait policy, keeps it.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")
