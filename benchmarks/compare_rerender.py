"""Re-render a ``defeat compare`` report from the per-seed APs its ``results.json`` stores, with the current
statistics (:mod:`defeat.study.compare_report`: Holm over the methods vs the baseline, 90 % Welch CIs); trains
nothing. Rewrites ``results.json`` (its ``command`` gets the re-rendering appended once, ``rendered`` says what was
recomputed), ``report.md``, ``report.html`` and ``figures/``.

Usage: PYTHONPATH=src python benchmarks/compare_rerender.py benchmarks/results/compare_quick
"""

from defeat.study.compare_report import main

if __name__ == "__main__":
    raise SystemExit(main())
