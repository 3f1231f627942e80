"""LLaMA-Factory's chat templates by name, as one table of format strings.

Each row holds the facts of LLaMA-Factory 0.9.5's template of the same name
(`src/llamafactory/data/template.py`): the slots written around a user, assistant, system,
function-call and observation message, the prefix, default system prompt, stop words,
`efficient_eos`, whether the system prompt is fused into the first user message (its
Llama2Template), and whether it is a reasoning template (thinking blocks). `row()` fills the
same defaults LLaMA-Factory's `register_template` fills.

A slot is a tuple of pieces; a text piece may hold `{{content}}`; BOS and EOS stand for the
tokenizer's own bos / eos token. Each piece is tokenised on its own, as LLaMA-Factory does.
`tokens` are the special tokens a row writes that must be single tokens of the tokenizer; a
tokenizer without them cannot be trained with the row (checked at validate).
"""

from __future__ import annotations

from dataclasses import dataclass

BOS, EOS = "\0bos_token", "\0eos_token"  # markers, never text
Slot = tuple[str, ...]
THINK = ("<think>\n", "\n</think>\n\n")


@dataclass(frozen=True)
class TableTemplate:
    name: str
    user: Slot
    assistant: Slot
    system: Slot
    function: Slot
    observation: Slot
    prefix: Slot
    default_system: str
    stop_words: tuple[str, ...]
    efficient_eos: bool
    replace_eos: bool  # the first stop word is the end of an answer (instead of eos)
    fuse_system: bool  # system text goes inside the first user slot (LLaMA-Factory's Llama2Template)
    reasoning: bool  # adds / strips thinking blocks (LLaMA-Factory's ReasoningTemplate)
    thought_words: tuple[str, str]
    tool_format: str
    tokens: tuple[str, ...]
    replace_jinja: bool  # an export writes this template as the tokenizer's chat template


def row(
    name: str,
    *,
    user: Slot = ("{{content}}",),
    assistant: Slot | None = None,
    system: Slot | None = None,
    function: Slot | None = None,
    observation: Slot | None = None,
    prefix: Slot = (),
    default_system: str = "",
    stop_words: tuple[str, ...] = (),
    efficient_eos: bool = False,
    replace_eos: bool = False,
    fuse_system: bool = False,
    reasoning: bool = False,
    thought_words: tuple[str, str] = THINK,
    tool_format: str = "default",
    tokens: tuple[str, ...] = (),
    replace_jinja: bool = False,
) -> TableTemplate:
    """A table row with register_template's defaults: assistant = content (+ eos unless
    efficient_eos), system = content, function = assistant, observation = user."""
    assistant = assistant or (("{{content}}",) if efficient_eos else ("{{content}}", EOS))
    return TableTemplate(
        name,
        user,
        assistant,
        system or ("{{content}}",),
        function or assistant,
        observation or user,
        prefix,
        default_system,
        stop_words,
        efficient_eos,
        replace_eos,
        fuse_system,
        reasoning,
        thought_words,
        tool_format,
        tokens,
        replace_jinja,
    )


_IM = ("<|im_start|>", "<|im_end|>")
_IM_USER = ("<|im_start|>user\n{{content}}<|im_end|>\n<|im_start|>assistant\n",)
_IM_ASSISTANT = ("{{content}}<|im_end|>\n",)
_IM_SYSTEM = ("<|im_start|>system\n{{content}}<|im_end|>\n",)
_QWEN_OBSERVATION = (
    "<|im_start|>user\n<tool_response>\n{{content}}\n</tool_response><|im_end|>\n<|im_start|>assistant\n",
)
_QWEN = dict(
    user=_IM_USER,
    assistant=_IM_ASSISTANT,
    system=_IM_SYSTEM,
    observation=_QWEN_OBSERVATION,
    stop_words=("<|im_end|>",),
    replace_eos=True,
    tool_format="qwen",
    tokens=_IM,
)
_CHATML = dict(user=_IM_USER, assistant=_IM_ASSISTANT, system=_IM_SYSTEM, stop_words=("<|im_end|>",), tokens=_IM)
_GEMMA = dict(
    user=("<start_of_turn>user\n{{content}}<end_of_turn>\n<start_of_turn>model\n",),
    assistant=("{{content}}<end_of_turn>\n",),
    system=("{{content}}\n\n",),
    observation=("<start_of_turn>tool\n{{content}}<end_of_turn>\n<start_of_turn>model\n",),
    prefix=(BOS,),
    fuse_system=True,
    tokens=("<start_of_turn>", "<end_of_turn>"),
)
_LLAMA3_TOKENS = ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
_DEEPSEEK3 = dict(
    user=("<｜User｜>{{content}}<｜Assistant｜>",), prefix=(BOS,), tokens=("<｜User｜>", "<｜Assistant｜>")
)
_INTERN_SYSTEM = (
    "You are an AI assistant whose name is InternLM (书生·浦语).\n"
    "- InternLM (书生·浦语) is a conversational language model that is developed by Shanghai AI Laboratory "
    "(上海人工智能实验室). It is designed to be helpful, honest, and harmless.\n"
    "- InternLM (书生·浦语) can understand and communicate fluently in the language "
    "chosen by the user such as English and 中文."
)
_VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

TABLE: dict[str, TableTemplate] = {
    t.name: t
    for t in [
        row(
            "alpaca",
            user=("### Instruction:\n{{content}}\n\n### Response:\n",),
            assistant=("{{content}}", EOS, "\n\n"),
            default_system="Below is an instruction that describes a task. "
            "Write a response that appropriately completes the request.\n\n",
            replace_jinja=True,
        ),
        row(
            "chatml",
            user=_IM_USER,
            assistant=_IM_ASSISTANT,
            system=_IM_SYSTEM,
            observation=("<|im_start|>tool\n{{content}}<|im_end|>\n<|im_start|>assistant\n",),
            stop_words=("<|im_end|>", "<|im_start|>"),
            replace_eos=True,
            tokens=_IM,
            replace_jinja=True,
        ),
        row(
            "cohere",
            user=(
                "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>{{content}}<|END_OF_TURN_TOKEN|>"
                "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>",
            ),
            system=("<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>{{content}}<|END_OF_TURN_TOKEN|>",),
            prefix=(BOS,),
            tokens=(
                "<|START_OF_TURN_TOKEN|>",
                "<|USER_TOKEN|>",
                "<|END_OF_TURN_TOKEN|>",
                "<|CHATBOT_TOKEN|>",
                "<|SYSTEM_TOKEN|>",
            ),
        ),
        row("deepseek", user=("User: {{content}}\n\nAssistant:",), system=("{{content}}\n\n",), prefix=(BOS,)),
        row("deepseek3", **_DEEPSEEK3),
        row("deepseekr1", **_DEEPSEEK3, reasoning=True),
        row(
            "default",
            user=("Human: {{content}}", EOS, "\nAssistant:"),
            assistant=("{{content}}", EOS, "\n"),
            system=("System: {{content}}", EOS, "\n"),
            replace_jinja=True,
        ),
        row("empty", assistant=("{{content}}",)),
        row("falcon", user=("User: {{content}}\nFalcon:",), assistant=("{{content}}\n",), efficient_eos=True),
        row("gemma", **_GEMMA, stop_words=("<end_of_turn>",), replace_eos=True),
        row("gemma2", **_GEMMA, stop_words=("<eos>", "<end_of_turn>"), efficient_eos=True),
        row("gemma3", **_GEMMA, stop_words=("<end_of_turn>",), replace_eos=True),
        row(
            "glm4",
            user=("<|user|>\n{{content}}<|assistant|>",),
            assistant=("\n{{content}}",),
            system=("<|system|>\n{{content}}",),
            function=("{{content}}",),
            observation=("<|observation|>\n{{content}}<|assistant|>",),
            prefix=("[gMASK]<sop>",),
            stop_words=("<|user|>", "<|observation|>"),
            efficient_eos=True,
            tool_format="glm4",
            tokens=("<|user|>", "<|assistant|>", "<|system|>", "<|observation|>", "[gMASK]", "<sop>"),
        ),
        row(
            "gpt_oss",
            user=("<|start|>user<|message|>{{content}}<|end|><|start|>assistant",),
            assistant=("{{content}}",),
            system=("<|start|>system<|message|>{{content}}<|end|>",),
            default_system="You are ChatGPT, a large language model trained by OpenAI.",
            thought_words=("<|channel|>analysis<|message|>", "<|end|><|start|>assistant<|channel|>final<|message|>"),
            efficient_eos=True,
            reasoning=True,
            tokens=("<|start|>", "<|message|>", "<|end|>", "<|channel|>"),
        ),
        row(
            "granite4",
            user=(
                "<|start_of_role|>user<|end_of_role|>{{content}}<|end_of_text|>\n"
                "<|start_of_role|>assistant<|end_of_role|>",
            ),
            assistant=("{{content}}<|end_of_text|>\n",),
            system=("<|start_of_role|>system<|end_of_role|>{{content}}<|end_of_text|>\n",),
            observation=(
                "<|start_of_role|>tool<|end_of_role|>{{content}}<|end_of_text|>\n<|start_of_role|>assistant\n",
            ),
            stop_words=("<|end_of_text|>",),
            default_system="You are Granite, developed by IBM. You are a helpful AI assistant.",
            tokens=("<|start_of_role|>", "<|end_of_role|>", "<|end_of_text|>"),
        ),
        row("intern2", **_CHATML, prefix=(BOS,), default_system=_INTERN_SYSTEM),
        row(
            "llama2",
            user=(BOS, "[INST] {{content}} [/INST]"),
            system=("<<SYS>>\n{{content}}\n<</SYS>>\n\n",),
            fuse_system=True,
        ),
        row(
            "llama3",
            user=(
                "<|start_header_id|>user<|end_header_id|>\n\n{{content}}<|eot_id|>"
                "<|start_header_id|>assistant<|end_header_id|>\n\n",
            ),
            assistant=("{{content}}<|eot_id|>",),
            system=("<|start_header_id|>system<|end_header_id|>\n\n{{content}}<|eot_id|>",),
            observation=(
                "<|start_header_id|>ipython<|end_header_id|>\n\n{{content}}<|eot_id|>"
                "<|start_header_id|>assistant<|end_header_id|>\n\n",
            ),
            prefix=(BOS,),
            stop_words=("<|eot_id|>", "<|eom_id|>"),
            replace_eos=True,
            tool_format="llama3",
            tokens=_LLAMA3_TOKENS,
        ),
        row(
            "llama4",
            user=(
                "<|header_start|>user<|header_end|>\n\n{{content}}<|eot|><|header_start|>assistant<|header_end|>\n\n",
            ),
            assistant=("{{content}}<|eot|>",),
            system=("<|header_start|>system<|header_end|>\n\n{{content}}<|eot|>",),
            observation=(
                "<|header_start|>ipython<|header_end|>\n\n{{content}}<|eot|><|header_start|>assistant<|header_end|>\n\n",
            ),
            prefix=(BOS,),
            stop_words=("<|eot|>", "<|eom|>"),
            replace_eos=True,
            tool_format="llama3",
            tokens=("<|header_start|>", "<|header_end|>", "<|eot|>"),
        ),
        row(
            "ministral",
            user=("[INST]{{content}}[/INST]",),
            system=("{{content}}\n\n",),
            function=("[TOOL_CALLS]{{content}}", EOS),
            observation=('[TOOL_RESULTS]{"content": {{content}}}[/TOOL_RESULTS]',),
            prefix=(BOS,),
            fuse_system=True,
            tool_format="mistral",
        ),
        row(
            "mistral",
            user=("[INST] {{content}}[/INST]",),
            assistant=(" {{content}}", EOS),
            system=("{{content}}\n\n",),
            function=("[TOOL_CALLS] {{content}}", EOS),
            observation=('[TOOL_RESULTS] {"content": {{content}}}[/TOOL_RESULTS]',),
            prefix=(BOS,),
            fuse_system=True,
            tool_format="mistral",
        ),
        row("olmo", user=("<|user|>\n{{content}}<|assistant|>\n",), prefix=(EOS,)),
        row(
            "phi",
            user=("<|user|>\n{{content}}<|end|>\n<|assistant|>\n",),
            assistant=("{{content}}<|end|>\n",),
            system=("<|system|>\n{{content}}<|end|>\n",),
            stop_words=("<|end|>",),
            replace_eos=True,
            tokens=("<|user|>", "<|end|>", "<|assistant|>", "<|system|>"),
        ),
        row(
            "phi4",
            user=("<|im_start|>user<|im_sep|>{{content}}<|im_end|><|im_start|>assistant<|im_sep|>",),
            assistant=("{{content}}<|im_end|>",),
            system=("<|im_start|>system<|im_sep|>{{content}}<|im_end|>",),
            stop_words=("<|im_end|>",),
            replace_eos=True,
            tokens=("<|im_start|>", "<|im_sep|>", "<|im_end|>"),
        ),
        row("qwen", **_QWEN, default_system="You are Qwen, created by Alibaba Cloud. You are a helpful assistant."),
        row("qwen3", **_QWEN, reasoning=True),
        row("qwen3_nothink", **_QWEN),
        row("qwen3_5", **{**_QWEN, "tool_format": "qwen3_5"}, reasoning=True),
        row("qwen3_5_nothink", **{**_QWEN, "tool_format": "qwen3_5"}),
        row("smollm", **_CHATML),
        row(
            "smollm2", **_CHATML, default_system="You are a helpful AI assistant named SmolLM, trained by Hugging Face."
        ),
        row("vicuna", user=("USER: {{content}} ASSISTANT:",), default_system=_VICUNA_SYSTEM, replace_jinja=True),
        row("yi", **_CHATML),
        row(
            "zephyr",
            user=("<|user|>\n{{content}}", EOS, "<|assistant|>\n"),
            system=("<|system|>\n{{content}}", EOS),
            default_system="You are Zephyr, a helpful assistant.",
        ),
    ]
}
