"""Preemption: SIGTERM / SIGINT finish the step, write checkpoint_last.pt, print the resume command, exit 143 / 130;
the resumed run ends with the uninterrupted run's weights (1 process and torchrun)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from defeat.config import config_from_dict
from defeat.data import CocoDetection
from defeat.engine import DistInfo, TrainingStopped, load_checkpoint, train
from defeat.engine import trainer as trainer_module
from defeat.engine.setup import build_for_dataset
from tests.conftest import tiny_overrides
from tests.engine.test_train import _run_cli, _sets


def _wait_for_step(proc, metrics, step: int) -> None:
    """Block until ``metrics`` logs ``step`` (or the process ends)."""
    while proc.poll() is None:
        if metrics.is_file() and f'"step": {step},' in metrics.read_text():
            return
        time.sleep(0.01)


def _logged_steps(metrics) -> list[int]:
    return [r["step"] for r in map(json.loads, metrics.read_text().splitlines()) if "lr" in r]


def _same_weights(a_path, b_path) -> bool:
    a, b = load_checkpoint(a_path)["model"], load_checkpoint(b_path)["model"]
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# SIGINT takes the same handler as SIGTERM: its 10-s run is in the slow tier, to keep the fast tier under 3 min
@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)], ids=["SIGTERM", "SIGINT"]
)
def test_signal_mid_run_checkpoints_and_resumes_bit_identical(tiny_coco, tmp_path, signum):
    steps = 16
    common = tiny_overrides(tiny_coco, tmp_path / "x", steps=steps) + ["output.checkpoint_every=0"]
    full, stopped = tmp_path / "full", tmp_path / "stopped"
    assert _run_cli(["train", *_sets(common + [f"output.dir={full}"])]).wait() == 0
    args = ["train", *_sets(common + [f"output.dir={stopped}"])]
    proc = _run_cli(args, stderr=subprocess.PIPE, text=True)
    _wait_for_step(proc, stopped / "metrics.jsonl", 2)
    proc.send_signal(signum)
    err = proc.communicate()[1]
    assert proc.returncode == 128 + signum, err[-2000:]
    step = load_checkpoint(stopped / "checkpoint_last.pt")["step"]
    assert 2 <= step < steps and not (stopped / "model_final.pt").exists()
    line = next(x for x in err.splitlines() if x.startswith("defeat: stopped"))
    name = signal.Signals(signum).name
    assert (
        f"stopped by {name} at step {step}; {stopped / 'checkpoint_last.pt'} written; resume with: defeat train" in line
    )
    assert line.endswith(" --resume")
    assert _run_cli([*args, "--resume"]).wait() == 0
    assert _same_weights(full / "model_final.pt", stopped / "model_final.pt")
    assert _logged_steps(stopped / "metrics.jsonl") == list(range(1, steps + 1))  # one run's log, no repeats


def test_second_signal_during_the_save_is_ignored_and_handlers_come_back(tiny_coco, tmp_path, monkeypatch):
    cfg = config_from_dict({}, tiny_overrides(tiny_coco, tmp_path / "run", steps=6) + ["output.checkpoint_every=0"])
    train_set = CocoDetection(cfg.data.train_images, cfg.data.train_annotations)
    detector = build_for_dataset(cfg.model, train_set.categories, 0)
    real_save, saves = trainer_module.save_checkpoint, []

    def save_under_fire(state, path):  # the user presses Ctrl-C twice while the checkpoint is being written
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        real_save(state, path)
        saves.append(state["step"])

    def preempt(step):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(trainer_module, "save_checkpoint", save_under_fire)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingStopped) as stop:
        train(cfg, detector, detector, train_set, None, DistInfo(), before_step=preempt, progress=False)
    assert stop.value.code == 143 and stop.value.step == 3 and saves == [3]
    assert load_checkpoint(tmp_path / "run" / "checkpoint_last.pt")["step"] == 3
    assert not list((tmp_path / "run").glob(".*.tmp"))
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


@pytest.mark.slow
def test_torchrun_sigterm_stops_every_rank_at_one_step_and_resumes_bit_identical(tiny_coco, tmp_path):
    steps = 12
    common = tiny_overrides(tiny_coco, tmp_path / "x", name="retinanet_tiny_fpn", steps=steps) + [
        "data.batch_size=1",
        "precision=fp32",
        "output.checkpoint_every=0",
    ]
    full, stopped = tmp_path / "full", tmp_path / "stopped"

    def torchrun(out, *extra, **kwargs):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]
        cmd += ["-m", "defeat.cli.main", "train", *_sets(common + [f"output.dir={out}"]), *extra]
        return subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, text=True, **kwargs)

    assert torchrun(full).wait() == 0
    proc = torchrun(stopped, stderr=subprocess.PIPE)
    _wait_for_step(proc, stopped / "metrics.jsonl", 2)
    proc.send_signal(signal.SIGTERM)  # torchrun forwards it to both ranks
    err = proc.communicate()[1]
    step = load_checkpoint(stopped / "checkpoint_last.pt")["step"]
    assert 2 <= step < steps and not (stopped / "model_final.pt").exists(), err[-3000:]
    assert err.count(f"defeat: stopped by SIGTERM at step {step};") == 1  # rank 0 speaks, for every rank
    assert "torchrun --nproc_per_node=2" in err
    assert torchrun(stopped, "--resume").wait() == 0
    assert _same_weights(full / "model_final.pt", stopped / "model_final.pt")


def test_module_generators_are_saved_and_restored_with_the_rng():
    """MGD draws its masks from its own generator: the checkpoint's ``rng`` carries it, so a resumed run draws the
    masks the uninterrupted run would have drawn."""
    from defeat.distill.learned_methods import LearnedFeatureKD, mgd_mask

    model = torch.nn.ModuleDict({"feature_kd": LearnedFeatureKD("mgd", ["P2"], 8, 8, seed=3)})
    generator = model["feature_kd"].generator
    mgd_mask((1, 4, 4), 0.5, generator)  # some steps in
    state = trainer_module._rng_state(model)
    assert set(state["modules"]) == {"feature_kd"}
    expected = mgd_mask((2, 8, 8), 0.5, generator)
    fresh = torch.nn.ModuleDict({"feature_kd": LearnedFeatureKD("mgd", ["P2"], 8, 8, seed=99)})  # the resumed run
    trainer_module._set_rng_state(state, fresh)
    assert torch.equal(mgd_mask((2, 8, 8), 0.5, fresh["feature_kd"].generator), expected)
    trainer_module._set_rng_state({"torch": torch.get_rng_state()}, fresh)  # an older checkpoint: no generators
    assert "modules" not in trainer_module._rng_state(torch.nn.Linear(2, 2))


@pytest.mark.slow
def test_mgd_distillation_stopped_and_resumed_is_bit_identical(tiny_coco, tiny_teacher, tmp_path):
    from tests.cli.test_distill_cli import distill_overrides

    steps = 8
    common = distill_overrides(tiny_coco, tiny_teacher, tmp_path / "x", steps=steps, feature_mode="mgd")
    common += ["distill.proposal_mode=none", "precision=fp32"]
    full, stopped = tmp_path / "full", tmp_path / "stopped"
    assert _run_cli(["distill", *_sets(common + [f"output.dir={full}"])]).wait() == 0
    args = ["distill", *_sets(common + [f"output.dir={stopped}"])]
    proc = _run_cli(args, stderr=subprocess.PIPE, text=True)
    _wait_for_step(proc, stopped / "metrics.jsonl", 2)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate()[1]
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert load_checkpoint(stopped / "checkpoint_last.pt", kind="distill")["step"] < steps
    assert _run_cli([*args, "--resume"]).wait() == 0
    a = load_checkpoint(full / "model_final.pt", kind="distill")["model"]
    b = load_checkpoint(stopped / "model_final.pt", kind="distill")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
