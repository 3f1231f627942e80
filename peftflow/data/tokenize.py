"""Render conversations with the chat template, tokenise, mask the prompt, cut at cutoff_len.

A table template (LLaMA-Factory's names) is encoded by slots.py. This module renders the
tokenizer's own Jinja template (`template: tokenizer`). Masking works on rendered prefixes: the
text of messages[:i] with the generation prompt must be a prefix of the text of messages[:i + 1],
so the difference is exactly the answer of turn i. Each piece is tokenised on its own (as
LLaMA-Factory does), so a piece boundary is a token boundary and the prompt an evaluation feeds
the model is token for token the one trained on.

An answer piece is the answer text, the end-of-turn token, then any glue the template writes
after it (ChatML's "\n"). The model learns the answer and the end-of-turn token; the glue is
prompt for the next turn and is masked, since generation stops at the end-of-turn token.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from peftflow.data.formats import Conversation
from peftflow.data.slots import Layout, Options, SlotEncoder, truncate
from peftflow.data.templates import check_table_template, get_template, resolve_jinja
from peftflow.data.tool_formats import function_text, tools_text
from peftflow.errors import UserError
from peftflow.models import vision

IGNORE = -100  # label of a token the loss skips
PROMPT, ANSWER, GLUE = "prompt", "answer", "glue"


@dataclass(frozen=True)
class EncodedRow:
    input_ids: list[int]
    labels: list[int]
    prompt_ids: list[int]  # the conversation up to its last answer, ending in the generation prompt
    reference: str  # the last answer's text
    layout: Layout | None = None  # table templates: how to cut it as LLaMA-Factory does


def load_tokenizer(model_path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise UserError(f"model at {model_path}: cannot load its tokenizer ({type(e).__name__})") from None


class ChatEncoder:
    def __init__(
        self,
        model_path: str,
        template: str,
        trust_remote_code: bool = False,
        options: Options = Options(),
        tokenizer=None,
    ):
        """`tokenizer`: the one at model_path, when the caller has it loaded already."""
        tokenizer = tokenizer if tokenizer is not None else load_tokenizer(model_path, trust_remote_code)
        self.tokenizer, self.template, self.options = tokenizer, template, options
        self.row = get_template(template)
        if self.row is None:
            self.jinja, self.end_of_turn = resolve_jinja(self.tokenizer, model_path)
        else:
            check_table_template(self.tokenizer, self.row, model_path)
            SlotEncoder(self.tokenizer, self.row, options)  # refuses options the template cannot take
        # A vision-language model expects each image placeholder repeated once per image feature.
        self.image_token_id, self.tokens_per_image = None, 0
        if vision.is_vision_language(model_path):
            self.image_token_id = vision.image_token(self.tokenizer)[1]
            self.tokens_per_image = vision.tokens_per_image(model_path, trust_remote_code)

    def _expand_images(self, ids: list[int]) -> list[int]:
        if self.image_token_id is None or self.image_token_id not in ids:
            return ids
        return [t for i in ids for t in ([i] * self.tokens_per_image if i == self.image_token_id else [i])]

    def encode(self, conversations: list[Conversation], train_on_prompt: bool, mask_history: bool) -> list[EncodedRow]:
        if not conversations:
            return []
        if self.row is not None:
            options = replace(self.options, train_on_prompt=train_on_prompt, mask_history=mask_history)
            slots = SlotEncoder(self.tokenizer, self.row, options)
            encoded = slots.encode(conversations, self._expand_images)
            return [self._slot_row(c, *row) for c, row in zip(conversations, encoded)]
        conversations = [_as_plain_chat(c) for c in conversations]
        if any(m.get("loss_weight") == 1 for c in conversations for m in c if m["role"] != "assistant"):
            raise UserError(
                f"template '{self.template}' cannot learn a prompt turn (loss_weight 1 on a user or tool message); "
                "name a LLaMA-Factory template"
            )
        pieces = [self._pieces(c) for c in conversations]
        ids = iter(self.tokenizer([text for row in pieces for text, _ in row], add_special_tokens=False)["input_ids"])
        rows = []
        for conversation, row in zip(conversations, pieces):
            last_answer = max(i for i, (_, kind) in enumerate(row) if kind == ANSWER)
            weights = iter([m.get("loss_weight") for m in conversation if m["role"] == "assistant"])
            masked = {i for i, (_, kind) in enumerate(row) if kind == ANSWER and next(weights) == 0}
            input_ids, labels, prompt_ids = [], [], []
            for i, (_, kind) in enumerate(row):
                piece = self._expand_images(next(ids))
                learned = train_on_prompt or (
                    kind == ANSWER and i not in masked and (not mask_history or i == last_answer)
                )
                input_ids += piece
                # Image positions are features, not text: never a label.
                labels += [IGNORE if not learned or t == self.image_token_id else t for t in piece]
                if i < last_answer:
                    prompt_ids += piece
            rows.append(EncodedRow(input_ids, labels, prompt_ids, conversation[-1]["content"]))
        return rows

    def _slot_row(self, conversation: Conversation, input_ids, labels, prompt_ids, layout) -> EncodedRow:
        if self.image_token_id is not None:  # image positions are features, not text: never a label
            labels = [IGNORE if t == self.image_token_id else label for t, label in zip(input_ids, labels)]
        return EncodedRow(input_ids, labels, prompt_ids, conversation[-1]["content"], layout)

    def _render(self, messages: Conversation, add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            messages, chat_template=self.jinja, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def _pieces(self, conversation: Conversation) -> list[tuple[str, str]]:
        """The rendered conversation cut into (text, kind) pieces that concatenate to the whole."""
        pieces, done = [], ""
        for i, message in enumerate(conversation):
            if message["role"] != "assistant":
                continue
            prompt = self._render(conversation[:i], add_generation_prompt=True)
            full = self._render(conversation[: i + 1], add_generation_prompt=False)
            if not (prompt.startswith(done) and full.startswith(prompt)):
                raise UserError(
                    f"template '{self.template}' does not render conversations incrementally (turn {i + 1} changes the "
                    "text before it), so prompt tokens cannot be masked; use another template"
                )
            answer = full[len(prompt) :]
            end = answer.rfind(self.end_of_turn)
            if end < 0:
                raise UserError(
                    f"template '{self.template}' does not close an assistant turn with its end-of-turn token "
                    f"{self.end_of_turn!r}; a model trained on it would never learn to stop"
                )
            end += len(self.end_of_turn)
            pieces += [(prompt[len(done) :], PROMPT), (answer[:end], ANSWER), (answer[end:], GLUE)]
            done = full
        return pieces


def _as_plain_chat(conversation: Conversation) -> Conversation:
    """Tool-calling turns for a tokenizer's own template, as LLaMA-Factory reads one it parses:
    the tools described after the system prompt, a function call written in the default tool
    format as an assistant turn, an observation as a user turn."""
    tools = next((m["tools"] for m in conversation if m["role"] == "tools"), [])
    plain: Conversation = []
    for m in conversation:
        if m["role"] == "tools":
            continue
        if m["role"] == "function":
            m = {**m, "role": "assistant", "content": function_text("default", m["content"], None)}
        elif m["role"] == "observation":
            m = {**m, "role": "user"}
        plain.append(m)
    if tools:
        text = tools_text("default", tools)
        if plain[0]["role"] == "system":
            plain[0] = {"role": "system", "content": plain[0]["content"] + text}
        else:
            plain.insert(0, {"role": "system", "content": text})
    return plain


def cut(row: EncodedRow, cutoff_len: int) -> tuple[EncodedRow, bool]:
    """Truncate to cutoff_len: a table template's row pair by pair as LLaMA-Factory does, the
    tokenizer template's at the end; the prompt for generation keeps its end. Returns (row, truncated)."""
    if len(row.input_ids) <= cutoff_len:  # prompt_ids is a prefix of input_ids, so it fits too
        return row, False
    if row.layout is not None:
        ids, labels = truncate(row.input_ids, row.labels, row.layout, cutoff_len)
    else:
        ids, labels = row.input_ids[:cutoff_len], row.labels[:cutoff_len]
    return EncodedRow(ids, labels, row.prompt_ids[-cutoff_len:], row.reference, row.layout), True


def supervised(row: EncodedRow) -> int:
    return len(row.labels) - row.labels.count(IGNORE)
