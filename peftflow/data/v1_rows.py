"""LLaMA-Factory v1's jsonl rows, as peftflow conversations.

A v1 row is {"messages": [{"role": "system" | "user" | "assistant" | "tool", "content": [{"type":
"text" | "reasoning" | "tool_call", "value": str}, ...], "loss_weight": float}], "tools": JSON text}
(src/llamafactory/v1/utils/types.py). Text parts are joined; a reasoning part becomes a thinking
block; an assistant turn of tool_call parts becomes a function-call turn; a tool turn an
observation. `loss_weight` (default 1 for assistant turns, 0 otherwise) is kept on the turn: the
encoder learns a turn with weight 1 and masks one with weight 0. peftflow's labels are learned or
not, so a weight between 0 and 1 is an invalid row.

Errors are RowError(reason, detail); formats.py turns them into its InvalidRow.
"""

from __future__ import annotations

import json
from typing import Any

from peftflow.data.tool_formats import check_tools, parse_calls

ROLES = {"system": "system", "user": "user", "assistant": "assistant", "tool": "observation"}
THINK_OPEN, THINK_CLOSE = "<think>\n", "\n</think>\n\n"


class RowError(ValueError):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason, detail)
        self.reason, self.detail = reason, detail


def to_turns(row: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict]]:
    """(turns with role / content / loss_weight, tools) of one v1 row."""
    messages = row.get("messages")
    if not isinstance(messages, list):
        raise RowError("field 'messages' is missing" if messages is None else "field 'messages' is not a list")
    turns = [_turn(m, i) for i, m in enumerate(messages, start=1)]
    try:
        tools = check_tools(row["tools"]) if row.get("tools") else []
    except ValueError as e:
        raise RowError("field 'tools' is not a valid tool list", str(e)) from None
    return turns, tools


def _turn(message: Any, number: int) -> dict[str, Any]:
    where = f"message {number}"
    if not isinstance(message, dict) or message.get("role") not in ROLES:
        role = message.get("role") if isinstance(message, dict) else None
        raise RowError(f"unknown role {role!r}" if isinstance(message, dict) else "message is not an object", where)
    parts = message.get("content")
    if not isinstance(parts, list) or not all(isinstance(p, dict) and isinstance(p.get("value"), str) for p in parts):
        raise RowError("field 'content' is not a list of {type, value} parts", where)
    role = ROLES[message["role"]]
    weight = message.get("loss_weight", 1.0 if role == "assistant" else 0.0)
    if weight not in (0, 1):
        raise RowError(f"loss_weight {weight!r} is neither 0 nor 1 (peftflow learns a turn or masks it)", where)
    types = {p.get("type") for p in parts}
    unknown = types - ({"text", "reasoning", "tool_call"} if role == "assistant" else {"text"})
    if unknown:
        raise RowError(
            f"content type {sorted(map(str, unknown))[0]} is not supported in a {message['role']} message", where
        )
    thought = "".join(THINK_OPEN + p["value"] + THINK_CLOSE for p in parts if p["type"] == "reasoning")
    text = "".join(p["value"] for p in parts if p["type"] == "text")
    calls = [p["value"] for p in parts if p["type"] == "tool_call"]
    if calls:
        if text:
            raise RowError("an assistant message mixes text and tool_call parts", where)
        try:
            objects = [json.loads(c) for c in calls]
            content = json.dumps(objects[0] if len(objects) == 1 else objects, ensure_ascii=False)
            parse_calls(content)
        except (json.JSONDecodeError, ValueError) as e:
            raise RowError("invalid tool_call", f"{where}: {e}") from None
        return {"role": "function", "content": thought + content, "loss_weight": weight}
    return {"role": role, "content": thought + text, "loss_weight": weight}
