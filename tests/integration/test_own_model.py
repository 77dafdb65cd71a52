"""A user's own nn.Module beside their config, as a newcomer sets it up: `validate` and `score`
run as subprocesses from the config's folder and from elsewhere, without PYTHONPATH; setup
mistakes end in a message and exit 2; an edit of the model's code rescores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file
from support import DATES, SMALL_FEATURES, run_cli

pytestmark = pytest.mark.integration

TINY = """
import torch


class Tiny(torch.nn.Module):
    def __init__(self, n_dense: int, scale: float = 1.0):
        super().__init__()
        self.lin = torch.nn.Linear(n_dense, 1)
        self.scale = scale

    def forward(self, dense):
        return torch.sigmoid(self.lin(dense) * self.scale)
"""


@pytest.fixture
def own(tmp_path, dataset) -> Path:
    """tiny.yaml, tinymodel.py and tiny.safetensors in one folder of their own."""
    folder = tmp_path / "mymodel"
    folder.mkdir()
    (folder / "tinymodel.py").write_text(TINY)
    torch.manual_seed(0)
    n_dense = len(SMALL_FEATURES.dense)
    weights = {f"lin.{k}": v for k, v in torch.nn.Linear(n_dense, 1).state_dict().items()}
    save_file(weights, str(folder / "tiny.safetensors"))
    config = {
        "name": "tiny",
        "input": {"uri": str(dataset)},
        "preprocessing": {"features": SMALL_FEATURES.to_dict()},
        "model": {
            "uri": "tiny.safetensors",
            "class_path": "tinymodel:Tiny",
            "kwargs": {"n_dense": n_dense},
            "inputs": ["dense"],
        },
        "output": {"uri": str(tmp_path / "preds"), "key_columns": ["event_id"]},
    }
    (folder / "tiny.yaml").write_text(
        "# batchscore validate tiny.yaml --date 2026-10-01\n" + yaml.safe_dump(config)
    )
    return folder


def cli(*args: str, cwd: Path):
    return run_cli(list(args), ray_address=None, cwd=cwd)


def test_module_beside_the_config_imports_from_its_folder_and_from_elsewhere(own, tmp_path):
    here = cli("validate", "tiny.yaml", "--date", DATES[0], cwd=own)
    assert here.returncode == 0, here.stderr[-3000:]
    assert "forward" in here.stdout and ": ok" in here.stdout
    # from another folder: the config's own folder is searched (the model path stays relative
    # to the working directory, so give it absolute)
    away = cli(
        "validate",
        str(own / "tiny.yaml"),
        "--date",
        DATES[0],
        "--set",
        f"model.uri={own}/tiny.safetensors",
        cwd=tmp_path,
    )
    assert away.returncode == 0, away.stderr[-3000:]


def test_missing_module_says_where_it_looked(own):
    proc = cli(
        "validate", "tiny.yaml", "--date", DATES[0], "--set", "model.class_path=nosuchmodel:Tiny", cwd=own
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "cannot import module 'nosuchmodel'" in proc.stderr
    assert f"looked in {own}" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.kwargs.nope=1", "got an unexpected keyword argument 'nope'"),
        (
            "model.inputs=[cat, dense]",
            "model.inputs ['cat', 'dense'] do not fit tinymodel:Tiny.forward(dense)",
        ),
    ],
)
@pytest.mark.parametrize("command", ["validate", "score"])
def test_setup_mistakes_exit_2_with_a_message(own, command, override, message):
    proc = cli(command, "tiny.yaml", "--date", DATES[0], "--set", override, cwd=own)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_an_edit_of_the_model_code_rescores(own):
    first = cli("score", "tiny.yaml", "--date", DATES[0], cwd=own)
    assert first.returncode == 0, first.stderr[-3000:]
    again = cli("score", "tiny.yaml", "--date", DATES[0], cwd=own)
    assert json.loads(again.stdout.splitlines()[-1])["skipped_committed"] == [DATES[0]]
    (own / "tinymodel.py").write_text(TINY.replace("* self.scale", "* self.scale * 2"))
    edited = cli("score", "tiny.yaml", "--date", DATES[0], cwd=own)
    assert edited.returncode == 0, edited.stderr[-3000:]
    assert json.loads(edited.stdout.splitlines()[-1])["skipped_committed"] == []


def test_the_safetensors_class_path_example_validates_and_scores(tmp_path):
    """configs/example-safetensors-class.yaml, with the steps its header prints, from a folder
    holding demo/data: the weights script, then validate and score."""
    import subprocess
    import sys

    from support import ROOT, SYNTH

    from jobs.synthetic import write_days
    from pipeline.storage import resolve

    config = ROOT / "configs" / "example-safetensors-class.yaml"
    date = config.read_text().splitlines()[0].split("--date ")[1].strip()
    write_days(resolve(str(tmp_path / "demo" / "data")), [date], SYNTH)
    weights = [sys.executable, str(ROOT / "configs" / "tinyranker.py"), "demo/tinyranker.safetensors"]
    subprocess.run(weights, cwd=tmp_path, check=True, timeout=120)
    for command in ("validate", "score"):
        proc = cli(command, str(config), "--date", date, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
    last = json.loads(proc.stdout.splitlines()[-1])
    assert last["status"] == "succeeded" and last["rows_in"] == last["rows_out"] == SYNTH.rows_per_day
    # both from the process's start (one clock): the first batch comes before the end of the run
    timings = json.loads(Path(last["report"]).read_text())["timings_s"]
    assert 0 < timings["first_batch_s"] <= timings["total_s"], timings
