"""Files and folders batchscore writes. Files are readable by the users the umask allows (not
0600): a scoring service or a dashboard running as another user reads reports, saved configs and
checkpoints. A refused run leaves no empty output folder."""

from __future__ import annotations

import os
import stat

import pytest

from pipeline.storage import resolve, write_bytes


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode_of(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_write_bytes_respects_the_umask(tmp_path, umask_022):
    target = tmp_path / "_runs" / "r1" / "report.json"
    write_bytes(resolve(str(target)), b"{}")
    assert mode_of(target) == 0o644
    assert [p.name for p in target.parent.iterdir()] == ["report.json"]  # no temp file left


def test_write_bytes_with_a_stricter_umask(tmp_path):
    old = os.umask(0o077)
    try:
        write_bytes(resolve(str(tmp_path / "config.yaml")), b"a: 1\n")
    finally:
        os.umask(old)
    assert mode_of(tmp_path / "config.yaml") == 0o600


def test_safetensors_checkpoint_is_readable_by_others(tmp_path, umask_022):
    import torch

    from models.checkpoint import save_checkpoint

    model = torch.nn.Linear(3, 1)
    save_checkpoint(
        str(tmp_path / "ckpt"),
        model,
        version="v1",
        feature_spec=None,
        architecture={"class": "torch.nn:Linear", "kwargs": {"in_features": 3, "out_features": 1}},
    )
    assert {p.name: mode_of(p) for p in (tmp_path / "ckpt").iterdir()} == {
        "model.safetensors": 0o644,
        "batchscore.json": 0o644,
    }


def test_the_output_probe_leaves_no_folder_it_created(tmp_path):
    from pipeline.storage import probe_writable

    probe_writable(resolve(str(tmp_path / "out" / "preds")), ".probe")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "kept").mkdir()
    probe_writable(resolve(str(tmp_path / "kept")), ".probe")
    assert [p.name for p in tmp_path.iterdir()] == ["kept"]  # an existing folder stays
