"""The KTO trainer: each step scores a batch of feedback rows and their KL rows (each row's prompt
with the next row's answer, fixed once as TRL pairs them, so the reference's log-probs can be cached)
under the policy, and trains peftflow.preference_losses.kto_loss against the cached reference."""

from __future__ import annotations

from peftflow.preference_losses import kto_loss
from peftflow.stages.pair_trainer import PairTrainer, reference_arguments

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


class KtoTrainer(PairTrainer):
    second = KL_COLUMNS
    carried = ("row_id", "kto_tag")

    def __init__(self, *args, beta: float, weights: tuple[float, float], **kwargs):
        super().__init__(*args, **kwargs)
        self.beta, self.weights = beta, weights

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        sums, _ = self.policy_logps(model, inputs)
        n, tags = len(inputs["row_id"]), inputs["kto_tag"].to(sums.device)
        ref = self.reference_of(inputs, sums.device)  # each row's answer, its KL row's
        logratios = sums[:n] - ref[:, 0]
        kl = (sums[n:] - ref[:, 1]).mean()  # kto_loss clamps it at 0 and keeps it out of the gradient
        losses, chosen, rejected = kto_loss(logratios[tags], logratios[~tags], kl, self.beta, *self.weights)
        self.track({"rewards/chosen": chosen, "rewards/rejected": rejected, "kl": kl})
        loss = losses.mean()
        return (loss, None) if return_outputs else loss


def kto_trainer(cfg, data_path: str, train_set, reference_fingerprint: str, reference_path: str | None):
    """The trainer factory of stage: kto (peftflow.stages.workflow.TrainerFactory)."""
    extra = dict(beta=cfg.pref_beta, weights=(cfg.kto_chosen_weight, cfg.kto_rejected_weight))
    extra |= reference_arguments(cfg, data_path, reference_fingerprint, reference_path)
    rows = with_kl_rows(train_set).add_column("row_id", list(range(len(train_set))))
    return KtoTrainer, extra, rows
