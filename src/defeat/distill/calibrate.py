"""``weights: auto``: choose the KD weights from the terms' magnitudes at the start of distillation.

The authors' weights (alpha_obj = 4, alpha_bg = 16, beta = 2) were tuned for COCO-scale features and losses; on
another dataset, resolution or pair the same numbers can make a KD term tens of times the detection loss at the
start (or a negligible fraction of it). Calibration measures, on a few training batches and before any update,

    D   = the student's detection loss (the sum of its own loss terms), averaged over the batches,
    m_k = each KD term k with weight 1 (unweighted), averaged over the batches,

and sets the weights so that every KD *term* starts at ``auto_target * D``. A term is a group of loss keys that
share one purpose: the FPN feature term (``loss_feat_obj`` + ``loss_feat_bg``, or ``loss_feat_all``, or the one key
of ``cwd`` / ``pkd`` / ``score_weighted``), the backbone term (``loss_bb_obj`` + ``loss_bb_bg``) and the head term
(``loss_kd_pos`` + ``loss_kd_neg``, or ``loss_kd_all``). With ``auto_keep_ratio`` (default) the weights inside a
term keep their given ratio (alpha_bg / alpha_obj = 4 for the authors' values) and are scaled by one factor so the
term's weighted sum is the target; without it every key on its own starts at the target. A weight of 0 stays 0 (the
key is off); a term whose measured magnitude is 0 keeps its weights.

Pure: no file I/O; the caller (``defeat.api.distill``) logs the result and writes it into the run's config.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from defeat.config import DistillSettings
from defeat.distill.learned_methods import LEARNED_WEIGHT_OF

#: loss key -> the settings field that weights it
WEIGHT_OF = {
    "loss_feat_obj": "alpha_obj",
    "loss_feat_bg": "alpha_bg",
    "loss_feat_all": "alpha_all",
    "loss_feat_cwd": "cwd_weight",
    "loss_feat_pkd": "pkd_weight",
    "loss_feat_score": "score_weight",
    "loss_bb_obj": "alpha_bb_obj",
    "loss_bb_bg": "alpha_bb_bg",
    "loss_kd_pos": "beta_obj",
    "loss_kd_neg": "beta_bg",
    "loss_kd_all": "beta_all",
    **LEARNED_WEIGHT_OF,  # fgd, mgd
}
#: the KD terms whose keys share one scale factor under ``auto_keep_ratio``
TERMS = {
    "feature": (
        "loss_feat_obj",
        "loss_feat_bg",
        "loss_feat_all",
        "loss_feat_cwd",
        "loss_feat_pkd",
        "loss_feat_score",
        *LEARNED_WEIGHT_OF,
    ),
    "backbone": ("loss_bb_obj", "loss_bb_bg"),
    "head": ("loss_kd_pos", "loss_kd_neg", "loss_kd_all"),
}


@dataclass
class WeightCalibration:
    """What ``weights: auto`` measured and chose."""

    settings: DistillSettings  # the chosen weights, ``weights="fixed"``: what the run trains with
    weights: dict[str, float]  # settings field -> chosen value (the fields of the KD keys the run has)
    given: dict[str, float]  # the same fields as given (before calibration)
    detection_loss: float  # D, mean over the batches
    magnitudes: dict[str, float]  # loss key -> unweighted start magnitude m_k
    batches: int
    target: float
    keep_ratio: bool
    notes: list[str] = field(default_factory=list)

    def starting_fractions(self) -> dict[str, float]:
        """Each KD term's weighted start magnitude as a fraction of D, with the chosen weights."""
        out = {}
        for term, keys in TERMS.items():
            present = [k for k in keys if k in self.magnitudes]
            if present and self.detection_loss > 0:
                out[term] = sum(self.weights[WEIGHT_OF[k]] * self.magnitudes[k] for k in present) / self.detection_loss
        return out

    def summary(self) -> str:
        """One line for the log."""
        chosen = ", ".join(f"{k}={v:g} (was {self.given[k]:g})" for k, v in self.weights.items())
        measured = ", ".join(f"{k}={v:.4g}" for k, v in self.magnitudes.items())
        return (
            f"weights=auto over {self.batches} batches: detection loss {self.detection_loss:.4g}, unweighted "
            f"{measured}; target {self.target:g} x detection loss per term"
            f"{' (ratios kept)' if self.keep_ratio else ''} -> {chosen}"
            + (f"; {'; '.join(self.notes)}" if self.notes else "")
        )

    def as_dict(self) -> dict:
        return {
            "weights": self.weights,
            "given": self.given,
            "detection_loss": self.detection_loss,
            "magnitudes": self.magnitudes,
            "starting_fractions": self.starting_fractions(),
            "batches": self.batches,
            "target": self.target,
            "keep_ratio": self.keep_ratio,
            "notes": self.notes,
        }


def _significant(value: float, digits: int = 4) -> float:
    return float(f"{value:.{digits}g}")


def choose_weights(
    settings: DistillSettings, detection_loss: float, magnitudes: dict[str, float]
) -> tuple[dict[str, float], list[str]]:
    """The calibrated weights (settings field -> value, 4 significant digits) for measured magnitudes; pure.

    See the module docstring for the rule. Returns the weights and notes on terms left as given.
    """
    target = settings.auto_target * detection_loss
    weights: dict[str, float] = {}
    notes: list[str] = []
    for term, keys in TERMS.items():
        present = [k for k in keys if k in magnitudes]
        given = {k: float(getattr(settings, WEIGHT_OF[k])) for k in present}
        if not present:
            continue
        if detection_loss <= 0:
            notes.append(f"{term}: detection loss is 0, weights kept")
            weights.update({WEIGHT_OF[k]: given[k] for k in present})
            continue
        if settings.auto_keep_ratio:
            current = sum(given[k] * magnitudes[k] for k in present)
            if current > 0:
                factor = target / current
                weights.update({WEIGHT_OF[k]: _significant(given[k] * factor) for k in present})
            else:
                notes.append(f"{term}: magnitude 0 at the start, weights kept")
                weights.update({WEIGHT_OF[k]: given[k] for k in present})
            continue
        for k in present:
            if given[k] > 0 and magnitudes[k] > 0:
                weights[WEIGHT_OF[k]] = _significant(target / magnitudes[k])
            else:
                if given[k] > 0:
                    notes.append(f"{k}: magnitude 0 at the start, weight kept")
                weights[WEIGHT_OF[k]] = given[k]
    return weights, notes


def measure_terms(
    distiller, batches: Iterable[tuple[list[Tensor], list[dict[str, Tensor]]]]
) -> tuple[float, dict[str, float], int]:
    """Mean detection loss and mean *unweighted* KD terms of ``distiller`` over ``batches`` (already on the
    distiller's device), in training mode, without gradients and without side effects: the distiller's settings,
    KD scale, mode and buffers (e.g. BatchNorm statistics) and the global RNG are restored afterwards.

    Returns ``(detection_loss, {loss key: magnitude}, number of batches)``.
    """
    settings = distiller.settings
    unit = dataclasses.replace(settings, weights="fixed", **{f: 1.0 for f in set(WEIGHT_OF.values())})
    buffers = {name: b.detach().clone() for name, b in distiller.named_buffers()}
    was_training, was_scale = distiller.training, distiller.kd_scale
    devices = [b.device for b in buffers.values()] + [p.device for p in distiller.parameters()]
    cuda = sorted({d.index or 0 for d in devices if d.type == "cuda"})
    sums: dict[str, float] = {}
    detection, count = 0.0, 0
    try:
        distiller.settings, distiller.kd_scale = unit, 1.0
        distiller.train()
        with torch.random.fork_rng(devices=cuda), torch.no_grad():
            for images, targets in batches:
                losses = distiller(images, targets)
                detection += float(sum(v for k, v in losses.items() if k not in WEIGHT_OF))
                for k, v in losses.items():
                    if k in WEIGHT_OF:
                        sums[k] = sums.get(k, 0.0) + float(v)
                count += 1
    finally:
        distiller.settings, distiller.kd_scale = settings, was_scale
        distiller.train(was_training)
        with torch.no_grad():
            for name, b in distiller.named_buffers():
                b.copy_(buffers[name])
    if count == 0:
        raise ValueError("weights=auto: no batches to measure the KD terms on")
    return detection / count, {k: v / count for k, v in sums.items()}, count


def calibrate_weights(distiller, batches: Iterable[tuple[list[Tensor], list[dict[str, Tensor]]]]) -> WeightCalibration:
    """Measure (:func:`measure_terms`) and choose (:func:`choose_weights`); the result's ``settings`` carry the
    chosen weights with ``weights="fixed"``. The distiller itself is left unchanged: assign
    ``distiller.settings = result.settings`` to train with them."""
    settings = distiller.settings
    detection, magnitudes, count = measure_terms(distiller, batches)
    weights, notes = choose_weights(settings, detection, magnitudes)
    given = {f: float(getattr(settings, f)) for f in weights}
    chosen = dataclasses.replace(settings, weights="fixed", **weights)
    return WeightCalibration(
        chosen, weights, given, detection, magnitudes, count, settings.auto_target, settings.auto_keep_ratio, notes
    )
