"""LLaMA-Factory's `streaming` and `buffer_size`: training rows read, tokenised and shuffled as the
run trains, never prepared as a whole (peftflow/data/streaming.py). Their checks are
config/checks.py `check_streaming`."""

from __future__ import annotations

from pydantic import Field

from peftflow.config.sections import Strict


class StreamKeys(Strict):
    # fmt: off
    streaming: bool = Field(False, title="Data: streaming",
                            description="Train from a stream of the dataset files: rows are read and tokenised as "
                                        "the run trains, shuffled in a buffer of buffer_size rows; the first val_size "
                                        "rows are held out. Needs max_steps and a whole val_size; stage sft, text.")
    buffer_size: int = Field(16384, gt=0, title="Data: streaming shuffle buffer",
                             description="Streaming: rows in the shuffle buffer (datasets' IterableDataset.shuffle, "
                                         "seeded).")
    # fmt: on
