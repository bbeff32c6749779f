"""Fidelity of the feature-KD methods: test-only PORTS of the reference computations, and comparisons.

THIS MODULE IS FOR VERIFICATION ONLY. The functions named ``reference_*`` restate what each method's reference
implementation computes, so that :mod:`defeat.distill.methods` can be checked against them on the same inputs;
the package never imports them.

* ``reference_cwd``, ``reference_pkd``: ports of open-mmlab/mmrazor (Apache-2.0) at commit
  90c7af1fdf35a606a2fceaaeb4b6be2f0dac4eb7, ``mmrazor/models/losses/cwd.py`` (``ChannelWiseDivergence.forward``)
  and ``mmrazor/models/losses/pkd_loss.py`` (``PKDLoss.norm`` / ``PKDLoss.forward``), kept close to the original.
* ``reference_score_weighted``: a restatement, written for this test (not copied; the original is AGPL-3.0), of
  ultralytics/ultralytics ``ultralytics/nn/distill_model.py``, ``DistillationModel.loss`` (teacher scores: the
  head's class logits split per neck level, sigmoid, max over classes) and ``DistillationModel.loss_sl2``, as
  published on main in https://docs.ultralytics.com/reference/nn/distill_model/ (the code index holds no commit of
  this version; its stored 5d2c9632fdde7ac22ac8beb67765b3e75c03dd86 is an earlier cosine-loss version).

:data:`COMPARISONS` maps a method to a function ``(seed) -> {"ours", "reference", "rel_diff", "inputs"}`` that
feeds both sides the same random inputs; ``tests/distill/test_methods.py`` asserts the agreement and
``benchmarks/methods_fidelity.py`` records it. Add a method by adding its entry (and its :data:`SOURCES` line).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from defeat.config import DistillSettings
from defeat.distill.methods import cwd_loss, pkd_loss, score_loss, teacher_confidence

MMRAZOR = "open-mmlab/mmrazor"
MMRAZOR_COMMIT = "90c7af1fdf35a606a2fceaaeb4b6be2f0dac4eb7"
ULTRALYTICS = "ultralytics/ultralytics"

#: method -> where its reference lives (recorded beside the numbers)
SOURCES = {
    "cwd": {
        "repository": MMRAZOR,
        "commit": MMRAZOR_COMMIT,
        "file": "mmrazor/models/losses/cwd.py",
        "config": "configs/distill/mmdet/cwd/cwd_fpn_frcnn_r101_frcnn_r50_1x_coco.py (tau=1, loss_weight=10)",
    },
    "pkd": {
        "repository": MMRAZOR,
        "commit": MMRAZOR_COMMIT,
        "file": "mmrazor/models/losses/pkd_loss.py",
        "config": "configs/distill/mmdet/pkd/pkd_fpn_faster-rcnn_r101_faster-rcnn_r50_2x_coco.py (loss_weight=6)",
    },
    "fgd": {
        "repository": "yzd-v/FGD",
        "commit": "c03a6cf3b3cb3cbfd5554dbf4766e7135747d22d",
        "file": "mmdet/distillation/losses/fgd.py (port: tests/distill/reference_learned.py::fgd_reference)",
        "config": "configs/distillers/fgd/fgd_retina_r101_fpn_2x_distill_retina_r50_fpn_2x_coco.py (RetinaNet values)",
    },
    "mgd": {
        "repository": "yzd-v/MGD",
        "commit": "2c9da0b28625eb948db57afc02c824452c3910fe",
        "file": "det/mmdet/distillation/losses/mgd.py (port: tests/distill/reference_learned.py::mgd_reference)",
        "config": "det/configs/distillers/mgd/retina_rx101_64x4d_distill_retina_r50_fpn_2x_coco.py (alpha 2e-5, 0.65)",
    },
    "score_weighted": {
        "repository": ULTRALYTICS,
        "commit": "main as of the API reference page (not pinned: the index holds no commit of this version)",
        "file": "ultralytics/nn/distill_model.py (DistillationModel.loss, loss_sl2)",
        "config": "ultralytics/cfg/default.yaml (dis=6.0)",
    },
}

#: the inputs of every comparison: a batch of 2, 16 channels, five FPN levels of a 128 px image (P2-P6)
BATCH, CHANNELS, SIZES, CLASSES = 2, 16, ((32, 32), (16, 16), (8, 8), (4, 4), (2, 2)), 3


# ------------------------------------------------------------------------------------- ports (references)
def reference_cwd(preds_S: Tensor, preds_T: Tensor, tau: float = 1.0, loss_weight: float = 1.0) -> Tensor:
    """PORT of mmrazor ``ChannelWiseDivergence.forward`` (one level)."""
    assert preds_S.shape[-2:] == preds_T.shape[-2:]
    N, C, H, W = preds_S.shape
    softmax_pred_T = F.softmax(preds_T.view(-1, W * H) / tau, dim=1)
    logsoftmax = torch.nn.LogSoftmax(dim=1)
    loss = torch.sum(
        softmax_pred_T * logsoftmax(preds_T.view(-1, W * H) / tau)
        - softmax_pred_T * logsoftmax(preds_S.view(-1, W * H) / tau)
    ) * (tau**2)
    return loss_weight * loss / (C * N)


def _reference_pkd_norm(feat: Tensor) -> Tensor:
    """PORT of mmrazor ``PKDLoss.norm``."""
    assert len(feat.shape) == 4
    N, C, H, W = feat.shape
    feat = feat.permute(1, 0, 2, 3).reshape(C, -1)
    mean = feat.mean(dim=-1, keepdim=True)
    std = feat.std(dim=-1, keepdim=True)
    feat = (feat - mean) / (std + 1e-6)
    return feat.reshape(C, N, H, W).permute(1, 0, 2, 3)


def reference_pkd(preds_S, preds_T, loss_weight: float = 1.0, resize_stu: bool = True) -> Tensor:
    """PORT of mmrazor ``PKDLoss.forward`` (a tensor or a tuple of levels)."""
    if isinstance(preds_S, torch.Tensor):
        preds_S, preds_T = (preds_S,), (preds_T,)
    loss = 0.0
    for pred_S, pred_T in zip(preds_S, preds_T):
        size_S, size_T = pred_S.shape[2:], pred_T.shape[2:]
        if size_S[0] != size_T[0]:
            if resize_stu:
                pred_S = F.interpolate(pred_S, size_T, mode="bilinear")
            else:
                pred_T = F.interpolate(pred_T, size_S, mode="bilinear")
        assert pred_S.shape == pred_T.shape
        norm_S, norm_T = _reference_pkd_norm(pred_S), _reference_pkd_norm(pred_T)
        loss += F.mse_loss(norm_S, norm_T) / 2
    return loss * loss_weight


def reference_score_weighted(
    student_maps: list[Tensor], teacher_maps: list[Tensor], teacher_class_logits: Tensor, dis: float = 6.0
) -> Tensor:
    """RESTATEMENT of Ultralytics' score-weighted L2 (``DistillationModel.loss`` + ``loss_sl2``), without the final
    ``* batch_size`` (Ultralytics' loss convention: every one of its loss items is scaled by the batch size).

    ``teacher_class_logits``: ``(N, K, sum_l H_l * W_l)``, the head's class logits of all levels in a row (one
    prediction per position, as the anchor-free YOLO head; Ultralytics averages the logits of its one2many and
    one2one branches first). ``student_maps``: already through the projector.
    """
    per_level = [t.shape[-2] * t.shape[-1] for t in teacher_maps]
    chunks = teacher_class_logits.split(per_level, dim=-1)
    total = torch.zeros(1)
    for student, teacher, chunk in zip(student_maps, teacher_maps, chunks):
        weight = chunk.sigmoid().max(dim=1, keepdim=True).values  # (N, 1, HW): best class per position
        n, c = student.shape[:2]
        squared = (student.reshape(n, c, -1) - teacher.reshape(n, c, -1)) ** 2  # (N, C, HW)
        total = total + (squared * weight).sum() / (weight.sum() * c + 1e-9) * dis
    return total[0]


# ----------------------------------------------------------------------------------------- comparisons
def _maps(generator: torch.Generator, scale: float = 1.0, offset: float = 0.0) -> list[Tensor]:
    return [scale * torch.randn(BATCH, CHANNELS, h, w, generator=generator) + offset for h, w in SIZES]


def _result(ours: Tensor, reference: Tensor, inputs: dict) -> dict:
    ours, reference = float(ours), float(reference)
    return {
        "ours": ours,
        "reference": reference,
        "rel_diff": abs(ours - reference) / max(abs(reference), 1e-30),
        "inputs": inputs,
    }


def _feature_inputs(seed: int) -> dict:
    return {
        "seed": seed,
        "levels": [[BATCH, CHANNELS, h, w] for h, w in SIZES],
        "student": "randn",
        "teacher": "2 * randn + 0.5",
    }


def compare_cwd(seed: int) -> dict:
    """Our ``loss_feat_cwd`` (authors' tau 1, weight 10) vs mmrazor's one ChannelWiseDivergence per level, summed."""
    g = torch.Generator().manual_seed(seed)
    students, teachers = _maps(g), _maps(g, 2.0, 0.5)
    settings = DistillSettings(feature_mode="cwd")
    ours = cwd_loss(students, teachers, settings)["loss_feat_cwd"]
    reference = sum(
        reference_cwd(s, t, tau=settings.cwd_tau, loss_weight=settings.cwd_weight) for s, t in zip(students, teachers)
    )
    return _result(ours, reference, {**_feature_inputs(seed), "tau": settings.cwd_tau, "weight": settings.cwd_weight})


def compare_pkd(seed: int) -> dict:
    """Our ``loss_feat_pkd`` (authors' weight 6) vs mmrazor's PKDLoss on the tuple of levels."""
    g = torch.Generator().manual_seed(seed)
    students, teachers = _maps(g), _maps(g, 2.0, 0.5)
    settings = DistillSettings(feature_mode="pkd")
    ours = pkd_loss(students, teachers, settings)["loss_feat_pkd"]
    reference = reference_pkd(tuple(students), tuple(teachers), loss_weight=settings.pkd_weight)
    return _result(ours, reference, {**_feature_inputs(seed), "weight": settings.pkd_weight})


def compare_score_weighted(seed: int) -> dict:
    """Our ``loss_feat_score`` (weight 6 = Ultralytics' ``dis``), the teacher confidence computed from dense class
    logits by :func:`teacher_confidence`, vs the Ultralytics restatement on the same logits."""
    g = torch.Generator().manual_seed(seed)
    students, teachers = _maps(g), _maps(g, 2.0, 0.5)
    logits = [2.0 * torch.randn(BATCH, CLASSES, h, w, generator=g) - 1.0 for h, w in SIZES]
    settings = DistillSettings(feature_mode="score_weighted")
    scores = [teacher_confidence(z.unsqueeze(1)) for z in logits]  # one anchor per position
    ours = score_loss(students, teachers, settings, scores)["loss_feat_score"]
    reference = reference_score_weighted(
        students, teachers, torch.cat([z.flatten(2) for z in logits], dim=-1), dis=settings.score_weight
    )
    inputs = {
        **_feature_inputs(seed),
        "teacher_class_logits": [[BATCH, CLASSES, h, w] for h, w in SIZES],
        "logits": "2 * randn - 1",
        "weight": settings.score_weight,
    }
    return _result(ours, reference, inputs)


def _learned(compare: Callable[..., dict], name: str) -> Callable[[int], dict]:
    """FGD / MGD (tests/distill/test_learned_methods.py): one level with and without the align conv (student 6 or
    8 channels, teacher 8); rel_diff is the larger of the two (for FGD the largest over its four parts)."""

    def run(seed: int) -> dict:
        from tests.distill.test_learned_methods import fgd_inputs

        runs = {channels: compare(seed, channels) for channels in (6, 8)}
        worst = max(runs.values(), key=lambda r: r["max_rel_diff"])
        student, teacher, boxes, image = fgd_inputs(seed, 6)
        inputs = {
            "seed": seed,
            "student": [list(student.shape), "and 8 channels"],
            "teacher": list(teacher.shape),
            "boxes_per_image": [len(b) for b in boxes],
            "image_size": list(image),
            "weights": "module weights N(0, 0.2^2) from seed + 1, shared by both sides",
        }
        return {"ours": worst["ours"], "reference": worst["loss"], "rel_diff": worst["max_rel_diff"], "inputs": inputs}

    run.__name__ = f"compare_{name}"
    return run


def _learned_comparisons() -> dict[str, Callable[[int], dict]]:
    from tests.distill.test_learned_methods import compare_fgd, compare_mgd

    return {"fgd": _learned(compare_fgd, "fgd"), "mgd": _learned(compare_mgd, "mgd")}


#: method -> comparison ``(seed) -> {"ours", "reference", "rel_diff", "inputs"}``
COMPARISONS: dict[str, Callable[[int], dict]] = {
    "cwd": compare_cwd,
    "pkd": compare_pkd,
    "score_weighted": compare_score_weighted,
    **_learned_comparisons(),
}
#: the seeds every comparison runs with
SEEDS = (0, 1, 2)
