"""Logit knowledge distillation: a teacher's output distribution teaches a student.

loss = kd_ratio * T^2 * KL(teacher || student, at temperature T) + (1 - kd_ratio) * CE
over supervised positions only. Logits are never materialised for the whole batch: positions
are processed in chunks, and each chunk's logits are recomputed in the backward pass
(activation checkpointing), so memory holds one chunk of (chunk x vocab) at a time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


@dataclass(frozen=True)
class KDSettings:
    temperature: float = 2.0
    kd_ratio: float = 0.5
    direction: str = "forward"  # forward: KL(teacher || student); reverse: KL(student || teacher)
    chunk_size: int = 256       # supervised positions per chunk


@dataclass
class TeacherTopK:
    """Cached teacher logits for N supervised positions: the k largest values and their token ids.
    Exact for k = vocab; for k < vocab the teacher distribution is renormalised over its top k."""
    values: torch.Tensor   # [N, k] float
    indices: torch.Tensor  # [N, k] long


def supervised(hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states that predict a label (shifted by one) and those labels: [N, H], [N]."""
    targets = labels[:, 1:]
    mask = targets != -100
    return hidden[:, :-1][mask], targets[mask]


def _chunk_losses(s_hidden, s_weight, teacher_part, targets, settings: KDSettings, full_vocab: bool):
    """Summed (KL, CE) over one chunk of positions. `teacher_part` is teacher logits [c, V] when
    `full_vocab`, else a (values, indices) top-k pair."""
    t = settings.temperature
    s_logits = (s_hidden @ s_weight.T).float()
    ce = F.cross_entropy(s_logits, targets, reduction="sum")
    s_logp = F.log_softmax(s_logits / t, dim=-1)
    if full_vocab:
        t_logp = F.log_softmax(teacher_part.float() / t, dim=-1)
        if settings.direction == "forward":
            kl = F.kl_div(s_logp, t_logp, log_target=True, reduction="sum")
        else:
            kl = F.kl_div(t_logp, s_logp, log_target=True, reduction="sum")
    else:
        values, indices = teacher_part
        t_logp = F.log_softmax(values.float() / t, dim=-1)  # renormalised over the top k
        kl = (t_logp.exp() * (t_logp - s_logp.gather(-1, indices))).sum()
    return kl, ce


def kd_loss(s_hidden: torch.Tensor, s_weight: torch.Tensor, targets: torch.Tensor, settings: KDSettings,
            teacher_logits_fn=None, teacher_topk: TeacherTopK | None = None) -> dict[str, torch.Tensor]:
    """Distillation loss over N supervised positions, computed in chunks.

    s_hidden: student final hidden states [N, H]; s_weight: student output embedding [V, H].
    The teacher is either `teacher_logits_fn(start, end) -> [c, V]` (computed on the fly) or a
    top-k cache aligned with the positions.
    """
    n = s_hidden.shape[0]
    if n == 0:
        zero = s_hidden.sum() * 0
        return {"loss": zero, "kl": zero.detach(), "ce": zero.detach()}
    full_vocab = teacher_topk is None
    if not full_vocab and settings.direction != "forward":
        raise ValueError("reverse KL needs the full teacher distribution; use a live teacher or k = vocab")
    kl_sum = ce_sum = 0.0
    for start in range(0, n, settings.chunk_size):
        end = min(start + settings.chunk_size, n)
        if full_vocab:
            with torch.no_grad():
                part = teacher_logits_fn(start, end)
        else:
            part = (teacher_topk.values[start:end], teacher_topk.indices[start:end])
        kl, ce = checkpoint(_chunk_losses, s_hidden[start:end], s_weight, part, targets[start:end], settings,
                            full_vocab, use_reentrant=False)
        kl_sum, ce_sum = kl_sum + kl, ce_sum + ce
    kl_mean, ce_mean = kl_sum / n, ce_sum / n
    loss = settings.kd_ratio * settings.temperature ** 2 * kl_mean + (1 - settings.kd_ratio) * ce_mean
    return {"loss": loss, "kl": kl_mean.detach(), "ce": ce_mean.detach()}


def decoder_and_head(model):
    """The transformer body (LoRA layers included) and the output embedding of a (peft) causal LM."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings()


def final_hidden(model, input_ids, attention_mask) -> torch.Tensor:
    decoder, _ = decoder_and_head(model)
    return decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


@torch.no_grad()
def teacher_topk(teacher, rows: list[dict], k: int, batch_size: int = 8) -> TeacherTopK:
    """Top-k teacher logits for every supervised position of `rows`, in row-major order."""
    _, head = decoder_and_head(teacher)
    values, indices = [], []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        ids, mask, labels = pad_batch(chunk)
        hidden, _ = supervised(final_hidden(teacher, ids, mask), labels)
        top = (hidden @ head.weight.T).float().topk(k, dim=-1)
        values.append(top.values)
        indices.append(top.indices)
    return TeacherTopK(torch.cat(values), torch.cat(indices))


def pad_batch(rows: list[dict], pad_id: int = 0):
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.tensor([r["input_ids"] + [pad_id] * (width - len(r["input_ids"])) for r in rows])
    mask = torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in rows])
    labels = torch.tensor([r["labels"] + [-100] * (width - len(r["labels"])) for r in rows])
    return ids, mask, labels


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


# --- the training step, the teacher cache, and the student/teacher models -------------------

def distill_step(student, teacher, batch, settings: KDSettings, cache: "TeacherCache | None" = None):
    """KD loss for one batch: from the live teacher, or from the cache rows named by batch['row_id']."""
    s_hidden, targets = supervised(final_hidden(student, batch["input_ids"], batch["attention_mask"]), batch["labels"])
    s_weight = decoder_and_head(student)[1].weight
    if cache is not None:
        return kd_loss(s_hidden, s_weight, targets, settings, teacher_topk=cache.rows(batch["row_id"].tolist()))
    with torch.no_grad():
        t_hidden, _ = supervised(final_hidden(teacher, batch["input_ids"], batch["attention_mask"]), batch["labels"])
    t_weight = decoder_and_head(teacher)[1].weight
    return kd_loss(s_hidden, s_weight, targets, settings, lambda a, b: t_hidden[a:b] @ t_weight.T)


@dataclass
class TeacherCache:
    """Top-k teacher logits for every supervised position of every training row, row-indexed."""
    values: torch.Tensor   # [N, k]
    indices: torch.Tensor  # [N, k] int32
    offsets: torch.Tensor  # [rows + 1]: row r owns positions offsets[r]:offsets[r+1]

    def rows(self, row_ids: list[int]) -> TeacherTopK:
        spans = [(int(self.offsets[r]), int(self.offsets[r + 1])) for r in row_ids]
        return TeacherTopK(torch.cat([self.values[a:b] for a, b in spans]),
                           torch.cat([self.indices[a:b] for a, b in spans]).long())

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        tmp = path.with_suffix(".tmp")
        save_file({"values": self.values, "indices": self.indices, "offsets": self.offsets}, str(tmp))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "TeacherCache":
        from safetensors.torch import load_file

        t = load_file(str(path))
        return cls(t["values"], t["indices"], t["offsets"])


def teacher_cache(teacher, train_rows, k: int, path: Path) -> TeacherCache:
    """Load the cache at `path` (keyed by teacher, data and k), or compute and save it."""
    if path.is_file():
        return TeacherCache.load(path)
    k = teacher.config.vocab_size if k < 0 else k
    rows = [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in train_rows]
    top = teacher_topk(teacher, rows, k)
    counts = [sum(1 for label in r["labels"][1:] if label != -100) for r in rows]
    offsets = torch.tensor([0] + counts).cumsum(0)
    cache = TeacherCache(top.values, top.indices.int(), offsets)
    path.parent.mkdir(parents=True, exist_ok=True)
    cache.save(path)
    return cache


def check_same_tokenizer(teacher_dir: str, student_dir: str, trust_remote_code: bool = False) -> None:
    """KD compares distributions token by token: both models must share one vocabulary."""
    from transformers import AutoTokenizer

    from peftflow.errors import UserError

    t = AutoTokenizer.from_pretrained(teacher_dir, trust_remote_code=trust_remote_code).get_vocab()
    s = AutoTokenizer.from_pretrained(student_dir, trust_remote_code=trust_remote_code).get_vocab()
    if t != s:
        differing = len(set(t.items()) ^ set(s.items()))
        raise UserError(f"teacher ({teacher_dir}) and student ({student_dir}) tokenizers differ "
                        f"({len(t)} vs {len(s)} tokens, {differing} entries differ); distillation needs one vocabulary")


def load_teacher(teacher_dir: str, trust_remote_code: bool = False):
    """The frozen teacher in eval mode."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32,
                                                trust_remote_code=trust_remote_code).eval().requires_grad_(False)


def _cached_model(name: str, build) -> str:
    """Build a derived model once into the model cache (atomically, under a lock); return its dir."""
    import os
    import shutil
    import tempfile

    from filelock import FileLock

    from peftflow.paths import cache_dir

    target = cache_dir("models") / name
    with FileLock(str(target) + ".lock"):
        if not (target / "config.json").is_file():
            tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}-"))
            build(tmp)
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
    return str(target)


def resolve_teacher(cfg):
    """The teacher as a plain local model: `teacher_adapter`, if any, merged in once and cached."""
    from peftflow.errors import UserError
    from peftflow.merge import merge
    from peftflow.models import fingerprint_dir, resolve_model

    teacher = resolve_model(cfg.teacher, cfg.allow_pickle_weights)
    if not cfg.teacher_adapter:
        return teacher
    adapter = Path(cfg.teacher_adapter).expanduser()
    if not (adapter / "adapter_config.json").is_file():
        raise UserError(f"teacher_adapter: {adapter} is not a PEFT adapter directory (no adapter_config.json)")
    name = f"teacher-{teacher.fingerprint}-{fingerprint_dir(adapter)}"
    return resolve_model(_cached_model(name, lambda out: merge(teacher.path, str(adapter), out, tolerance=1e-3,
                                                                 trust_remote_code=cfg.trust_remote_code)))


def resolve_student(cfg, teacher):
    """The student: `model_name_or_path`, or the teacher pruned to `student_layers`. Checked to
    share the teacher's tokenizer before any compute."""
    from peftflow.models import resolve_model

    if cfg.student_layers:
        name = f"pruned-{teacher.fingerprint}-{cfg.student_layers}"
        student = resolve_model(_cached_model(name, lambda out: prune_layers(teacher.path, cfg.student_layers, out,
                                                                                  cfg.trust_remote_code)))
    else:
        student = resolve_model(cfg.model_name_or_path, cfg.allow_pickle_weights)
    check_same_tokenizer(teacher.path, student.path, cfg.trust_remote_code)
    return student
