"""`stage: kto`: Kahneman-Tversky optimisation on unpaired feedback, LLaMA-Factory's `stage: kto`:
each row is a conversation whose answer is marked desirable or not (its `kto_tag` column). The
policy's implicit reward is pushed above a reference point (the KL between policy and reference,
estimated on mismatched prompt / answer rows) for desirable answers and below it for the others.
`keys.py` (its keys), `trainer.py` (the KTO trainer), `workflow.py`; the reference model and its
cached log-probs are `peftflow/stages/reference.py`; the loss is peftflow.preference_losses.kto_loss."""

from __future__ import annotations

from peftflow.stages.base import Stage, in_one_process, no_evaluation_during_training
from peftflow.stages.kto.keys import KtoKeys
from peftflow.stages.preference_keys import PREFERENCE_GROUP


def check(cfg) -> None:
    in_one_process(cfg, "kto", "the reference log-probs are computed and cached by one")
    no_evaluation_during_training(cfg, "kto", "the reference log-probs are cached for the training rows only")


STAGE = Stage(
    "kto",
    "preference tuning on unpaired feedback: answers marked desirable or not (LLaMA-Factory's kto; "
    "see the Preference group)",
    keys=KtoKeys,
    form_group=PREFERENCE_GROUP,
    check=check,
    row_kind="feedback",
    models_by_content=("ref_model",),
)
