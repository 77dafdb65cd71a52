"""The same job against a local S3-compatible server over HTTP (moto server mode).

Input, model and output all live in s3:// and go through the production code path
(pyarrow's S3FileSystem with an endpoint override); credentials come from the environment.
"""

from __future__ import annotations

import json
import os

import pyarrow.fs as pafs
import pytest
from support import (
    DATES,
    SYNTH,
    delta_options,
    direct_scores,
    make_config,
    read_input,
    read_output,
    scores_by_key,
)

from jobs.synthetic import write_days
from pipeline.config import StorageConfig
from pipeline.errors import InputError
from pipeline.run.score import run_score
from pipeline.storage import resolve

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def s3_job(s3, checkpoints):
    bucket = s3.make_bucket("batchscore-it")
    storage = StorageConfig(endpoint_url=s3.endpoint)
    write_days(resolve(f"s3://{bucket}/events", storage), DATES, SYNTH)
    model_dir, _ = checkpoints.entries["torchscript"]
    target = resolve(f"s3://{bucket}/models/ts", storage)
    pafs.copy_files(
        model_dir, target.path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=target.fs
    )
    return bucket, storage


@pytest.mark.parametrize("mode", ["auto", "actors"])
def test_score_s3_to_s3_exact(ray_cluster, s3, s3_job, checkpoints, monkeypatch, mode):
    import pipeline.commit.partitions as partitions

    bucket, storage = s3_job
    out = "predictions" if mode == "auto" else "predictions-actors"  # a table of its own
    cfg = make_config(
        f"s3://{bucket}/events",
        f"s3://{bucket}/models/ts",
        f"s3://{bucket}/{out}",
        storage={"endpoint_url": s3.endpoint},
        predict={"mode": mode},  # auto: fused CPU tasks; actors: replicas writing to S3 themselves
    )
    read: list[str] = []  # files the key check had to read rows of
    real = partitions.fingerprint_files
    monkeypatch.setattr(partitions, "fingerprint_files", lambda fs, p, k: read.extend(p) or real(fs, p, k))
    report = run_score(cfg, DATES)
    # on S3 too: the input's key fingerprints recorded by the read tasks, the output's in footers
    assert read == []

    for d in DATES:
        inp = read_input(f"s3://{bucket}/events", d, storage)
        got = read_output(f"s3://{bucket}/{out}", d, storage)
        assert got.num_rows == inp.num_rows == 3000
        expected = dict(
            zip(
                inp.column("event_id").to_pylist(),
                direct_scores(checkpoints.entries["torchscript"][0], inp, checkpoints.spec).tolist(),
                strict=True,
            )
        )
        got_scores = scores_by_key(got)
        assert got_scores.keys() == expected.keys()
        assert max(abs(got_scores[k] - expected[k]) for k in expected) < 1e-6
    keys = s3.keys(bucket, f"{out}/")
    assert f"{out}/_delta_log/00000000000000000000.json" in keys
    assert f"{out}/_dead_letter/_delta_log/00000000000000000000.json" in keys
    assert f"{out}/_runs/{report.run_id}/report.json" in keys
    assert not [k for k in keys if "/_staging/" in k or "/_locks/" in k or k.endswith("_manifest.json")]
    assert not [k for k in keys if "/input_keys/" in k]  # the read tasks' records: removed after the run
    # every data file on the store is in the table: the run wrote nothing it did not commit
    from deltalake import DeltaTable

    live = {
        u.split(f"{bucket}/", 1)[1]
        for u in DeltaTable(
            f"s3://{bucket}/{out}", storage_options=delta_options(f"s3://{bucket}/{out}", storage)
        ).file_uris()
    }
    on_store = {k for k in keys if k.endswith(".parquet") and "/_" not in k}
    assert on_store == live
    assert report.report_uri.startswith(f"s3://{bucket}/{out}/_runs/")


def test_credentials_never_reach_reports_or_the_delta_log(ray_cluster, s3, s3_job):
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]  # a canary, set by tests/conftest.py
    access_key = os.environ["AWS_ACCESS_KEY_ID"]
    bucket, storage = s3_job
    cfg = make_config(
        f"s3://{bucket}/events",
        f"s3://{bucket}/models/ts",
        f"s3://{bucket}/canary",
        storage={"endpoint_url": s3.endpoint},
    )
    run_score(cfg, [DATES[0]])
    client = s3.client()
    for key in s3.keys(bucket, "canary/"):
        if key.endswith((".json", ".yaml")):
            body = client.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
            assert secret not in body, key
            assert access_key not in body, key
            if "/_delta_log/" in key:  # newline-delimited actions
                assert all(json.loads(line) for line in body.splitlines() if line)
            elif key.endswith(".json"):
                json.loads(body)


def test_missing_s3_partition_names_the_uri(ray_cluster, s3, s3_job):
    bucket, _ = s3_job
    cfg = make_config(
        f"s3://{bucket}/events",
        f"s3://{bucket}/models/ts",
        f"s3://{bucket}/predictions",
        storage={"endpoint_url": s3.endpoint},
    )
    with pytest.raises(InputError, match=rf"s3://{bucket}/events/ds=2031-05-05 does not exist"):
        run_score(cfg, ["2031-05-05"])
