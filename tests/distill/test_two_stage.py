"""DeFeatDistiller on tiny Faster R-CNNs: terms per mode, gradients, the frozen teacher, the proposal split."""

import copy

import pytest
import torch
from torchvision.models.detection import RetinaNet

from defeat.config import DistillConfig
from defeat.distill import DeFeatDistiller, feature_loss_keys, kd_scale_at, proposal_loss_keys, softmax_kl

from .conftest import batch, tiny_faster_rcnn

DETECTION_KEYS = {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}


def make(feature_mode="decoupled", proposal_mode="decoupled", **kw):
    settings = DistillConfig(feature_mode=feature_mode, proposal_mode=proposal_mode, **kw)
    return DeFeatDistiller(tiny_faster_rcnn(seed=1), tiny_faster_rcnn(seed=2), settings, max_steps=10).train()


def test_teacher_is_outside_the_module_tree():
    d = make()
    assert {k.split(".")[0] for k in d.state_dict()} == {"student", "adapters"}
    assert sum(p.numel() for p in d.parameters()) == sum(p.numel() for p in d.student.parameters()) + sum(
        p.numel() for p in d.adapters.parameters()
    )
    assert not any(p.requires_grad for p in d.teacher.parameters())
    d.train()
    assert d.student.training and not d.teacher.training
    d.double()  # .to() / .cuda() / dtype casts move the teacher too
    assert next(d.teacher.parameters()).dtype == torch.float64
    assert DeFeatDistiller(tiny_faster_rcnn(), tiny_faster_rcnn(), DistillConfig(feature_mode="none")).adapters is None


@pytest.mark.parametrize("feature_mode", ["none", "object", "background", "all", "decoupled", "fgfi"])
def test_each_feature_mode_returns_exactly_its_terms(feature_mode):
    losses = make(feature_mode, "none")(*batch())
    assert set(losses) == DETECTION_KEYS | set(feature_loss_keys(feature_mode))
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())


@pytest.mark.parametrize("proposal_mode", ["positive", "negative", "all", "decoupled"])
def test_each_proposal_mode_returns_exactly_its_terms(proposal_mode):
    losses = make("none", proposal_mode)(*batch())
    assert set(losses) == DETECTION_KEYS | set(proposal_loss_keys(proposal_mode))


def test_gradients_reach_student_and_adapters_never_teacher():
    d = make("decoupled", "decoupled")
    before = copy.deepcopy(d.teacher.state_dict())
    optimizer = torch.optim.SGD(d.parameters(), lr=0.1, momentum=0.9)
    losses = d(*batch())
    kd = losses["loss_feat_obj"] + losses["loss_feat_bg"] + losses["loss_kd_pos"] + losses["loss_kd_neg"]
    kd.backward(retain_graph=True)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in d.adapters.parameters())
    assert d.student.backbone.body.layer1[0].weight.grad.abs().sum() > 0
    assert d.student.roi_heads.box_predictor.cls_score.weight.grad.abs().sum() > 0  # from the KL
    assert all(p.grad is None for p in d.teacher.parameters())
    optimizer.zero_grad()
    sum(losses.values()).backward()
    optimizer.step()
    after = d.teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_kd_terms_vanish_when_adapted_student_equals_teacher():
    teacher = tiny_faster_rcnn(seed=3)
    d = DeFeatDistiller(
        copy.deepcopy(teacher), teacher, DistillConfig(feature_mode="decoupled", proposal_mode="decoupled")
    ).train()
    with torch.no_grad():
        for conv in d.adapters.convs.values():  # identity 3x3 convs
            conv.weight.zero_()
            conv.bias.zero_()
            conv.weight[:, :, 1, 1] = torch.eye(conv.weight.shape[0])
    losses = d(*batch())
    for key in ("loss_feat_obj", "loss_feat_bg", "loss_kd_pos", "loss_kd_neg"):
        assert abs(losses[key].item()) < 1e-6, key


def test_proposal_split_uses_the_labels_of_the_proposals_fed_to_both_heads():
    d = make("none", "decoupled", beta_obj=2.0, beta_bg=3.0, temperature_obj=2.0, temperature_bg=0.5)
    seen = {}
    sample = d.student.roi_heads.select_training_samples

    def recording_sample(proposals, targets):
        out = sample(proposals, targets)
        seen["proposals"], seen["labels"] = out[0], torch.cat(out[2])
        return out

    d.student.roi_heads.select_training_samples = recording_sample
    d.student.roi_heads.box_predictor.register_forward_hook(lambda m, i, o: seen.__setitem__("student", o[0]))
    d.teacher.roi_heads.box_predictor.register_forward_hook(lambda m, i, o: seen.__setitem__("teacher", o[0]))
    d.teacher.roi_heads.box_roi_pool.register_forward_hook(lambda m, i, o: seen.__setitem__("teacher_rois", i[1]))
    losses = d(*batch())
    assert all(a is b for a, b in zip(seen["teacher_rois"], seen["proposals"]))
    labels = seen["labels"]
    assert (labels > 0).any() and (labels == 0).any() and len(labels) == len(seen["teacher"])
    pos, neg = labels > 0, labels == 0
    expected_pos = 2.0 * softmax_kl(seen["student"][pos], seen["teacher"][pos], 2.0).mean()
    expected_neg = 3.0 * softmax_kl(seen["student"][neg], seen["teacher"][neg], 0.5).mean()
    assert torch.allclose(losses["loss_kd_pos"], expected_pos) and torch.allclose(losses["loss_kd_neg"], expected_neg)


def test_all_background_batch_and_no_negative_proposals_give_zero_terms_not_nan():
    d = make("decoupled", "decoupled")
    images, targets = batch()
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)} for _ in images]
    losses = d(images, empty)
    assert losses["loss_feat_obj"].item() == 0 and losses["loss_kd_pos"].item() == 0
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    # a sampler that yields only positives: the negative term is 0
    sample = d.student.roi_heads.select_training_samples

    def only_positives(proposals, targets):
        props, matched, labels, regression = sample(proposals, targets)
        return props, matched, [torch.ones_like(x) for x in labels], regression

    d.student.roi_heads.select_training_samples = only_positives
    losses = d(*batch())
    assert losses["loss_kd_neg"].item() == 0 and losses["loss_kd_pos"].item() > 0


def test_schedule_and_stop_step():
    assert kd_scale_at(0, 10) == kd_scale_at(9, 10) == 1.0
    assert kd_scale_at(5, 10, "linear") == pytest.approx(0.5)
    assert kd_scale_at(5, 10, "cosine") == pytest.approx(0.5)
    assert kd_scale_at(2, 10, "linear", stop_step=4) == pytest.approx(0.5)
    assert kd_scale_at(4, 10, "constant", stop_step=4) == 0.0
    d = make("decoupled", "decoupled", stop_step=3)
    calls = []
    d.teacher.backbone.register_forward_hook(lambda *a: calls.append(1))
    d.before_step(2)
    scaled = d(*batch())
    assert d.kd_scale == 1.0 and len(calls) == 1
    d.before_step(3)
    stopped = d(*batch())
    assert d.kd_scale == 0.0 and len(calls) == 1  # the teacher is not even run
    assert set(stopped) == set(scaled) and all(stopped[k].item() == 0 for k in stopped if "_kd_" in k or "_feat_" in k)
    sum(stopped.values()).backward()
    assert all(p.grad is not None for p in d.adapters.parameters())  # still in the graph (DDP needs that)


def test_channel_counts_may_differ():
    d = DeFeatDistiller(tiny_faster_rcnn(channels=16), tiny_faster_rcnn(channels=32, seed=4)).train()
    assert d.adapters.convs["P2"].weight.shape == (32, 16, 3, 3)
    losses = d(*batch())
    assert {"loss_feat_obj", "loss_feat_bg"} <= set(losses)


def test_eval_mode_returns_student_detections():
    d = make().eval()
    with torch.no_grad():
        out = d([torch.rand(3, 64, 64)])
    assert set(out[0]) == {"boxes", "labels", "scores"}


def test_bad_input_is_rejected():
    student = tiny_faster_rcnn()
    with pytest.raises(ValueError, match="classes"):
        DeFeatDistiller(student, tiny_faster_rcnn(num_classes=4))
    other_levels = tiny_faster_rcnn()
    other_levels.roi_heads.box_roi_pool.featmap_names = ["9"]
    with pytest.raises(ValueError, match=r"teacher: its RoI head pools FPN levels \['9'\], none of which"):
        DeFeatDistiller(student, other_levels)
    retina = RetinaNet(tiny_faster_rcnn().backbone, num_classes=4)
    with pytest.warns(UserWarning, match="mixed pair.*head KD is off"):  # one skeleton: a mixed pair, features only
        assert not DeFeatDistiller(student, retina).head_kd
    with pytest.raises(ValueError, match="expected a torchvision FasterRCNN, RetinaNet or FCOS, got Linear"):
        DeFeatDistiller(student, torch.nn.Linear(2, 2))
    for bad, match in (
        (dict(feature_mode="objects"), "feature_mode"),
        (dict(proposal_mode="pos"), "proposal_mode"),
        (dict(alpha_bg=-1.0), "alpha_bg"),
        (dict(temperature_bg=0.0), "temperature_bg"),
        (dict(beta_obj=-2.0), "beta_obj"),
        (dict(feature_norm="x"), "feature_norm"),
    ):
        with pytest.raises(ValueError, match=match):
            DeFeatDistiller(student, tiny_faster_rcnn(), DistillConfig(**bad))
