"""Is a published version ready for the servers that read it: vLLM for adapters, any
transformers-compatible server (vLLM, TGI, llama.cpp's converter) for merged models.

An adapter version is what vLLM loads beside one shared base (`--enable-lora`): vLLM serves LoRA
only, and refuses adapters with `modules_to_save` (modules trained in full are not adapter
weights it can swap per request). A merged version is served on its own: without its chat
template it answers in the wrong format, and without the template's end-of-turn token as the
generation EOS it never stops.

`check_dir` looks at files only (no weights loaded). A registered version is checked as
`check_dir(mlflow_io.downloads.download_model_dir(uri))` (mlflow_io.publishing imports this module,
not the reverse).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from peftflow.models.heads import is_reward_model

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
VLLM_PEFT_TYPES = ("LORA",)


@dataclass(frozen=True)
class ServingReport:
    path: str
    kind: str  # "adapter" or "merged"
    problems: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return not self.problems


def check_dir(path: str | Path) -> ServingReport:
    """Check a local adapter dir (adapter_config.json) or merged model dir (config.json)."""
    from peftflow.errors import UserError

    root = Path(path)
    if (root / "adapter_config.json").is_file():
        return _check_adapter(root)
    if (root / "config.json").is_file():
        return _check_merged(root)
    raise UserError(f"{root}: neither an adapter (adapter_config.json) nor a model dir (config.json)")


def adapter_problems(adapter_dir: str | Path, tokenizer_dir: str | Path | None = None) -> list[str]:
    """Why vLLM would not serve this adapter with the tokenizer in `tokenizer_dir` (default: the
    adapter dir) beside it; empty when it would."""
    return _check_adapter(Path(adapter_dir), Path(tokenizer_dir) if tokenizer_dir else None).problems


def _check_adapter(root: Path, tokenizer_root: Path | None = None) -> ServingReport:
    problems, checked = [], []
    config = json.loads((root / "adapter_config.json").read_text())
    peft_type = config.get("peft_type")
    if peft_type not in VLLM_PEFT_TYPES:
        problems.append(f"peft_type {peft_type}: vLLM serves LoRA adapters only")
    if config.get("modules_to_save"):
        problems.append(
            f"modules_to_save {config['modules_to_save']}: vLLM refuses adapters with fully trained modules"
        )
    else:
        checked.append("no modules_to_save")
    if config.get("use_dora"):
        problems.append("use_dora: vLLM's LoRA serving has no DoRA magnitude vectors")
    if config.get("target_parameters"):
        problems.append(
            f"target_parameters {config['target_parameters']}: LoRA on stacked MoE expert or router weights, which "
            "vLLM's LoRA loader drops or fails on (vllm#41384, vllm#52194); publish the merged model"
        )
    problems += _weights_problems(root, "adapter_model.safetensors", checked)
    problems += _tokenizer_problems(tokenizer_root or root, checked)
    return ServingReport(str(root), "adapter", problems, checked)


def _check_merged(root: Path) -> ServingReport:
    checked: list[str] = []
    problems = _weights_problems(root, "model*.safetensors", checked)
    problems += _tokenizer_problems(root, checked)
    problems += _reward_problems(root, checked) if is_reward_model(root) else _eos_problems(root, checked)
    return ServingReport(str(root), "merged", problems, checked)


def _reward_problems(root: Path, checked: list[str]) -> list[str]:
    """A reward model generates nothing: it needs one output and the pad id it finds a row's last token by."""
    config = json.loads((root / "config.json").read_text())
    labels = len(config.get("id2label") or {}) or config.get("num_labels", 2)
    problems = [] if labels == 1 else [f"{labels} outputs: a reward model has one score"]
    if config.get("pad_token_id") is None:
        problems.append("no pad_token_id: a batch's rows would be scored at their padding")
    if not problems:
        checked.append("reward model: one score, read at each row's last token before pad_token_id")
    return problems


def _weights_problems(root: Path, pattern: str, checked: list[str]) -> list[str]:
    pickles = sorted(p.name for p in root.iterdir() if p.suffix in PICKLE_SUFFIXES)
    problems = [f"pickle files {', '.join(pickles)}: ship safetensors only"] if pickles else []
    if not list(root.glob(pattern)):
        problems.append(f"no {pattern} weights")
    elif not pickles:
        checked.append("safetensors weights only")
    return problems


def _tokenizer_problems(root: Path, checked: list[str]) -> list[str]:
    if not (root / "tokenizer_config.json").is_file():
        return ["no tokenizer beside the weights (tokenizer_config.json)"]
    if not _chat_template(root):
        return ["the tokenizer has no chat template"]
    checked.append("tokenizer with chat template")
    return []


def _chat_template(root: Path) -> str | None:
    if (root / "chat_template.jinja").is_file():
        return (root / "chat_template.jinja").read_text()
    return json.loads((root / "tokenizer_config.json").read_text()).get("chat_template")


def _eos_problems(root: Path, checked: list[str]) -> list[str]:
    """The generation EOS must include the token that ends an assistant turn in the chat template."""
    from transformers import AutoTokenizer

    from peftflow.data.templates import end_of_turn_token_id

    gen = root / "generation_config.json"
    if not gen.is_file():
        return ["no generation_config.json (the server would not know the end-of-turn token stops generation)"]
    if not _chat_template(root) or not (root / "tokenizer_config.json").is_file():
        return []  # reported by the tokenizer check
    eos = json.loads(gen.read_text()).get("eos_token_id")
    eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    tokenizer = AutoTokenizer.from_pretrained(root, trust_remote_code=False)  # a version peftflow published
    end = end_of_turn_token_id(tokenizer, "default")
    if end not in eos_ids:
        return [
            f"generation_config eos_token_id {sorted(eos_ids)} lacks the chat template's end-of-turn token "
            f"{tokenizer.convert_ids_to_tokens(end)!r} (id {end}): generation would not stop at the end of a turn"
        ]
    checked.append(f"generation EOS includes the end-of-turn token {tokenizer.convert_ids_to_tokens(end)!r}")
    return []
