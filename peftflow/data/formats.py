"""LLaMA-Factory's alpaca and sharegpt row formats, normalised into one conversation shape.

A conversation is a list of {"role", "content"} turns: an optional system turn, then prompt
turns ("user", or "observation": a tool's result) and answer turns ("assistant", or "function":
a tool call as JSON) alternating, ending with an answer. A sharegpt row with a `tools` column
also carries {"role": "tools", "content": "", "tools": [tool objects]}. A row that cannot become
one raises InvalidRow with a short reason. A format read `prompts_only` (prompts for a teacher to
answer) ends its conversations with the prompt instead: a final answer, if a row has one, is dropped.
A `ranking` entry (LLaMA-Factory's preference pairs) holds a prompt and two answers, `chosen` and
`rejected`: strings in alpaca rows, one message each in sharegpt rows (`to_pair`). A row with a
`kto_tag` column (LLaMA-Factory's KTO feedback) is a conversation plus whether its answer is
desirable (`to_feedback`).
A format read as `text` (continued pre-training) takes one document per row from its `prompt`
column (`to_text`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from peftflow.data.tool_formats import check_tools, parse_calls
from peftflow.data.v1_rows import RowError, to_turns
from peftflow.errors import UserError

Conversation = list[dict[str, Any]]
PROMPT_ROLES, ANSWER_ROLES = ("user", "observation"), ("assistant", "function")

COLUMNS = {
    "alpaca": {
        "prompt": "instruction",
        "query": "input",
        "response": "output",
        "history": None,
        "system": None,
        "images": None,
        "chosen": "chosen",
        "rejected": "rejected",
        "kto_tag": None,
    },
    "sharegpt": {
        "messages": "conversations",
        "system": None,
        "tools": None,
        "images": None,
        "chosen": "chosen",
        "rejected": "rejected",
        "kto_tag": None,
    },
}
PAIR_SIDES = ("chosen", "rejected")  # the two answers of a `ranking` row, read only from ranking entries
IMAGE_PLACEHOLDER = "<image>"  # LLaMA-Factory's: one per image, in the order of the images column
# LLaMA-Factory v1 dataset YAMLs: native message rows, or its alpaca / sharegpt converters.
V1_COLUMNS = {
    "v1": {"messages": "messages", "tools": "tools", "system": None, "images": None},
    "v1-alpaca": {
        "prompt": "instruction",
        "query": "input",
        "response": "output",
        "history": None,
        "system": "system",
        "images": None,
    },
    "v1-sharegpt": {"messages": "conversations", "tools": "tools", "system": None, "images": None},
    # v1's pair converter: `chosen` and `rejected` each a whole OpenAI-style conversation ending in its answer
    "v1-pair": {"chosen": "chosen", "rejected": "rejected", "tools": None, "system": None, "images": None},
}
REQUIRED = {
    "alpaca": ("prompt", "response"),
    "sharegpt": ("messages",),
    "v1": ("messages",),
    "v1-alpaca": ("prompt", "response"),
    "v1-sharegpt": ("messages",),
    "v1-pair": ("chosen", "rejected"),
}
SHAREGPT_TAGS = {
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
    "observation_tag": "observation",
    "function_tag": "function_call",
    "system_tag": "system",
}


class InvalidRow(Exception):
    """`reason` is the category counted in reports; `detail` says where in the row."""

    def __init__(self, reason: str, detail: str = "", hint: str = ""):
        super().__init__(f"{reason} ({detail})" if detail else reason)
        self.reason = reason
        self.hint = hint  # a row of another shape: the keys looked for, the dataset_info.json mapping that reads it


@dataclass(frozen=True)
class RowFormat:
    formatting: str
    columns: dict[str, str | None]  # our field -> the file's column name
    tags: dict[str, str]
    mapped: tuple[str, ...]  # the fields dataset_info.json maps explicitly
    prompts_only: bool = False  # rows are prompts: no answer needed, a final one dropped
    ranking: bool = False  # dataset_info.json `"ranking": true`: rows are preference pairs (to_pair)
    feedback: bool = False  # rows are KTO feedback, read with their kto_tag (to_feedback)
    text: bool = False  # rows are documents of plain text, each in the prompt column (to_text)

    @classmethod
    def from_entry(cls, name: str, entry: dict[str, Any], source: str) -> "RowFormat":
        formatting = entry.get("formatting", "alpaca")
        if formatting not in COLUMNS:
            raise UserError(f"{source}: '{name}' formatting '{formatting}' is not supported (use alpaca or sharegpt)")
        given = _mapping(entry, "columns", name, source)
        unknown = sorted(set(given) - set(COLUMNS[formatting]))
        if unknown:
            raise UserError(
                f"{source}: '{name}' columns {', '.join(unknown)} are not supported for {formatting} "
                f"(supported: {', '.join(COLUMNS[formatting])})"
            )
        tags = _mapping(entry, "tags", name, source)
        unknown = sorted(set(tags) - set(SHAREGPT_TAGS))
        if unknown:
            raise UserError(
                f"{source}: '{name}' tags {', '.join(unknown)} are unknown (known: {', '.join(SHAREGPT_TAGS)})"
            )
        ranking = entry.get("ranking", False)
        if not isinstance(ranking, bool):
            raise UserError(f"{source}: '{name}' ranking must be true or false")
        columns = {**COLUMNS[formatting], **given}
        return cls(formatting, columns, {**SHAREGPT_TAGS, **tags}, tuple(given), ranking=ranking)

    @property
    def required_columns(self) -> list[str]:
        """File columns a table (csv / parquet) must have: the required fields and all mapped ones."""
        if self.text:
            return [self.columns["prompt"]]
        required = set(REQUIRED[self.formatting]) | (set(PAIR_SIDES) if self.ranking else set())
        fields = (required | set(self.mapped)) - ({"response"} if self.prompts_only or self.ranking else set())
        fields -= set() if self.ranking else set(PAIR_SIDES)
        fields |= {"kto_tag"} if self.feedback else set()
        return sorted({self.columns[f] for f in fields if self.columns[f]})

    @classmethod
    def v1(cls, converter: str | None) -> "RowFormat":
        formatting = f"v1-{converter}" if converter else "v1"
        return cls(formatting, V1_COLUMNS[formatting], dict(SHAREGPT_TAGS), (), ranking=converter == "pair")

    def to_conversation(self, row: dict[str, Any]) -> Conversation:
        if self.formatting == "v1":
            return self._v1(row)
        turns = self._alpaca(row) if self.formatting.endswith("alpaca") else self._sharegpt(row)
        tools = self._tools(row)
        if turns[0]["role"] != "system":  # a sharegpt system turn wins over the system column
            system = _optional_text(row, self.columns["system"])
            turns = ([{"role": "system", "content": system}] if system else []) + turns
        return ([{"role": "tools", "content": "", "tools": tools}] if tools else []) + turns

    def to_pair(self, row: dict[str, Any]) -> tuple[Conversation, dict[str, str]]:
        """A ranking row as (the prompt and its chosen answer, the rejected answer turn)."""
        if self.formatting == "v1-pair":
            prompt, chosen, rejected = _v1_pair(row)
        else:
            prompt = replace(self, prompts_only=True, ranking=False).to_conversation(row)
            chosen, rejected = (self._answer(row, side) for side in PAIR_SIDES)
        if chosen["content"].strip() == rejected["content"].strip():
            raise InvalidRow("chosen equals rejected", "a pair teaches nothing when its answers are the same")
        return prompt + [chosen], rejected

    def to_feedback(self, row: dict[str, Any]) -> tuple[Conversation, bool]:
        """A KTO row: its conversation, and whether its last answer is desirable (the kto_tag column)."""
        column = self.columns["kto_tag"]
        tag = row.get(column)
        if not isinstance(tag, bool):
            raise InvalidRow(f"field '{column}' is not true or false", "missing" if tag is None else f"got {tag!r}")
        return self.to_conversation(row), tag

    def to_text(self, row: dict[str, Any]) -> str:
        """A plain-text row's document: its prompt column, a non-empty string."""
        text = _text(row, self.columns["prompt"])
        if not text.strip():
            raise InvalidRow("empty text")
        return text

    def _answer(self, row: dict[str, Any], side: str) -> dict[str, str]:
        column = self.columns[side]
        if self.formatting.endswith("alpaca"):
            turn = {"role": "assistant", "content": _text(row, column)}
        else:  # sharegpt: one message object, an answer
            message, t = row.get(column), self.tags
            if message is None:
                raise InvalidRow(f"field '{column}' is missing")
            roles = {t["assistant_tag"]: "assistant", t["function_tag"]: "function"}
            if not isinstance(message, dict) or message.get(t["role_tag"]) not in roles:
                expected = f"an object with {t['role_tag']}: {t['assistant_tag']}"
                raise InvalidRow(f"field '{column}' is not one answer message", expected)
            if not isinstance(message.get(t["content_tag"]), str):
                raise InvalidRow(f"field '{t['content_tag']}' is not a string", f"in '{column}'")
            turn = {"role": roles[message[t["role_tag"]]], "content": message[t["content_tag"]]}
        if not turn["content"].strip():
            raise InvalidRow(f"empty {side} answer")
        return turn

    def _tools(self, row: dict[str, Any]) -> list[dict]:
        column = self.columns.get("tools")
        if not column or row.get(column) is None:
            return []
        try:
            return check_tools(row[column])
        except ValueError as e:
            raise InvalidRow(f"field '{column}' is not a valid tool list", str(e)) from None

    def images(self, row: dict[str, Any], conversation: Conversation) -> list[str]:
        """The row's image paths (as written, relative to dataset_dir); one per `<image>` placeholder."""
        column = self.columns["images"]
        if not column:  # a text dataset: "<image>" in it is just text
            return []
        value = row.get(column)
        images = [] if value is None else [value] if isinstance(value, str) else value
        if not isinstance(images, (list, tuple)) or not all(isinstance(i, str) and i for i in images):
            raise InvalidRow(f"field '{column}' is not a list of image paths")
        placeholders = sum(turn["content"].count(IMAGE_PLACEHOLDER) for turn in conversation)
        if placeholders != len(images):
            raise InvalidRow(
                "image placeholders do not match images",
                f"{placeholders} {IMAGE_PLACEHOLDER} in the messages, {len(images)} in '{column}'",
            )
        return list(images)

    def _alpaca(self, row: dict[str, Any]) -> Conversation:
        prompt = _text(row, self.columns["prompt"])
        query = _optional_text(row, self.columns["query"])
        # v1's alpaca converter joins instruction and input with nothing between them; v0 with a newline
        user = ("" if self.formatting == "v1-alpaca" else "\n").join(t for t in (prompt, query) if t)
        if not user.strip():
            raise InvalidRow("empty prompt")
        response = "" if self.prompts_only else _text(row, self.columns["response"])
        if not self.prompts_only and not response.strip():
            raise InvalidRow("empty response")
        turns: Conversation = []
        for i, pair in enumerate(_history(row, self.columns["history"]), start=1):
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
                raise InvalidRow("history item is not a [user, assistant] pair of strings", f"item {i}")
            if not pair[1].strip():
                raise InvalidRow("empty response", f"history item {i}")
            turns += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
        turns.append({"role": "user", "content": user})
        return turns if self.prompts_only else turns + [{"role": "assistant", "content": response}]

    def _sharegpt(self, row: dict[str, Any]) -> Conversation:
        column = self.columns["messages"]
        messages = row.get(column)
        if not isinstance(messages, (list, tuple)):
            if messages is None:
                raise InvalidRow(f"field '{column}' is missing", hint=self.mapping_hint(row))
            raise InvalidRow(f"field '{column}' is not a list")
        t = self.tags
        roles = {
            t["user_tag"]: "user",
            t["assistant_tag"]: "assistant",
            t["system_tag"]: "system",
            t["function_tag"]: "function",
            t["observation_tag"]: "observation",
        }
        turns: Conversation = []
        for i, message in enumerate(messages, start=1):
            if not isinstance(message, dict):
                raise InvalidRow("turn is not an object", f"turn {i}")
            tag, content = message.get(t["role_tag"]), message.get(t["content_tag"])
            if t["role_tag"] not in message:
                raise InvalidRow(
                    f"turn has no '{t['role_tag']}' key",
                    f"turn {i} has {', '.join(map(str, message))}",
                    hint=self.mapping_hint(row),
                )
            if tag not in roles:
                raise InvalidRow(f"unknown role {tag!r}", f"turn {i}")
            if not isinstance(content, str):
                raise InvalidRow(f"field '{t['content_tag']}' is not a string", f"turn {i}")
            if roles[tag] == "function":
                try:
                    parse_calls(content)
                except ValueError as e:
                    raise InvalidRow("invalid function call", f"turn {i}: {e}") from None
            turns.append({"role": roles[tag], "content": content})
        system = turns[:1] if turns and turns[0]["role"] == "system" else []
        turns = self._ending(turns)
        _check_order(turns[len(system) :], len(system) + 1, self.prompts_only)
        return [s for s in system if s["content"]] + turns[len(system) :]

    def mapping_hint(self, row: dict[str, Any]) -> str:
        """For a sharegpt row of another shape: the column and turn keys looked for, and the
        dataset_info.json `columns` / `tags` that would read an OpenAI-style row (role / content)."""
        t, column = self.tags, self.columns["messages"]
        looked = (
            f"sharegpt rows are read from column '{column}', each turn's role from key '{t['role_tag']}' "
            f"({', '.join(t[k] for k in ('user_tag', 'assistant_tag', 'system_tag'))}, ...) "
            f"and its text from key '{t['content_tag']}'"
        )
        lists = [k for k, v in row.items() if isinstance(v, list) and v and all(isinstance(m, dict) for m in v)]
        found = column if column in lists else (lists[0] if lists else None)
        if found is None or not all({"role", "content"} <= set(m) for m in row[found]):
            return looked
        mapping = ([f'"columns": {{"messages": "{found}"}}'] if found != column else []) + [
            '"tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", '
            '"assistant_tag": "assistant", "system_tag": "system"}'
        ]
        return f"{looked}; these rows are OpenAI-style, read them by adding {', '.join(mapping)} to the entry"

    def _v1(self, row: dict[str, Any]) -> Conversation:
        try:
            turns, tools = to_turns(row)
        except RowError as e:
            raise InvalidRow(e.reason, e.detail) from None
        system = turns[:1] if turns and turns[0]["role"] == "system" else []
        turns = self._ending(turns)
        _check_order(turns[len(system) :], len(system) + 1, self.prompts_only)
        return (
            ([{"role": "tools", "content": "", "tools": tools}] if tools else [])
            + [s for s in system if s["content"]]
            + turns[len(system) :]
        )

    def _ending(self, turns: Conversation) -> Conversation:
        """Read as prompts, a conversation's final answer is dropped: the teacher writes its own."""
        return turns[:-1] if self.prompts_only and turns and turns[-1]["role"] in ANSWER_ROLES else turns


def _v1_pair(row: dict[str, Any]) -> tuple[Conversation, dict[str, str], dict[str, str]]:
    """(prompt, chosen answer, rejected answer) of a row of v1's pair converter: `chosen` and `rejected`
    are whole conversations of {role, content} messages that share everything but their last answer."""
    sides = []
    for side in PAIR_SIDES:
        messages = row.get(side)
        if not isinstance(messages, list) or not messages:
            missing = messages is None
            raise InvalidRow(f"field '{side}' is missing" if missing else f"field '{side}' is not a message list")
        turns = []
        for number, m in enumerate(messages, start=1):
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
                raise InvalidRow("unknown role", f"{side} message {number}")
            if not isinstance(m.get("content"), str):
                raise InvalidRow("field 'content' is not a string", f"{side} message {number}")
            turns.append({"role": m["role"], "content": m["content"]})
        if turns[-1]["role"] != "assistant":
            raise InvalidRow(f"{side} ends without an answer")
        if not turns[-1]["content"].strip():
            raise InvalidRow(f"empty {side} answer")
        sides.append(turns)
    (chosen, rejected) = sides
    if chosen[:-1] != rejected[:-1]:
        raise InvalidRow("chosen and rejected differ before their answers", "a pair answers one prompt")
    system = [t for t in chosen[:1] if t["role"] == "system"]
    _check_order(chosen[len(system) : -1], len(system) + 1, ends_with_prompt=True)
    return [t for t in system if t["content"]] + chosen[len(system) : -1], chosen[-1], rejected[-1]


def _check_order(turns: Conversation, first_number: int, ends_with_prompt: bool = False) -> None:
    if not turns:
        raise InvalidRow("no user / assistant turns")
    for i, turn in enumerate(turns):
        expected = PROMPT_ROLES if i % 2 == 0 else ANSWER_ROLES
        if turn["role"] not in expected:
            raise InvalidRow(
                "wrong turn order", f"turn {i + first_number} is {turn['role']}, expected {' or '.join(expected)}"
            )
        if turn["role"] in ANSWER_ROLES and not turn["content"].strip():
            raise InvalidRow("empty response", f"turn {i + first_number}")
    if ends_with_prompt and turns[-1]["role"] not in PROMPT_ROLES:
        raise InvalidRow("wrong turn order", "a prompt must end with a user turn")
    if not ends_with_prompt and turns[-1]["role"] not in ANSWER_ROLES:
        raise InvalidRow("wrong turn order", "ends with a user turn")


def _mapping(entry: dict[str, Any], key: str, name: str, source: str) -> dict[str, str]:
    value = entry.get(key) or {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise UserError(f"{source}: '{name}' {key} must be an object of names to strings")
    return value


def _text(row: dict[str, Any], column: str) -> str:
    value = row.get(column)
    if value is None:
        raise InvalidRow(f"field '{column}' is missing")
    if not isinstance(value, str):
        raise InvalidRow(f"field '{column}' is not a string", f"got {type(value).__name__}")
    return value


def _optional_text(row: dict[str, Any], column: str | None) -> str:
    return _text(row, column) if column and row.get(column) is not None else ""


def _history(row: dict[str, Any], column: str | None) -> list:
    value = row.get(column) if column else None
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise InvalidRow(f"field '{column}' is not a list")
    return list(value)
