"""The first-step line: loss shares, and a note naming the measurement when a KD term dominates."""

import pytest

from defeat.engine.trainer import format_first_step, loss_shares
from tests.conftest import REPO


def test_loss_shares_and_the_note_on_a_dominant_kd_term():
    shares = loss_shares({"loss_classifier": 1.0, "loss_box_reg": 1.0, "loss_feat_bg": 8.0})
    assert shares == pytest.approx({"loss_classifier": 0.1, "loss_box_reg": 0.1, "loss_feat_bg": 0.8})
    record = {"step": 1, "seconds": 2.0, "eta_s": 120.0, "total_loss": 10.0, "share": shares}
    line = format_first_step(record)
    assert "ETA at this pace 2.0 min" in line and "loss_feat_bg 80 %" in line
    # the note does not recommend weights: auto; it names the record that says why
    assert "note: loss_feat_bg" in line and "did worse" in line
    assert "benchmarks/results/alpha_auto.json" in line and (REPO / "benchmarks/results/alpha_auto.json").is_file()
    record["share"] = loss_shares({"loss_classifier": 1.0, "loss_feat_bg": 0.5})
    assert "note:" not in format_first_step(record)
