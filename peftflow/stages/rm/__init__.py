"""`stage: rm`: a reward model, LLaMA-Factory's `stage: rm`. On the same chosen / rejected pairs as
dpo, a one-output head on the model's last token learns to score the chosen answer above the rejected
one (Bradley-Terry: `-log sigmoid(r_chosen - r_rejected)`). The shipped model is a transformers
sequence-classification checkpoint (peftflow/models/heads.py), registered as a text-classification
model: any text in, its score out. It is scored by held-out pair accuracy, which the gate compares.
`trainer.py` (the reward trainer), `workflow.py` (what a reward run does)."""

from __future__ import annotations

from peftflow.stages.base import Stage, in_one_process, no_evaluation_during_training

METHODS = ("lora", "full")  # the head trains in full: beside LoRA's adapters (saved with them) or with all weights


def check(cfg) -> None:
    if cfg.finetuning_type not in METHODS:
        raise ValueError(
            f"finetuning_type {cfg.finetuning_type}: stage: rm trains its score head beside lora adapters "
            f"or in full ({', '.join(METHODS)})"
        )
    if cfg.merge is False:
        raise ValueError("merge: false: a reward model ships merged (an adapter reloads onto a base without its head)")
    # What reads a language model's next-token predictions has nothing to read in a reward model.
    unread = {
        "registry.gguf_outtype": cfg.registry.gguf_outtype,
        "evaluation.harness_tasks": cfg.evaluation.harness_tasks,
        "promotion.guard_dataset": cfg.promotion.guard_dataset,
    }
    for key, value in unread.items():
        if value:
            raise ValueError(f"{key}: it reads next-token predictions, which a reward model (stage: rm) has none of")
    if cfg.promotion.metric == "perplexity":
        raise ValueError("promotion.metric: perplexity: a reward model is gated on pair accuracy (score) or loss")
    in_one_process(cfg, "rm", "torchrun runs the stock trainer, not the reward trainer")
    no_evaluation_during_training(cfg, "rm", "the reward trainer reads its pairs by training row")


STAGE = Stage(
    "rm",
    "a reward model on chosen / rejected answer pairs: a score head on the last token (LLaMA-Factory's rm)",
    check=check,
    row_kind="pairs",
    reward_head=True,
)
