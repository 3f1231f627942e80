"""Packing (`packing` / `neat_packing`): the knapsack, the packed rows, their collator and attention.

The equivalence test is the one that matters: each example's summed loss in a packed batch equals
its loss alone under neat packing, through peftflow's collator and both loss paths, on sdpa and
eager; under plain packing it does not (the examples packed after another one see it)."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F
from datasets import load_from_disk
from transformers import AutoModelForCausalLM

from peftflow.config import RunConfig, parse_config
from peftflow.data import prepare_dataset
from peftflow.data.packing import Packed, knapsack, packed_rows
from peftflow.data.prepare import prepared_report
from peftflow.errors import UserError
from peftflow.losses import supervised_ce
from peftflow.training.collator import PackedCollator
from peftflow.training.run import run as train_run

IGNORE = -100
CUTOFF = 48


def _examples(n: int = 9, seed: int = 0) -> tuple[list[list[int]], list[list[int]]]:
    """Rows of 6 to 30 tokens; the first third (the prompt) masked, the rest learned."""
    rng = random.Random(seed)
    ids, labels = [], []
    for _ in range(n):
        row = [rng.randrange(10, 1000) for _ in range(rng.randrange(6, 31))]
        prompt = len(row) // 3
        ids.append(row)
        labels.append([IGNORE] * prompt + row[prompt:])
    return ids, labels


def _packed_features(ids, labels):
    """The rows packed as prepare packs them: knapsack bins, read from an Arrow table."""
    from datasets import Dataset

    bins = knapsack([len(r) for r in ids], CUTOFF)
    return list(packed_rows(Dataset.from_dict({"input_ids": ids, "labels": labels}), bins)), bins


def _alone(model, ids, labels) -> list[float]:
    """Each example's summed token cross-entropy, the example alone in its batch."""
    out = []
    for row, lab in zip(ids, labels):
        batch = {"input_ids": torch.tensor([row]), "attention_mask": torch.ones(1, len(row), dtype=torch.long)}
        out.append(float(supervised_ce(model, batch | {"labels": torch.tensor([lab])}, num_items_in_batch=1)))
    return out


def _segments(batch) -> torch.Tensor:
    """Per token, the index of its example within its packed row (a new one at each position 0)."""
    return (batch["position_ids"] == 0).long().cumsum(-1) - 1


def _in_batch_chunked(model, batch, bins) -> dict[int, float]:
    """Each example's summed loss in the packed batch: peftflow's chunked loss with only its labels."""
    segments, out = _segments(batch), {}
    for r, members in enumerate(bins):
        for s, example in enumerate(members):
            labels = torch.full_like(batch["labels"], IGNORE)
            here = torch.zeros_like(labels, dtype=torch.bool)
            here[r] = segments[r] == s
            labels[here] = batch["labels"][here]
            out[example] = float(supervised_ce(model, batch | {"labels": labels}, num_items_in_batch=1))
    return out


def _in_batch_stock(model, batch, bins) -> dict[int, float]:
    """The same from the model's own forward (the stock loss path's logits), one forward."""
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
    token_loss = F.cross_entropy(logits[:, :-1].transpose(1, 2), batch["labels"][:, 1:], reduction="none")
    segments, out = _segments(batch)[:, 1:], {}
    for r, members in enumerate(bins):
        for s, example in enumerate(members):
            out[example] = float(token_loss[r][segments[r] == s].sum())
    return out


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def model(request, tiny_model):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation=request.param).eval()
    assert model.config._attn_implementation == request.param
    return model


def test_neat_packing_gives_each_example_its_own_loss_and_plain_packing_does_not(model):
    ids, labels = _examples()
    features, bins = _packed_features(ids, labels)
    alone = _alone(model, ids, labels)
    neat = PackedCollator(pad_token_id=0, neat=True)(features)
    # the batch is what the test is about: several packed rows, some holding several examples, padding
    assert len(bins) > 1 and max(map(len, bins)) > 1 and (neat["position_ids"] == 0).sum() > len(ids)
    assert "attention_mask" not in neat
    with torch.no_grad():
        for in_batch in (_in_batch_chunked(model, neat, bins), _in_batch_stock(model, neat, bins)):
            for example, loss in in_batch.items():
                assert loss == pytest.approx(alone[example], rel=1e-4, abs=1e-3), example
        plain = PackedCollator(pad_token_id=0, neat=False)(features)
        contaminated = _in_batch_chunked(model, plain, bins)
    later = [e for members in bins for e in members[1:]]  # examples packed after another one
    firsts = [members[0] for members in bins]
    assert all(contaminated[e] == pytest.approx(alone[e], rel=1e-4, abs=1e-3) for e in firsts)
    assert all(abs(contaminated[e] - alone[e]) > 1e-2 for e in later), [(contaminated[e], alone[e]) for e in later]


def test_neat_packing_holds_under_bf16_autocast_and_gradient_checkpointing(tiny_model):
    """The training-time forward: train mode, checkpointed layers, bf16 matmuls (the mask is built by
    transformers inside the decoder, in the dtype its attention takes)."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="sdpa").train()
    model.gradient_checkpointing_enable()
    ids, labels = _examples(seed=1)
    features, bins = _packed_features(ids, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        alone = _alone(model, ids, labels)
        neat = _in_batch_chunked(model, PackedCollator(pad_token_id=0, neat=True)(features), bins)
        plain = _in_batch_chunked(model, PackedCollator(pad_token_id=0, neat=False)(features), bins)
    later = [e for members in bins for e in members[1:]]
    neat_gap = max(abs(neat[e] - alone[e]) for e in later)
    plain_gap = max(abs(plain[e] - alone[e]) for e in later)
    assert neat_gap < plain_gap / 4 and neat_gap < 0.02 * max(alone), (neat_gap, plain_gap)


def test_knapsack_fills_bins_within_capacity_and_places_every_row_once():
    rng = random.Random(3)
    lengths = [rng.randrange(1, 65) for _ in range(500)]
    bins = knapsack(lengths, 64)
    assert sorted(i for b in bins for i in b) == list(range(500))
    assert all(sum(lengths[i] for i in b) <= 64 for b in bins)
    assert len(bins) < 1.15 * sum(lengths) / 64  # near the lower bound on the bin count
    assert knapsack([], 8) == []
    with pytest.raises(ValueError):
        knapsack([9], 8)


def test_packed_rows_restart_positions_mask_boundaries_and_keep_every_learned_token():
    ids, labels = _examples(n=40, seed=2)
    features, bins = _packed_features(ids, labels)
    packed = {key: [f[key] for f in features] for key in ("input_ids", "labels", "position_ids")}
    assert sum(map(len, packed["input_ids"])) == sum(map(len, ids)) and len(features) == len(bins)
    assert all(len(row) <= CUTOFF for row in packed["input_ids"])
    starts = 0
    for row_ids, row_labels, positions in zip(packed["input_ids"], packed["labels"], packed["position_ids"]):
        assert len(row_ids) == len(row_labels) == len(positions) and positions[0] == 0
        for at, p in enumerate(positions):
            if p == 0:
                starts += 1
                assert row_labels[at] == IGNORE  # never predicted from the previous example's last token
            else:
                assert p == positions[at - 1] + 1
    assert starts == 40
    # every token a row trains on alone (its labels after the first, the shift) is trained on packed
    learned_alone = sorted(t for lab in labels for t in lab[1:] if t != IGNORE)
    learned_packed = sorted(t for lab in packed["labels"] for t in lab if t != IGNORE)
    assert learned_packed == learned_alone
    assert 0 < Packed(40, len(features), sum(map(len, ids))).fill(CUTOFF) <= 1


def test_flash_attention_batches_are_one_row_without_padding_or_mask():
    """transformers' padding-free path (flash attention) reads packed position ids at batch size 1 only;
    flash attention itself is not installed here, so this checks the batch, not the kernel."""
    ids, labels = _examples()
    features, _ = _packed_features(ids, labels)
    batch = PackedCollator(pad_token_id=0, neat=True, flash=True)(features)
    assert batch["input_ids"].shape == (1, sum(map(len, ids))) and "attention_mask" not in batch
    assert int((batch["position_ids"] == 0).sum()) == len(ids) and batch["use_cache"] is False


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"stage": "dpo", "neat_packing": True}, "neat_packing"),
        ({"stage": "kto", "packing": True}, "packing"),
        ({"stage": "pt", "packing": False}, "packing"),
        ({"finetuning_type": "prompt", "neat_packing": True}, "neat_packing"),
    ],
)
def test_packing_where_it_cannot_run_is_one_line_naming_the_key(raw, key):
    with pytest.raises(UserError) as refused:
        parse_config(raw, "run.yaml")
    message = str(refused.value)
    assert "\n" not in message and f"{key}:" in message, message


def test_neat_packing_on_a_model_without_a_position_id_mask_is_refused(tmp_path, tiny_model):
    from transformers import MambaConfig

    from peftflow.preflight import check_training_setup

    check_training_setup(RunConfig(model_name_or_path=tiny_model, neat_packing=True), tiny_model)  # Llama: fine
    MambaConfig(hidden_size=32, num_hidden_layers=1, vocab_size=64).save_pretrained(tmp_path)  # recurrent
    with pytest.raises(UserError) as e:
        check_training_setup(RunConfig(model_name_or_path=str(tmp_path), neat_packing=True), str(tmp_path))
    assert str(e.value).startswith(f"neat_packing: the model at {tmp_path} (MambaForCausalLM) does not build")
    check_training_setup(RunConfig(model_name_or_path=str(tmp_path)), str(tmp_path))  # unpacked: fine


def test_packing_keys_are_read_not_dropped():
    cfg, unused = parse_config({"neat_packing": True, "packing": None}, "run.yaml")
    assert cfg.neat_packing and not unused
    assert parse_config({"stage": "pt", "packing": True}, "run.yaml")[0].packing  # what pt does anyway


def test_neat_packing_prepares_packed_rows_and_trains(tiny_model, tmp_path):
    options = dict(model_name_or_path=tiny_model, cutoff_len=512, val_size=8, max_samples=40)
    plain = prepare_dataset(RunConfig(**options), tiny_model)
    # evaluating during training too: the held-out rows, unpacked, go through the packed collator
    cfg = RunConfig(**options, neat_packing=True, max_steps=4, learning_rate=5e-3, save_steps=100, logging_steps=1,
                    per_device_train_batch_size=2, eval_strategy="steps", eval_steps=2)  # fmt: skip
    data = prepare_dataset(cfg, tiny_model)
    assert data.fingerprint != plain.fingerprint  # packed rows are their own cache entry
    assert (data.train_rows, data.eval_rows) == (plain.train_rows, plain.eval_rows) == (32, 8)
    train = load_from_disk(f"{data.path}/train")
    evaluation = load_from_disk(f"{data.path}/eval")
    assert "position_ids" in train.column_names and "position_ids" not in evaluation.column_names
    assert len(evaluation) == 8 and len(train) < 32 / 2  # held-out rows unpacked; several rows per sequence
    assert all(len(ids) <= 512 for ids in train["input_ids"])
    report = prepared_report(cfg, tiny_model, data)
    assert report.packed[:2] == (32, len(train)) and 0.5 < report.packed[2] <= 1
    assert f"packed: 32 training rows -> {len(train)} sequences of up to 512 tokens" in report.to_text()
    result = train_run(cfg, tiny_model, data.path, tmp_path)
    losses = [loss for _, loss in result.loss_history]
    assert result.steps == 4 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0], losses
    assert [step for step, _ in result.eval_history] == [2, 4]
