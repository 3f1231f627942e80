"""Two CPU processes (torchrun, gloo), on one node or as two nodes on loopback, train like one
process with the same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from peftflow.builtin.datasets import make_rows
from peftflow.config import RunConfig
from peftflow.data import prepare_dataset
from peftflow.training import distributed
from peftflow.training.run import run as train_run

ALPACA = {"formatting": "alpaca", "columns": {"prompt": "instruction", "query": "input", "response": "output"}}


def test_launch_command():
    cfg = RunConfig(num_processes=4)
    cmd = distributed.launch_command(cfg, "job.json")
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--nproc_per_node=4", "--nnodes=1"] and "--standalone" in cmd
    assert cmd[-3:] == ["-m", "peftflow.training.distributed", "job.json"]
    assert distributed.is_distributed(cfg) and not distributed.is_distributed(RunConfig())


def test_a_node_waits_for_the_others_preparing_their_data_as_long_as_at_a_collective(monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")
    monkeypatch.setenv("PEFTFLOW_NODE_RANK", "1")
    cmd = distributed.launch_command(RunConfig(nnodes=2, ddp_timeout=7200), "job.json")
    assert "--rdzv-conf=timeout=7200" in cmd and "--node_rank=1" in cmd and "--standalone" not in cmd


ROOT = Path(__file__).resolve().parents[2]
NODE = """
import sys
from peftflow.config import RunConfig
from peftflow.training import node
print("node 1 trained in", node.join(RunConfig.model_validate_json(sys.argv[1])))
"""


@pytest.fixture(scope="module")
def one_process(tiny_model, tmp_path_factory):
    """(shared config fields, prepared data, the single-process result with batch 8). 8 training
    rows = one global batch: every step sees all of them, in one process or two, so a comparison
    tests the gradient averaging, not the sampler's order."""
    tmp = tmp_path_factory.mktemp("one-process")
    (tmp / "data").mkdir()
    (tmp / "data" / "dataset_info.json").write_text(json.dumps({"orders": {"file_name": "orders.json", **ALPACA}}))
    (tmp / "data" / "orders.json").write_text(json.dumps(make_rows(12, seed=5)))
    common = dict(
        model_name_or_path=tiny_model,
        dataset="orders",
        dataset_dir=str(tmp / "data"),
        val_size=4,
        max_steps=4,
        learning_rate=2e-2,
        logging_steps=1,
        save_steps=100,
        cutoff_len=128,
    )
    single = RunConfig(**common, per_device_train_batch_size=8)
    data = prepare_dataset(single, tiny_model)
    return common, data, train_run(single, tiny_model, data.path, tmp / "one")


def _matches(one, two) -> None:
    assert [s for s, _ in two.loss_history] == [s for s, _ in one.loss_history] == [1, 2, 3, 4]
    for (_, a), (_, b) in zip(one.loss_history, two.loss_history):
        # within 0.2%: the same examples and global batch; not bit-equal (reduction order, per-rank padding)
        assert b == pytest.approx(a, rel=2e-3), (one.loss_history, two.loss_history)
    assert one.loss_history[-1][1] < one.loss_history[0][1] - 0.05  # it trained


def test_two_processes_match_one_with_the_same_global_batch(tmp_path, one_process, tiny_model):
    common, data, one = one_process
    two = distributed.run(
        RunConfig(**common, per_device_train_batch_size=4, num_processes=2), tiny_model, data.path, tmp_path / "two"
    )
    _matches(one, two)
    assert (tmp_path / "two" / "adapter" / "adapter_model.safetensors").is_file()


def test_two_nodes_on_loopback_match_one_process(tmp_path, one_process, tiny_model, monkeypatch):
    """nnodes: 2 as two torchrun nodes on 127.0.0.1 (one process each, gloo): node 1 is another
    process on its own home, joining through peftflow.training.node (model, data and training key
    from the same config, as infra/k8s-multinode-job.yaml runs it); node 0 (global rank 0) writes
    the adapter and the result."""
    common, data, one = one_process
    cfg = RunConfig(**common, per_device_train_batch_size=4, nnodes=2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    rendezvous = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
    node1 = subprocess.Popen(
        [sys.executable, "-c", NODE, cfg.model_dump_json()],
        env={
            **os.environ,
            **rendezvous,
            "PEFTFLOW_NODE_RANK": "1",
            "PYTHONPATH": str(ROOT),
            "PEFTFLOW_HOME": str(tmp_path / "node1"),
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    for k, v in {**rendezvous, "PEFTFLOW_NODE_RANK": "0"}.items():
        monkeypatch.setenv(k, v)
    try:
        two = distributed.run(cfg, tiny_model, data.path, tmp_path / "node0")
    finally:
        out, _ = node1.communicate(timeout=300)
    assert node1.returncode == 0, out[-3000:]
    _matches(one, two)
    assert (tmp_path / "node0" / "adapter" / "adapter_model.safetensors").is_file()
    trained_in = Path(out.split("node 1 trained in ")[1].split()[0])
    assert trained_in.is_relative_to(tmp_path / "node1") and (trained_in / "launch.json").is_file()
    assert not (trained_in / "adapter").exists()
