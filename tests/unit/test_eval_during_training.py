"""Evaluation during training and checkpoints (eval_strategy, load_best_model_at_end,
early_stopping_steps, save_only_model, resume_from_checkpoint): the tiny model, a few steps each.

A learning rate of 1.0 on a trained copy of the LM head makes the held-out loss worsen after the
first steps, so early stopping has something to stop."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError
from safetensors.torch import load_file
from transformers import TrainerCallback

from peftflow.config import RunConfig
from peftflow.data import prepare_dataset
from peftflow.errors import UserError
from peftflow.summary import evaluated_notes
from peftflow.training.resume import check_resume_source, starting_checkpoint
from peftflow.training.run import run as train_run
from peftflow.training.trainer import MetricsCallback

MAX_STEPS = 8


def _cfg(tiny_model: str, **update) -> RunConfig:
    base = dict(
        model_name_or_path=tiny_model,
        max_steps=MAX_STEPS,
        learning_rate=1.0,
        lr_scheduler_type="constant",
        additional_target="lm_head",
        logging_steps=1,
        per_device_train_batch_size=2,
        val_size=4,
        max_samples=24,
        cutoff_len=96,
        save_steps=1,
        save_total_limit=None,
        # lr 1.0 makes the held-out loss turn; in fp32 on every machine, so it turns at the same steps
        # (under bf16 autocast the run diverged so fast that a resume's next loss looked like a restart)
        bf16_autocast=False,
    )
    return RunConfig(**(base | update))


EVAL = dict(eval_strategy="steps", eval_steps=1, metric_for_best_model="eval_loss")


@pytest.fixture(scope="module")
def data(tiny_model):
    return prepare_dataset(_cfg(tiny_model), tiny_model)


def test_early_stopping_ships_the_best_checkpoint_and_says_why(tiny_model, data, tmp_path):
    cfg = _cfg(tiny_model, **EVAL, load_best_model_at_end=True, early_stopping_steps=2)
    logged: list[tuple[int, dict]] = []
    result = train_run(
        cfg, tiny_model, data.path, tmp_path, callbacks=(MetricsCallback(lambda s, m: logged.append((s, m))),)
    )

    # eval_loss at every eval step, in the result and in what the metrics sink (MLflow) received
    steps = [s for s, _ in result.eval_history]
    assert steps == list(range(1, result.steps + 1))
    assert [(s, m["eval_loss"]) for s, m in logged if "eval_loss" in m] == list(result.eval_history)
    # the best step is the lowest held-out loss; patience 2: it stopped two evaluations after it
    best_step, best = min(result.eval_history, key=lambda h: h[1])
    assert (result.best_step, result.best_metric) == (best_step, pytest.approx(best))
    assert result.stopped_early_at == result.steps == best_step + 2 < MAX_STEPS
    assert "eval_loss did not improve" in result.stop_reason and "early_stopping_steps: 2" in result.stop_reason
    assert any(f"stopped early at step {result.steps}" in n for n in evaluated_notes(result))
    assert json.loads((tmp_path / "train_result.json").read_text())["stopped_early_at"] == result.steps
    # the adapter saved is the best checkpoint's, not the last step's
    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    ckpt = load_file(tmp_path / "checkpoints" / f"checkpoint-{best_step}" / "adapter_model.safetensors")
    last = load_file(tmp_path / "checkpoints" / f"checkpoint-{result.steps}" / "adapter_model.safetensors")
    assert saved.keys() == ckpt.keys()
    assert all((saved[k] == ckpt[k]).all() for k in saved)
    assert any((saved[k] != last[k]).any() for k in saved)


class StopAt(TrainerCallback):
    """Ends training after step `step` (a kill after its checkpoint, without the subprocess)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


class BestAtStart(TrainerCallback):
    def on_train_begin(self, args, state, control, **kwargs):
        self.best = state.best_metric


def test_a_resumed_run_keeps_its_best_metric_and_patience_count(tiny_model, data, tmp_path):
    """Patience 3, cut after step 3 (held-out loss worse at steps 2 and 3: the count is 2): the
    resumed run stops where the uninterrupted one does, with the same best step."""
    cfg = _cfg(tiny_model, **EVAL, early_stopping_steps=3)
    reference = train_run(cfg, tiny_model, data.path, tmp_path / "reference")
    assert reference.stopped_early_at and reference.best_step < 3 < reference.stopped_early_at

    out = tmp_path / "run"
    train_run(cfg, tiny_model, data.path, out, callbacks=(StopAt(3),))
    state = json.loads((out / "checkpoints" / "checkpoint-3" / "trainer_state.json").read_text())
    counter = state["stateful_callbacks"]["EarlyStoppingCallback"]["attributes"]["early_stopping_patience_counter"]
    assert counter == 3 - reference.best_step > 0
    probe = BestAtStart()
    resumed = train_run(cfg, tiny_model, data.path, out, callbacks=(probe,))
    assert resumed.resumed_from_step == 3
    assert probe.best == pytest.approx(state["best_metric"])
    assert (resumed.stopped_early_at, resumed.best_step) == (reference.stopped_early_at, reference.best_step)
    assert resumed.best_metric == pytest.approx(reference.best_metric, rel=1e-4)


def test_weights_only_checkpoints_are_not_resumed(tiny_model, data, tmp_path):
    cfg = _cfg(tiny_model, max_steps=2, save_steps=2, save_only_model=True, additional_target=None)
    train_run(cfg, tiny_model, data.path, tmp_path)
    ckpt = tmp_path / "checkpoints" / "checkpoint-2"
    assert (ckpt / "trainer_state.json").is_file() and not (ckpt / "optimizer.pt").exists()
    assert starting_checkpoint(cfg, tmp_path / "checkpoints") is None
    again = train_run(cfg, tiny_model, data.path, tmp_path)  # restarts from scratch
    assert again.resumed_from_step is None and again.steps == 2
    with pytest.raises(UserError, match="resume_from_checkpoint: .*checkpoint-2 is not a complete checkpoint"):
        check_resume_source(cfg.model_copy(update={"save_only_model": False, "resume_from_checkpoint": str(ckpt)}))


def test_resume_from_checkpoint_path_is_where_a_new_run_starts(tiny_model, data, tmp_path):
    first = _cfg(tiny_model, max_steps=2, save_steps=2, additional_target=None, learning_rate=5e-3)
    train_run(first, tiny_model, data.path, tmp_path / "first")
    ckpt = tmp_path / "first" / "checkpoints" / "checkpoint-2"
    cfg = first.model_copy(update={"max_steps": 3, "save_steps": 3, "resume_from_checkpoint": str(ckpt)})
    result = train_run(cfg, tiny_model, data.path, tmp_path / "second")
    assert result.resumed_from_step == 2 and [s for s, _ in result.loss_history][-1] == 3
    # the run's own checkpoint now wins over the path (a retry continues, not restarts)
    assert starting_checkpoint(cfg, tmp_path / "second" / "checkpoints") == str(
        tmp_path / "second" / "checkpoints" / "checkpoint-3"
    )
    with pytest.raises(UserError, match="resume_from_checkpoint: true, but"):
        starting_checkpoint(cfg.model_copy(update={"resume_from_checkpoint": True}), tmp_path / "none")


@pytest.mark.parametrize(
    "keys, words",
    [
        (dict(load_best_model_at_end=True), "load_best_model_at_end needs evaluation during training"),
        (dict(eval_strategy="steps", val_size=0), "val_size is 0"),
        (dict(eval_strategy="steps", save_strategy="epoch", load_best_model_at_end=True), "save_strategy equal"),
        (
            dict(eval_strategy="steps", eval_steps=4, save_steps=6, load_best_model_at_end=True),
            "multiple of eval_steps",
        ),
        (dict(eval_strategy="steps", early_stopping_steps=2), "early_stopping_steps needs metric_for_best_model"),
        (dict(metric_for_best_model="eval_loss", early_stopping_steps=2), "needs evaluation during training"),
        (dict(eval_strategy="steps", metric_for_best_model="accuracy"), "only metric computed during training"),
        (dict(save_strategy="no", resume_from_checkpoint=True), "resume_from_checkpoint: true"),
        (dict(save_strategy="epoch", save_steps=100), "save_steps applies to save_strategy: steps"),
        (dict(stage="dpo", eval_strategy="steps"), "stage: dpo does not evaluate during training"),
    ],
)
def test_combinations_transformers_refuses_at_train_time_are_refused_at_validate(keys, words):
    with pytest.raises(ValidationError, match=words) as e:
        RunConfig(**keys)
    assert len(str(e.value.errors()[0]["msg"]).splitlines()) == 1


def test_what_evaluates_during_training_validates():
    cfg = RunConfig(**(EVAL | dict(eval_steps=2)), save_steps=4, load_best_model_at_end=True, early_stopping_steps=3)
    assert (cfg.eval_steps, cfg.early_stopping_steps) == (2, 3)
    assert RunConfig(eval_strategy="epoch", save_strategy="best", load_best_model_at_end=True).save_strategy == "best"
