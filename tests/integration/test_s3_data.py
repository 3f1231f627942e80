"""cloud_file_name: s3://... against moto's server mode on loopback: fetched with boto3 from the
standard AWS environment, cached by ETag, fingerprinted by content."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peftflow.builtin.datasets import make_rows
from peftflow.config import RunConfig
from peftflow.data import prepare_dataset
from peftflow.errors import UserError

pytestmark = [pytest.mark.integration]
ALPACA = {"formatting": "alpaca", "columns": {"prompt": "instruction", "query": "input", "response": "output"}}


@pytest.fixture
def s3(s3_env):
    import boto3

    client = boto3.client("s3")
    client.create_bucket(Bucket="teamdata")
    yield client
    for o in client.list_objects_v2(Bucket="teamdata").get("Contents", []):
        client.delete_object(Bucket="teamdata", Key=o["Key"])
    client.delete_bucket(Bucket="teamdata")


def _config(root: Path, model: str) -> RunConfig:
    return RunConfig(model_name_or_path=model, dataset="orders", dataset_dir=str(root), val_size=4)


def test_s3_dataset_is_fetched_cached_by_etag_and_fingerprinted(s3, write_dataset, tiny_model, monkeypatch):
    from peftflow.data import cloud

    rows = make_rows(20, seed=3)
    s3.put_object(Bucket="teamdata", Key="sft/orders.json", Body=json.dumps(rows).encode())
    root = write_dataset({"orders": {"cloud_file_name": "s3://teamdata/sft/orders.json", **ALPACA}}, {})
    gets = []
    real = cloud._client

    def counting():
        c = real()
        c.meta.events.register("before-call.s3.GetObject", lambda **kw: gets.append(1))
        return c

    monkeypatch.setattr(cloud, "_client", counting)
    first = prepare_dataset(_config(root, tiny_model), tiny_model)
    assert first.train_rows + first.eval_rows == 20 and len(gets) == 1
    again = prepare_dataset(_config(root, tiny_model), tiny_model)
    assert again.fingerprint == first.fingerprint and len(gets) == 1  # unchanged ETag: no download

    s3.put_object(Bucket="teamdata", Key="sft/orders.json", Body=json.dumps(make_rows(24, seed=4)).encode())
    changed = prepare_dataset(_config(root, tiny_model), tiny_model)
    assert changed.fingerprint != first.fingerprint and len(gets) == 2  # new ETag: downloaded again
    assert changed.train_rows + changed.eval_rows == 24


def test_s3_prefix_and_errors(s3, write_dataset, tiny_model):
    for i in range(2):
        s3.put_object(
            Bucket="teamdata",
            Key=f"parts/p{i}.jsonl",
            Body="\n".join(json.dumps(r) for r in make_rows(8, seed=10 + i)).encode(),
        )
    root = write_dataset({"orders": {"cloud_file_name": "s3://teamdata/parts/", **ALPACA}}, {})
    data = prepare_dataset(_config(root, tiny_model), tiny_model)
    assert data.train_rows + data.eval_rows == 16
    root = write_dataset({"orders": {"cloud_file_name": "s3://teamdata/nothing-here.json", **ALPACA}}, {})
    with pytest.raises(UserError, match="s3://teamdata/nothing-here.json: no such object or prefix"):
        prepare_dataset(_config(root, tiny_model), tiny_model)
    root = write_dataset({"orders": {"cloud_file_name": "s3://no-such-bucket/x.json", **ALPACA}}, {})
    with pytest.raises(UserError, match="NoSuchBucket"):
        prepare_dataset(_config(root, tiny_model), tiny_model)
