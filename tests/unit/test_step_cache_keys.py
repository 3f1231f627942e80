"""An existing PEFTFLOW_HOME (or run store) keeps its step cache across the renames of issue 32:
the cache keys of train-adapter, merge-adapter and evaluate-models, and the run dir's file names,
are the ones the code before the rename wrote (taken from commit f9ea1c0 with the same inputs), so
a rerun of a run trained before finds its adapter, merged model and report and trains nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

import tasks.evaluate_models as evaluate
import tasks.merge_adapter as merge
import tasks.train_adapter as train
from peftflow.config import RunConfig
from peftflow.data import PreparedData
from peftflow.models.resolve import ResolvedModel
from peftflow.run_dir import RunDir
from peftflow.stages.workflow import RunModels
from peftflow.training.run import TrainResult

RUN = "/srv/runs/orders/k1"
# storage -> where the keys name the run dir (a run store names it by its place in the store)
WHERE = {None: RUN, "file:///tmp/peftflow-store": "runs/srv-runs-orders/k1"}
TRAIN_WHERE = {None: RUN, "file:///tmp/peftflow-store": "runs/srv-runs-orders/orders/k1"}


@pytest.mark.parametrize("storage", list(WHERE))
def test_step_cache_keys_are_the_ones_written_before_the_rename(storage):
    cfg = RunConfig(output_dir="/srv/runs/orders", storage=storage)
    distill = RunConfig(output_dir="/srv/runs/orders", storage=storage, stage="distill", teacher="builtin:tiny-random")
    data = PreparedData("/p", "datafp", 1, 1, 0, 0)
    adapter = TrainResult(f"{RUN}/adapter", 0.1, 1, 1.0, 1, 1.0, 1, 1, None, ())
    base = ResolvedModel("b", "/b", "basefp")
    judged = cfg.evaluation.model_dump_json()
    where = WHERE[storage]

    assert train._key(None, {"config": cfg, "train_key": "k1"}) == f"train-k1-{TRAIN_WHERE[storage]}"
    assert merge._key(None, {"config": cfg, "adapter": adapter}) == f"merge-{where}/adapter-0.001-None"
    params = {"config": cfg, "models": RunModels(base), "champion": None, "tuned_dir": f"{RUN}/merged", "data": data}
    assert evaluate._key(None, params) == f"evaluate-{where}/merged-datafp-none-tokenizer-{judged}"
    assert (
        evaluate._key(None, params | {"score_base": False})
        == f"evaluate-{where}/merged-datafp-none-tokenizer-{judged}-tuned-only"
    )
    teacher = RunModels(base, {"teacher": ResolvedModel("t", "/t", "teacherfp")})
    assert (
        evaluate._key(None, params | {"config": distill, "models": teacher})
        == f"evaluate-{where}/merged-datafp-none-teacher-teacherfp-tokenizer-{judged}"
    )


def test_the_run_dir_keeps_its_file_names():
    run = RunDir.of(RunConfig(output_dir="/srv/runs/orders"), "k1")
    assert run.path == Path(RUN)
    names = {
        p.name
        for p in (
            run.checkpoints,
            run.adapter,
            run.train_result,
            run.merged,
            run.eval_report,
            run.tuned_report,
            run.variant_outcome,
        )
    }
    assert names == {
        "checkpoints",
        "adapter",
        "train_result.json",
        "merged",
        "eval_report.json",
        "tuned_report.json",
        "sweep_variant.json",
    }
