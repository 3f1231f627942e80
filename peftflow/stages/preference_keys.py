"""The config keys the preference stages share (`dpo`, `kto`): LLaMA-Factory's beta and reference
model, read the same way by both. Each stage's keys model inherits them; the form shows them once,
in the stages' common group."""

from __future__ import annotations

from pydantic import BaseModel, Field

from peftflow.stages.base import FormGroup


class PreferenceKeys(BaseModel):
    # fmt: off
    pref_beta: float = Field(0.1, gt=0.0, title="Preference: beta",
                             description="How far the policy may move from the reference: the scale of the implicit "
                                         "reward beta * log(policy / reference).")
    ref_model: str | None = Field(None, title="Preference: reference model",
                                  description="The reference model. Empty: the model trained, as loaded (LoRA: the "
                                              "adapter switched off).")
    # fmt: on


PREFERENCE_GROUP = FormGroup(
    "preference", "Preference", "Stages dpo and kto: beta, the reference model, the loss and its weights."
)
