"""The first-step line: loss shares and the pointer to ``distill.weights: auto`` when a KD term dominates."""

import pytest

from defeat.engine.trainer import format_first_step, loss_shares


def test_loss_shares_and_the_auto_weights_pointer():
    shares = loss_shares({"loss_classifier": 1.0, "loss_box_reg": 1.0, "loss_feat_bg": 8.0})
    assert shares == pytest.approx({"loss_classifier": 0.1, "loss_box_reg": 0.1, "loss_feat_bg": 0.8})
    record = {"step": 1, "seconds": 2.0, "eta_s": 120.0, "total_loss": 10.0, "share": shares}
    line = format_first_step(record)
    assert "ETA at this pace 2.0 min" in line and "loss_feat_bg 80 %" in line
    assert "distill.weights: auto" in line
    record["share"] = loss_shares({"loss_classifier": 1.0, "loss_feat_bg": 0.5})
    assert "weights: auto" not in format_first_step(record)
