"""Gradient-norm maps: the norm, object/background statistics, and the hook against torch.autograd.grad."""

import math

import pytest
import torch

from defeat.analysis import grad_norm as gn
from defeat.models import fpn_features
from tests.distill.conftest import batch, tiny_faster_rcnn


def test_pixel_grad_norm_is_l2_over_channels():
    grad = torch.zeros(1, 2, 2, 3)
    grad[0, 0, 1, 2], grad[0, 1, 1, 2] = 3.0, -4.0
    grad[0, 1, 0, 0] = 2.0
    expected = torch.tensor([[[2.0, 0, 0], [0, 0, 5.0]]])
    assert torch.equal(gn.pixel_grad_norm(grad), expected)
    with pytest.raises(ValueError, match="N, C, H, W"):
        gn.pixel_grad_norm(torch.zeros(2, 3, 4))


def test_region_norms_constructed_case():
    # object pixels carry norm 4 and 2, background 1, 1, 1 and a padded 50 that must not count
    norm = torch.tensor([[[4.0, 2.0, 1.0], [1.0, 1.0, 50.0]]])
    obj = torch.tensor([[[True, True, False], [False, False, False]]])
    valid = torch.tensor([[[True, True, True], [True, True, False]]])
    stats = gn.region_norms(norm, obj, valid)
    assert (stats.obj_mean, stats.bg_mean, stats.ratio) == (3.0, 1.0, 3.0)
    assert (stats.obj_count, stats.bg_count) == (2, 3)
    # pooling over images adds sums and counts, not ratios: (6 + 8) / (2 + 1) over (3 + 3) / (3 + 1)
    other = gn.region_norms(torch.tensor([[8.0, 3.0]]), torch.tensor([[True, False]]))
    pooled = stats + other
    assert pooled.ratio == pytest.approx((14 / 3) / (6 / 4))
    assert math.isnan(gn.region_norms(norm, torch.zeros_like(obj)).ratio)
    with pytest.raises(ValueError, match="one shape"):
        gn.region_norms(norm, obj[..., :2])


def test_hook_captures_the_autograd_gradient():
    model = tiny_faster_rcnn(seed=3)
    model.train()
    images, targets = batch(with_empty=False)
    levels = ["P2", "P3", "P4", "P5", "P6"]
    torch.manual_seed(0)
    with gn.FeatureGradHook(model.backbone, levels) as hook:
        losses = model(images, targets)
        loss = sum(losses.values())
        features = [hook.features[name] for name in levels]
        expected = torch.autograd.grad(loss, features, retain_graph=True, allow_unused=True)
        hook.grads.clear()  # tensor hooks fire on autograd.grad too; keep only what backward() records
        loss.backward()
    assert set(hook.grads) <= set(levels) and "P2" in hook.grads
    for name, want in zip(levels, expected):
        if want is None:  # a level the loss does not reach records nothing
            assert name not in hook.grads
            continue
        assert torch.allclose(hook.grads[name], want, rtol=1e-6, atol=1e-10), name
    assert hook.grads["P2"].abs().sum() > 0
    # the hook is removed on exit: another forward records nothing new
    hook.clear()
    fpn_features(model, torch.rand(1, 3, 64, 64))
    assert hook.features == {}


def test_hook_on_distillation_loss_matches_autograd():
    from defeat.config import DistillConfig
    from defeat.distill import DeFeatDistiller

    student, teacher = tiny_faster_rcnn(seed=1), tiny_faster_rcnn(seed=2)
    distiller = DeFeatDistiller(student, teacher, DistillConfig(feature_mode="decoupled")).train()
    torch.nn.init.normal_(distiller.adapters.convs["P3"].weight, std=0.1)  # adapters start at ~0
    images, targets = batch(with_empty=True)
    levels = ["P2", "P3", "P4", "P5", "P6"]
    with gn.FeatureGradHook(student.backbone, levels) as hook:
        losses = distiller(images, targets)
        loss = losses["loss_feat_obj"] + losses["loss_feat_bg"]
        expected = torch.autograd.grad(loss, [hook.features[n] for n in levels], retain_graph=True)
        hook.grads.clear()
        loss.backward()
    for name, want in zip(levels, expected):
        assert torch.allclose(hook.grads[name], want, rtol=1e-6, atol=1e-12), name
    assert hook.grads["P3"].abs().sum() > 0


def test_backbone_kd_counts_as_distillation():
    """One KD vocabulary (defeat.distill.is_kd_loss): ``loss_bb_*`` is distillation, as in the trainer's report."""
    from defeat.distill import KD_LOSS_KEYS, is_kd_loss

    names = [
        "loss_classifier",
        "loss_box_reg",
        "loss_objectness",
        "loss_rpn_box_reg",
        "loss_feat_obj",
        "loss_feat_bg",
        "loss_bb_obj",
        "loss_bb_bg",
        "loss_kd_pos",
        "loss_kd_neg",
    ]
    assert gn.loss_keys(names, "distillation") == names[4:]
    assert gn.loss_keys(names, "detection") == names[:4]
    assert gn.loss_keys(names, "sum") == names
    assert all(is_kd_loss(k) for k in KD_LOSS_KEYS) and {"loss_bb_obj", "loss_feat_all", "loss_kd_all"} <= KD_LOSS_KEYS
    with pytest.raises(ValueError, match="unknown loss"):
        gn.loss_keys(names, "total")
