"""Two CPU processes (torchrun, gloo) train like one process with the same global batch."""

from __future__ import annotations

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


def test_two_processes_match_one_with_the_same_global_batch(tmp_path, write_dataset, tiny_model):
    # 8 training rows = one global batch: every step sees all of them, in one process or two,
    # so the comparison tests the gradient averaging, not the sampler's order.
    root = write_dataset({"orders": {"file_name": "orders.json", **ALPACA}}, {"orders.json": make_rows(12, seed=5)})
    common = dict(model_name_or_path=tiny_model, dataset="orders", dataset_dir=str(root), val_size=4, max_steps=4,
                  learning_rate=2e-2, logging_steps=1, save_steps=100, cutoff_len=128)
    single = RunConfig(**common, per_device_train_batch_size=8)
    data = prepare_dataset(single, tiny_model)
    one = train_run(single, tiny_model, data.path, tmp_path / "one")
    two = distributed.run(RunConfig(**common, per_device_train_batch_size=4, num_processes=2), tiny_model,
                          data.path, tmp_path / "two")
    assert [s for s, _ in two.loss_history] == [s for s, _ in one.loss_history] == [1, 2, 3, 4]
    for (_, a), (_, b) in zip(one.loss_history, two.loss_history):
        # within 0.2%: the same examples and global batch; not bit-equal (reduction order, per-rank padding)
        assert b == pytest.approx(a, rel=2e-3), (one.loss_history, two.loss_history)
    assert one.loss_history[-1][1] < one.loss_history[0][1] - 0.05      # it trained
    assert (tmp_path / "two" / "adapter" / "adapter_model.safetensors").is_file()
