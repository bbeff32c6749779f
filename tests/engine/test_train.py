"""End-to-end engine tests on the tiny set: train + eval, bad checkpoints, NaN stop, kill-and-resume, DDP."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from defeat.cli.main import main
from defeat.config import config_from_dict
from defeat.data import CocoDetection
from defeat.engine import DistInfo, NonFiniteLossError, load_checkpoint, train
from defeat.engine.setup import build_for_dataset
from tests.conftest import tiny_overrides

#: the fast tier runs the engine on the toy backbone; the slow tier once more on the real R18 (same code path,
#: real sizes: checkpoints of ~230 MB, BatchNorm-free GroupNorm ResNet)
BACKBONES = ["tiny", pytest.param("r18", marks=pytest.mark.slow)]


def _sets(overrides):
    return [a for o in overrides for a in ("--set", o)]


def _run_cli(args, env_extra=None, **kwargs):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "defeat.cli.main", *args], env=env, **kwargs)


def test_train_then_eval_writes_checkpoints_logs_and_metrics(tiny_coco, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *_sets(tiny_overrides(tiny_coco, out, steps=3))]) == 0
    for name in ("model_final.pt", "checkpoint_last.pt", "metrics.jsonl", "config.yaml", "metrics_final.json"):
        assert (out / name).is_file(), name
    state = load_checkpoint(out / "model_final.pt", kind="detector")
    assert [c["id"] for c in state["categories"]] == [3, 7, 9] and state["step"] == 3
    assert main(["eval", "--checkpoint", str(out / "model_final.pt"), *_sets(tiny_overrides(tiny_coco, out))]) == 0
    printed = capsys.readouterr().out
    assert "AP" in printed and "square" in printed
    assert (out / "results.json").is_file() and (out / "metrics.json").is_file()


def test_bad_checkpoints_are_refused_in_one_line(tiny_coco, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *_sets(tiny_overrides(tiny_coco, out, steps=1))]) == 0
    capsys.readouterr()
    good = (out / "model_final.pt").read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good[: len(good) // 2])
    junk = tmp_path / "junk.pt"
    torch.save({"weights": torch.zeros(2)}, junk)
    other = tmp_path / "other_classes.pt"
    state = load_checkpoint(out / "model_final.pt")
    state["categories"] = state["categories"][:2]
    torch.save(state, other)
    for path, message in [
        (truncated, "not a readable checkpoint"),
        (junk, "not a defeat checkpoint"),
        (other, "class list (2 classes) differs from"),
        (tmp_path / "nope.pt", "checkpoint not found"),
    ]:
        code = main(["eval", "--checkpoint", str(path), *_sets(tiny_overrides(tiny_coco, out))])
        err = capsys.readouterr().err.strip()
        assert code == 2 and message in err and str(path.name) in err and "\n" not in err


class _NaNAfter(torch.nn.Module):
    """Wraps a detector; its loss becomes NaN from step ``bad_step`` on."""

    def __init__(self, detector, bad_step):
        super().__init__()
        self.detector, self.bad_step, self.calls = detector, bad_step, 0

    def forward(self, images, targets):
        losses = self.detector(images, targets)
        self.calls += 1
        if self.calls > self.bad_step:
            losses["loss_classifier"] = losses["loss_classifier"] * float("nan")
        return losses


def test_non_finite_loss_stops_with_step_and_keeps_last_good_checkpoint(tiny_coco, tmp_path):
    cfg = config_from_dict({}, tiny_overrides(tiny_coco, tmp_path / "run", steps=6) + ["output.checkpoint_every=2"])
    train_set = CocoDetection(cfg.data.train_images, cfg.data.train_annotations)
    detector = build_for_dataset(cfg.model, train_set.categories, 0)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 3 .*checkpoint_last.pt"):
        train(cfg, _NaNAfter(detector, 3), detector, train_set, None, DistInfo(), kind="detector", progress=False)
    state = load_checkpoint(tmp_path / "run" / "checkpoint_last.pt")
    assert state["step"] == 2 and all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


@pytest.mark.slow  # ~10 s with the tiny detector: the fast tier keeps test_stop's resume check
@pytest.mark.parametrize("backbone", BACKBONES)
def test_killed_run_resumes_to_the_same_weights(tiny_coco, tmp_path, backbone):
    common = tiny_overrides(tiny_coco, tmp_path / "x", name=f"faster_rcnn_{backbone}_fpn", steps=8) + [
        "output.checkpoint_every=2",
        "data.workers=1",
    ]
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert _run_cli(["train", *_sets(common + [f"output.dir={full}"])]).wait() == 0
    proc = _run_cli(["train", *_sets(common + [f"output.dir={killed}"])])
    while not (killed / "checkpoint_last.pt").exists() and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "model_final.pt").exists(), "the run finished before it could be killed"
    assert load_checkpoint(killed / "checkpoint_last.pt")["step"] < 8
    assert _run_cli(["train", "--resume", *_sets(common + [f"output.dir={killed}"])]).wait() == 0
    a = load_checkpoint(full / "model_final.pt")["model"]
    b = load_checkpoint(killed / "model_final.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow  # ~10 s with the tiny detector: the fast tier keeps test_stop's resume check
@pytest.mark.parametrize("backbone", BACKBONES)
def test_torchrun_two_processes_match_one_process(tiny_coco, tmp_path, backbone):
    """RetinaNet + GroupNorm: no random sampling in the loss and no batch statistics, so 2 x batch 1
    under DDP equals 1 x batch 2 up to float summation order (tolerance 1e-4 relative). In float32: in bfloat16
    oneDNN picks other kernels for batch 1 and 2, and one bf16 rounding step (2^-8) is far above the tolerance."""
    common = tiny_overrides(tiny_coco, tmp_path / "x", name=f"retinanet_{backbone}_fpn", steps=3) + [
        "data.hflip_prob=0.5",
        "precision=fp32",
    ]
    one, two = tmp_path / "one", tmp_path / "two"
    assert _run_cli(["train", *_sets(common + [f"output.dir={one}", "data.batch_size=2"])]).wait() == 0
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--standalone",
        "-m",
        "defeat.cli.main",
        "train",
        *_sets(common + [f"output.dir={two}", "data.batch_size=1"]),
    ]
    result = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    a = load_checkpoint(one / "model_final.pt")["model"]
    b = load_checkpoint(two / "model_final.pt")["model"]
    init = build_for_dataset(
        config_from_dict({}, common).model, load_checkpoint(one / "model_final.pt")["categories"], 0
    )
    moved = 0
    for k, v in init.state_dict().items():
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6), k
        moved += not torch.equal(a[k], v)
    assert moved > 10  # training actually changed the weights


def test_full_disk_at_a_checkpoint_stops_in_one_line_and_keeps_the_last_good_one(
    tiny_coco, tmp_path, monkeypatch, capsys
):
    import errno

    from defeat import utils

    out = tmp_path / "run"
    real_write = utils._write_chunk

    def write(handle, data):  # the volume fills up once the first checkpoint is on it
        if (out / "checkpoint_last.pt").exists():
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(handle, data)

    monkeypatch.setattr(utils, "_write_chunk", write)
    overrides = tiny_overrides(tiny_coco, out, steps=4) + ["output.checkpoint_every=2", "eval.every_steps=0"]
    assert main(["train", *_sets(overrides)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    last = out / "checkpoint_last.pt"
    assert err.startswith(f"defeat: error: {last}: cannot write it: no space left on the device; needs ")
    assert "MB free in" in err or "GB free in" in err
    assert err.endswith("the previous checkpoint_last.pt is kept unchanged")
    assert load_checkpoint(last)["step"] == 2 and not (out / "model_final.pt").exists()
    assert not list(out.glob(".*.tmp"))
