"""streaming: true: the training rows read, encoded and shuffled as the run trains (peftflow/data/streaming.py).
The stream holds what prepare holds; the held-out rows are its first val_size rows and never trained on;
a resumed run trains the rows the uninterrupted one did; two processes read disjoint files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from datasets import load_from_disk
from transformers import TrainerCallback

from peftflow.builtin.datasets import make_rows
from peftflow.config import RunConfig
from peftflow.data import prepare_dataset
from peftflow.data.prepare import dataset_sources, prepared_report
from peftflow.data.streaming import KeptRows, encoded_stream, training_stream
from peftflow.errors import UserError
from peftflow.training.run import run as train_run
from peftflow.training.trainer import SupervisedTokenTrainer

ROOT = Path(__file__).resolve().parents[2]
ALPACA = {"formatting": "alpaca", "columns": {"prompt": "instruction", "query": "input", "response": "output"}}
FILES, ROWS_PER_FILE, HELD_OUT = 4, 40, 8


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """One dataset of four files (the stream's four shards), 160 distinct rows."""
    root = tmp_path_factory.mktemp("streamed")
    (root / "dataset_info.json").write_text(json.dumps({"orders": {"file_name": "orders", **ALPACA}}))
    (root / "orders").mkdir()
    rows = make_rows(FILES * ROWS_PER_FILE, seed=11)
    for i in range(FILES):
        (root / "orders" / f"part{i}.json").write_text(json.dumps(rows[i * ROWS_PER_FILE : (i + 1) * ROWS_PER_FILE]))
    return root


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory) -> Path:
    """Two files of 10 rows: 16 training rows after 4 held out, four steps of 4 rows per pass."""
    root = tmp_path_factory.mktemp("streamed-small")
    (root / "dataset_info.json").write_text(json.dumps({"orders": {"file_name": "orders", **ALPACA}}))
    (root / "orders").mkdir()
    rows = make_rows(20, seed=12)
    for i in range(2):
        (root / "orders" / f"part{i}.json").write_text(json.dumps(rows[i * 10 : (i + 1) * 10]))
    return root


def _config(tiny_model: str, data_dir: Path, **kw) -> RunConfig:
    fields = dict(model_name_or_path=tiny_model, dataset="orders", dataset_dir=str(data_dir), streaming=True)
    fields |= dict(max_steps=6, val_size=HELD_OUT, cutoff_len=128, logging_steps=1, per_device_train_batch_size=4)
    fields |= dict(buffer_size=32, learning_rate=1e-2)
    return RunConfig(**(fields | kw))


@pytest.mark.parametrize(
    "fields, says",
    [
        ({"max_steps": -1}, "needs max_steps > 0"),
        ({"val_size": 0.1}, "val_size 0.1"),
        ({"max_samples": 10}, "max_samples"),
        ({"packing": True}, "packing / neat_packing"),
        ({"neat_packing": True}, "packing / neat_packing"),
        ({"mix_strategy": "interleave_under", "dataset": "a,b"}, "mix_strategy interleave_under"),
        ({"stage": "pt", "packing": None}, "stage: pt concatenates"),
        ({"stage": "dpo"}, "stage: dpo reads its training rows as a whole"),
        ({"train_dataset": "x.yaml"}, "train_dataset"),
    ],
)
def test_streaming_refuses_what_a_stream_cannot_do(fields, says):
    with pytest.raises(ValueError, match="streaming: ") as e:
        RunConfig(**({"streaming": True, "max_steps": 4, "val_size": 8} | fields))
    assert says in str(e.value)
    RunConfig(streaming=True, max_steps=4, val_size=8, buffer_size=100)  # the valid form loads
    with pytest.raises(ValueError, match="buffer_size is the streaming shuffle buffer"):
        RunConfig(buffer_size=100)


def test_the_stream_holds_prepares_rows_and_holds_out_its_first(tiny_model, data_dir):
    cfg = _config(tiny_model, data_dir)
    prepared = prepare_dataset(cfg.model_copy(update={"streaming": False}), tiny_model)
    whole = [
        tuple(r) for split in ("train", "eval") for r in load_from_disk(str(Path(prepared.path) / split))["input_ids"]
    ]
    assert len(set(whole)) == len(whole) == FILES * ROWS_PER_FILE  # distinct rows: a row's ids name it

    data = prepare_dataset(cfg, tiny_model)
    stats = json.loads((Path(data.path) / "stats.json").read_text())
    assert stats["held_out"] == [f"{data_dir}/orders/part0.json row {n}" for n in range(1, HELD_OUT + 1)]
    held = [tuple(r) for r in load_from_disk(str(Path(data.path) / "eval"))["input_ids"]]
    assert data.eval_rows == len(held) == HELD_OUT and data.path != prepared.path
    report = prepared_report(cfg, tiny_model, data)  # what validate prints: kept beside the held-out rows
    assert report.streamed and report.rows_kept == HELD_OUT and "streaming: the training rows" in report.to_text()

    sources = dataset_sources(cfg)
    everything = encoded_stream(cfg, sources, tiny_model)
    assert everything.n_shards == FILES
    one_pass = [tuple(r["input_ids"]) for r in everything.filter(KeptRows(), input_columns=["drop", "where"])]
    assert Counter(one_pass) == Counter(whole)  # the same encoding as prepare, token for token
    assert held == one_pass[:HELD_OUT]

    trained = [tuple(r["input_ids"]) for r in training_stream(cfg, sources, tiny_model, stats["held_out"]).take(300)]
    assert not set(trained) & set(held)
    assert set(trained) == set(one_pass[HELD_OUT:])  # every other row, repeated past the end of the data
    assert trained[: len(one_pass) - HELD_OUT] != one_pass[HELD_OUT:]  # shuffled
    again = training_stream(cfg, sources, tiny_model, stats["held_out"]).take(300)
    assert [tuple(r["input_ids"]) for r in again] == trained  # seeded: the same order every time


class _Recording(SupervisedTokenTrainer):
    """The stock trainer, noting the rows (unpadded input_ids) of every micro-batch it trains on."""

    seen: list[list[tuple[int, ...]]] = []

    def training_step(self, model, inputs, *args, **kwargs):
        rows = [tuple(ids[mask.bool()].tolist()) for ids, mask in zip(inputs["input_ids"], inputs["attention_mask"])]
        _Recording.seen.append(rows)
        return super().training_step(model, inputs, *args, **kwargs)


def _recording(cfg, data_path, train_set):
    return _Recording, {}, train_set


class _Killed(Exception):
    pass


class _KillAfter(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise _Killed(f"killed after step {self.step}")


def test_a_resumed_stream_trains_the_rows_the_uninterrupted_run_did(tiny_model, small_dir, tmp_path):
    """Killed after step 5, past the end of the first pass over the data (four steps): the resumed run
    trains steps 6 and 7 on the rows the uninterrupted run did, not on the stream's start."""
    cfg = _config(tiny_model, small_dir, val_size=4, max_steps=7, save_steps=5)
    data = prepare_dataset(cfg, tiny_model)
    _Recording.seen = []
    whole = train_run(cfg, tiny_model, data.path, tmp_path / "whole", trainer_factory=_recording)
    uninterrupted = list(_Recording.seen)
    assert len(uninterrupted) == 7 and whole.resumed_from_step is None
    assert set(uninterrupted[4]) <= {row for step in uninterrupted[:4] for row in step}  # a second pass

    _Recording.seen = []
    with pytest.raises(_Killed):
        train_run(cfg, tiny_model, data.path, tmp_path / "killed", (_KillAfter(5),), trainer_factory=_recording)
    assert _Recording.seen == uninterrupted[:5]
    _Recording.seen = []
    resumed = train_run(cfg, tiny_model, data.path, tmp_path / "killed", trainer_factory=_recording)
    assert resumed.resumed_from_step == 5
    assert _Recording.seen == uninterrupted[5:]  # steps 6 and 7: the same rows, not the stream's start again
    assert [s for s, _ in resumed.loss_history] == [s for s, _ in whole.loss_history] == list(range(1, 8))
    for (_, a), (_, b) in zip(whole.loss_history, resumed.loss_history):  # the checkpoint's log, then steps 6, 7
        assert b == pytest.approx(a, rel=1e-4)


TWO_RANKS = """
import json, os, sys
from pathlib import Path
from peftflow.config import RunConfig
from peftflow.training import run as local
from tests.unit.test_streaming import _Recording, _recording
job = json.loads(Path(sys.argv[1]).read_text())
local.run(RunConfig.model_validate(job["config"]), job["model_path"], job["data_path"], job["output_dir"],
          trainer_factory=_recording)
Path(job["output_dir"], "seen-" + os.environ["RANK"] + ".json").write_text(json.dumps(_Recording.seen))
"""


@pytest.mark.parametrize("one_file", [False, True], ids=["four-files", "one-file"])
def test_two_processes_train_disjoint_rows_of_the_stream(tiny_model, data_dir, tmp_path, one_file):
    """Four files: each rank reads two of them. One file (fewer shards than ranks): both read it and
    each keeps its own rows of every pair of batches (accelerate's IterableDatasetShard)."""
    if one_file:
        data_dir = tmp_path / "one"
        data_dir.mkdir()
        info = {"orders": {"file_name": "orders.json", **ALPACA}}
        (data_dir / "dataset_info.json").write_text(json.dumps(info))
        (data_dir / "orders.json").write_text(json.dumps(make_rows(40, seed=13)))
    cfg = _config(tiny_model, data_dir, num_processes=2, max_steps=4, per_device_train_batch_size=2)
    data = prepare_dataset(cfg, tiny_model)
    job = tmp_path / "job.json"
    job.write_text(
        json.dumps(
            {
                "config": cfg.model_dump(mode="json"),
                "model_path": tiny_model,
                "data_path": data.path,
                "output_dir": str(tmp_path / "run"),
            }
        )
    )
    (tmp_path / "script.py").write_text(TWO_RANKS)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]
    proc = subprocess.run([*cmd, str(tmp_path / "script.py"), str(job)], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]

    file_of = {}
    for r in encoded_stream(cfg, dataset_sources(cfg), tiny_model):
        file_of[tuple(r["input_ids"])] = r["where"].split(" row ")[0]
    held = {tuple(r) for r in load_from_disk(str(Path(data.path) / "eval"))["input_ids"]}
    seen = [
        [tuple(row) for step in json.loads((tmp_path / "run" / f"seen-{rank}.json").read_text()) for row in step]
        for rank in (0, 1)
    ]
    assert [len(s) for s in seen] == [4 * 2, 4 * 2]  # every step, a batch of 2 on each rank
    assert not set(seen[0]) & set(seen[1]) and not (set(seen[0]) | set(seen[1])) & held
    files = [{file_of[row] for row in s} for s in seen]
    if not one_file:
        assert files[0] and files[1] and not files[0] & files[1]  # each rank reads its own shards (files)


@pytest.mark.parametrize("on_invalid_rows", ["error", "drop"])
def test_an_invalid_row_stops_the_stream_or_is_skipped(tiny_model, tmp_path, on_invalid_rows):
    (tmp_path / "dataset_info.json").write_text(json.dumps({"orders": {"file_name": "orders.json", **ALPACA}}))
    rows = make_rows(12, seed=3)
    rows[9]["output"] = ""  # row 10: nothing to answer
    (tmp_path / "orders.json").write_text(json.dumps(rows))
    cfg = _config(tiny_model, tmp_path, val_size=2, on_invalid_rows=on_invalid_rows)

    def trained_rows():
        data = prepare_dataset(cfg, tiny_model)
        held_out = json.loads((Path(data.path) / "stats.json").read_text())["held_out"]
        return list(training_stream(cfg, dataset_sources(cfg), tiny_model, held_out).take(30))

    if on_invalid_rows == "error":  # met once read: here, in the first tokenising batch (the held-out rows')
        with pytest.raises(UserError, match=r"orders.json: invalid row: row 10: .*set on_invalid_rows: drop"):
            trained_rows()
    else:
        assert len({tuple(r["input_ids"]) for r in trained_rows()}) == 12 - 2 - 1


def test_evaluation_during_a_streamed_run_scores_the_held_out_rows(tiny_model, small_dir, tmp_path):
    cfg = _config(tiny_model, small_dir, val_size=4, max_steps=2, eval_strategy="steps", eval_steps=2)
    data = prepare_dataset(cfg, tiny_model)
    assert (data.train_rows, data.eval_rows) == (0, 4)
    result = train_run(cfg, tiny_model, data.path, tmp_path / "run")
    assert [step for step, _ in result.eval_history] == [2] and result.eval_history[0][1] > 0
