"""``model.anchor_ratios``: the anchors' height/width on every level (default 0.5, 1, 2 as before)."""

import pytest

from defeat.config import ConfigError, ModelConfig, config_from_dict
from defeat.models import build_detector
from defeat.models.families import anchor_generator_of


@pytest.mark.parametrize("family, per_location", [("faster_rcnn", 2), ("retinanet", 6), ("fcos", 1)])
def test_ratios_reach_the_anchor_generator(family, per_location):
    cfg = ModelConfig(
        name=f"{family}_r18_fpn", anchor_sizes=[8, 16, 32, 64, 128], anchor_ratios=[0.4, 2.5], min_size=64, max_size=64
    )
    generator = anchor_generator_of(build_detector(cfg, 2))
    assert generator.num_anchors_per_location()[0] == per_location  # RetinaNet: 3 octave scales x 2 ratios
    if family != "fcos":  # anchor-free: one square "anchor" per location whatever the ratios
        assert generator.aspect_ratios[0] == (0.4, 2.5)
    assert ModelConfig().anchor_ratios == [0.5, 1.0, 2.0]


def test_bad_ratios_are_refused():
    with pytest.raises(ConfigError, match="model.anchor_ratios"):
        config_from_dict({"model": {"anchor_ratios": [1.0, -2.0]}})
    with pytest.raises(ConfigError, match="model.anchor_ratios"):
        config_from_dict({"model": {"anchor_ratios": []}})
