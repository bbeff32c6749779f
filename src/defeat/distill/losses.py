"""DeFeat's losses as pure functions on tensors.

* :func:`decoupled_feature_loss` - masked feature imitation, object and background regions weighted apart.
* :func:`softmax_kl` / :func:`decoupled_proposal_loss` - KL between teacher and student class distributions
  on the same proposals, positive and negative proposals weighted (and tempered) apart.
* :func:`sigmoid_kl` - the per-class binary counterpart of :func:`softmax_kl` for sigmoid classifiers
  (one-stage detectors).

The loss-key vocabulary (:data:`FEATURE_LOSS_KEYS`, :data:`KD_LOSS_KEYS`, :func:`is_kd_loss`) also covers the
other feature-KD methods of :mod:`defeat.distill.methods` (``loss_feat_cwd``, ``loss_feat_pkd``, ``loss_feat_score``).

The two DeFeat terms read their modes, weights and temperatures from one :class:`~defeat.config.DistillSettings`
(validated when it is made) and return a dict of already-weighted scalar losses containing exactly the terms
their mode uses, so they can be added to a detector's loss dict as they are.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from defeat.config import FEATURE_NORMS, DistillSettings
from defeat.distill.learned_methods import LEARNED_LOSS_KEYS

#: the loss keys each mode returns (the feature term, then the proposal / head term)
FEATURE_LOSS_KEYS = {
    "none": (),
    "object": ("loss_feat_obj",),
    "background": ("loss_feat_bg",),
    "all": ("loss_feat_all",),
    "decoupled": ("loss_feat_obj", "loss_feat_bg"),
    "fgfi": ("loss_feat_obj",),
    # other feature-KD methods on the same levels (defeat.distill.methods)
    "cwd": ("loss_feat_cwd",),
    "pkd": ("loss_feat_pkd",),
    "score_weighted": ("loss_feat_score",),
    **LEARNED_LOSS_KEYS,  # fgd, mgd (learned_methods.py)
}
#: the modes :func:`decoupled_feature_loss` computes (the others: :data:`defeat.distill.methods.METHOD_LOSSES`)
REGION_MODES = ("none", "object", "background", "all", "decoupled", "fgfi")
#: the backbone term's keys (``backbone_stages`` set): object and background regions of the ResNet stages
BACKBONE_LOSS_KEYS = ("loss_bb_obj", "loss_bb_bg")
PROPOSAL_LOSS_KEYS = {
    "none": (),
    "positive": ("loss_kd_pos",),
    "negative": ("loss_kd_neg",),
    "all": ("loss_kd_all",),
    "decoupled": ("loss_kd_pos", "loss_kd_neg"),
}
#: the prefixes of every distillation (KD) loss key: the FPN feature, head (proposal) and backbone terms
KD_LOSS_PREFIXES = ("loss_feat_", "loss_kd_", "loss_bb_")
#: every distillation loss key this package returns
KD_LOSS_KEYS = frozenset(
    {
        *(k for keys in FEATURE_LOSS_KEYS.values() for k in keys),
        *BACKBONE_LOSS_KEYS,
        *(k for keys in PROPOSAL_LOSS_KEYS.values() for k in keys),
    }
)


def is_kd_loss(name: str) -> bool:
    """Whether loss ``name`` is a distillation term (``loss_feat_*``, ``loss_kd_*``, ``loss_bb_*``) rather than
    the detector's own loss: the one vocabulary the trainer's report and the gradient-norm maps share."""
    return name.startswith(KD_LOSS_PREFIXES)


def feature_loss_keys(mode: str) -> tuple[str, ...]:
    """The keys :func:`decoupled_feature_loss` returns in ``mode``."""
    return FEATURE_LOSS_KEYS[mode]


def proposal_loss_keys(mode: str) -> tuple[str, ...]:
    """The keys :func:`decoupled_proposal_loss` returns in ``mode``."""
    return PROPOSAL_LOSS_KEYS[mode]


def squared_distance(student: Tensor, teacher: Tensor) -> Tensor:
    """Per-pixel squared distance summed over channels: ``D[n,y,x] = sum_c (S[n,c,y,x] - T[n,c,y,x])^2`` (float32).

    Args:
        student: ``(N, C, H, W)`` adapted student features.
        teacher: ``(N, C, H, W)`` teacher features (no gradient needed).
    """
    if student.shape != teacher.shape:
        raise ValueError(f"feature shapes differ: student {tuple(student.shape)} vs teacher {tuple(teacher.shape)}")
    return (student.float() - teacher.float()).pow(2).sum(dim=1)


def masked_squared_error(student: Tensor, teacher: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Numerator and denominator of a masked feature-imitation term on one level.

        num = sum_{n,c,y,x} M[n,y,x] * (S[n,c,y,x] - T[n,c,y,x])^2,     den = 2 * C * sum_{n,y,x} M[n,y,x]

    Args:
        student, teacher: ``(N, C, H, W)``; mask: ``(N, H, W)`` bool or float weights.
    Returns:
        ``(num, den)`` float32 scalars.
    """
    return _masked_sums(squared_distance(student, teacher), mask, student.shape[1])


def _masked_sums(distance: Tensor, mask: Tensor, channels: int) -> tuple[Tensor, Tensor]:
    mask = mask.to(torch.float32)
    return (mask * distance).sum(), 2.0 * channels * mask.sum()


def _normalise(parts: list[tuple[Tensor, Tensor]], norm: str) -> Tensor:
    """per_level: (1/L) sum_l num_l / max(1, den_l);   all_levels: sum_l num_l / max(1, sum_l den_l)."""
    if not parts:
        raise ValueError("imitation_term: no feature levels given")
    if norm == "per_level":
        return torch.stack([num / den.clamp(min=1.0) for num, den in parts]).mean()
    return torch.stack([num for num, _ in parts]).sum() / torch.stack([den for _, den in parts]).sum().clamp(min=1.0)


def imitation_term(
    students: Sequence[Tensor], teachers: Sequence[Tensor], masks: Sequence[Tensor], norm: str = "per_level"
) -> Tensor:
    """One masked imitation term over all levels with either normalisation.

        per_level  (official code):  (1/L) sum_l  num_l / max(1, den_l)
        all_levels (paper):          sum_l num_l / max(1, sum_l den_l)

    with ``num_l, den_l`` from :func:`masked_squared_error`. An empty mask gives 0 (not NaN).
    """
    if norm not in FEATURE_NORMS:
        raise ValueError(f"feature_norm: unknown value {norm!r} (choose from {', '.join(FEATURE_NORMS)})")
    return _normalise([masked_squared_error(s, t, m) for s, t, m in zip(students, teachers, masks)], norm)


def decoupled_feature_loss(
    students: Sequence[Tensor],
    teachers: Sequence[Tensor],
    object_masks: Sequence[Tensor],
    settings: DistillSettings | None = None,
) -> dict[str, Tensor]:
    """DeFeat's feature loss on the FPN levels, in any of the region modes of ``settings.feature_mode``.

        L_feat = alpha_obj * obj(M) + alpha_bg * obj(1 - M)          (mode ``decoupled``)

    where ``obj(W)`` is :func:`imitation_term` with mask ``W``. The modes keep exactly these terms:

    ============ ===================================== =================
    mode         returned keys                         mask
    ============ ===================================== =================
    none         (nothing)
    object       loss_feat_obj = alpha_obj * obj(M)    object mask
    background   loss_feat_bg  = alpha_bg * obj(1-M)   object mask
    all          loss_feat_all = alpha_all * obj(1)    every pixel
    decoupled    loss_feat_obj, loss_feat_bg
    fgfi         loss_feat_obj = alpha_obj * obj(M)    pass FGFI masks
    ============ ===================================== =================

    The distance map of each level is computed once and shared by the terms; ``obj`` normalises as
    ``settings.feature_norm`` says.

    Args:
        students: per level ``(N, C, H, W)`` *adapted* student features.
        teachers: per level teacher features of the same shapes.
        object_masks: per level ``(N, H, W)`` bool object masks (only their shapes matter for ``all``).
        settings: mode, ``alpha_obj`` / ``alpha_bg`` / ``alpha_all`` and ``feature_norm`` (default: DeFeat's).
    """
    settings = settings or DistillSettings()
    mode, norm = settings.feature_mode, settings.feature_norm
    students, teachers, object_masks = list(students), list(teachers), list(object_masks)
    if not (len(students) == len(teachers) == len(object_masks)):
        raise ValueError(
            f"decoupled_feature_loss: got {len(students)} student, {len(teachers)} teacher and "
            f"{len(object_masks)} mask levels"
        )
    if mode not in REGION_MODES:
        raise ValueError(f"decoupled_feature_loss: feature_mode {mode!r} is not a DeFeat region mode (see methods.py)")
    if mode == "none":
        return {}
    distances = [squared_distance(s, t) for s, t in zip(students, teachers)]
    channels = [s.shape[1] for s in students]
    losses: dict[str, Tensor] = {}
    if mode in ("object", "decoupled", "fgfi"):
        parts = [_masked_sums(d, m, c) for d, m, c in zip(distances, object_masks, channels)]
        losses["loss_feat_obj"] = settings.alpha_obj * _normalise(parts, norm)
    if mode in ("background", "decoupled"):
        parts = [_masked_sums(d, ~m.bool(), c) for d, m, c in zip(distances, object_masks, channels)]
        losses["loss_feat_bg"] = settings.alpha_bg * _normalise(parts, norm)
    if mode == "all":
        parts = [(d.sum(), torch.tensor(2.0 * c * d.numel(), device=d.device)) for d, c in zip(distances, channels)]
        losses["loss_feat_all"] = settings.alpha_all * _normalise(parts, norm)
    return losses


def backbone_feature_loss(
    students: Sequence[Tensor],
    teachers: Sequence[Tensor],
    object_masks: Sequence[Tensor],
    settings: DistillSettings | None = None,
) -> dict[str, Tensor]:
    """The decoupled feature term on backbone stages (the official ``bb-decouple``):

        loss_bb_obj = alpha_bb_obj * obj,   loss_bb_bg = alpha_bb_bg * bg

    with ``obj`` / ``bg`` exactly as :func:`decoupled_feature_loss` computes them (same distance, same
    ``feature_norm``), on the adapted student stages against the teacher's. Always both keys (a weight of 0
    gives a 0 term). Args as :func:`decoupled_feature_loss`, one entry per stage.
    """
    s = settings or DistillSettings()
    as_feature = dataclasses.replace(s, feature_mode="decoupled", alpha_obj=s.alpha_bb_obj, alpha_bg=s.alpha_bb_bg)
    terms = decoupled_feature_loss(students, teachers, object_masks, as_feature)
    return {"loss_bb_obj": terms["loss_feat_obj"], "loss_bb_bg": terms["loss_feat_bg"]}


def softmax_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Per-row KL(teacher || student) between tempered softmax distributions, scaled by T^2.

        KL_i = T^2 * sum_k p_k (log p_k - log q_k),   p = softmax(z_teacher / T),  q = softmax(z_student / T)

    Args:
        student_logits, teacher_logits: ``(R, K)``.
    Returns:
        ``(R,)`` float32.
    """
    if temperature <= 0:
        raise ValueError(f"temperature: must be > 0, got {temperature}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"logit shapes differ: student {tuple(student_logits.shape)} vs teacher "
            f"{tuple(teacher_logits.shape)} (do the class lists match?)"
        )
    log_q = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1) * temperature**2


def sigmoid_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Per-row KL between per-class Bernoulli distributions of sigmoid classifiers, scaled by T^2.

        KL_i = T^2 * sum_k [ p_k (log p_k - log q_k) + (1 - p_k)(log(1 - p_k) - log(1 - q_k)) ],
        p = sigmoid(z_teacher / T),  q = sigmoid(z_student / T)

    Computed with ``logsigmoid`` for stability. Args as :func:`softmax_kl`; returns ``(R,)`` float32.
    """
    if temperature <= 0:
        raise ValueError(f"temperature: must be > 0, got {temperature}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"logit shapes differ: student {tuple(student_logits.shape)} vs teacher "
            f"{tuple(teacher_logits.shape)} (do the class lists match?)"
        )
    s = student_logits.float() / temperature
    t = teacher_logits.float() / temperature
    p = torch.sigmoid(t)
    log_p, log_1mp = F.logsigmoid(t), F.logsigmoid(-t)
    log_q, log_1mq = F.logsigmoid(s), F.logsigmoid(-s)
    per_class = p * (log_p - log_q) + (1 - p) * (log_1mp - log_1mq)
    return per_class.reshape(per_class.shape[0], -1).sum(dim=1) * temperature**2


def _mean_or_zero(values: Tensor, select: Tensor) -> Tensor:
    """Mean of ``values[select]``; 0 (still attached to the graph) when nothing is selected."""
    return (values * select).sum() / select.sum().clamp(min=1)


def decoupled_proposal_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    settings: DistillSettings | None = None,
    kl_fn: Callable[[Tensor, Tensor, float], Tensor] = softmax_kl,
) -> dict[str, Tensor]:
    """DeFeat's proposal (RoI classification) distillation on the proposals both heads classified.

        L_prop = beta_obj * mean_{i: label_i > 0} KL_i(T_obj) + beta_bg * mean_{i: label_i = 0} KL_i(T_bg)

    with ``KL_i(T)`` from :func:`softmax_kl`; mode, betas and temperatures come from ``settings``
    (``settings.proposal_mode``, ``beta_*``, ``temperature_*``; default: DeFeat's). ``labels`` are the sampler's
    labels of exactly the proposals whose logits are given. Modes keep exactly their terms: ``positive`` ->
    ``loss_kd_pos``, ``negative`` -> ``loss_kd_neg``, ``decoupled`` -> both, ``all`` -> ``loss_kd_all`` = beta_all *
    mean_i KL_i(T_all), ``none`` -> nothing. A split with no proposals contributes 0.

    ``kl_fn`` is the per-row divergence (default :func:`softmax_kl`); one-stage detectors pass
    :func:`sigmoid_kl` and their anchors' (or locations') logits and matcher labels instead of proposals.

    Args:
        student_logits, teacher_logits: ``(R, K + 1)``.
        labels: ``(R,)`` int, 0 = background.
    """
    s = settings or DistillSettings()
    mode = s.proposal_mode
    if labels.shape[0] != student_logits.shape[0]:
        raise ValueError(f"labels: {labels.shape[0]} labels for {student_logits.shape[0]} proposals")
    losses: dict[str, Tensor] = {}
    positive = (labels > 0).float()
    kl_at: dict[float, Tensor] = {}  # one KL per distinct temperature

    def kl(temperature: float) -> Tensor:
        if temperature not in kl_at:
            kl_at[temperature] = kl_fn(student_logits, teacher_logits, temperature)
        return kl_at[temperature]

    if mode in ("positive", "decoupled"):
        losses["loss_kd_pos"] = s.beta_obj * _mean_or_zero(kl(s.temperature_obj), positive)
    if mode in ("negative", "decoupled"):
        losses["loss_kd_neg"] = s.beta_bg * _mean_or_zero(kl(s.temperature_bg), 1.0 - positive)
    if mode == "all":
        losses["loss_kd_all"] = s.beta_all * _mean_or_zero(kl(s.temperature_all), torch.ones_like(positive))
    return losses
