"""``defeat export``: the checkpoint is ``--checkpoint CKPT`` as in every other command; the old positional
spelling still works (with a deprecation warning); none or both is a one-line error that writes nothing."""

from __future__ import annotations

import json

import pytest
import torch

from defeat.cli.main import build_parser, main


@pytest.mark.parametrize("spelling", ["option", "positional", "option_last"])
def test_export_takes_the_checkpoint_either_way(tiny_teacher, tmp_path, capsys, spelling):
    out = tmp_path / "student.pt"
    args = {
        "option": ["export", "--checkpoint", str(tiny_teacher), "--out", str(out)],
        "positional": ["export", str(tiny_teacher), "--out", str(out)],
        "option_last": ["export", "--out", str(out), "--checkpoint", str(tiny_teacher)],
    }[spelling]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert f"wrote {out} (" in captured.out and out.is_file() and (tmp_path / "student.pt.json").is_file()
    assert json.loads((tmp_path / "student.pt.json").read_text())["num_classes"] > 0
    assert torch.load(out, weights_only=True)
    if spelling == "positional":
        assert captured.err.count("\n") == 1 and "deprecated" in captured.err
        assert f"defeat export --checkpoint {tiny_teacher}" in captured.err
    else:
        assert captured.err == ""


@pytest.mark.parametrize(
    "args, match",
    [
        (["export", "--out", "{out}"], "give the checkpoint to export: --checkpoint CKPT"),
        (["export", "{ckpt}", "--checkpoint", "{ckpt}", "--out", "{out}"], "the checkpoint given twice"),
    ],
)
def test_export_without_or_with_two_checkpoints_is_one_line(tiny_teacher, tmp_path, capsys, args, match):
    out = tmp_path / "student.pt"
    assert main([a.format(out=out, ckpt=tiny_teacher) for a in args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("defeat: error: export: ") and match in err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_every_command_spells_the_checkpoint_the_same_way():
    """A command that takes one checkpoint takes it as ``--checkpoint`` (export's positional is deprecated)."""
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name in ("eval", "export", "predict"):
        options = {o for a in commands[name]._actions for o in a.option_strings}
        assert "--checkpoint" in options, name
    assert "--checkpoint" in commands["export"].format_usage()
