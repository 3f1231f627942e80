"""lm-evaluation-harness on the tiny fine-tune: the held-out split as an lm-eval task agrees with
peftflow's own evaluation row by row; a local task YAML runs beside it."""

from __future__ import annotations

import json
import math

import pytest

from peftflow.config import RunConfig
from peftflow.data import prepare_dataset
from peftflow.errors import UserError
from peftflow.evaluation import harness
from peftflow.evaluation.report import EvalReport
from peftflow.evaluation.scoring import compare, score_model
from peftflow.summary import harness_lines

LOCAL_TASK = """task: tiny_capitals
dataset_path: json
dataset_kwargs:
  data_files:
    test: {rows}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
metadata:
  version: 1.0
"""


@pytest.fixture(scope="module")
def heldout(tiny_model, tmp_path_factory):
    cfg = RunConfig(
        model_name_or_path=tiny_model,
        evaluation={
            "metric": "token_f1",
            "max_samples": 3,
            "max_new_tokens": 6,
            "batch_size": 3,
            "harness_tasks": [harness.HELDOUT_TASK],
        },
    )
    return cfg, prepare_dataset(cfg, tiny_model)


def test_heldout_task_agrees_with_peftflows_evaluation_row_by_row(
    heldout, tiny_finetune, tiny_model, tmp_path, monkeypatch, capfd
):
    cfg, data = heldout
    _, merged = tiny_finetune
    ours = score_model("tuned", merged, data.path, cfg)
    include = harness.write_heldout_task(data.path, tiny_model, cfg, tmp_path / "tasks")
    rows = [json.loads(line) for line in (include / "heldout.jsonl").read_text().splitlines()]
    assert [r["reference"] for r in rows] == [e["reference"] for e in ours.examples]

    monkeypatch.setenv("TQDM_DISABLE", "1")  # as `peftflow` sets it without --verbose
    capfd.readouterr()
    theirs = harness.run(merged, [harness.HELDOUT_TASK], [str(include)], batch_size=3)
    assert "Running generate_until requests" not in capfd.readouterr().err  # lm-eval's bar, off under tqdm's switch
    predictions = theirs.predictions[harness.HELDOUT_TASK]
    assert [p.strip() for p in predictions] == [e["prediction"].strip() for e in ours.examples]
    assert any(p.strip() for p in predictions)
    assert theirs.scores[f"{harness.HELDOUT_TASK}/{harness.HELDOUT_METRIC}"] == pytest.approx(ours.score, abs=1e-4)


def test_score_models_puts_harness_scores_into_the_report(heldout, tiny_finetune, tiny_model, tmp_path):
    cfg, data = heldout
    adapter, _ = tiny_finetune
    local = tmp_path / "local-tasks"
    local.mkdir()
    rows = [
        {"question": f"Capital of {c}?", "choices": ["Oslo", "Lyon", "Graz"], "answer": i}
        for i, c in enumerate(["Norway", "France", "Austria"])
    ]
    (local / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (local / "tiny_capitals.yaml").write_text(LOCAL_TASK.format(rows=local / "rows.jsonl"))
    cfg = cfg.model_copy(
        update={
            "evaluation": cfg.evaluation.model_copy(
                update={"harness_tasks": [harness.HELDOUT_TASK, "tiny_capitals"], "harness_include": str(local)}
            )
        }
    )
    harness.check_available(cfg)

    models = {"base": tiny_model, "tuned": adapter}  # the adapter runs on its base (lm-eval's peft=)
    report = compare(models, data.path, cfg, tmp_path / "eval_report.json", base_model_dir=tiny_model)
    report = harness.score_models(report, models, data.path, cfg, tmp_path, base_model_dir=tiny_model)
    for label in models:
        scores = report.models[label].harness
        assert set(scores) == {f"{harness.HELDOUT_TASK}/{harness.HELDOUT_METRIC}", "tiny_capitals/acc"}
        assert 0.0 <= scores["tiny_capitals/acc"] <= 1.0 and not math.isnan(scores["tiny_capitals/acc"])
        assert scores[f"{harness.HELDOUT_TASK}/{harness.HELDOUT_METRIC}"] == pytest.approx(
            report.models[label].score, abs=1e-4
        )
    flat = report.flat_metrics()
    assert flat["harness.tuned.tiny_capitals/acc"] == report.models["tuned"].harness["tiny_capitals/acc"]
    # the flow's summary: one line per task metric, every model's value
    capitals = {label: report.models[label].harness["tiny_capitals/acc"] for label in models}
    assert (
        harness_lines({label: m.harness for label, m in report.models.items()})[1]
        == f"lm-eval `tiny_capitals/acc`: base {capitals['base']:.4f}, tuned {capitals['tuned']:.4f}"
    )
    report.to_json(tmp_path / "again.json")
    assert EvalReport.from_json(tmp_path / "again.json").models["base"].harness == report.models["base"].harness


def test_harness_settings_are_checked_before_training(tmp_path):
    with pytest.raises(UserError, match="harness_include .*: directory not found"):
        harness.check_available(RunConfig(evaluation={"harness_tasks": ["x"], "harness_include": str(tmp_path / "no")}))
    with pytest.raises(UserError, match="local tasks need evaluation.harness_include"):
        harness.check_available(RunConfig(evaluation={"harness_tasks": ["hellaswag"]}))
    harness.check_available(RunConfig(evaluation={"harness_tasks": [harness.HELDOUT_TASK]}))
