"""Each preference loss computes its own formula (LLaMA-Factory's stage dpo keys, TRL's KTO, the
Bradley-Terry reward loss), checked against hand computations in plain `math`; sequence log-probs
equal a direct computation from full logits on both the chunked and the fallback path."""

from __future__ import annotations

import math

import pytest
import torch
from peft import PromptTuningConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from peftflow.losses import supports_chunked_loss
from peftflow.preference_losses import (
    PREFERENCE_LOSSES,
    PreferenceSettings,
    kto_loss,
    length_normalised,
    pairwise_reward_loss,
    preference_loss,
    sequence_logps,
    uses_reference,
)

# one fixed batch of three pairs: per-row log-prob sums and label-token counts
CHOSEN, CHOSEN_N = [-12.0, -30.5, -8.25], [6, 10, 3]
REJECTED, REJECTED_N = [-15.0, -22.0, -9.5], [5, 8, 4]
REF_CHOSEN, REF_REJECTED = [-13.5, -29.0, -20.0], [-14.0, -25.5, -10.25]
BETA, GAMMA = 0.1, 0.5
ROWS = range(3)


def _t(values):
    return torch.tensor(values, dtype=torch.float64)


def _terms(loss, with_reference=True, **settings):
    refs = (_t(REF_CHOSEN), _t(REF_REJECTED)) if with_reference else (None, None)
    args = (_t(CHOSEN), _t(CHOSEN_N), _t(REJECTED), _t(REJECTED_N))
    return preference_loss(PreferenceSettings(loss=loss, beta=BETA, simpo_gamma=GAMMA, **settings), *args, *refs)


def _logsigmoid(x):
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def _sums(i):
    return CHOSEN[i], REJECTED[i], REF_CHOSEN[i], REF_REJECTED[i]


def _averages(i):
    pc, pr, rc, rr = _sums(i)
    return pc / CHOSEN_N[i], pr / REJECTED_N[i], rc / CHOSEN_N[i], rr / REJECTED_N[i]


def _expected(loss, i, ls=0.0):
    """The per-row loss by hand, from the formulas LLaMA-Factory documents."""
    if loss in ("sigmoid", "hinge"):
        pc, pr, rc, rr = _sums(i)
        z = (pc - rc) - (pr - rr)
        if loss == "hinge":
            return max(0.0, 1 - BETA * z)
        return -_logsigmoid(BETA * z) * (1 - ls) - _logsigmoid(-BETA * z) * ls
    pc, pr, rc, rr = _averages(i)
    if loss == "ipo":
        return ((pc - rc) - (pr - rr) - 1 / (2 * BETA)) ** 2
    if loss == "simpo":
        return -_logsigmoid(BETA * ((pc - pr) - GAMMA / BETA))
    log_odds = (pc - pr) - (math.log1p(-math.exp(pc)) - math.log1p(-math.exp(pr)))
    return -pc + BETA * -_logsigmoid(log_odds)


CASES = [("sigmoid", 0.0), ("sigmoid", 0.2), ("hinge", 0.0), ("ipo", 0.0), ("orpo", 0.0), ("simpo", 0.0)]


@pytest.mark.parametrize("loss,ls", CASES)
def test_each_loss_computes_its_formula(loss, ls):
    terms = _terms(loss, label_smoothing=ls)
    assert terms.losses.tolist() == pytest.approx([_expected(loss, i, ls) for i in ROWS], rel=1e-6)


def test_the_losses_differ_on_the_same_batch():
    values = {case: _terms(case[0], label_smoothing=case[1]).losses for case in CASES}
    for a in CASES:
        for b in CASES:
            if a < b:
                assert not torch.allclose(values[a], values[b], rtol=1e-3), (a, b)


def test_the_batch_puts_the_hinge_on_both_sides_of_its_kink():
    # rows 0 and 1 check 1 - beta * z, row 2 (beta * z > 1) the clipping at zero
    assert [_expected("hinge", i) > 0 for i in ROWS] == [True, True, False]
    assert _terms("hinge").losses.tolist() == pytest.approx([0.75, 1.5, 0.0], rel=1e-6)


def test_orpo_reports_its_two_parts():
    terms = _terms("orpo", with_reference=False)
    sft = [-_averages(i)[0] for i in ROWS]
    assert terms.sft_loss.tolist() == pytest.approx(sft, rel=1e-6)
    odds = [(_expected("orpo", i) - sft[i]) / BETA for i in ROWS]
    assert terms.odds_ratio_loss.tolist() == pytest.approx(odds, rel=1e-6)
    assert _terms("sigmoid").sft_loss is None


@pytest.mark.parametrize("loss", PREFERENCE_LOSSES)
def test_pref_ftx_adds_the_chosen_average_nll(loss):
    plain, with_ftx = _terms(loss).losses, _terms(loss, ftx=0.3).losses
    added = [0.3 * -(CHOSEN[i] / CHOSEN_N[i]) for i in ROWS]
    assert (with_ftx - plain).tolist() == pytest.approx(added, rel=1e-6)


@pytest.mark.parametrize("loss", ["sigmoid", "hinge", "ipo"])
def test_rewards_against_the_reference(loss):
    terms = _terms(loss)
    values = _averages if loss == "ipo" else _sums
    assert terms.chosen_rewards.tolist() == pytest.approx(
        [BETA * (values(i)[0] - values(i)[2]) for i in ROWS], rel=1e-6
    )
    assert terms.rejected_rewards.tolist() == pytest.approx(
        [BETA * (values(i)[1] - values(i)[3]) for i in ROWS], rel=1e-6
    )


@pytest.mark.parametrize("loss", ["orpo", "simpo"])
def test_rewards_without_reference_are_beta_times_the_average(loss):
    terms = _terms(loss, with_reference=False)
    assert terms.chosen_rewards.tolist() == pytest.approx([BETA * _averages(i)[0] for i in ROWS], rel=1e-6)
    assert terms.rejected_rewards.tolist() == pytest.approx([BETA * _averages(i)[1] for i in ROWS], rel=1e-6)


def test_rewards_are_detached_and_the_loss_is_not():
    chosen = _t(CHOSEN).requires_grad_()
    terms = preference_loss(
        PreferenceSettings(), chosen, _t(CHOSEN_N), _t(REJECTED), _t(REJECTED_N), _t(REF_CHOSEN), _t(REF_REJECTED)
    )
    assert terms.losses.requires_grad and not terms.chosen_rewards.requires_grad
    terms.losses.sum().backward()
    assert chosen.grad is not None and bool((chosen.grad != 0).all())


@pytest.mark.parametrize("loss", PREFERENCE_LOSSES)
def test_a_missing_reference_raises_only_where_one_is_needed(loss):
    assert uses_reference(loss) == (loss not in ("orpo", "simpo"))
    assert length_normalised(loss) == (loss in ("ipo", "orpo", "simpo"))
    if uses_reference(loss):
        with pytest.raises(ValueError, match="reference"):
            _terms(loss, with_reference=False)
    else:
        without = _terms(loss, with_reference=False).losses
        assert without.tolist() == pytest.approx([_expected(loss, i) for i in ROWS], rel=1e-6)


def test_settings_refuse_unknown_losses_and_bad_values():
    for bad in ({"loss": "dpo"}, {"beta": 0.0}, {"label_smoothing": 0.7}, {"ftx": -1.0}):
        with pytest.raises(ValueError):
            PreferenceSettings(**bad)


def test_orpo_stays_finite_when_an_average_log_prob_rounds_to_zero():
    chosen = torch.tensor([0.0, -1e-9], dtype=torch.float32, requires_grad=True)
    rejected = torch.tensor([-2.0, -3.0], dtype=torch.float32)
    counts = torch.tensor([4, 4])
    terms = preference_loss(PreferenceSettings(loss="orpo"), chosen, counts, rejected, counts)
    terms.losses.sum().backward()
    assert torch.isfinite(terms.losses).all() and torch.isfinite(chosen.grad).all()


# --- kto and rm ---------------------------------------------------------------------------------


def _sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_kto_by_hand():
    chosen, rejected, kl, beta = [0.5, -1.2], [0.3, 2.0, -0.7], 0.2, 0.1
    losses, chosen_rewards, rejected_rewards = kto_loss(_t(chosen), _t(rejected), torch.tensor(kl), beta, 1.0, 1.33)
    expected = [1.0 * (1 - _sigmoid(beta * (c - kl))) for c in chosen]
    expected += [1.33 * (1 - _sigmoid(beta * (kl - r))) for r in rejected]
    assert losses.tolist() == pytest.approx(expected, rel=1e-6)
    assert chosen_rewards.tolist() == pytest.approx([beta * c for c in chosen], rel=1e-6)
    assert rejected_rewards.tolist() == pytest.approx([beta * r for r in rejected], rel=1e-6)


def test_kto_clamps_and_detaches_the_kl_and_takes_an_empty_side():
    chosen, rejected = _t([0.5, -1.2]), _t([0.3])
    negative = torch.tensor(-0.4, dtype=torch.float64, requires_grad=True)
    clamped, _, _ = kto_loss(chosen, rejected, negative, 0.1, 1.0, 1.0)
    zero, _, _ = kto_loss(chosen, rejected, 0.0, 0.1, 1.0, 1.0)
    assert clamped.tolist() == pytest.approx(zero.tolist(), rel=1e-12) and not clamped.requires_grad
    only_rejected, chosen_rewards, _ = kto_loss(_t([]), rejected, 0.2, 0.1, 1.0, 1.5)
    assert only_rejected.tolist() == pytest.approx([1.5 * (1 - _sigmoid(0.1 * (0.2 - 0.3)))], rel=1e-6)
    assert chosen_rewards.numel() == 0


def test_pairwise_reward_loss_by_hand():
    chosen, rejected = [1.5, -0.2, 0.0], [0.5, 0.3, 0.0]
    losses, accuracy = pairwise_reward_loss(_t(chosen), _t(rejected))
    assert losses.tolist() == pytest.approx([-_logsigmoid(c - r) for c, r in zip(chosen, rejected)], rel=1e-6)
    assert accuracy.tolist() == [1.0, 0.0, 0.0]


# --- sequence log-probabilities on a tiny random model -----------------------------------------


def _tiny_model():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    return LlamaForCausalLM(config)


def _batch():
    torch.manual_seed(1)
    ids = torch.randint(0, 64, (4, 12))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0  # right padding
    labels = ids.clone()
    labels[:, :4] = -100  # masked prompt
    labels[mask == 0] = -100
    labels[2] = -100  # a row with nothing to learn
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _direct(logits, labels):
    """Sums and counts position by position from full logits: label t is predicted at t - 1."""
    logps = torch.log_softmax(logits.float(), dim=-1)
    sums, counts = [], []
    for row in range(labels.shape[0]):
        picked = [logps[row, t - 1, labels[row, t]] for t in range(1, labels.shape[1]) if labels[row, t] != -100]
        sums.append(float(sum(picked)) if picked else 0.0)
        counts.append(len(picked))
    return sums, counts


def test_chunked_sequence_logps_equal_the_full_logits_and_carry_gradients():
    model, batch = _tiny_model(), _batch()
    assert supports_chunked_loss(model)
    with torch.no_grad():
        expected, counts = _direct(
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, batch["labels"]
        )
    assert sum(counts) > 3 * 4  # chunks of 4 positions: several, and rows that span two
    sums, ours_counts = sequence_logps(model, batch, chunk_positions=4)
    assert ours_counts.tolist() == counts
    assert sums.tolist() == pytest.approx(expected, abs=1e-5)
    sums.sum().backward()
    for param in (model.model.layers[0].self_attn.q_proj.weight, model.lm_head.weight):
        assert param.grad is not None and param.grad.abs().sum() > 0


def test_fallback_sequence_logps_equal_the_full_logits_and_carry_gradients():
    # prompt tuning: logits come from PeftModel.forward (with virtual tokens first), not head(decoder)
    model = get_peft_model(_tiny_model(), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3))
    batch = _batch()
    assert not supports_chunked_loss(model)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert logits.shape[1] == batch["input_ids"].shape[1] + 3
    expected, counts = _direct(logits[:, 3:], batch["labels"])
    sums, ours_counts = sequence_logps(model, batch, chunk_positions=4)
    assert ours_counts.tolist() == counts
    assert sums.tolist() == pytest.approx(expected, abs=1e-5)
    sums.sum().backward()
    prompt = next(p for n, p in model.named_parameters() if p.requires_grad)
    assert prompt.grad is not None and prompt.grad.abs().sum() > 0
