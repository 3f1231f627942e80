"""`stage: pt`: continued pre-training on plain text, LLaMA-Factory's `stage: pt`. No chat template
(`template` is not read for the data or generation): each text ends in the tokenizer's eos, the
texts are concatenated and cut into cutoff_len blocks (peftflow/data/blocks.py), and every token is
learned. Its workflow is the shared default: the stock trainer learns the labels, which are the
block's own tokens."""

from __future__ import annotations

from peftflow.stages.base import Stage


def check(cfg) -> None:
    # Both choose which tokens of a templated row are learned; a block of plain text learns all.
    masking = [k for k in ("train_on_prompt", "mask_history") if getattr(cfg, k)]
    if masking:
        raise ValueError(f"{', '.join(masking)}: stage: pt learns every token of its text; leave them false")
    if cfg.cutoff_len < 2:  # held-out generation continues the first half of a block
        raise ValueError("stage: pt cuts text into blocks of cutoff_len tokens; cutoff_len must be at least 2")


STAGE = Stage(
    "pt",
    "continued pre-training on plain text: every token learned, the texts cut into cutoff_len blocks "
    "(LLaMA-Factory's pt)",
    check=check,
    row_kind="text",
    templated=False,
    lm_loss=True,
)
