"""Plain text for continued pre-training (`stage: pt`), prepared as LLaMA-Factory's pt prepares it:
each document tokenised without a template (a bos first when the tokenizer adds one, the tokenizer's
eos last), every document concatenated into one stream, and the stream cut into blocks of
cutoff_len tokens; the tail shorter than a block is dropped. Every token of a block is learned.

Documents are tokenised with `datasets.map` (encoding.map_options); the blocks are cut from them in
order by a generator, so neither the documents nor the stream is ever all in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from peftflow.config import RunConfig
from peftflow.data.encoding import map_options
from peftflow.data.reading import write_table
from peftflow.data.tokenize import load_tokenizer
from peftflow.errors import UserError


@dataclass
class Blocks:
    table: object  # datasets.Dataset: one row per block of cutoff_len tokens, in stream order
    lengths: list[int]  # tokens per document, its bos and eos included
    tail_tokens: int = 0  # tokens after the last whole block, dropped


class TokeniseDocuments:
    """The map function: a batch of documents to their token ids, bos and eos included."""

    def __init__(self, tokenizer, model_path: str):
        self.tokenizer, self.eos = tokenizer, tokenizer.eos_token_id
        if self.eos is None:
            raise UserError(f"stage: pt: the tokenizer at {model_path} has no eos_token to end each text with")
        self.bos = [tokenizer.bos_token_id] if _adds_bos(tokenizer) else []

    def __call__(self, batch: dict) -> dict:
        ids = self.tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
        return {"document": [self.bos + d + [self.eos] for d in ids]}


def text_blocks(table, cfg: RunConfig, model_path: str, fingerprint: str, scratch: Path) -> Blocks:
    """`table`'s documents (reading.py's `text` column), cut into blocks of cfg.cutoff_len."""
    from datasets import Features, List, Value

    tokenizer = load_tokenizer(model_path, cfg.trust_remote_code)
    documents = table.map(
        TokeniseDocuments(tokenizer, model_path),
        remove_columns=table.column_names,
        features=Features({"document": List(Value("int64"))}),
        **map_options(cfg, fingerprint, "tokenising"),
    )
    lengths = [len(d) for batch in documents.iter(batch_size=1000) for d in batch["document"]]
    blocks = Blocks(None, lengths)
    ids = List(Value("int64"))
    blocks.table = write_table(
        _cut(tokenizer, documents, cfg.cutoff_len, blocks),
        Features({"input_ids": ids, "labels": ids, "prompt_ids": ids, "reference": Value("string")}),
        scratch / "blocks.arrow",
    )
    return blocks


def _cut(tokenizer, documents, cutoff_len: int, blocks: Blocks) -> Iterator[dict]:
    stream: list[int] = []
    for batch in documents.iter(batch_size=1000):
        for document in batch["document"]:
            stream += document
            while len(stream) >= cutoff_len:
                yield _block(tokenizer, stream[:cutoff_len])
                del stream[:cutoff_len]
    blocks.tail_tokens = len(stream)


def _block(tokenizer, ids: list[int]) -> dict:
    # A block has no prompt or answer of its own. For the held-out generation metric its first half
    # is the prompt and its second half, decoded, the reference the continuation is scored against;
    # the held-out loss, like training, is over every token (labels = input_ids).
    half = len(ids) // 2
    return {
        "input_ids": ids,
        "labels": list(ids),
        "prompt_ids": ids[:half],
        "reference": tokenizer.decode(ids[half:], skip_special_tokens=True),
    }


def _adds_bos(tokenizer) -> bool:
    """Whether the tokenizer starts a text with its bos token (LLaMA-Factory's pt then does too)."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [bos]
