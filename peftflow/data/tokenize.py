"""Render conversations with the chat template, tokenise, mask the prompt, cut at cutoff_len.

Masking works on rendered prefixes: the text of messages[:i] with the generation prompt must be
a prefix of the text of messages[:i + 1], so the difference is exactly the answer of turn i. Each
piece is tokenised on its own (as LLaMA-Factory does), so a piece boundary is a token boundary
and the prompt an evaluation feeds the model is token for token the one trained on.

An answer piece is the answer text, the end-of-turn token, then any glue the template writes
after it (ChatML's "\n"). The model learns the answer and the end-of-turn token; the glue is
prompt for the next turn and is masked, since generation stops at the end-of-turn token.
"""

from __future__ import annotations

from dataclasses import dataclass

from peftflow.data.formats import Conversation
from peftflow.data.templates import resolve as resolve_template
from peftflow.errors import UserError
from peftflow.models import vision

IGNORE = -100  # label of a token the loss skips
PROMPT, ANSWER, GLUE = "prompt", "answer", "glue"


@dataclass(frozen=True)
class EncodedRow:
    input_ids: list[int]
    labels: list[int]
    prompt_ids: list[int]   # the conversation up to its last answer, ending in the generation prompt
    reference: str          # the last answer's text


class ChatEncoder:
    def __init__(self, model_path: str, template: str, trust_remote_code: bool = False):
        from transformers import AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as e:
            raise UserError(f"model at {model_path}: cannot load its tokenizer ({type(e).__name__})") from None
        self.template = template
        self.jinja, self.end_of_turn = resolve_template(self.tokenizer, template, model_path)
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
        pieces = [self._pieces(c) for c in conversations]
        ids = iter(self.tokenizer([text for row in pieces for text, _ in row], add_special_tokens=False)["input_ids"])
        rows = []
        for conversation, row in zip(conversations, pieces):
            last_answer = max(i for i, (_, kind) in enumerate(row) if kind == ANSWER)
            input_ids, labels, prompt_ids = [], [], []
            for i, (_, kind) in enumerate(row):
                piece = self._expand_images(next(ids))
                learned = train_on_prompt or (kind == ANSWER and (not mask_history or i == last_answer))
                input_ids += piece
                # Image positions are features, not text: never a label.
                labels += [IGNORE if not learned or t == self.image_token_id else t for t in piece]
                if i < last_answer:
                    prompt_ids += piece
            rows.append(EncodedRow(input_ids, labels, prompt_ids, conversation[-1]["content"]))
        return rows

    def _render(self, messages: Conversation, add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            messages, chat_template=self.jinja, tokenize=False, add_generation_prompt=add_generation_prompt)

    def _pieces(self, conversation: Conversation) -> list[tuple[str, str]]:
        """The rendered conversation cut into (text, kind) pieces that concatenate to the whole."""
        pieces, done = [], ""
        for i, message in enumerate(conversation):
            if message["role"] != "assistant":
                continue
            prompt = self._render(conversation[:i], add_generation_prompt=True)
            full = self._render(conversation[:i + 1], add_generation_prompt=False)
            if not (prompt.startswith(done) and full.startswith(prompt)):
                raise UserError(f"template '{self.template}' does not render conversations incrementally (turn {i + 1} changes the text before it), so prompt tokens cannot be masked; use another template")
            answer = full[len(prompt):]
            end = answer.rfind(self.end_of_turn)
            if end < 0:
                raise UserError(f"template '{self.template}' does not close an assistant turn with its end-of-turn token {self.end_of_turn!r}; a model trained on it would never learn to stop")
            end += len(self.end_of_turn)
            pieces += [(prompt[len(done):], PROMPT), (answer[:end], ANSWER), (answer[end:], GLUE)]
            done = full
        return pieces


def cut(row: EncodedRow, cutoff_len: int) -> tuple[EncodedRow, bool]:
    """Truncate to cutoff_len; the prompt for generation keeps its end. Returns (row, truncated)."""
    if len(row.input_ids) <= cutoff_len:  # prompt_ids is a prefix of input_ids, so it fits too
        return row, False
    return EncodedRow(row.input_ids[:cutoff_len], row.labels[:cutoff_len], row.prompt_ids[-cutoff_len:], row.reference), True


def supervised(row: EncodedRow) -> int:
    return sum(label != IGNORE for label in row.labels)
