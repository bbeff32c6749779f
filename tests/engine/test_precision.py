"""The fast path (defeat.engine.precision): hardware checks, placement, closeness to float32, resume/determinism.

Tolerances of the bf16-vs-fp32 comparison on a fixed batch (same weights, same RNG): every loss within 2 %
relative, the full gradient's cosine similarity with the float32 one > 0.97, FPN features within 3 % relative
L2 error (measured: losses <= 0.6 %, cosine >= 0.986, features ~1.4 %; bfloat16 keeps 8 mantissa bits, 0.4 %).
A DeFeat distillation step: detection and feature terms within 3 %, the KL terms within 0.01 absolute.
"""

import copy

import pytest
import torch

from defeat.config import ConfigError, config_from_dict
from defeat.data import CocoDetection, collate
from defeat.engine import DistInfo, load_checkpoint, train
from defeat.engine import precision as P
from defeat.engine import trainer as T
from defeat.engine.evaluator import predict
from defeat.engine.islands import DeadTapSafeConv, Float32Region, FloatOutputs, Island, MatmulRoIAlign, has_dead_taps
from defeat.engine.setup import build_for_dataset
from tests.conftest import tiny_overrides
from tests.distill.conftest import batch, tiny_faster_rcnn

BF16 = P.cpu_bf16_support()[0]
needs_bf16 = pytest.mark.skipif(not BF16, reason="this CPU has no native bfloat16 (AMX-BF16 / AVX-512-BF16)")


@pytest.fixture
def no_bf16_cpu(monkeypatch):
    monkeypatch.setattr(P, "cpu_bf16_support", lambda: (False, "this CPU has neither AMX-BF16 nor AVX-512-BF16"))


# ------------------------------------------------------------------------------------------ hardware checks
def test_auto_falls_back_to_fp32_with_a_one_line_notice(no_bf16_cpu):
    plan = P.resolve_precision("auto", "cpu")
    assert plan.mode == "fp32" and not plan.enabled
    assert "\n" not in plan.notice and "fp32" in plan.notice and "AMX" in plan.notice


@pytest.mark.parametrize(
    "requested, message",
    [
        ("bf16", "precision=bf16: this CPU has neither AMX-BF16 nor AVX-512-BF16"),
        ("fp16", "precision=fp16: float16 autocast is for CUDA GPUs"),
    ],
)
def test_explicit_low_precision_is_refused_in_one_line(no_bf16_cpu, requested, message):
    with pytest.raises(P.PrecisionError, match=message) as err:
        P.resolve_precision(requested, "cpu")
    assert "\n" not in str(err.value) and "auto or fp32" in str(err.value)


def test_old_bf16_switch_is_the_bf16_precision_and_refused_likewise(no_bf16_cpu, tiny_coco, tmp_path):
    cfg = config_from_dict({"bf16": True}, tiny_overrides(tiny_coco, tmp_path / "run", steps=1))
    assert P.config_precision(cfg) == "bf16"
    train_set = CocoDetection(cfg.data.train_images, cfg.data.train_annotations)
    model = build_for_dataset(cfg.model, train_set.categories, 0)
    with pytest.raises(P.PrecisionError, match="precision=bf16: .*use precision=auto or fp32"):
        train(cfg, model, model, train_set, None, DistInfo(), progress=False)
    with pytest.raises(ConfigError, match="bf16: true contradicts precision: fp32"):
        config_from_dict({"bf16": True, "precision": "fp32"})
    with pytest.raises(ConfigError, match="precision: unknown value 'half'"):
        config_from_dict({"precision": "half"})


def test_trainer_prints_the_choice_and_runs_fp32_without_support(no_bf16_cpu, tiny_coco, tmp_path, capsys):
    cfg = config_from_dict({}, tiny_overrides(tiny_coco, tmp_path / "run", steps=1))
    assert cfg.precision == "auto"
    train_set = CocoDetection(cfg.data.train_images, cfg.data.train_annotations)
    model = build_for_dataset(cfg.model, train_set.categories, 0)
    train(cfg, model, model, train_set, None, DistInfo(), progress=False)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("precision:")]
    assert len(lines) == 1 and "fp32 (auto:" in lines[0]
    assert not any(isinstance(m, Island) for m in model.modules())  # fp32 = the stock modules


def _layout(model: torch.nn.Module) -> list:
    """Each module's name, object and class (what the placement may change only while applied)."""
    return [(name, id(m), type(m)) for name, m in model.named_modules()]


def test_applied_places_islands_and_leaving_restores_a_distiller(tiny_coco, tmp_path):
    from defeat.distill import build_distiller

    cfg = config_from_dict({}, tiny_overrides(tiny_coco, tmp_path / "run"))
    student = build_for_dataset(cfg.model, [{"id": 1, "name": "a"}], 0)
    teacher = build_for_dataset(cfg.model, [{"id": 1, "name": "a"}], 1)
    distiller = build_distiller(student, teacher, cfg.distill)
    layout, teacher_layout = _layout(distiller), _layout(teacher)
    keys, params = list(distiller.state_dict()), list(distiller.parameters())
    head = student.rpn.head
    with P.Precision("bf16", "cpu").applied(distiller):
        assert teacher.backbone.body.layer1[0].weight.dtype == torch.bfloat16
        assert isinstance(student.rpn.head, FloatOutputs) and isinstance(student.rpn.head, type(head))
        assert isinstance(student.roi_heads.box_roi_pool, MatmulRoIAlign)
        assert isinstance(student.roi_heads.box_predictor, Float32Region)
        assert isinstance(teacher.backbone.body.layer1[0], DeadTapSafeConv)
        # the state dict, the optimizer's parameters and attribute paths are unchanged while applied
        assert list(distiller.state_dict()) == keys
        assert len(list(distiller.parameters())) == len(params)
        assert all(a is b for a, b in zip(distiller.parameters(), params))
        assert student.rpn.head.conv is head.conv and student.roi_heads.box_predictor.cls_score.weight is not None
        assert not any("forward" in vars(m) for m in [*distiller.modules(), *teacher.modules()])
    assert _layout(distiller) == layout and _layout(teacher) == teacher_layout and student.rpn.head is head
    assert all(p.dtype == torch.float32 for p in teacher.parameters())
    assert not any(isinstance(m, Island) for m in [*distiller.modules(), *teacher.modules()])


def test_applied_nests_and_fp32_places_nothing():
    model = tiny_faster_rcnn()
    plan = P.Precision("bf16", "cpu")
    with plan.applied(model):
        placed = _layout(model)
        with plan.applied(model), plan.applied(model.roi_heads):
            assert _layout(model) == placed
        assert _layout(model) == placed  # the inner one undid nothing
    layout = _layout(model)
    with P.Precision("fp32", "cpu").applied(model):
        assert _layout(model) == layout


def test_deepcopy_of_a_prepared_model_computes_with_the_copys_weights():
    """Islands are modules: a copy of a prepared model runs its own weights (the closure of the old instance
    patches ran the original's), and without autocast it computes what the stock modules do."""
    model = tiny_faster_rcnn(num_classes=3)
    stock = copy.deepcopy(model)
    plan = P.Precision("bf16", "cpu")
    with plan.applied(model):
        clone = copy.deepcopy(model)
    assert isinstance(clone.roi_heads.box_predictor, Float32Region)  # the copy keeps its islands
    with torch.no_grad():
        for m in (clone, stock):  # the same change on the copy and on a copy of the unprepared model
            m.roi_heads.box_predictor.cls_score.weight.mul_(-3.0)
            m.rpn.head.cls_logits.bias.add_(2.0)
    images, targets = batch(with_empty=False)
    for m in (model, clone, stock):
        m.eval()
    with torch.no_grad():
        ours, theirs, original = clone(images), stock(images), model(images)
    for a, b in zip(ours, theirs):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(
        a["scores"].shape != c["scores"].shape or not torch.equal(a["scores"], c["scores"])
        for a, c in zip(ours, original)
    )
    # training: the matmul RoIAlign (where gradients flow) gives torchvision's result
    for m in (model, clone, stock):
        m.train()
    losses = {}
    for name, m in (("clone", clone), ("stock", stock), ("model", model)):
        torch.manual_seed(0)
        losses[name] = {k: float(v.detach()) for k, v in m(images, targets).items()}
    assert losses["clone"] == pytest.approx(losses["stock"], rel=1e-5, abs=1e-6)
    assert losses["clone"]["loss_objectness"] != pytest.approx(losses["model"]["loss_objectness"], rel=1e-3)


def test_evaluator_predict_leaves_no_patch_behind(tiny_coco, tmp_path):
    cfg = config_from_dict({}, tiny_overrides(tiny_coco, tmp_path / "run"))
    val = CocoDetection(tiny_coco["root"] / "val" / "images", tiny_coco["val_ann"])
    model = build_for_dataset(cfg.model, val.categories, 0)
    layout, keys = _layout(model), list(model.state_dict())
    seen = []
    handle = model.roi_heads.register_forward_pre_hook(lambda module, args: seen.append(type(module.box_predictor)))
    results = predict(
        model, val, DistInfo(), batch_size=2, max_images=2, progress=False, precision=P.Precision("bf16", "cpu")
    )
    handle.remove()
    assert results is not None and seen and all(issubclass(t, Float32Region) for t in seen)  # placed while it ran
    assert _layout(model) == layout and list(model.state_dict()) == keys and model.training


def test_allocator_is_left_alone_unless_asked(tiny_coco, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(T, "tune_cpu_allocator", lambda: calls.append(1) or True)
    for precision in ("fp32", "auto"):
        cfg = config_from_dict({"precision": precision}, tiny_overrides(tiny_coco, tmp_path / "run"))
        assert cfg.cpu_allocator == "default"
        T._Stepper.prepare(cfg, tiny_faster_rcnn(), DistInfo(), verbose=False)
    assert calls == []
    cfg = config_from_dict({"cpu_allocator": "heap"}, tiny_overrides(tiny_coco, tmp_path / "run"))
    T._Stepper.prepare(cfg, tiny_faster_rcnn(), DistInfo(), verbose=False)
    assert calls == [1]
    with pytest.raises(ConfigError, match="cpu_allocator"):
        config_from_dict({"cpu_allocator": "jemalloc"})


def test_cuda_choice(monkeypatch):
    monkeypatch.setattr(P, "cuda_bf16_support", lambda device: (False, "GPU (sm_75) has no bfloat16"))
    plan = P.resolve_precision("auto", "cuda")
    assert plan.mode == "fp16" and "grad scaler" in plan.notice
    with pytest.raises(P.PrecisionError, match="precision=bf16: GPU .* use precision=fp16 or auto"):
        P.resolve_precision("bf16", "cuda")
    monkeypatch.setattr(P, "cuda_bf16_support", lambda device: (True, "GPU (sm_90) has bfloat16"))
    assert P.resolve_precision("auto", "cuda").mode == "bf16"


# ------------------------------------------------------------------------------------------ building blocks
def test_dead_taps():
    conv = torch.nn.Conv2d(4, 4, 3, stride=2, padding=1)
    assert has_dead_taps((1, 1), conv) and has_dead_taps((2, 2), conv) and not has_dead_taps((3, 3), conv)
    assert not has_dead_taps((2, 2), torch.nn.Conv2d(4, 4, 3, padding=1))
    assert has_dead_taps((1, 5), torch.nn.Conv2d(4, 4, 3, padding=1))


def test_dead_tap_safe_conv_runs_float32_only_where_a_tap_sees_only_padding():
    conv = DeadTapSafeConv(4, 4, 3, stride=2, padding=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv(torch.randn(1, 4, 1, 1)).dtype == torch.float32
        assert conv(torch.randn(1, 4, 8, 8)).dtype == torch.bfloat16
    x = torch.randn(1, 4, 2, 2)
    assert torch.equal(conv(x), torch.nn.functional.conv2d(x, conv.weight, conv.bias, 2, 1))


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_clip_folded_into_the_fused_step_equals_clip_then_step(name):
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(20, 30)), torch.nn.Parameter(torch.randn(30))]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    make = {
        "sgd": lambda ps, **k: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-4, **k),
        "adamw": lambda ps, **k: torch.optim.AdamW(ps, lr=0.01, **k),
    }[name]
    fused, plain = make(a, fused=True), make(b)
    for scale in (5.0, 0.001, 5.0):  # clipped, not clipped, clipped
        for p, q in zip(a, b):
            p.grad = torch.randn_like(p) * scale
            q.grad = p.grad.clone()
        n1 = P.clipped_step(fused, a, 1.0)
        n2 = torch.nn.utils.clip_grad_norm_(b, 1.0)
        plain.step()
        assert torch.allclose(n1, n2)
        assert all(torch.allclose(p, q, atol=1e-6) and torch.allclose(p.grad, q.grad, atol=1e-7) for p, q in zip(a, b))
        assert not hasattr(fused, "grad_scale")


def test_applied_keeps_the_state_dict(tiny_coco, tmp_path):
    cfg = config_from_dict({}, tiny_overrides(tiny_coco, tmp_path / "run"))
    model = build_for_dataset(cfg.model, [{"id": 1, "name": "a"}], 0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with P.Precision("bf16", "cpu").applied(model):
        during = model.state_dict()
        assert list(during) == list(before) and all(torch.equal(before[k], during[k]) for k in before)
        model.load_state_dict(before)  # a checkpoint loads into the placed model (e.g. on resume)
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(before[k], after[k]) for k in before)


# ------------------------------------------------------------------------------------------ closeness to fp32
@needs_bf16
@pytest.mark.parametrize("name", ["faster_rcnn_r18_fpn", "retinanet_r18_fpn", "fcos_r18_fpn"])
def test_fast_path_stays_close_to_fp32_on_a_fixed_batch(tiny_coco, tmp_path, name):
    cfg = config_from_dict({}, tiny_overrides(tiny_coco, tmp_path / "run", name=name))
    dataset = CocoDetection(cfg.data.train_images, cfg.data.train_annotations)
    images, targets = collate([dataset[i] for i in range(2)])
    ref = build_for_dataset(cfg.model, dataset.categories, 0).train()
    fast = copy.deepcopy(ref)
    plan = P.resolve_precision("bf16", "cpu")
    plan.prepare(fast)  # for the rest of the test
    torch.manual_seed(0)
    ref_losses = ref(images, targets)
    sum(ref_losses.values()).backward()
    torch.manual_seed(0)
    with plan.autocast():
        fast_losses = fast(images, targets)
    sum(fast_losses.values()).backward()
    for key, value in ref_losses.items():
        assert fast_losses[key].dtype == torch.float32, key  # losses and box coding stay float32
        assert abs(float(fast_losses[key].detach()) - float(value.detach())) <= 0.02 * abs(float(value.detach())), key
    g_ref = torch.cat([p.grad.flatten() for p in ref.parameters() if p.grad is not None])
    g_fast = torch.cat([p.grad.flatten() for p in fast.parameters() if p.grad is not None])
    assert torch.isfinite(g_fast).all()
    assert torch.nn.functional.cosine_similarity(g_ref, g_fast, dim=0) > 0.97
    ref.eval()
    fast.eval()
    with torch.no_grad():
        x = ref.transform(images)[0].tensors
        ref_feats = ref.backbone(x)
        with plan.autocast():
            fast_feats = fast.backbone(x)
            detections = fast(images)
    for key, value in ref_feats.items():
        assert (fast_feats[key].float() - value).norm() <= 0.03 * value.norm(), key
    assert all(v.dtype == torch.float32 for d in detections for k, v in d.items() if k != "labels")


@needs_bf16
def test_distillation_step_under_the_fast_path(tiny_coco, tmp_path):
    """The teacher's no-grad pass runs in bf16 (its conv weights kept in bf16), the KD terms stay float32."""
    from defeat.distill import build_distiller

    cfg = config_from_dict({}, tiny_overrides(tiny_coco, tmp_path / "run"))
    dataset = CocoDetection(cfg.data.train_images, cfg.data.train_annotations)
    images, targets = collate([dataset[i] for i in range(2)])
    student = build_for_dataset(cfg.model, dataset.categories, 0)
    teacher = build_for_dataset(cfg.model, dataset.categories, 1)
    ref = build_distiller(copy.deepcopy(student), copy.deepcopy(teacher), cfg.distill).train()
    fast = build_distiller(student, teacher, cfg.distill).train()
    plan = P.resolve_precision("bf16", "cpu")
    plan.prepare(fast)
    assert fast.teacher.backbone.body.layer1[0].weight.dtype == torch.bfloat16
    assert all(v.dtype == torch.float32 for v in fast.state_dict().values() if v.is_floating_point())
    torch.manual_seed(0)
    ref_losses = ref(images, targets)
    torch.manual_seed(0)
    with plan.autocast():
        fast_losses = fast(images, targets)
    sum(fast_losses.values()).backward()
    assert ref_losses.keys() == fast_losses.keys() and any(k.startswith("loss_kd") for k in ref_losses)
    for key, value in ref_losses.items():
        value, got = float(value.detach()), float(fast_losses[key].detach())
        # the KL terms compare two near-equal, freshly initialised class distributions (~0.1): absolute 0.01
        tolerance = 0.01 if key.startswith("loss_kd") else 0.03 * abs(value)  # measured: 0.005 / <= 0.5 %
        assert fast_losses[key].dtype == torch.float32 and abs(got - value) <= tolerance, key


# ------------------------------------------------------------------------------------------ resume, determinism
@needs_bf16
def test_fast_path_is_deterministic_and_resumes_exactly(tiny_coco, tmp_path):
    common = tiny_overrides(tiny_coco, tmp_path / "x", steps=4) + ["precision=bf16", "output.checkpoint_every=2"]

    def run(out, steps=4, resume=False):
        cfg = config_from_dict({}, common + [f"output.dir={out}", f"schedule.max_steps={steps}"])
        train_set = CocoDetection(cfg.data.train_images, cfg.data.train_annotations)
        model = build_for_dataset(cfg.model, train_set.categories, 0)
        train(cfg, model, model, train_set, None, DistInfo(), resume=resume, progress=False)
        return load_checkpoint(out / "model_final.pt")["model"]

    a = run(tmp_path / "a")
    b = run(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)  # same seed, same weights, bit for bit
    # a run stopped after step 2 (its checkpoint), resumed to step 4, ends with the same weights
    partial = tmp_path / "d"
    cfg2 = config_from_dict({}, common + [f"output.dir={partial}", "schedule.max_steps=4"])
    train_set = CocoDetection(cfg2.data.train_images, cfg2.data.train_annotations)
    model = build_for_dataset(cfg2.model, train_set.categories, 0)

    class StopAt2(Exception):
        pass

    def stop(step):
        if step == 2:
            raise StopAt2

    with pytest.raises(StopAt2):
        train(cfg2, model, model, train_set, None, DistInfo(), before_step=stop, progress=False)
    assert load_checkpoint(partial / "checkpoint_last.pt")["step"] == 2
    c = run(partial, resume=True)
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_one_stage_head_outputs_float32_and_copies_compute_with_their_weights():
    from torchvision.models.detection import RetinaNet

    torch.manual_seed(0)
    model = RetinaNet(tiny_faster_rcnn().backbone, num_classes=3, min_size=64, max_size=64).eval()
    layout, keys = _layout(model), list(model.state_dict())
    plan = P.Precision("bf16", "cpu")
    images, _ = batch()
    with plan.applied(model):
        assert isinstance(model.head, FloatOutputs) and list(model.state_dict()) == keys
        clone = copy.deepcopy(model)
        with torch.no_grad(), plan.autocast():
            features = list(model.backbone(model.transform(images)[0].tensors).values())
            outputs = model.head(features)
        assert all(v.dtype == torch.float32 for v in outputs.values())
    assert _layout(model) == layout
    stock = copy.deepcopy(model)
    with torch.no_grad():
        for m in (clone, stock):
            m.head.classification_head.cls_logits.bias.add_(3.0)
        ours, theirs, original = clone(images), stock(images), model(images)
    assert all(torch.equal(a["scores"], b["scores"]) for a, b in zip(ours, theirs))
    assert not all(
        a["scores"].shape == c["scores"].shape and torch.equal(a["scores"], c["scores"]) for a, c in zip(ours, original)
    )
