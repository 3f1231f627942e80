"""The config keys of `stage: kto`, LLaMA-Factory's names and defaults; beta and the reference model
are the preference stages' shared keys."""

from __future__ import annotations

from pydantic import Field

from peftflow.stages.preference_keys import PreferenceKeys


class KtoKeys(PreferenceKeys):
    # fmt: off
    kto_chosen_weight: float = Field(1.0, gt=0.0, title="Preference: KTO desirable weight",
                                     description="stage kto: the weight of the loss on desirable answers.")
    kto_rejected_weight: float = Field(1.0, gt=0.0, title="Preference: KTO undesirable weight",
                                       description="stage kto: the weight of the loss on undesirable answers.")
    # fmt: on
