"""The distillation teacher and student as plain local models: the teacher with its adapter merged
in, the student given or pruned from the teacher, both checked to share one vocabulary.

Derived models are built once into the model cache, keyed by the teacher's content fingerprint.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from peftflow.derived_models import cached_model, with_adapter_merged
from peftflow.errors import UserError
from peftflow.models.resolve import ResolvedModel, resolve_model


def pruned_layer_indices(teacher_layers: int, student_layers: int) -> list[int]:
    """Evenly spaced teacher layers, first and last included (DistilBERT kept every other one)."""
    if not 0 < student_layers <= teacher_layers:
        raise ValueError(f"student_layers must be between 1 and the teacher's {teacher_layers}")
    if student_layers == 1:
        return [0]
    return [round(i * (teacher_layers - 1) / (student_layers - 1)) for i in range(student_layers)]


def prune_layers(teacher_dir: str, student_layers: int, out_dir: str | Path, trust_remote_code: bool = False) -> Path:
    """A student with `student_layers` decoder layers copied from the teacher; everything else
    (embeddings, final norm, head, tokenizer) copied as is."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(teacher_dir, trust_remote_code=trust_remote_code)
    keep = pruned_layer_indices(config.num_hidden_layers, student_layers)
    config.num_hidden_layers = student_layers
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in keep]
    state = {}
    for f in sorted(Path(teacher_dir).glob("*.safetensors")):
        state.update(load_file(f))
    layer_key = re.compile(r"^(.*\.layers\.)(\d+)(\..*)$")
    new_index = {old: new for new, old in enumerate(keep)}
    student_state = {}
    for key, tensor in state.items():
        m = layer_key.match(key)
        if not m:
            student_state[key] = tensor
        elif int(m.group(2)) in new_index:
            student_state[f"{m.group(1)}{new_index[int(m.group(2))]}{m.group(3)}"] = tensor
    student = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    missing, unexpected = student.load_state_dict(student_state, strict=False)
    if unexpected or [k for k in missing if not k.endswith("lm_head.weight")]:
        raise RuntimeError(f"pruned student does not match its config: missing {missing}, unexpected {unexpected}")
    if config.tie_word_embeddings:
        student.tie_weights()
    student.save_pretrained(out_dir, safe_serialization=True)
    AutoTokenizer.from_pretrained(teacher_dir, trust_remote_code=trust_remote_code).save_pretrained(out_dir)
    return Path(out_dir)


def check_same_tokenizer(teacher_dir: str, student_dir: str, trust_remote_code: bool = False) -> None:
    """KD compares distributions token by token: both models must share one vocabulary."""
    from transformers import AutoTokenizer

    t = AutoTokenizer.from_pretrained(teacher_dir, trust_remote_code=trust_remote_code).get_vocab()
    s = AutoTokenizer.from_pretrained(student_dir, trust_remote_code=trust_remote_code).get_vocab()
    if t != s:
        differing = len(set(t.items()) ^ set(s.items()))
        raise UserError(
            f"teacher ({teacher_dir}) and student ({student_dir}) tokenizers differ "
            f"({len(t)} vs {len(s)} tokens, {differing} entries differ); distillation needs one vocabulary"
        )


def load_teacher(teacher_dir: str, trust_remote_code: bool = False):
    """The frozen teacher in eval mode."""
    from transformers import AutoModelForCausalLM

    return (
        AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32, trust_remote_code=trust_remote_code)
        .eval()
        .requires_grad_(False)
    )


def resolve_teacher(cfg) -> ResolvedModel:
    """The teacher as a plain local model: `teacher_adapter`, if any, merged in once and cached."""
    teacher = resolve_model(cfg.teacher, cfg.allow_pickle_weights, cfg.storage, key="teacher")
    if not cfg.teacher_adapter:
        return teacher
    adapter = Path(cfg.teacher_adapter).expanduser()
    if not (adapter / "adapter_config.json").is_file():
        raise UserError(f"teacher_adapter: {adapter} is not a PEFT adapter directory (no adapter_config.json)")
    return with_adapter_merged(teacher, adapter, "teacher", cfg.trust_remote_code)


def resolve_student(cfg, teacher: ResolvedModel) -> ResolvedModel:
    """The student: `model_name_or_path`, or the teacher pruned to `student_layers`. Checked to
    share the teacher's tokenizer before any compute."""
    if cfg.student_layers:
        name = f"pruned-{teacher.fingerprint}-{cfg.student_layers}"
        student = resolve_model(
            cached_model(name, lambda out: prune_layers(teacher.path, cfg.student_layers, out, cfg.trust_remote_code))
        )
    else:
        student = resolve_model(cfg.model_name_or_path, cfg.allow_pickle_weights, cfg.storage)
    check_same_tokenizer(teacher.path, student.path, cfg.trust_remote_code)
    return student
