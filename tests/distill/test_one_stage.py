"""DeFeatDistiller / build_distiller on tiny RetinaNets and FCOSes (P3-P7 like the zoo's), mixed pairs, end to end."""

import copy
import shutil
import warnings
from collections import OrderedDict

import pytest
import torch
from torch import nn
from torchvision.models.detection import FCOS, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops import box_iou
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from defeat.config import DistillConfig
from defeat.distill import (
    AnchorHead,
    DeFeatDistiller,
    ProposalHead,
    build_distiller,
    feature_loss_keys,
    matched_idxs,
    proposal_loss_keys,
    sigmoid_kl,
)

from .conftest import batch, tiny_faster_rcnn

DETECTION_KEYS = {
    "retinanet": {"classification", "bbox_regression"},
    "fcos": {"classification", "bbox_regression", "bbox_ctrness"},
}
SIZES = (8, 16, 32, 64, 128)


def tiny_one_stage(
    family: str, seed: int = 0, channels: int = 32, num_classes: int = 3, sizes=SIZES, ratios=(0.5, 1.0, 2.0)
) -> nn.Module:
    """A RetinaNet / FCOS with strides 8/16/32 (+ P6, P7 from P5) like the zoo's, but tiny; K + 1 outputs."""
    torch.manual_seed(seed)
    body = nn.Sequential(
        OrderedDict(
            layer1=nn.Sequential(nn.Conv2d(3, 8, 3, stride=8, padding=1), nn.ReLU()),
            layer2=nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU()),
            layer3=nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU()),
        )
    )
    backbone = BackboneWithFPN(
        body,
        {f"layer{i}": str(i - 1) for i in range(1, 4)},
        [8] * 3,
        channels,
        extra_blocks=LastLevelP6P7(channels, channels),
    )
    if family == "retinanet":
        anchors = AnchorGenerator(tuple((s, int(s * 2 ** (1 / 3))) for s in sizes), (ratios,) * len(sizes))
        head = RetinaNetHead(channels, anchors.num_anchors_per_location()[0], num_classes + 1)
        model = RetinaNet(backbone, num_classes + 1, min_size=64, max_size=64, anchor_generator=anchors, head=head)
    else:
        anchors = AnchorGenerator(tuple((s,) for s in sizes), ((1.0,),) * len(sizes))
        model = FCOS(backbone, num_classes + 1, min_size=64, max_size=64, anchor_generator=anchors)
    # Spread the classifier outputs so that teacher and student logits differ clearly.
    torch.nn.init.normal_(model.head.classification_head.cls_logits.weight, std=0.3)
    return model


def make(family="retinanet", feature_mode="decoupled", proposal_mode="decoupled", **kw) -> DeFeatDistiller:
    settings = DistillConfig(feature_mode=feature_mode, proposal_mode=proposal_mode, **kw)
    return build_distiller(tiny_one_stage(family, 1), tiny_one_stage(family, 2), settings, max_steps=10).train()


def test_teacher_is_outside_the_module_tree():
    d = make()
    assert isinstance(d.head, AnchorHead) and d.levels == ["P3", "P4", "P5", "P6", "P7"]
    assert {k.split(".")[0] for k in d.state_dict()} == {"student", "adapters"}
    assert sum(p.numel() for p in d.parameters()) == sum(p.numel() for p in d.student.parameters()) + sum(
        p.numel() for p in d.adapters.parameters()
    )
    assert not any(p.requires_grad for p in d.teacher.parameters())
    assert d.student.training and not d.teacher.training
    d.double()
    assert next(d.teacher.parameters()).dtype == torch.float64


@pytest.mark.parametrize("family", ["retinanet", "fcos"])
def test_detection_losses_are_the_students_own(family):
    """The explicit forward computes exactly torchvision's training losses."""
    d = make(family)
    losses = d(*batch())
    reference = d.student(*batch())
    assert set(reference) == DETECTION_KEYS[family]
    for key, value in reference.items():
        assert torch.allclose(losses[key], value, atol=1e-6), key


@pytest.mark.parametrize("family", ["retinanet", "fcos"])
@pytest.mark.parametrize("feature_mode", ["none", "object", "background", "all", "decoupled", "fgfi"])
def test_each_feature_mode_returns_exactly_its_terms(family, feature_mode):
    losses = make(family, feature_mode, "none")(*batch())
    assert set(losses) == DETECTION_KEYS[family] | set(feature_loss_keys(feature_mode))
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())


@pytest.mark.parametrize("family", ["retinanet", "fcos"])
@pytest.mark.parametrize("proposal_mode", ["positive", "negative", "all", "decoupled"])
def test_each_head_mode_returns_exactly_its_terms(family, proposal_mode):
    losses = make(family, "none", proposal_mode)(*batch())
    assert set(losses) == DETECTION_KEYS[family] | set(proposal_loss_keys(proposal_mode))
    assert all(torch.isfinite(v) for v in losses.values()) and all(
        losses[k].item() > 0 for k in proposal_loss_keys(proposal_mode)
    )


def _record_torchvision_assignment(model):
    """Wrap the head's compute_loss to see the matched indices torchvision's own forward passes it."""
    seen = {}
    original = model.head.compute_loss

    def recording(targets, head_outputs, anchors, matched):
        seen["matched"], seen["anchors"], seen["logits"] = matched, anchors, head_outputs["cls_logits"]
        return original(targets, head_outputs, anchors, matched)

    model.head.compute_loss = recording
    return seen


@pytest.mark.parametrize("family", ["retinanet", "fcos"])
def test_positive_negative_split_is_the_matchers(family):
    d = make(family, "none", "decoupled", beta_obj=2.0, beta_bg=3.0, temperature_obj=2.0, temperature_bg=0.5)
    images, targets = batch(with_empty=True)
    seen = _record_torchvision_assignment(d.student)
    d.student(images, targets)  # torchvision's own forward
    own = seen.pop("matched")
    teacher_logits = {}
    d.teacher.head.classification_head.register_forward_hook(lambda m, i, o: teacher_logits.setdefault("t", o))
    losses = d(images, targets)  # the distiller's forward
    assert all(torch.equal(a, b) for a, b in zip(own, seen["matched"]))
    matched = torch.stack(own)
    assert (matched[1] == -1).all()  # the image without boxes: all negative
    if family == "retinanet":  # IoU >= 0.5 positive (or a box's best anchor), < 0.4 negative, between ignored
        boxes = d.student.transform(images, targets)[1][0]["boxes"]
        best = box_iou(boxes, seen["anchors"][0]).max(dim=0).values
        rest = matched[0] < 0  # all but positives; low-quality matches may be positive below 0.5
        assert ((best >= 0.5) <= (matched[0] >= 0)).all()
        assert torch.equal(matched[0][rest] == -1, best[rest] < 0.4) and (matched[0][rest] >= -2).all()
        assert (matched[0] == -2).any()  # the test covers ignored anchors
    pos, neg = matched >= 0, matched == -1
    assert pos.any() and neg.any()
    s_logits, t_logits = seen["logits"][..., 1:], teacher_logits["t"][..., 1:]
    expected_pos = 2.0 * sigmoid_kl(s_logits[pos], t_logits[pos], 2.0).mean()
    expected_neg = 3.0 * sigmoid_kl(s_logits[neg], t_logits[neg], 0.5).mean()
    assert torch.allclose(losses["loss_kd_pos"], expected_pos) and torch.allclose(losses["loss_kd_neg"], expected_neg)
    # matched_idxs on its own (the helper) gives the same assignment
    image_list, t_targets = d.student.transform(images, targets)
    maps = list(d.student.backbone(image_list.tensors).values())
    anchors = d.student.anchor_generator(image_list, maps)
    again = matched_idxs(d.student, t_targets, anchors, [m.shape[-2] * m.shape[-1] for m in maps])
    assert all(torch.equal(a, b) for a, b in zip(own, again))


def test_sigmoid_kl_is_zero_for_identical_logits_and_positive_otherwise():
    z = torch.randn(50, 4, generator=torch.Generator().manual_seed(0)) * 3
    assert torch.allclose(sigmoid_kl(z, z, 1.0), torch.zeros(50), atol=1e-6)
    other = z + torch.randn(50, 4, generator=torch.Generator().manual_seed(1))
    for temperature in (0.5, 1.0, 4.0):
        assert (sigmoid_kl(other, z, temperature) > 0).all()


@pytest.mark.parametrize("family", ["retinanet", "fcos"])
def test_kd_terms_vanish_when_adapted_student_equals_teacher(family):
    teacher = tiny_one_stage(family, 3)
    d = DeFeatDistiller(copy.deepcopy(teacher), teacher, DistillConfig(proposal_mode="decoupled")).train()
    with torch.no_grad():
        for conv in d.adapters.convs.values():  # identity 3x3 convs
            conv.weight.zero_()
            conv.bias.zero_()
            conv.weight[:, :, 1, 1] = torch.eye(conv.weight.shape[0])
    losses = d(*batch())
    for key in ("loss_feat_obj", "loss_feat_bg", "loss_kd_pos", "loss_kd_neg"):
        assert abs(losses[key].item()) < 1e-6, key


@pytest.mark.parametrize("family", ["retinanet", "fcos"])
def test_gradients_reach_student_and_adapters_never_teacher(family):
    d = make(family)
    before = copy.deepcopy(d.teacher.state_dict())
    optimizer = torch.optim.SGD(d.parameters(), lr=0.1, momentum=0.9)
    losses = d(*batch())
    head_kd = losses["loss_kd_pos"] + losses["loss_kd_neg"]
    head_kd.backward(retain_graph=True)
    assert d.student.head.classification_head.cls_logits.weight.grad.abs().sum() > 0  # from the KL
    assert d.student.backbone.body.layer1[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in d.adapters.parameters())  # the head term does not touch the adapters
    (losses["loss_feat_obj"] + losses["loss_feat_bg"]).backward(retain_graph=True)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in d.adapters.parameters())
    assert all(p.grad is None for p in d.teacher.parameters())
    optimizer.zero_grad()
    sum(losses.values()).backward()
    optimizer.step()
    after = d.teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_images_without_boxes_and_batches_without_positive_anchors():
    for family in ("retinanet", "fcos"):
        d = make(family)
        images, _ = batch()
        empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)} for _ in images]
        losses = d(images, empty)  # no box anywhere: no positive anchor, all background
        assert losses["loss_feat_obj"].item() == 0 and losses["loss_kd_pos"].item() == 0
        assert losses["loss_kd_neg"].item() > 0 and losses["loss_feat_bg"].item() > 0
        assert all(torch.isfinite(v) for v in losses.values())
        sum(losses.values()).backward()
    with pytest.raises(ValueError, match="degenerate box"):
        make()([torch.rand(3, 64, 64)], [{"boxes": torch.tensor([[5.0, 5.0, 5.0, 9.0]]), "labels": torch.tensor([1])}])


def test_anchor_alignment_is_checked():
    student = tiny_one_stage("retinanet", 1)
    for other, why in (
        (tiny_one_stage("retinanet", 2, sizes=(16, 32, 64, 128, 256)), "different anchors"),
        (tiny_one_stage("retinanet", 2, ratios=(1.0,)), "anchors per location"),
    ):
        with pytest.raises(ValueError, match=f"anchors do not align.*{why}"):
            DeFeatDistiller(student, other, DistillConfig(proposal_mode="decoupled"))
        # features only: the anchors do not matter
        assert DeFeatDistiller(student, other, DistillConfig(proposal_mode="none")).head_kd
    with pytest.raises(ValueError, match="anchors do not align"):
        DeFeatDistiller(
            tiny_one_stage("fcos", 1),
            tiny_one_stage("fcos", 2, sizes=(16, 32, 64, 128, 256)),
            DistillConfig(proposal_mode="positive"),
        )
    DeFeatDistiller(student, tiny_one_stage("retinanet", 3), DistillConfig(proposal_mode="decoupled"))


def test_mixed_pairs_distil_common_levels_with_head_kd_off():
    settings = DistillConfig(feature_mode="decoupled", proposal_mode="decoupled")
    with pytest.warns(UserWarning, match=r"common levels P3/P4/P5/P6; head KD is off"):
        d = build_distiller(tiny_one_stage("retinanet", 1), tiny_faster_rcnn(seed=2, channels=16), settings).train()
    assert d.levels == ["P3", "P4", "P5", "P6"] and list(d.adapters.convs) == d.levels
    assert d.adapters.convs["P3"].weight.shape == (16, 32, 3, 3)  # student 32 -> teacher 16 channels
    losses = d(*batch())
    assert set(losses) == DETECTION_KEYS["retinanet"] | {"loss_feat_obj", "loss_feat_bg"}
    with pytest.warns(UserWarning, match="common levels P3/P4/P5/P6"):  # two-stage student, one-stage teacher
        d = build_distiller(
            tiny_faster_rcnn(seed=1), tiny_one_stage("fcos", 2, channels=64), DistillConfig(feature_mode="fgfi")
        ).train()
    assert {"loss_objectness", "loss_classifier", "loss_feat_obj"} <= set(d(*batch()))
    with pytest.warns(UserWarning, match="P3/P4/P5/P6/P7; head KD is off"):
        d = build_distiller(tiny_one_stage("fcos", 1), tiny_one_stage("retinanet", 2), settings).train()
    assert not any(k.startswith("loss_kd") for k in d(*batch()))
    assert isinstance(build_distiller(tiny_faster_rcnn(seed=1), tiny_faster_rcnn(seed=2)).head, ProposalHead)


class FirstMapOnly(nn.Module):
    """A backbone that returns only the finest map of the wrapped one (a P2-only detector)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.inner, self.out_channels = backbone, backbone.out_channels

    def forward(self, images):
        return dict(list(self.inner(images).items())[:1])


def test_pairs_that_cannot_be_distilled_are_refused():
    p2_only = tiny_faster_rcnn()  # a Faster R-CNN whose only level is P2 shares no stride with P3-P7
    p2_only.backbone = FirstMapOnly(p2_only.backbone)
    p2_only.rpn.anchor_generator = AnchorGenerator(((8,),), ((0.5, 1.0, 2.0),))
    with pytest.raises(
        ValueError,
        match=r"teacher t.pt: no FPN stride in common with the student \(teacher P2 "
        r"\(stride 4\); student P3 \(stride 8\), P4",
    ):
        build_distiller(tiny_one_stage("retinanet"), p2_only, where="teacher t.pt")
    with pytest.raises(ValueError, match="classes"):
        build_distiller(tiny_one_stage("fcos"), tiny_one_stage("fcos", num_classes=5))
    with pytest.raises(ValueError, match="RetinaNet or FCOS, got Linear"):
        build_distiller(tiny_one_stage("fcos"), nn.Linear(2, 2))
    with pytest.raises(ValueError, match="RoI head pools FPN levels"):  # two-stage pairs keep their own checks
        other = tiny_faster_rcnn()
        other.roi_heads.box_roi_pool.featmap_names = ["7"]
        build_distiller(tiny_faster_rcnn(), other)
    with pytest.raises(ValueError, match="proposal_mode"):
        build_distiller(tiny_one_stage("fcos"), tiny_one_stage("fcos"), DistillConfig(proposal_mode="pos"))


def test_schedule_stop_step_and_eval_mode():
    d = make("fcos", stop_step=3)
    calls = []
    d.teacher.backbone.register_forward_hook(lambda *a: calls.append(1))
    d.before_step(2)
    scaled = d(*batch())
    d.before_step(3)
    stopped = d(*batch())
    assert d.kd_scale == 0.0 and len(calls) == 1  # the teacher is not even run
    assert set(stopped) == set(scaled) and all(stopped[k].item() == 0 for k in stopped if k.startswith("loss_"))
    sum(stopped.values()).backward()
    assert all(p.grad is not None for p in d.adapters.parameters())  # still in the graph (DDP needs that)
    with torch.no_grad():
        out = d.eval()([torch.rand(3, 64, 64), torch.rand(3, 48, 64)])
    assert set(out[0]) == {"boxes", "labels", "scores"}


# ------------------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
@pytest.mark.parametrize(
    "student_name,teacher_name,proposal_mode",
    [
        ("retinanet_r18_fpn", "retinanet_r18_fpn", "decoupled"),
        ("fcos_r18_fpn", "fcos_r18_fpn", "decoupled"),
        ("retinanet_r18_fpn", "faster_rcnn_r18_fpn", "decoupled"),  # mixed: features on P3-P6 only
    ],
)
def test_few_step_distill_through_the_training_loop(tiny_coco, tmp_path, student_name, teacher_name, proposal_mode):
    import dataclasses
    import json

    from defeat.config import load_config
    from defeat.engine import build_for_dataset, load_checkpoint, load_datasets, train
    from defeat.engine.distributed import DistInfo
    from defeat.models import build_detector
    from tests.conftest import tiny_overrides

    out = tmp_path / "run"
    cfg = load_config(
        None,
        tiny_overrides(tiny_coco, out, name=student_name, steps=2)
        + [
            "output.checkpoint_every=0",
            "data.val_max_images=2",
            "distill.feature_mode=decoupled",
            f"distill.proposal_mode={proposal_mode}",
            "distill.weight_decay_policy=linear",
        ],
    )
    train_set, val_set = load_datasets(cfg)
    student = build_for_dataset(cfg.model, train_set.categories, cfg.seed)
    torch.manual_seed(5)
    teacher = build_detector(dataclasses.replace(cfg.model, name=teacher_name), len(train_set.categories))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the mixed pair's note
        distiller = build_distiller(student, teacher, cfg.distill, max_steps=cfg.schedule.max_steps)
    result = train(
        cfg,
        distiller,
        distiller.student,
        train_set,
        val_set,
        DistInfo(),
        kind="distill",
        before_step=distiller.before_step,
        progress=False,
    )
    assert "AP" in result.metrics
    state = load_checkpoint(result.final_checkpoint, kind="distill")
    assert {k.split(".")[0] for k in state["model"]} == {"student", "adapters"}
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    keys = set().union(*(r.keys() for r in logged))
    head_kd = proposal_mode != "none" and student_name.split("_r")[0] == teacher_name.split("_r")[0]
    assert {"loss_feat_obj", "loss_feat_bg"} <= keys and ({"loss_kd_pos", "loss_kd_neg"} <= keys) == head_kd
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in logged if "loss" in r)


@pytest.mark.parametrize("config", ["configs/distill_retinanet_r50_r18.yaml", "configs/distill_fcos_r50_r18.yaml"])
def test_embedded_configs_build_a_one_stage_distiller(config):
    from pathlib import Path

    from defeat.config import load_config
    from defeat.models import build_detector

    cfg = load_config(Path(__file__).resolve().parents[2] / config)
    student = build_detector(cfg.model, 9)
    teacher = build_detector(cfg.model, 9)  # the R50 teacher has the same anchors and levels; R18 keeps this fast
    d = build_distiller(student, teacher, cfg.distill, max_steps=cfg.schedule.max_steps)
    assert isinstance(d, DeFeatDistiller) and d.head_kd and d.levels == ["P3", "P4", "P5", "P6", "P7"]


@pytest.fixture(scope="module")
def one_stage_teachers(tiny_coco, tmp_path_factory):
    """Zoo RetinaNet / FCOS R18 'teachers' trained for one step on the tiny set (weights, not quality, matter)."""
    from defeat.cli.main import main
    from tests.conftest import tiny_overrides

    paths = {}
    for name in ("retinanet_r18_fpn", "fcos_r18_fpn"):
        out = tmp_path_factory.mktemp(name)
        overrides = tiny_overrides(tiny_coco, out, name=name, steps=1) + ["output.checkpoint_every=0", "seed=5"]
        assert main(["train", *[a for o in overrides for a in ("--set", o)]]) == 0
        paths[name] = out / "model_final.pt"
    yield paths
    for path in paths.values():  # pytest keeps module dirs to the end of the session
        shutil.rmtree(path.parent, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,feature_mode,proposal_mode",
    [
        ("retinanet_r18_fpn", "none", "none"),
        ("retinanet_r18_fpn", "object", "positive"),
        ("retinanet_r18_fpn", "background", "negative"),
        ("retinanet_r18_fpn", "all", "all"),
        ("retinanet_r18_fpn", "fgfi", "decoupled"),
        ("retinanet_r18_fpn", "decoupled", "decoupled"),
        ("fcos_r18_fpn", "decoupled", "decoupled"),
        ("fcos_r18_fpn", "object", "negative"),
    ],
)
def test_defeat_distill_command_runs_one_stage_modes(
    tiny_coco, one_stage_teachers, tmp_path, name, feature_mode, proposal_mode
):
    import json

    from defeat.cli.main import main
    from tests.conftest import tiny_overrides

    out = tmp_path / "run"
    args = tiny_overrides(tiny_coco, out, name=name, steps=1) + [
        "output.checkpoint_every=0",
        "data.val_max_images=2",
        f"distill.teacher_checkpoint={one_stage_teachers[name]}",
        "distill.teacher_check_images=0",
        f"distill.feature_mode={feature_mode}",
        f"distill.proposal_mode={proposal_mode}",
    ]
    assert main(["distill", *[a for o in args for a in ("--set", o)]]) == 0
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    keys = {k for r in logged for k in r if k.startswith(("loss_feat", "loss_kd"))}
    assert keys == set(feature_loss_keys(feature_mode)) | set(proposal_loss_keys(proposal_mode))
    if feature_mode == proposal_mode == "decoupled":  # the student exports as a plain zoo detector
        from defeat.config import ModelConfig
        from defeat.models import build_detector

        exported = tmp_path / "student.pt"
        assert main(["export", "--checkpoint", str(out / "model_final.pt"), "--out", str(exported)]) == 0
        meta = json.loads((tmp_path / "student.pt.json").read_text())
        model = build_detector(ModelConfig(**meta["model"]), meta["num_classes"])
        model.load_state_dict(torch.load(exported, weights_only=True), strict=True)
