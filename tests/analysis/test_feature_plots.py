"""Figures of the feature analyses: Fig. 1 over seeds (mean line, min-max band)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from defeat.analysis.feature_plots import plot_channel_distance_seeds


def test_channel_distance_over_seeds_draws_one_panel_per_student(tmp_path):
    rng = np.random.default_rng(0)
    groups = {
        "baseline": {"object": rng.random((3, 16)), "background": rng.random((3, 16))},
        "decoupled": {"object": rng.random((3, 16)), "background": rng.random((3, 16))},
        "all": {"object": rng.random((1, 16)), "background": rng.random(16)},
    }  # one seed: no band
    path = plot_channel_distance_seeds(groups, "P2", tmp_path / "fig1.png", title="Fig. 1 over seeds")
    with Image.open(path) as image:
        width, height = image.size
    assert path.stat().st_size > 0 and width > 2 * height  # three panels side by side
    assert not list(tmp_path.glob(".*"))  # written atomically, no temporary file left
