"""Plain text for continued pre-training (`stage: pt`), prepared as LLaMA-Factory's pt prepares it:
each document tokenised without a template (a bos first when the tokenizer adds one, the tokenizer's
eos last), every document concatenated into one stream, and the stream cut into blocks of
cutoff_len tokens; the tail shorter than a block is dropped. Every token of a block is learned."""

from __future__ import annotations

from dataclasses import dataclass

from peftflow.data.tokenize import EncodedRow
from peftflow.errors import UserError


@dataclass(frozen=True)
class Blocks:
    rows: list[EncodedRow]  # one per block of cutoff_len tokens, in stream order
    lengths: list[int]  # tokens per document, its bos and eos included
    tail_tokens: int  # tokens after the last whole block, dropped


def text_blocks(tokenizer, texts: list[str], cutoff_len: int, model_path: str) -> Blocks:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise UserError(f"stage: pt: the tokenizer at {model_path} has no eos_token to end each text with")
    bos = [tokenizer.bos_token_id] if _adds_bos(tokenizer) else []
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    documents = [bos + d + [eos] for d in ids]
    stream = [token for d in documents for token in d]
    whole = len(stream) // cutoff_len * cutoff_len
    rows = [_block(tokenizer, stream[i : i + cutoff_len]) for i in range(0, whole, cutoff_len)]
    return Blocks(rows, [len(d) for d in documents], len(stream) - whole)


def _block(tokenizer, ids: list[int]) -> EncodedRow:
    # A block has no prompt or answer of its own. For the held-out generation metric its first half
    # is the prompt and its second half, decoded, the reference the continuation is scored against;
    # the held-out loss, like training, is over every token (labels = input_ids).
    half = len(ids) // 2
    return EncodedRow(ids, list(ids), ids[:half], tokenizer.decode(ids[half:], skip_special_tokens=True))


def _adds_bos(tokenizer) -> bool:
    """Whether the tokenizer starts a text with its bos token (LLaMA-Factory's pt then does too)."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [bos]
