"""What the preference trainers (dpo, kto) share: batches of 2B sequences (each row's first side,
then its second: a pair's rejected answer, a KTO row's KL row) scored in one forward, the reference
model's log-probs of both read from the cache (or computed once, before the first step), and the
curves they log, averaged over each logging interval."""

from __future__ import annotations

import torch

from peftflow.evaluation.pairs import PAIR_COLUMNS, pair_batch
from peftflow.models.heads import pad_id
from peftflow.models.load import load_base
from peftflow.preference_losses import sequence_logps
from peftflow.stages.reference import cache_path, reference_logps
from peftflow.training.arguments import base_dtype
from peftflow.training.trainer import SupervisedTokenTrainer


class PairCollator:
    """Rows to one padded batch of 2B sequences (pair_batch), plus per-row columns carried as tensors."""

    def __init__(self, pad_id: int, second=PAIR_COLUMNS, carried: tuple[str, ...] = ("row_id",)):
        self.pad_id, self.second, self.carried = pad_id, second, carried

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        columns = {k: [f[k] for f in features] for k in ("input_ids", "labels", *self.second)}
        carried = {k: torch.tensor([f[k] for f in features]) for k in self.carried}
        return pair_batch(columns, self.pad_id, self.second) | carried


class PairTrainer(SupervisedTokenTrainer):
    """`reference`: [N, 2] log-prob sums of each row's two sides under the reference (None: its loss
    needs none). The trainer reads rows by `row_id`, which the factory adds."""

    second = PAIR_COLUMNS
    carried: tuple[str, ...] = ("row_id",)

    def __init__(self, *args, reference_file=None, load_reference=None, **kwargs):
        pad = pad_id(kwargs["data_collator"].tokenizer)  # the id a reward head finds each row's end by
        kwargs["data_collator"] = PairCollator(pad, self.second, self.carried)
        super().__init__(*args, **kwargs)
        self.chunked_loss = False  # sequence_logps picks its own path
        self.reference = None
        if reference_file is not None:
            # The policy before training with its adapter off, unless another reference model is given.
            scorer = (lambda: load_reference().to(self.args.device)) if load_reference else (lambda: self.model)
            logps = reference_logps(
                scorer, self.train_dataset, pad, reference_file, autocast=self.accelerator.autocast, second=self.second
            )
            self.reference = logps[:, [0, 2]]
        self._curves: dict[str, list[float]] = {}

    def policy_logps(self, model, inputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sequence log-prob sums and label counts of the batch's 2B sequences under the policy."""
        self.supervised_tokens += int((inputs["labels"][:, 1:] != -100).sum())
        with self.accelerator.autocast():
            return sequence_logps(model, {k: inputs[k] for k in ("input_ids", "attention_mask", "labels")})

    def reference_of(self, inputs, device) -> torch.Tensor:
        return self.reference[inputs["row_id"].cpu()].to(device)

    def track(self, values: dict[str, torch.Tensor]) -> None:
        """Curve values of one step (each a tensor of any size; an empty one adds nothing)."""
        for key, value in values.items():
            self._curves.setdefault(key, []).extend(float(v) for v in value.detach().float().reshape(-1))

    def log(self, logs, *args, **kwargs):
        if "loss" in logs:
            logs |= {k: round(sum(v) / len(v), 5) for k, v in self._curves.items() if v}
            self._curves = {}
        super().log(logs, *args, **kwargs)


def reference_arguments(cfg, data_path: str, fingerprint: str, path: str | None) -> dict:
    """The trainer's reference: its cache file, and how to load it when the file is not there yet
    (None: the trained model itself, adapter off)."""

    def load_reference():
        return load_base(path, cfg, base_dtype(cfg))

    return dict(reference_file=cache_path(cfg, fingerprint, data_path), load_reference=load_reference if path else None)
