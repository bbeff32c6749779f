"""``defeat reproduce`` prints the report's results table: AP x 100 with the seed std, delta and gap closed."""

from __future__ import annotations

from defeat.cli.reproduce_cmd import format_table


def test_format_table_prints_every_model_with_std_delta_and_gap():
    table = [
        {"model": "teacher", "seeds": 1, "AP": 0.30, "AP_std": None, "dAP": 0.10, "gap_closed": None},
        {"model": "baseline", "seeds": 3, "AP": 0.20, "AP_std": 0.012, "dAP": None, "gap_closed": None},
        {"model": "decoupled", "seeds": 3, "AP": 0.26, "AP_std": 0.004, "dAP": 0.06, "gap_closed": 0.6},
        {"model": "fgfi", "seeds": 1, "AP": None, "AP_std": None, "dAP": None, "gap_closed": None},
    ]
    lines = format_table(table)
    assert len(lines) == 5 and lines[0].split() == ["model", "seeds", "AP", "dAP", "gap", "closed"]
    assert lines[1].split() == ["teacher", "1", "30.0", "+10.0"]
    assert lines[2].split() == ["baseline", "3", "20.0", "±", "1.2"]
    assert lines[3].split() == ["decoupled", "3", "26.0", "±", "0.4", "+6.0", "60", "%"]
    assert lines[4].split() == ["fgfi", "1", "n/a"]
    assert format_table([]) == []
