"""Tool-calling text formats by LLaMA-Factory's `tool_format` names: how the available tools are
described in the system prompt, how an assistant's function call is written, and how a
generated reply is read back into calls (for scoring).

The prompts and layouts are LLaMA-Factory 0.9.5's (`src/llamafactory/data/tool_utils.py`):
`default` (Action / Action Input), `qwen` (<tool_call> JSON), `qwen3_5` (<tool_call> with
<function=...> / <parameter=...> blocks), `llama3` (JSON with `parameters`), `mistral`
([AVAILABLE_TOOLS] and a JSON list), `glm4` (name, newline, JSON).
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any, NamedTuple


class FunctionCall(NamedTuple):
    name: str
    arguments: str  # JSON text of the arguments object


_DEFAULT_PROMPT = (
    "You have access to the following tools:\n{tool_text}"
    "Use the following format if using a tool:\n```\nAction: tool name (one of [{tool_names}])\n"
    "Action Input: the input to the tool, in a JSON format representing the kwargs "
    '(e.g. ```{{"input": "hello world", "num_beams": 5}}```)\n```\n'
)
_QWEN_PROMPT = (
    "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>{tool_text}"
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{{"name": <function-name>, "arguments": '
    "<args-json-object>}}\n</tool_call>"
)
_QWEN35_PROMPT = (
    "\n\n# Tools\n\nYou have access to the following functions:\n\n<tools>{tool_text}"
    "\n</tools>\n\nIf you choose to call a function ONLY reply in the following format with NO suffix:\n\n"
    "<tool_call>\n<function=example_function_name>\n<parameter=example_parameter_1>\nvalue_1\n</parameter>\n"
    "<parameter=example_parameter_2>\nThis is the value for the second parameter\nthat can span\nmultiple lines\n"
    "</parameter>\n</function>\n</tool_call>\n\n<IMPORTANT>\nReminder:\n"
    "- Function calls MUST follow the specified format: "
    "an inner <function=...></function> block must be nested within <tool_call></tool_call> XML tags\n"
    "- Required parameters MUST be specified\n"
    "- You may provide optional reasoning for your function call in natural language "
    "BEFORE the function call, but NOT after\n"
    "- If there is no function call available, answer the question like normal with your current knowledge "
    "and do not tell the user about function calls\n</IMPORTANT>"
)
_LLAMA3_PROMPT = (
    "Cutting Knowledge Date: December 2023\nToday Date: {date}\n\n"
    "You have access to the following functions. To call a function, please respond with JSON for a function call. "
    'Respond in the format {{"name": function name, "parameters": dictionary of argument name and its value}}. '
    "Do not use variables.\n\n{tool_text}"
)
_GLM4_PROMPT = (
    "你是一个名为 ChatGLM 的人工智能助手。你是基于智谱 AI 公司训练的语言模型 GLM-4 模型开发的，"
    "你的任务是针对用户的问题和要求提供适当的答复和支持。\n\n# 可用工具{tool_text}"
)


def _unwrap(tool: dict) -> dict:
    return tool.get("function", {}) if tool.get("type") == "function" else tool


def _wrapped(tool: dict) -> dict:
    return tool if tool.get("type") == "function" else {"type": "function", "function": tool}


def _default_tools(tools: list[dict]) -> str:
    text, names = "", []
    for tool in map(_unwrap, tools):
        params = ""
        for name, p in tool["parameters"].get("properties", {}).items():
            required = ", required" if name in tool["parameters"].get("required", []) else ""
            enum = f", should be one of [{', '.join(p['enum'])}]" if p.get("enum") else ""
            items = f", where each item should be {p['items'].get('type', '')}" if p.get("items") else ""
            params += f"  - {name} ({p.get('type', '')}{required}): {p.get('description', '')}{enum}{items}\n"
        text += f"> Tool Name: {tool['name']}\nTool Description: {tool.get('description', '')}\nTool Args:\n{params}\n"
        names.append(tool["name"])
    return _DEFAULT_PROMPT.format(tool_text=text, tool_names=", ".join(names))


def _qwen35_call(call: FunctionCall) -> str:
    text = f"<tool_call>\n<function={call.name}>"
    for key, value in json.loads(call.arguments).items():
        value = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        text += f"\n<parameter={key}>\n{value}\n</parameter>"
    return text + "\n</function>\n</tool_call>"


def _glm4_call(calls: list[FunctionCall]) -> str:
    if len(calls) > 1:
        raise ValueError("the glm4 tool format has no parallel function calls")
    return f"{calls[0].name}\n{calls[0].arguments}"


def _as_objects(calls: list[FunctionCall], key: str) -> list[dict]:
    return [{"name": c.name, key: json.loads(c.arguments)} for c in calls]


def _one_or_list(objects: list[dict]) -> dict | list[dict]:
    return objects[0] if len(objects) == 1 else objects


# tool_format -> (tools -> system text, calls -> assistant text)
FORMATS = {
    "default": (
        _default_tools,
        lambda calls: "\n".join(f"Action: {c.name}\nAction Input: {c.arguments}" for c in calls),
    ),
    "qwen": (
        lambda tools: _QWEN_PROMPT.format(
            tool_text="".join("\n" + json.dumps(_wrapped(t), ensure_ascii=False) for t in tools)
        ),
        lambda calls: "\n".join(
            f"<tool_call>\n{json.dumps(o, ensure_ascii=False)}\n</tool_call>" for o in _as_objects(calls, "arguments")
        ),
    ),
    "qwen3_5": (
        lambda tools: _QWEN35_PROMPT.format(
            tool_text="".join("\n" + json.dumps(_unwrap(t), ensure_ascii=False) for t in tools)
        ),
        lambda calls: "\n".join(map(_qwen35_call, calls)),
    ),
    "llama3": (
        lambda tools: _LLAMA3_PROMPT.format(
            date=datetime.now().strftime("%d %b %Y"),
            tool_text="".join(json.dumps(_wrapped(t), indent=4, ensure_ascii=False) + "\n\n" for t in tools),
        ),
        lambda calls: json.dumps(_one_or_list(_as_objects(calls, "parameters")), ensure_ascii=False),
    ),
    "mistral": (
        lambda tools: (
            "[AVAILABLE_TOOLS] " + json.dumps([_wrapped(t) for t in tools], ensure_ascii=False) + "[/AVAILABLE_TOOLS]"
        ),
        lambda calls: json.dumps(_as_objects(calls, "arguments"), ensure_ascii=False),
    ),
    "glm4": (
        lambda tools: _GLM4_PROMPT.format(
            tool_text="".join(
                f"\n\n## {_unwrap(t)['name']}\n\n{json.dumps(_unwrap(t), indent=4, ensure_ascii=False)}"
                "\n在调用上述函数时，请使用 Json 格式表示调用的参数。"
                for t in tools
            )
        ),
        _glm4_call,
    ),
}


def tools_text(tool_format: str, tools: list[dict]) -> str:
    return FORMATS[tool_format][0](tools) if tools else ""


def parse_calls(content: str) -> list[FunctionCall]:
    """A function_call turn's JSON (one {"name", "arguments"} object or a list of them) as calls.
    Raises ValueError naming what is wrong."""
    try:
        value = json.loads(content)
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON ({e.msg})") from None
    calls = value if isinstance(value, list) else [value]
    if not calls:
        raise ValueError("an empty list of calls")
    out = []
    for call in calls:
        if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not call["name"]:
            raise ValueError('a call without a "name" string')
        if not isinstance(call.get("arguments"), dict):
            raise ValueError(f'call {call["name"]!r} has no "arguments" object')
        out.append(FunctionCall(call["name"], json.dumps(call["arguments"], ensure_ascii=False)))
    return out


def function_text(tool_format: str, content: str, thought_words: tuple[str, str] | None) -> str:
    """The assistant text of a function_call turn: an optional leading thought kept as written,
    then the calls in the tool format (LLaMA-Factory's FunctionFormatter)."""
    tagged = re.search(r"<tool_call>(.*?)</tool_call>", content, re.DOTALL) if thought_words else None
    if tagged:
        return content.replace(tagged.group(0), "") + FORMATS[tool_format][1](parse_calls(tagged.group(1)))
    thought = (
        re.search(f"{re.escape(thought_words[0])}(.*?){re.escape(thought_words[1])}", content, re.DOTALL)
        if thought_words
        else None
    )
    calls = parse_calls(content.replace(thought.group(0), "") if thought else content)
    return (thought.group(0) if thought else "") + FORMATS[tool_format][1](calls)


def check_tools(value: Any) -> list[dict]:
    """A row's `tools` (JSON text or a list) as a list of tool objects; ValueError when malformed."""
    if isinstance(value, str):
        if not value.strip():
            return []
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"not JSON ({e.msg})") from None
    if not isinstance(value, list):
        raise ValueError("not a list of tools")
    for i, tool in enumerate(value, start=1):
        inner = _unwrap(tool) if isinstance(tool, dict) else None
        if not isinstance(inner, dict) or not isinstance(inner.get("name"), str):
            raise ValueError(f'tool {i} has no "name"')
        params = inner.get("parameters")
        if not isinstance(params, dict) or not isinstance(params.get("properties", {}), dict):
            raise ValueError(f'tool {inner["name"]!r} has no "parameters" object with "properties"')
    return value


def extract_calls(text: str) -> list[FunctionCall]:
    """Calls read back from generated text in any of the formats above; [] when it holds none."""
    text = text.strip()
    found = [
        (m.group(1), m.group(2))
        for m in re.finditer(
            r"<tool_call>\s*<function=\s*([^\s<>]+)\s*>(.*?)</function>\s*</tool_call>", text, re.DOTALL
        )
    ]
    if found:  # qwen3_5
        calls = []
        for name, block in found:
            args = {}
            for key, raw in re.findall(r"<parameter=(.*?)>(.*?)</parameter>", block, re.DOTALL):
                try:
                    args[key] = json.loads(raw.strip())
                except json.JSONDecodeError:
                    args[key] = raw.strip()
            calls.append(FunctionCall(name, json.dumps(args, ensure_ascii=False)))
        return calls
    candidates = re.findall(r"<tool_call>(.+?)</tool_call>", text, re.DOTALL)  # qwen
    actions = re.findall(r"Action:\s*([a-zA-Z0-9_]+)\s*Action Input:\s*(.+?)(?=\s*Action:|\s*$)", text, re.DOTALL)
    if actions:  # default
        candidates = [
            json.dumps({"name": n, "arguments": _loads(a.strip().strip('"').strip("```"))}) for n, a in actions
        ]
    elif not candidates:
        first_line, _, rest = text.partition("\n")  # glm4: name, newline, arguments
        candidates = (
            [text] if text[:1] in "[{" else [json.dumps({"name": first_line.strip(), "arguments": _loads(rest)})]
        )
    calls = []
    for candidate in candidates:
        value = _loads(candidate.strip())
        for call in value if isinstance(value, list) else [value]:
            if not isinstance(call, dict) or not isinstance(call.get("name"), str):
                return []
            args = call.get("arguments", call.get("parameters"))  # llama3 writes "parameters"
            if not isinstance(args, dict):
                return []
            calls.append(FunctionCall(call["name"], json.dumps(args, ensure_ascii=False)))
    return calls


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None
