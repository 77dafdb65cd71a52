"""The `challengers` and `compare` sections: every error names its key, a challenger's job is the
champion's with its own model, table and (when set) preprocessing, and Ray's modes that cannot
hold every model are refused."""

from __future__ import annotations

import pytest

from pipeline.config import challenger_job, config_from_dict
from pipeline.errors import ConfigError
from pipeline.run.challengers import check_runner


def _raw(**extra):
    raw = {
        "name": "j",
        "input": {"uri": "/data/in"},
        "model": {"uri": "/models/a"},
        "output": {"uri": "/out/champion", "key_columns": ["event_id", "user_id", "item_id"]},
        "challengers": [{"name": "b", "model": {"uri": "/models/b"}, "output": {"uri": "/out/b"}}],
    }
    raw.update(extra)
    return raw


def test_errors_name_the_keys():
    bad = _raw(
        challengers=[
            {"name": "b", "model": {"uri": "/m/b"}, "output": {"uri": "/out/champion/b"}},
            {"name": "b", "model": {"uri": "/m/c"}, "output": {"uri": "/out/c"}, "compare_column": "nope"},
        ],
        compare={"group_by": ["session"], "score_column": "p"},
    )
    with pytest.raises(ConfigError) as e:
        config_from_dict(bad)
    text = str(e.value)
    for key in (
        "challengers.0.output.uri",
        "challengers.1.name",
        "challengers.1.compare_column",
        "compare.group_by",
        "compare.score_column",
    ):
        assert key in text, text
    typo = _raw(
        challengers=[{"name": "d", "model": {"uri": "/m/d", "frmat": "x"}, "output": {"uri": "/o/d"}}]
    )
    with pytest.raises(
        ConfigError, match=r"challengers\.0\.model\.frmat: unknown key; did you mean 'format'"
    ):
        config_from_dict(typo)


def test_a_challengers_job_is_the_champions_with_its_own_model_and_table():
    cfg = config_from_dict(
        _raw(
            preprocessing={"batch_size": 100},
            output={"uri": "/out/champion", "key_columns": ["event_id"], "score_column": "p"},
            challengers=[
                {
                    "name": "b",
                    "model": {"uri": "/models/b", "version": "v8"},
                    "output": {"uri": "/out/b", "score_columns": ["x", "y"]},
                }
            ],
        )
    )
    job = challenger_job(cfg, cfg.challengers[0])
    assert job.model.uri == "/models/b" and job.model.version == "v8" and job.output.uri == "/out/b"
    assert job.output.value_columns == ["x", "y"] and job.output.key_columns == ["event_id"]
    assert job.preprocessing == cfg.preprocessing and job.challengers == []
    # its identity differs from the champion's (its model and table), and is stable
    assert job.scoring_digest() != cfg.scoring_digest()
    assert job.scoring_digest() == challenger_job(cfg, cfg.challengers[0]).scoring_digest()
    # the champion's identity does not change when a challenger is added
    alone = config_from_dict(
        {k: v for k, v in _raw(preprocessing={"batch_size": 100}).items() if k != "challengers"}
    )
    assert (
        alone.scoring_digest() == config_from_dict(_raw(preprocessing={"batch_size": 100})).scoring_digest()
    )


def test_top_k_challengers_inherit_the_groups_and_rays_other_modes_are_refused():
    top = {"group_by": ["user_id"], "k": 3, "order_by": "p_convert"}
    out = {"uri": "/o", "key_columns": ["user_id", "item_id"], "score_columns": ["p_click", "p_convert"]}
    cfg = config_from_dict(
        _raw(
            output={**out, "top_k": top},
            challengers=[
                {"name": "same", "model": {"uri": "/m/b"}, "output": {"uri": "/out/b"}},
                {
                    "name": "other",
                    "model": {"uri": "/m/c"},
                    "output": {"uri": "/out/c", "score_column": "s", "top_k": {"k": 7}},
                },
            ],
        )
    )
    same, other = (challenger_job(cfg, ch).output for ch in cfg.challengers)
    assert same.top_k.group_by == ["user_id"] and same.top_k.k == 3 and same.order_by == "p_convert"
    # its own k; the champion's order_by is not one of its heads: its first head ranks
    assert other.top_k.group_by == ["user_id"] and other.top_k.k == 7 and other.order_by == "s"
    problems = [
        ({"compare": {"group_by": ["item_id"]}}, "compare.group_by"),
        (
            {
                "challengers": [
                    {"name": "b", "model": {"uri": "/m/b"}, "output": {"uri": "/b"}, "preprocessing": {}}
                ]
            },
            "challengers.0.preprocessing",
        ),
    ]
    for extra, key in problems:
        with pytest.raises(ConfigError, match=key):
            config_from_dict(_raw(output={**out, "top_k": top}, **extra))
    with pytest.raises(ConfigError, match="only with a top-K champion"):
        config_from_dict(
            _raw(
                challengers=[
                    {"name": "b", "model": {"uri": "/m"}, "output": {"uri": "/b", "top_k": {"k": 2}}}
                ]
            )
        )
    check_runner("local", "fused")
    check_runner("ray", "actors")
    check_runner("ray", "staged", top_k=True)  # the staged pool's replicas hold every model
    for mode in ("staged", "fused"):
        with pytest.raises(ConfigError, match="predict.mode: actors"):
            check_runner("ray", mode)


def test_a_challengers_model_kwargs_are_redacted_like_the_champions():
    from pipeline.config import REDACTED, dump_config, shown_config

    cfg = config_from_dict(
        _raw(
            challengers=[
                {
                    "name": "b",
                    "model": {
                        "uri": "/m/b.safetensors",
                        "class_path": "x:Y",
                        "kwargs": {"token": "s3cr3t", "dim": 8},
                        "safe_kwargs": ["dim"],
                    },
                    "output": {"uri": "/out/b"},
                }
            ]
        )
    )
    shown = shown_config(cfg)["challengers"][0]["model"]["kwargs"]
    assert shown == {"token": REDACTED, "dim": 8}
    assert "s3cr3t" not in dump_config(cfg)
