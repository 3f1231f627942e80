"""The preference trainer: each step scores a batch of pairs (chosen and rejected sides in one
forward) under the policy and trains the `pref_loss` of peftflow.preference_losses against the
cached reference log-probs. Logs LLaMA-Factory's and TRL's `rewards/*` and `logps/*` curves."""

from __future__ import annotations

from peftflow.preference_losses import PreferenceSettings, preference_loss, uses_reference
from peftflow.stages.pair_trainer import PairTrainer, reference_arguments


class PreferenceTrainer(PairTrainer):
    def __init__(self, *args, settings: PreferenceSettings, **kwargs):
        super().__init__(*args, **kwargs)
        self.settings = settings

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        sums, counts = self.policy_logps(model, inputs)
        n = len(inputs["row_id"])
        ref = self.reference_of(inputs, sums.device) if self.reference is not None else None
        terms = preference_loss(
            self.settings,
            sums[:n],
            counts[:n],
            sums[n:],
            counts[n:],
            ref[:, 0] if ref is not None else None,
            ref[:, 1] if ref is not None else None,
        )
        chosen, rejected = terms.chosen_rewards, terms.rejected_rewards
        self.track(
            {
                "rewards/chosen": chosen,
                "rewards/rejected": rejected,
                "rewards/accuracies": (chosen > rejected).float(),
                "rewards/margins": chosen - rejected,
                "logps/chosen": sums[:n] / counts[:n].clamp(min=1),
                "logps/rejected": sums[n:] / counts[n:].clamp(min=1),
            }
        )
        loss = terms.losses.mean()
        return (loss, None) if return_outputs else loss


def preference_settings(cfg) -> PreferenceSettings:
    return PreferenceSettings(cfg.pref_loss, cfg.pref_beta, cfg.dpo_label_smoothing, cfg.simpo_gamma, cfg.pref_ftx)


def preference_trainer(cfg, data_path: str, train_set, reference_fingerprint: str, reference_path: str | None):
    """The trainer factory of stage: dpo (peftflow.stages.workflow.TrainerFactory). ORPO and SimPO
    read no reference: none is computed for them."""
    extra = {"settings": preference_settings(cfg)}
    if uses_reference(cfg.pref_loss):
        extra |= reference_arguments(cfg, data_path, reference_fingerprint, reference_path)
    return PreferenceTrainer, extra, train_set.add_column("row_id", list(range(len(train_set))))
