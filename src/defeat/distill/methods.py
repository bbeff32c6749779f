"""Other feature-distillation methods as pure functions: CWD, PKD and Ultralytics' score-weighted MSE.

They are feature modes of :class:`~defeat.distill.distiller.DeFeatDistiller` (``distill.feature_mode``: ``cwd``,
``pkd``, ``score_weighted``): the same FPN level pairing (every level both models have, as mode ``all``), no GT
masks, and the adapters their reference uses (:data:`METHOD_ADAPTERS`). Each per-level function states its
formula; each method function sums its levels and applies its weight, returning ``{loss key: weighted scalar}``.

References (formulas and defaults checked against these; docs/distill.md "Other feature-KD methods"):

* CWD, Shu et al., ICCV 2021: open-mmlab/mmrazor ``mmrazor/models/losses/cwd.py`` (``ChannelWiseDivergence``),
  configs ``configs/distill/mmdet/cwd/cwd_fpn_{frcnn,retina}_r101_*_r50_1x_coco.py`` (tau 1, loss_weight 10 per
  FPN level, no connector: both FPNs have 256 channels).
* PKD, Cao et al., NeurIPS 2022: open-mmlab/mmrazor ``mmrazor/models/losses/pkd_loss.py`` (``PKDLoss``), configs
  ``configs/distill/mmdet/pkd/pkd_fpn_faster-rcnn_r101_faster-rcnn_r50_2x_coco.py`` (loss_weight 6) and
  ``pkd_fpn_retina_x101_retina_r50_2x_coco.py`` (loss_weight 10).
* score-weighted MSE: ultralytics/ultralytics ``ultralytics/nn/distill_model.py`` (``DistillationModel.loss`` /
  ``loss_sl2``; weight ``dis`` = 6.0 in ``ultralytics/cfg/default.yaml``). Read only (AGPL-3.0); this is an
  independent implementation of the computation it describes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from defeat.config import DistillSettings

#: feature mode -> the adapter its reference puts between student and teacher maps: ``align`` = a 1x1 conv only
#: where the channel counts differ (none otherwise), ``projector`` = 1x1 conv, ReLU, 1x1 conv on every level
METHOD_ADAPTERS = {"cwd": "align", "pkd": "align", "score_weighted": "projector"}
#: feature mode -> the one loss key it returns (also in :data:`~defeat.distill.losses.FEATURE_LOSS_KEYS`)
METHOD_KEYS = {"cwd": "loss_feat_cwd", "pkd": "loss_feat_pkd", "score_weighted": "loss_feat_score"}
#: PKD's normalisation: ``(x - mean) / (std + PKD_EPS)`` (mmrazor's constant)
PKD_EPS = 1e-6
#: the score-weighted MSE's denominator guard: ``... / (C * sum(w) + SCORE_EPS)`` (Ultralytics' constant)
SCORE_EPS = 1e-9


def _check_pair(student: Tensor, teacher: Tensor, what: str) -> None:
    if student.dim() != 4 or student.shape != teacher.shape:
        raise ValueError(
            f"{what}: expected student and teacher maps of one (N, C, H, W) shape, got {tuple(student.shape)} "
            f"and {tuple(teacher.shape)}"
        )


# ------------------------------------------------------------------------------------------- per level
def channel_wise_divergence(student: Tensor, teacher: Tensor, tau: float = 1.0) -> Tensor:
    """CWD on one level: each channel's map as a distribution over its H x W positions.

        p_{n,c} = softmax_i(T[n,c,i] / tau),   q_{n,c} = softmax_i(S[n,c,i] / tau)   (i over the H*W positions)
        cwd = tau^2 / (N * C) * sum_{n,c} sum_i p_{n,c,i} * (log p_{n,c,i} - log q_{n,c,i})

    i.e. KL(teacher || student) per channel, summed over channels and images, divided by N * C (mmrazor's
    ``ChannelWiseDivergence`` with ``loss_weight`` 1). Unweighted; float32.

    Args:
        student: ``(N, C, H, W)`` student map (adapted when the channel counts differ).
        teacher: ``(N, C, H, W)`` teacher map.
    """
    if tau <= 0:
        raise ValueError(f"cwd tau: must be > 0, got {tau}")
    _check_pair(student, teacher, "channel_wise_divergence")
    n, c = student.shape[:2]
    log_q = F.log_softmax(student.float().flatten(2) / tau, dim=2)
    log_p = F.log_softmax(teacher.float().flatten(2) / tau, dim=2)
    return (log_p.exp() * (log_p - log_q)).sum() * tau**2 / (n * c)


def pkd_normalise(x: Tensor) -> Tensor:
    """PKD's per-channel standardisation over the batch and the positions together:

        norm(x)[n,c,h,w] = (x[n,c,h,w] - mu_c) / (sigma_c + 1e-6)

    with ``mu_c`` and ``sigma_c`` the mean and the *unbiased* standard deviation of channel c over all
    ``(n, h, w)`` (mmrazor's ``PKDLoss.norm``). Where a channel has a single value (N * H * W = 1) the unbiased
    deviation is undefined (NaN in the reference); here it counts as 0, so that channel normalises to 0.
    """
    flat = x.float().transpose(0, 1).flatten(1)  # (C, N*H*W)
    mean = flat.mean(dim=1, keepdim=True)
    std = flat.std(dim=1, keepdim=True) if flat.shape[1] > 1 else torch.zeros_like(mean)
    return ((flat - mean) / (std + PKD_EPS)).view(x.shape[1], x.shape[0], *x.shape[2:]).transpose(0, 1)


def pearson_feature_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """PKD on one level: MSE between the standardised maps, halved.

        pkd = 1 / (2 * N * C * H * W) * sum_{n,c,h,w} (norm(S) - norm(T))^2

    with ``norm`` from :func:`pkd_normalise`. Per channel with M = N * H * W values this is
    ``(M - 1) / M * (1 - r_c)`` for the Pearson correlation r_c of student and teacher (up to the 1e-6), so the
    loss is invariant to the scale and offset of either map (mmrazor's ``PKDLoss`` with ``loss_weight`` 1).
    Unweighted; float32. Args as :func:`channel_wise_divergence`.
    """
    _check_pair(student, teacher, "pearson_feature_loss")
    return F.mse_loss(pkd_normalise(student), pkd_normalise(teacher)) / 2


def score_weighted_mse(student: Tensor, teacher: Tensor, scores: Tensor) -> Tensor:
    """Ultralytics' score-weighted L2 on one level: the squared error of each position weighted by the teacher's
    confidence there.

        score = sum_{n,c,h,w} w[n,h,w] * (S[n,c,h,w] - T[n,c,h,w])^2 / (C * sum_{n,h,w} w[n,h,w] + 1e-9)

    Positions where the teacher sees nothing (w = 0) do not count; all w = 0 gives 0. Unweighted; float32.

    Args:
        student: ``(N, C, H, W)`` projected student map; teacher: the teacher's map of the same shape.
        scores: ``(N, H, W)`` teacher confidence in [0, 1] (:func:`teacher_confidence`).
    """
    _check_pair(student, teacher, "score_weighted_mse")
    if scores.shape != (student.shape[0], *student.shape[2:]):
        raise ValueError(
            f"score_weighted_mse: scores {tuple(scores.shape)} do not match the maps {tuple(student.shape)}"
        )
    w = scores.float().unsqueeze(1)
    distance = (student.float() - teacher.float()).pow(2)
    return (w * distance).sum() / (student.shape[1] * w.sum() + SCORE_EPS)


def teacher_confidence(logits: Tensor) -> Tensor:
    """The teacher's confidence per position: the highest sigmoid probability over its anchors and classes.

        w[n,h,w] = max_{a,k} sigmoid(z[n,a,k,h,w])

    Args:
        logits: ``(N, A, K, H, W)`` dense logits of one level (A anchors per position, K classes; a RetinaNet /
            FCOS classification head without the unused class 0, or an RPN's objectness with K = 1).
    Returns:
        ``(N, H, W)`` float32, no gradient.
    """
    if logits.dim() != 5:
        raise ValueError(f"teacher_confidence: expected (N, A, K, H, W) logits, got {tuple(logits.shape)}")
    return torch.sigmoid(logits.detach().float()).amax(dim=(1, 2))


# ------------------------------------------------------------------------------------------- all levels
def _levels(students: Sequence[Tensor], teachers: Sequence[Tensor], what: str) -> list[tuple[Tensor, Tensor]]:
    students, teachers = list(students), list(teachers)
    if not students or len(students) != len(teachers):
        raise ValueError(f"{what}: got {len(students)} student and {len(teachers)} teacher levels")
    return list(zip(students, teachers))


def cwd_loss(
    students: Sequence[Tensor],
    teachers: Sequence[Tensor],
    settings: DistillSettings | None = None,
    scores: Sequence[Tensor] | None = None,
) -> dict[str, Tensor]:
    """``loss_feat_cwd = cwd_weight * sum_l cwd_l(tau = cwd_tau)`` (:func:`channel_wise_divergence` per level;
    mmrazor's one ``ChannelWiseDivergence`` per FPN level, summed). ``scores`` unused."""
    s = settings or DistillSettings()
    levels = _levels(students, teachers, "cwd_loss")
    total = torch.stack([channel_wise_divergence(st, te, s.cwd_tau) for st, te in levels]).sum()
    return {"loss_feat_cwd": s.cwd_weight * total}


def pkd_loss(
    students: Sequence[Tensor],
    teachers: Sequence[Tensor],
    settings: DistillSettings | None = None,
    scores: Sequence[Tensor] | None = None,
) -> dict[str, Tensor]:
    """``loss_feat_pkd = pkd_weight * sum_l pkd_l`` (:func:`pearson_feature_loss` per level; mmrazor's
    ``PKDLoss`` on a tuple of levels). ``scores`` unused."""
    s = settings or DistillSettings()
    levels = _levels(students, teachers, "pkd_loss")
    total = torch.stack([pearson_feature_loss(st, te) for st, te in levels]).sum()
    return {"loss_feat_pkd": s.pkd_weight * total}


def score_loss(
    students: Sequence[Tensor],
    teachers: Sequence[Tensor],
    settings: DistillSettings | None = None,
    scores: Sequence[Tensor] | None = None,
) -> dict[str, Tensor]:
    """``loss_feat_score = score_weight * sum_l score_l`` (:func:`score_weighted_mse` per level with that level's
    teacher confidence; Ultralytics sums its neck levels, times ``dis``). ``scores``: per level ``(N, H, W)``."""
    s = settings or DistillSettings()
    levels = _levels(students, teachers, "score_loss")
    if scores is None or len(list(scores)) != len(levels):
        raise ValueError(f"score_loss: needs one (N, H, W) teacher score map per level ({len(levels)})")
    total = torch.stack([score_weighted_mse(st, te, w) for (st, te), w in zip(levels, scores)]).sum()
    return {"loss_feat_score": s.score_weight * total}


#: feature mode -> its loss over the levels: ``fn(students, teachers, settings, scores) -> {key: loss}``
METHOD_LOSSES: dict[str, Callable[..., dict[str, Tensor]]] = {
    "cwd": cwd_loss,
    "pkd": pkd_loss,
    "score_weighted": score_loss,
}
