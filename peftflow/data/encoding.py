"""The rows read (reading.py) tokenised with `datasets.map`: batched, in `preprocessing_num_workers`
processes, written as Arrow as they go. A conversation row is templated, masked and cut at
cutoff_len (a pair's rejected side beside it); a row left with nothing to learn is marked with why
it is dropped, not removed, so the report can name it. Plain text is tokenised document by document
and cut into blocks by blocks.py.
"""

from __future__ import annotations

import json

from peftflow.config import RunConfig
from peftflow.data.fingerprint import encode_options
from peftflow.data.reading import empty_table
from peftflow.data.tokenize import ChatEncoder, cut, supervised

CUTOFF_DROP = "no supervised tokens within cutoff_len"
IMAGE_CUT_DROP = "cutoff_len cuts through an image"
# Beside the columns prepare writes, an encoded row carries BOOKKEEPING, for the report and the split.
BOOKKEEPING = ["where", "drop", "length", "truncated", "supervised", "images_count"]


def map_options(cfg: RunConfig, fingerprint: str, step: str) -> dict:
    """datasets.map's keywords: batches and processes as configured, no hashing of the function
    (the prepared data's fingerprint already names everything that shapes the output)."""
    return {
        "batched": True,
        "batch_size": cfg.preprocessing_batch_size,
        "num_proc": cfg.preprocessing_num_workers,
        "new_fingerprint": f"{fingerprint}-{step}",
        "load_from_cache_file": False,
        "desc": step,
    }


def encoded_features(pairs: bool, feedback: bool, images: bool):
    from datasets import Features, List, Value

    ids = List(Value("int64"))
    columns = {"input_ids": ids, "labels": ids, "prompt_ids": ids, "reference": Value("string")}
    columns |= {"rejected_input_ids": ids, "rejected_labels": ids} if pairs else {}
    columns |= {"kto_tag": Value("bool")} if feedback else {}
    columns |= {"images": List(Value("binary"))} if images else {}
    return Features(
        columns
        | {
            "where": Value("string"),
            "drop": Value("string"),  # "" for a kept row, else why it is dropped
            "length": Value("int64"),  # tokens before the cut (a pair: its longer side)
            "truncated": Value("bool"),
            "supervised": Value("int64"),  # learned tokens of the (chosen) row
            "images_count": Value("int64"),
        }
    )


class EncodeRows:
    """The map function: a batch of read rows to encoded columns (picklable, for map's processes)."""

    def __init__(self, cfg: RunConfig, model_path: str, pairs: bool, feedback: bool, images: bool):
        self.encoder = ChatEncoder(model_path, cfg.template, cfg.trust_remote_code, encode_options(cfg))
        self.cutoff_len, self.train_on_prompt, self.mask_history = cfg.cutoff_len, cfg.train_on_prompt, cfg.mask_history
        self.pairs, self.feedback, self.images = pairs, feedback, images

    def _encode(self, conversations):
        return self.encoder.encode(conversations, self.train_on_prompt, self.mask_history)

    def __call__(self, batch: dict) -> dict:
        conversations = [json.loads(c) for c in batch["conversation"]]
        encoded = self._encode(conversations)
        # a pair's rejected side: the same prompt, the other answer
        rejected = (
            self._encode([c[:-1] + [json.loads(r)] for c, r in zip(conversations, batch["rejected"])])
            if self.pairs
            else encoded
        )
        image_id, per_image = self.encoder.image_token_id, self.encoder.tokens_per_image
        image_tokens = [len(images) * per_image for images in batch["images"]]
        out = {name: [] for name in encoded_features(self.pairs, self.feedback, self.images)}
        for i, (row, other) in enumerate(zip(encoded, rejected)):
            images = batch["images"][i]
            out["length"].append(max(len(row.input_ids), len(other.input_ids) if self.pairs else 0))
            row, truncated = cut(row, self.cutoff_len)
            other, other_truncated = cut(other, self.cutoff_len) if self.pairs else (row, False)
            # The model needs every feature of every image: a row cut inside its image tokens cannot train.
            if images and not row.input_ids.count(image_id) == row.prompt_ids.count(image_id) == image_tokens[i]:
                drop = IMAGE_CUT_DROP
            elif supervised(row) and supervised(other):
                drop = ""
            else:
                drop = CUTOFF_DROP
            out["input_ids"].append(row.input_ids)
            out["labels"].append(row.labels)
            out["prompt_ids"].append(row.prompt_ids)
            out["reference"].append(row.reference)
            if self.pairs:
                out["rejected_input_ids"].append(other.input_ids)
                out["rejected_labels"].append(other.labels)
            if self.feedback:
                out["kto_tag"].append(batch["kto_tag"][i])
            if self.images:
                out["images"].append(images)
            out["where"].append(batch["where"][i])
            out["drop"].append(drop)
            out["truncated"].append(bool(truncated or other_truncated))
            out["supervised"].append(supervised(row))
            out["images_count"].append(len(images))
        return out


def encode_rows(table, encode: EncodeRows, cfg: RunConfig, fingerprint: str):
    """`table`'s rows encoded (reading.py's columns in, encoded_features out)."""
    features = encoded_features(encode.pairs, encode.feedback, encode.images)
    if not len(table):  # map gives an empty table no columns
        return empty_table(features)
    return table.map(
        encode, remove_columns=table.column_names, features=features, **map_options(cfg, fingerprint, "tokenising")
    )
