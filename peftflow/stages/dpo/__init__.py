"""`stage: dpo`: preference tuning on pairs of answers to one prompt, LLaMA-Factory's `stage: dpo`
with its `pref_loss` family (DPO's sigmoid, hinge, IPO; ORPO and SimPO, which need no reference).
`keys.py` (its config keys), `trainer.py` (the preference trainer), `workflow.py` (what a DPO run
does); the reference model and its cached log-probs are `peftflow/stages/reference.py`, shared with
kto; the losses are in peftflow.preference_losses."""

from __future__ import annotations

from peftflow.stages.base import Stage, in_one_process, no_evaluation_during_training
from peftflow.stages.dpo.keys import DpoKeys
from peftflow.stages.preference_keys import PREFERENCE_GROUP

NO_REFERENCE = ("orpo", "simpo")  # losses on the policy's log-probs alone


def check(cfg) -> None:
    if cfg.pref_loss == "kto_pair":
        raise ValueError(
            "pref_loss: kto_pair is refused: TRL dropped it and LLaMA-Factory's DPO trainer cannot train it; "
            "train unpaired feedback with stage: kto"
        )
    if cfg.dpo_label_smoothing and cfg.pref_loss != "sigmoid":
        raise ValueError(f"dpo_label_smoothing applies to pref_loss: sigmoid (got {cfg.pref_loss})")
    if cfg.simpo_gamma != DpoKeys.model_fields["simpo_gamma"].default and cfg.pref_loss != "simpo":
        raise ValueError(f"simpo_gamma applies to pref_loss: simpo (got {cfg.pref_loss})")
    if cfg.ref_model and cfg.pref_loss in NO_REFERENCE:
        raise ValueError(f"pref_loss: {cfg.pref_loss} uses no reference model; leave ref_model empty")
    in_one_process(cfg, "dpo", "the reference log-probs are computed and cached by one")
    no_evaluation_during_training(cfg, "dpo", "the reference log-probs are cached for the training rows only")


STAGE = Stage(
    "dpo",
    "preference tuning on chosen / rejected answer pairs (LLaMA-Factory's dpo; see the Preference group)",
    keys=DpoKeys,
    form_group=PREFERENCE_GROUP,
    check=check,
    row_kind="pairs",
    models_by_content=("ref_model",),
)
