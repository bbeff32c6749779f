"""FGD and MGD (feature modes ``fgd`` / ``mgd``): hand-computed examples, agreement with ports of the authors'
code (tests/distill/reference_learned.py), and the modes through the distiller on tiny detectors."""

import dataclasses

import pytest
import torch

from defeat.config import Config, ConfigError, DistillConfig, DistillSettings, ModelConfig, config_to_dict
from defeat.distill import DeFeatDistiller, build_distiller, feature_loss_keys, is_kd_loss
from defeat.distill.calibrate import measure_terms
from defeat.distill.learned_methods import (
    ContextBlock,
    FGDLevel,
    LearnedFeatureKD,
    MGDLevel,
    fgd_attention,
    fgd_attention_loss,
    fgd_focal_loss,
    fgd_global_loss,
    fgd_masks,
    mgd_loss,
    mgd_mask,
)
from defeat.distill.losses import KD_LOSS_KEYS
from defeat.models.families import LEARNED_KD_DEFAULTS

from .conftest import batch, tiny_faster_rcnn
from .reference_learned import fgd_reference, mgd_reference
from .test_one_stage import tiny_one_stage

FGD_KEYS = {"loss_feat_fgd_fg", "loss_feat_fgd_bg", "loss_feat_fgd_mask", "loss_feat_fgd_global"}
DETECTION_KEYS = {
    "faster_rcnn": {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"},
    "retinanet": {"classification", "bbox_regression"},
}


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).abs() / b.abs().clamp_min(1e-30)).detach())


# ------------------------------------------------------------------------------------------ hand-computed
def test_fgd_masks_by_hand():
    # 4x4 map of a 16x16 image (stride 4). Box (4, 4, 8, 12): x cells floor(1)..ceil(2) = 1..2, y cells 1..3:
    # 6 cells of weight 1/6. Box (0, 0, 4, 4): cells 0..1 x 0..1, weight 1/4; the cell (1, 1) they share keeps 1/4.
    boxes = [torch.tensor([[4.0, 4.0, 8.0, 12.0], [0.0, 0.0, 4.0, 4.0]]), torch.zeros(0, 4)]
    fg, bg = fgd_masks(boxes, (4, 4), (16, 16))
    expected = torch.zeros(4, 4)
    expected[1:4, 1:3] = 1 / 6
    expected[0:2, 0:2] = 1 / 4
    assert torch.allclose(fg[0], expected)
    free = expected == 0  # 16 - 9 covered cells = 7 free cells, 1/7 each
    assert torch.allclose(bg[0], free.float() / 7)
    assert torch.equal(fg[1], torch.zeros(4, 4)) and torch.allclose(bg[1], torch.full((4, 4), 1 / 16))


def test_fgd_terms_by_hand():
    # |teacher| constant: uniform attention (all ones); student 0: its attention is uniform too.
    n, c, h, w = 1, 2, 4, 4
    teacher, student = torch.ones(n, c, h, w), torch.zeros(n, c, h, w)
    spatial_t, channel_t = fgd_attention(teacher, 0.5)
    spatial_s, channel_s = fgd_attention(student, 0.5)
    assert torch.allclose(spatial_t, torch.ones(n, h, w)) and torch.allclose(channel_t, torch.ones(n, c))
    fg, bg = fgd_masks([torch.tensor([[4.0, 4.0, 8.0, 12.0]])], (h, w), (16, 16))
    loss_fg, loss_bg = fgd_focal_loss(student, teacher, fg, bg, spatial_t, channel_t)
    # every (s - t)^2 = 1: L_fg = C * sum(M_fg) = 2 * 6 * (1/6) = 2; L_bg = C * sum(M_bg) = 2 * 1
    assert loss_fg.item() == pytest.approx(2.0) and loss_bg.item() == pytest.approx(2.0)
    assert fgd_attention_loss(spatial_s, channel_s, spatial_t, channel_t).item() == pytest.approx(0.0, abs=1e-6)
    # attention loss: |[1.5, 0.5] - [1, 1]| sums to 1 over channels; spatial [3, 1, 1, 1] vs ones: 2; N = 1
    loss = fgd_attention_loss(
        torch.tensor([[[3.0, 1.0], [1.0, 1.0]]]), torch.tensor([[1.5, 0.5]]), torch.ones(1, 2, 2), torch.ones(1, 2)
    )
    assert loss.item() == pytest.approx(3.0)
    # the fresh context blocks are the identity (last conv zero): the global loss is plain sum (s - t)^2 / N
    block = ContextBlock(c)
    assert fgd_global_loss(block(student), block(teacher)).item() == pytest.approx(c * h * w)


def test_fgd_attention_by_hand():
    # mean_c |F| = 3 at one cell, 1 elsewhere; each channel's mean |F| = (3 + 1 + 1 + 1) / 4 = 1.5; T = 1
    f = torch.ones(1, 2, 2, 2)
    f[0, :, 0, 0] = 3.0
    spatial, channel = fgd_attention(f, 1.0)
    e = torch.exp(torch.tensor([3.0, 1.0, 1.0, 1.0]))
    assert torch.allclose(spatial.flatten(), 4 * e / e.sum())
    means = torch.tensor([1.5, 1.5])  # each channel: (3 + 1 + 1 + 1) / 4
    assert torch.allclose(channel[0], 2 * torch.softmax(means, 0))


def test_mgd_by_hand():
    g = torch.Generator().manual_seed(0)
    assert torch.equal(mgd_mask((2, 3, 3), 0.0, g), torch.ones(2, 1, 3, 3))  # nothing masked
    big = mgd_mask((4, 64, 64), 0.65, g)
    assert set(big.unique().tolist()) <= {0.0, 1.0} and abs(1 - big.mean().item() - 0.65) < 0.02
    first = mgd_mask((4, 8, 8), 0.65, torch.Generator().manual_seed(5))
    assert torch.equal(first, mgd_mask((4, 8, 8), 0.65, torch.Generator().manual_seed(5)))  # reproducible
    # generated 0, teacher 1: sum (0 - 1)^2 / N = C H W
    assert mgd_loss(torch.zeros(2, 3, 4, 5), torch.ones(2, 3, 4, 5)).item() == pytest.approx(60.0)
    # a zero generator makes the loss independent of the student: sum t^2 / N
    level = MGDLevel(3, 3)
    for p in level.parameters():
        torch.nn.init.zeros_(p)
    t = torch.randn(2, 3, 4, 5, generator=g)
    mask = mgd_mask((2, 4, 5), 0.5, g)
    assert level(torch.randn(2, 3, 4, 5, generator=g), t, mask).item() == pytest.approx(t.pow(2).sum().item() / 2)


# ------------------------------------------------------------------------------------------ fidelity
def fgd_inputs(seed: int, student_channels: int = 6, channels: int = 8, size=(10, 12), stride: int = 8):
    g = torch.Generator().manual_seed(seed)
    n = 2
    student = torch.randn(n, student_channels, *size, generator=g)
    teacher = torch.randn(n, channels, *size, generator=g)
    image = (size[0] * stride, size[1] * stride)
    boxes = []
    for count in (3, 1):
        xy = torch.rand(count, 2, generator=g) * torch.tensor([image[1] * 0.7, image[0] * 0.7])
        wh = 4 + torch.rand(count, 2, generator=g) * torch.tensor([image[1] * 0.3, image[0] * 0.3])
        boxes.append(torch.cat([xy, xy + wh], dim=1))
    return student, teacher, boxes, image


def randomise_(module: torch.nn.Module, seed: int) -> None:
    """Non-trivial weights everywhere (the zero-initialised last convs too), so every path is exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2 + (1.0 if p.ndim == 1 and p.numel() > 1 else 0.0))


def compare_fgd(seed: int = 0, student_channels: int = 6) -> dict:
    """Our FGD level vs the port of the authors' FeatureLoss on the same inputs and weights; max rel. diff."""
    student, teacher, boxes, image = fgd_inputs(seed, student_channels)
    level = FGDLevel(student_channels, teacher.shape[1])
    randomise_(level, seed + 1)
    weights = {"temp": 0.5, "alpha_fgd": 1e-3, "beta_fgd": 5e-4, "gamma_fgd": 5e-4, "lambda_fgd": 5e-6}
    fg, bg = fgd_masks(boxes, tuple(teacher.shape[-2:]), image)
    ours = level(student, teacher, fg, bg, weights["temp"])
    ours = {
        "fg": weights["alpha_fgd"] * ours["fg"],
        "bg": weights["beta_fgd"] * ours["bg"],
        "mask": weights["gamma_fgd"] * ours["mask"],
        "global": weights["lambda_fgd"] * ours["global"],
    }
    ours["loss"] = sum(ours.values())
    ref = fgd_reference(
        student,
        teacher,
        boxes,
        [image, image],
        level.align if isinstance(level.align, torch.nn.Conv2d) else None,
        level.context_s.conv_mask,
        level.context_t.conv_mask,
        level.context_s.channel_add,
        level.context_t.channel_add,
        **weights,
    )
    diffs = {k: rel_diff(ours[k], ref[k]) for k in ref}
    loss, reference = float(ours["loss"].detach()), float(ref["loss"].detach())
    return {"max_rel_diff": max(diffs.values()), "parts": diffs, "loss": reference, "ours": loss}


def compare_mgd(seed: int = 0, student_channels: int = 6, ratio: float = 0.65) -> dict:
    """Our MGD level vs the port of the authors' FeatureLoss, the same generator weights and uniform draw."""
    student, teacher, _, _ = fgd_inputs(seed, student_channels)
    level = MGDLevel(student_channels, teacher.shape[1])
    randomise_(level, seed + 1)
    n, _, h, w = teacher.shape
    uniform = torch.rand((n, 1, h, w), generator=torch.Generator().manual_seed(seed + 2))
    mask = mgd_mask((n, h, w), ratio, torch.Generator().manual_seed(seed + 2))
    ours = 2e-5 * level(student, teacher, mask)
    align = level.align if isinstance(level.align, torch.nn.Conv2d) else None
    ref = mgd_reference(student, teacher, uniform, align, level.generation, 2e-5, ratio)
    return {"max_rel_diff": rel_diff(ours, ref), "loss": float(ref.detach()), "ours": float(ours.detach())}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("student_channels", [6, 8])  # with and without align
def test_fgd_matches_the_authors_code(seed, student_channels):
    result = compare_fgd(seed, student_channels)
    assert result["max_rel_diff"] < 1e-5, result


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("student_channels", [6, 8])
def test_mgd_matches_the_authors_code(seed, student_channels):
    result = compare_mgd(seed, student_channels)
    assert result["max_rel_diff"] < 1e-5, result


def test_fgd_masks_match_the_authors_loop_on_random_boxes():
    from .reference_learned import _masks

    for seed in range(5):
        _, teacher, boxes, image = fgd_inputs(seed, size=(7, 9), stride=16)
        fg, bg = fgd_masks(boxes, (7, 9), image)
        ref_fg, ref_bg = _masks(boxes, [image, image], torch.zeros(2, 7, 9))
        assert torch.allclose(fg, ref_fg) and torch.allclose(bg, ref_bg)


# ------------------------------------------------------------------------------------------ settings
def test_settings_defaults_and_validation():
    s = DistillSettings(feature_mode="fgd")
    assert s.fgd_alpha is None and s.mgd_lambda is None  # resolved by the distiller from the student's family
    for bad in ({"fgd_alpha": -1.0}, {"fgd_temp": 0.0}, {"mgd_lambda": 1.5}, {"mgd_alpha": -1e-3}):
        with pytest.raises(ConfigError):
            DistillSettings(**bad)
    assert set(LEARNED_KD_DEFAULTS) == {"faster_rcnn", "retinanet", "fcos", "yolo"}
    assert LEARNED_KD_DEFAULTS["yolo"] == LEARNED_KD_DEFAULTS["retinanet"]  # no YOLO config: the one-stage values
    fields = {f.name for f in dataclasses.fields(DistillSettings) if f.name.startswith(("fgd_", "mgd_"))}
    assert all(set(table) == fields - {"mgd_seed"} for table in LEARNED_KD_DEFAULTS.values())
    assert FGD_KEYS | {"loss_feat_mgd"} <= KD_LOSS_KEYS and all(is_kd_loss(k) for k in FGD_KEYS)


# ------------------------------------------------------------------------------------------ the distiller
def make(family: str, mode: str, teacher_channels: int | None = None, **kw) -> DeFeatDistiller:
    settings = DistillConfig(feature_mode=mode, proposal_mode="none", mgd_seed=3, **kw)
    if family == "faster_rcnn":
        student = tiny_faster_rcnn(seed=1)
        teacher = tiny_faster_rcnn(seed=2, channels=teacher_channels or 16)
    else:
        student = tiny_one_stage(family, 1)
        teacher = tiny_one_stage(family, 2, channels=teacher_channels or 32)
    return build_distiller(student, teacher, settings, max_steps=10).train()


@pytest.mark.parametrize("family", ["faster_rcnn", "retinanet"])
@pytest.mark.parametrize("mode", ["fgd", "mgd"])
def test_one_step_keys_and_gradients(family, mode):
    d = make(family, mode)
    assert d.adapters is None and d.feature_kd is not None
    assert {k.split(".")[0] for k in d.state_dict()} == {"student", "feature_kd"}
    params = {id(p) for p in d.parameters()}
    assert all(id(p) in params for p in d.feature_kd.parameters())  # the optimizer sees them
    assert not any(id(p) in params for p in d.teacher.parameters())
    defaults = LEARNED_KD_DEFAULTS[family]  # the family's defaults, resolved
    assert all(getattr(d.settings, k) == v for k, v in defaults.items())
    losses = d(*batch())
    kd = set(feature_loss_keys(mode))
    assert set(losses) == DETECTION_KEYS[family] | kd
    assert kd == (FGD_KEYS if mode == "fgd" else {"loss_feat_mgd"})
    assert all(torch.isfinite(v) and v > 0 for k, v in losses.items() if k in kd)
    d.zero_grad()
    sum(losses[k] for k in kd).backward()
    assert all(p.grad is not None for p in d.feature_kd.parameters())
    assert any(p.grad.abs().sum() > 0 for p in d.feature_kd.parameters())
    assert d.student.backbone.fpn.layer_blocks[0][0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in d.teacher.parameters())
    if mode == "fgd":  # the teacher-side context block learns from the global term
        assert any(p.grad.abs().sum() > 0 for p in next(iter(d.feature_kd.levels.values())).context_t.parameters())


@pytest.mark.parametrize("mode", ["fgd", "mgd"])
def test_with_the_head_term_and_on_a_mixed_pair(mode):
    settings = DistillConfig(feature_mode=mode)  # proposal_mode: decoupled
    d = build_distiller(tiny_faster_rcnn(seed=1), tiny_faster_rcnn(seed=2), settings).train()
    keys = set(d(*batch()))
    assert keys == DETECTION_KEYS["faster_rcnn"] | set(feature_loss_keys(mode)) | {"loss_kd_pos", "loss_kd_neg"}
    with pytest.warns(UserWarning, match="mixed pair"):  # FCOS student, RetinaNet teacher: common levels, no head KD
        mixed = build_distiller(tiny_one_stage("fcos", 1), tiny_one_stage("retinanet", 2), settings).train()
    assert mixed.settings.fgd_temp == 0.8  # the student's (FCOS) defaults
    losses = mixed(*batch())
    assert set(losses) == {"classification", "bbox_regression", "bbox_ctrness"} | set(feature_loss_keys(mode))


@pytest.mark.parametrize("mode", ["fgd", "mgd"])
def test_align_when_channels_differ(mode):
    d = make("faster_rcnn", mode, teacher_channels=24)
    level = next(iter(d.feature_kd.levels.values()))
    assert isinstance(level.align, torch.nn.Conv2d) and level.align.weight.shape[:2] == (24, 16)
    losses = d(*batch())
    sum(losses[k] for k in feature_loss_keys(mode)).backward()
    assert level.align.weight.grad.abs().sum() > 0


def test_fgd_through_the_distiller_is_the_sum_of_the_authors_losses_per_level():
    d = make("retinanet", "fgd")
    images, targets = batch(with_empty=False)
    with torch.no_grad():
        ims, tg = d.student.transform(images, targets)
        s_feats, t_feats = d.student.backbone(ims.tensors), d.teacher.backbone(ims.tensors)
        ours = d.feature_loss(ims, tg, s_feats, t_feats)
        size = tuple(ims.tensors.shape[-2:])
        total = 0.0
        for level, s, t in zip(d.feature_kd.levels.values(), s_feats.values(), t_feats.values()):
            ref = fgd_reference(
                s,
                t,
                [x["boxes"] for x in tg],
                [size, size],
                None,
                level.context_s.conv_mask,
                level.context_t.conv_mask,
                level.context_s.channel_add,
                level.context_t.channel_add,
                d.settings.fgd_temp,
                d.settings.fgd_alpha,
                d.settings.fgd_beta,
                d.settings.fgd_gamma,
                d.settings.fgd_lambda,
            )
            total = total + ref["loss"]
    assert rel_diff(sum(ours.values()), total) < 1e-5


def test_mgd_masks_are_reproducible_from_the_seed():
    a, b = make("retinanet", "mgd"), make("retinanet", "mgd")
    b.student.load_state_dict(a.student.state_dict())
    b.feature_kd.load_state_dict(a.feature_kd.state_dict())
    la, lb = a(*batch()), b(*batch())
    assert la["loss_feat_mgd"] == lb["loss_feat_mgd"]
    assert a(*batch())["loss_feat_mgd"] != la["loss_feat_mgd"]  # a new mask every step


def test_schedule_at_zero_keeps_the_keys_and_the_modules_in_the_graph():
    d = make("faster_rcnn", "fgd")
    d.settings = dataclasses.replace(d.settings, stop_step=1)
    d.set_kd_scale(5)
    losses = d(*batch())
    assert all(losses[k] == 0 and losses[k].requires_grad for k in FGD_KEYS)


def test_weights_auto_measures_the_fgd_terms_as_kd():
    d = make("faster_rcnn", "fgd")
    detection, magnitudes, _ = measure_terms(d, [batch()])
    assert set(magnitudes) == FGD_KEYS and detection > 0


def test_checkpoint_round_trip(tmp_path):
    from defeat.engine.checkpoint import load_checkpoint, load_model, save_checkpoint
    from defeat.models import build_detector

    cfg = Config()
    cfg.model = ModelConfig(name="retinanet_tiny_fpn")
    cfg.distill = DistillConfig(feature_mode="fgd", proposal_mode="none")
    torch.manual_seed(0)
    student, teacher = build_detector(cfg.model, 3), build_detector(cfg.model, 3)
    d = build_distiller(student, teacher, cfg.distill).train()
    randomise_(d.feature_kd, 7)
    categories = [{"id": i + 1, "name": f"c{i}"} for i in range(3)]
    path = tmp_path / "distill.pt"
    save_checkpoint(
        {"kind": "distill", "model": d.state_dict(), "categories": categories, "config": config_to_dict(cfg)}, path
    )
    state = load_checkpoint(path, kind="distill")
    fresh = build_distiller(build_detector(cfg.model, 3), build_detector(cfg.model, 3), cfg.distill)
    fresh.load_state_dict(state["model"])  # strict: the trainer's resume
    for (name, a), b in zip(d.feature_kd.state_dict().items(), fresh.feature_kd.state_dict().values()):
        assert torch.equal(a, b), name
    loaded = load_model(path)  # the detector alone: the student loads strictly, no DeFeat adapters
    assert loaded.adapters is None and loaded.feature_mode == "fgd"
    for (name, a), b in zip(d.student.state_dict().items(), loaded.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_learned_feature_kd_rejects_other_modes():
    with pytest.raises(ValueError, match="unknown mode"):
        LearnedFeatureKD("decoupled", ["P3"], 8, 8)


@pytest.mark.parametrize("mode", ["fgd", "mgd"])
def test_few_steps_through_the_training_loop(tiny_coco, tmp_path, mode):
    """The trainer's optimizer updates the method's modules, its checkpoint holds them, and they reload."""
    import json

    from defeat.config import load_config
    from defeat.engine import build_for_dataset, load_checkpoint, load_datasets, train
    from defeat.engine.checkpoint import load_model
    from defeat.engine.distributed import DistInfo
    from defeat.models import build_detector
    from tests.conftest import tiny_overrides

    out = tmp_path / "run"
    overrides = tiny_overrides(tiny_coco, out, name="retinanet_tiny_fpn", steps=2)
    cfg = load_config(
        None,
        overrides
        + ["output.checkpoint_every=0", "data.val_max_images=2", f"distill.feature_mode={mode}", "distill.mgd_seed=1"],
    )
    train_set, val_set = load_datasets(cfg)
    student = build_for_dataset(cfg.model, train_set.categories, cfg.seed)
    torch.manual_seed(5)
    teacher = build_detector(cfg.model, len(train_set.categories))
    distiller = build_distiller(student, teacher, cfg.distill, max_steps=cfg.schedule.max_steps)
    before = {k: v.clone() for k, v in distiller.feature_kd.state_dict().items()}
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
    state = load_checkpoint(result.final_checkpoint, kind="distill")
    assert {k.split(".")[0] for k in state["model"]} == {"student", "feature_kd"}
    saved = {k[len("feature_kd.") :]: v for k, v in state["model"].items() if k.startswith("feature_kd.")}
    assert saved.keys() == before.keys() and any(not torch.equal(saved[k], before[k]) for k in before)  # trained
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert set(feature_loss_keys(mode)) <= set().union(*(r.keys() for r in logged))
    classes = len(train_set.categories)
    fresh = build_distiller(build_detector(cfg.model, classes), build_detector(cfg.model, classes), cfg.distill)
    fresh.load_state_dict(state["model"])
    assert load_model(result.final_checkpoint).adapters is None
