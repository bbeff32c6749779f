"""Atomic writers under disk faults: full disk, quota, read-only folder give one-line WriteErrors naming the file,
the bytes needed and free; the previous file is never touched and no temporary file is left."""

import errno
import os
from collections import namedtuple

import pytest
import torch

from defeat import utils
from defeat.utils import WriteError, atomic_torch_save, atomic_write_json, atomic_write_text


def _fail_writes(monkeypatch, code: int) -> None:
    def write(handle, data):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(utils, "_write_chunk", write)


def test_full_disk_keeps_the_previous_checkpoint_and_says_what_it_needs(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint_last.pt"
    atomic_torch_save({"step": 1, "w": torch.ones(10)}, path)
    _fail_writes(monkeypatch, errno.ENOSPC)
    with pytest.raises(WriteError) as err:
        atomic_torch_save({"step": 2, "w": torch.zeros(1000)}, path)
    message = str(err.value)
    assert message.startswith(f"{path}: cannot write it: no space left on the device; needs ") and "\n" not in message
    assert " free in " in message and message.endswith("the previous checkpoint_last.pt is kept unchanged")
    assert isinstance(err.value, ValueError) and err.value.errno == errno.ENOSPC
    assert torch.load(path)["step"] == 1 and os.listdir(tmp_path) == ["checkpoint_last.pt"]


def test_quota_and_first_writes_say_so(tmp_path, monkeypatch):
    _fail_writes(monkeypatch, errno.EDQUOT)
    with pytest.raises(WriteError, match=r"report.json: cannot write it: disk quota exceeded; .*no report.json"):
        atomic_write_json(tmp_path / "report.json", {"AP": 0.5})
    assert os.listdir(tmp_path) == []


def test_free_space_is_checked_before_writing(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(utils.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(WriteError, match=r"model.pt: .*needs 4\.\d MB, 1\.0 KB free in .*no model.pt was written"):
        atomic_torch_save({"w": torch.zeros(10**6)}, tmp_path / "model.pt")
    assert os.listdir(tmp_path) == []


def test_read_only_folder(tmp_path, monkeypatch):
    folder = tmp_path / "ro"
    folder.mkdir()
    atomic_write_text(folder / "config.yaml", "a: 1\n")
    if os.geteuid() == 0:  # root writes through chmod: inject what a read-only mount says instead
        _fail_writes(monkeypatch, errno.EROFS)
        reason = "read-only file system"
    else:
        folder.chmod(0o555)
        reason = "permission denied"
    try:
        with pytest.raises(WriteError, match=rf"config.yaml: cannot write it: {reason}.*previous config.yaml is kept"):
            atomic_write_text(folder / "config.yaml", "a: 2\n")
    finally:
        folder.chmod(0o755)
    assert (folder / "config.yaml").read_text() == "a: 1\n" and os.listdir(folder) == ["config.yaml"]
