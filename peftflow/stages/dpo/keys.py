"""The config keys of `stage: dpo`, LLaMA-Factory's names and defaults (its RLHFArguments); beta and
the reference model are the preference stages' shared keys."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from peftflow.stages.preference_keys import PreferenceKeys


class DpoKeys(PreferenceKeys):
    # fmt: off
    pref_loss: Literal["sigmoid", "hinge", "ipo", "kto_pair", "orpo", "simpo"] = Field(
        "sigmoid", title="Preference: loss",
        description="sigmoid (DPO), hinge, ipo (on per-token log-probs), orpo and simpo (no reference model).")
    pref_ftx: float = Field(0.0, ge=0.0, title="Preference: SFT weight",
                            description="Weight of the chosen answers' per-token cross-entropy added to the loss.")
    simpo_gamma: float = Field(0.5, ge=0.0, title="Preference: SimPO margin",
                               description="pref_loss simpo: the target reward margin gamma.")
    dpo_label_smoothing: float = Field(0.0, ge=0.0, le=0.5, title="Preference: label smoothing",
                                       description="pref_loss sigmoid: the share of pairs assumed flipped (cDPO).")
    # fmt: on
