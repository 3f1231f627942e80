"""Score models on the held-out split: loss / perplexity and a generation metric per example."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from datasets import concatenate_datasets, load_from_disk
from transformers import AutoProcessor, AutoTokenizer

from peftflow.config import RunConfig
from peftflow.data.templates import stop_token_ids
from peftflow.evaluation.metrics import METRICS
from peftflow.evaluation.report import EvalReport, ModelScores
from peftflow.models import vision

log = logging.getLogger("peftflow.evaluate")


def _image_inputs(pixels, rows: dict) -> dict:
    """`pixel_values` for a batch of rows with images (multimodal data); nothing for text."""
    if pixels is None or "images" not in rows:
        return {}
    values = pixels(rows["images"])
    return {} if values is None else {"pixel_values": values}


@torch.no_grad()
def heldout_loss(model, eval_set, pad_id: int, batch_size: int, pixels=None) -> float:
    """Mean cross-entropy per supervised token (token-weighted, like training).
    `pixels(images of the rows) -> pixel_values` feeds a vision-language model its images."""
    total, count = 0.0, 0
    for start in range(0, len(eval_set), batch_size):
        rows = eval_set[start:start + batch_size]
        width = max(map(len, rows["input_ids"]))
        ids = torch.tensor([r + [pad_id] * (width - len(r)) for r in rows["input_ids"]])
        labels = torch.tensor([r + [-100] * (width - len(r)) for r in rows["labels"]])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows["input_ids"]])
        logits = model(input_ids=ids, attention_mask=mask, **_image_inputs(pixels, rows)).logits
        # Prompt / P-tuning models return logits for their virtual tokens too, in front.
        logits = logits[:, logits.shape[1] - ids.shape[1]:][:, :-1].float()
        target = labels[:, 1:]
        total += float(torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, ignore_index=-100, reduction="sum"))
        count += int((target != -100).sum())
    return total / max(count, 1)


def uncached_generation(model) -> bool:
    """Prompt-learning adapters (prompt tuning, P-tuning) generate garbage after the first token when
    generate() reuses its KV cache (peft 0.18 x transformers 5: the virtual tokens and the cache
    disagree), while their teacher-forced loss is fine; without the cache they match a step-by-step
    greedy decode (tests/unit/test_methods.py). Slower, but right."""
    config = getattr(model, "active_peft_config", None)
    return bool(config is not None and config.is_prompt_learning)


@torch.no_grad()
def generate(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, batch_size: int,
             stop_ids: list[int], images: list | None = None, pixels=None) -> list[str]:
    """Greedy continuations of token-id prompts, left-padded so every row ends at its prompt.
    `images` (per prompt) and `pixels` as in heldout_loss, for a vision-language model."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    outputs = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        width = max(map(len, chunk))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
        extra = _image_inputs(pixels, {"images": images[start:start + batch_size]} if images else {})
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=stop_ids, pad_token_id=pad, use_cache=not uncached_generation(model), **extra)
        outputs += tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
        log.info("generated %d/%d rows", len(outputs), len(prompts))
    return outputs


def is_adapter_dir(model_dir: str | Path) -> bool:
    return (Path(model_dir) / "adapter_config.json").is_file()


def load_model(model_dir: str, base_model_dir: str | None = None, trust_remote_code: bool = False):
    """A plain model dir, or an adapter dir applied to its base (`base_model_dir`, else the base
    the adapter records). Prompt-family adapters cannot be merged, so they are scored this way."""
    if not is_adapter_dir(model_dir):
        return vision.model_class(model_dir).from_pretrained(model_dir, dtype=torch.float32,
                                                             trust_remote_code=trust_remote_code).eval()
    from peft import PeftConfig, PeftModel

    base_dir = base_model_dir or PeftConfig.from_pretrained(model_dir).base_model_name_or_path
    base = vision.model_class(base_dir).from_pretrained(base_dir, dtype=torch.float32, trust_remote_code=trust_remote_code)
    return PeftModel.from_pretrained(base, model_dir).eval()


def _load_scored(model_dir: str, base_model_dir: str | None, cfg: RunConfig):
    """(tokenizer, model, pad id) of a model dir (or adapter dir on its base) for scoring."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=cfg.trust_remote_code)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return tokenizer, load_model(model_dir, base_model_dir, cfg.trust_remote_code), pad


def score_model(label: str, model_dir: str, data_path: str, cfg: RunConfig,
                base_model_dir: str | None = None) -> ModelScores:
    ecfg = cfg.evaluation
    tokenizer, model, pad = _load_scored(model_dir, base_model_dir, cfg)
    eval_set = load_from_disk(str(Path(data_path) / "eval"))
    pixels = None
    if "images" in eval_set.column_names:  # held-out images go through the scored model's own image processor
        image_processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=cfg.trust_remote_code).image_processor
        pixels = lambda images: vision.pixel_values(image_processor, images)  # noqa: E731
    log.info("scoring %s: loss on %d held-out rows", label, len(eval_set))
    loss = heldout_loss(model, eval_set, pad, ecfg.batch_size, pixels) if len(eval_set) else math.nan

    scored = eval_set.select(range(min(ecfg.max_samples, len(eval_set))))
    log.info("scoring %s: generating on %d rows (max_new_tokens %d)", label, len(scored), ecfg.max_new_tokens)
    # Stop at the template's end-of-turn token: the one training taught the model to emit.
    predictions = generate(model, tokenizer, scored["prompt_ids"], ecfg.max_new_tokens, ecfg.batch_size,
                           stop_token_ids(tokenizer, cfg.template),
                           scored["images"] if pixels else None, pixels)
    metric = METRICS[ecfg.metric]
    examples = [{"index": i, "prediction": p, "reference": r, "score": metric(p, r)}
                for i, (p, r) in enumerate(zip(predictions, scored["reference"]))]
    score = sum(e["score"] for e in examples) / len(examples) if examples else math.nan
    log.info("scored %s: loss %.4f, %s %.4f", label, loss, ecfg.metric, score)
    return ModelScores(label, round(loss, 5), round(math.exp(loss), 4) if not math.isnan(loss) else math.nan,
                       round(score, 4), examples)


def compare(models: dict[str, str], data_path: str, cfg: RunConfig, out_path: Path,
            base_model_dir: str | None = None, bases: dict[str, str] | None = None) -> EvalReport:
    """Score each labelled model dir (e.g. base, tuned, champion) on the same held-out rows.
    An adapter dir is scored as base + adapter: its own base from `bases` (a champion published as
    an adapter on another base), else `base_model_dir`, else the base it records."""
    bases = bases or {}
    report = EvalReport(cfg.evaluation.metric, {label: score_model(label, d, data_path, cfg,
                                                                   bases.get(label, base_model_dir))
                                                for label, d in models.items()})
    report.to_json(out_path)
    return report


def guard_losses(models: dict[str, str], data_path: str, cfg: RunConfig, base_model_dir: str | None = None,
                 bases: dict[str, str] | None = None) -> dict[str, float]:
    """Loss of each labelled model on a guard set: rows of general ability, none of them trained on,
    so both prepared splits count."""
    rows = concatenate_datasets([load_from_disk(str(Path(data_path) / split)) for split in ("train", "eval")])
    rows = rows.select(range(min(cfg.promotion.guard_max_samples, len(rows))))
    losses = {}
    for label, model_dir in models.items():
        log.info("guard set: loss of %s on %d rows", label, len(rows))
        _, model, pad = _load_scored(model_dir, (bases or {}).get(label, base_model_dir), cfg)
        losses[label] = round(heldout_loss(model, rows, pad, cfg.evaluation.batch_size), 5) if len(rows) else math.nan
    return losses
