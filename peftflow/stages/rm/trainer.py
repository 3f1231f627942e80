"""The reward trainer: each step scores a batch of pairs (chosen and rejected sides in one forward)
with the reward head and trains peftflow.preference_losses.pairwise_reward_loss. Logs the
`rewards/*` curves dpo logs, the rewards here being the head's scores."""

from __future__ import annotations

from peftflow.preference_losses import pairwise_reward_loss
from peftflow.stages.pair_trainer import PairTrainer


class RewardTrainer(PairTrainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.supervised_tokens += int(inputs["attention_mask"].sum())  # every token feeds the score
        with self.accelerator.autocast():
            scores = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        scores = scores.squeeze(-1).float()
        n = len(inputs["row_id"])
        chosen, rejected = scores[:n], scores[n:]
        losses, ranked = pairwise_reward_loss(chosen, rejected)
        self.track(
            {
                "rewards/chosen": chosen,
                "rewards/rejected": rejected,
                "rewards/accuracies": ranked,
                "rewards/margins": chosen - rejected,
            }
        )
        loss = losses.mean()
        return (loss, None) if return_outputs else loss


def reward_trainer(cfg, data_path: str, train_set):
    """The trainer factory of stage: rm (peftflow.stages.workflow.TrainerFactory)."""
    return RewardTrainer, {}, train_set.add_column("row_id", list(range(len(train_set))))
