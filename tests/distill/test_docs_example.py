"""The "losses alone, in a plain torchvision loop" block of docs/distill.md runs as written (tiny models)."""

import re
from pathlib import Path

import torch

from .conftest import batch, tiny_faster_rcnn

DOC = Path(__file__).resolve().parents[2] / "docs" / "distill.md"


def test_plain_loop_example_runs_and_trains_the_adapters():
    text = DOC.read_text()
    section = text[text.index("#### The losses alone, in a plain torchvision loop") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    student, teacher = tiny_faster_rcnn(seed=1, channels=16), tiny_faster_rcnn(seed=2, channels=32)
    loader = [batch(with_empty=False)] * 2
    scope = {"student": student, "teacher": teacher, "loader": loader}
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    exec(compile(code, str(DOC), "exec"), scope)
    losses, adapters = scope["losses"], scope["adapters"]
    assert {"loss_objectness", "loss_classifier", "loss_feat_obj", "loss_feat_bg"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    assert adapters.convs["P2"].weight.shape == (32, 16, 3, 3)
    assert adapters.convs["P2"].weight.grad.abs().sum() > 0
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # the teacher never moves
