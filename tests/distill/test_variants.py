"""Issue 14's variants on tiny models: backbone-feature KD, proposal sampling from the teacher, weights=auto."""

import dataclasses

import pytest
import torch
from torchvision.ops import box_iou

from defeat.config import ConfigError, DistillConfig, DistillSettings, config_from_dict
from defeat.distill import (
    DeFeatDistiller,
    build_distiller,
    calibrate_weights,
    choose_weights,
    measure_terms,
    rpn_proposals,
)

from .conftest import batch, tiny_faster_rcnn
from .test_one_stage import tiny_one_stage

DETECTION_KEYS = {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}


def two_stage(**kw) -> DeFeatDistiller:
    return DeFeatDistiller(
        tiny_faster_rcnn(seed=1), tiny_faster_rcnn(seed=2), DistillSettings(**kw), max_steps=10
    ).train()


# ---------------------------------------------------------------------------------------------- backbone KD
def test_backbone_kd_is_off_by_default_and_adds_its_terms_and_adapters():
    plain = two_stage()
    assert plain.backbone_adapters is None and not any("loss_bb" in k for k in plain(*batch()))
    d = two_stage(backbone_stages=[3, "layer4"])
    assert d.backbone_stages == ["layer3", "layer4"]
    assert {k.split(".")[0] for k in d.state_dict()} == {"student", "adapters", "backbone_adapters"}
    assert d.backbone_adapters.relu  # the official bb-adapt: conv + ReLU
    losses = d(*batch())
    assert {"loss_bb_obj", "loss_bb_bg"} <= set(losses) and set(losses) >= DETECTION_KEYS
    assert all(torch.isfinite(v) for v in losses.values())
    d.zero_grad()
    (losses["loss_bb_obj"] + losses["loss_bb_bg"]).backward()
    assert all(p.grad is not None for p in d.backbone_adapters.parameters())
    assert d.student.backbone.body.layer3[0].weight.grad.abs().sum() > 0  # the stage itself learns
    assert d.student.backbone.fpn.layer_blocks[0][0].weight.grad is None  # nothing past the stages
    assert all(p.grad is None for p in d.teacher.parameters())


def test_backbone_kd_weights_and_feature_mode_none():
    d = two_stage(feature_mode="none", proposal_mode="none", backbone_stages=[2], alpha_bb_obj=0.0, alpha_bb_bg=1.0)
    losses = d(*batch())
    assert set(losses) == DETECTION_KEYS | {"loss_bb_obj", "loss_bb_bg"} and d.adapters is None
    assert losses["loss_bb_obj"] == 0 and losses["loss_bb_bg"] > 0
    d.set_kd_scale(0, 10)
    d.settings = dataclasses.replace(d.settings, stop_step=1)
    d.set_kd_scale(5)
    off = d(*batch())  # schedule at 0: the keys stay (adapters in the graph for DDP), the value is 0
    assert off["loss_bb_bg"] == 0 and off["loss_bb_bg"].requires_grad


def test_backbone_kd_vanishes_when_the_adapted_student_equals_the_teacher():
    d = two_stage(feature_mode="none", proposal_mode="none", backbone_stages=[4])
    d.student.backbone.body.load_state_dict(d.teacher.backbone.body.state_dict())
    conv = d.backbone_adapters.convs["layer4"]
    with torch.no_grad():  # identity 3x3 conv: the ReLU passes the (non-negative) stage output unchanged
        conv.weight.zero_()
        conv.bias.zero_()
        for c in range(conv.out_channels):
            conv.weight[c, c, 1, 1] = 1.0
    losses = d(*batch())
    assert losses["loss_bb_obj"] < 1e-10 and losses["loss_bb_bg"] < 1e-10


@pytest.mark.parametrize("family", ["retinanet", "fcos"])
def test_backbone_kd_on_one_stage_students(family):
    settings = DistillConfig(backbone_stages=[1, 3])
    d = build_distiller(tiny_one_stage(family, 1), tiny_one_stage(family, 2), settings, max_steps=5).train()
    losses = d(*batch())
    assert losses["loss_bb_obj"] > 0 and losses["loss_bb_bg"] > 0
    sum(losses.values()).backward()
    assert d.backbone_adapters.convs["layer1"].weight.grad is not None


def test_bad_backbone_stages_are_refused_in_one_line():
    for stages, message in (
        ([5], "distill.backbone_stages: unknown stage 5"),
        (["C4"], "distill.backbone_stages: unknown stage 'C4'"),
        ([3, "layer3"], "distill.backbone_stages: stage layer3 listed twice"),
    ):
        with pytest.raises(ConfigError) as err:
            config_from_dict({"distill": {"backbone_stages": stages}})
        assert message in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ValueError) as err:  # tiny one-stage bodies have layer1..layer3 only
        build_distiller(
            tiny_one_stage("retinanet", 1),
            tiny_one_stage("retinanet", 2),
            DistillConfig(backbone_stages=[4]),
            where="teacher t.pt",
        )
    assert str(err.value) == (
        "distill.backbone_stages: the student has no backbone stage layer4 (its stages: layer1, layer2, layer3)"
    )
    teacher = tiny_faster_rcnn(seed=2)
    del teacher.backbone.body.layer4
    with pytest.raises(ValueError, match="^distill.backbone_stages: teacher t.pt has no backbone stage layer4"):
        DeFeatDistiller(tiny_faster_rcnn(seed=1), teacher, DistillSettings(backbone_stages=[4]), where="teacher t.pt")


# ---------------------------------------------------------------------------------------- proposal sampling
def test_teacher_sampling_uses_the_teachers_proposals_with_their_own_labels():
    d = two_stage(proposal_sampling="teacher")
    images, targets = batch(with_empty=False)
    tr_images, tr_targets = d.student.transform(images, targets)
    s_feats = d.student.backbone(tr_images.tensors)
    with torch.no_grad():
        t_feats = d.teacher.backbone(tr_images.tensors)
        teacher_props = rpn_proposals(d.teacher, tr_images, t_feats)
    assert all(len(p) <= d.teacher.rpn._post_nms_top_n["training"] for p in teacher_props)
    torch.manual_seed(0)
    samples = d.head.teacher_samples(d.student, d.teacher, tr_images, s_feats, t_feats, tr_targets)
    assert samples.student_logits.requires_grad and len(samples.labels) == samples.student_logits.shape[0]
    offset = 0
    for props, chosen, target in zip(teacher_props, samples.context, tr_targets):
        pool = torch.cat([props, target["boxes"]])  # the sampler also sees the GT boxes, as torchvision adds them
        assert (box_iou(chosen, pool).max(dim=1).values > 0.9999).all()
        labels = samples.labels[offset : offset + len(chosen)]
        offset += len(chosen)
        iou = box_iou(chosen, target["boxes"]).max(dim=1).values
        assert ((labels > 0) == (iou >= 0.5)).all()  # the student's matcher on exactly these proposals
    losses = d(*batch())
    assert {"loss_kd_pos", "loss_kd_neg"} <= set(losses) and all(torch.isfinite(v) for v in losses.values())


def test_teacher_sampling_differs_from_student_sampling_and_leaves_detection_losses_alone():
    torch.manual_seed(0)
    student_side = two_stage(proposal_sampling="student")(*batch())
    torch.manual_seed(0)
    teacher_side = two_stage(proposal_sampling="teacher")(*batch())
    for key in DETECTION_KEYS:  # the student's own losses come from its own samples either way
        assert torch.allclose(student_side[key], teacher_side[key])
    assert not torch.allclose(student_side["loss_kd_neg"], teacher_side["loss_kd_neg"])


def test_teacher_sampling_is_refused_for_one_stage_heads_and_checked():
    with pytest.raises(ValueError, match="^distill.proposal_sampling=teacher: only for Faster R-CNN pairs"):
        build_distiller(
            tiny_one_stage("retinanet", 1), tiny_one_stage("retinanet", 2), DistillConfig(proposal_sampling="teacher")
        )
    # no head term asked for: nothing to refuse
    build_distiller(
        tiny_one_stage("fcos", 1),
        tiny_one_stage("fcos", 2),
        DistillConfig(proposal_sampling="teacher", proposal_mode="none"),
    )
    with pytest.raises(ConfigError, match="^config: distill.proposal_sampling: unknown value .both."):
        config_from_dict({"distill": {"proposal_sampling": "both"}})


# ---------------------------------------------------------------------------------------------- weights=auto
def test_choose_weights_by_hand():
    s = DistillSettings(weights="auto", auto_target=0.5, backbone_stages=[3])
    magnitudes = {
        "loss_feat_obj": 0.1,
        "loss_feat_bg": 0.2,
        "loss_bb_obj": 0.0,
        "loss_bb_bg": 0.0,
        "loss_kd_pos": 0.5,
        "loss_kd_neg": 0.05,
    }
    weights, notes = choose_weights(s, 2.0, magnitudes)
    # feature: 4 * 0.1 + 16 * 0.2 = 3.6 -> factor 0.5 * 2 / 3.6 = 0.2778: alpha_obj 1.111, alpha_bg 4.444 (ratio 4)
    assert weights["alpha_obj"] == pytest.approx(1.111, abs=1e-3) and weights["alpha_bg"] == pytest.approx(
        4.444, abs=1e-3
    )
    # head: 2 * 0.5 + 2 * 0.05 = 1.1 -> factor 1 / 1.1: beta_obj = beta_bg = 1.818
    assert weights["beta_obj"] == pytest.approx(1.818, abs=1e-3) and weights["beta_bg"] == weights["beta_obj"]
    assert weights["alpha_bb_obj"] == 4.0 and weights["alpha_bb_bg"] == 16.0  # nothing measured: kept
    assert notes == ["backbone: magnitude 0 at the start, weights kept"]
    apart, _ = choose_weights(dataclasses.replace(s, auto_keep_ratio=False, alpha_obj=0.0), 2.0, magnitudes)
    assert apart["alpha_obj"] == 0.0  # a term switched off stays off
    assert apart["alpha_bg"] == pytest.approx(5.0) and apart["beta_obj"] == pytest.approx(2.0)
    assert apart["beta_bg"] == pytest.approx(20.0)


def test_calibration_hits_the_target_and_has_no_side_effects():
    d = two_stage(weights="auto", auto_target=0.25, backbone_stages=[4])
    before = {k: v.clone() for k, v in d.state_dict().items()}
    settings_before, rng_before = d.settings, torch.get_rng_state()
    batches = [batch(), batch(with_empty=False)]
    result = calibrate_weights(d, batches)
    assert d.settings is settings_before and torch.equal(torch.get_rng_state(), rng_before)
    assert all(torch.equal(before[k], v) for k, v in d.state_dict().items())
    assert result.settings.weights == "fixed" and result.batches == 2
    assert result.settings.alpha_bg / result.settings.alpha_obj == pytest.approx(4.0, rel=1e-3)
    for term, fraction in result.starting_fractions().items():
        assert fraction == pytest.approx(0.25, rel=2e-3), term
    # the chosen weights reproduce the target when the same batches are measured again with them
    d.settings = result.settings
    torch.manual_seed(0)
    detection, magnitudes, _ = measure_terms(d, batches)
    assert detection == pytest.approx(result.detection_loss, rel=0.05)
    assert "weights=auto over 2 batches" in result.summary() and "alpha_bg=" in result.summary()


def test_bad_auto_settings_are_refused_in_one_line():
    for key, value, message in (
        ("auto_target", -0.5, "distill.auto_target: must be > 0"),
        ("auto_target", 0, "distill.auto_target: must be > 0"),
        ("auto_batches", 0, "distill.auto_batches: must be >= 1"),
        ("weights", "adaptive", "distill.weights: unknown value 'adaptive'"),
        ("alpha_bb_bg", -1.0, "distill.alpha_bb_bg: must be >= 0"),
        ("fgfi_assign", "all", "distill.fgfi_assign: unknown value 'all'"),
    ):
        with pytest.raises(ConfigError) as err:
            config_from_dict({"distill": {key: value}})
        assert message in str(err.value) and "\n" not in str(err.value)


# ------------------------------------------------------------------------------------- the level rule's k0
def test_level_k0_defaults_follow_the_family():
    from defeat.config import ModelConfig
    from defeat.models import build_detector
    from defeat.models.families import default_level_k0

    zoo = {
        name: build_detector(ModelConfig(name=name), 3)
        for name in ("faster_rcnn_r18_fpn", "retinanet_r18_fpn", "fcos_r18_fpn")
    }
    # Faster R-CNN: the RoI rule whatever the anchors; RetinaNet with 32-px P3 anchors: floor(3 + log2(7)) = 5,
    # the official rule ported to P3-P7; FCOS: P3 takes distances 4a..8a -> floor(3 + log2(224 / 256)) = 2
    assert [default_level_k0(m) for m in zoo.values()] == [4, 5, 2]
    small = build_detector(ModelConfig(name="retinanet_r18_fpn", anchor_sizes=[16, 32, 64, 128, 256]), 3)
    assert default_level_k0(small) == 6
    d = build_distiller(tiny_one_stage("retinanet", 1), tiny_one_stage("retinanet", 2), DistillConfig())
    assert d.level_k0 == 7  # tiny anchors of 8 px on P3: floor(3 + log2(28))
    assert (
        build_distiller(
            tiny_one_stage("retinanet", 1), tiny_one_stage("retinanet", 2), DistillConfig(level_k0=4)
        ).level_k0
        == 4
    )
    assert two_stage().level_k0 == 4
