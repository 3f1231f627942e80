"""Chat templates by name (`template:` in the run config).

`tokenizer` (the default) is the tokenizer's own Jinja chat template, rendered and masked by
tokenize.py. Every other name is a row of LLaMA-Factory's template table (template_table.py),
encoded as LLaMA-Factory encodes it (slots.py). A template whose special tokens the tokenizer
cannot encode as single tokens fails before any tokenising.
"""

from __future__ import annotations

import difflib

from peftflow.data.slots import stop_words_eos
from peftflow.data.template_table import BOS, EOS, TABLE, TableTemplate
from peftflow.errors import UserError
from peftflow.stages import get_stage

TOKENIZER = "tokenizer"
# The tokenizer's template was called `default` before LLaMA-Factory's `default` joined the table;
# prepared data keep that name in their fingerprint, so existing caches stay valid.
TOKENIZER_FINGERPRINT_NAME = "default"


def names() -> list[str]:
    return sorted([TOKENIZER, *TABLE])


def get_template(name: str) -> TableTemplate | None:
    """The table row of `name`; None for the tokenizer's own template."""
    if name == TOKENIZER:
        return None
    if name not in TABLE:
        match = difflib.get_close_matches(name, names(), n=1)
        hint = f"did you mean '{match[0]}'? " if match else ""
        raise UserError(f"template: unknown template '{name}' ({hint}known: {', '.join(names())})")
    return TABLE[name]


def single_token_id(tokenizer, token: str) -> int | None:
    """The id `token` encodes to when it is one (special) token of this tokenizer, else None."""
    ids = tokenizer(token, add_special_tokens=False)["input_ids"]
    return ids[0] if len(ids) == 1 else None


def resolve_jinja(tokenizer, tokenizer_path: str) -> tuple[str, str]:
    """The tokenizer template: (Jinja source, end-of-turn token text)."""
    jinja = tokenizer.chat_template
    if not jinja:
        raise UserError(
            f"template '{TOKENIZER}': the tokenizer at {tokenizer_path} has no chat template; "
            f"set template to one of {', '.join(TABLE)}"
        )
    end_of_turn = _probe_end_of_turn(tokenizer, jinja)
    if not end_of_turn:
        raise UserError(
            f"template '{TOKENIZER}' ends answers with eos_token, but the tokenizer at {tokenizer_path} has none"
        )
    return jinja, end_of_turn


def check_table_template(tokenizer, template: TableTemplate, tokenizer_path: str) -> None:
    """The row's special tokens are single tokens of this tokenizer, and it has the eos the row writes."""
    missing = [t for t in template.tokens if single_token_id(tokenizer, t) is None]
    if template.replace_eos and single_token_id(tokenizer, template.stop_words[0]) is None:
        missing.append(template.stop_words[0])
    if missing:
        raise UserError(
            f"template '{template.name}' needs tokens {' '.join(dict.fromkeys(missing))} which the "
            f"tokenizer at {tokenizer_path} does not have"
        )
    if not template.replace_eos and tokenizer.eos_token_id is None:
        raise UserError(
            f"template '{template.name}' ends answers with eos_token, but the tokenizer at {tokenizer_path} has none"
        )


def stop_token_ids(tokenizer, name: str) -> list[int]:
    """Tokens generation stops on, the one training taught to end an answer first: for a table
    template its eos (the first stop word when it replaces eos) then its other stop words that are
    single tokens, as LLaMA-Factory's get_stop_token_ids; for the tokenizer template its end-of-turn token."""
    path = getattr(tokenizer, "name_or_path", "") or "(in memory)"
    template = get_template(name)
    if template is None:
        return [single_token_id(tokenizer, resolve_jinja(tokenizer, path)[1])]
    check_table_template(tokenizer, template, path)
    ids = [
        stop_words_eos(template, tokenizer),
        tokenizer.eos_token_id,
        *(single_token_id(tokenizer, w) for w in template.stop_words),
    ]
    return list(dict.fromkeys(i for i in ids if i is not None))


def generation_stop_ids(tokenizer, cfg) -> list[int]:
    """Tokens held-out generation stops on: the template's (stop_token_ids); for a stage that reads
    plain text (pt), the tokenizer's eos, which training put after each text."""
    return stop_token_ids(tokenizer, cfg.template) if get_stage(cfg).templated else [tokenizer.eos_token_id]


def end_of_turn_token_id(tokenizer, template: str) -> int:
    """The token that closes an assistant turn: the labels learn it and generation stops on it."""
    return stop_token_ids(tokenizer, template)[0]


def _probe_end_of_turn(tokenizer, jinja: str) -> str | None:
    """For a tokenizer's own template: the special token written right after an answer's text."""
    probe = "PEFTFLOW-PROBE-ANSWER"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": probe}], chat_template=jinja, tokenize=False
    )
    after = text[text.rindex(probe) + len(probe) :].lstrip()
    specials = set(tokenizer.all_special_tokens) | set(tokenizer.get_added_vocab())
    matches = [t for t in specials if t and after.startswith(t)]
    return max(matches, key=len) if matches else tokenizer.eos_token


def chat_template_jinja(template: TableTemplate, tokenizer) -> str:
    """The row as a Jinja chat template, laid out as LLaMA-Factory writes one into an exported
    tokenizer (Template._get_jinja_template; a fused-system row puts the system text in the first
    user message). Markers become the tokenizer's bos and the template's eos as text."""
    eos = tokenizer.convert_ids_to_tokens(stop_words_eos(template, tokenizer))

    def expr(slot: tuple[str, ...], placeholder: str = "content") -> str:
        items = []
        for piece in slot:
            if piece == BOS:
                items += [_quoted(tokenizer.bos_token)] if tokenizer.bos_token_id is not None else []
            elif piece == EOS:
                items.append(_quoted(eos))
            else:
                before, hole, after = piece.partition("{{content}}")
                items += [_quoted(before)] * bool(before) + [placeholder] * bool(hole) + [_quoted(after)] * bool(after)
        return " + ".join(items)

    jinja = "{{ " + expr(template.prefix) + " }}" if template.prefix else ""
    if template.default_system:
        jinja += "{% set system_message = " + _quoted(template.default_system) + " %}"
    jinja += (
        "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
        "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% endif %}"
    )
    if template.fuse_system:
        jinja += (
            "{% for message in loop_messages %}{% if loop.index0 == 0 and system_message is defined %}"
            "{% set content = " + expr(template.system[:1], "system_message") + " + message['content'] %}"
            "{% else %}{% set content = message['content'] %}{% endif %}"
        )
    else:
        jinja += (
            "{% if system_message is defined %}{{ " + expr(template.system, "system_message") + " }}{% endif %}"
            "{% for message in loop_messages %}{% set content = message['content'] %}"
        )
    return jinja + (
        "{% if message['role'] == 'user' %}{{ " + expr(template.user) + " }}"
        "{% elif message['role'] == 'assistant' %}{{ " + expr(template.assistant) + " }}{% endif %}{% endfor %}"
    )


def _quoted(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
