"""Encode a conversation with a table template (template_table.py) the way LLaMA-Factory 0.9.5 does.

Message i becomes the pieces of its role's slot (message 0 also gets the prefix and the system
slot, or, for a fused-system template, the system text inside its user slot); each text piece is
tokenised on its own. Messages pair up as (prompt, answer). Labels follow LLaMA-Factory's
supervised processor: prompt pieces are masked unless train_on_prompt; with mask_history only
the last answer is learned; an efficient_eos template writes no eos after an answer, so the eos
is learned as the label of the next prompt's first position and appended at the end.

A turn's `loss_weight` (v1 rows) decides on its own: 1 learns it (a prompt turn too), 0 masks it.

Reasoning templates: with enable_thinking false, thinking blocks are removed from answers; an
answer without a thinking block gets an empty one, in the prompt (masked) when enable_thinking
is false, in the answer (learned) when true. With mask_history (and not preserve_thinking) only
the last answer keeps its thinking block and gets the empty one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from peftflow.data.template_table import BOS, EOS, TableTemplate
from peftflow.data.tool_formats import function_text, tools_text
from peftflow.errors import UserError

IGNORE = -100


@dataclass(frozen=True)
class Layout:
    """How an encoded row is built, for cutting it as LLaMA-Factory does."""

    pairs: tuple[tuple[int, int], ...]  # (prompt tokens, answer tokens) per pair, in order
    efficient_eos: bool  # one eos appended at the end
    last_first: bool  # mask_history: the budget goes to the last pairs first


@dataclass(frozen=True)
class Options:
    train_on_prompt: bool = False
    mask_history: bool = False
    enable_thinking: bool = True
    preserve_thinking: bool = False
    tool_format: str | None = None  # overrides the template's
    default_system: str | None = None  # overrides the template's


def stop_words_eos(template: TableTemplate, tokenizer) -> int:
    """The eos id the template writes: its first stop word when it replaces eos, else the tokenizer's."""
    if template.replace_eos:
        return tokenizer.convert_tokens_to_ids(template.stop_words[0])
    return tokenizer.eos_token_id


def _fill(slot: tuple[str, ...], content: str) -> list[str]:
    return [piece.replace("{{content}}", content, 1) for piece in slot]


def _remove_thought(template: TableTemplate, content: str) -> str:
    start, end = template.thought_words
    return re.sub(f"{re.escape(start)}(.*?){re.escape(end)}", "", content, flags=re.DOTALL).lstrip("\n")


def _has_thought(template: TableTemplate, content: str) -> bool:
    start, end = (w.strip() for w in template.thought_words)
    return start in content or end in content


class SlotEncoder:
    def __init__(self, tokenizer, template: TableTemplate, options: Options):
        if template.efficient_eos and options.train_on_prompt:  # its eos is learned at a prompt position
            raise UserError(
                f"template '{template.name}' does not support train_on_prompt (its answers end with efficient_eos)"
            )
        self.tok, self.t, self.o = tokenizer, template, options
        self.eos = stop_words_eos(template, tokenizer)
        self.tool_format = options.tool_format or template.tool_format
        system = options.default_system
        self.default_system = template.default_system if system is None else system

    def _ids(self, pieces: list[str], tokens: dict[str, list[int]]) -> list[int]:
        """The ids of a message's pieces, each text piece tokenised on its own (`tokens`: text -> ids)."""
        ids = []
        for piece in pieces:
            if piece == BOS:
                ids += [self.tok.bos_token_id] if self.tok.bos_token_id is not None else []
            elif piece == EOS:
                ids.append(self.eos)
            elif piece:
                ids += tokens[piece]
        return ids

    def _message(self, i: int, message: dict, system: str, tools: list[dict]) -> list[str]:
        t, pieces, fused = self.t, [], ""
        if i == 0:
            pieces += list(t.prefix)
            if system or tools:
                text = system + tools_text(self.tool_format, tools)
                if t.fuse_system:
                    fused = _fill(t.system, text)[0]
                else:
                    pieces += _fill(t.system, text)
        role, content = message["role"], message["content"]
        if role == "user":
            return pieces + _fill(t.user, fused + content)
        if role == "observation":
            return pieces + _fill(t.observation, content)
        if role == "function":  # a fused-system template does not look for thoughts in a call
            words = None if t.fuse_system else t.thought_words
            return pieces + _fill(t.function, function_text(self.tool_format, content, words))
        return pieces + _fill(t.assistant, content)

    def encode(
        self, conversations: list[list[dict]], expand=lambda ids: ids
    ) -> list[tuple[list[int], list[int], list[int], Layout]]:
        """(input_ids, labels, prompt_ids, layout) of each conversation; `expand` rewrites each
        message's ids (image placeholders). prompt_ids ends where the last answer starts. Every
        distinct text piece of the batch is tokenised once, in one call."""
        planned = [self._pieces(c) for c in conversations]
        texts = {p for _, pieces, _ in planned for message in pieces for p in message if p not in (BOS, EOS, "")}
        think = self.t.thought_words[0] + self.t.thought_words[1] if self.t.reasoning else ""
        texts = sorted(texts | ({think} if think else set()))
        tokens = dict(zip(texts, self.tok(texts, add_special_tokens=False)["input_ids"])) if texts else {}
        return [self._assemble(m, p, turns, tokens, expand) for m, p, turns in planned]

    def _pieces(self, conversation: list[dict]) -> tuple[list[dict], list[list[str]], list[int]]:
        """The messages (thoughts handled), each one's text pieces, and the prompts that get an empty thought."""
        system = next((m["content"] for m in conversation if m["role"] == "system"), "") or self.default_system
        tools = next((m["tools"] for m in conversation if m["role"] == "tools"), [])
        messages = [dict(m) for m in conversation if m["role"] not in ("system", "tools")]
        turns = self._thinking(messages)
        return messages, [self._message(i, m, system, tools) for i, m in enumerate(messages)], turns

    def _assemble(self, messages, pieces, turns, tokens, expand) -> tuple[list[int], list[int], list[int], Layout]:
        encoded = [expand(self._ids(p, tokens)) for p in pieces]
        think_ids = self._ids([self.t.thought_words[0] + self.t.thought_words[1]], tokens) if self.t.reasoning else []
        for i in turns:
            if not _has_thought(self.t, messages[i + 1]["content"]):
                if self.o.enable_thinking:
                    encoded[i + 1] = think_ids + encoded[i + 1]
                else:
                    encoded[i] = encoded[i] + think_ids
        weights = [m.get("loss_weight") for m in messages]  # v1 rows: 0 masks a turn, 1 learns it
        return self._label(list(zip(encoded[0::2], encoded[1::2])), list(zip(weights[0::2], weights[1::2])))

    def _thinking(self, messages: list[dict]) -> list[int]:
        """Strip thoughts as configured; the prompt indices whose answer gets an empty thought."""
        if not self.t.reasoning:
            return []
        answers = range(1, len(messages), 2)
        if not self.o.enable_thinking:
            for i in answers:
                messages[i]["content"] = _remove_thought(self.t, messages[i]["content"])
        if self.o.mask_history and not self.o.preserve_thinking:
            for i in answers[:-1]:
                messages[i]["content"] = _remove_thought(self.t, messages[i]["content"])
            return [len(messages) - 2]
        return list(range(0, len(messages), 2))

    def _label(
        self, pairs: list[tuple[list[int], list[int]]], weights: list[tuple]
    ) -> tuple[list[int], list[int], list[int], Layout]:
        o, n = self.o, len(pairs)
        input_ids, labels = [], []
        for k, ((source, target), (source_weight, target_weight)) in enumerate(zip(pairs, weights)):
            turn_idx = n - 1 - k if o.mask_history else k  # LLaMA-Factory walks the pairs last-first then
            if o.train_on_prompt or source_weight == 1:
                source_label = source
            elif self.t.efficient_eos and turn_idx != 0:
                source_label = [self.eos] + [IGNORE] * (len(source) - 1)
            else:
                source_label = [IGNORE] * len(source)
            masked = (o.mask_history and turn_idx != 0) or target_weight == 0
            target_label = [IGNORE] * len(target) if masked else target
            input_ids += source + target
            labels += source_label + target_label
        prompt_ids = input_ids[: len(input_ids) - len(pairs[-1][1])]
        if self.t.efficient_eos:
            input_ids, labels = input_ids + [self.eos], labels + [self.eos]
        layout = Layout(tuple((len(s), len(t)) for s, t in pairs), self.t.efficient_eos, o.mask_history)
        return input_ids, labels, prompt_ids, layout


def _pair_lengths(source: int, target: int, budget: int) -> tuple[int, int]:
    """LLaMA-Factory's infer_seqlen: how much of a (prompt, answer) pair fits in `budget` tokens.
    A short answer is kept whole; else a short prompt is; else both shrink in proportion."""
    if target * 2 < budget:
        max_target = budget
    elif source * 2 < budget:
        max_target = budget - source
    else:
        max_target = int(budget * (target / (source + target)))
    new_target = min(max_target, target)
    return min(max(budget - new_target, 0), source), new_target


def truncate(input_ids: list[int], labels: list[int], layout: Layout, cutoff_len: int) -> tuple[list[int], list[int]]:
    """Cut a row to cutoff_len as LLaMA-Factory's supervised processor does: pair by pair (the last
    first with mask_history), each pair's prompt and answer shortened at their ends; pairs beyond
    the budget are dropped."""
    starts, at = [], 0
    for source, target in layout.pairs:
        starts.append(at)
        at += source + target
    total, kept = int(layout.efficient_eos), {}
    order = range(len(layout.pairs) - 1, -1, -1) if layout.last_first else range(len(layout.pairs))
    for k in order:
        if total >= cutoff_len:
            break
        source, target = layout.pairs[k]
        kept[k] = _pair_lengths(source, target, cutoff_len - total)
        total += sum(kept[k])
    ids, out = [], []
    for k in sorted(kept):
        s0, (source, _), (new_source, new_target) = starts[k], layout.pairs[k], kept[k]
        for lo, n in ((s0, new_source), (s0 + source, new_target)):
            ids, out = ids + input_ids[lo : lo + n], out + labels[lo : lo + n]
    if layout.efficient_eos:
        ids, out = ids + input_ids[-1:], out + labels[-1:]
    return ids, out
