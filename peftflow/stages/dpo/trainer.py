"""The preference trainer: each step scores a batch of pairs (chosen and rejected sides in one
forward) under the policy and trains the `pref_loss` of peftflow.preference_losses against the
cached reference log-probs. Logs LLaMA-Factory's and TRL's `rewards/*` and `logps/*` curves."""

from __future__ import annotations

import torch

from peftflow.evaluation.pairs import pair_batch
from peftflow.models.load import load_base
from peftflow.preference_losses import PreferenceSettings, preference_loss, sequence_logps, uses_reference
from peftflow.stages.reference import cache_path, reference_logps
from peftflow.training.arguments import base_dtype
from peftflow.training.trainer import SupervisedTokenTrainer

CURVES = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
)


class PairCollator:
    """Rows of pairs to one batch of 2B sequences (pair_batch) plus each pair's row index."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        columns = {
            k: [f[k] for f in features] for k in ("input_ids", "labels", "rejected_input_ids", "rejected_labels")
        }
        return pair_batch(columns, self.pad_id) | {"row_id": torch.tensor([f["row_id"] for f in features])}


class PreferenceTrainer(SupervisedTokenTrainer):
    def __init__(self, *args, settings: PreferenceSettings, reference_file=None, load_reference=None, **kwargs):
        tokenizer = kwargs["data_collator"].tokenizer
        kwargs["data_collator"] = PairCollator(tokenizer.pad_token_id or 0)
        super().__init__(*args, **kwargs)
        self.settings, self.reference = settings, None
        self.chunked_loss = False  # sequence_logps picks its own path
        if uses_reference(settings.loss):
            # The policy before training with its adapter off, unless another reference model is given.
            scorer = (lambda: load_reference().to(self.args.device)) if load_reference else (lambda: self.model)
            self.reference = reference_logps(
                scorer,
                self.train_dataset,
                self.data_collator.pad_id,
                reference_file,
                autocast=self.accelerator.autocast,
            )[:, [0, 2]]
        self._sums: dict[str, float] = {}
        self._steps = 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.supervised_tokens += int((inputs["labels"][:, 1:] != -100).sum())
        rows = inputs["row_id"]
        with self.accelerator.autocast():
            sums, counts = sequence_logps(model, {k: inputs[k] for k in ("input_ids", "attention_mask", "labels")})
        n = len(rows)
        ref = self.reference[rows.cpu()].to(sums.device) if self.reference is not None else None
        terms = preference_loss(
            self.settings,
            sums[:n],
            counts[:n],
            sums[n:],
            counts[n:],
            ref[:, 0] if ref is not None else None,
            ref[:, 1] if ref is not None else None,
        )
        self._track(terms, sums[:n].detach(), sums[n:].detach(), counts[:n], counts[n:])
        loss = terms.losses.mean()
        return (loss, None) if return_outputs else loss

    def _track(self, terms, chosen, rejected, chosen_tokens, rejected_tokens) -> None:
        values = {
            "rewards/chosen": terms.chosen_rewards.mean(),
            "rewards/rejected": terms.rejected_rewards.mean(),
            "rewards/accuracies": (terms.chosen_rewards > terms.rejected_rewards).float().mean(),
            "rewards/margins": (terms.chosen_rewards - terms.rejected_rewards).mean(),
            "logps/chosen": (chosen / chosen_tokens.clamp(min=1)).mean(),
            "logps/rejected": (rejected / rejected_tokens.clamp(min=1)).mean(),
        }
        for k, v in values.items():
            self._sums[k] = self._sums.get(k, 0.0) + float(v)
        self._steps += 1

    def log(self, logs, *args, **kwargs):
        if "loss" in logs and self._steps:
            logs |= {k: round(v / self._steps, 5) for k, v in self._sums.items()}
            self._sums, self._steps = {}, 0
        super().log(logs, *args, **kwargs)


def preference_settings(cfg) -> PreferenceSettings:
    return PreferenceSettings(cfg.pref_loss, cfg.pref_beta, cfg.dpo_label_smoothing, cfg.simpo_gamma, cfg.pref_ftx)


def preference_trainer(cfg, data_path: str, train_set, reference_fingerprint: str, reference_path: str | None):
    """The trainer factory of stage: dpo (peftflow.stages.workflow.TrainerFactory)."""

    def load_reference():  # only when its log-probs are not cached yet
        return load_base(reference_path, cfg, base_dtype(cfg))

    extra = dict(
        settings=preference_settings(cfg),
        reference_file=cache_path(cfg, reference_fingerprint, data_path),
        load_reference=load_reference if reference_path else None,
    )
    return PreferenceTrainer, extra, train_set.add_column("row_id", list(range(len(train_set))))
