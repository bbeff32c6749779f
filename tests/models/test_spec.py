"""The model spec says what the builders build: levels and strides, anchors, widths, for every family and builder."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator

from defeat.config import ModelConfig
from defeat.models import anchor_generator_of, build_detector, family_of, model_spec, strides_of
from defeat.models.spec import OFFICIAL, TORCHVISION_ANCHOR_BASE, model_names

#: one architecture per backbone kind and builder, every family (R152 and R101 build like R50: same code path)
NAMES = [f"{f}_{b}_fpn" for f in ("faster_rcnn", "retinanet", "fcos") for b in ("tiny", "r18", "r50")] + list(OFFICIAL)


def expected_generator(spec, cfg: ModelConfig) -> AnchorGenerator:
    """The anchors the spec promises for ``cfg`` (torchvision's builders keep their own at the defaults)."""
    if spec.builder == "torchvision" and cfg.anchor_sizes in (ModelConfig().anchor_sizes, spec.default_anchor_sizes):
        base = spec.default_anchor_sizes if spec.shared_anchor_sizes else TORCHVISION_ANCHOR_BASE[spec.family]
        sizes = spec.anchor_sizes(base)
    else:
        sizes = spec.anchor_sizes(cfg.anchor_sizes)
    return AnchorGenerator(sizes, (spec.anchor_ratios(cfg.anchor_ratios),) * len(sizes))


def other_anchors(spec) -> list:
    """Non-default anchors of the same layout: base sizes, or the shared list of sizes on every level."""
    if spec.shared_anchor_sizes:
        return [[16, 24, 48, 96, 192] for _ in spec.levels]
    return [12, 24, 48, 96, 192]


@pytest.mark.parametrize("name", NAMES)
def test_spec_matches_the_built_detector(name):
    spec = model_spec(name)
    for sizes in (ModelConfig().anchor_sizes, other_anchors(spec)):
        cfg = ModelConfig(name=name, min_size=64, max_size=64, anchor_sizes=sizes)
        model = build_detector(cfg, num_classes=3)
        assert family_of(model) == spec.family
        assert strides_of(model) == spec.levels  # measured on the built backbone
        assert model.backbone.out_channels == spec.fpn_channels
        built, promised = anchor_generator_of(model), expected_generator(spec, cfg)
        assert built.sizes == promised.sizes and built.aspect_ratios == promised.aspect_ratios
        assert len(built.cell_anchors) == len(promised.cell_anchors)
        for ours, theirs in zip(built.cell_anchors, promised.cell_anchors):
            torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_anchor_sizes_take_a_base_size_or_a_list_per_level():
    retina = model_spec("retinanet_r18_fpn")
    assert retina.anchor_sizes([32, [8, 16, 24], 128, 256, 512])[:2] == ((32, 40, 50), (8, 16, 24))
    with pytest.raises(ValueError, match="same number of sizes"):
        retina.anchor_sizes([32, [8, 16], 128, 256, 512])
    with pytest.raises(ValueError, match="needs 5 entries"):
        retina.anchor_sizes([32, 64])
    with pytest.raises(ValueError, match="built for 5 sizes per level"):
        build_detector(ModelConfig(name="fasterrcnn_mobilenet_v3_large_fpn", anchor_sizes=[32, 64, 128]), 3)


def test_torchvision_spelling_is_an_alias():
    """``fasterrcnn_resnet18_fpn`` is ``faster_rcnn_r18_fpn``: the same spec and the same modules and weights."""
    for family, prefix in (("faster_rcnn", "fasterrcnn"), ("retinanet", "retinanet"), ("fcos", "fcos")):
        alias, canonical = model_spec(f"{prefix}_resnet34_fpn"), model_spec(f"{family}_r34_fpn")
        assert (alias.canonical, alias.family, alias.levels, alias.backbone) == (
            canonical.name,
            canonical.family,
            canonical.levels,
            canonical.backbone,
        )
    torch.manual_seed(0)
    a = build_detector(ModelConfig(name="retinanet_resnet18_fpn"), 3).state_dict()
    torch.manual_seed(0)
    b = build_detector(ModelConfig(name="retinanet_r18_fpn"), 3).state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_norm_auto_follows_the_weights():
    spec = model_spec("faster_rcnn_r18_fpn")
    assert spec.resolved_norm("auto", pretrained=False) == "gn"
    assert spec.resolved_norm("auto", pretrained=True) == "frozen_bn"
    assert spec.resolved_norm("bn", pretrained=True) == "bn"


def test_toy_detectors_are_tiny_and_small_is_the_wider_one():
    for family in ("faster_rcnn", "retinanet", "fcos"):
        tiny = build_detector(ModelConfig(name=f"{family}_tiny_fpn"), 3)
        small = build_detector(ModelConfig(name=f"{family}_small_fpn"), 3)
        n_tiny, n_small = (sum(p.numel() for p in m.parameters()) for m in (tiny, small))
        assert n_tiny < 1_000_000 and 3 * n_tiny < n_small < 5 * n_tiny < 5_000_000, (family, n_tiny, n_small)
        # the same levels and strides (a teacher / student pair by stride), twice the FPN channels
        spec_tiny, spec_small = model_spec(f"{family}_tiny_fpn"), model_spec(f"{family}_small_fpn")
        assert spec_small.levels == spec_tiny.levels and spec_small.fpn_channels == 2 * spec_tiny.fpn_channels == 128
        assert [c.out_channels for c in small.backbone.body.modules() if isinstance(c, torch.nn.Conv2d)] == [
            32,
            64,
            64,
            128,
        ]


def test_every_listed_name_resolves_and_unknown_ones_name_the_choices():
    for name in model_names():
        assert model_spec(name).canonical == name
    with pytest.raises(ValueError, match=r"unknown detector 'faster_rcnn_r51_fpn'.*faster_rcnn_tiny_fpn"):
        model_spec("faster_rcnn_r51_fpn")
