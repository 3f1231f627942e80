"""Chat templates by name (`template:` in the run config), as Jinja chat templates.

`default` is the tokenizer's own chat template. The named ones follow LLaMA-Factory's templates of
the same name. Each names the special tokens it writes, so a template the tokenizer cannot encode
fails before any tokenising, and the token that ends an assistant turn, which the model must learn
and generation must stop on.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from peftflow.errors import UserError

DEFAULT = "default"


@dataclass(frozen=True)
class ChatTemplate:
    name: str
    jinja: str | None             # None: the tokenizer's own chat_template
    required_tokens: tuple[str, ...]
    end_of_turn: str | None       # None: the tokenizer's eos_token


_CHATML_TURNS = (
    "{%- for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{%- endif %}"
)
# SmolLM2's own template: ChatML plus a default system prompt when the conversation has none.
_SMOLLM2_SYSTEM = (
    "{%- if messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{%- endif %}"
)
_LLAMA3 = (
    "{{ '<|begin_of_text|>' }}"
    "{%- for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}"
)
_ALPACA = (
    "{%- if messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\n\n' }}"
    "{%- else %}{{ 'Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n' }}{%- endif %}"
    "{%- for message in messages if message['role'] != 'system' %}"
    "{%- if message['role'] == 'user' %}{{ '### Instruction:\n' + message['content'] + '\n\n' }}"
    "{%- else %}{{ '### Response:\n' + message['content'] + eos_token + '\n\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '### Response:\n' }}{%- endif %}"
)
# No markup at all: the texts back to back, each answer closed by eos.
_EMPTY = (
    "{%- for message in messages %}{{ message['content'] }}"
    "{%- if message['role'] == 'assistant' %}{{ eos_token }}{%- endif %}{%- endfor %}"
)

_CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")
TEMPLATES: dict[str, ChatTemplate] = {t.name: t for t in [
    ChatTemplate(DEFAULT, None, (), None),
    ChatTemplate("chatml", _CHATML_TURNS, _CHATML_TOKENS, "<|im_end|>"),
    ChatTemplate("smollm2", _SMOLLM2_SYSTEM + _CHATML_TURNS, _CHATML_TOKENS, "<|im_end|>"),
    ChatTemplate("llama3", _LLAMA3, ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"), "<|eot_id|>"),
    ChatTemplate("alpaca", _ALPACA, (), None),
    ChatTemplate("empty", _EMPTY, (), None),
]}
ALIASES = {"smollm": "smollm2"}


def get_template(name: str) -> ChatTemplate:
    name = ALIASES.get(name, name)
    if name not in TEMPLATES:
        names = sorted([*TEMPLATES, *ALIASES])
        match = difflib.get_close_matches(name, names, n=1)
        hint = f"did you mean '{match[0]}'? " if match else ""
        raise UserError(f"template: unknown template '{name}' ({hint}known: {', '.join(names)})")
    return TEMPLATES[name]


def single_token_id(tokenizer, token: str) -> int | None:
    """The id `token` encodes to when it is one (special) token of this tokenizer, else None."""
    ids = tokenizer(token, add_special_tokens=False)["input_ids"]
    return ids[0] if len(ids) == 1 else None


def resolve(tokenizer, name: str, tokenizer_path: str) -> tuple[str, str]:
    """(Jinja source, end-of-turn token text) of template `name` for this tokenizer."""
    template = get_template(name)
    missing = [t for t in template.required_tokens if single_token_id(tokenizer, t) is None]
    if missing:
        raise UserError(f"template '{name}' needs tokens {' '.join(missing)} which the tokenizer at {tokenizer_path} does not have")
    jinja = template.jinja or tokenizer.chat_template
    if not jinja:
        raise UserError(f"template 'default': the tokenizer at {tokenizer_path} has no chat template; set template to one of {', '.join(t for t in TEMPLATES if t != DEFAULT)}")
    end_of_turn = template.end_of_turn or (_probe_end_of_turn(tokenizer, jinja) if template.jinja is None else tokenizer.eos_token)
    if not end_of_turn:
        raise UserError(f"template '{name}' ends answers with eos_token, but the tokenizer at {tokenizer_path} has none")
    return jinja, end_of_turn


def end_of_turn_token_id(tokenizer, template: str) -> int:
    """The token that closes an assistant turn: the labels learn it and generation stops on it."""
    path = getattr(tokenizer, "name_or_path", "") or "(in memory)"
    return single_token_id(tokenizer, resolve(tokenizer, template, path)[1])


def _probe_end_of_turn(tokenizer, jinja: str) -> str | None:
    """For a tokenizer's own template: the special token written right after an answer's text."""
    probe = "PEFTFLOW-PROBE-ANSWER"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": probe}], chat_template=jinja, tokenize=False)
    after = text[text.rindex(probe) + len(probe):].lstrip()
    specials = set(tokenizer.all_special_tokens) | set(tokenizer.get_added_vocab())
    matches = [t for t in specials if t and after.startswith(t)]
    return max(matches, key=len) if matches else tokenizer.eos_token
