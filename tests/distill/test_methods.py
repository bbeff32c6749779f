"""CWD, PKD and the score-weighted MSE (defeat.distill.methods): hand-computed examples, fidelity to the references
(tests/distill/fidelity.py), and each mode through the distiller on tiny Faster R-CNN / RetinaNet / FCOS."""

import math

import pytest
import torch

from defeat.config import ConfigError, DistillSettings
from defeat.distill import (
    DeFeatDistiller,
    channel_wise_divergence,
    choose_weights,
    cwd_loss,
    decoupled_feature_loss,
    feature_loss_keys,
    is_kd_loss,
    pearson_feature_loss,
    pkd_loss,
    score_loss,
    score_weighted_mse,
    teacher_confidence,
    teacher_scores,
)
from defeat.distill.adapters import FeatureAdapters, Projector, adapters_from_state
from defeat.distill.losses import KD_LOSS_KEYS

from .conftest import batch, tiny_faster_rcnn
from .fidelity import COMPARISONS, SEEDS
from .test_one_stage import tiny_one_stage

METHODS = {"cwd": "loss_feat_cwd", "pkd": "loss_feat_pkd", "score_weighted": "loss_feat_score"}
TWO_STAGE_KEYS = {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
ONE_STAGE_KEYS = {"retinanet": {"classification", "bbox_regression"}}


def one(values) -> torch.Tensor:
    """A 1-image, 1-channel 2x2 map, row by row."""
    return torch.tensor(values, dtype=torch.float32).view(1, 1, 2, 2)


# --------------------------------------------------------------------------------- hand-computed examples
def test_cwd_by_hand():
    # teacher logits (0, 0, 0, ln 3): p = (1, 1, 1, 3) / 6; student all 0: q = 1/4 everywhere
    # KL = 3 * 1/6 * ln((1/6) / (1/4)) + 1/2 * ln((1/2) / (1/4)) = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3); N * C = 1
    teacher, student = one([0.0, 0.0, 0.0, math.log(3)]), one([0.0] * 4)
    assert channel_wise_divergence(student, teacher).item() == pytest.approx(0.5 * math.log(4 / 3), rel=1e-6)
    # tau = 2 on doubled logits: the same p and q, times tau^2 = 4
    assert channel_wise_divergence(student, 2 * teacher, tau=2.0).item() == pytest.approx(2 * math.log(4 / 3), rel=1e-6)
    # weighted and summed over levels: 10 * (two identical levels)
    loss = cwd_loss([student, student], [teacher, teacher], DistillSettings(feature_mode="cwd"))["loss_feat_cwd"]
    assert loss.item() == pytest.approx(10 * 2 * 0.5 * math.log(4 / 3), rel=1e-6)
    assert channel_wise_divergence(teacher, teacher).item() == pytest.approx(0.0, abs=1e-7)


def test_pkd_by_hand():
    # S = (1, 2, 3, 4): mean 2.5, unbiased variance 5/3; T = (4, 3, 2, 1) normalises to -norm(S).
    # sum (norm S - norm T)^2 = 4 * sum norm(S)^2 = 4 * (5 / (5/3)) = 12; mean over 4 values = 3; halved: 1.5
    # (= (M - 1) / M * (1 - r) with r = -1, M = 4), up to the 1e-6 added to the deviation
    student, teacher = one([1.0, 2.0, 3.0, 4.0]), one([4.0, 3.0, 2.0, 1.0])
    assert pearson_feature_loss(student, teacher).item() == pytest.approx(1.5, rel=1e-5)
    # scale and offset do not matter (Pearson): T = 2 S + 5 gives 0
    assert pearson_feature_loss(student, 2 * student + 5).item() == pytest.approx(0.0, abs=1e-6)
    loss = pkd_loss([student], [teacher], DistillSettings(feature_mode="pkd"))["loss_feat_pkd"]
    assert loss.item() == pytest.approx(6 * 1.5, rel=1e-5)
    # one value per channel (1x1 map, batch 1): the deviation is undefined (NaN in mmrazor); here the level gives 0
    single = pearson_feature_loss(torch.ones(1, 3, 1, 1), torch.zeros(1, 3, 1, 1))
    assert torch.isfinite(single) and single.item() == 0.0


def test_score_weighted_by_hand():
    # S - T = (2, 0, 0, 1), weights (0.25, 0.5, 0.5, 1): sum w d^2 = 0.25 * 4 + 1 * 1 = 2; C * sum w = 2.25
    student, teacher = one([2.0, 0.0, 0.0, 1.0]), one([0.0] * 4)
    weights = torch.tensor([[0.25, 0.5], [0.5, 1.0]]).view(1, 2, 2)
    assert score_weighted_mse(student, teacher, weights).item() == pytest.approx(2 / 2.25, rel=1e-6)
    loss = score_loss([student], [teacher], DistillSettings(feature_mode="score_weighted"), [weights])
    assert loss["loss_feat_score"].item() == pytest.approx(6 * 2 / 2.25, rel=1e-6)
    # a teacher that sees nothing anywhere: 0, not NaN
    assert score_weighted_mse(student, teacher, torch.zeros(1, 2, 2)).item() == 0.0
    # two channels: the denominator counts C once per position
    two = torch.cat([student, student], dim=1)
    assert score_weighted_mse(two, torch.zeros_like(two), weights).item() == pytest.approx(4 / 4.5, rel=1e-6)


def test_teacher_confidence_by_hand():
    # (N, A, K, H, W) = (1, 2, 2, 2, 2): max over anchors and classes of the sigmoid, per position
    logits = torch.full((1, 2, 2, 2, 2), -10.0)
    logits[0, 0, 1, 0, 0] = 0.0  # sigmoid 0.5
    logits[0, 1, 0, 1, 1] = math.log(3)  # sigmoid 0.75
    conf = teacher_confidence(logits)
    assert conf.shape == (1, 2, 2)
    assert conf[0, 0, 0].item() == pytest.approx(0.5) and conf[0, 1, 1].item() == pytest.approx(0.75)
    assert conf[0, 0, 1].item() == pytest.approx(torch.sigmoid(torch.tensor(-10.0)).item())


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="shape"):
        channel_wise_divergence(torch.zeros(1, 2, 2, 2), torch.zeros(1, 3, 2, 2))
    with pytest.raises(ValueError, match="scores"):
        score_weighted_mse(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2), torch.zeros(1, 3, 3))
    with pytest.raises(ValueError, match="teacher score map per level"):
        score_loss([torch.zeros(1, 1, 2, 2)], [torch.zeros(1, 1, 2, 2)])
    with pytest.raises(ValueError, match="not a DeFeat region mode"):
        decoupled_feature_loss([torch.zeros(1, 1, 2, 2)], [torch.zeros(1, 1, 2, 2)], [torch.zeros(1, 2, 2)], _s("cwd"))


# ------------------------------------------------------------------------------------------------ fidelity
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("method", sorted(COMPARISONS))
def test_agrees_with_the_reference(method, seed):
    result = COMPARISONS[method](seed)
    assert result["reference"] != 0 and math.isfinite(result["ours"])
    assert result["rel_diff"] < 1e-5, result


# ---------------------------------------------------------------------------------- vocabulary and config
def _s(mode: str, **kw) -> DistillSettings:
    """Feature mode ``mode`` alone (no head term unless asked for)."""
    return DistillSettings(**{"feature_mode": mode, "proposal_mode": "none", **kw})


def test_keys_are_in_the_kd_vocabulary():
    for mode, key in METHODS.items():
        assert feature_loss_keys(mode) == (key,) and key in KD_LOSS_KEYS and is_kd_loss(key)


def test_defaults_and_validation():
    s = DistillSettings()
    assert (s.cwd_tau, s.cwd_weight, s.pkd_weight, s.score_weight) == (1.0, 10.0, 6.0, 6.0)
    with pytest.raises(ConfigError, match="cwd_tau"):
        _s("cwd", cwd_tau=0.0)
    for key in ("cwd_weight", "pkd_weight", "score_weight"):
        with pytest.raises(ConfigError, match=key):
            _s("cwd", **{key: -1.0})


def test_weights_auto_scales_the_method_weight():
    weights, _ = choose_weights(_s("cwd", auto_target=1.0), 4.0, {"loss_feat_cwd": 2.0})
    assert weights == {"cwd_weight": 2.0}  # 10 * 2.0 -> 4.0: factor 0.2


# ---------------------------------------------------------------------------------------- through the distiller
def two_stage(mode: str, student_channels: int = 16, **kw) -> DeFeatDistiller:
    return DeFeatDistiller(
        tiny_faster_rcnn(seed=1, channels=student_channels), tiny_faster_rcnn(seed=2), _s(mode, **kw), max_steps=10
    ).train()


def one_stage(mode: str, family: str = "retinanet", student_channels: int = 32) -> DeFeatDistiller:
    return DeFeatDistiller(
        tiny_one_stage(family, 1, channels=student_channels), tiny_one_stage(family, 2), _s(mode), max_steps=10
    ).train()


def check_step(d: DeFeatDistiller, key: str, detection_keys: set[str]) -> None:
    """One training step: exactly the detection keys and ``key``; the KD gradient reaches the student's FPN and
    the adapters, never the teacher."""
    losses = d(*batch(with_empty=False))
    assert set(losses) == detection_keys | {key}
    assert torch.isfinite(losses[key]) and losses[key].item() > 0
    d.zero_grad()
    losses[key].backward()
    assert d.student.backbone.fpn.layer_blocks[0][0].weight.grad.abs().sum() > 0
    if d.adapters is not None:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in d.adapters.parameters())
    assert all(p.grad is None for p in d.teacher.parameters())


@pytest.mark.parametrize("mode", sorted(METHODS))
def test_each_mode_on_faster_rcnn(mode):
    d = two_stage(mode)
    assert d.levels == ["P2", "P3", "P4", "P5", "P6"]
    check_step(d, METHODS[mode], TWO_STAGE_KEYS)


@pytest.mark.parametrize("mode", sorted(METHODS))
def test_each_mode_on_retinanet(mode):
    d = one_stage(mode)
    assert d.levels == ["P3", "P4", "P5", "P6", "P7"]
    check_step(d, METHODS[mode], ONE_STAGE_KEYS["retinanet"])


def test_score_weighted_on_fcos_and_a_mixed_pair():
    check_step(
        one_stage("score_weighted", "fcos"), "loss_feat_score", {"classification", "bbox_regression", "bbox_ctrness"}
    )
    with pytest.warns(UserWarning, match="mixed pair"):  # teacher Faster R-CNN: its RPN objectness scores
        d = DeFeatDistiller(tiny_one_stage("retinanet", 1), tiny_faster_rcnn(seed=2, channels=32), _s("score_weighted"))
    check_step(d.train(), "loss_feat_score", ONE_STAGE_KEYS["retinanet"])


def test_adapters_follow_the_references():
    # CWD / PKD: none when the channel counts match (mmrazor's FPN configs), a 1x1 conv where they differ
    for mode in ("cwd", "pkd"):
        same = two_stage(mode)  # 16 channels on both sides
        assert same.adapters is None and {k.split(".")[0] for k in same.state_dict()} == {"student"}
    differ = DeFeatDistiller(tiny_faster_rcnn(seed=1, channels=8), tiny_faster_rcnn(seed=2), _s("pkd")).train()
    assert differ.adapters.kind == "conv1x1" and differ.adapters.convs["P2"].weight.shape == (16, 8, 1, 1)
    check_step(differ, "loss_feat_pkd", TWO_STAGE_KEYS)
    # score_weighted: Ultralytics' projector (1x1 conv, ReLU, 1x1 conv) on every level, even at equal channels
    projected = two_stage("score_weighted")
    assert all(isinstance(m, Projector) for m in projected.adapters.convs.values())
    assert projected.adapters.convs["P3"].out_channels == 16


def test_adapters_round_trip_through_a_state_dict():
    for kind in ("conv3x3", "conv1x1", "projector"):
        made = FeatureAdapters(["P3", "P4"], 8, 16, kind=kind)
        loaded = adapters_from_state(made.state_dict())
        assert loaded.kind == kind and loaded.levels == ["P3", "P4"]
        x = {"P3": torch.randn(1, 8, 4, 4), "P4": torch.randn(1, 8, 2, 2)}
        assert all(torch.equal(made(x)[k], loaded(x)[k]) for k in x)


def test_schedule_at_zero_keeps_the_key():
    for mode in ("cwd", "score_weighted"):
        d = two_stage(mode, stop_step=1)
        d.before_step(1)
        losses = d(*batch())
        assert d.kd_scale == 0.0 and losses[METHODS[mode]].item() == 0.0
        sum(losses.values()).backward()


def test_teacher_scores_per_family():
    images, _ = batch()
    with torch.no_grad():
        # RetinaNet: classes 1..K of every anchor at each position, straight from the head's convs
        model = tiny_one_stage("retinanet", 2).eval()
        feats = model.backbone(model.transform(images)[0].tensors)
        names = dict(zip(["P3", "P4", "P5", "P6", "P7"], feats.values()))
        got = teacher_scores(model, {"P4": names["P4"]})["P4"]
        head = model.head.classification_head
        raw = head.cls_logits(head.conv(names["P4"]))  # (N, A * (K + 1), H, W)
        n, _, h, w = raw.shape
        expected = raw.view(n, -1, head.num_classes, h, w)[:, :, 1:].sigmoid().amax(dim=(1, 2))
        assert got.shape == (n, h, w) and torch.allclose(got, expected)
        # Faster R-CNN: the RPN's objectness, max over the anchors
        model = tiny_faster_rcnn(seed=2).eval()
        feats = model.backbone(model.transform(images)[0].tensors)
        level = list(feats.values())[1]
        got = teacher_scores(model, {"P3": level})["P3"]
        expected = model.rpn.head.cls_logits(torch.relu(model.rpn.head.conv(level))).sigmoid().amax(dim=1)
        assert torch.allclose(got, expected)
