"""defeat: distil object detectors with DeFeat (Guo et al., CVPR 2021), plus the analyses behind it."""

import os

__version__ = "0.1.0"

# OpenMP threads that wait at a barrier spin for at most ~10k iterations, then sleep. libgomp's default (300k) lets
# the waiting threads of two jobs on the same cores take the CPU time the working ones need: an R18-FPN step beside
# one equal job took 4.4x its time alone (17.4x for the tiny detector on busy cores); with 10k 1.9x (2.6x), near the
# fair share 2x, and alone as fast as before (benchmarks/results/contention*.json). It must be set before torch
# loads OpenMP, so it is here; a process that imported torch first, or that sets its own wait policy, keeps it.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")
