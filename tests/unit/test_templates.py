"""Every LLaMA-Factory template peftflow knows, rendered on one multi-turn row with SmolLM2's tokenizer.

The expected pieces are written out here from LLaMA-Factory 0.9.5's register_template calls
(src/llamafactory/data/template.py), not taken from peftflow: each message is a tuple of pieces,
each piece tokenised on its own (as LLaMA-Factory does); B / E stand for the tokenizer's bos /
eos (SmolLM2: <|im_start|> / <|im_end|>). Prompt messages (even) are masked, answers (odd)
learned. The tokenizer gets every template's special tokens added, so each row can be encoded;
the plain SmolLM2 tokenizer refuses the rows that need them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from peftflow.data.slots import Options
from peftflow.data.template_table import TABLE
from peftflow.data.templates import end_of_turn_token_id, stop_token_ids
from peftflow.data.tokenize import ChatEncoder
from peftflow.errors import UserError

B, E = object(), object()
ROW = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello"},
    {"role": "user", "content": "Bye"},
    {"role": "assistant", "content": "Later"},
]
THINK = "<think>\n\n</think>\n\n"
IM_USER = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
IM_ANSWER = "{}<|im_end|>\n"
INTERN = (
    "You are an AI assistant whose name is InternLM (书生·浦语).\n"
    "- InternLM (书生·浦语) is a conversational language model that is developed by Shanghai AI Laboratory "
    "(上海人工智能实验室). It is designed to be helpful, honest, and harmless.\n"
    "- InternLM (书生·浦语) can understand and communicate fluently in the language "
    "chosen by the user such as English and 中文."
)
GEMMA_USER = "<start_of_turn>user\n{}<end_of_turn>\n<start_of_turn>model\n"
OSS_THINK = "<|channel|>analysis<|message|><|end|><|start|>assistant<|channel|>final<|message|>"


def chat(first: tuple, user: str, answer: tuple) -> list[tuple]:
    """[first prompt, answer Hello, prompt Bye, answer Later]: `user` / `answer` hold {} for the text."""
    fill = lambda pieces, text: tuple(p.format(text) if isinstance(p, str) else p for p in pieces)  # noqa: E731
    return [first + fill((user,), "Hi"), fill(answer, "Hello"), fill((user,), "Bye"), fill(answer, "Later")]


def im(system: str | None = None, answer: tuple = (IM_ANSWER,), prefix: tuple = ()) -> list[tuple]:
    first = prefix + ((f"<|im_start|>system\n{system}<|im_end|>\n",) if system else ())
    return chat(first, IM_USER, answer)


EXPECTED: dict[str, list[tuple]] = {
    "alpaca": chat(
        (
            "Below is an instruction that describes a task. Write a response that appropriately completes the "
            "request.\n\n",
        ),
        "### Instruction:\n{}\n\n### Response:\n",
        ("{}", E, "\n\n"),
    ),
    "chatml": im(),
    "cohere": chat(
        (B,),
        "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>{}<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>",
        ("{}", E),
    ),
    "deepseek": chat((B,), "User: {}\n\nAssistant:", ("{}", E)),
    "deepseek3": chat((B,), "<｜User｜>{}<｜Assistant｜>", ("{}", E)),
    "deepseekr1": chat((B,), "<｜User｜>{}<｜Assistant｜>", (THINK, "{}", E)),
    "default": [
        ("Human: Hi", E, "\nAssistant:"),
        ("Hello", E, "\n"),
        ("Human: Bye", E, "\nAssistant:"),
        ("Later", E, "\n"),
    ],
    "empty": chat((), "{}", ("{}",)),
    "falcon": chat((), "User: {}\nFalcon:", ("{}\n",)),
    "gemma": chat((B,), GEMMA_USER, ("{}<end_of_turn>\n",)),
    "gemma2": chat((B,), GEMMA_USER, ("{}<end_of_turn>\n",)),
    "gemma3": chat((B,), GEMMA_USER, ("{}<end_of_turn>\n",)),
    "glm4": chat(("[gMASK]<sop>",), "<|user|>\n{}<|assistant|>", ("\n{}",)),
    "gpt_oss": chat(
        ("<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.<|end|>",),
        "<|start|>user<|message|>{}<|end|><|start|>assistant",
        (OSS_THINK, "{}"),
    ),
    "granite4": chat(
        (
            "<|start_of_role|>system<|end_of_role|>You are Granite, developed by IBM. You are a helpful AI "
            "assistant.<|end_of_text|>\n",
        ),
        "<|start_of_role|>user<|end_of_role|>{}<|end_of_text|>\n<|start_of_role|>assistant<|end_of_role|>",
        ("{}<|end_of_text|>\n",),
    ),
    "intern2": im(INTERN, prefix=(B,)),
    "llama2": [(B, "[INST] Hi [/INST]"), ("Hello", E), (B, "[INST] Bye [/INST]"), ("Later", E)],
    "llama3": chat(
        (B,),
        "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
        ("{}<|eot_id|>",),
    ),
    "llama4": chat(
        (B,),
        "<|header_start|>user<|header_end|>\n\n{}<|eot|><|header_start|>assistant<|header_end|>\n\n",
        ("{}<|eot|>",),
    ),
    "ministral": chat((B,), "[INST]{}[/INST]", ("{}", E)),
    "mistral": chat((B,), "[INST] {}[/INST]", (" {}", E)),
    "olmo": chat((E,), "<|user|>\n{}<|assistant|>\n", ("{}", E)),
    "phi": chat((), "<|user|>\n{}<|end|>\n<|assistant|>\n", ("{}<|end|>\n",)),
    "phi4": chat((), "<|im_start|>user<|im_sep|>{}<|im_end|><|im_start|>assistant<|im_sep|>", ("{}<|im_end|>",)),
    "qwen": im("You are Qwen, created by Alibaba Cloud. You are a helpful assistant."),
    "qwen3": im(answer=(THINK, IM_ANSWER)),
    "qwen3_nothink": im(),
    "qwen3_5": im(answer=(THINK, IM_ANSWER)),
    "qwen3_5_nothink": im(),
    "smollm": im(),
    "smollm2": im("You are a helpful AI assistant named SmolLM, trained by Hugging Face."),
    "vicuna": chat(
        (
            "A chat between a curious user and an artificial intelligence assistant. "
            "The assistant gives helpful, detailed, and polite answers to the user's questions.",
        ),
        "USER: {} ASSISTANT:",
        ("{}", E),
    ),
    "yi": im(),
    "zephyr": [
        ("<|system|>\nYou are Zephyr, a helpful assistant.", E, "<|user|>\nHi", E, "<|assistant|>\n"),
        ("Hello", E),
        ("<|user|>\nBye", E, "<|assistant|>\n"),
        ("Later", E),
    ],
}
# efficient_eos: no eos after an answer; the eos is learned at the next prompt's first position and appended at the end.
EFFICIENT_EOS = {"falcon", "gemma2", "glm4", "gpt_oss"}
# The end-of-answer token (first stop id) where the template replaces eos with its first stop word.
REPLACED_EOS = {
    "chatml": "<|im_end|>",
    "gemma": "<end_of_turn>",
    "gemma3": "<end_of_turn>",
    "llama3": "<|eot_id|>",
    "llama4": "<|eot|>",
    "phi": "<|end|>",
    "phi4": "<|im_end|>",
    **{q: "<|im_end|>" for q in ("qwen", "qwen3", "qwen3_nothink", "qwen3_5", "qwen3_5_nothink")},
}
SPECIAL = sorted(
    {
        "<|START_OF_TURN_TOKEN|>",
        "<|USER_TOKEN|>",
        "<|END_OF_TURN_TOKEN|>",
        "<|CHATBOT_TOKEN|>",
        "<|SYSTEM_TOKEN|>",
        "<｜User｜>",
        "<｜Assistant｜>",
        "<start_of_turn>",
        "<end_of_turn>",
        "<eos>",
        "[gMASK]",
        "<sop>",
        "<|user|>",
        "<|assistant|>",
        "<|system|>",
        "<|observation|>",
        "<|start|>",
        "<|message|>",
        "<|end|>",
        "<|channel|>",
        "<|start_of_role|>",
        "<|end_of_role|>",
        "<|end_of_text|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eot_id|>",
        "<|eom_id|>",
        "<|header_start|>",
        "<|header_end|>",
        "<|eot|>",
        "<|eom|>",
        "<|im_sep|>",
    }
)


@pytest.fixture(scope="module")
def extended(tiny_model, tmp_path_factory) -> tuple[str, object]:
    """SmolLM2's tokenizer plus every template's special tokens: (model dir, the tokenizer loaded from it)."""
    path = tmp_path_factory.mktemp("extended-tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    tokenizer.add_tokens(SPECIAL, special_tokens=True)
    tokenizer.save_pretrained(path)
    shutil.copy(Path(tiny_model) / "config.json", path / "config.json")
    return str(path), AutoTokenizer.from_pretrained(path)


def encoder(extended, name: str, options: Options = Options()) -> ChatEncoder:
    path, tokenizer = extended
    return ChatEncoder(path, name, options=options, tokenizer=tokenizer)


def expected_ids(tokenizer, message: tuple) -> list[int]:
    ids = []
    for piece in message:
        ids += (
            [tokenizer.bos_token_id]
            if piece is B
            else [tokenizer.eos_token_id]
            if piece is E
            else tokenizer.encode(piece, add_special_tokens=False)
        )
    return ids


def test_the_table_is_the_expected_set():
    assert set(TABLE) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_template_renders_ids_and_labels_like_llamafactory(name, extended):
    enc = encoder(extended, name)
    tok = enc.tokenizer
    [row] = enc.encode([ROW], train_on_prompt=False, mask_history=False)
    messages = [expected_ids(tok, m) for m in EXPECTED[name]]
    ids, labels = sum(messages, []), []
    for i, m in enumerate(messages):
        labels += m if i % 2 else [-100] * len(m)
    eos = tok.eos_token_id
    if name in EFFICIENT_EOS:
        labels[len(messages[0]) + len(messages[1])] = eos  # the first position of the second prompt
        ids, labels = ids + [eos], labels + [eos]
    assert row.input_ids == ids
    assert row.labels == labels
    text = "".join(tok.bos_token if p is B else tok.eos_token if p is E else p for m in EXPECTED[name] for p in m)
    assert tok.decode(row.input_ids) == text + (tok.eos_token if name in EFFICIENT_EOS else "")
    assert row.prompt_ids == sum(messages[:3], [])  # generation starts where the last answer starts
    assert row.reference == "Later"
    first_stop = tok.convert_ids_to_tokens(end_of_turn_token_id(tok, name))
    assert first_stop == REPLACED_EOS.get(name, tok.eos_token)


def test_stop_ids_are_eos_and_the_stop_words(extended):
    tok = extended[1]
    assert tok.convert_ids_to_tokens(stop_token_ids(tok, "llama3")) == ["<|eot_id|>", "<|im_end|>", "<|eom_id|>"]
    assert tok.convert_ids_to_tokens(stop_token_ids(tok, "glm4")) == ["<|im_end|>", "<|user|>", "<|observation|>"]


def test_system_of_the_row_replaces_the_default(extended):
    enc = encoder(extended, "qwen")
    tok = enc.tokenizer
    [row] = enc.encode([[{"role": "system", "content": "Be brief."}, *ROW[:2]]], False, False)
    assert tok.decode(row.input_ids).startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi")
    [row] = encoder(extended, "llama2").encode([[{"role": "system", "content": "S"}, *ROW[:2]]], False, False)
    assert tok.decode(row.input_ids) == "<|im_start|>[INST] <<SYS>>\nS\n<</SYS>>\n\nHi [/INST]Hello<|im_end|>"
    options = Options(default_system="Custom.")
    [row] = encoder(extended, "qwen", options).encode([ROW[:2]], False, False)
    assert tok.decode(row.input_ids).startswith("<|im_start|>system\nCustom.<|im_end|>")


def learned(tok, row) -> str:
    return tok.decode([t for t in row.labels if t != -100])


def test_thinking_blocks(extended):
    thought = [ROW[0], {"role": "assistant", "content": "<think>\nplan\n</think>\n\nHello"}, ROW[2], ROW[3]]
    qwen3 = encoder(extended, "qwen3")
    tok = qwen3.tokenizer
    [row] = qwen3.encode(
        [thought], False, False
    )  # a written thought is kept and learned; the bare answer gets an empty one
    assert learned(tok, row) == "<think>\nplan\n</think>\n\nHello<|im_end|>\n" + THINK + "Later<|im_end|>\n"
    [row] = encoder(extended, "qwen3", Options(enable_thinking=False)).encode([thought], False, False)
    # enable_thinking false: thoughts removed; the empty one is prompt, never learned
    assert learned(tok, row) == "Hello<|im_end|>\nLater<|im_end|>\n"
    assert tok.decode(row.prompt_ids).endswith("<|im_start|>assistant\n" + THINK)
    [row] = encoder(extended, "qwen3", Options(mask_history=True)).encode([thought], False, True)
    # mask_history: earlier thoughts dropped, only the last answer learned (with its empty thought)
    assert "plan" not in tok.decode(row.input_ids)
    assert learned(tok, row) == THINK + "Later<|im_end|>\n"
    [row] = encoder(extended, "qwen3_nothink").encode([thought], False, False)  # rendered as written
    assert learned(tok, row) == "<think>\nplan\n</think>\n\nHello<|im_end|>\nLater<|im_end|>\n"


def test_mask_history_and_train_on_prompt(extended):
    tok = extended[1]
    [row] = encoder(extended, "chatml").encode([ROW], train_on_prompt=False, mask_history=True)
    assert learned(tok, row) == "Later<|im_end|>\n"
    [row] = encoder(extended, "chatml").encode([ROW], train_on_prompt=True, mask_history=False)
    assert row.labels == row.input_ids
    [row] = encoder(extended, "falcon").encode([ROW], train_on_prompt=False, mask_history=True)
    # LLaMA-Factory walks the pairs last-first with mask_history: the first pair's prompt gets the eos label
    assert row.labels[0] == tok.eos_token_id and learned(tok, row) == "<|im_end|>Later\n<|im_end|>"
    with pytest.raises(UserError, match="template 'glm4' does not support train_on_prompt"):
        encoder(extended, "glm4", Options(train_on_prompt=True))


@pytest.mark.parametrize(
    "name, missing",
    [
        ("llama3", "<|start_header_id|> <|end_header_id|> <|eot_id|>"),
        ("gemma", "<start_of_turn> <end_of_turn>"),
        ("phi4", "<|im_sep|>"),
        ("glm4", "<|user|> <|assistant|> <|system|> <|observation|> [gMASK] <sop>"),
    ],
)
def test_template_needs_its_special_tokens(tiny_model, name, missing):
    with pytest.raises(
        UserError,
        match=f"^template '{name}' needs tokens {missing.replace('|', '[|]').replace('[g', '.g').replace('K]', 'K.')} "
        f"which the tokenizer at {tiny_model} does not have$",
    ):
        ChatEncoder(tiny_model, name)


def test_cutoff_shortens_each_pair_like_llamafactory(extended):
    """LLaMA-Factory's infer_seqlen: a pair longer than the budget keeps prompt and answer in proportion
    (when neither is short); pairs past the budget are dropped; with mask_history the last pair goes first."""
    from peftflow.data.tokenize import cut

    tok = extended[1]
    long_answer = " ".join(["word"] * 30)
    row_in = [ROW[0], {"role": "assistant", "content": long_answer}, ROW[2], ROW[3]]
    enc = encoder(extended, "chatml")
    [row] = enc.encode([row_in], False, False)
    source = tok.encode(IM_USER.format("Hi"), add_special_tokens=False)
    target = tok.encode(IM_ANSWER.format(long_answer), add_special_tokens=False)
    budget = 12
    assert 2 * len(target) >= budget and 2 * len(source) >= budget  # neither is short: both shrink
    keep_target = int(budget * len(target) / (len(source) + len(target)))
    cut_row, truncated = cut(row, budget)
    assert truncated and cut_row.input_ids == source[: budget - keep_target] + target[:keep_target]
    assert cut_row.labels == [-100] * (budget - keep_target) + target[:keep_target]
    [row] = enc.encode([row_in], False, True)
    last = expected_ids(tok, (IM_USER.format("Bye"),)) + expected_ids(tok, (IM_ANSWER.format("Later"),))
    cut_row, _ = cut(row, len(last) + 2)  # the last pair whole, then 2 tokens left for the first
    assert cut_row.input_ids[-len(last) :] == last and len(cut_row.input_ids) == len(last) + 2
