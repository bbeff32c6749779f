"""``defeat reproduce``: the DeFeat supplementary's study end to end on the embedded benchmark, with a report.

It sits above the API: every stage calls :mod:`defeat.api` with a config object (no command lines, no
process-global state carried from one stage to the next). Modules: :mod:`~defeat.study.presets` (presets and the
configs derived from them), :mod:`~defeat.study.plan` (the stages), :mod:`~defeat.study.estimate` (time estimate),
:mod:`~defeat.study.runner` (running with cache/resume, one stage after another or N at once),
:mod:`~defeat.study.claims` (the numbers and claims, pure),
:mod:`~defeat.study.stats` (the tests that decide them: Welch, TOST, their power, the bootstrap; scipy.stats),
:mod:`~defeat.study.regime` (the doubling plateau test and the regime conditions, pure), :mod:`~defeat.study.render`
(Markdown/HTML),
:mod:`~defeat.study.report` (files), :mod:`~defeat.study.coco`; :mod:`~defeat.study.compare` (``defeat compare``:
methods x seeds on the user's own config, with :mod:`~defeat.study.compare_report`).

    from defeat.study import load_preset, run_reproduce
    summary = run_reproduce(load_preset("tiny"), "runs/reproduce_tiny")
"""

from defeat.study.claims import CLAIM_IDS, claims_by_id, compute_claims
from defeat.study.compare import known_methods, run_compare
from defeat.study.plan import Stage, build_plan
from defeat.study.presets import PRESETS, STUDENT_MODES, derive_config, load_preset
from defeat.study.runner import StageError, StaleStageError, execute_stage, run_reproduce

__all__ = [
    "CLAIM_IDS",
    "PRESETS",
    "STUDENT_MODES",
    "Stage",
    "StageError",
    "StaleStageError",
    "build_plan",
    "claims_by_id",
    "compute_claims",
    "derive_config",
    "execute_stage",
    "known_methods",
    "load_preset",
    "run_compare",
    "run_reproduce",
]
