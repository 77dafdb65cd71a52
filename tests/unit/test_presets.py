"""The built-in presets `heads` and `two-tower`: their output shapes (the model contract of kinds
`scores` with two heads and `embedding`), scriptable and exportable as the checkpoints are, and
trained by `models.training.train_dlrm` on a small synthetic table."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jobs.synthetic import FEATURES, LABEL, SyntheticSpec, generate_day, head_labels, tower_features
from models.checkpoint import build_architecture
from models.dlrm import build_dlrm
from models.outputs import map_embedding, map_heads
from models.training import train_dlrm

BUCKETS = [min(f.buckets, 997) for f in FEATURES.categorical]


def _inputs(n: int = 5):
    cat = torch.stack([torch.randint(0, b, (n,)) for b in BUCKETS], dim=1)
    return cat, torch.randn(n, len(FEATURES.dense))


@pytest.mark.parametrize(
    ("preset", "kwargs", "shape"),
    [("dlrm-demo", {}, (5,)), ("heads", {}, (5, 2)), ("two-tower", tower_features(FEATURES), (5, 16))],
)
def test_preset_shapes_scripted_and_exported(preset, kwargs, shape):
    model = build_dlrm(BUCKETS, len(FEATURES.dense), preset=preset, **kwargs).eval()
    inputs = _inputs()
    with torch.inference_mode():
        out = model(*inputs)
        assert tuple(out.shape) == shape
        assert torch.equal(torch.jit.script(model)(*inputs), out)
    torch.export.export(model, inputs)


def test_outputs_fit_the_kinds():
    inputs = _inputs()
    heads = build_dlrm(BUCKETS, len(FEATURES.dense), preset="heads").eval()
    tower = build_dlrm(BUCKETS, len(FEATURES.dense), preset="two-tower", **tower_features(FEATURES)).eval()
    with torch.inference_mode():
        assert len(map_heads(heads(*inputs), ["p_click", "p_convert"], 5)) == 2
        assert tuple(map_embedding(tower(*inputs), 5).shape) == (5, 16)


def test_tower_features_split_user_and_item():
    idx = tower_features(FEATURES)
    cat = [f.name for f in FEATURES.categorical]
    assert [cat[i] for i in idx["user_cat"]] == ["user_id", "device", "country"]
    assert [cat[i] for i in idx["item_cat"]] == ["item_id", "category", "brand"]
    assert not set(idx["user_dense"]) & set(idx["item_dense"])


def test_train_heads_and_two_tower_with_references():
    table = generate_day("2026-11-01", SyntheticSpec(rows_per_day=3000, n_users=300, n_items=300))
    labels = head_labels(table)
    assert labels["p_convert"].sum() < labels["p_click"].sum()
    spec = FEATURES
    heads = train_dlrm(table, spec, LABEL, preset="heads", epochs=1, head_labels=labels)
    assert set(heads.score_references) == {"p_click", "p_convert"}
    assert heads.score_reference == heads.score_references["p_click"]
    assert "holdout_auc_p_convert" in heads.metrics
    with pytest.raises(ValueError, match="needs a label per head"):
        train_dlrm(table, spec, LABEL, preset="heads", epochs=1)

    tower = train_dlrm(table, spec, LABEL, preset="two-tower", epochs=1, model_kwargs=tower_features(spec))
    assert tower.architecture["kwargs"]["user_cat"] == [0, 4, 5]
    rebuilt = build_architecture(tower.architecture)  # what a safetensors checkpoint loads
    rebuilt.load_state_dict(tower.model.state_dict())
    inputs = (
        torch.zeros(3, len(FEATURES.categorical), dtype=torch.int64),
        torch.randn(3, len(FEATURES.dense)),
    )
    with torch.inference_mode():
        assert torch.equal(rebuilt(*inputs), tower.model(*inputs))
    assert tower.score_reference["count"] == tower.metrics["holdout_rows"]
    assert tower.score_reference["min"] >= 0  # norms of the user vectors
    assert np.isfinite(tower.metrics["holdout_auc"])
