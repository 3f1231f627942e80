"""The KTO trainer: each step scores a batch of feedback rows and their KL rows (each row's prompt
with the next row's answer, fixed once as TRL pairs them, so the reference's log-probs can be cached)
under the policy, and trains peftflow.preference_losses.kto_loss against the cached reference."""

from __future__ import annotations

import torch

from peftflow.evaluation.pairs import pair_batch
from peftflow.models.load import load_base
from peftflow.preference_losses import kto_loss, sequence_logps
from peftflow.stages.reference import cache_path, reference_logps
from peftflow.training.arguments import base_dtype
from peftflow.training.trainer import SupervisedTokenTrainer

KL_COLUMNS = ("kl_input_ids", "kl_labels")


def with_kl_rows(train_set):
    """Each row with its KL row: its own prompt, then the next row's answer (the last wraps around)."""
    ids, labels = train_set["input_ids"], train_set["labels"]
    starts = [_last_answer(row) for row in labels]
    n = len(ids)
    kl_ids = [ids[i][: starts[i]] + ids[(i + 1) % n][starts[(i + 1) % n] :] for i in range(n)]
    kl_labels = [[-100] * starts[i] + labels[(i + 1) % n][starts[(i + 1) % n] :] for i in range(n)]
    return train_set.add_column(KL_COLUMNS[0], kl_ids).add_column(KL_COLUMNS[1], kl_labels)


def _last_answer(labels: list[int]) -> int:
    """The index where the last run of learned labels starts (after its prompt and any earlier turns)."""
    end = max(i for i, label in enumerate(labels) if label != -100)
    start = end
    while start > 0 and labels[start - 1] != -100:
        start -= 1
    return start


class KtoCollator:
    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        columns = {k: [f[k] for f in features] for k in ("input_ids", "labels", *KL_COLUMNS)}
        batch = pair_batch(columns, self.pad_id, KL_COLUMNS)
        return batch | {
            "row_id": torch.tensor([f["row_id"] for f in features]),
            "kto_tag": torch.tensor([f["kto_tag"] for f in features]),
        }


class KtoTrainer(SupervisedTokenTrainer):
    def __init__(self, *args, beta: float, weights: tuple[float, float], reference_file, load_reference, **kw):
        tokenizer = kw["data_collator"].tokenizer
        kw["data_collator"] = KtoCollator(tokenizer.pad_token_id or 0)
        super().__init__(*args, **kw)
        self.beta, self.weights = beta, weights
        self.chunked_loss = False  # sequence_logps picks its own path
        scorer = (lambda: load_reference().to(self.args.device)) if load_reference else (lambda: self.model)
        pad, autocast = self.data_collator.pad_id, self.accelerator.autocast
        logps = reference_logps(scorer, self.train_dataset, pad, reference_file, autocast=autocast, second=KL_COLUMNS)
        self.reference = logps[:, [0, 2]]  # each row's answer, its KL row's
        self._sums: dict[str, list[float]] = {}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.supervised_tokens += int((inputs["labels"][:, 1:] != -100).sum())
        with self.accelerator.autocast():
            sums, _ = sequence_logps(model, {k: inputs[k] for k in ("input_ids", "attention_mask", "labels")})
        n, tags = len(inputs["row_id"]), inputs["kto_tag"].to(sums.device)
        ref = self.reference[inputs["row_id"].cpu()].to(sums.device)
        logratios = sums[:n] - ref[:, 0]
        kl = (sums[n:] - ref[:, 1]).mean()  # kto_loss clamps it at 0 and keeps it out of the gradient
        losses, chosen, rejected = kto_loss(logratios[tags], logratios[~tags], kl, self.beta, *self.weights)
        for key, values in (("rewards/chosen", chosen), ("rewards/rejected", rejected), ("kl", kl.reshape(1))):
            self._sums.setdefault(key, []).extend(float(v) for v in values.detach().float())
        loss = losses.mean()
        return (loss, None) if return_outputs else loss

    def log(self, logs, *args, **kwargs):
        if "loss" in logs:
            logs |= {k: round(sum(v) / len(v), 5) for k, v in self._sums.items() if v}
            self._sums = {}
        super().log(logs, *args, **kwargs)


def kto_trainer(cfg, data_path: str, train_set, reference_fingerprint: str, reference_path: str | None):
    """The trainer factory of stage: kto (peftflow.stages.workflow.TrainerFactory)."""

    def load_reference():  # only when its log-probs are not cached yet
        return load_base(reference_path, cfg, base_dtype(cfg))

    extra = dict(
        beta=cfg.pref_beta,
        weights=(cfg.kto_chosen_weight, cfg.kto_rejected_weight),
        reference_file=cache_path(cfg, reference_fingerprint, data_path),
        load_reference=load_reference if reference_path else None,
    )
    rows = with_kl_rows(train_set).add_column("row_id", list(range(len(train_set))))
    return KtoTrainer, extra, rows
